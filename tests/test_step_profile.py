"""benchmarks/step_profile.py (``throughput.py --profile``): the split of a step's time adds up, and the
operations land in the right categories. Its figures are measurements, reported by the benchmark, not here."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import step_profile  # noqa: E402

CPU = torch.device("cpu")


@pytest.mark.parametrize(("name", "kind"), [
    ("aten::mm", "matrix products"), ("aten::addmm", "matrix products"),
    ("aten::convolution_backward", "matrix products"), ("aten::_fused_adam_", "optimizer"),
    ("aten::elu", "element-wise"), ("aten::log_sigmoid_forward", "element-wise"),
    ("aten::_convolution", "matrix products"), ("## Call CompiledFxGraph f7njnc6gig ##", "element-wise"),
    ("aten::t", None), ("aten::view", None), ("AddmmBackward0", None), ("TorchDynamo Cache Lookup", None),
])
def test_operations_are_classified(name: str, kind: str | None) -> None:
    assert step_profile._classify_cpu(name) == kind


def test_gpu_kernels_are_classified_by_name() -> None:
    assert step_profile._classify_gpu("sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize128x128x32") == "matrix products"
    adam = "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>"
    assert step_profile._classify_gpu(adam) == "optimizer"
    assert step_profile._classify_gpu("void at::native::vectorized_elementwise_kernel<4, EluFunctor>") == "element-wise"
    assert step_profile._classify_gpu("void at::native::unrolled_elementwise_kernel<convert_float>") == "element-wise"
    assert step_profile._classify_gpu("void at::native::multi_tensor_apply_kernel<AmpNonFiniteCheck>") == "element-wise"


@pytest.mark.parametrize("model", ["seed", "conv"])
def test_a_profile_splits_the_whole_step(model: str) -> None:
    shape = (28, 28) if model == "seed" else (8, 8, 3)
    images = np.random.default_rng(0).integers(0, 256, (64, *shape), dtype=np.uint8)
    variants = []
    for fused in (False, True):
        step, config, m = step_profile.build_step(model, shape, CPU, 16, "fp32", False, fused_step=fused,
                                                  cuda_graph=True)
        assert (step.plan.gradients == "hand-written") == (fused and model == "seed")
        variants.append((f"fused={fused}", step, config, m))
    profiles = step_profile.profile_steps(variants, images, CPU, steps=4, repeats=1)
    for p in profiles:
        assert set(p.parts_ms) == set(step_profile.CATEGORIES) and p.step_ms > 0
        assert p.parts_ms["matrix products"] > 0 and p.parts_ms["optimizer"] > 0
        assert p.parts_ms["element-wise"] > 0 and all(v >= 0 for v in p.parts_ms.values())



def test_the_split_counts_each_operation_once() -> None:
    """The categories' times of one profiled run fit inside its wall time: no operation is counted together
    with the operations it calls (self times only), and views and wrappers count as dispatch."""
    images = np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8)
    step, config, m = step_profile.build_step("seed", (28, 28), CPU, 16, "fp32", False, fused_step=False,
                                              cuda_graph=True)
    run = step_profile._runner(step, config, m, images, CPU)
    run(3)
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run(10)
    wall_ms = (time.perf_counter() - t0) / 10 * 1e3
    parts = step_profile._split(prof, CPU, 10)
    assert set(parts) == set(step_profile.CATEGORIES[:3]) and all(v > 0 for v in parts.values())
    assert sum(parts.values()) <= wall_ms
