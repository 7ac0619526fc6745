"""Which device to compute on: ``auto`` or a name, checked against what this machine has."""

from __future__ import annotations

import re

import torch

from vaekit.config import DEVICES, ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; an explicit device must exist."""
    if name not in DEVICES and not re.fullmatch(r"(cuda|mps):\d{1,3}", name):
        raise ConfigError(f"--device {name[:40]}: unknown device; choose one of {', '.join(DEVICES)} or cuda:N")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if name.startswith("mps") and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s); pick one of them")
    return torch.device(name)


def free_bytes(device: torch.device) -> int | None:
    """Memory ``device`` can still give: the RAM available on the CPU, the free memory of a CUDA device, what
    the Metal allocator recommends less what it holds on MPS; ``None`` where that is not known."""
    if device.type == "cpu":
        from vaekit.data.memory import available_bytes

        return available_bytes()
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
        return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    return None
