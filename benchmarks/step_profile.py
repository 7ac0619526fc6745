"""Where the time of one training step goes: matrix products, element-wise kernels, the optimizer, dispatch.

Used by ``benchmarks/throughput.py --profile``. The step is vaekit's own (:class:`vaekit.training.step.TrainStep`,
as the training loop runs it, on real batches of the data), timed without a profiler for the step's wall time
(median of several repeats), then run under ``torch.profiler`` to split that time:

* **matrix products**: the time inside ``mm``/``addmm``/``bmm`` and the convolutions (``_convolution`` itself
  computes the transposed ones on a CPU; on a GPU, the GEMM and convolution kernels);
* **element-wise**: the time inside every other operation that computes (activations, likelihood, KL, copies,
  reductions, the non-finite check; with ``--compile``, the generated kernels);
* **optimizer**: inside fused Adam and its step counting;
* **dispatch and other**: the rest of the wall time: Python, operator dispatch, the autograd engine, views
  and allocation (on a GPU, the time the GPU waits for the host).

Each repeat times the step unprofiled, then runs as many steps under the profiler (on the CPU each operation's
own, "self", time; on a GPU the kernels' device times); the wall time and every category are medians over the
repeats, and dispatch is what the wall time leaves. The variants' repeats alternate, so a busy moment of the
machine hits all alike. The profiler's own cost falls mostly between operations, outside their self times. The floor
is the step's product FLOPs at this machine's large-product rate: the time the step would take if it did
nothing but multiply at full speed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

import vaekit
from vaekit.training.distributed import DistContext
from vaekit.training.objective import draw_noise
from vaekit.training.optim import is_fused, make_adam
from vaekit.training.plan import choose_plan
from vaekit.training.step import TrainStep

CATEGORIES = ("matrix products", "element-wise", "optimizer", "dispatch and other")
_PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution", "aten::_convolution",
             "aten::convolution_backward", "aten::_convolution_mode", "aten::cudnn_convolution",
             "aten::cudnn_convolution_transpose", "aten::slow_conv_transpose2d", "aten::_slow_conv2d_forward",
             "aten::_slow_conv2d_backward", "aten::slow_conv_transpose2d_backward")
_OPTIMIZER = ("aten::_fused_adam_", "aten::_foreach_add_", "aten::_foreach_sub_")
# Operations that only make views or allocate: their time is overhead, not arithmetic.
_NO_ARITHMETIC = {"aten::" + n for n in (
    "view", "t", "transpose", "as_strided", "expand", "split", "split_with_sizes", "slice", "select", "detach",
    "reshape", "unsqueeze", "squeeze", "alias", "empty", "empty_strided", "empty_like", "_unsafe_view", "resize_",
    "lift_fresh", "to", "linear", "matmul", "narrow", "permute", "contiguous", "numpy_T", "_reshape_alias",
    "unbind", "chunk", "flatten", "unflatten", "item", "_local_scalar_dense", "is_nonzero", "result_type",
    "conv2d", "convolution", "conv_transpose2d", "zeros_like", "ones_like")}
_GPU_PRODUCTS = ("gemm", "gemv", "cutlass", "xmma", "cudnn", "convolution", "conv2d", "implicit_convolve", "wgrad",
                 "dgrad", "winograd")
_GPU_OPTIMIZER = ("adam",)  # the fused Adam kernel (the step counting and the non-finite check are element-wise)


@dataclass
class StepProfile:
    label: str
    step_ms: float
    parts_ms: dict[str, float]
    repeats: int
    steps: int


def build_step(model_name: str, shape: tuple[int, ...], device: torch.device, batch: int, precision: str,
               compiled: bool, fused_step: bool, cuda_graph: bool) -> tuple[TrainStep, vaekit.TrainConfig, vaekit.VAE]:
    """vaekit's training step as the loop builds it, for the given settings."""
    config = vaekit.TrainConfig(model=model_name, batch_size=batch, precision=precision, compile=compiled,
                                fused_step=fused_step, cuda_graph=cuda_graph)
    torch.manual_seed(0)
    model = vaekit.VAE(vaekit.model_config(model_name, image_shape=shape)).to(device)
    opt = make_adam(model.parameters(), config.lr)
    plan = choose_plan(config, model, device, 1, is_fused(opt))
    if plan.precision_warning:
        print(f"--precision {precision}: {plan.precision_warning}")
    step = TrainStep(model, opt, config, plan, DistContext(), device, print)
    return step, config, model


def _runner(step: TrainStep, config: vaekit.TrainConfig, model: vaekit.VAE, images: np.ndarray,
            device: torch.device) -> Callable[[int], None]:
    rows = torch.from_numpy(np.ascontiguousarray(images.reshape(len(images), -1))).to(device)
    gens = {"noise": torch.Generator(device=device).manual_seed(1)}
    n, b = rows.shape[0], config.batch_size
    counter = [0]

    def run(steps: int) -> None:
        for _ in range(steps):
            s = counter[0] % max(1, n // b)
            x = rows[s * b:(s + 1) * b]
            noise = draw_noise(gens, config, x.shape[0], model.zdim, x.shape[1], device)
            step(x, noise, 1.0, counter[0] + 1)
            step.update()
            counter[0] += 1

    return run


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings of a GPU are otherwise of the launches only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _wall_ms(run: Callable[[int], None], device: torch.device, steps: int) -> float:
    sync(device)
    t0 = time.perf_counter()
    run(steps)
    sync(device)
    return (time.perf_counter() - t0) / steps * 1e3


def _classify_cpu(name: str) -> str | None:
    if name.startswith("## Call CompiledFxGraph"):  # torch.compile's generated kernels (its products are aten::mm)
        return "element-wise"
    if name in _PRODUCTS:
        return "matrix products"
    if name in _OPTIMIZER:
        return "optimizer"
    if not name.startswith("aten::") or name in _NO_ARITHMETIC:
        return None
    return "element-wise"


def _classify_gpu(name: str) -> str:
    low = name.lower()
    if any(k in low for k in _GPU_OPTIMIZER):
        return "optimizer"
    if any(k in low for k in _GPU_PRODUCTS):
        return "matrix products"
    return "element-wise"


def _split(prof: profile, device: torch.device, steps: int) -> dict[str, float]:
    """Milliseconds per step in each computing category, from the profiler's events."""
    parts = dict.fromkeys(CATEGORIES[:3], 0.0)
    if device.type == "cuda":
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA and "memcpy" not in e.name.lower():
                parts[_classify_gpu(e.name)] += e.device_time_total / 1e3 / steps
        return parts
    for avg in prof.key_averages():
        kind = _classify_cpu(avg.key)
        if kind is not None:
            parts[kind] += avg.self_cpu_time_total / 1e3 / steps
    return parts


def profile_steps(variants: list[tuple[str, TrainStep, vaekit.TrainConfig, vaekit.VAE]], images: np.ndarray,
                  device: torch.device, steps: int | None = None, repeats: int = 5) -> list[StepProfile]:
    """Each step's wall time and its split into the four categories.

    Every repeat times ``steps`` unprofiled steps of each variant, then profiles as many (the variants
    alternate, so machine noise hits all alike); the wall time and each category's time are medians over the
    repeats, and dispatch is what the wall time leaves. ``steps``: by default as many as last about half a
    second (5 to 100).
    """
    runs = [_runner(step, config, model, images, device) for _, step, config, model in variants]
    for run in runs:
        run(10)  # warm-up: allocator, first-step state, compilation or recording
    if steps is None:
        steps = min(100, max(5, round(500 / max(_wall_ms(run, device, 5) for run in runs))))
    walls: list[list[float]] = [[] for _ in runs]
    splits: list[list[dict[str, float]]] = [[] for _ in runs]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for _ in range(repeats):
        for run, times, parts in zip(runs, walls, splits, strict=True):
            times.append(_wall_ms(run, device, steps))
            with profile(activities=activities) as prof:
                run(steps)
                sync(device)
            parts.append(_split(prof, device, steps))
    out = []
    for (label, *_), times, parts in zip(variants, walls, splits, strict=True):
        wall = statistics.median(times)
        median = {k: statistics.median(p[k] for p in parts) for k in CATEGORIES[:3]}
        median["dispatch and other"] = max(0.0, wall - sum(median.values()))
        out.append(StepProfile(label, wall, median, repeats, steps))
    return out


def print_profile(p: StepProfile, floor_ms: float) -> None:
    print(f"{p.label}: {p.step_ms:.3f} ms per step (median of {p.repeats} x {p.steps} steps)")
    for name in CATEGORIES:
        ms = p.parts_ms[name]
        print(f"  {name:<20} {ms:7.3f} ms  {ms / p.step_ms:4.0%}")
    print(f"  floor: the products alone at the large-product rate take {floor_ms:.3f} ms; "
          f"this step runs at {floor_ms / p.step_ms:.0%} of the floor")
