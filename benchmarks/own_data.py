"""Your own images: the first decode of a PNG folder, and training from the cache against a plain PyTorch loop.

The folder holds ``--images`` 28x28 grey PNGs under ``train/<class>/`` (and a tenth as many under
``test/<class>/``): Fashion-MNIST training images from the Debian package ``dataset-fashion-mnist`` when it is
installed, else grey crops of scikit-image's sample photos. Then:

* **decode**: ``vaekit.data.load_own_data`` on the folder with an empty cache (a fresh ``VAEKIT_DATA``) each
  round, images per second; then the second load of the same folder, which comes from the cache;
* **training**: ``vaekit.train`` on the folder (its decoded cache; the post's settings: the seed model, which
  vaekit picks for 28x28 grey images, batch 128, Adam lr 3e-4), images per second from the per-epoch ``seconds``
  in ``metrics.csv``, against the loop users write for a folder of images: a ``Dataset`` that opens each file
  with PIL and converts it with ``torch.from_numpy(np.asarray(img, dtype=np.float32) / 255)``, a
  ``DataLoader(batch_size=128, shuffle=True, num_workers=--workers)``, the same model (``vaekit.model.VAE``),
  loss (``vaekit.objectives.elbo_terms``: BCE with logits summed, plus the KL) and optimizer, on the same
  training images. Both run in this process, in alternating rounds (the order flips each round), so machine
  noise hits both alike; each round trains a fresh model for ``--epochs`` epochs and its rate is all the
  images it trained on over the time its epochs took. One untimed warm-up of each comes first. The medians over
  ``--rounds`` are printed, their ratio, and the median of each round's own ratio (the two halves of a round ran
  back to back, so on a busy machine that pairing is the steadier figure). The load average is printed at the
  start and the end: on a shared machine it says how far to trust the rates.

    python benchmarks/own_data.py [--images 5000] [--epochs 2] [--rounds 3] [--workers 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vaekit
from vaekit.data import load_own_data, read_idx
from vaekit.model import VAE, model_config
from vaekit.objectives import elbo_terms
from vaekit.run import read_metrics

FASHION = Path("/usr/share/datasets/fashion-mnist")
BATCH = 128
LR = 3e-4


# ------------------------------------------------------------------------------------------ the folder


def source_images(n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``n`` 28x28 uint8 grey images with class labels, and where they come from."""
    if (FASHION / "train-images-idx3-ubyte.gz").is_file():
        images = read_idx(FASHION / "train-images-idx3-ubyte.gz")
        labels = read_idx(FASHION / "train-labels-idx1-ubyte.gz")
        if n <= len(images):
            return images[:n], labels[:n], f"Fashion-MNIST ({FASHION})"
    from skimage import data
    from skimage.color import rgb2gray

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    greys = [np.asarray(rgb2gray(p) * 255, dtype=np.uint8) for p in photos]
    rng = np.random.default_rng(0)
    images = np.empty((n, 28, 28), np.uint8)
    labels = rng.integers(0, len(greys), n).astype(np.uint8)
    for i, label in enumerate(labels):
        grey = greys[label]
        top, left = rng.integers(0, grey.shape[0] - 28), rng.integers(0, grey.shape[1] - 28)
        images[i] = grey[top : top + 28, left : left + 28]
    return images, labels, "28x28 crops of scikit-image's sample photos (astronaut, chelsea, coffee, rocket)"


def write_folder(root: Path, n_train: int) -> str:
    """``train/<class>/*.png`` (``n_train`` images) and ``test/<class>/*.png`` (a tenth as many); the source."""
    n_test = max(2, n_train // 10)
    images, labels, source = source_images(n_train + n_test)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        part = "train" if i < n_train else "test"
        path = root / part / str(label) / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
    return source


def load() -> str:
    """The 1-, 5- and 15-minute load averages (other processes competing for the cores)."""
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


@contextmanager
def fresh_cache() -> Iterator[Path]:
    """An empty vaekit cache folder for the duration (``VAEKIT_DATA``), restored afterwards."""
    old = os.environ.get("VAEKIT_DATA")
    with tempfile.TemporaryDirectory(prefix="vaekit-cache-") as tmp:
        os.environ["VAEKIT_DATA"] = tmp
        try:
            yield Path(tmp)
        finally:
            if old is None:
                del os.environ["VAEKIT_DATA"]
            else:
                os.environ["VAEKIT_DATA"] = old


# ------------------------------------------------------------------------------------------ the plain loop


class ImageFiles(torch.utils.data.Dataset):
    """A folder of images as users write it: each item opens its file with PIL and makes a float tensor."""

    def __init__(self, root: Path) -> None:
        self.files = sorted(root.rglob("*.png"))
        classes = sorted({f.parent.name for f in self.files})
        self.labels = [classes.index(f.parent.name) for f in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.files[i]) as img:
            x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255)
        return x, self.labels[i]


def plain_round(folder: Path, epochs: int, workers: int, seed: int) -> float:
    """A fresh model trained ``epochs`` epochs by the plain loop; images per second over those epochs."""
    torch.manual_seed(seed)
    model = VAE(model_config("seed"))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    dataset = ImageFiles(folder)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x, _ in loader:
            x = x.view(x.shape[0], -1)
            eps = torch.randn(x.shape[0], model.zdim)
            logits, mu, logvar = model(x, eps)
            loss = elbo_terms(logits, x, mu, logvar).loss.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return epochs * len(dataset) / (time.perf_counter() - t0)


def warm_up() -> None:
    """One short untimed pass of each, so neither timed round pays one-time costs (imports, first allocations)."""
    images = np.random.default_rng(0).integers(0, 256, (512, 28, 28), dtype=np.uint8)
    config = vaekit.TrainConfig(epochs=1, batch_size=BATCH, device="cpu", artifacts=False, progress=False)
    with tempfile.TemporaryDirectory(prefix="vaekit-warm-up-") as tmp:
        vaekit.train(config, Path(tmp) / "run", data=images)
    model = VAE(model_config("seed"))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    for start in range(0, len(images), BATCH):
        x = torch.from_numpy(images[start : start + BATCH].astype(np.float32) / 255).view(-1, 784)
        logits, mu, logvar = model(x, torch.randn(x.shape[0], model.zdim))
        opt.zero_grad()
        elbo_terms(logits, x, mu, logvar).loss.sum().backward()
        opt.step()


def vaekit_round(folder: Path, epochs: int, seed: int) -> float:
    """``vaekit.train`` on the folder (read from its cache); images per second over its epochs."""
    config = vaekit.TrainConfig(data=str(folder), epochs=epochs, batch_size=BATCH, lr=LR, seed=seed, device="cpu",
                                artifacts=False, progress=False)
    with tempfile.TemporaryDirectory(prefix="vaekit-run-") as tmp:
        run = vaekit.train(config, Path(tmp) / "run")
        if run.summary["model"] != "seed":
            picked = run.summary["model"]
            raise SystemExit(f"vaekit picked the {picked} model for 28x28 grey images, not seed")
        seconds = sum(row["seconds"] for row in read_metrics(run.path))
        return epochs * run.data["n_train"] / seconds


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=5_000, help="training images in the folder (default 5,000)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per training round (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each measurement; medians are printed (default 3)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the plain loop (default 0)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1, steady on a machine shared with other work: with one thread per "
                        "core, threads that wait on busy cores slow every step many times over; 0: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="vaekit-own-data-") as tmp:
        folder = Path(tmp) / "images"
        t0 = time.perf_counter()
        source = write_folder(folder, args.images)
        n_files = sum(1 for _ in folder.rglob("*.png"))
        print(f"folder: {n_files:,} PNG files of 28x28 grey ({args.images:,} in train/, {n_files - args.images:,} "
              f"in test/, class subfolders), {source}; written in {time.perf_counter() - t0:.1f} s")
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average "
              f"{load()}; DataLoader workers of the plain loop: {args.workers}")

        first, second = [], []
        for _ in range(args.rounds):
            with fresh_cache():
                t = time.perf_counter()
                load_own_data(folder, progress=False)
                first.append(n_files / (time.perf_counter() - t))
                t = time.perf_counter()
                load_own_data(folder, progress=False)
                second.append(time.perf_counter() - t)
        print(f"decode, first run (empty vaekit cache, files in the OS page cache): {statistics.median(first):,.0f} "
              f"images/s median ({', '.join(f'{r:,.0f}' for r in first)})")
        print(f"second run (from the cache): {statistics.median(second) * 1000:.1f} ms median for {n_files:,} images "
              f"({', '.join(f'{s * 1000:.1f}' for s in second)})")

        with fresh_cache():
            load_own_data(folder, progress=False)  # decoded once; every vaekit round reads the cache
            warm_up()
            ours, plain = [], []
            for r in range(args.rounds):
                order = [("vaekit", ours), ("plain", plain)]
                for name, rates in order if r % 2 == 0 else order[::-1]:
                    rate = vaekit_round(folder, args.epochs, r) if name == "vaekit" else \
                        plain_round(folder / "train", args.epochs, args.workers, r)
                    rates.append(rate)
                print(f"  round {r + 1}: vaekit {ours[-1]:,.0f} images/s, plain loop {plain[-1]:,.0f} images/s",
                      file=sys.stderr, flush=True)
        a, b = statistics.median(ours), statistics.median(plain)
        paired = [x / y for x, y in zip(ours, plain, strict=True)]
        print(f"training, {args.epochs} epochs x {args.images:,} images, seed model, batch {BATCH}, Adam lr {LR:g}, "
              f"medians of {args.rounds} rounds:")
        print(f"  vaekit.train from the cache: {a:,.0f} images/s ({', '.join(f'{x:,.0f}' for x in ours)})")
        print(f"  plain loop (PIL per file, DataLoader, workers={args.workers}): {b:,.0f} images/s "
              f"({', '.join(f'{x:,.0f}' for x in plain)})")
        print(f"  ratio vaekit / plain: {a / b:.1f}x of the medians; {statistics.median(paired):.1f}x median of each "
              f"round's ratio ({', '.join(f'{r:.1f}' for r in paired)})")
        print(f"load average at the end: {load()}")


if __name__ == "__main__":
    main()
