"""Training-step speed of one model under several ways of computing it, and whether each keeps the numbers.

A variant is a precision (fp32, or bf16 autocast as vaekit trains it: products in bf16, the encoder's and
decoder's outputs back in float32, weights and Adam in float32), a memory format (the default, or channels
last for the convolutions' weights and activations) and, optionally, ``torch.compile`` of the objective.
Every variant starts from the same weights and trains on the same batches and noise with Adam (fused kernel).

Speed: rounds alternate the variants (the order rotating each round), each timing ``steps`` steps after its
own warm-up, so background load hits every variant alike; a variant's figure is the median of its rounds'
images/s, and its ratio the median of its per-round ratios against fp32 in the same round.

Numbers: each variant trains ``check`` steps from the same start on the same batches, then its weights are
evaluated in fp32 (negative ELBO per image on held-out images, fixed noise); the difference from fp32's is
printed beside fp32's own run-to-run spread (a second fp32 run with other noise), which is what "the same
loss" can mean for a stochastic objective.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import vaekit
from vaekit.training.precision import Precision


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False


VARIANTS = {v.name: v for v in (
    Variant("fp32"), Variant("bf16", "bf16"), Variant("fp32-cl", channels_last=True),
    Variant("bf16-cl", "bf16", channels_last=True), Variant("fp32-compile", compile=True),
    Variant("bf16-compile", "bf16", compile=True))}


def neg_elbo(model: nn.Module, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Summed negative ELBO of a batch: Bernoulli terms with logits, closed-form KL."""
    logits, mu, logvar = model(x, eps)
    kl = -0.5 * (1 + logvar - mu * mu - logvar.exp()).sum()
    return F.binary_cross_entropy_with_logits(logits, x, reduction="sum") + kl


class Trainer:
    """A model trained one way: its own copy of the start weights, fused Adam, and its step function."""

    def __init__(self, start: nn.Module, variant: Variant) -> None:
        self.variant, self.model = variant, copy.deepcopy(start)
        if variant.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.prec = Precision.create(variant.precision, torch.device("cpu"))
        self.prec.attach(self.model)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=True)
        self.loss: Callable = torch.compile(neg_elbo) if variant.compile else neg_elbo

    def step(self, x: torch.Tensor, eps: torch.Tensor) -> None:
        with self.prec.autocast():
            loss = self.loss(self.model, x, eps)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def test_loss(self, x: torch.Tensor) -> float:
        gen = torch.Generator().manual_seed(3)
        total = sum(float(neg_elbo(self.model, xb, torch.randn(len(xb), self.model.zdim, generator=gen)))
                    for xb in x.split(500))
        return total / len(x)


def batches(x: torch.Tensor, zdim: int, steps: int, batch: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
    """``steps`` batches of ``x`` with their standard normal noise, fixed by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    idx = [torch.randint(len(x), (batch,), generator=gen) for _ in range(steps)]
    return [(x[i], torch.randn(batch, zdim, generator=gen)) for i in idx]


def measure(x: torch.Tensor, names: list[str], rounds: int, steps: int, batch: int) -> dict[str, tuple]:
    """Median images/s of each variant and its median per-round ratio against fp32 (``names[0]`` is fp32)."""
    start = vaekit.VAE(vaekit.model_config("conv", image_shape=tuple(x.shape[1:])))
    x = x.flatten(1)
    trainers = {n: Trainer(start, VARIANTS[n]) for n in names}
    data = batches(x, start.zdim, steps, batch, seed=1)
    for n, t in trainers.items():  # warm-up; for a compiled step, the compilation
        t0 = time.perf_counter()
        for xb, eps in data[:2]:
            t.step(xb, eps)
        print(f"  warm-up {n}: {time.perf_counter() - t0:.1f} s", flush=True)
    rates: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            for xb, eps in data:
                trainers[n].step(xb, eps)
            rates[n].append(steps * batch / (time.perf_counter() - t0))
        for n in names:
            ratios[n].append(rates[n][-1] / rates[names[0]][-1])
        print(f"  round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:,.0f}" for n in names) + " img/s", flush=True)
    return {n: (statistics.median(rates[n]), statistics.median(ratios[n])) for n in names}


def check(x: torch.Tensor, xt: torch.Tensor, names: list[str], steps: int, batch: int) -> dict[str, float]:
    """Test loss after ``steps`` equal steps for each variant, and for fp32 with other noise (``fp32-noise``)."""
    torch.manual_seed(0)
    start = vaekit.VAE(vaekit.model_config("conv", image_shape=tuple(x.shape[1:])))
    x, xt = x.flatten(1), xt.flatten(1)
    out = {}
    for n, seed in [*[(n, 1) for n in names], ("fp32-noise", 2)]:
        t = Trainer(start, VARIANTS[n if n != "fp32-noise" else "fp32"])
        data = batches(x, start.zdim, steps, batch, seed)
        if seed == 2:  # the same batches, other noise
            noise = batches(x, start.zdim, steps, batch, seed=1)
            data = [(nb[0], d[1]) for nb, d in zip(noise, data, strict=True)]
        for xb, eps in data:
            t.step(xb, eps)
        t.prec.detach()  # evaluation in fp32, as vaekit evaluates
        out[n] = t.test_loss(xt)
    return out
