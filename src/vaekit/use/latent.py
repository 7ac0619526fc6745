"""What a trained model makes of images: posterior means, reconstructions and paths between two latents.

Every operation reads its images through :func:`vaekit.use.inputs.open_inputs` (so they are prepared as the
run's data were) a batch at a time, on the device the run's model is on, and returns NumPy arrays.

* **encode**: the mean (and log-variance) of q(z|x) for each image, exactly what ``model.encode`` gives for the
  same input. For the hierarchical preset these are those of its top group, q(z_1|x): the group the decoder
  starts from, the one :meth:`~vaekit.model.VAE.decode` takes (every later group at its prior mean), so an
  encoding can be decoded, interpolated and plotted like a flat model's.
* **reconstruct**: the decoder's mean image (:meth:`~vaekit.model.VAE.mean_image`) at each posterior mean, as
  float images in [0, 1] of the run's image shape.
* **interpolate**: images decoded along a path from one latent to another, each given as a latent vector or as
  an image (then its posterior mean). ``linear`` is the straight line; ``spherical`` turns the direction at a
  constant rate on the sphere (slerp) while the length goes linearly from one endpoint's norm to the other's,
  so the path never crosses the low-norm middle of the prior that a straight line between two typical draws
  from N(0, I) passes through (at dimension d, those draws have norms near sqrt(d)).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vaekit.config import MAX_STEPS, ConfigError
from vaekit.data.errors import BadInputError
from vaekit.text import printable
from vaekit.use.inputs import DEFAULT_BATCH, Batch, Inputs, TrainedRun, check_batch_size, open_inputs

if TYPE_CHECKING:
    from vaekit.model import VAE

__all__ = ["Encoding", "decode_images", "encode", "encode_inputs", "interpolate", "latent_path", "reconstruct",
           "reconstructed_batches"]

Images = str | os.PathLike | np.ndarray | torch.Tensor
MIN_STEPS = 2


@dataclass
class Encoding:
    """The posterior of each image: means (n, zdim), log-variances when asked for, and each image's name and label."""

    mu: np.ndarray
    logvar: np.ndarray | None
    names: list[str]
    labels: np.ndarray | None


def progress_bar(total: int, desc: str, progress: bool) -> Any:
    """A tqdm bar on stderr while ``progress`` and stderr is a terminal (never in a log or a pipe)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=None if progress else True, leave=False, file=sys.stderr)


def _device(model: VAE) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def decode_images(model: VAE, z: torch.Tensor) -> np.ndarray:
    """The decoder's mean images of latents ``z`` (n, zdim) as floats in [0, 1], (n, H, W) or (n, H, W, 3)."""
    params = model.decode(z.to(_device(model), torch.float32))
    return model.mean_image(params).reshape(-1, *model.config.image_shape).cpu().numpy()


@torch.no_grad()
def encode_inputs(model: VAE, inputs: Inputs, *, batch_size: int = DEFAULT_BATCH, logvar: bool = False,
                  progress: bool = False) -> Encoding:
    """``model.encode`` of every image of ``inputs``, a batch at a time, gathered on the CPU as float32."""
    mus: list[np.ndarray] = []
    logvars: list[np.ndarray] = []
    names: list[str] = []
    labels: list[np.ndarray] = []
    with progress_bar(inputs.n, "encoding", progress) as bar:
        for batch in inputs.batches(batch_size, _device(model)):
            mu, lv = model.encode(batch.x)
            mus.append(mu.float().cpu().numpy())
            if logvar:
                logvars.append(lv.float().cpu().numpy())
            names += batch.names
            if batch.labels is not None:
                labels.append(batch.labels)
            bar.update(len(batch.names))
    # open_inputs never gives no images, so there is always a batch to concatenate
    return Encoding(mu=np.concatenate(mus), logvar=np.concatenate(logvars) if logvar else None, names=names,
                    labels=np.concatenate(labels) if labels else None)


@torch.no_grad()
def reconstructed_batches(model: VAE, inputs: Inputs, *, batch_size: int = DEFAULT_BATCH,
                          progress: bool = False) -> Iterator[tuple[Batch, np.ndarray]]:
    """Each batch of ``inputs`` with its reconstructions: float images (n, H, W[, 3]) in [0, 1]."""
    with progress_bar(inputs.n, "reconstructing", progress) as bar:
        for batch in inputs.batches(batch_size, _device(model)):
            mu, _ = model.encode(batch.x)
            yield batch, decode_images(model, mu)
            bar.update(len(batch.names))


def encode(run: TrainedRun, images: Images | None = None, *, split: str | None = None, logvar: bool = False,
           batch_size: int = DEFAULT_BATCH, skip_bad: bool = False, progress: bool = False,
           ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Posterior means (n, zdim) of ``images`` (or of the run's ``split``); with ``logvar``, (means, log-variances)."""
    inputs = open_inputs(run, images, split=split, skip_bad=skip_bad, progress=progress)
    out = encode_inputs(run.model, inputs, batch_size=batch_size, logvar=logvar, progress=progress)
    return (out.mu, out.logvar) if logvar else out.mu  # type: ignore[return-value]


def reconstruct(run: TrainedRun, images: Images | None = None, *, split: str | None = None,
                batch_size: int = DEFAULT_BATCH, skip_bad: bool = False, progress: bool = False) -> np.ndarray:
    """Reconstructions of ``images`` (or of the run's ``split``) as float images (n, H, W[, 3]) in [0, 1]."""
    inputs = open_inputs(run, images, split=split, skip_bad=skip_bad, progress=progress)
    return np.concatenate([rec for _, rec in reconstructed_batches(run.model, inputs, batch_size=batch_size,
                                                                   progress=progress)])


def latent_path(a: np.ndarray, b: np.ndarray, steps: int = 10, spherical: bool = False) -> np.ndarray:
    """``steps`` latents (steps, zdim) from ``a`` to ``b`` inclusive, straight or spherical (module docstring).

    The first and last are ``a`` and ``b`` exactly. Where a direction is undefined (a zero endpoint) or the two
    are opposite, no great circle is singled out and the spherical path is the straight one.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not MIN_STEPS <= steps <= MAX_STEPS:
        raise ConfigError(f"steps must be a whole number from {MIN_STEPS} to {MAX_STEPS} (got {steps!r:.40})")
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    t = np.linspace(0.0, 1.0, steps)[:, None]
    path = (1 - t) * a64 + t * b64
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    if spherical and na > 0 and nb > 0:
        ua, ub = a64 / na, b64 / nb
        omega = float(np.arccos(np.clip(ua @ ub, -1.0, 1.0)))
        if 1e-7 < omega < np.pi - 1e-7:
            direction = (np.sin((1 - t) * omega) * ua + np.sin(t * omega) * ub) / np.sin(omega)
            path = direction * ((1 - t) * na + t * nb)
    path[0], path[-1] = a64, b64
    return path.astype(np.float32)


def _endpoint(run: TrainedRun, value: Images, which: str) -> np.ndarray:
    """An endpoint as a latent: a 1-D vector as given, an image as its posterior mean."""
    width = run.model.zdim
    if not isinstance(value, (str, os.PathLike)) and np.ndim(_numpy(value)) == 1:
        vector = np.asarray(_numpy(value))
        if vector.dtype.kind not in "biuf":  # strings, complex numbers, objects: no latent to take
            raise BadInputError(f"{which} is a latent vector of {vector.dtype} values; give {width} real numbers, "
                                "or an image")
        vector = vector.astype(np.float64)  # checked before float32, where 1e39 would become inf
        if len(vector) != width:
            raise BadInputError(f"{which} is a latent vector of {len(vector)} numbers, but the run's latent has "
                                f"{width} dimensions; give {width} finite numbers, or an image")
        if not (np.isfinite(vector) & (np.abs(vector) <= np.finfo(np.float32).max)).all():
            raise BadInputError(f"{which} is a latent vector holding NaN, infinite or out-of-range numbers "
                                f"({printable(', '.join(f'{v:g}' for v in vector[:8]))}); give {width} finite numbers")
        return vector.astype(np.float32)
    inputs = open_inputs(run, value)
    if inputs.n != 1:
        raise BadInputError(f"{which} holds {inputs.n:,} images; give one image (or a latent vector)")
    return encode_inputs(run.model, inputs).mu[0]


def _numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def interpolate(run: TrainedRun, a: Images, b: Images, steps: int = 10, *, spherical: bool = False,
                batch_size: int = DEFAULT_BATCH, latents: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Decoded images (steps, H, W[, 3]) in [0, 1] along the path from ``a`` to ``b`` (see :func:`latent_path`).

    ``a`` and ``b`` are each a latent vector (1-D, zdim numbers) or one image (a file, or an array or tensor of
    one image), which stands for its posterior mean. With ``latents`` the path's latents come first:
    ``(latents, images)``.
    """
    check_batch_size(batch_size)
    path = latent_path(_endpoint(run, a, "A"), _endpoint(run, b, "B"), steps, spherical)
    z = torch.from_numpy(path)
    images = np.concatenate([decode_images(run.model, z[i : i + batch_size]) for i in range(0, len(z), batch_size)])
    return (path, images) if latents else images


@torch.no_grad()
def latent_means(model: VAE, images_u8: np.ndarray, batch_size: int = 2000, progress: str | None = None) -> np.ndarray:
    """Posterior means of ``images_u8`` (N, H, W[, 3]) as an (N, zdim) float32 array, a batch at a time on the
    model's device (the figures, the explorer and the sampler's mixture all place images by these).
    ``progress``: a bar's description, shown while encoding (None: no bar)."""
    from tqdm import tqdm

    from vaekit.data.tensors import to_unit

    device = next(model.parameters()).device
    x = torch.from_numpy(images_u8.reshape(len(images_u8), -1))
    starts = tqdm(range(0, len(x), batch_size), desc=progress, unit="batch", disable=progress is None, leave=False,
                  dynamic_ncols=True)
    out = [model.encode(to_unit(x[i : i + batch_size].to(device)))[0].cpu() for i in starts]
    return torch.cat(out).numpy() if out else np.empty((0, model.zdim), dtype=np.float32)
