"""Data-parallel training with torchrun and DistributedDataParallel, arranged to equal one process.

``torchrun --nproc_per_node N -m vaekit train ...`` starts N copies of the command; each finds its rank in
the environment torchrun sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...), joins the
process group (NCCL between GPUs, Gloo on CPUs) and trains one DistributedDataParallel replica. The run is
arranged so that N processes compute what one process with the same ``--batch-size`` (the global batch) and
seed computes, up to the order of floating-point sums:

* every rank draws the same permutation of the training set from the shared shuffle generator and takes its
  contiguous slice of each global batch; at the start of an epoch it gathers the images of all its slices
  onto its device, so a device holds its shard (1/N of the data), not the whole set;
* the loss is a sum over images, and DDP averages gradients over ranks, so each rank's loss is multiplied
  by N before ``backward``: the averaged gradient is then the sum over the global batch, the post's gradient;
* noise (the reparametrization's epsilon, dynamic binarization) is drawn outside the objective for the whole
  global batch on every rank from the shared generators, and each rank keeps its rows
  (:func:`vaekit.training.objective.draw_noise`), so sample i of a batch sees the same noise whichever rank
  holds it, and the generators stay identical on all ranks, which is what lets rank 0's checkpoint resume
  every rank.

Only rank 0 takes the run folder's lock and writes files; the others read the folder on resume.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from vaekit.config import ConfigError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job; ``world_size`` 1 is the ordinary single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None  # the device torchrun's local rank assigns (None: resolve --device)
    owns_group: bool = False  # whether this module created the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_(self, t: Tensor, op: str = "sum") -> Tensor:
        """In-place all-reduce (``sum`` or ``max``); a no-op in a single process."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t


def launched_by_torchrun() -> bool:
    """True in a process that torchrun (or another launcher setting the same variables) started, N > 1."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


def _device_for(requested: str, local_rank: int) -> torch.device:
    if requested.startswith("mps"):
        raise ConfigError("--device mps cannot be used with torchrun (no process-group backend for MPS); "
                          "use --device cpu or cuda")
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                              "start at most that many processes per node (--nproc_per_node)")
        return torch.device("cuda", local_rank)
    if requested.startswith("cuda"):
        raise ConfigError(f"--device {requested}: CUDA is not available on this machine; use --device cpu")
    return torch.device("cpu")


@contextmanager
def session(requested_device: str) -> Iterator[DistContext]:
    """Join the process group when launched by torchrun (and leave it after), else a single-process context.

    A group someone else created (a script that called ``init_process_group`` itself) is used and left alone.
    """
    if not (launched_by_torchrun() or (dist.is_available() and dist.is_initialized())):
        yield DistContext()
        return
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run a single process")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device_for(requested_device, local_rank)
    owns = not dist.is_initialized()
    if owns:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        # A generous timeout: rank 0 alone evaluates, writes checkpoints and draws figures while the
        # others wait at the next collective.
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, owns)
    try:
        yield ctx
    finally:
        if owns and dist.is_initialized():
            dist.destroy_process_group()


def shard_rows(n: int, batch_size: int, world_size: int, rank: int) -> tuple[Tensor, list[int]]:
    """Positions (into the epoch's permutation) this rank trains on, and where each step's rows start.

    Step s's global batch is positions [s*B, min(n, (s+1)*B)); rank r takes the r-th of ``world_size``
    contiguous, nearly equal slices of it. Returns the concatenated positions and the offsets of each step's
    slice in them (length steps + 1), so step s uses ``shard[offsets[s]:offsets[s+1]]``.
    """
    starts, stops = [], []
    for g0 in range(0, n, batch_size):
        size = min(batch_size, n - g0)
        starts.append(g0 + size * rank // world_size)
        stops.append(g0 + size * (rank + 1) // world_size)
    positions = torch.cat([torch.arange(a, b) for a, b in zip(starts, stops, strict=True)])
    offsets = [0]
    for a, b in zip(starts, stops, strict=True):
        offsets.append(offsets[-1] + b - a)
    return positions, offsets
