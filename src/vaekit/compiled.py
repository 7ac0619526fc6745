"""torch.compile with a fallback: a compiled step that cannot compile reruns eagerly, with the same numbers.

Used by the training step and by the log-likelihood estimator alike.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable

import torch
from torch import Tensor


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
