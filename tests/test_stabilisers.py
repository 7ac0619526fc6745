"""Gradient clipping, skipped updates and the weight average: their math, their counts, and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import vaekit
from vaekit import run as runs
from vaekit.config import ConfigError, TrainConfig
from vaekit.training.plan import choose_plan
from vaekit.training.stabilise import Stabiliser, WeightAverage, global_grad_norm

from .conftest import Killed, kill_at_save_point


def _cfg(data: Path, **kw) -> TrainConfig:
    base = dict(dataset="mnist", data_dir=str(data), epochs=2, batch_size=128, device="cpu", progress=False,
                artifacts=False)
    return TrainConfig(**{**base, **kw})


def _with_grads(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    for p in net.parameters():
        p.grad = torch.randn_like(p) * 10
    return net


def test_global_norm_is_the_norm_of_all_gradients_together() -> None:
    net = _with_grads()
    flat = torch.cat([p.grad.flatten() for p in net.parameters()])
    torch.testing.assert_close(global_grad_norm(list(net.parameters())), flat.norm())


def test_clipping_scales_to_the_threshold_and_leaves_small_gradients_alone() -> None:
    net = _with_grads()
    params = list(net.parameters())
    before = [p.grad.clone() for p in params]
    norm = float(global_grad_norm(params))
    assert Stabiliser(params, grad_clip=1.0, skip_threshold=0.0).admit()
    torch.testing.assert_close(float(global_grad_norm(params)), 1.0, rtol=1e-5, atol=0)
    for b, p in zip(before, params, strict=True):  # same direction
        torch.testing.assert_close(p.grad, b * (1.0 / (norm + 1e-6)))
    small = [p.grad.clone() for p in params]
    assert Stabiliser(params, grad_clip=10.0, skip_threshold=0.0).admit()
    for b, p in zip(small, params, strict=True):
        assert torch.equal(p.grad, b)


def test_skipping_refuses_updates_above_the_threshold_only() -> None:
    params = list(_with_grads().parameters())
    norm = float(global_grad_norm(params))
    assert not Stabiliser(params, 0.0, skip_threshold=norm * 0.99).admit()
    assert Stabiliser(params, 0.0, skip_threshold=norm * 1.01).admit()


def test_weight_average_matches_a_reference_loop() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    avg = WeightAverage(net, 0.9)
    ref = {k: v.clone().double() for k, v in net.state_dict().items()}
    for _ in range(20):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        avg.update()
        for k, v in net.state_dict().items():
            ref[k] = 0.9 * ref[k] + 0.1 * v.double()
    for k, v in avg.model.state_dict().items():
        torch.testing.assert_close(v.double(), ref[k], rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in avg.model.parameters())


def test_every_update_above_a_tiny_threshold_is_skipped_and_counted(tiny_data: Path, tmp_path: Path) -> None:
    run = vaekit.train(_cfg(tiny_data, epochs=1, skip_threshold=1e-12, model="mlp", zdim=2), tmp_path / "r")
    fresh = vaekit.train(_cfg(tiny_data, epochs=1, lr=1e-30, model="mlp", zdim=2), tmp_path / "f")
    steps = json.loads(runs.read_tensors(run.path / runs.CHECKPOINT)[1]["state"])["global_step"]
    assert run.summary["skipped_updates"] == steps > 0
    a, b = load_file(run.path / runs.WEIGHTS), load_file(fresh.path / runs.WEIGHTS)
    for k in a:  # nothing moved: the initial weights (an lr of 1e-30 moves nothing either)
        assert torch.equal(a[k], b[k]), k


def test_ema_weights_are_saved_and_the_trained_ones_checkpointed(tiny_data: Path, tmp_path: Path) -> None:
    run = vaekit.train(_cfg(tiny_data, epochs=1, ema=0.5), tmp_path / "r")
    saved = load_file(run.path / runs.WEIGHTS)
    tensors, _ = runs.read_tensors(run.path / runs.CHECKPOINT)
    assert all(torch.equal(saved[k], tensors[f"ema.{k}"]) for k in saved)
    assert any(not torch.equal(saved[k], tensors[f"model.{k}"]) for k in saved)
    assert run.summary["ema"] == 0.5 and run.summary["skipped_updates"] == 0


def test_stabilised_run_resumes_bit_for_bit(tiny_data: Path, tmp_path: Path) -> None:
    kw = dict(epochs=2, ema=0.9, grad_clip=5.0, skip_threshold=1500.0, likelihood="gaussian")  # norms ~950-1850
    full = vaekit.train(_cfg(tiny_data, **kw), tmp_path / "full")
    with pytest.raises(Killed):
        vaekit.train(_cfg(tiny_data, checkpoint_every=3, **kw), tmp_path / "part",
                     callbacks=[kill_at_save_point(1, 1)])
    resumed = vaekit.train(_cfg(tiny_data, **kw), tmp_path / "part", resume=True)
    a, b = load_file(full.path / runs.WEIGHTS), load_file(resumed.path / runs.WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.summary["skipped_updates"] == full.summary["skipped_updates"]
    assert 0 < full.summary["skipped_updates"] < 10  # of 10 steps: some skipped, some applied
    assert [r["test_loss"] for r in resumed.metrics] == [r["test_loss"] for r in full.metrics]


def test_settings_are_checked_and_the_plan_names_them() -> None:
    for bad in (dict(ema=1.0), dict(grad_clip=-1.0), dict(skip_threshold=float("inf")),
                dict(grad_clip=1.0, precision="fp16")):
        with pytest.raises(ConfigError):
            TrainConfig(**bad).validate()
    model = vaekit.VAE(vaekit.ModelConfig())
    cfg = TrainConfig(grad_clip=2.0, skip_threshold=100.0, ema=0.999)
    line = choose_plan(cfg, model, torch.device("cpu")).line()
    assert "clipped to 2" in line and "above 100 skipped" in line and "rate 0.999" in line
    assert "clipped" not in choose_plan(TrainConfig(), model, torch.device("cpu")).line()
    assert not choose_plan(cfg, model, torch.device("cuda")).graph


def test_flags_set_the_stabilisers() -> None:
    from vaekit.cli import build_parser
    from vaekit.cli.train import config_from_args

    args = build_parser().parse_args(["train", "--grad-clip", "200", "--skip-threshold", "3000", "--ema", "0.999"])
    config, given = config_from_args(args)
    assert (config.grad_clip, config.skip_threshold, config.ema) == (200.0, 3000.0, 0.999)
    assert {"grad_clip", "skip_threshold", "ema"} <= set(given)
    assert config_from_args(build_parser().parse_args(["train"]))[0].ema == 0.0


def test_hand_written_step_clips_like_autograd(tiny_data: Path, tmp_path: Path) -> None:
    """Clipping acts on the gradients whichever way they were computed: the same weights either way."""
    kw = dict(epochs=1, grad_clip=50.0, ema=0.9)
    fused = vaekit.train(_cfg(tiny_data, **kw), tmp_path / "a")
    auto = vaekit.train(_cfg(tiny_data, fused_step=False, **kw), tmp_path / "b")
    a, b = load_file(fused.path / runs.WEIGHTS), load_file(auto.path / runs.WEIGHTS)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
