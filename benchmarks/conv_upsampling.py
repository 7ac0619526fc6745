"""Which conv decoder trains better per second: transposed convolutions or nearest upsampling + 3x3 conv.

Every variant is vaekit's ``conv`` preset for the data's size with only ``upsample`` changed, the same seed, the
same batches (batch 128, Adam lr 1e-3, Bernoulli ELBO) and the same equal share of wall time. The variants
(``--variants``; ``k4s2`` and ``conv-nearest`` are alternatives built here, see :func:`alternative_decoder`) train
in interleaved slices of ``--slice`` seconds, so machine noise hits all of them alike; each stops when its own
training time reaches ``--seconds``. Then each is evaluated (the negative ELBO per image, one draw, seed fixed) on
the same test images, and its step rate is printed.

    python benchmarks/conv_upsampling.py --images 5000 --seconds 120          # Fashion-MNIST, 28x28 grey
    python benchmarks/conv_upsampling.py --crops 5000 --seconds 120           # 32x32 colour photo crops
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vaekit.data import load_splits
from vaekit.model import VAE, model_config
from vaekit.model.conv import level_sizes
from vaekit.objectives import bernoulli_cross_entropy, gaussian_kl

VARIANTS = ("transposed", "nearest", "k4s2", "conv-nearest")


class Crop(nn.Module):
    """Keep the first (H, W) rows and columns: a k4s2 transposed convolution makes 2x, odd sizes need one less."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., : self.size[0], : self.size[1]]


def alternative_decoder(model: VAE, kind: str, shape: tuple[int, ...]) -> None:
    """Replace the (transposed) decoder's levels by ``k4s2`` (4x4 transposed conv, stride 2, padding 1, then a
    crop to the encoder's size: even overlap, so no checkerboard) or ``conv-nearest`` (a 3x3 conv at the lower
    resolution, then nearest upsampling: the transposed convolution's products, no uneven overlap)."""
    sizes = level_sizes(shape[0], shape[1], len(model.config.encoder_hidden))
    layers = list(model.decoder)
    ch = model.config.encoder_hidden
    for i, m in enumerate(layers):
        if isinstance(m, nn.ConvTranspose2d):
            level = len(ch) - (i - 2) // 2
            out = sizes[level - 1]
            if kind == "k4s2":
                layers[i] = nn.Sequential(nn.ConvTranspose2d(m.in_channels, m.out_channels, 4, 2, 1), Crop(out))
            else:
                layers[i] = nn.Sequential(nn.Conv2d(m.in_channels, m.out_channels, 3, padding=1),
                                          nn.Upsample(size=out, mode="nearest"))
    model.decoder = nn.Sequential(*layers)


def images(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, str]:
    """Training and test images (N, H, W[, C]) uint8, and a label."""
    if args.crops:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from paper_table import photo_crops

        train, test = photo_crops(args.crops, 1000)
        return train, test, f"{len(train):,} colour 32x32 photo crops"
    splits = load_splits(args.dataset, None)
    return splits.train_images[: args.images], splits.test_images[:1000], f"{args.dataset}, {args.images:,} images"


def loss(model: VAE, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The summed negative ELBO (Bernoulli likelihood on grey levels, closed-form KL) of a batch."""
    mu, logvar = model.encode(x)
    z = model.reparameterize(mu, logvar, torch.randn(mu.shape, generator=gen))
    return bernoulli_cross_entropy(x, model.decode(z)).sum() + gaussian_kl(mu, logvar).sum()


class Run:
    """One variant's model, optimizer, batch order and training clock."""

    def __init__(self, upsample: str, shape: tuple[int, ...], n: int, lr: float) -> None:
        torch.manual_seed(0)
        cfg = model_config("conv", image_shape=shape)
        cfg.upsample = upsample if upsample in ("transposed", "nearest") else "transposed"
        self.name, self.model = upsample, VAE(cfg)
        if upsample not in ("transposed", "nearest"):
            alternative_decoder(self.model, upsample, shape)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.order, self.gen, self.n = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2), n
        self.perm, self.pos, self.steps, self.seconds = torch.randperm(n, generator=self.order), 0, 0, 0.0

    def train_for(self, x: torch.Tensor, seconds: float, batch: int = 128) -> None:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            if self.pos + batch > self.n:
                self.perm, self.pos = torch.randperm(self.n, generator=self.order), 0
            xb = x[self.perm[self.pos: self.pos + batch]]
            self.pos += batch
            self.opt.zero_grad(set_to_none=True)
            loss(self.model, xb, self.gen).backward()
            self.opt.step()
            self.steps += 1
        self.seconds += time.perf_counter() - start

    @torch.no_grad()
    def test_loss(self, x: torch.Tensor) -> float:
        gen = torch.Generator().manual_seed(3)
        return float(sum(loss(self.model, xb, gen) for xb in x.split(500))) / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--crops", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=120.0, help="training time per variant")
    ap.add_argument("--slice", type=float, default=5.0, help="seconds per turn while alternating")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="the first is the baseline of the ratios")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: one per core); 1 resists other jobs on a shared machine")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train, test, label = images(args)
    shape = train.shape[1:]
    x = torch.from_numpy(train.reshape(len(train), -1)).float().div(255)
    xt = torch.from_numpy(test.reshape(len(test), -1)).float().div(255)
    runs = [Run(v, shape, len(x), args.lr) for v in args.variants.split(",")]
    print(f"{label}; {shape}; {args.seconds:.0f} s each, alternating {args.slice:.0f} s slices; "
          f"threads {torch.get_num_threads()}")
    while any(r.seconds < args.seconds for r in runs):
        for r in runs:
            if r.seconds < args.seconds:
                r.train_for(x, min(args.slice, args.seconds - r.seconds))
    base = runs[0].steps / runs[0].seconds
    for r in runs:
        rate = r.steps / r.seconds
        print(f"{r.name:>10}: {r.steps:5d} steps in {r.seconds:6.1f} s ({rate:5.2f} steps/s, x{rate / base:.2f}); "
              f"test -ELBO {r.test_loss(xt):8.2f} nats/image")


if __name__ == "__main__":
    main()
