"""Data-parallel training: torchrun with two CPU processes (Gloo) equals one process with the same global batch.

The pieces that make it so are tested here in one process: the shards of each global batch, and the noise,
drawn for the global batch from the shared generators, of which each rank keeps its rows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit.config import TrainConfig
from vaekit.training.distributed import shard_rows
from vaekit.training.objective import draw_noise

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")


def test_shards_cover_every_position_of_every_global_batch_once() -> None:
    n, batch, world = 601, 127, 3
    parts = [shard_rows(n, batch, world, r) for r in range(world)]
    seen = torch.cat([p for p, _ in parts]).sort().values
    assert torch.equal(seen, torch.arange(n))
    for step in range(5):  # step s: the ranks' slices, in rank order, are the global batch's positions
        rows = torch.cat([p[o[step] : o[step + 1]] for p, o in parts])
        assert torch.equal(rows, torch.arange(step * batch, min(n, (step + 1) * batch)))


def _gens(seed: int, dynamic: bool) -> dict[str, torch.Generator]:
    gens = {"noise": torch.Generator().manual_seed(seed)}
    if dynamic:
        gens["binarize"] = torch.Generator().manual_seed(seed + 1)
    return gens


@pytest.mark.parametrize("objective,k,dynamic", [("elbo", 1, False), ("elbo", 1, True), ("iwae", 4, True)])
def test_each_rank_keeps_its_rows_of_the_global_draw(objective: str, k: int, dynamic: bool) -> None:
    """Whichever rank holds image i of a batch, it gets the noise one process would give it, and every rank's
    generators end where the single process's do (so rank 0's checkpoint resumes them all)."""
    config = TrainConfig(objective=objective, k=k)
    rows, world, zdim, pixels = 10, 3, 2, 7
    whole_gens = _gens(3, dynamic)
    whole = draw_noise(whole_gens, config, rows, zdim, pixels, torch.device("cpu"))
    assert whole.eps.shape == ((rows, zdim) if k == 1 and objective == "elbo" else (k, rows, zdim))
    assert (whole.uniforms is not None) == dynamic and (not dynamic or whole.uniforms.shape == (rows, pixels))
    kept_eps, kept_uniforms = [], []
    for rank in range(world):
        start, stop = rows * rank // world, rows * (rank + 1) // world  # the slices shard_rows gives
        gens = _gens(3, dynamic)
        part = draw_noise(gens, config, rows, zdim, pixels, torch.device("cpu"), keep=(start, stop - start))
        assert part.eps.shape[-2] == stop - start and part.eps.is_contiguous()
        kept_eps.append(part.eps)
        if dynamic:
            kept_uniforms.append(part.uniforms)
        for name, g in gens.items():
            assert torch.equal(g.get_state(), whole_gens[name].get_state()), name
    assert torch.equal(torch.cat(kept_eps, dim=-2), whole.eps)
    if dynamic:
        assert torch.equal(torch.cat(kept_uniforms), whole.uniforms)
    # and the next draw goes on from the same place: a step's noise differs from the last one's
    assert not torch.equal(draw_noise(whole_gens, config, rows, zdim, pixels, torch.device("cpu")).eps, whole.eps)


def _torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vaekit", "train", "--device", "cpu", "--quiet", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _assert_close(a: Path, b: Path) -> None:
    """Equal up to the order of floating-point sums: the two ranks' gradients are summed by the all-reduce.

    Adam divides by sqrt(v) + 1e-8, so for the few first-layer weights of nearly blank pixels, whose gradients
    are of the order of that epsilon, a different rounding moves the update by a visible fraction of a step:
    the bound is a hundredth of the learning rate, and nearly all weights agree to 1e-6.
    """
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        diff = (wa[k] - wb[k]).abs()
        assert diff.max() < 1e-5 if k != "encoder.0.weight" else diff.max() < 1e-4, (k, diff.max())
        assert (diff <= 1e-6).float().mean() > 0.999, k


@pytest.mark.slow
def test_two_processes_equal_one_with_the_same_global_batch(tiny_data: Path, tmp_path: Path) -> None:
    """A run started in one process and continued with ``torchrun --resume`` on two: every rank loads rank 0's
    checkpoint (the generators included) and trains on as the single process does. Batch 127 does not divide
    evenly between two ranks, nor 600 images into batches: both cases occur. (One torchrun start: three
    processes importing torch are most of this test's time.)"""
    flags = ["--dataset", "mnist", "--data-dir", str(tiny_data), "--batch-size", "127", "--lr", "1e-3",
             "--seed", "5", "--no-artifacts"]
    cfg = dict(dataset="mnist", data_dir=str(tiny_data), batch_size=127, lr=1e-3, seed=5, device="cpu",
               progress=False, artifacts=False)
    vaekit.train(TrainConfig(epochs=1, **cfg), tmp_path / "single")
    ddp = tmp_path / "ddp"
    shutil.copytree(tmp_path / "single", ddp)
    single = vaekit.train(TrainConfig(epochs=3, **cfg), tmp_path / "single", resume=True)
    _torchrun([*flags, "--epochs", "3", "--out", str(ddp), "--resume"], tmp_path)
    _assert_close(single.path, ddp)
    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 3
    assert summary["test_loss"] == pytest.approx(single.summary["test_loss"], abs=1e-3)
    metrics = vaekit.load_run(ddp).metrics
    assert [r["epoch"] for r in metrics] == [1, 2, 3]
    for a, b in zip(single.metrics, metrics, strict=True):  # the train loss is summed over both ranks' shards
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    assert json.loads((ddp / "config.json").read_text())["train"]["batch_size"] == 127  # the global batch
    assert not (ddp / ".lock").exists() and not [p for p in ddp.iterdir() if ".tmp-" in p.name]


@pytest.mark.slow
def test_two_processes_validate_as_one(tmp_path: Path) -> None:
    """With a validation split (your own images' default), rank 0 evaluates it every epoch and shares the numbers
    with the other rank (a collective: a rank that skipped it would hang); the test set comes once, at the end."""
    import numpy as np

    from .conftest import make_digits

    array = tmp_path / "digits.npy"
    np.save(array, make_digits(300, seed=3)[0])
    single = vaekit.train(TrainConfig(epochs=2, batch_size=64, device="cpu", progress=False, artifacts=False),
                          tmp_path / "single", data=array)
    _torchrun(["--data", str(array), "--recipe", "post", "--batch-size", "64", "--epochs", "2", "--no-artifacts",
               "--out", str(tmp_path / "ddp")], tmp_path)
    ddp = vaekit.load_run(tmp_path / "ddp")
    assert ddp.data["n_val"] == single.data["n_val"] > 0 and ddp.summary["world_size"] == 2
    for a, b in zip(single.metrics, ddp.metrics, strict=True):
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-2)
    assert "test_loss" not in ddp.metrics[0]
    assert ddp.summary["test_loss"] == pytest.approx(single.summary["test_loss"], abs=1e-2)
