"""The importance-sampled log-likelihood and the latent statistics papers report beside it.

The marginal likelihood is estimated as in Burda, Grosse and Salakhutdinov (2016), section 5:

    log p(x) ~= log (1/K) sum_{i=1..K} w_i,   w_i = p(x|z_i) p(z_i) / q(z_i|x),   z_i ~ q(z|x)

computed as a log-mean-exp of the log weights. Its expectation is the K-sample IWAE bound: below log p(x)
for finite K, rising with K towards it; with K = 1 it is the single-sample ELBO.

Standard error (delta method). With w-bar the mean and s_w^2 the sample variance of the K weights,
Var(log w-bar) ~= Var(w) / (K E[w]^2), so per image

    se = sqrt(s_w^2 / K) / w-bar = sqrt((K sum w^2 / (sum w)^2 - 1) / (K - 1)),

which is invariant to rescaling the weights (computed from weights divided by their running maximum, so
nothing overflows). The standard error of the mean NLL over N images is sqrt(sum_n se_n^2) / N: the Monte
Carlo error of the estimate for this test set. The delta method ignores the estimator's downward bias
(Jensen), of order se^2 / 2 per image.

The work is batched over images and draws: each image batch is encoded once and its K draws are decoded
in chunks of at most ``rows`` images-times-draws, with the log-mean-exp accumulated in a streaming way,
so memory stays bounded for any K.

Speed. Past the matrix products, the estimate is dominated by one transcendental per pixel and draw, the
softplus of the Bernoulli term, a large share of the seed model's decoder time on a CPU (the measured
share, and the estimator's speed, are in benchmarks/RESULTS.md, from ``benchmarks/nll_speed.py``). For
binary pixels (the papers' protocol) :func:`sum_log_sigmoid` needs one ``exp`` per pixel and one ``log``
per 112 pixels instead of an ``exp`` and a ``log1p`` per pixel, and ``torch.compile`` (``compile=True``,
the default for large CPU estimates) fuses the decoder's element-wise work, the likelihood and the
importance weights of a chunk into a few loops, so the time left is mostly the matrix products.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from vaekit.compiled import CompiledForward
from vaekit.data.resolve import warn as _warn
from vaekit.data.tensors import to_unit
from vaekit.devices import free_bytes
from vaekit.eval.elbo import EVAL_SEED
from vaekit.model import VAE
from vaekit.model.sizes import leaf_output_bytes
from vaekit.objectives import (
    continuous_bernoulli_log_norm,
    gaussian_kl_per_dim,
    log_importance_weights,
)

# Most decoder rows (images x draws) per chunk on the CPU: for a 784-pixel MLP, large enough for efficient
# matrix products, small enough to stay in cache-friendly memory.
ROWS = 8192
# On an accelerator each chunk costs a few dozen kernel launches whatever its size, so chunks may be larger.
ROWS_ACCELERATOR = 1 << 18
# Below those caps a chunk is sized from the model: its decoded rows may take this many bytes of activations
# (see :func:`row_bytes`). On the CPU a fixed amount, so the chunks, and with them the draws and the estimate,
# are the same on every machine; on an accelerator also at most ``FREE_SHARE`` of the memory free when the
# estimate starts, which a large conv decoder at K = 5000 would otherwise exceed.
CPU_MEMORY = 1 << 30
ACCELERATOR_MEMORY = 16 << 30
FREE_SHARE = 0.5
# Decoder-output-sized temporaries of the likelihood and the importance weights alive at once, per decoded
# row (the discretized logistic's bin masses and tails need the most), and the factor on the decoder layers'
# outputs that covers the workspace of the convolutions beside them (a transposed convolution's column
# buffer is about twice its output). Peaks measured on the CPU stay below the estimate (tests/test_nll_memory.py).
LIKELIHOOD_COPIES = 16
WORKSPACE_FACTOR = 2
# Seed of the draws of the log-likelihood estimate: fixed so the estimate is a function of the weights (and
# apart from the seeds of the ELBO's noise and of the binarized test copy, so no two streams coincide).
NLL_SEED = EVAL_SEED + 101
# With ``compile=None`` an estimate on the CPU is compiled when it decodes at least this many rows (images x
# draws): tens of seconds of eager work, so the few seconds torch.compile takes are repaid.
COMPILE_MIN_ROWS = 1 << 22
# Pixels per product in :func:`sum_log_sigmoid`: each factor is in (1, 2], so a product of 112 stays below
# 2^112, finite in float32 (max 2^128), and 784 = 7 x 112.
LOG_SIGMOID_GROUP = 112
# A latent unit is active when the variance of its posterior mean over the data exceeds this (Burda et al.).
ACTIVE_THRESHOLD = 0.01


class StreamingLogMeanExp:
    """Accumulates log (1/K) sum w, its delta-method standard error and the mean log w over chunks of draws.

    ``add`` takes log weights of shape (draws, images); state is kept in float64 relative to a running
    maximum, so millions of draws neither overflow nor lose the small weights' contribution. An image
    whose weights are all zero (log weights all -inf: the decoder gives it no probability) keeps sums of
    zero, so its estimate is log 0 = -inf (an NLL of +inf), not the NaN of -inf - (-inf).
    """

    def __init__(self, n: int, device: torch.device | str = "cpu") -> None:
        self.count = 0
        self.max = torch.full((n,), -math.inf, dtype=torch.float64, device=device)
        self.sum = torch.zeros(n, dtype=torch.float64, device=device)  # sum of w / exp(max)
        self.sum_sq = torch.zeros(n, dtype=torch.float64, device=device)  # sum of (w / exp(max))^2
        self.sum_log = torch.zeros(n, dtype=torch.float64, device=device)  # sum of log w

    def add(self, log_w: Tensor) -> None:
        lw = log_w.to(torch.float64)
        new_max = torch.maximum(self.max, lw.max(dim=0).values)
        # The reference the sums are relative to; where every weight so far is 0 (max -inf) any finite one
        # does, and 0 keeps exp(-inf - ref) = 0 instead of exp(-inf + inf) = NaN.
        ref = torch.where(new_max == -math.inf, 0.0, new_max)
        shift = torch.exp(self.max - ref)  # exp(-inf) = 0 on the first chunk
        rel = torch.exp(lw - ref)
        self.sum = self.sum * shift + rel.sum(dim=0)
        self.sum_sq = self.sum_sq * shift * shift + (rel * rel).sum(dim=0)
        self.sum_log += lw.sum(dim=0)
        self.max = new_max
        self.count += lw.shape[0]

    def log_mean_exp(self) -> Tensor:
        return self.max + torch.log(self.sum) - math.log(self.count)

    def stderr(self) -> Tensor:
        """Delta-method standard error of :meth:`log_mean_exp` per image (NaN when K = 1).

        An image whose weights are all zero has an estimate of -inf that no finite error bar covers: inf.
        """
        if self.count < 2:
            return torch.full_like(self.sum, math.nan)
        k = self.count
        ratio = k * self.sum_sq / (self.sum * self.sum)
        se = torch.sqrt(torch.clamp(ratio - 1, min=0.0) / (k - 1))
        return torch.where(self.sum == 0, math.inf, se)

    def mean_log(self) -> Tensor:
        return self.sum_log / self.count


def log_mean_exp(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """log (1/K) sum_i w_i over the first dimension and its delta-method standard error (pure function)."""
    acc = StreamingLogMeanExp(log_w.shape[1], log_w.device)
    acc.add(log_w)
    return acc.log_mean_exp(), acc.stderr()


@dataclass
class LogLikelihood:
    """Per-image results of the estimator (float64, on the CPU)."""

    log_px: Tensor  # the importance-sampled estimate of log p(x)
    stderr: Tensor  # its delta-method standard error
    elbo: Tensor  # the mean log weight over the same draws: a K-draw Monte Carlo estimate of the ELBO
    samples: int
    dim: int  # pixels per image, for bits per dimension

    def summary(self) -> dict[str, Any]:
        """Means over the images: nll, its standard errors, bits per dimension and the negative ELBO.

        ``nll_stderr`` is the Monte Carlo error of the estimate on these images (delta method);
        ``nll_test_set_stderr`` is the spread over images, std / sqrt(N), the error of using a finite test
        set as a sample of the data distribution. ``neg_elbo`` is minus the mean log weight, from the same
        draws: it is at least ``nll`` in expectation, and the difference is the gain of importance sampling.
        One image of estimate -inf (every weight zero) makes ``nll`` and ``bits_per_dim`` +inf, and both
        standard errors None: undefined, as they are for one draw (K = 1) or one image.
        """
        n = len(self.log_px)
        nll = -self.log_px.mean().item()
        mc = (torch.sqrt((self.stderr**2).sum()) / n).item()
        spread = (self.log_px.std() / math.sqrt(n)).item() if n > 1 else math.nan
        return {
            "nll": nll,
            "nll_stderr": mc if math.isfinite(mc) else None,
            "nll_test_set_stderr": spread if math.isfinite(spread) else None,
            "bits_per_dim": nll / (self.dim * math.log(2)),
            "nll_samples": self.samples,
            "neg_elbo": -self.elbo.mean().item(),
            "n_images": n,
        }


Encoder = Callable[[Tensor], tuple[Tensor, Tensor]]
LogLik = Callable[[Tensor, Tensor], Tensor]


def bernoulli_log_px_z(x: Tensor, logits: Tensor) -> Tensor:
    """sum_d x_d l_d - softplus(l_d) for ``x`` (B, D) and ``logits`` (C, B, D): the Bernoulli log-likelihood.

    The same value as :func:`vaekit.objectives.bernoulli_log_likelihood` (x log sigmoid(l) + (1 - x)
    log sigmoid(-l) = x l - softplus(l)), in two passes over the logits instead of the five of
    ``binary_cross_entropy_with_logits``: the x-weighted sum is a batched dot product that never
    materializes x broadcast to every draw. It is the estimator's hot loop, so the difference is most of
    the time left after the matrix products.
    """
    return torch.einsum("cbd,bd->cb", logits, x) - F.softplus(logits).sum(dim=-1)


def sum_log_sigmoid(y: Tensor) -> Tensor:
    """sum_d log sigmoid(y_d) over the last dimension, with one ``log`` per 112 elements (pure function).

    log sigmoid(y) = min(y, 0) - log(1 + exp(-|y|)), and the sum of the logs is the log of the product
    of the factors 1 + exp(-|y|), each in (1, 2]: products of ``LOG_SIGMOID_GROUP`` of them cannot
    overflow, and their float32 rounding (about 112 x 6e-8 relative) is far below the estimator's Monte
    Carlo error. For binary pixels x and logits l the Bernoulli log-likelihood is
    ``sum_log_sigmoid((2x - 1) * l)``.
    """
    if torch.finfo(y.dtype).bits < 32:
        y = y.float()  # float16 products of 112 factors overflow; bfloat16 ones lose every digit
    a = y.abs()
    factor = torch.exp(-a) + 1
    d = y.shape[-1]
    g = min(LOG_SIGMOID_GROUP, d)
    full = d - d % g
    log_prod = factor[..., :full].unflatten(-1, (full // g, g)).prod(dim=-1).log().sum(dim=-1)
    if full < d:
        log_prod = log_prod + factor[..., full:].log().sum(dim=-1)
    return y.clamp(max=0).sum(dim=-1) - log_prod


def use_compile(compile: bool | None, device: torch.device, decoded_rows: int) -> bool:  # noqa: A002
    """``compile`` itself, or for ``None``: on the CPU when the estimate decodes ``COMPILE_MIN_ROWS`` rows."""
    if compile is None:
        return device.type == "cpu" and decoded_rows >= COMPILE_MIN_ROWS
    return compile


def is_binary(images: Tensor) -> bool:
    """Whether every pixel is 0 or 1 once scaled to [0, 1] (uint8 images: 0 or 255)."""
    if images.dtype == torch.uint8:
        return bool(((images == 0) | (images == 255)).all())
    return bool(((images == 0) | (images == 1)).all())


@torch.inference_mode()
def estimate_log_px(
    encode: Encoder,
    log_px_z: LogLik,
    images: Tensor,
    samples: int = 5000,
    *,
    rows: int | None = None,
    seed: int = NLL_SEED,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    compile: bool | None = None,  # noqa: A002 - the name users know from torch.compile
    warn: Callable[[str], None] = _warn,
) -> LogLikelihood:
    """Importance-sampled log p(x) of every row of ``images`` with K = ``samples`` draws from q(z|x).

    ``encode(x)`` returns the posterior ``(mu, logvar)`` of a batch (B, D); ``log_px_z(x, z)`` returns
    log p(x|z) for ``x`` (B, D) and ``z`` (C, B, zdim) as (C, B). ``images`` are uint8 grey levels (scaled
    to [0, 1]) or floats already in [0, 1], flattened; they are moved to ``device`` (and ``dtype``, the
    model's) one batch at a time.
    The draws come from a generator seeded with ``seed``, so the result is deterministic for a given
    ``rows`` (default: :func:`chunk_rows` of D-pixel rows; :func:`model_log_px` sizes them from the model).

    ``compile`` runs each chunk's decoder, likelihood and weights through ``torch.compile`` (float32
    rounding differs from eager by ~1e-6 relative); ``None`` does so on the CPU when the estimate decodes
    at least ``COMPILE_MIN_ROWS`` rows. Where compiling fails the estimate goes on eagerly after a
    one-line ``warn``.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"the number of samples must be a positive integer (got {samples!r})")
    n, dim = images.shape[0], int(images[0].numel()) if len(images) else 0
    if n == 0:
        raise ValueError("no images to evaluate")
    device = torch.device(device) if device is not None else images.device
    batch, chunk, n_chunks = chunk_layout(n, samples, rows, device, (LIKELIHOOD_COPIES + 1) * 4 * dim)

    def chunk_log_w(x: Tensor, mu: Tensor, std: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
        z = mu + std * eps
        return log_importance_weights(log_px_z(x, z), eps, logvar, z)

    # torch's automatic dynamic shapes: a static graph for the first chunk shape, one dynamic graph once the
    # shape changes. The graphs are cached on this function's code for the whole process, a pair per model
    # architecture and likelihood; past torch's recompile limit (8) further ones run eagerly. The draws are
    # made outside, so a chunk redone eagerly after a compiler failure uses the same ones.
    weights = CompiledForward(chunk_log_w, device, [], [], warn, use_compile(compile, device, n * samples),
                              label="log p(x)", unsupported="estimating without it", failed="estimating without it")
    gen = torch.Generator(device=device).manual_seed(seed)
    out = {k: torch.empty(n, dtype=torch.float64) for k in ("log_px", "stderr", "elbo")}
    bar = tqdm(total=-(-n // batch) * n_chunks, desc=f"log p(x), K={samples}", unit="chunk", disable=not progress,
               leave=False, dynamic_ncols=True)
    for i in range(0, n, batch):
        xb = images[i : i + batch].reshape(-1, dim).to(device)
        x = to_unit(xb) if xb.dtype == torch.uint8 else xb
        x = x.to(dtype) if dtype is not None else x
        acc = _batch_weights(x, encode, weights, gen, samples, chunk, bar)
        out["log_px"][i : i + batch] = acc.log_mean_exp().cpu()
        out["stderr"][i : i + batch] = acc.stderr().cpu()
        out["elbo"][i : i + batch] = acc.mean_log().cpu()
    bar.close()
    return LogLikelihood(out["log_px"], out["stderr"], out["elbo"], samples, dim)


def memory_budget(device: torch.device) -> int:
    """Bytes the decoded rows of one chunk may take on ``device`` (see ``CPU_MEMORY``)."""
    if device.type == "cpu":
        return CPU_MEMORY
    free = free_bytes(device)
    return int(min(ACCELERATOR_MEMORY, FREE_SHARE * free)) if free is not None else ACCELERATOR_MEMORY


def row_bytes(model: VAE) -> int:
    """Bytes of activations one decoded row needs: every decoder layer's output, and the likelihood's temporaries.

    Measured by decoding one latent with a hook on every layer, so a conv decoder's feature maps count at
    their true size; an output that is a view of its input (a reshape) takes no memory and is not counted.
    Summing every layer over-counts what inference keeps alive at once, so the chunks err on the safe side
    (``WORKSPACE_FACTOR`` and ``LIKELIHOOD_COPIES`` add what the convolutions and the likelihood need).
    """
    param = next(model.parameters())

    def decode_one() -> Tensor:
        with torch.inference_mode():
            return model.decode(torch.zeros(1, model.zdim, device=param.device, dtype=param.dtype))

    layers, logits = leaf_output_bytes(model.decoder, decode_one, skip_views=True)
    return WORKSPACE_FACTOR * layers + LIKELIHOOD_COPIES * logits.numel() * max(logits.element_size(), 4)


def chunk_rows(device: torch.device, bytes_per_row: int) -> int:
    """Decoded rows per chunk: as many as ``memory_budget`` holds at ``bytes_per_row``, up to ``ROWS`` (CPU) or
    ``ROWS_ACCELERATOR``, and at least one."""
    cap = ROWS if device.type == "cpu" else ROWS_ACCELERATOR
    return max(1, min(cap, memory_budget(device) // max(1, bytes_per_row)))


def chunk_layout(n: int, samples: int, rows: int | None, device: torch.device,
                 bytes_per_row: int = 0) -> tuple[int, int, int]:
    """Images per batch, draws per decoder call and calls per batch, decoding at most ``rows`` rows at once.

    All K draws of a batch fit in ``rows`` (default :func:`chunk_rows` of ``bytes_per_row``), so a batch is
    encoded once however large K is.
    """
    rows = rows if rows is not None else chunk_rows(device, bytes_per_row)
    if rows < 1:
        raise ValueError(f"rows must be a positive integer (got {rows!r})")
    batch = max(1, min(n, rows // samples))
    chunk = max(1, min(samples, rows // batch))
    return batch, chunk, -(-samples // chunk)


def _batch_weights(x: Tensor, encode: Encoder, weights: CompiledForward, gen: torch.Generator, samples: int,
                   chunk: int, bar: Any) -> StreamingLogMeanExp:
    """The K = ``samples`` log weights of one batch of images, drawn and accumulated ``chunk`` draws at a time."""
    mu, logvar = encode(x)
    acc = StreamingLogMeanExp(x.shape[0], x.device)
    std = torch.exp(0.5 * logvar)
    for start in range(0, samples, chunk):
        k = min(chunk, samples - start)
        eps = torch.randn((k, *mu.shape), generator=gen, device=x.device, dtype=mu.dtype)
        acc.add(weights.run(lambda f: f(x, mu, std, logvar, eps)))  # noqa: B023 - called at once
        bar.update(1)
    return acc


def model_log_px(model: VAE, images: Tensor, samples: int = 5000, likelihood: str = "bernoulli", sigma: float = 1.0,
                 *, compile: bool | None = None, **kwargs: Any) -> LogLikelihood:  # noqa: A002
    """:func:`estimate_log_px` for a :class:`~vaekit.model.VAE` under the named likelihood.

    A model with a learned per-pixel sigma uses it in place of ``sigma``. With binary images, in code that
    ``torch.compile`` traces, the Bernoulli term is :func:`sum_log_sigmoid` of the sign-flipped logits;
    eager code keeps :func:`bernoulli_log_px_z`, because run op by op the grouped product's extra passes
    over the logits cost more than the ``log1p`` it saves (and so an eager fallback computes exactly what
    ``compile=False`` does). ``compile`` is :func:`estimate_log_px`'s (``None``: by the estimate's size).
    Without ``rows`` the chunks are sized from the decoder's activations (:func:`row_bytes`) and the device.
    """
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    if kwargs.get("rows") is None:
        kwargs["rows"] = chunk_rows(param.device, row_bytes(model))
    if model.hierarchical:
        try:
            return hierarchical_log_px(model, images, samples, likelihood, sigma, **kwargs)
        finally:
            model.train(was_training)
    compiled = use_compile(compile, param.device, len(images) * samples)
    binary = compiled and likelihood == "bernoulli" and is_binary(images)

    def log_px_z(x: Tensor, z: Tensor) -> Tensor:
        logits = model.decode(z)
        if binary and torch.compiler.is_compiling():
            return sum_log_sigmoid(logits * (2 * x - 1))
        if likelihood == "bernoulli":
            return bernoulli_log_px_z(x, logits)
        if likelihood == "continuous-bernoulli":
            return bernoulli_log_px_z(x, logits) + continuous_bernoulli_log_norm(logits).sum(dim=-1)
        return model.log_px_z(likelihood, x, logits, sigma)

    try:
        return estimate_log_px(model.encode, log_px_z, images, samples, device=param.device, dtype=param.dtype,
                               compile=compiled, **kwargs)
    finally:
        model.train(was_training)


@torch.inference_mode()
def hierarchical_log_px(model: VAE, images: Tensor, samples: int = 5000, likelihood: str = "bernoulli",
                        sigma: float = 1.0, *, rows: int | None = None, seed: int = NLL_SEED,
                        progress: bool = False, **_: Any) -> LogLikelihood:
    """Importance-sampled log p(x) of a hierarchical VAE, every latent group sampled.

    The proposal is the whole posterior q(z|x) = prod_i q(z_i | x, z_<i), drawn group by group top-down, so
    log w = log p(x|z) + sum_i log p(z_i | z_<i) - sum_i log q(z_i | x, z_<i). Each group's distributions
    depend on the draws above it, so every chunk of draws runs the top-down pass (eagerly: the flat model's
    compiled chunk does not apply); the chunks and the streaming log-mean-exp are the flat estimate's.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"the number of samples must be a positive integer (got {samples!r})")
    param = next(model.parameters())
    n, dim = images.shape[0], int(images[0].numel()) if len(images) else 0
    if n == 0:
        raise ValueError("no images to evaluate")
    batch, chunk, n_chunks = chunk_layout(n, samples, rows, param.device)
    gen = torch.Generator(device=param.device).manual_seed(seed)
    out = {k: torch.empty(n, dtype=torch.float64) for k in ("log_px", "stderr", "elbo")}
    bar = tqdm(total=-(-n // batch) * n_chunks, desc=f"log p(x), K={samples}", unit="chunk", disable=not progress,
               leave=False, dynamic_ncols=True)
    for i in range(0, n, batch):
        xb = images[i : i + batch].reshape(-1, dim).to(param.device)
        x = (to_unit(xb) if xb.dtype == torch.uint8 else xb).to(param.dtype)
        acc = StreamingLogMeanExp(x.shape[0], x.device)
        for start in range(0, samples, chunk):
            eps = torch.randn((min(chunk, samples - start), x.shape[0], model.latent_size), generator=gen,
                              device=x.device, dtype=x.dtype)
            p = model.latent_pass(x, eps)
            acc.add(model.log_px_z(likelihood, x, p.logits, sigma) + p.log_p - p.log_q)
            bar.update(1)
        out["log_px"][i : i + batch] = acc.log_mean_exp().cpu()
        out["stderr"][i : i + batch] = acc.stderr().cpu()
        out["elbo"][i : i + batch] = acc.mean_log().cpu()
    bar.close()
    return LogLikelihood(out["log_px"], out["stderr"], out["elbo"], samples, dim)


@torch.inference_mode()
def latent_statistics(model: VAE, images: Tensor, batch_size: int = 1000,
                      threshold: float = ACTIVE_THRESHOLD) -> dict[str, Any]:
    """Active units and the KL per latent dimension over ``images`` (uint8 or [0, 1] floats, flattened).

    A unit u is active when Var_x(E_q(z|x)[z_u]) > ``threshold`` (Burda et al., 2016): the posterior mean
    moves with the input, so the unit carries information. ``kl_per_dim`` is the mean over the images of
    the closed-form KL(q(z_u|x) || N(0, 1)) of each dimension; its sum is the ELBO's KL term.
    """
    param = next(model.parameters())
    mus, kls = [], []
    for i in range(0, len(images), batch_size):
        xb = images[i : i + batch_size].reshape(min(batch_size, len(images) - i), -1).to(param.device)
        mu, logvar = model.encode((to_unit(xb) if xb.dtype == torch.uint8 else xb).to(param.dtype))
        mus.append(mu.double().cpu())
        kls.append(gaussian_kl_per_dim(mu, logvar).double().sum(dim=0).cpu())
    mu_all = torch.cat(mus)
    var = mu_all.var(dim=0) if len(mu_all) > 1 else torch.zeros(mu_all.shape[1], dtype=torch.float64)
    kl = torch.stack(kls).sum(dim=0) / len(mu_all)
    return {
        "active_units": int((var > threshold).sum()),
        "active_threshold": threshold,
        "posterior_mean_variance": var.tolist(),
        "kl_per_dim": kl.tolist(),
    }
