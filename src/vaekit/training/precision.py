"""Reduced-precision training: bf16 autocast on CPUs with native bf16 and on CUDA; fp16 with loss scaling on CUDA.

Only the matrix products run in reduced precision. Autocast casts the Linear layers' inputs and weights; hooks
cast the encoder's and the decoder's outputs back to float32, so the reparametrization, the likelihood and
the KL (sums over 784 pixels, where bf16's 8-bit mantissa would cost whole nats) are computed in float32 and
the reported loss keeps full precision. Weights, gradients and Adam's moments stay float32, and evaluation
always runs in float32, so test losses of runs of different precision are comparable.

Why the restrictions: a CPU without AVX-512 BF16 or AMX has no bf16 arithmetic, and emulating it makes the
matrix products slower than fp32, so bf16 there falls back to fp32 with a warning. fp16's narrow exponent
needs loss scaling (GradScaler) and fast fp16 products, which CUDA has; CPUs have neither.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vaekit.config import ConfigError
from vaekit.training.optim import adam_step

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX-512 BF16 or AMX), read from the kernel's CPU flags.

    Where the flags cannot be read (not Linux), bf16 is taken as unsupported: the safe answer, since a wrong
    "yes" costs speed silently and a wrong "no" only costs the warning.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def default_precision(device: torch.device, conv: bool) -> tuple[str, str | None]:
    """What ``--precision auto`` (the default) trains in, and why (None: nothing to say, the MLPs' fp32).

    A conv model's step is dominated by its convolutions, which bf16 speeds up where the hardware computes in
    bf16 (CUDA with bf16, CPUs with AVX-512 BF16 or AMX) while its test loss stays within run-to-run noise of
    fp32's (``benchmarks/throughput.py --model conv --variants``, benchmarks/RESULTS.md). The MLPs keep fp32:
    their step is the hand-written one, bit for bit repeatable, and their products are too small to gain much.
    """
    if not conv:
        return "fp32", None
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16", "bf16 by default for a conv model on a GPU with bf16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16", "bf16 by default for a conv model on a CPU with native bf16"
    return "fp32", f"fp32 by default: no native bf16 on this {device.type}"


def resolve(precision: str, device: torch.device, conv: bool = False) -> tuple[str, str | None]:
    """The precision to train in on ``device``, and a warning when it differs from the one asked for.

    ``auto`` is :func:`default_precision` for a conv model (``conv``) or an MLP, and never warns. fp16 away
    from CUDA is an error (one line): there is no loss scaling or fast fp16 there.
    """
    if precision == "auto":
        return default_precision(device, conv)[0], None
    if precision == "fp32":
        return "fp32", None
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError(f"--precision fp16 needs a CUDA GPU (loss scaling and fast fp16 products); on "
                              f"{device.type} use --precision bf16 or fp32")
        return "fp16", None
    if precision == "bf16":
        if device.type == "cuda":
            if torch.cuda.is_bf16_supported():
                return "bf16", None
            return "fp32", "this GPU has no bf16 arithmetic; training in fp32 (use --precision fp16 for speed)"
        if device.type == "cpu":
            if cpu_has_native_bf16():
                return "bf16", None
            return "fp32", ("this CPU has neither AVX-512 BF16 nor AMX, so bf16 would be emulated and slower "
                            "than fp32; training in fp32")
        return "fp32", f"bf16 autocast is not supported on {device.type} here; training in fp32"
    raise ConfigError(f"unknown precision {precision!r}; choose one of auto, fp32, bf16, fp16")


def _to_float32(module: nn.Module, inputs: Any, output: Any) -> Any:
    if isinstance(output, torch.Tensor) and output.is_floating_point() and output.dtype != torch.float32:
        return output.float()
    return output


@dataclass
class Precision:
    """How the forward pass of a training step is computed; ``fp32`` is the plain eager step."""

    name: str
    device: torch.device
    scaler: Any = None  # torch.amp.GradScaler for fp16
    _hooks: list[Any] = field(default_factory=list)

    @classmethod
    def create(cls, name: str, device: torch.device) -> Precision:
        scaler = torch.amp.GradScaler("cuda") if name == "fp16" else None
        return cls(name, device, scaler)

    @property
    def reduced(self) -> bool:
        return self.name != "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the forward pass runs in (nothing for fp32)."""
        if not self.reduced:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.name])

    def attach(self, model: nn.Module) -> None:
        """Make the encoder's and decoder's outputs float32 again, so the objective is computed in float32."""
        if self.reduced:
            for part in ("encoder", "decoder"):
                sub = getattr(model, part, None)
                if isinstance(sub, nn.Module):
                    self._hooks.append(sub.register_forward_hook(_to_float32))

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, opt: torch.optim.Optimizer, found_inf: torch.Tensor | None,
             lr: torch.Tensor | None = None) -> None:
        """One optimizer step. With loss scaling the scaler unscales, skips steps with overflowing gradients
        and adapts the scale; otherwise ``found_inf`` (a device flag set when anything was non-finite) is
        handed to the fused optimizer, which then skips the update without the host reading the flag.
        ``lr``: a device scalar to use as the learning rate (see :func:`~vaekit.training.optim.adam_step`)."""
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
            return
        adam_step(opt, found_inf, lr)

    def state(self) -> dict[str, Any] | None:
        """The loss scaler's state, for the checkpoint (None without one)."""
        if self.scaler is None:
            return None
        return {k: (float(v) if isinstance(v, float) else v) for k, v in self.scaler.state_dict().items()}

    def load_state(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
