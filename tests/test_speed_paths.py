"""The fast paths of training on the CPU: the deferred non-finite check the GPU uses, precision, compile
fallback, learning-rate schedules and recipes. Speed itself is measured by benchmarks/, not asserted here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit import compiled
from vaekit.cli import build_parser, main
from vaekit.cli.train import config_from_args
from vaekit.config import TrainConfig
from vaekit.errors import NonFiniteError
from vaekit.model import VAE, model_config
from vaekit.training import plan as plan_mod
from vaekit.training.objective import Noise, batch_loss
from vaekit.training.precision import Precision, cpu_has_native_bf16
from vaekit.training.schedule import lr_at
from vaekit.training.step import FiniteGuard

from .conftest import Killed, kill_at_save_point


def _cfg(data: Path, **kw) -> TrainConfig:
    base = dict(dataset="mnist", data_dir=str(data), epochs=2, batch_size=128, device="cpu", progress=False,
                artifacts=False)
    return TrainConfig(**{**base, **kw})


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model.safetensors")


def _assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------ the non-finite guard


def test_guard_flags_a_nan_gradient_and_remembers_the_first_bad_step() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    guard = FiniteGuard([p], torch.device("cpu"), every=10)
    for step, (grad, loss) in enumerate([(1.0, 2.0), (float("nan"), 3.0), (1.0, float("inf"))], start=1):
        p.grad = torch.full((3,), grad)
        guard.observe(torch.tensor(loss), step)
        if step == 1:
            assert guard.first_bad() is None
    assert guard.first_bad() == (2, 3.0)  # the first bad step, a finite loss there: the gradient
    eager = FiniteGuard([p], torch.device("cpu"), every=1)
    p.grad = torch.ones(3)
    eager.observe(torch.tensor(float("inf")), 7)
    assert eager.first_bad() == (7, float("inf"))


def test_deferred_checks_give_the_same_weights_as_per_step_checks(tiny_data: Path, tmp_path: Path,
                                                                  monkeypatch) -> None:
    """The accelerator path (flag read every N steps, the fused optimizer honouring it) run on the CPU."""
    eager = vaekit.train(_cfg(tiny_data), tmp_path / "eager")
    monkeypatch.setattr(plan_mod, "sync_every", lambda device, fused_adam, graph=False: 3)
    deferred = vaekit.train(_cfg(tiny_data), tmp_path / "deferred")
    _assert_bitwise_equal(_weights(eager.path), _weights(deferred.path))


class InfiniteBiasAfterStep(vaekit.Callback):
    """After step ``step`` sets a decoder bias to +inf, so every later loss is infinite; keeps the weights as they
    stood then, and as they stand when training stops."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.steps: list[int] = []
        self.poisoned: list[torch.Tensor] = []
        self.final: list[torch.Tensor] = []

    def on_step_end(self, trainer, result) -> None:
        self.steps.append(result.step)
        if result.step == self.step:
            with torch.no_grad():
                trainer.model.decoder[-1].bias[0] = float("inf")
            self.poisoned = [p.detach().clone() for p in trainer.model.parameters()]

    def teardown(self, trainer) -> None:
        self.final = [p.detach().clone() for p in trainer.model.parameters()]


def test_deferred_checks_name_the_first_bad_step_and_never_update_with_it(tiny_data: Path, tmp_path: Path,
                                                                          monkeypatch) -> None:
    """Read every 4 steps: the loss of step 2 is infinite, the host learns it at step 4 and names step 2, and the
    fused optimizer skipped the updates of steps 2, 3 and 4 (a NaN gradient never reached the weights)."""
    monkeypatch.setattr(plan_mod, "sync_every", lambda device, fused_adam, graph=False: 4)
    probe = InfiniteBiasAfterStep(1)
    with pytest.raises(NonFiniteError, match=r"the loss became inf at epoch 1, step 2; no checkpoint"):
        vaekit.train(_cfg(tiny_data), tmp_path / "run", callbacks=[probe])
    assert probe.steps == [1, 2, 3]  # read back at step 4, naming step 2
    assert len(probe.final) == len(probe.poisoned) > 0
    assert all(torch.equal(a, b) for a, b in zip(probe.final, probe.poisoned, strict=True))


# ------------------------------------------------------------------------------------ precision


def test_reduced_precision_keeps_the_objective_in_float32() -> None:
    """Autocast runs the Linear layers in bf16; the hooks hand float32 to the likelihood and the KL."""
    model = VAE(model_config("seed"))
    prec = Precision.create("bf16", torch.device("cpu"))
    prec.attach(model)
    x = torch.randint(0, 256, (8, 784), dtype=torch.uint8)
    with prec.autocast():
        inner = model.decoder[0](torch.zeros(8, 2))
        out = model.decoder(torch.zeros(8, 2))
        loss = batch_loss(model, x, Noise(torch.randn(8, 2, generator=torch.Generator().manual_seed(0))),
                          TrainConfig())
    assert inner.dtype == torch.bfloat16  # the products inside run in bf16 ...
    assert out.dtype == torch.float32 and loss.dtype == torch.float32  # ... what leaves the decoder is float32
    prec.detach()
    with prec.autocast():
        assert model.decoder(torch.zeros(8, 2)).dtype == torch.bfloat16


def test_bf16_training_agrees_with_fp32(tiny_data: Path, tmp_path: Path, capsys) -> None:
    """bf16 test losses stay within 1% of fp32's; a CPU without native bf16 trains in fp32 and says so."""
    fp32 = vaekit.train(_cfg(tiny_data, epochs=3, batch_size=64, lr=1e-3), tmp_path / "fp32")
    capsys.readouterr()
    bf16 = vaekit.train(_cfg(tiny_data, epochs=3, batch_size=64, lr=1e-3, precision="bf16"), tmp_path / "bf16")
    err = capsys.readouterr().err
    if cpu_has_native_bf16():
        assert bf16.summary["precision"] == "bf16" and "--precision" not in err
        for a, b in zip(fp32.metrics, bf16.metrics, strict=True):
            assert b["test_loss"] == pytest.approx(a["test_loss"], rel=0.01)
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.01)
    else:
        assert bf16.summary["precision"] == "fp32" and "training in fp32" in err
        _assert_bitwise_equal(_weights(fp32.path), _weights(bf16.path))


def test_fp16_on_the_cpu_is_a_one_line_error_before_anything_is_written(tiny_data: Path, tmp_path: Path,
                                                                         capsys) -> None:
    code = main(["train", "--dataset", "mnist", "--data-dir", str(tiny_data), "--device", "cpu", "--quiet",
                 "--precision", "fp16", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--precision fp16 needs a CUDA GPU" in err[0]
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------ compile


def test_compile_failure_falls_back_to_exactly_the_eager_run(tiny_data: Path, tmp_path: Path, monkeypatch,
                                                             capsys) -> None:
    """A compiled step that fails after accumulating some gradient: its partial work is dropped and the step
    redone eagerly, so the run ends bit for bit where an eager run ends, with one warning."""
    def broken_compile(fn, *args, **kwargs):
        def run(*inputs):
            fn(*inputs).backward()  # partial work: gradients accumulated before the failure
            raise RuntimeError("no compiler today")

        return run

    eager = vaekit.train(_cfg(tiny_data), tmp_path / "eager")
    monkeypatch.setattr(compiled, "compile_unsupported_reason", lambda device: None)
    monkeypatch.setattr(torch, "compile", broken_compile)
    capsys.readouterr()
    fallen = vaekit.train(_cfg(tiny_data, compile=True), tmp_path / "compiled")
    err = capsys.readouterr().err
    assert "--compile: torch.compile failed (RuntimeError: no compiler today); continuing without it" in err
    assert err.count("torch.compile failed") == 1 and fallen.summary["compiled"] is False
    _assert_bitwise_equal(_weights(eager.path), _weights(fallen.path))


def test_compile_where_it_cannot_work_says_why_and_trains(tiny_data: Path, tmp_path: Path, monkeypatch,
                                                          capsys) -> None:
    monkeypatch.setattr(compiled, "compile_unsupported_reason", lambda device: "no C++ compiler was found")
    run = vaekit.train(_cfg(tiny_data, epochs=1, compile=True), tmp_path / "run")
    assert "--compile: no C++ compiler was found; training without it" in capsys.readouterr().err
    assert run.summary["compiled"] is False and json.loads((run.path / "config.json").read_text())["train"]["compile"]


# ------------------------------------------------------------------------------------ schedules and recipes


def test_learning_rate_schedules() -> None:
    assert [lr_at("constant", 3e-4, 0, 100, s) for s in (0, 50, 99)] == [3e-4] * 3
    rates = [lr_at("cosine", 1.0, 10, 110, s) for s in range(110)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0) and rates[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False)) and rates[-1] < 1e-3
    assert lr_at("constant", 2.0, 4, 100, 1) == pytest.approx(1.0)  # warm-up applies to constant too




def test_scheduled_run_resumes_bit_for_bit_mid_epoch(tiny_data: Path, tmp_path: Path) -> None:
    settings = dict(epochs=3, lr=2e-3, lr_schedule="cosine", lr_warmup=0.5)
    full = vaekit.train(_cfg(tiny_data, **settings), tmp_path / "full")
    with pytest.raises(Killed):  # global step 8, inside the second epoch, past the warm-up, decaying
        vaekit.train(_cfg(tiny_data, checkpoint_every=4, **settings), tmp_path / "part",
                     callbacks=[kill_at_save_point(1, 3)])
    resumed = vaekit.train(_cfg(tiny_data, **settings), tmp_path / "part", resume=True)
    _assert_bitwise_equal(_weights(full.path), _weights(resumed.path))
    assert [r["lr"] for r in resumed.metrics] == [r["lr"] for r in full.metrics]
    assert full.metrics[0]["lr"] > full.metrics[1]["lr"] > full.metrics[2]["lr"] >= 0


def test_recipe_fast_sets_its_settings_and_explicit_flags_win() -> None:
    args = build_parser().parse_args(["train", "--recipe", "fast", "--epochs", "3", "--precision", "fp32"])
    config, given = config_from_args(args)
    assert (config.recipe, config.epochs, config.precision, config.lr_schedule) == ("fast", 3, "fp32", "cosine")
    assert config.batch_size > 128 and config.lr > 3e-4 and config.lr_warmup > 0
    default, _ = config_from_args(build_parser().parse_args(["train"]))
    assert (default.batch_size, default.lr, default.epochs, default.precision, default.lr_schedule) == \
        (128, 3e-4, 50, "auto", "constant") and not default.compile


@pytest.mark.parametrize("flags", [["--precision", "fp8"], ["--lr-schedule", "linear"], ["--recipe", "slow"],
                                   ["--lr-warmup", "-1"]])
def test_bad_speed_flags_exit_2_with_one_line(flags: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", *flags])
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
