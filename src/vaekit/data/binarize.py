"""Binarized data, the protocol under which published MNIST likelihoods are reported.

A grey level g in [0, 255] becomes a binary pixel drawn as Bernoulli(g / 255). Three modes:

* ``none``: grey levels as they are (the blog post's setting; a Bernoulli likelihood of grey levels is a
  cross-entropy, not a normalized density).
* ``dynamic``: every training batch is binarized afresh (Burda et al., 2016), a data augmentation; the test
  set is one binarized copy drawn with the recorded seed ``binarize_seed``.
* ``static``: one fixed binarized copy of the training set (seed ``binarize_seed + 1``) and the same test copy.

Binarized copies are stored as uint8 0/255 so the rest of the pipeline (``to_unit``) is unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vaekit.config import BINARIZE, EIGHT_BIT_LIKELIHOODS, ConfigError
from vaekit.data.splits import Splits

# Images binarized per step when drawing a fixed copy: bounds the float32 buffer of uniforms to ~25 MB.
_CHUNK = 8192


def binarize_batch(x: Tensor, generator: torch.Generator) -> Tensor:
    """Bernoulli draws with success probabilities ``x`` in [0, 1] (same shape, same dtype, values 0 or 1).

    ``u < p`` with u uniform on [0, 1): a pixel of 0 is always 0 and a pixel of 1 always 1.
    """
    return binarize_with(x, torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype))


def binarize_with(x: Tensor, u: Tensor) -> Tensor:
    """Bernoulli(``x``) draws from given uniforms ``u`` on [0, 1): 1 where ``u < x``, in ``x``'s dtype."""
    return (u < x).to(x.dtype)


def binarize_images(images_u8: np.ndarray, seed: int) -> np.ndarray:
    """One binarized copy of uint8 ``images_u8`` as uint8 0/255, the same for the same seed on any machine.

    Drawn on the CPU with torch's generator in chunks, so the copy does not depend on the device.
    """
    gen = torch.Generator().manual_seed(int(seed))
    flat = torch.from_numpy(np.ascontiguousarray(images_u8).reshape(len(images_u8), -1))
    out = torch.empty_like(flat)
    for i in range(0, len(flat), _CHUNK):
        p = flat[i : i + _CHUNK].to(torch.float32).div_(255.0)
        out[i : i + _CHUNK] = binarize_batch(p, gen).mul_(255).to(torch.uint8)
    return out.numpy().reshape(images_u8.shape)


def binarize_splits(splits: Splits, mode: str, seed: int, train: bool = True) -> Splits:
    """The splits a protocol trains and evaluates on.

    ``dynamic`` and ``static`` replace the test images by the binarized copy drawn with ``seed``;
    ``static`` (when ``train``) also replaces the training images by the copy drawn with ``seed + 1``.
    ``dynamic`` leaves the training images grey: batches are binarized as they are drawn.
    """
    if mode not in BINARIZE:
        raise ConfigError(f"unknown binarize mode {mode!r}; choose one of {', '.join(BINARIZE)}")
    if mode == "none":
        return splits
    changes: dict[str, Any] = {"test_images": binarize_images(splits.test_images, seed)}
    if mode == "static" and train:
        changes["train_images"] = binarize_images(splits.train_images, seed + 1)
    return replace(splits, **changes)


def protocol(binarize: str, seed: int, likelihood: str, learn_sigma: bool = False, sigma: float = 1.0,
             head: str = "logits", mixtures: int = 0) -> dict:
    """The data protocol a number belongs to, as recorded beside it in JSON and printed beside it.

    ``head`` and ``mixtures`` are the model's (:class:`~vaekit.config.ModelConfig`): a discretized logistic
    whose decoder outputs logits is a run of the older per-pixel-global scale.

    ``density`` says whether the value is a normalized log density of the evaluated data: a Bernoulli
    likelihood of grey levels is not (it is a cross-entropy), every other combination is.
    """
    lik = likelihood
    if likelihood == "gaussian":
        lik = "gaussian (learned per-pixel sigma)" if learn_sigma else f"gaussian (sigma {sigma:g})"
    elif likelihood == "discretized-logistic" and head == "logits":
        lik = "discretized-logistic (256 levels, learned per-pixel scales)"
    elif likelihood == "discretized-logistic":
        lik = "discretized-logistic (256 levels, location and scale from z)"
    elif likelihood == "logistic-mixture":
        lik = f"logistic-mixture (256 levels, {mixtures} components from z, coupled channels)"
    return {
        "binarize": binarize,
        "eval_binarize_seed": seed if binarize != "none" else None,
        "likelihood": lik,
        "density": not (likelihood == "bernoulli" and binarize == "none"),
    }


def describe(p: dict) -> str:
    """One short line for the text output, e.g. ``binarize dynamic, eval seed 20230802, bernoulli``."""
    parts = [f"binarize {p['binarize']}"]
    if p.get("eval_binarize_seed") is not None:
        parts.append(f"eval binarization seed {p['eval_binarize_seed']}")
    parts.append(p["likelihood"] + ("" if p.get("density", True) else " on grey levels, not a density"))
    return ", ".join(parts)


def bits_per_dim_scale(binarize: str, likelihood: str) -> str:
    """What a bits-per-dimension figure of this protocol measures, to print and store beside it.

    Only a discrete likelihood of the 256 levels gives the 8-bit bits/dim that papers report for CIFAR-10
    and ImageNet; a density on [0, 1] differs from it by the unmeasured quantization, and a Bernoulli of
    grey levels is a cross-entropy.
    """
    if likelihood in EIGHT_BIT_LIKELIHOODS:
        return "8-bit: -log2 P of the 256-level pixels, comparable to published bits/dim"
    if binarize != "none":
        return "binary pixels: -log2 P of the binarized images"
    if likelihood == "bernoulli":
        return "a cross-entropy of grey levels, not a likelihood: not comparable"
    return "a density on [0, 1], not the 8-bit scale: not comparable to published bits/dim"
