"""The recorded (CUDA graph) step: static buffers, device scalars for the learning rate, KL weight and step,
the warm-up that leaves the state as it found it, the fallback for other batch sizes, the non-finite guard and
resumption. On the CPU the step runs on its static buffers without recording; where a CUDA GPU is present the
same tests run recorded graphs too."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vaekit import VAE, TrainConfig, model_config
from vaekit.training import graphs
from vaekit.training.distributed import DistContext
from vaekit.training.objective import Noise
from vaekit.training.optim import make_adam
from vaekit.training.plan import StepPlan, choose_plan, sync_every
from vaekit.training.step import TrainStep

CPU = torch.device("cpu")
DEVICES = [CPU] + ([torch.device("cuda", 0)] if torch.cuda.is_available() else [])
# A learning rate that float32 holds exactly, so the device-scalar rate is the same number as the float one.
EXACT_LR = 2.0**-11


def _setup(config: TrainConfig, graph: bool, seed: int = 0,
           device: torch.device = CPU) -> tuple[VAE, torch.optim.Optimizer, TrainStep]:
    torch.manual_seed(seed)
    model = VAE(model_config("mlp", hidden=[40, 12], zdim=3, image_shape=(10, 10))).to(device)
    opt = make_adam(model.parameters(), config.lr)
    step = TrainStep(model, opt, config, _plan(config, model, device, graph), DistContext(), device, _no_warning)
    return model, opt, step


def _plan(config: TrainConfig, model: VAE, device: torch.device, graph: bool) -> StepPlan:
    """The run's plan with the recording on or off as asked (on a CPU: its logic, without recording)."""
    plan = choose_plan(config, model, device, 1, fused_adam=True)
    return replace(plan, graph=graph, sync_every=sync_every(device, True, graph))


def _no_warning(msg: str) -> None:
    raise AssertionError(f"unexpected warning: {msg}")


def _batches(n: int, sizes: list[int], dynamic: bool, seed: int = 1,
             device: torch.device = CPU) -> list[tuple[torch.Tensor, Noise]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        rows = sizes[i % len(sizes)]
        u = torch.rand(rows, 100, generator=gen).to(device) if dynamic else None
        out.append((torch.randint(0, 256, (rows, 100), dtype=torch.uint8, generator=gen).to(device),
                    Noise(torch.randn(rows, 3, generator=gen).to(device), u)))
    return out


def _train(step: TrainStep, opt: torch.optim.Optimizer, batches, start: int = 0, lr=None, weights=None):
    losses = []
    for i, (x, noise) in enumerate(batches, start=start):
        if lr is not None:
            opt.param_groups[0]["lr"] = lr(i)
        losses.append(step(x, noise, weights(i) if weights else 1.0, i + 1).item())
        step.update()
    return losses


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("fused_step", [True, False])
def test_the_recorded_step_computes_the_ordinary_steps_numbers(fused_step: bool, device: torch.device) -> None:
    """With a rate float32 holds exactly, every loss and weight is the unrecorded step's (bit for bit on the
    CPU; a GPU may pick other product kernels inside a recording): the warm-up left no trace, and the epoch's
    short batch went through the ordinary step."""
    config = TrainConfig(lr=EXACT_LR, fused_step=fused_step, binarize="dynamic", batch_size=16)
    batches = _batches(13, [16, 16, 16, 5], dynamic=True, device=device)
    schedule = dict(lr=lambda i: EXACT_LR / 2 ** (i % 3), weights=lambda i: min(1.0, i / 8))
    runs = []
    for graph in (True, False):
        model, opt, step = _setup(config, graph, device=device)
        assert (step.graph is not None) == graph
        losses = _train(step, opt, batches, **schedule)
        assert not graph or step.graph.x is not None  # the full batches went through the recording's buffers
        assert not graph or (step.graph.graph is not None) == (device.type == "cuda")  # recorded on CUDA only
        runs.append((losses, torch.cat([p.detach().flatten() for p in model.parameters()]), step.guard.first_bad()))
    assert runs[0][2] is None and runs[1][2] is None
    if device.type == "cpu":
        assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    else:
        assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-6)
        assert torch.allclose(runs[0][1], runs[1][1], rtol=1e-5, atol=1e-7)


def test_the_post_learning_rate_stays_within_float_rounding() -> None:
    """At 3e-4 the device scalar holds the rate rounded to float32: the numbers move by rounding only."""
    config = TrainConfig(batch_size=32)
    batches = _batches(20, [32], dynamic=False)
    results = []
    for graph in (True, False):
        model, opt, step = _setup(config, graph)
        results.append((_train(step, opt, batches), torch.cat([p.detach().flatten() for p in model.parameters()])))
    assert results[0][0][0] == results[1][0][0]  # the first loss comes before any update
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("cut", [6, 3])
def test_resuming_with_a_new_recording_continues_bit_for_bit(device: torch.device, cut: int) -> None:
    """A second process loads the weights and Adam's state at step ``cut`` and records its own graph: the
    steps after are those of the run that went on. At 3 it starts on an epoch's short last batch, which it
    must not record (or every full batch after would run unrecorded)."""
    config = TrainConfig(binarize="dynamic", batch_size=16, lr=3e-4)
    batches = _batches(14, [16, 16, 16, 5], dynamic=True, device=device)
    model, opt, step = _setup(config, graph=True, device=device)
    whole = _train(step, opt, batches)
    model_a, opt_a, step_a = _setup(config, graph=True, device=device)
    _train(step_a, opt_a, batches[:cut])
    model_b, opt_b, step_b = _setup(config, graph=True, seed=5, device=device)
    model_b.load_state_dict(model_a.state_dict())
    opt_b.load_state_dict(opt_a.state_dict())
    resumed = _train(step_b, opt_b, batches[cut:], start=cut)
    assert step_b.graph is not None and step_b.graph.x is not None and step_b.graph.x.shape[0] == 16
    assert resumed == whole[cut:]
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model_b.parameters(), strict=True))


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_a_non_finite_step_never_reaches_the_weights(device: torch.device) -> None:
    model, opt, step = _setup(TrainConfig(batch_size=16), graph=True, device=device)
    batches = _batches(6, [16], dynamic=False, device=device)
    _train(step, opt, batches[:3])
    with torch.no_grad():
        model.decoder[-1].weight[0, 0] = math.nan
    before = [p.detach().clone() for p in model.parameters()]
    adam_steps = opt.state[model.encoder[0].weight]["step"].item()
    _train(step, opt, batches[3:], start=3)
    bad = step.guard.first_bad()
    assert bad is not None and bad[0] == 4 and math.isnan(bad[1])
    for a, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
    assert opt.state[model.encoder[0].weight]["step"].item() == adam_steps  # skipped steps are not counted


def test_a_failed_recording_puts_the_state_back() -> None:
    state = [torch.zeros(3), torch.ones(())]
    calls = []

    def body(x: torch.Tensor, noise: Noise, kl: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        state[0].add_(1.0)
        state[1].mul_(3.0)
        if len(calls) == 2:
            raise RuntimeError("operation not permitted when stream is capturing")
        return state[0].sum()

    graph = graphs.StepGraph(body, lambda: state, CPU, record=False, rows=2)
    with pytest.raises(graphs.RecordingError, match="stream is capturing"):
        graph(torch.zeros(2, 4, dtype=torch.uint8), Noise(torch.zeros(2, 3)), 1.0, 1)
    assert torch.equal(state[0], torch.zeros(3)) and state[1].item() == 1.0
    assert graph.x is None  # nothing half-recorded is kept


def test_a_step_that_cannot_be_recorded_runs_unrecorded_with_one_line() -> None:
    warnings: list[str] = []
    torch.manual_seed(0)
    model = VAE(model_config("mlp", hidden=[40, 12], zdim=3, image_shape=(10, 10)))
    opt = make_adam(model.parameters(), EXACT_LR)
    config = TrainConfig(lr=EXACT_LR, batch_size=16)
    step = TrainStep(model, opt, config, _plan(config, model, CPU, True), DistContext(), CPU, warnings.append)
    assert step.graph is not None
    step.graph.body = lambda *a: (_ for _ in ()).throw(RuntimeError("CUDA error: capture invalidated"))
    _, opt_ref, ref = _setup(config, graph=False)
    batches = _batches(3, [16], dynamic=False)
    assert _train(step, opt, batches) == _train(ref, opt_ref, batches)
    assert step.graph is None and len(warnings) == 1 and "could not be recorded" in warnings[0]


def test_recording_is_chosen_only_where_it_applies(monkeypatch) -> None:
    """The plan records on CUDA in fp32 with fused Adam on one process (the chooser reads the device's type
    only, so a CUDA device can be named here without one)."""
    cuda = torch.device("cuda", 0)
    model = VAE(model_config("seed"))
    assert choose_plan(TrainConfig(), model, cuda, 1, fused_adam=True).graph
    for change in (dict(cuda_graph=False), dict(compile=True), dict(detect_anomaly=True)):
        assert not choose_plan(TrainConfig(**change), model, cuda, 1, fused_adam=True).graph
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert not choose_plan(TrainConfig(precision="bf16"), model, cuda, 1, fused_adam=True).graph
    assert not choose_plan(TrainConfig(), model, CPU, 1, fused_adam=True).graph
    assert not choose_plan(TrainConfig(), model, cuda, 2, fused_adam=True).graph
    assert not choose_plan(TrainConfig(), model, cuda, 1, fused_adam=False).graph


@pytest.mark.skipif(not torch.cuda.is_available(), reason="recording needs a CUDA GPU")
def test_a_cuda_run_records_its_step_and_resumes_exactly(tmp_path) -> None:
    """Through ``vaekit.train`` on a GPU: a run extended from 1 to 2 epochs ends with the weights of a run that
    trained 2 epochs at once, and the unrecorded run (``--no-cuda-graph``) agrees within float rounding."""
    import hashlib

    import vaekit
    from tests.conftest import make_digits

    images, labels = make_digits(700, seed=4)

    recorded: list[bool] = []

    class Recorded(vaekit.Callback):
        def on_fit_end(self, trainer) -> None:
            recorded.append(trainer.step.graph is not None and trainer.step.graph.graph is not None)

    def run(name: str, epochs: int, resume: bool = False, **kw) -> tuple[str, list[float]]:
        cfg = TrainConfig(device="cuda", epochs=epochs, progress=False, artifacts=False, **kw)
        r = vaekit.train(cfg, tmp_path / name, resume=resume, data=(images, labels), callbacks=[Recorded()])
        sha = hashlib.sha256((Path(r.path) / "model.safetensors").read_bytes()).hexdigest()
        return sha, [row["train_loss"] for row in vaekit.run.read_metrics(r.path)]

    whole = run("whole", 2)
    run("split", 1)
    assert run("split", 2, resume=True) == whole
    plain = run("plain", 2, cuda_graph=False)
    assert plain[1] == pytest.approx(whole[1], rel=1e-5)
    assert recorded == [True, True, True, False]  # each graphed run replayed a recording; the last did not
