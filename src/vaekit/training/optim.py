"""The post's optimizer, Adam, in its fused form, and a direct call of its fused kernel.

At the post's settings (batch 128, a 440k-parameter MLP) a CPU step is a few milliseconds, so what the step
spends outside the matrix products matters: fused Adam updates all tensors in one kernel.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def make_adam(params: Iterable[Tensor], lr: float) -> torch.optim.Adam:
    """The post's optimizer (Adam, default betas and eps) in its fused form where this PyTorch has one.

    The fused kernel computes each element independently, as the default does, so runs stay deterministic
    and resume bit for bit; only the rounding of a few operations differs from the multi-tensor version.
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused Adam for this device or version
        return torch.optim.Adam(params, lr=lr)


def is_fused(opt: torch.optim.Optimizer) -> bool:
    """Whether ``opt`` runs Adam's fused kernel (which can skip an update on a device flag)."""
    return bool(opt.param_groups[0].get("fused"))


def adam_state(opt: torch.optim.Optimizer) -> list[Tensor]:
    """Every state tensor of Adam (step counts and both moments), creating the state first if no step has.

    Created as ``torch.optim.Adam`` creates it for its fused form (zero moments, a float32 step count on the
    parameter's device), so a recorded CUDA graph finds it in place and the numbers are those of ``opt.step()``.
    """
    tensors = []
    for p in opt.param_groups[0]["params"]:
        st = opt.state[p]
        if not st:
            st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        tensors += [st["step"], st["exp_avg"], st["exp_avg_sq"]]
    return tensors


def adam_step(opt: torch.optim.Optimizer, found_inf: Tensor | None = None, lr: Tensor | None = None) -> None:
    """``opt.step()`` for the fused Adam of :func:`make_adam`, calling its kernel directly.

    ``Optimizer.step`` spends about 0.1 ms per call in Python (hooks, profiler labels, regrouping the
    tensors by device), 4% of a CPU step at batch 128; this makes the same two calls it ends in (count the
    step, run the fused kernel) on the optimizer's own state tensors, so the state dict, checkpoints and
    the numbers are exactly those of ``opt.step()``. Anything unusual (several groups, options the kernel
    call here does not pass, state not yet created) goes through ``opt.step()``. ``found_inf``, a device flag,
    makes the kernel skip the update (and the step count) as GradScaler's protocol does. ``lr``, a device
    scalar, replaces the group's learning rate (a recorded CUDA graph reads it from there).
    """
    if lr is not None:
        adam_state(opt)  # a device rate needs the kernel call below, and it needs the state in place
    group = opt.param_groups[0]
    params = group["params"]
    state = opt.state
    if (len(opt.param_groups) > 1 or not group.get("fused") or group.get("amsgrad") or group.get("maximize")
            or group.get("weight_decay") or group.get("differentiable") or group.get("decoupled_weight_decay")
            or opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks
            or any(p.grad is None or p not in state for p in params)):
        if lr is not None:  # only the kernel call below takes a device rate (and can be recorded)
            raise RuntimeError("a device learning rate needs Adam's fused kernel with its state in place "
                               "(one parameter group, default options)")
        if found_inf is not None:
            opt.found_inf = found_inf  # the attribute GradScaler sets for fused optimizers
        opt.step()
        if found_inf is not None:
            del opt.found_inf
        return
    states = [state[p] for p in params]
    steps = [s["step"] for s in states]
    beta1, beta2 = group["betas"]
    torch._foreach_add_(steps, 1)
    torch._fused_adam_(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                       [s["exp_avg_sq"] for s in states], [], steps, amsgrad=False,
                       lr=group["lr"] if lr is None else lr, beta1=beta1,
                       beta2=beta2, weight_decay=0.0, eps=group["eps"], maximize=False, grad_scale=None,
                       found_inf=found_inf)
    if found_inf is not None:
        torch._foreach_sub_(steps, [found_inf] * len(steps))
