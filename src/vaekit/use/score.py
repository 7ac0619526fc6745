"""How well a trained model explains each image: per-image -ELBO or importance-sampled NLL, bits/dim, AUROC.

An image the model finds unlikely is one unlike its training data, which makes the negative log-likelihood a
score for anomaly detection: train on normal images, score new ones, look at the worst first. The score of an
image is

* ``neg_elbo``: its negative ELBO in nats with one reparametrized draw, the i-th image's draw the i-th of a
  generator seeded with the seed of ``vaekit evaluate`` (:data:`vaekit.eval.elbo.EVAL_SEED`), so the same images
  score the same on every call, whatever the batch size;
* ``nll`` (``nll=K``): minus the importance-sampled log p(x) with K draws
  (:func:`vaekit.eval.likelihood.model_log_px`, the estimator of ``vaekit evaluate --nll``): less noisy and
  closer to the true likelihood, K times the work.

``bits_per_dim`` is the score over the number of pixel values (H x W x channels) times ln 2, as ``vaekit
evaluate`` reports it: for an 8-bit likelihood bits per 8-bit pixel value, for a binarized run bits per binary
pixel, and for the other likelihoods of grey levels a figure of the density (see
:func:`vaekit.data.binarize.bits_per_dim_scale`).

Images are read a batch at a time; what is kept per image is its name, label and two numbers, and the figure's
images are the few highest and lowest seen so far, so memory does not grow with the images' pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from vaekit.config import USE_BATCH_SIZE, ConfigError
from vaekit.data.binarize import bits_per_dim_scale

if TYPE_CHECKING:
    from vaekit.use.inputs import Batch, Inputs, TrainedRun

FIGURE_IMAGES = 8  # highest- and lowest-scored images each in the figure
METRICS = {"neg_elbo": "negative ELBO (nats, one draw)", "nll": "importance-sampled negative log-likelihood (nats)"}


class Extremes:
    """The ``k`` images of the highest (``highest``) or lowest scores seen so far, with their scores and names."""

    def __init__(self, k: int, highest: bool) -> None:
        self.k, self.highest = k, highest
        self.scores = np.empty(0)
        self.pixels: np.ndarray | None = None
        self.names: list[str] = []

    def add(self, scores: np.ndarray, pixels: np.ndarray, names: list[str]) -> None:
        all_scores = np.concatenate([self.scores, scores])
        all_pixels = pixels if self.pixels is None else np.concatenate([self.pixels, pixels])
        all_names = self.names + list(names)
        key = np.nan_to_num(all_scores, nan=-np.inf if self.highest else np.inf)
        order = np.argsort(-key if self.highest else key, kind="stable")[: self.k]
        self.scores, self.pixels = all_scores[order], all_pixels[order].copy()
        self.names = [all_names[i] for i in order]


@dataclass
class ScoreTable:
    """Per-image scores in the order the images came: ``score`` in nats and ``bits_per_dim``, by ``metric``."""

    names: list[str]
    labels: np.ndarray | None
    score: np.ndarray
    bits_per_dim: np.ndarray
    metric: str  # a key of METRICS
    samples: int  # draws per image: 1 for neg_elbo, K for nll
    scale: str  # what bits_per_dim measures (vaekit.data.binarize.bits_per_dim_scale)
    highest: Extremes = field(repr=False)
    lowest: Extremes = field(repr=False)

    def worst_first(self) -> np.ndarray:
        """Image indices by descending score (the least likely first); ties keep the input order."""
        return np.argsort(-np.nan_to_num(self.score, nan=np.inf), kind="stable")

    def columns(self) -> dict[str, Any]:
        """The table as plain columns (input order): ``name``, ``label`` (None without labels), the score, bits/dim."""
        return {"name": list(self.names), "label": None if self.labels is None else self.labels.copy(),
                self.metric: self.score.copy(), "bits_per_dim": self.bits_per_dim.copy()}


def _batch_score(run: TrainedRun, x: torch.Tensor, gen: torch.Generator, nll: int | None,
                 rows: int | None) -> np.ndarray:
    """The scores (nats) of one batch of model inputs ``x`` (rows in [0, 1])."""
    cfg, model = run.train_config, run.model
    if nll is not None:
        from vaekit.eval.likelihood import model_log_px

        return (-model_log_px(model, x, nll, cfg.likelihood, cfg.sigma, rows=rows).log_px).numpy()
    from vaekit.eval.elbo import image_terms

    # One draw per image, image by image: the noise of the i-th image is the same whatever the batch size (torch
    # fills larger tensors in blocks, so one draw for the batch would depend on where the batch starts and ends).
    eps = torch.stack([torch.randn(model.latent_size, generator=gen) for _ in range(x.shape[0])])
    eps = eps.to(device=x.device, dtype=x.dtype)
    with torch.inference_mode():
        return image_terms(model, x, eps, cfg.likelihood, cfg.sigma).loss.double().cpu().numpy()


def score_batches(run: TrainedRun, batches: Iterable[Batch], *, nll: int | None = None, total: int | None = None,
                  progress: bool = False) -> ScoreTable:
    """Score every image of ``batches`` (see the module); ``total`` images, when known, sizes the progress bar."""
    from vaekit.eval.elbo import EVAL_SEED
    from vaekit.eval.likelihood import chunk_rows, is_binary, row_bytes

    model = run.model
    if nll is not None and (isinstance(nll, bool) or not isinstance(nll, int) or nll < 1):
        raise ConfigError(f"--nll must be a positive number of importance samples (got {nll!r:.20})")
    was_training = model.training
    model.eval()
    rows = chunk_rows(next(model.parameters()).device, row_bytes(model)) if nll is not None else None
    gen = torch.Generator().manual_seed(EVAL_SEED)
    names: list[str] = []
    labels: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    high, low = Extremes(FIGURE_IMAGES, True), Extremes(FIGURE_IMAGES, False)
    binary, dim = True, 1
    bar = tqdm(total=total, desc="scoring", unit="img", disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for b in batches:
            x = b.x.reshape(len(b.x), -1)
            s = _batch_score(run, x, gen, nll, rows)
            dim, binary = x.shape[1], binary and is_binary(x)
            names += b.names
            scores.append(s)
            if b.labels is not None:
                labels.append(np.asarray(b.labels, dtype=np.int64))
            high.add(s, b.pixels, b.names)
            low.add(s, b.pixels, b.names)
            bar.update(len(x))
    finally:
        bar.close()
        model.train(was_training)
    score = np.concatenate(scores) if scores else np.empty(0)
    mode = run.train_config.binarize if binary else "none"
    return ScoreTable(names, np.concatenate(labels) if labels and len(labels) == len(scores) else None, score,
                      score / (dim * math.log(2)), "nll" if nll is not None else "neg_elbo", nll or 1,
                      bits_per_dim_scale(mode, run.train_config.likelihood), high, low)


def score_inputs(run: TrainedRun, inputs: Inputs, *, nll: int | None = None, batch_size: int = USE_BATCH_SIZE,
                 progress: bool = False) -> ScoreTable:
    """:func:`score_batches` of ``inputs`` (:func:`vaekit.use.inputs.open_inputs`) on the model's device."""
    device = next(run.model.parameters()).device
    if inputs.n == 0:
        raise ConfigError("no images to score")
    return score_batches(run, inputs.batches(batch_size, device), nll=nll, total=inputs.n, progress=progress)


def class_names_of(inputs: Inputs) -> list[str] | None:
    """The names of the images' labels 0, 1, ...: those their source gives (class subfolders, a named dataset's
    split). Not the run's own record: images from elsewhere number their classes their own way."""
    names = getattr(inputs, "class_names", None)
    return list(names) if names else None


def score(run: TrainedRun, images: Any = None, *, split: str | None = None, nll: int | None = None,
          normal: str | list[int | str] | None = None, batch_size: int = USE_BATCH_SIZE, progress: bool = False,
          data_dir: Any = None) -> dict[str, Any]:
    """Per-image scores of ``images`` (anything :func:`vaekit.use.inputs.open_inputs` takes) or of the run's
    ``split``, as plain columns in the images' order (:meth:`ScoreTable.columns`); with ``normal`` (class ids or
    names) also ``auroc``, the AUROC of the score for telling the other classes apart (:mod:`vaekit.use.anomaly`)."""
    from vaekit.use.anomaly import auroc, parse_normal
    from vaekit.use.inputs import open_inputs

    inputs = open_inputs(run, images, split=split, data_dir=data_dir)
    names = class_names_of(inputs)
    normal_ids = parse_normal(normal, inputs.labels, names) if normal is not None else None
    table = score_inputs(run, inputs, nll=nll, batch_size=batch_size, progress=progress)
    out = table.columns()
    if normal_ids is not None:
        out["auroc"] = auroc(table.score, table.labels, normal_ids, names)["auroc"]
    return out
