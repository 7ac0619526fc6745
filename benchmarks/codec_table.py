"""Codec table: lossless codecs against vaekit's models, in bits per dimension, on the same held-out images.

For each data set the test images are those vaekit's test split holds (Fashion-MNIST's official test set; for a
folder the split its train/ and test/ subfolders give), the first ``--test-images`` of them (0: all), and every
column is measured on exactly those images:

* PNG (Pillow, ``optimize=True``, ``compress_level=9``) and WebP lossless (``lossless=True, quality=100,
  method=6``), each image compressed on its own ("per image", what storing the images as files costs) and as
  strips of ``--strip`` images stacked into one tall image (what a codec reaches when it may use the images'
  likeness to one another); bits/dim = 8 * file bytes / pixel values (images x H x W x channels);
* each row of ``--rows``: a vaekit model trained with the ``images`` recipe (plus the row's settings) for at most
  ``--time-budget-min`` minutes (it stops at the end of the first epoch that would pass the budget), then its
  test NLL by importance sampling with K = ``--samples`` draws per image (``vaekit evaluate RUN --nll --samples
  K`` on the whole test set; with ``--test-images`` the same estimate on that many); bits/dim = NLL / (pixel
  values x ln 2), the -log2 probability of the 8-bit pixels: a code length a coder driven by the model reaches
  within a few bits per image (bits-back coding).

Data sets: ``fashion`` (Fashion-MNIST, the official 60,000 / 10,000 files), ``crops`` (32x32 colour crops of
scikit-image's photographs written as a folder with train/ and test/: training crops from the left 80% of each
photo's columns, test crops from the right 20%, so no test crop overlaps a training crop) and ``cifar``
(CIFAR-10, run only where its archive is present).

A row is ``preset:likelihood[:key=value...]`` (extra TrainConfig settings, e.g. ``mlp:discretized-logistic:zdim=32``),
so a preset or likelihood that vaekit gains is a row on the command line, and ``ROWS`` the default list.

    python benchmarks/codec_table.py [--data fashion,crops,cifar] [--rows ROW,ROW] [--time-budget-min 3]
                                     [--samples 100] [--test-images 1000] [--strip 500] [--out runs/codec-table]
                                     [--threads N] [--tiny]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The rows measured by default: the images recipe (conv, a logistic mixture of 5, a causal context of radius 2)
# without its causal context and as it is; append "preset:likelihood" rows as vaekit gains them.
ROWS = ("conv:logistic-mixture:context=0", "conv:logistic-mixture")
DATASETS = ("fashion", "crops", "cifar")
DATA_LABELS = {"fashion": "Fashion-MNIST (60,000 / 10,000, 28x28 grey)",
               "crops": "scikit-image photo crops (32x32 colour)", "cifar": "CIFAR-10 (50,000 / 10,000, 32x32 colour)"}
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")
# Published CIFAR-10 test bits/dim, for scale: other models trained far longer on all of CIFAR-10.
PUBLISHED = (("PNG", 5.87), ("WebP", 4.61), ("FLIF", 4.37), ("IAF-VAE (Kingma et al. 2016)", 3.11),
             ("NVAE (Vahdat and Kautz 2020)", 2.91), ("VDVAE (Child 2021)", 2.87))


# ------------------------------------------------------------------------------------------ codecs

def encode(image: np.ndarray, codec: str) -> bytes:
    """One uint8 image (H, W) or (H, W, 3) losslessly compressed by Pillow at its strongest settings."""
    from PIL import Image

    buf = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(image))
    if codec == "png":
        pil.save(buf, format="PNG", optimize=True, compress_level=9)
    elif codec == "webp":
        pil.save(buf, format="WEBP", lossless=True, quality=100, method=6)
    else:
        raise ValueError(f"unknown codec {codec!r}")
    return buf.getvalue()


def codec_bits_per_dim(images: np.ndarray, codec: str, strip: int = 0) -> float:
    """8 * compressed bytes / pixel values: each image on its own (``strip`` 0), or ``strip`` images at a time
    stacked vertically into one image (WebP allows 16,383 rows: 500 images of 32 rows fit)."""
    images = np.asarray(images, dtype=np.uint8)
    if strip:
        groups = [images[i : i + strip] for i in range(0, len(images), strip)]
        total = sum(len(encode(g.reshape(-1, *g.shape[2:]), codec)) for g in groups)
    else:
        total = sum(len(encode(img, codec)) for img in images)
    return 8 * total / images.size


def codec_columns(images: np.ndarray, strip: int) -> dict[str, float]:
    """The four codec numbers of a data set's test images."""
    return {f"{codec} {'strips' if s else 'per image'}": codec_bits_per_dim(images, codec, s)
            for codec in ("png", "webp") for s in (0, strip)}


# ------------------------------------------------------------------------------------------ data

@dataclass
class DataSet:
    """A data set as vaekit trains on it: settings for TrainConfig, and a description."""

    name: str
    settings: dict[str, Any]
    label: str


def write_crops(folder: Path, n_train: int, n_test: int, size: int = 32, seed: int = 0) -> None:
    """``folder/train`` and ``folder/test`` of ``size`` x ``size`` PNG crops: training crops from the left 80% of
    each photo's columns, test crops from the right 20% (no test pixel in a training crop), equal numbers per photo.
    Written once; a complete folder is kept."""
    from PIL import Image
    from skimage import data as photos

    if (folder / "done").exists():
        return
    rng = np.random.default_rng(seed)
    for i, name in enumerate(PHOTOS):
        img = np.asarray(getattr(photos, name)())[..., :3]
        h, w = img.shape[:2]
        cut = int(w * 0.8)
        for split, n, lo, hi in (("train", n_train, 0, cut), ("test", n_test, cut, w)):
            count = n // len(PHOTOS) + (i < n % len(PHOTOS))
            ys, xs = rng.integers(0, h - size + 1, count), rng.integers(lo, hi - size + 1, count)
            (folder / split).mkdir(parents=True, exist_ok=True)
            for j, (y, x) in enumerate(zip(ys, xs, strict=True)):
                Image.fromarray(img[y : y + size, x : x + size]).save(folder / split / f"{name}-{j:05d}.png")
    (folder / "done").write_text("complete\n")


def data_sets(names: list[str], out: Path, tiny: bool) -> list[DataSet]:
    """The data sets asked for that are present (CIFAR-10 only with its archive), with a line for each missing."""
    from vaekit.data import DataError, load_splits

    found = []
    for name in names:
        if name == "fashion":
            settings = {"data": _fashion_subset(out)} if tiny else {"dataset": "fashion-mnist", "data_dir": FASHION_DIR}
            label = "Fashion-MNIST, first 256 / 64 (28x28 grey)" if tiny else DATA_LABELS[name]
            found.append(DataSet(name, settings, label))
        elif name == "crops":
            folder = out / "data" / ("crops-tiny" if tiny else "crops-32px")
            write_crops(folder, *((200, 40) if tiny else (6000, 1000)))
            found.append(DataSet(name, {"data": str(folder)}, DATA_LABELS[name] + (
                "" if tiny else ", 6,000 train / 1,000 test crops")))
        elif name == "cifar":
            try:
                load_splits("cifar10", download=False, progress=False)
            except DataError:
                print("codec_table: CIFAR-10 not run: its archive is not on this machine "
                      "(vaekit data fetch cifar10)", file=sys.stderr)
                continue
            found.append(DataSet(name, {"dataset": "cifar10"}, DATA_LABELS[name]))
    return found


def _fashion_subset(out: Path) -> str:
    """The first 256 training and 64 test images of Fashion-MNIST as an array file (``--tiny`` only)."""
    from vaekit.data import load_splits

    path = out / "data" / "fashion-tiny.npz"
    if not path.exists():
        s = load_splits("fashion-mnist", FASHION_DIR, download=False, progress=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, x_train=s.train_images[:256], y_train=s.train_labels[:256], x_test=s.test_images[:64],
                 y_test=s.test_labels[:64])
    return str(path)


# ------------------------------------------------------------------------------------------ vaekit rows

def parse_row(text: str) -> dict[str, Any]:
    """``preset:likelihood[:key=value...]`` as TrainConfig settings (values parsed as int, float, or kept)."""
    parts = text.strip().split(":")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise argparse.ArgumentTypeError(f"a row is preset:likelihood[:key=value...], got {text!r}")
    settings: dict[str, Any] = {"model": parts[0], "likelihood": parts[1]}
    for extra in parts[2:]:
        key, _, value = extra.partition("=")
        settings[key.replace("-", "_")] = _value(value)
    return settings


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def time_budget(seconds: float) -> Any:
    """A callback that ends training after the epoch past which another epoch like it would overrun ``seconds``."""
    from vaekit.training.callbacks import Callback

    class TimeBudget(Callback):
        def on_fit_start(self, trainer: Any) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, trainer: Any, row: dict[str, float]) -> None:
            if time.perf_counter() - self.start + row["seconds"] > seconds:
                trainer.stop_reason = f"time budget of {seconds / 60:g} min"

    return TimeBudget()


def train_row(ds: DataSet, row: str, args: argparse.Namespace, out: Path) -> tuple[Path, dict[str, Any]]:
    """Train one row with the images recipe under the time budget; its run folder and timings."""
    import vaekit
    from vaekit.config import recipe_config

    given = {**ds.settings, **parse_row(row), "seed": args.seed, "progress": not args.quiet, "artifacts": False}
    if args.tiny:
        given.update(epochs=1, batch_size=32)
    config = recipe_config("images", given)
    run_dir = out / f"{ds.name}-{row.replace(':', '-').replace('=', '')}"
    t0 = time.perf_counter()
    run = vaekit.train(config, run_dir, force=True, callbacks=[time_budget(args.time_budget_min * 60)])
    wall = time.perf_counter() - t0
    epochs = [r["seconds"] for r in run.metrics]
    return run_dir, {"train_s": sum(epochs), "wall_s": wall, "epochs": len(epochs),
                     "planned_epochs": run.train_config.epochs, "n_params": run.summary.get("n_params")}


def row_nll(run_dir: Path, test: np.ndarray, samples: int, whole: bool) -> dict[str, float]:
    """The importance-sampled test NLL of a run on ``test``: ``vaekit evaluate --nll`` on the whole test set,
    the same estimate (vaekit.eval.likelihood.model_log_px) on the first images otherwise."""
    import torch

    from vaekit.eval.likelihood import model_log_px
    from vaekit.eval.run import evaluate_run
    from vaekit.run import load_run

    t0 = time.perf_counter()
    if whole:
        res = evaluate_run(run_dir, device="cpu", nll=True, samples=samples)
    else:
        run = load_run(run_dir, torch.device("cpu"))
        x = torch.from_numpy(test.reshape(len(test), -1))
        cfg = run.train_config
        res = model_log_px(run.model, x, samples, cfg.likelihood, cfg.sigma).summary()
    return {"bits_per_dim": res["bits_per_dim"], "nll": res["nll"], "nll_s": time.perf_counter() - t0}


def test_images(run_dir: Path, n: int) -> tuple[np.ndarray, int]:
    """The first ``n`` (0: all) test images of the run's own test split, as vaekit evaluates them; and how many
    the split holds."""
    import torch

    from vaekit.eval.run import load_run_data
    from vaekit.run import load_run

    images = load_run_data(load_run(run_dir, torch.device("cpu"))).test_images
    return (images[:n] if n else images), len(images)


# ------------------------------------------------------------------------------------------ table

def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The Markdown table: per data set its codec lines, then its vaekit rows."""
    lines = ["| data | test images | method | bits/dim | training |", "|---|---|---|---|---|"]
    for r in results:
        n = f"{r['n_test']:,}" + (f" of {r['n_split']:,}" if r["n_test"] != r["n_split"] else "")
        for name, bpd in r["codecs"].items():
            what = name.replace("png", "PNG").replace("webp", "WebP lossless").replace(
                "strips", f"strips of {args.strip}")
            lines.append(f"| {r['label']} | {n} | {what} | {bpd:.3f} | - |")
        for row in r["rows"]:
            lines.append(f"| {r['label']} | {n} | vaekit {row['row']} (images recipe, NLL K={args.samples}) | "
                         f"{row['bits_per_dim']:.3f} | {row['train_s']:.0f} s, {row['epochs']} of "
                         f"{row['planned_epochs']} epochs |")
    refs = ", ".join(f"{name} {bpd}" for name, bpd in PUBLISHED)
    return "\n".join(lines) + f"\n\nPublished CIFAR-10 test bits/dim, for scale: {refs}.\n"


def run_data_set(ds: DataSet, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Every row of one data set, then the codecs on the same test images."""
    result: dict[str, Any] = {"label": ds.label, "rows": [], "codecs": {}}
    test: np.ndarray | None = None
    for row in args.rows:
        run_dir, timing = train_row(ds, row, args, out)
        if test is None:
            test, result["n_split"] = test_images(run_dir, args.test_images)
            result["n_test"] = len(test)
        nll = row_nll(run_dir, test, args.samples, len(test) == result["n_split"])
        result["rows"].append({"row": row, **timing, **nll})
        print(f"codec_table: {ds.name} {row}: {nll['bits_per_dim']:.3f} bits/dim after {timing['train_s']:.0f} s "
              f"of training ({timing['epochs']} epochs), NLL in {nll['nll_s']:.0f} s", file=sys.stderr, flush=True)
    if test is not None:
        result["codecs"] = codec_columns(test, min(args.strip, len(test)))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=",".join(DATASETS), help="data sets, of " + ", ".join(DATASETS))
    p.add_argument("--rows", default=",".join(ROWS), help="preset:likelihood[:key=value...] rows, comma-separated")
    p.add_argument("--time-budget-min", type=float, default=3.0, help="training minutes per row (default 3)")
    p.add_argument("--samples", type=int, default=100, help="importance samples K per test image (default 100)")
    p.add_argument("--test-images", type=int, default=1000, help="first N test images (0: all; default 1000)")
    p.add_argument("--strip", type=int, default=500, help="images per strip (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/codec-table")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--tiny", action="store_true", help="a few images, 1 epoch, K 4: checks that it runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    args = p.parse_args(argv)
    args.data = [d for d in args.data.split(",") if d]
    args.rows = [r for r in args.rows.split(",") if r]
    for name in args.data:
        if name not in DATASETS:
            p.error(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    for row in args.rows:
        try:
            parse_row(row)
        except argparse.ArgumentTypeError as e:
            p.error(str(e))
    if args.tiny:
        args.samples, args.test_images, args.strip = min(args.samples, 4), min(args.test_images or 16, 16), 8
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    t0 = time.perf_counter()
    results = [run_data_set(ds, args, out) for ds in data_sets(args.data, out, args.tiny)]
    text = table(results, args)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")  # every timing, NLL and count
    print(text)
    print(f"codec_table: {math.ceil(time.perf_counter() - t0)} s in all; table in {out / 'table.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
