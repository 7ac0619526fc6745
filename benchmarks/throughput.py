"""Training throughput: vaekit's loop against a faithful re-creation of the blog post's pipeline.

Both train the post's model (seed preset, zdim 2) with Adam lr 3e-4 and batch 128 on the same images,
in the same process, alternating rounds so machine noise hits both alike. The post's pipeline is a
per-sample dataset that turns each uint8 image into a PIL image and then a float tensor (what
``transforms.ToTensor`` does), a ``DataLoader(batch_size=128, shuffle=True)``, a model ending in
``Sigmoid`` with ``F.binary_cross_entropy(reduction='sum')``, and a tqdm bar updated every step.

    python benchmarks/throughput.py [--dataset fashion-mnist] [--data-dir DIR] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

import vaekit
from vaekit.data import load_splits
from vaekit.runs import read_metrics


class PostDataset(torch.utils.data.Dataset):
    """MNIST as torchvision serves it: PIL image per item, then ToTensor and flatten."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        pic = Image.fromarray(self.images[i], mode="L")
        x = torch.from_numpy(np.array(pic, copy=True)).view(28, 28, 1).permute(2, 0, 1).float().div(255)
        return torch.flatten(x), 0


class PostVAE(nn.Module):
    def __init__(self, zdim: int = 2) -> None:
        super().__init__()
        self.zdim = zdim
        self.encoder = nn.Sequential(nn.Linear(784, 256), nn.ELU(), nn.Linear(256, 64), nn.ELU(),
                                     nn.Linear(64, 32), nn.ELU(), nn.Linear(32, 2 * zdim))
        self.decoder = nn.Sequential(nn.Linear(zdim, 32), nn.Linear(32, 64), nn.ELU(), nn.Linear(64, 256),
                                     nn.ELU(), nn.Linear(256, 784), nn.Sigmoid())

    def forward(self, x: torch.Tensor):
        mu, logvar = torch.split(self.encoder(x), self.zdim, dim=1)
        std = (logvar * 0.5).exp()
        z = std * torch.randn(mu.shape).to(mu.device) + mu
        return self.decoder(z), mu, std, logvar

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        rx, mu, std, logvar = self(x)
        return F.binary_cross_entropy(rx, x, reduction="sum") - 0.5 * (1 + logvar - mu * mu - std * std).sum()


def post_epoch(images: np.ndarray) -> float:
    """One epoch of the post's loop; returns images per second."""
    model = PostVAE()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    loader = torch.utils.data.DataLoader(PostDataset(images), batch_size=128, shuffle=True)
    t0 = time.perf_counter()
    bar = tqdm(loader, ascii=" >=", leave=False, file=sys.stderr)
    for x, _ in bar:
        opt.zero_grad()
        loss = model.loss(x)
        loss.backward()
        opt.step()
        bar.set_postfix({"loss": f"{loss.item():.6f}"})
    return len(images) / (time.perf_counter() - t0)


def vaekit_epochs(data_dir: str | None, dataset: str | None, epochs: int) -> list[float]:
    """vaekit's own training loop (the real ``vaekit.train``); images per second of each epoch."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = vaekit.TrainConfig(dataset=dataset, data_dir=data_dir, epochs=epochs, device="cpu")
        run = vaekit.train(cfg, Path(tmp) / "run")
        n = run.data["n_train"]
        return [n / row["seconds"] for row in read_metrics(run.path)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=None, help="default: whatever vaekit train would use")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    splits = load_splits(args.dataset, args.data_dir)
    print(f"data: {splits.name} ({len(splits.train_images)} training images, from {splits.source}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    post, ours = [], []
    for r in range(args.rounds):
        post.append(post_epoch(splits.train_images))
        ours.extend(vaekit_epochs(args.data_dir, args.dataset, epochs=2))
        print(f"round {r + 1}: post {post[-1]:,.0f} img/s, vaekit {ours[-2]:,.0f} / {ours[-1]:,.0f} img/s",
              flush=True)
    p, o = statistics.median(post), statistics.median(ours)
    print(f"post pipeline (DataLoader + ToTensor): {p:,.0f} images/s (median of {len(post)} epochs)")
    print(f"vaekit loop (in-memory, index slices): {o:,.0f} images/s (median of {len(ours)} epochs)")
    print(f"ratio: {o / p:.2f}x")


if __name__ == "__main__":
    main()
