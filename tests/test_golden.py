"""The training core reproduces the recorded golden runs bit for bit (same machine, CPU, fp32).

The golden files were written by ``python -m tests.golden.runs record`` before the training core was
restructured; every per-epoch metric, every summary number and every weight must come out the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import write_dataset
from .golden.runs import HERE, KILLED, RUNS, train_golden


@pytest.fixture(scope="module")
def golden_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("golden") / "data", 600, 200)


# The resume after a SIGKILL starts two real processes: the slow tier.
CASES = [pytest.param(name, marks=pytest.mark.slow) if name == KILLED else name for name in sorted(RUNS)]


@pytest.mark.parametrize("name", CASES)
def test_training_reproduces_the_golden_run(name: str, golden_data: Path, tmp_path: Path) -> None:
    expected = json.loads((HERE / f"{name}.json").read_text())
    got = train_golden(name, golden_data, tmp_path / name, extra=["--no-artifacts"])
    for row in got["metrics"]:
        row.pop("lr", None)  # a column added after the goldens were recorded
    assert got["metrics"] == expected["metrics"]
    assert {k: got["summary"][k] for k in expected["summary"]} == expected["summary"]
    assert got["weights"] == expected["weights"]
