"""A run in words: its model, its data, its training and its headline numbers with how they were measured.

The report (HTML) and the model card (Markdown) say the same things about a run, so both read them here as
plain text and each escapes them for its own format. Only the run folder's records are read (config and
summary), never the weights or the data, so the card can be rewritten cheaply whenever the numbers change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from vaekit.config import ModelConfig, TrainConfig
from vaekit.data.binarize import describe
from vaekit.data.embedded import EMBEDDED_SOURCE
from vaekit.data.registry import DATASETS

# How to add the numbers a run does not have yet; said wherever they are missing.
NLL_HOW = "vaekit evaluate RUN --nll"

CAPTIONS = {
    "latent_grid.png": "Decoder means over a grid of the latent square (the blog post's figure); for zdim > 2, over "
                       "the test means' first two principal directions, \u00b12 standard deviations.",
    "latent_scatter.png": "Posterior means of the test set coloured by label (PCA when zdim > 2).",
    "reconstructions.png": "Test images (top) and their reconstructions from the posterior means (bottom).",
    "samples.png": "Decoder means of latents drawn from the prior N(0, I).",
    "loss_curve.png": "Negative ELBO per image over the epochs.",
}


@dataclass(frozen=True)
class Headline:
    """One headline number: what it is, its value in words (or why it is absent) and how it was measured."""

    key: str  # the metric's name in a model card's front matter
    name: str
    value: str
    protocol: str
    present: bool = True


def likelihood_text(t: TrainConfig, m: ModelConfig) -> str:
    """The decoder's likelihood in words, as the run trained it (a learned sigma is a weight, not a setting), and
    the causal context its pixels read, if any."""
    context = m.context
    return _likelihood_words(t, m) + (f"; each pixel's distribution also reads the earlier pixels within {context} "
                                      "(a causal context, images drawn pixel by pixel)" if context else "")


def _likelihood_words(t: TrainConfig, m: ModelConfig) -> str:
    if t.likelihood == "gaussian":
        if t.learn_sigma or m.learn_sigma:
            return f"Gaussian with a learned per-pixel sigma (from {m.sigma_init:g}), constants included"
        return f"Gaussian with sigma {t.sigma:g}, constants included"
    if t.likelihood == "discretized-logistic" and m.head == "logits":
        return f"discretized logistic over 256 levels with learned per-pixel scales (from {m.sigma_init:g})"
    if t.likelihood == "discretized-logistic":
        return "discretized logistic over 256 levels, location and scale of every pixel from z"
    if t.likelihood == "logistic-mixture":
        return (f"mixture of {m.mixtures} discretized logistics over 256 levels per pixel from z, colour channels "
                "coupled linearly (PixelCNN++)")
    return {"bernoulli": "Bernoulli (binary cross-entropy on the logits, the blog post's loss)",
            "continuous-bernoulli": "continuous Bernoulli (the normalized density on [0, 1])"}.get(t.likelihood,
                                                                                                   t.likelihood)


_UPSAMPLING = {"transposed": "transposed convolutions",
               "nearest": "nearest-neighbour upsampling and 3x3 convolutions"}


def model_text(m: ModelConfig) -> str:
    """The architecture in one sentence: layer widths of an MLP, channels of a convolutional model."""
    shape = "x".join(map(str, m.image_shape))
    if getattr(m, "architecture", "mlp") == "hierarchical":
        return (f"Model: {m.preset} preset for {shape} images, hierarchical: residual blocks bottom-up and top-down "
                f"over {len(m.encoder_hidden)} resolutions with channels {'-'.join(map(str, m.encoder_hidden))}, "
                f"latent groups of {m.zdim} channels per position ({'-'.join(map(str, m.latent_groups))} per "
                f"resolution, coarsest first), {m.activation} activations.")
    if getattr(m, "architecture", "mlp") == "conv":
        return (f"Model: {m.preset} preset for {shape} images, convolutional: encoder channels "
                f"{'-'.join(map(str, m.encoder_hidden))} (3x3, stride 2) to 2x{m.zdim}, decoder mirrored with "
                f"{_UPSAMPLING.get(getattr(m, 'upsample', 'transposed'), 'transposed convolutions')}, "
                f"{m.activation} activations.")
    return (f"Model: {m.preset} preset for {shape} images, encoder {m.input_dim}-{'-'.join(map(str, m.encoder_hidden))}"
            f"-2x{m.zdim}, decoder {m.zdim}-{'-'.join(map(str, m.decoder_hidden))}-{m.input_dim}, {m.activation} "
            "activations" + (", none between the decoder's first two layers" if m.skip_first_decoder_activation
                             else "") + ".")


def number(value: Any, digits: int = 2) -> str:
    """A recorded number as text with ``digits`` decimals; infinities and non-numbers as they are."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _elbo(summary: dict[str, Any]) -> Headline:
    """The test -ELBO of the final weights, as training measured it."""
    loss = summary.get("test_loss")
    if not is_num(loss):
        return Headline("negative-elbo", "test -ELBO", "absent: the run has no summary.json yet", "", present=False)
    parts = f" (reconstruction {number(summary['test_recon'])} + KL {number(summary['test_kl'])})" \
        if is_num(summary.get("test_recon")) and is_num(summary.get("test_kl")) else ""
    proto = summary.get("protocol")
    known = isinstance(proto, dict) and {"binarize", "likelihood"} <= proto.keys()
    data = f"; data protocol: {describe(proto)}" if known else ""
    return Headline("negative-elbo", "test -ELBO", f"{number(loss)} nats per image{parts}",
                    "negative ELBO per test image with one reparametrized sample per image from a fixed seed, "
                    f"so re-evaluating the run reproduces it (an upper bound on -log p(x)){data}")


def _nll(summary: dict[str, Any]) -> Headline:
    """The importance-sampled -log p(x) that ``vaekit evaluate --nll`` stores, or how to get it."""
    nll = summary.get("nll")
    if not is_num(nll):
        return Headline("nll", "-log p(x)", "absent: not estimated yet",
                        f"{NLL_HOW} estimates it by importance sampling", present=False)
    err = f" \u00b1 {number(summary['nll_stderr'])}" if is_num(summary.get("nll_stderr")) else ""
    k = summary.get("nll_samples")
    shown_k = f"{k:,}" if is_num(k) else str(k)
    set_err = summary.get("nll_test_set_stderr")
    spread = f"; over test sets of this size it varies by \u00b1 {number(set_err)}" if is_num(set_err) else ""
    return Headline("nll", "-log p(x)", f"{number(nll)}{err} nats per image",
                    f"importance sampled with K = {shown_k} samples per test image (the IWAE bound, which tightens "
                    f"towards -log p(x) as K grows); \u00b1 is the standard error of the estimate{spread}")


def _bits(summary: dict[str, Any]) -> Headline:
    """Bits per dimension of the importance-sampled estimate, with the scale it is on."""
    bits = summary.get("bits_per_dim")
    if not is_num(bits):
        return Headline("bits-per-dim", "bits/dim", "absent: not estimated yet", f"{NLL_HOW} adds it with -log p(x)",
                        present=False)
    proto = summary.get("nll_protocol")
    scale = proto.get("bits_per_dim") if isinstance(proto, dict) else None
    return Headline("bits-per-dim", "bits/dim", f"{number(bits, 4)} bits per dimension",
                    "-log p(x) over log 2 and the number of pixel values" + (f"; {scale}" if scale else ""))


def _validation(summary: dict[str, Any]) -> Headline | None:
    """The best validation -ELBO and its epoch, for a run that held out validation images."""
    best = summary.get("best_val_loss")
    if not is_num(best):
        return None
    n = summary.get("n_val")
    return Headline("validation-negative-elbo", "best validation -ELBO",
                    f"{number(best)} nats per image at epoch {summary.get('best_val_epoch')}",
                    "negative ELBO on " + (f"{n:,} " if is_num(n) else "") + "held-out training images, the "
                    "number training chose its epochs on; the test set was evaluated once, at the end")


def headline(summary: dict[str, Any]) -> list[Headline]:
    """The numbers a reader of a run looks for first, each with its protocol, the absent ones said as absent."""
    rows = [_elbo(summary), _nll(summary), _bits(summary)]
    val = _validation(summary)
    return rows + ([val] if val is not None else [])


def dataset_text(data: dict[str, Any]) -> str:
    """What the images were: the named dataset's description, the embedded subset, or the user's own files."""
    own = data.get("own")
    if isinstance(own, dict):
        classes = own.get("class_names")
        labelled = f", {len(classes)} classes ({', '.join(map(str, classes[:10]))}" \
                   f"{', ...' if len(classes) > 10 else ''})" if isinstance(classes, list) and classes else ""
        size = f", resized and centre-cropped to {own['image_size']}" if own.get("image_size") else ""
        return f"your own images: {own.get('kind', 'data')} {own.get('path') or own.get('name')}{labelled}{size}"
    name = str(data.get("dataset") or "unknown")
    if data.get("source") == EMBEDDED_SOURCE:
        return f"{name}: the MNIST subset embedded in vaekit"
    spec = DATASETS.get(name)
    return f"{name}: {spec.description}" if spec is not None else name


def split_text(data: dict[str, Any]) -> str:
    """How many images each split held and their shape."""
    shape = "x".join(map(str, data.get("image_shape") or []))
    parts = [f"{data['n_train']:,} training images" if is_num(data.get("n_train")) else "training images"]
    if is_num(data.get("n_val")):
        parts.append(f"{data['n_val']:,} more held out of the training split for validation "
                     f"({data.get('val_fraction', 0):g} of it)")
    if is_num(data.get("n_test")):
        parts.append(f"{data['n_test']:,} test images")
    return ", ".join(parts) + (f"; each {shape}" if shape else "")


def training_text(t: TrainConfig, summary: dict[str, Any]) -> str:
    """How long and how it trained: epochs (or step budget), batch, learning rate, device and time."""
    epochs = summary.get("epochs", t.epochs)
    budget = f" (a budget of {t.steps:,} steps)" if t.steps else ""
    where = f" on {summary['device']}" if summary.get("device") else ""
    secs = summary.get("train_seconds")
    took = f", {_duration(secs)}" if is_num(secs) else ""
    rate = summary.get("train_samples_per_s")
    speed = f" ({rate:,.0f} images/s)" if is_num(rate) and math.isfinite(rate) else ""
    return (f"{epochs} epoch{'' if epochs == 1 else 's'}{budget}, batch {t.batch_size}, Adam at learning rate {t.lr:g} "
            f"({t.lr_schedule} schedule), seed {t.seed}, objective {t.objective}{where}{took}{speed}")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return f"{seconds} s"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
