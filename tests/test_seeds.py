"""``vaekit train --seeds``: each seed the run it would be alone, their summary, and resuming seed by seed.

The seeds are trained once for the module (tiny data, one epoch), as are the two single runs they must equal.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vaekit.cli import main

from .conftest import hermetic_env

TRAIN = ["--epochs", "1", "--batch-size", "64", "--val-fraction", "0.2", "--no-artifacts", "--quiet"]


def _train(data: Path, *flags: str) -> int:
    return main(["train", "--data-dir", str(data), *TRAIN, *flags])


def seeds_and_alone(data: Path, factory: pytest.TempPathFactory, *flags: str) -> Path:
    """A folder with ``seeds/`` (``--seeds 0,1`` and ``flags``) and ``alone-0``, ``alone-1`` (``--seed 0`` and
    ``--seed 1``, the runs each seed must equal), trained with :data:`TRAIN`'s flags."""
    root = factory.mktemp("seeds")
    with hermetic_env(factory.mktemp("cache")):
        assert _train(data, "--seeds", "0,1", *flags, "--out", str(root / "seeds")) == 0
        for s in (0, 1):
            assert _train(data, "--seed", str(s), "--out", str(root / f"alone-{s}")) == 0
    return root


@pytest.fixture(scope="module")
def trained(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``seeds/`` (``--seeds 0,1``) and ``alone-0``, ``alone-1`` (``--seed 0`` and ``--seed 1``)."""
    return seeds_and_alone(tiny_data, tmp_path_factory)


def _metrics(run: Path) -> list[dict[str, str]]:
    """metrics.csv without its timings, which no two runs share."""
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if "seconds" not in k} for row in csv.DictReader(f)]


def _summary(run: Path) -> dict:
    return {k: v for k, v in json.loads((run / "summary.json").read_text()).items()
            if "seconds" not in k and not k.endswith("_per_s")}  # timings


@pytest.mark.parametrize("seed", [0, 1])
def test_each_seed_is_bit_for_bit_the_run_it_would_be_alone(trained: Path, seed: int) -> None:
    got, alone = trained / "seeds" / f"seed-{seed}", trained / f"alone-{seed}"
    for name in ("model.safetensors", "config.json"):
        assert (got / name).read_bytes() == (alone / name).read_bytes(), name
    # the checkpoint metadata records the seconds an epoch took; its tensors (weights, Adam, generators) are equal
    a, b = load_file(got / "checkpoint.safetensors"), load_file(alone / "checkpoint.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics(got) == _metrics(alone)
    assert _summary(got) == _summary(alone)
    assert json.loads((got / "config.json").read_text())["train"]["seed"] == seed


def test_the_two_seeds_are_different_runs(trained: Path) -> None:
    a, b = (trained / "seeds" / f"seed-{s}" / "model.safetensors" for s in (0, 1))
    assert a.read_bytes() != b.read_bytes()


def test_summary_holds_the_mean_and_standard_error_of_the_seeds(trained: Path) -> None:
    summary = json.loads((trained / "seeds" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["n"] == 2 and summary["runs"] == ["seed-0", "seed-1"]
    assert "sequential" in summary["order"] and summary["protocol"]["likelihood"] == "bernoulli"
    for key in ("test_loss", "best_val_loss"):
        values = np.array([json.loads((trained / f"alone-{s}" / "summary.json").read_text())[key] for s in (0, 1)])
        got = summary["metrics"][key]
        assert got["values"] == values.tolist() and got["n"] == 2
        assert got["mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert got["stderr"] == pytest.approx(values.std(ddof=1) / np.sqrt(2), rel=1e-12)


def test_the_printed_line_per_number_gives_mean_error_and_each_seed(tiny_data: Path, tmp_path: Path,
                                                                    trained: Path, capsys) -> None:
    shutil.copytree(trained / "seeds", tmp_path / "seeds")
    capsys.readouterr()
    assert _train(tiny_data, "--seeds", "0,1", "--resume", "--out", str(tmp_path / "seeds")) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = json.loads((trained / "seeds" / "summary.json").read_text())["metrics"]["test_loss"]
    a, b = summary["values"]
    want = f"test -ELBO: {summary['mean']:.2f} \u00b1 {summary['stderr']:.2f} (seed 0: {a:.2f}, seed 1: {b:.2f})"
    assert want in lines


def test_compare_shows_the_seeds_as_one_group(trained: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["compare", str(trained / "seeds"), "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)["entries"]
    summary = json.loads((trained / "seeds" / "summary.json").read_text())
    assert entry["kind"] == "seed group" and len(entry["runs"]) == 2
    assert entry["numbers"]["test_loss"]["mean"] == summary["metrics"]["test_loss"]["mean"]


def test_resume_after_one_finished_seed_trains_only_the_next(tiny_data: Path, tmp_path: Path, trained: Path) -> None:
    out = tmp_path / "seeds"
    shutil.copytree(trained / "seeds" / "seed-0", out / "seed-0")  # stopped before seed 1 began
    before = {p.name: p.stat().st_mtime_ns for p in (out / "seed-0").iterdir()}
    # without the flags it was started with: a seed not started yet takes the settings of those that were
    resume = ["train", "--data-dir", str(tiny_data), "--seeds", "0,1", "--resume", "--out", str(out), "--quiet"]
    assert main(resume) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "seed-0").iterdir()} == before  # left alone
    for name in ("model.safetensors", "config.json"):
        assert (out / "seed-1" / name).read_bytes() == (trained / "alone-1" / name).read_bytes(), name
    assert json.loads((out / "summary.json").read_text())["metrics"]["test_loss"]["n"] == 2


def test_an_existing_seeds_folder_is_refused_without_force(tiny_data: Path, trained: Path, capsys) -> None:
    before = (trained / "seeds" / "seed-0" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert _train(tiny_data, "--seeds", "0,1", "--out", str(trained / "seeds")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--force" in err and "--resume" in err
    assert (trained / "seeds" / "seed-0" / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.parametrize(("flags", "says"), [
    (["--seeds", "0,1", "--seed", "3"], "--seed and --seeds"),
    (["--seeds", "0,0"], "given twice"),
    (["--seeds", "0-3,2"], "seed 2 is given twice"),
    (["--seeds", "0-5000"], "at most 1000 seeds"),
    (["--seeds", "1-0"], "ranges"),
    (["--seeds", "a,1"], "comma list"),
    (["--seeds", "-1"], "comma list"),
    (["--seeds", ""], "comma list"),
])
def test_bad_seeds_are_one_line_and_exit_2(flags: list[str], says: str, tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    try:
        code = main(["train", *flags, "--out", str(tmp_path / "x"), "--quiet"])
    except SystemExit as e:  # a value the flag's parser refuses ends in argparse's exit
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err
    assert not (tmp_path / "x").exists()


def test_ranges_and_lists_parse_in_the_order_given() -> None:
    from vaekit.experiments.seeds import parse_seeds

    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    assert parse_seeds("5, 3") == [5, 3]
