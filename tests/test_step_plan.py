"""The step plan: which training step runs for which settings, model, device and number of processes, why,
the one line ``vaekit train`` prints for it, and the step built from it. CUDA plans are chosen for a named
CUDA device: the chooser reads only the device's type (and, for bf16, whether it has bf16 arithmetic)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vaekit import VAE, TrainConfig, model_config
from vaekit.cli import main
from vaekit.config import ConfigError
from vaekit.training import precision
from vaekit.training.distributed import DistContext
from vaekit.training.gradients import Autograd, Compiled, HandWritten
from vaekit.training.optim import is_fused, make_adam
from vaekit.training.plan import choose_plan
from vaekit.training.step import TrainStep

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)
SEED = VAE(model_config("seed"))

# (settings, gradients, a phrase of the reason) on one CPU process.
CPU_PLANS = [
    (dict(), "hand-written", "MLP, single-draw ELBO, Bernoulli, fp32, one process"),
    (dict(binarize="dynamic", kl_warmup=2, beta=0.5), "hand-written", "MLP, single-draw ELBO"),
    (dict(objective="iwae", k=5), "autograd", "--objective iwae has no hand-written step"),
    (dict(k=3), "autograd", "--k 3 has no hand-written step"),
    (dict(likelihood="gaussian"), "autograd", "--likelihood gaussian has no hand-written step"),
    (dict(likelihood="continuous-bernoulli"), "autograd", "--likelihood continuous-bernoulli"),
    (dict(fused_step=False), "autograd", "--no-fused-step"),
    (dict(detect_anomaly=True), "autograd", "--detect-anomaly"),
    (dict(compile=True), "compiled", "--compile"),
    (dict(compile=True, fused_step=False), "compiled", "--compile"),
]


@pytest.mark.parametrize(("change", "gradients", "why"), CPU_PLANS)
def test_a_cpu_plan_is_chosen_as_documented(change: dict, gradients: str, why: str) -> None:
    plan = choose_plan(TrainConfig(**change), SEED, CPU)
    assert (plan.gradients, plan.strategy, plan.graph, plan.precision) == (gradients, gradients, False, "fp32")
    assert plan.sync_every == 1 and not plan.distributed and plan.precision_warning is None
    assert any(why in w for w in plan.why), plan.why
    assert "CUDA" not in plan.line()  # on a CPU recording is not among the choices


def test_models_the_hand_written_step_does_not_know_go_through_autograd() -> None:
    conv = choose_plan(TrainConfig(precision="fp32"), VAE(model_config("conv", image_shape=(16, 16))), CPU)
    assert conv.gradients == "autograd" and "the conv model has no hand-written step" in conv.line()
    learned = VAE(model_config("seed", learn_sigma=True))
    plan = choose_plan(TrainConfig(likelihood="gaussian", learn_sigma=True), learned, CPU)
    assert plan.gradients == "autograd"


def test_torchrun_trains_with_autograd_under_ddp() -> None:
    plan = choose_plan(TrainConfig(), SEED, CPU, world_size=2)
    assert plan.gradients == "autograd" and plan.distributed and not plan.graph and plan.sync_every == 1
    assert plan.line() == ("step: autograd (DDP averages the gradients inside autograd's backward); fp32; "
                           "DDP over 2 processes; non-finite check every step")


def test_the_post_on_a_cpu_prints_this_line() -> None:
    assert choose_plan(TrainConfig(), SEED, CPU).line() == (
        "step: hand-written (MLP, single-draw ELBO, Bernoulli, fp32, one process); fp32; one process; "
        "non-finite check every step")


def test_the_post_on_cuda_is_the_hand_written_step_recorded_as_a_graph() -> None:
    plan = choose_plan(TrainConfig(), SEED, CUDA)
    assert (plan.strategy, plan.gradients, plan.graph, plan.sync_every) == ("cuda-graph", "hand-written", True, 50)
    assert plan.line() == (
        "step: cuda-graph of hand-written (MLP, single-draw ELBO, Bernoulli, fp32, one process; recorded on CUDA "
        "in fp32 with fused Adam on one process); fp32; one process; non-finite check every 50 steps")
    autograd = choose_plan(TrainConfig(fused_step=False), SEED, CUDA)
    assert (autograd.strategy, autograd.gradients) == ("cuda-graph", "autograd")


@pytest.mark.parametrize(("change", "world_size", "fused_adam", "why", "every"), [
    (dict(cuda_graph=False), 1, True, "no CUDA graph: --no-cuda-graph", 50),
    (dict(compile=True), 1, True, "no CUDA graph: --compile", 50),
    (dict(detect_anomaly=True), 1, True, "no CUDA graph: --detect-anomaly", 50),
    (dict(), 2, True, "no CUDA graph: DDP is not recorded", 50),
    (dict(), 1, False, "no CUDA graph: Adam has no fused kernel here", 1),
])
def test_cuda_runs_that_are_not_recorded_say_why(change: dict, world_size: int, fused_adam: bool, why: str,
                                                 every: int) -> None:
    plan = choose_plan(TrainConfig(**change), SEED, CUDA, world_size, fused_adam)
    assert not plan.graph and plan.strategy == plan.gradients and why in plan.why
    assert plan.sync_every == every  # a deferred read needs the fused kernel, which skips flagged updates


def test_reduced_precision_on_cuda_goes_through_autograd_unrecorded(monkeypatch) -> None:
    fp16 = choose_plan(TrainConfig(precision="fp16"), SEED, CUDA)
    assert (fp16.gradients, fp16.graph, fp16.precision) == ("autograd", False, "fp16")
    assert "fp16 autocast with loss scaling" in fp16.line()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    bf16 = choose_plan(TrainConfig(precision="bf16"), SEED, CUDA)
    assert (bf16.gradients, bf16.graph, bf16.precision) == ("autograd", False, "bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    fallback = choose_plan(TrainConfig(precision="bf16"), SEED, CUDA)
    assert (fallback.strategy, fallback.precision) == ("cuda-graph", "fp32")
    assert "no bf16 arithmetic" in fallback.precision_warning


def test_the_precision_trained_in_decides_on_a_cpu(monkeypatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    emulated = choose_plan(TrainConfig(precision="bf16"), SEED, CPU)
    assert (emulated.gradients, emulated.precision) == ("hand-written", "fp32")
    assert "training in fp32" in emulated.precision_warning
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    native = choose_plan(TrainConfig(precision="bf16"), SEED, CPU)
    assert (native.gradients, native.precision) == ("autograd", "bf16")
    assert "bf16 autocast has no hand-written step" in native.line()
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        choose_plan(TrainConfig(precision="fp16"), SEED, CPU)


CONV = VAE(model_config("conv", image_shape=(28, 28)))


def test_the_default_precision_is_bf16_for_conv_models_on_a_cpu_with_native_bf16(monkeypatch) -> None:
    """``--precision auto`` (the default): bf16 for a conv model where the CPU has it, fp32 elsewhere and for
    every MLP (whose plan and line are what they were, bit for bit the hand-written step)."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    conv = choose_plan(TrainConfig(), CONV, CPU)
    assert (conv.gradients, conv.precision, conv.precision_warning) == ("autograd", "bf16", None)
    assert "bf16 by default for a conv model on a CPU with native bf16" in conv.line()
    post = choose_plan(TrainConfig(), SEED, CPU)
    assert (post.gradients, post.precision) == ("hand-written", "fp32")
    assert "by default" not in post.line()
    asked = choose_plan(TrainConfig(precision="fp32"), CONV, CPU)  # an explicit choice is kept, without comment
    assert asked.precision == "fp32" and "by default" not in asked.line()
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    plain = choose_plan(TrainConfig(), CONV, CPU)
    assert (plain.precision, plain.precision_warning) == ("fp32", None)
    assert "fp32 by default: no native bf16 on this cpu" in plain.line()


def test_the_default_precision_on_cuda_is_bf16_for_conv_models_that_have_it(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    conv = choose_plan(TrainConfig(), CONV, CUDA)
    assert (conv.precision, conv.graph) == ("bf16", False)
    assert choose_plan(TrainConfig(), SEED, CUDA).precision == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert choose_plan(TrainConfig(), CONV, CUDA).precision == "fp32"


def test_conv_models_train_channels_last_on_a_cpu_and_the_mlps_do_not(monkeypatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    model = VAE(model_config("conv", image_shape=(12, 12, 3)))
    plan = choose_plan(TrainConfig(precision="fp32"), model, CPU)
    assert plan.channels_last and "channels-last convolutions" in plan.line()
    assert not choose_plan(TrainConfig(), SEED, CPU).channels_last
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert not choose_plan(TrainConfig(), model, CUDA).channels_last
    opt = make_adam(model.parameters(), 1e-3)
    TrainStep(model, opt, TrainConfig(precision="fp32"), choose_plan(TrainConfig(precision="fp32"), model, CPU,
                                                                     fused_adam=is_fused(opt)),
              DistContext(), CPU, print)
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


@pytest.mark.parametrize(("change", "kind"), [(dict(), HandWritten), (dict(fused_step=False), Autograd),
                                              (dict(objective="iwae", k=2), Autograd)])
def test_the_step_is_built_as_the_plan_names_it(change: dict, kind: type) -> None:
    config = TrainConfig(**change)
    opt = make_adam(SEED.parameters(), config.lr)
    plan = choose_plan(config, SEED, CPU)
    step = TrainStep(SEED, opt, config, plan, DistContext(), CPU, print)
    assert type(step.gradients) is kind and step.graph is None and step.every == plan.sync_every
    assert not step.compiled and step.prec.name == "fp32"
    step.close()


def test_a_compiled_plan_builds_the_compiled_step() -> None:
    config = TrainConfig(compile=True)
    model = VAE(model_config("mlp", hidden=[8], zdim=2, image_shape=(4, 4)))
    warnings: list[str] = []
    step = TrainStep(model, make_adam(model.parameters(), 1e-3), config, choose_plan(config, model, CPU),
                     DistContext(), CPU, warnings.append)
    assert type(step.gradients) is Compiled
    assert step.compiled == (not warnings)  # without a C++ compiler it says so and trains eagerly


def test_vaekit_train_prints_the_plan_once_and_quiet_does_not(tiny_data: Path, tmp_path: Path, capsys) -> None:
    common = ["train", "--dataset", "mnist", "--data-dir", str(tiny_data), "--device", "cpu", "--epochs", "1",
              "--no-artifacts", "--objective", "iwae", "--k", "2"]
    assert main([*common, "--out", str(tmp_path / "loud")]) == 0
    lines = capsys.readouterr().err.splitlines()
    plan = [i for i, line in enumerate(lines) if line.startswith("step: ")]
    assert [lines[i] for i in plan] == ["step: autograd (--objective iwae has no hand-written step); fp32; "
                                        "one process; non-finite check every step"]
    assert any(line.startswith("epoch 1/1") for line in lines[plan[0] + 1:])
    assert main([*common, "--quiet", "--out", str(tmp_path / "quiet")]) == 0
    assert "step: " not in capsys.readouterr().err
