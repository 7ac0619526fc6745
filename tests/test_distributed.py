"""Data-parallel training: torchrun with two CPU processes (Gloo) equals one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit.config import TrainConfig
from vaekit.distributed import RowSlicedNoise, shard_rows

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")


def test_shards_cover_every_position_of_every_global_batch_once() -> None:
    n, batch, world = 601, 127, 3
    parts = [shard_rows(n, batch, world, r) for r in range(world)]
    seen = torch.cat([p for p, _ in parts]).sort().values
    assert torch.equal(seen, torch.arange(n))
    for step in range(5):  # step s: the ranks' slices, in rank order, are the global batch's positions
        rows = torch.cat([p[o[step] : o[step + 1]] for p, o in parts])
        assert torch.equal(rows, torch.arange(step * batch, min(n, (step + 1) * batch)))


def test_row_sliced_noise_gives_each_rank_its_rows_of_the_global_draw() -> None:
    shared = torch.Generator().manual_seed(3)
    reference = torch.Generator().manual_seed(3)
    mode = RowSlicedNoise([shared])
    mode.set_rows(total=10, start=4, rows=3)
    with mode:
        eps = torch.randn((3, 2), generator=shared)
        many = torch.randn((5, 3, 2), generator=shared)
        pixels = torch.rand(torch.Size([3, 7]), generator=shared)
        untouched = torch.randn(3, generator=torch.Generator().manual_seed(9))  # another generator: as is
    assert torch.equal(eps, torch.randn((10, 2), generator=reference)[4:7])
    assert torch.equal(many, torch.randn((5, 10, 2), generator=reference)[:, 4:7])
    assert torch.equal(pixels, torch.rand((10, 7), generator=reference)[4:7])
    assert torch.equal(untouched, torch.randn(3, generator=torch.Generator().manual_seed(9)))
    assert torch.equal(shared.get_state(), reference.get_state())  # the generators advanced alike


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


def test_two_processes_equal_one_with_the_same_global_batch(tiny_data: Path, tmp_path: Path) -> None:
    """Batch 127 does not divide evenly between two ranks, nor 600 images into batches: both cases occur."""
    flags = ["--dataset", "mnist", "--data-dir", str(tiny_data), "--batch-size", "127", "--lr", "1e-3",
             "--seed", "5"]
    cfg = dict(dataset="mnist", data_dir=str(tiny_data), batch_size=127, lr=1e-3, seed=5, device="cpu",
               progress=False)
    single = vaekit.train(TrainConfig(epochs=3, **cfg), tmp_path / "single")

    ddp = tmp_path / "ddp"
    _torchrun([*flags, "--epochs", "3", "--out", str(ddp)], tmp_path)
    _assert_close(single.path, ddp)
    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 3
    assert summary["test_loss"] == pytest.approx(single.summary["test_loss"], abs=1e-3)
    metrics = vaekit.load_run(ddp).metrics
    for a, b in zip(single.metrics, metrics, strict=True):  # the train loss is summed over both ranks' shards
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    assert json.loads((ddp / "config.json").read_text())["train"]["batch_size"] == 127  # the global batch
    assert not (ddp / ".lock").exists() and not [p for p in ddp.iterdir() if ".tmp-" in p.name]

    # resuming under torchrun: every rank loads rank 0's checkpoint and continues identically
    part = tmp_path / "part"
    _torchrun([*flags, "--epochs", "2", "--out", str(part)], tmp_path)
    _torchrun([*flags, "--epochs", "3", "--out", str(part), "--resume"], tmp_path)
    _assert_close(single.path, part)
    assert [r["epoch"] for r in vaekit.load_run(part).metrics] == [1, 2, 3]
