"""``--seeds-together``: the seeds' steps stacked in one vmapped computation, each seed still its own run.

``auto`` (the default) stacks only where the stacked step reproduces each seed's own step bit for bit and is
faster, so whatever it chose, each seed equals its solo run bit for bit (``tests/test_seeds.py``). ``yes`` stacks
wherever the model allows: each seed is then its own run within rounding, which is what these tests check, along
with the probe that decides, the lockstep's Ctrl-C and resume, and the refusals.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vaekit.cli import main
from vaekit.experiments import seeds as seeds_module

from .conftest import hermetic_env
from .test_seeds import seeds_and_alone

TRAIN = ["--epochs", "2", "--batch-size", "64", "--val-fraction", "0.2", "--no-artifacts", "--quiet"]


def _train(data: Path, *flags: str) -> int:
    return main(["train", "--data-dir", str(data), *TRAIN, *flags])


@pytest.fixture(scope="module")
def runs(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``seeds/`` (``--seeds 0,1 --seeds-together yes``) and ``alone-0``, ``alone-1`` (one epoch each)."""
    return seeds_and_alone(tiny_data, tmp_path_factory, "--seeds-together", "yes")


def _order(out: Path, seeds: str) -> str:
    """summary.json's ``order`` for one group of seeds, without the ``seeds LIST: `` that names them."""
    order = json.loads((out / "summary.json").read_text())["order"]
    assert order.startswith(f"seeds {seeds}: ")
    return order.removeprefix(f"seeds {seeds}: ")


def _rows(run: Path) -> list[dict[str, float | None]]:
    """metrics.csv's rows without timings (an empty cell: None)."""
    with open(run / "metrics.csv", newline="") as f:
        return [{k: float(v) if v else None for k, v in row.items() if "seconds" not in k} for row in csv.DictReader(f)]


@pytest.mark.parametrize("seed", [0, 1])
def test_each_stacked_seed_is_its_own_run_within_rounding(runs: Path, seed: int) -> None:
    """Each seed trained on its own batches, noise and weights: a mix-up between seeds would move the losses by
    whole nats, while rounding moves them in the sixth digit."""
    got, alone = runs / "seeds" / f"seed-{seed}", runs / f"alone-{seed}"
    assert (got / "config.json").read_bytes() == (alone / "config.json").read_bytes()
    ours, theirs = _rows(got), _rows(alone)
    assert len(ours) == len(theirs) == 1
    for a, b in zip(ours, theirs, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert (a[key] is None and b[key] is None) or a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    w, v = load_file(got / "model.safetensors"), load_file(alone / "model.safetensors")
    assert w.keys() == v.keys()
    for k in w:
        torch.testing.assert_close(w[k], v[k], rtol=0, atol=2e-3)  # Adam moves a weight 2 * lr at most per step


def test_the_seeds_stay_different_runs(runs: Path) -> None:
    a, b = (load_file(runs / "seeds" / f"seed-{s}" / "model.safetensors") for s in (0, 1))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_the_summary_says_the_seeds_were_stacked_and_how_they_compare(runs: Path) -> None:
    order = _order(runs / "seeds", "0,1")
    assert order.startswith("together")
    assert "ms a step of all seeds stacked" in order
    exact = order.startswith(seeds_module.ORDER_TOGETHER)
    assert exact or order.startswith(seeds_module.ORDER_ROUNDING)  # the bits either matched or it says where not


def test_auto_says_which_path_ran(tiny_data: Path, tmp_path: Path) -> None:
    assert _train(tiny_data, "--seeds", "0,1", "--out", str(tmp_path / "s"), "--epochs", "1") == 0
    order = _order(tmp_path / "s", "0,1")
    stacked = order.startswith(seeds_module.ORDER_TOGETHER)
    assert stacked or order.startswith("sequential: the stacked step does not reproduce") \
        or order.startswith("sequential: stacking is slower")


def test_the_probe_finds_a_difference_and_changes_no_state(tiny_data: Path, tmp_path: Path) -> None:
    """One seed's own step off by one unit in the last place: the probe names the loss; and probing draws from no
    generator of the seeds and changes no weight."""
    import contextlib

    from vaekit.config import TrainConfig
    from vaekit.experiments.together import StackedStep, probe
    from vaekit.training.distributed import DistContext
    from vaekit.training.session import open_session

    with contextlib.ExitStack() as held, hermetic_env(tmp_path / "cache"):
        sessions = [open_session(held, DistContext(), TrainConfig(data_dir=str(tiny_data), seed=s, epochs=1,
                                                                   batch_size=64, progress=False, artifacts=False),
                                 tmp_path / f"s{s}") for s in (0, 1)]
        trainers = [s.trainer for s in sessions]
        stacked = StackedStep(trainers)
        before = [({k: v.clone() for k, v in t.model.state_dict().items()},
                   {k: g.get_state() for k, g in t.gens.items()}) for t in trainers]
        assert probe(stacked, [64]).stacked_ms > 0
        for t, (weights, gens) in zip(trainers, before, strict=True):
            assert all(torch.equal(v, weights[k]) for k, v in t.model.state_dict().items())
            assert all(torch.equal(g.get_state(), gens[k]) for k, g in t.gens.items())
        own = trainers[0].step.gradients
        trainers[0].step.gradients = lambda *a: torch.nextafter(own(*a), torch.tensor(float("inf")))
        assert probe(stacked, [64]).differs.startswith("the loss of a batch of 64 differs")


def test_seeds_together_needs_seeds(tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["train", "--seeds-together", "yes", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "--seeds-together needs --seeds" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_model_that_cannot_be_stacked_trains_one_seed_after_another_and_says_why(tiny_data: Path,
                                                                                    tmp_path: Path) -> None:
    conv = ["--model", "conv", "--epochs", "1", "--seeds", "0,1"]
    for mode in ("auto", "yes"):
        assert _train(tiny_data, *conv, "--seeds-together", mode, "--out", str(tmp_path / mode)) == 0
        order = _order(tmp_path / mode, "0,1")
        assert order.startswith("sequential: only the post's MLP objective is stacked")
    for s in (0, 1):  # the same runs either way
        a, b = (load_file(tmp_path / mode / f"seed-{s}" / "model.safetensors") for mode in ("auto", "yes"))
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_ctrl_c_saves_every_seed_and_resume_finishes_them_as_if_never_stopped(tiny_data: Path,
                                                                             tmp_path: Path) -> None:
    flags = ["--data-dir", str(tiny_data), "--epochs", "8", "--batch-size", "64", "--val-fraction", "0.2",
             "--no-artifacts", "--quiet", "--seeds", "0,1", "--seeds-together", "yes"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert main(["train", *flags, "--out", str(whole)]) == 0
    child = subprocess.Popen([sys.executable, "-m", "vaekit", "train", *flags, "--out", str(stopped)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (stopped / "seed-1" / "metrics.csv").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert "every seed's checkpoint is saved" in err and "--resume" in err
    epochs = [len(_rows(stopped / f"seed-{s}")) for s in (0, 1)]
    assert epochs[0] == epochs[1] < 8  # stopped together, before the end
    assert main(["train", *flags, "--resume", "--out", str(stopped)]) == 0
    for s in (0, 1):
        a, b = (load_file(r / f"seed-{s}" / "model.safetensors") for r in (whole, stopped))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_more_seeds_than_a_group_train_in_groups(tiny_data: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeds are opened a group at a time (each holds its data): three seeds in groups of two, the last alone."""
    monkeypatch.setattr(seeds_module, "GROUP", 2)
    assert _train(tiny_data, "--seeds", "0-2", "--seeds-together", "yes", "--epochs", "1",
                  "--out", str(tmp_path / "s")) == 0
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["n"] == 3 and len(summary["metrics"]["test_loss"]["values"]) == 3
    first, second = summary["order"].split("; ", 1)[0], summary["order"].split("; ")[-1]
    assert first.startswith("seeds 0,1: together") and second == f"seeds 2: {seeds_module.ORDER_SEQUENTIAL}"


def test_a_signal_between_two_seeds_steps_stops_them_after_the_same_step() -> None:
    """Seeds in lockstep read the stop flag as it stood when their round of steps began: a Ctrl-C that lands
    after the first seed's step and before the second's is seen by both in the next round, not by the second
    alone (which would leave the two checkpoints a step apart)."""
    from vaekit.experiments.together import RoundStop

    with RoundStop() as stop:
        stop.latch()
        os.kill(os.getpid(), signal.SIGINT)  # mid-round: the handler records it
        assert stop.signal == signal.SIGINT and not stop.raised
        stop.latch()  # the next round
        assert stop.raised


def test_resume_keeps_the_mode_the_seeds_started_with_and_the_summary_tells_both_calls(tiny_data: Path,
                                                                                      tmp_path: Path) -> None:
    """Seeds started with ``--seeds-together yes`` and stopped: ``--resume`` without the flag continues them
    stacked, bit for bit as if never stopped, and the summary names what each call did."""
    out, whole = tmp_path / "stopped", tmp_path / "whole"
    flags = ["--seeds", "0,1", "--epochs", "2"]
    assert _train(tiny_data, *flags, "--seeds-together", "yes", "--out", str(whole)) == 0
    assert _train(tiny_data, *flags, "--seeds-together", "yes", "--epochs", "1", "--out", str(out)) == 0
    (out / "summary.json").unlink()  # as if stopped after the first epoch (the epochs may grow on resume)
    assert main(["train", "--data-dir", str(tiny_data), *flags, "--resume", "--quiet", "--out", str(out)]) == 0
    for s in (0, 1):
        a, b = (load_file(r / f"seed-{s}" / "model.safetensors") for r in (whole, out))
        assert all(torch.equal(a[k], b[k]) for k in a)
    order = json.loads((out / "summary.json").read_text())["order"]
    assert order.startswith("seeds 0,1: together") and "; seeds 0,1: resumed: together" in order


def test_resume_of_a_folder_without_seeds_is_refused(tiny_data: Path, tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    assert _train(tiny_data, "--seeds", "0,1", "--resume", "--out", str(tmp_path / "typo")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing to resume" in err and not (tmp_path / "typo").exists()


def test_seeds_are_ascii_digits(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--seeds", "\u0663", "--out", str(tmp_path / "x"), "--quiet"])
    assert "comma list" in capsys.readouterr().err


@pytest.fixture
def stopped(tiny_data: Path, tmp_path: Path) -> Path:
    """Seeds 0,1 trained one epoch with ``--seeds-together yes``, then their summary removed: seeds to resume."""
    out = tmp_path / "stopped"
    assert _train(tiny_data, "--seeds", "0,1", "--seeds-together", "yes", "--out", str(out), "--epochs", "1") == 0
    (out / "summary.json").unlink()
    return out


def _resume(data: Path, out: Path, seeds: str = "0,1") -> int:
    return main(["train", "--data-dir", str(data), "--seeds", seeds, "--epochs", "2", "--resume", "--quiet",
                 "--out", str(out)])


def test_resume_must_name_the_seeds_the_folder_holds(tiny_data: Path, stopped: Path, capsys) -> None:
    capsys.readouterr()
    assert _resume(tiny_data, stopped, "0") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds the seeds 0,1; resume them all with --seeds 0,1" in err
    assert not (stopped / "summary.json").exists()


def test_a_damaged_record_is_said_and_what_is_usable_in_it_kept(tiny_data: Path, stopped: Path, capsys) -> None:
    record = json.loads((stopped / "seeds.json").read_text())
    (stopped / "seeds.json").write_text(json.dumps({**record, "orders": ["a\u0000b", 3]}))
    capsys.readouterr()
    assert _resume(tiny_data, stopped) == 0
    err = capsys.readouterr().err
    assert "seeds.json has no usable orders" in err
    order = json.loads((stopped / "summary.json").read_text())["order"]
    assert order.startswith("seeds 0,1: resumed: together") and "\u0000" not in order  # the mode kept: yes


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_record_that_is_not_a_file_is_refused(tiny_data: Path, stopped: Path, kind: str, capsys) -> None:
    (stopped / "seeds.json").unlink()
    if kind == "folder":
        (stopped / "seeds.json").mkdir()
    else:
        os.mkfifo(stopped / "seeds.json")
    capsys.readouterr()
    assert _resume(tiny_data, stopped) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seeds.json is not a regular file" in err
