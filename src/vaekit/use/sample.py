"""New images from a trained model: latents from the prior or from the two-stage mixture, decoded to pixels.

``prior`` draws z ~ N(0, T^2 I); ``gmm`` draws z from the Gaussian mixture fitted to the training set's
posterior means (:mod:`vaekit.use.gmm`), every component's standard deviation times T. A hierarchical model
is sampled ancestrally: its first (coarsest) group from the prior or the mixture, and every later group from
its conditional prior given the groups above, with the same temperature; the mixture models the first group,
the one :meth:`VAE.encode` speaks of.

The image shown for a latent is the decoder's mean (``mode="mean"``: the sigmoid of the logits, or an 8-bit
head's mean) or, for an 8-bit head, a draw of every pixel from p(x|z) (``mode="sample"``). All randomness
comes from one CPU generator seeded with ``seed`` and the draws are made batch by batch in a fixed batch size,
so a seed gives the same images on every device and every call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from vaekit.config import DEFAULT_COMPONENTS, EIGHT_BIT_LIKELIHOODS, MAX_SEED, SAMPLE_MODES, SAMPLERS, ConfigError
from vaekit.data.resolve import warn as _warn
from vaekit.errors import RunFolderError, WriteError
from vaekit.run.lock import RunLock
from vaekit.use.gmm import (
    MAX_COMPONENTS,
    Mixture,
    MixtureError,
    fit_mixture,
    load_mixture,
    read_info,
    store_mixture,
    weights_sha256,
)
from vaekit.use.inputs import TrainedRun
from vaekit.use.latent import latent_means
from vaekit.use.outputs import to_uint8

SAMPLE_BATCH = 256  # latents drawn and decoded at once: part of what a seed means, so not a user setting
MAX_SAMPLES = 1_000_000
ENCODE_BATCH = 1000


def check_sample_options(model_head: str, n: int, sampler: str, temperature: float, seed: int, mode: str,
                         components: int) -> None:
    """Every option of :func:`sample` of sense, each failure one line naming the option."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SAMPLES:
        raise ConfigError(f"the number of images must be an integer from 1 to {MAX_SAMPLES} (got {n!r:.20})")
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r:.40}; choose one of {', '.join(SAMPLERS)}")
    if mode not in SAMPLE_MODES:
        raise ConfigError(f"unknown mode {mode!r:.40}; choose one of {', '.join(SAMPLE_MODES)}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"the temperature must be a finite number >= 0 (got {temperature!r:.20})")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"the seed must be an integer from 0 to {MAX_SEED} (got {seed!r:.30})")
    if isinstance(components, bool) or not isinstance(components, int) or not 1 <= components <= MAX_COMPONENTS:
        raise ConfigError(f"--components must be an integer from 1 to {MAX_COMPONENTS} (got {components!r:.20})")
    if mode == "sample" and model_head not in EIGHT_BIT_LIKELIHOODS:
        raise ConfigError("--mode sample draws pixels from an 8-bit likelihood head, and this model's decoder gives "
                          "logits; its images are the decoder means (--mode mean)")


def _plain(value: Any) -> Any:
    """A NumPy scalar (``np.int64(3)`` from ``len``-free arithmetic, ``np.float32(0.7)``) as the Python number it
    holds, so that it passes the checks a Python number passes; anything else is left for them to judge."""
    return value.item() if isinstance(value, np.generic) and isinstance(value, (np.integer, np.floating)) else value


def new_seed() -> int:
    """A fresh random seed, for a call that asked for none (the command line prints it, so it can be repeated)."""
    import secrets

    return secrets.randbelow(2**31)


def training_images(run: TrainedRun) -> np.ndarray:
    """The images the run was trained on, as training fed them: its validation images left out, and for a
    binarized run the binarized copy of its recorded seed (that of static binarization; one draw of dynamic's)."""
    from vaekit.data.binarize import binarize_images
    from vaekit.data.validation import carve_validation
    from vaekit.run.dataset import load_run_data

    splits, _ = carve_validation(load_run_data(run, binarize="none"), run.data.get("val_fraction") or 0.0)
    images = splits.train_images
    if run.train_config.binarize != "none":
        images = binarize_images(images, run.train_config.binarize_seed + 1)
    return images


@torch.no_grad()
def training_means(run: TrainedRun, progress: bool = False) -> np.ndarray:
    """Posterior means (N, zdim), in float64 for the mixture's fit, of :func:`training_images`."""
    bar = "encoding the training set" if progress else None
    return latent_means(run.model, training_images(run), ENCODE_BATCH, bar).astype(np.float64)


def mixture_for(run: TrainedRun, components: int = DEFAULT_COMPONENTS, *, refit: bool = False, progress: bool = False,
                warn: Callable[[str], None] = _warn) -> Mixture:
    """The run's stored mixture when it was fitted for these weights and ``components``, else a new fit, stored.

    A stored mixture that is damaged (unreadable, hand-edited, not matching its hash) is only a cache of what
    the weights and the training set define: it is fitted again, after a one-line warning.
    """
    weights_hash = weights_sha256(run.model)
    if not refit:
        try:
            info = read_info(run.path)
            if info is not None and info["weights_sha256"] == weights_hash and info["components"] == components:
                if info["dim"] != run.model.zdim:
                    raise MixtureError(f"it has {info['dim']} dimensions, and the model's latent {run.model.zdim}")
                return load_mixture(run.path, info)
        except (MixtureError, RunFolderError) as e:
            warn(f"the stored sampler mixture of {run.path} cannot be used ({' '.join(str(e).split())}); "
                 "fitting it again")
    means = training_means(run, progress)
    mix = fit_mixture(means, components, warn=warn)
    try:
        with RunLock(run.path):
            store_mixture(run.path, mix, weights_hash, len(means))
    except (RunFolderError, WriteError) as e:
        warn(f"the fitted mixture was not stored in {run.path}, so the next call fits it again: "
             f"{' '.join(str(e).split())}")
    return mix


def _decode(model: torch.nn.Module, top: Tensor | None, eps: Tensor) -> Tensor:
    """Decoder outputs for standard normals ``eps`` (n, latent_size) already scaled by the temperature, the first
    group (or a flat model's z) replaced by ``top`` when given. A hierarchy draws each later group from its
    conditional prior given the ones above (ancestral sampling)."""
    device = next(model.parameters()).device
    eps = eps.to(device)
    if model.hierarchical:
        top = top.to(device) if top is not None else None
        return model.decoder(len(eps), None, eps, top).logits
    return model.decode(top.to(device) if top is not None else eps)


@torch.no_grad()
def sample(run: TrainedRun, n: int, *, sampler: str = "prior", temperature: float = 1.0, seed: int | None = None,
           mode: str = "mean", components: int = DEFAULT_COMPONENTS, refit: bool = False, progress: bool = False,
           warn: Callable[[str], None] = _warn) -> np.ndarray:
    """``n`` new images as uint8 pixels (n, H, W) grey or (n, H, W, 3) colour. See the module for the options;
    without a ``seed`` the draws are new on every call (:func:`new_seed`)."""
    model = run.model
    seed = new_seed() if seed is None else seed
    n, seed, components, temperature = _plain(n), _plain(seed), _plain(components), _plain(temperature)
    check_sample_options(model.config.head, n, sampler, temperature, seed, mode, components)
    mix = mixture_for(run, components, refit=refit, progress=progress, warn=warn) if sampler == "gmm" else None
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(run.model_config.image_shape)
    out = np.empty((n, *shape), dtype=np.uint8)
    try:
        for i in tqdm(range(0, n, SAMPLE_BATCH), desc="sampling", unit="batch", disable=not progress, leave=False,
                      dynamic_ncols=True):
            b = min(SAMPLE_BATCH, n - i)
            top = mix.draw(b, gen, temperature) if mix is not None else None
            eps = torch.randn((b, model.latent_size), generator=gen) * temperature
            params = _decode(model, top, eps).float().cpu()
            pixels = model.sample_images(params, gen) if mode == "sample" else model.mean_image(params)
            out[i : i + b] = to_uint8(pixels.reshape(b, *shape).numpy())
    finally:
        model.train(was_training)
    return out


__all__ = ["check_sample_options", "mixture_for", "new_seed", "sample", "training_images",
           "training_means"]
