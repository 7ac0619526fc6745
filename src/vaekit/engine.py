"""The machinery of one optimizer step: fused Adam, a non-finite guard without per-step syncs, compile fallback.

At the post's settings (batch 128, a 440k-parameter MLP) a CPU step is a few milliseconds, so what the
step spends outside the matrix products matters: Adam in PyTorch's fused implementation updates all
tensors in one kernel instead of several multi-tensor passes, and the finiteness check is one multi-tensor
kernel plus one read. On a GPU, reading any value back stalls the queue of kernels, so the check leaves a
flag on the device that the fused optimizer honours (it skips the update, as with GradScaler), and the host
reads the flag only every N steps; a non-finite value still never reaches the weights.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from collections.abc import Callable, Iterable

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


def adam_step(opt: torch.optim.Optimizer, found_inf: Tensor | None = None) -> None:
    """``opt.step()`` for the fused Adam of :func:`make_adam`, calling its kernel directly.

    ``Optimizer.step`` spends about 0.1 ms per call in Python (hooks, profiler labels, regrouping the
    tensors by device), 4% of a CPU step at batch 128; this makes the same two calls it ends in (count the
    step, run the fused kernel) on the optimizer's own state tensors, so the state dict, checkpoints and
    the numbers are exactly those of ``opt.step()``. Anything unusual (several groups, options the kernel
    call here does not pass, state not yet created) goes through ``opt.step()``. ``found_inf``, a device flag,
    makes the kernel skip the update (and the step count) as GradScaler's protocol does.
    """
    group = opt.param_groups[0]
    params = group["params"]
    state = opt.state
    if (len(opt.param_groups) > 1 or not group.get("fused") or group.get("amsgrad") or group.get("maximize")
            or group.get("weight_decay") or group.get("differentiable") or group.get("decoupled_weight_decay")
            or opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks
            or any(p.grad is None or p not in state for p in params)):
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
                       [s["exp_avg_sq"] for s in states], [], steps, amsgrad=False, lr=group["lr"], beta1=beta1,
                       beta2=beta2, weight_decay=0.0, eps=group["eps"], maximize=False, grad_scale=None,
                       found_inf=found_inf)
    if found_inf is not None:
        torch._foreach_sub_(steps, [found_inf] * len(steps))


class FiniteGuard:
    """Notices the first non-finite loss or gradient, reading from the device only when asked.

    :meth:`observe` queues the checks of one step: one multi-tensor kernel sets :attr:`found` when a
    gradient is NaN or infinite (the kernel GradScaler uses, with a scale of 1), and a non-finite loss sets
    it too. The flag is sticky, and when reads are rare (``every`` > 1) the step and loss where it was
    first set are kept on the device so the error can name them. :meth:`first_bad` is the only read.
    """

    def __init__(self, params: list[Tensor], device: torch.device, every: int, check_grads: bool = True) -> None:
        self.params = params
        self.every = every
        self.check_grads = check_grads
        self.found = torch.zeros((), device=device)
        self._one = torch.ones((), device=device)
        self._step = torch.full((), -1, dtype=torch.int64, device=device)
        self._loss = torch.zeros((), device=device)
        self._last: tuple[int, Tensor] | None = None

    def observe(self, loss: Tensor, global_step: int) -> None:
        """Queue the checks for the step numbered ``global_step`` (after backward, before the update)."""
        loss = loss.detach()
        if self.check_grads:
            grads = [p.grad for p in self.params if p.grad is not None]
            if grads:
                torch._amp_foreach_non_finite_check_and_unscale_(grads, self.found, self._one)
        if self.every > 1:
            self.found.masked_fill_(~torch.isfinite(loss), 1.0)
            first = (self.found > 0) & (self._step < 0)
            self._step.masked_fill_(first, global_step)
            torch.where(first, loss.float(), self._loss, out=self._loss)
        else:  # read back at once: the loss is checked on the host, three small operations fewer per step
            self._last = (global_step, loss)

    def first_bad(self) -> tuple[int, float] | None:
        """``(global step, loss there)`` of the first non-finite step, or None while all is finite."""
        if self.every == 1:
            assert self._last is not None
            step, loss = self._last[0], self._last[1].item()
            if bool(self.found) or not math.isfinite(loss):
                self.found.fill_(1.0)
                return step, loss
            return None
        found, step, loss = torch.stack([self.found.double(), self._step.double(), self._loss.double()]).tolist()
        return (int(step), loss) if found else None

    def grad_norm(self) -> float:
        grads = [p.grad for p in self.params if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()


def compile_unsupported_reason(device: torch.device) -> str | None:
    """Why torch.compile cannot work here, when that is known before trying (else None)."""
    try:
        import torch._dynamo as dynamo

        if not dynamo.is_dynamo_supported():
            return f"torch.compile does not support Python {sys.version_info.major}.{sys.version_info.minor} " \
                   "on this platform"
    except Exception as e:  # noqa: BLE001 - an import failure is itself the reason
        return f"torch.compile is unavailable ({one_line(e)})"
    if device.type == "cpu":
        cxx = os.environ.get("CXX")
        if not (cxx and shutil.which(cxx)) and not any(shutil.which(c) for c in ("g++", "clang++", "c++")):
            return "compiling for the CPU needs a C++ compiler (g++ or clang++) and none was found"
    return None


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


class CompiledForward:
    """Runs a step through ``torch.compile``, and through eager code if that fails.

    A step is a training step's forward and backward, or one chunk of the log-likelihood estimate.
    Compilation happens inside the first call (and again on a new batch shape), so a failure surfaces as an
    exception from the step: the random generators are put back as they were before the step, the partial
    gradients dropped, ``warn`` says why in one line (``label``: what it was compiling; ``unsupported`` and
    ``failed``: how it goes on), and the step is redone eagerly, so the run continues with exactly the numbers
    an eager run would have produced from there.
    """

    def __init__(self, eager: Callable[..., Tensor], device: torch.device, generators: list[torch.Generator],
                 params: list[Tensor], warn: Callable[[str], None], enabled: bool, *, label: str = "--compile",
                 unsupported: str = "training without it", failed: str = "continuing without it") -> None:
        self.eager = eager
        self.generators = generators
        self.params = params
        self.warn = warn
        self.label, self.failed = label, failed
        self.compiled: Callable[..., Tensor] | None = None
        if enabled:
            reason = compile_unsupported_reason(device)
            if reason is not None:
                warn(f"{label}: {reason}; {unsupported}")
            else:
                self.compiled = torch.compile(eager)
        self._proven = False  # set once a compiled step has run

    @property
    def active(self) -> bool:
        return self.compiled is not None

    def run(self, step: Callable[[Callable[..., Tensor]], Tensor]) -> Tensor:
        """``step(forward)`` runs forward and backward with the given forward; returns its loss."""
        if self.compiled is None:
            return step(self.eager)
        states = [g.get_state() for g in self.generators]
        try:
            loss = step(self.compiled)
            self._proven = True
            return loss
        except Exception as e:  # noqa: BLE001 - a compiler failure means: carry on eagerly
            if self._proven and not is_compiler_error(e):
                raise  # a compiled step already ran: this is the training's own error (OOM, NaN), not the compiler's
            for g, s in zip(self.generators, states, strict=True):
                g.set_state(s)
            for p in self.params:
                p.grad = None
            self.compiled = None
            self.warn(f"{self.label}: torch.compile failed ({one_line(e)}); {self.failed}")
            return step(self.eager)


def is_compiler_error(e: BaseException) -> bool:
    """Whether ``e`` comes from torch.compile itself (tracing, a backend, a recompilation)."""
    dynamo_exc = getattr(getattr(torch, "_dynamo", None), "exc", None)
    base = getattr(dynamo_exc, "TorchDynamoException", None)
    return base is not None and isinstance(e, base)


def lr_at(schedule: str, base_lr: float, warmup_steps: int, total_steps: int, step: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) as a pure function of the step number.

    A pure function, so a resumed run recomputes exactly the rates it would have used. ``constant`` is the
    post's; ``cosine`` decays from ``base_lr`` to 0 at the last step; both start with a linear warm-up over
    ``warmup_steps`` when it is positive.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * t))

