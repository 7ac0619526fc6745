"""CUDA graphs: the whole training step recorded once and replayed, so the host no longer paces the GPU.

Why: on a fast GPU a batch-128 step of the post's model is a fraction of a millisecond of kernels behind
several milliseconds of host-side work (Python, dispatch, the autograd engine, kernel launches), so the GPU
mostly waits. A CUDA graph records the kernels of one step (forward, backward, the non-finite guard and fused
Adam) once; every later step copies its batch and noise into the graph's static input buffers and replays
the recording with a single launch.

What that takes:

* Static inputs. The batch (already gathered on the device by index) and its noise are copied into buffers
  the graph reads. The learning rate, the KL weight and the step number are device tensors the host fills
  before each replay, so a schedule or a KL warm-up needs no new recording.
* Only full batches are recorded and replayed; an epoch's last, shorter batch runs through the ordinary step
  (with the same float32 learning rate), so which steps replay depends only on their place in the epoch and a
  resumed run computes what the uninterrupted one did.
* Recording needs a few warm-up steps first (they settle the allocator and the autograd buffers). They run on
  the real weights, optimizer state and guard, which are snapshotted before and put back after, so the
  first replay is the run's real next step: a run and its resumption compute the same numbers.

* The recording holds the weights, Adam's state and the guard by address, and reads Adam's betas and eps as
  they were: whatever replaces those tensors (``load_state_dict``, ``p.data = ...``) must happen before the first
  step, as resuming does.

On a machine without CUDA (the tests) the same object runs its step on the static buffers without
recording: everything above but the recording itself is exercised there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor

from vaekit.training.objective import Noise

# Warm-up steps before recording (PyTorch's documentation uses 3; DDP needs 11, which is not used here).
WARMUP_STEPS = 3

Body = Callable[[Tensor, Noise, Tensor, Tensor], Tensor]


class RecordingError(RuntimeError):
    """The step could not be recorded as a CUDA graph; the state is as it was before the attempt."""


class StepGraph:
    """One recorded training step and its static buffers.

    ``body(x, noise, kl_weight, step)`` is the whole step (loss, gradients, guard, optimizer update) on
    static tensors; ``state`` lists every tensor a step changes (weights, optimizer state, guard), which a
    warm-up must leave as it found them.
    """

    def __init__(self, body: Body, state: Callable[[], list[Tensor]], device: torch.device, record: bool,
                 rows: int) -> None:
        self.body, self.state, self.device, self.record, self.rows = body, state, device, record, rows
        self.kl_weight = torch.zeros((), device=device)
        self.step = torch.zeros((), dtype=torch.int64, device=device)
        self.x: Tensor | None = None
        self.noise: Noise | None = None
        self.loss: Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.grads: list[Tensor | None] | None = None  # the gradients the recording writes (for error messages)

    def fits(self, x: Tensor, noise: Noise) -> bool:
        """Whether this batch is one the graph is (or will be) recorded for: a full batch of ``rows`` images.

        Only full batches: a run resumed at an epoch's short last batch must not record that shape, or every
        later step would run unrecorded, with other numbers than the run that went straight through.
        """
        if x.shape[0] != self.rows:
            return False
        if self.x is None or self.noise is None:
            return True
        same_u = (noise.uniforms is None) == (self.noise.uniforms is None) and (
            noise.uniforms is None or noise.uniforms.shape == self.noise.uniforms.shape)
        return x.shape == self.x.shape and noise.eps.shape == self.noise.eps.shape and same_u

    def __call__(self, x: Tensor, noise: Noise, kl_weight: float, global_step: int) -> Tensor:
        """Run the step on this batch (recording it first if this is the first); returns its loss."""
        if self.x is None:
            self._allocate(x, noise)
            self._fill(x, noise, kl_weight, global_step)
            self._record()
        else:
            self._fill(x, noise, kl_weight, global_step)
        if self.graph is not None:
            self.graph.replay()
        else:
            self.loss = self._run_body()
        assert self.loss is not None
        return self.loss.clone()  # the static output is overwritten by the next replay

    def _allocate(self, x: Tensor, noise: Noise) -> None:
        self.x = torch.empty_like(x)
        u = torch.empty_like(noise.uniforms) if noise.uniforms is not None else None
        self.noise = Noise(torch.empty_like(noise.eps), u)

    def _fill(self, x: Tensor, noise: Noise, kl_weight: float, global_step: int) -> None:
        assert self.x is not None and self.noise is not None
        self.x.copy_(x, non_blocking=True)
        self.noise.eps.copy_(noise.eps, non_blocking=True)
        if self.noise.uniforms is not None and noise.uniforms is not None:
            self.noise.uniforms.copy_(noise.uniforms, non_blocking=True)
        self.kl_weight.fill_(kl_weight)
        self.step.fill_(global_step)

    def _run_body(self) -> Tensor:
        assert self.x is not None and self.noise is not None
        return self.body(self.x, self.noise, self.kl_weight, self.step)

    def _record(self) -> None:
        """Warm up and record; on any failure put the state back and raise :class:`RecordingError`."""
        state = self.state()
        snapshot = [t.detach().clone() for t in state]
        try:
            self._capture(state, snapshot)
        except Exception as e:  # noqa: BLE001 - whatever stops the recording, the run goes on without it
            self.x = self.noise = self.loss = self.graph = self.grads = None
            if self.record:  # let queued warm-up work finish, and leave a capture's stream if it was left open
                torch.cuda.synchronize(self.device)
                torch.cuda.set_stream(torch.cuda.default_stream(self.device))
            _restore(state, snapshot)
            raise RecordingError(" ".join(f"{type(e).__name__}: {e}".split())[:300]) from e

    def _capture(self, state: list[Tensor], snapshot: list[Tensor]) -> None:
        """Warm up on the state, put the snapshot back, then record one step (CUDA only)."""
        stream = torch.cuda.Stream(self.device) if self.record else None
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            for _ in range(WARMUP_STEPS):
                self._run_body()
        if stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(stream)
        _restore(state, snapshot)
        if self.record:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.loss = self._run_body()


def _restore(state: list[Tensor], snapshot: list[Tensor]) -> None:
    """Put every state tensor back to its snapshot, in place (a recording holds them by address)."""
    with torch.no_grad():
        for t, saved in zip(state, snapshot, strict=True):
            t.copy_(saved)
