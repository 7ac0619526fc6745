"""The training core reproduces the golden runs: bit for bit where that means something, within a tolerance
everywhere.

See :mod:`tests.golden.runs`: the goldens hold the numbers of six small CPU trainings and the fingerprint of the
machine that recorded them. Bitwise equality depends on the CPU's kernels, so each run is checked three ways:

* within :data:`~tests.golden.runs.RTOL` of the recorded numbers, on any machine;
* bit for bit against the recorded numbers, on a machine with the recording's fingerprint;
* bit for bit against the recorded tree (:data:`~tests.golden.runs.PINNED`) run on this machine, where the
  fingerprint differs (on the recording machine the previous check already says the same).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from .conftest import write_dataset
from .golden.runs import HERE, KILLED, PINNED, RTOL, RUNS, fingerprint, pinned_source, train_golden

RECORDED_ON = json.loads((HERE / "machine.json").read_text())
SAME_MACHINE = fingerprint() == RECORDED_ON

# The resume after a SIGKILL starts two real processes: the slow tier.
CASES = [pytest.param(name, marks=pytest.mark.slow) if name == KILLED else name for name in sorted(RUNS)]


@pytest.fixture(scope="module")
def golden_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("golden") / "data", 600, 200)


@pytest.fixture(scope="module")
def trained(golden_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Each golden run trained once by this tree, shared by the checks below."""
    runs: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in runs:
            runs[name] = train_golden(name, golden_data, tmp_path_factory.mktemp(name) / "run",
                                      extra=["--no-artifacts"])
        return runs[name]

    return get  # type: ignore[return-value]


def expected(name: str) -> dict:
    return json.loads((HERE / f"{name}.json").read_text())


def _numbers(record: dict) -> dict[str, float]:
    """Every number of a run's record, flattened: metrics per epoch, summary values, weight norms."""
    flat: dict[str, float] = {}
    for i, row in enumerate(record["metrics"]):
        for key, value in row.items():
            flat[f"metrics[{i}].{key}"] = float(value)
    for key, value in record["summary"].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"summary.{key}"] = float(value)
    for key, value in record["weight_norms"].items():
        flat[f"weight_norm.{key}"] = value
    return flat


def assert_close(got: dict, want: dict, rtol: float) -> None:
    got_n, want_n = _numbers(got), _numbers(want)
    assert got_n.keys() == want_n.keys()
    far = {k: (got_n[k], want_n[k]) for k in want_n if not math.isclose(got_n[k], want_n[k], rel_tol=rtol,
                                                                        abs_tol=1e-9)}
    assert not far, f"outside rtol {rtol}: {far}"


def assert_identical(got: dict, want: dict) -> None:
    assert got["metrics"] == want["metrics"]
    assert {k: got["summary"][k] for k in want["summary"]} == want["summary"]
    assert got["weights"] == want["weights"]


@pytest.mark.parametrize("name", CASES)
def test_training_matches_the_golden_run_within_tolerance(name: str, trained) -> None:
    want, got = expected(name), trained(name)
    # The fast recipe computes in bf16 only where the CPU has it natively, so its precision may differ here.
    words = {k: v for k, v in want["summary"].items() if not isinstance(v, (int, float)) and k != "precision"}
    assert {k: got["summary"][k] for k in words} == words
    assert_close(got, want, max(RTOL[want["summary"]["precision"]], RTOL[got["summary"]["precision"]]))


@pytest.mark.skipif(not SAME_MACHINE, reason=f"the goldens were recorded on {RECORDED_ON}, this machine is "
                    f"{fingerprint()}: bitwise results depend on the CPU's kernels, so the recorded tree is run "
                    "here instead (test_training_reproduces_the_recorded_tree_bit_for_bit)")
@pytest.mark.parametrize("name", CASES)
def test_training_reproduces_the_golden_run_bit_for_bit(name: str, trained) -> None:
    assert_identical(trained(name), expected(name))


@pytest.fixture(scope="module")
def pinned_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = pinned_source(tmp_path_factory.mktemp("pinned"))
    if src is None:
        pytest.skip(f"not a git checkout holding {PINNED}: the recorded tree cannot be run on this machine")
    return src


@pytest.mark.skipif(SAME_MACHINE, reason="this machine recorded the goldens: the bit-for-bit comparison with the "
                    "recorded numbers covers it")
@pytest.mark.parametrize("name", CASES)
def test_training_reproduces_the_recorded_tree_bit_for_bit(name: str, trained, pinned_tree: Path, golden_data: Path,
                                                             tmp_path: Path) -> None:
    before = train_golden(name, golden_data, tmp_path / "pinned", extra=["--no-artifacts"], src=pinned_tree)
    assert_identical(trained(name), before)


def test_the_pinned_tree_is_what_the_test_runs(pinned_tree: Path, golden_data: Path, tmp_path: Path) -> None:
    """The child really imports the extracted tree (not this checkout), so the bitwise check compares two trees."""
    import subprocess
    import sys

    code = "import vaekit, sys; sys.stdout.write(vaekit.__file__)"
    done = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(pinned_tree), "PATH": "/usr/bin"},
                          capture_output=True, text=True, check=True)
    assert Path(done.stdout).resolve().is_relative_to(pinned_tree.resolve())
