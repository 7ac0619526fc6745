"""Memory and training: refusing a step that cannot fit before it is tried, and giving memory back to the
operating system once training no longer needs it."""

from __future__ import annotations

import contextlib
import ctypes
import sys

import torch

from vaekit.config import ConfigError, ModelConfig
from vaekit.devices import free_bytes


def release_free_memory() -> None:
    """Return the C heap's free pages to the operating system (glibc only; elsewhere nothing to do).

    The training data and the optimizer's moments are freed by reference counting as soon as they are
    dropped; no collection of cycles is needed first, which in a long-lived process costs a noticeable pause.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl): it returns memory on its own
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def step_bytes(mcfg: ModelConfig, batch_size: int) -> int:
    """About the memory one training step takes: the parameters four times (weights, gradients and Adam's two
    moments) and twice every activation autograd keeps for the backward pass (each gets a gradient of its size).

    Counted by building the model and running one batch on PyTorch's ``meta`` device, which computes shapes
    and allocates nothing, so a model far too large for the machine is measured without being built. For the
    conv presets it came within 5-30% of the peak a real step added to the process (48x48 to 128x128 colour).
    """
    from vaekit.model import VAE
    from vaekit.model.sizes import leaf_output_bytes

    with torch.device("meta"):
        model = VAE(mcfg)
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        x, eps = torch.empty(batch_size, mcfg.input_dim), torch.empty(batch_size, model.latent_size)
        kept, _ = leaf_output_bytes(model, lambda: model.latent_pass(x, eps) if model.hierarchical
                                    else model.head_params(x, model(x, eps)[0]))
    return 4 * params + 2 * kept


def check_step_fits(mcfg: ModelConfig, batch_size: int, device: torch.device) -> None:
    """Refuse, in one line and before any memory is asked for, a step that cannot fit the device's memory.

    Without it, a large ``--image-size`` ends in the kernel's out-of-memory killer (no message at all) or in
    an allocation error that reads like a failed run; the fix is a smaller image size or batch.
    """
    if device.type not in ("cpu", "cuda"):
        return
    available = free_bytes(device)
    need = step_bytes(mcfg, batch_size)
    if available is not None and need > available:
        from vaekit.data.memory import gigabytes

        size = "x".join(str(d) for d in mcfg.image_shape) if mcfg.image_shape else str(mcfg.input_dim)
        raise ConfigError(f"one training step of this model on {size} images at batch {batch_size} needs about "
                          f"{gigabytes(need)}, more than the {gigabytes(available)} of {device.type} memory "
                          "available; pass a smaller --image-size or --batch-size (or a smaller model: --width, "
                          "--hidden)")
