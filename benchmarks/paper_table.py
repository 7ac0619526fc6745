"""Results table: train and evaluate published protocols and write a Markdown table with a command per row.

Rows (``--only`` picks groups by the name in brackets):

* [mnist] the IWAE paper's one-stochastic-layer models (preset ``burda``: 2x200 tanh, zdim 50) on dynamically
  binarized MNIST: VAE (k = 1, published test NLL 86.76 nats) and IWAE (k = 50, published 84.78), both with
  K = 5000 importance samples (Burda, Grosse and Salakhutdinov, 2016, table 1). They need the full MNIST
  training set; without it they are listed as not run, with the reason;
* [fashion] the same two protocols on Fashion-MNIST (no published number for this model);
* [conv] ``conv`` (zdim 32) against ``mlp`` (512-256, zdim 32) on dynamically binarized Fashion-MNIST, NLL in
  nats (no published number for these models);
* [colour] ``conv`` against ``mlp`` (both zdim 32) on colour photo crops with the discretized logistic
  likelihood, NLL in 8-bit bits/dim. The crops are cut here from the colour photos shipped with scikit-image
  (``PHOTOS``): random ``--crop-size`` squares, the training crops from the left 80% of each photo's columns and
  the test crops from the right 20%, so no test pixel lies in any training crop; equal numbers per photo, seed
  ``--crop-seed``. They are written to ``OUT/data/photo-crops-*.npz`` (``x_train``/``x_test``, uint8, channels
  last) and trained with ``vaekit train --data``;
* [cifar] the same two models on CIFAR-10 with the discretized logistic, beside the published 3.11 bits/dim of a
  VAE with inverse autoregressive flow (Kingma et al., 2016), a much larger model trained far longer, named as
  a reference and not the same model. They run only where CIFAR-10's archive is on this machine and otherwise
  print "not run: needs CIFAR-10";
* [post] the blog post's own setting (``seed`` preset, zdim 2, BCE on grey levels, Adam 3e-4, batch 128) on the
  data ``vaekit train`` uses by default (MNIST, or offline the embedded 5,000-digit subset), where the Bernoulli
  "likelihood" of grey levels is not a density, and the same model under dynamic binarization and under the
  continuous Bernoulli, which are.

``--train-images N`` / ``--test-images M`` train and test the Fashion-MNIST and CIFAR-10 rows on the first N
training and first M test images of the official splits (written to ``OUT/data/*.npz``; 0: all); the MNIST
rows always use the full sets, as the published numbers do. The new rows train with Adam lr 1e-3 and batch
100, as the published burda rows do.

The published models trained for 3,280 epochs (batch 20, an Adam schedule from lr 1e-3); ``--epochs`` sets
how long the rows here train, so numbers from short runs are far from converged and say so in the table.

    python benchmarks/paper_table.py --epochs 2 [--samples 5000] [--out runs/paper-table] [--device auto]
                                     [--only mnist,fashion,conv,colour,cifar,post] [--table FILE]
                                     [--train-images N] [--test-images M] [--crops N] [--test-crops M]
                                     [--crop-size 32] [--crop-seed 0] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import vaekit
from vaekit.config import TrainConfig
from vaekit.data import DataError, load_splits
from vaekit.devices import resolve_device

GROUPS = ("mnist", "fashion", "conv", "colour", "cifar", "post")
# scikit-image's colour photographs that ship with it (no download): 512x512, 300x451, 400x600, 427x640, 512x512.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")
IAF_CIFAR = "ref. 3.11 bits/dim: VAE with IAF (Kingma et al. 2016), another model"
DATA_LABELS = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10",
               "mnist-embedded": "MNIST subset (4,000 train / 1,000 test digits)"}
# Why a row whose data is absent is not run, and where the full data comes from.
NEEDS = {"mnist": ("full MNIST training set not found on this machine", "needs the full MNIST files (vaekit data "
                   "fetch mnist)"),
         "cifar10": ("not run: needs CIFAR-10", "needs CIFAR-10's cifar-10-binary.tar.gz (vaekit data fetch cifar10)")}


@dataclass
class Row:
    group: str  # one of GROUPS: what --only selects
    label: str
    dataset: str | None  # a registered dataset, or None when ``train`` names a prepared array file (``data``)
    train: dict[str, Any]
    published: str = ""
    needs: str = ""  # a dataset that must be present, or the row is skipped
    data_label: str = ""  # default: DATA_LABELS[dataset]
    notes: list[str] = field(default_factory=list)


@dataclass
class Source:
    """Where a group's data comes from: a registered dataset or a prepared ``.npz``, and its label."""

    dataset: str | None
    data: str | None
    label: str

    def rows(self, group: str, label: str, train: dict[str, Any], published: str = "", needs: str = "") -> Row:
        extra = {"data": self.data} if self.data else {}
        return Row(group, label, self.dataset, {**train, **extra}, published, needs, self.label)


def rows(post_data: str, sources: dict[str, Source]) -> list[Row]:
    burda = dict(model="burda", binarize="dynamic", lr=1e-3, batch_size=100)
    adam = dict(lr=1e-3, batch_size=100)
    conv, mlp = dict(model="conv", **adam), dict(model="mlp", zdim=32, **adam)
    binary, logistic = dict(binarize="dynamic"), dict(likelihood="discretized-logistic")
    fashion, crops, cifar = sources["fashion"], sources["colour"], sources["cifar"]
    return [
        Row("mnist", "VAE (burda, k=1)", "mnist", {**burda, "objective": "elbo", "k": 1}, "86.76", "mnist"),
        Row("mnist", "IWAE (burda, k=50)", "mnist", {**burda, "objective": "iwae", "k": 50}, "84.78", "mnist"),
        fashion.rows("fashion", "VAE (burda, k=1)", {**burda, "objective": "elbo", "k": 1}),
        fashion.rows("fashion", "IWAE (burda, k=50)", {**burda, "objective": "iwae", "k": 50}),
        fashion.rows("conv", "conv (zdim 32)", {**conv, **binary}),
        fashion.rows("conv", "mlp 512-256 (zdim 32)", {**mlp, **binary}),
        crops.rows("colour", "conv (zdim 32)", {**conv, **logistic}),
        crops.rows("colour", "mlp 512-256 (zdim 32)", {**mlp, **logistic}),
        cifar.rows("cifar", "conv (zdim 32)", {**conv, **logistic}, IAF_CIFAR, "cifar10"),
        cifar.rows("cifar", "mlp 512-256 (zdim 32)", {**mlp, **logistic}, IAF_CIFAR, "cifar10"),
        Row("post", "the post's VAE (seed, zdim 2)", post_data, {"model": "seed"}),
        Row("post", "seed, dynamic binarization", post_data, {"model": "seed", "binarize": "dynamic"}),
        Row("post", "seed, continuous Bernoulli", post_data, {"model": "seed", "likelihood": "continuous-bernoulli"}),
    ]


# ------------------------------------------------------------------------------------------ data


def _count(n: int) -> str:
    return f"{n:,}"


def write_npz(path: Path, **arrays: np.ndarray) -> str:
    """Write the arrays once (an existing file of the same name, made by the same code, is kept)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
    return str(path)


def subset_source(name: str, out: Path, n_train: int, n_test: int) -> Source:
    """A registered dataset, or its first ``n_train`` training and ``n_test`` test images as an ``.npz``."""
    label = DATA_LABELS[name]
    if not (n_train or n_test) or not available(name):
        return Source(name, None, label)
    s = load_splits(name, download=False, progress=False)
    tr, te = n_train or len(s.train_images), n_test or len(s.test_images)
    path = write_npz(out / "data" / f"{name}-first{tr}-test{te}.npz", x_train=s.train_images[:tr],
                     y_train=s.train_labels[:tr], x_test=s.test_images[:te], y_test=s.test_labels[:te])
    return Source(None, path, f"{label}, first {_count(tr)} train / first {_count(te)} test images")


def _share(n: int, i: int, parts: int) -> int:
    return n // parts + (i < n % parts)


def photo_crops(n_train: int, n_test: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random ``size`` x ``size`` crops of ``PHOTOS``: training crops from the left 80% of each photo's columns,
    test crops from the right 20% (no test pixel in any training crop), equal numbers per photo."""
    from skimage import data as photos

    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for i, name in enumerate(PHOTOS):
        img = np.asarray(getattr(photos, name)())[..., :3]
        h, w = img.shape[:2]
        cut = int(w * 0.8)
        for n, lo, hi, dest in ((_share(n_train, i, len(PHOTOS)), 0, cut, train),
                                (_share(n_test, i, len(PHOTOS)), cut, w, test)):
            ys = rng.integers(0, h - size + 1, n)
            xs = rng.integers(lo, hi - size + 1, n)
            dest += [img[y : y + size, x : x + size] for y, x in zip(ys, xs, strict=True)]
    return np.stack(train).astype(np.uint8), np.stack(test).astype(np.uint8)


def crops_source(out: Path, n_train: int, n_test: int, size: int, seed: int) -> Source:
    path = out / "data" / f"photo-crops-{size}px-{n_train}-{n_test}-seed{seed}.npz"
    if not path.exists():
        x_train, x_test = photo_crops(n_train, n_test, size, seed)
        write_npz(path, x_train=x_train, x_test=x_test)
    label = (f"scikit-image photo crops {size}x{size} colour ({', '.join(PHOTOS)}), {_count(n_train)} train / "
             f"{_count(n_test)} test crops (test from a held-out strip)")
    return Source(None, str(path), label)


def sources(args: argparse.Namespace, out: Path, groups: set[str]) -> dict[str, Source]:
    """Each group's data, prepared only for the groups that run."""
    fashion = (subset_source("fashion-mnist", out, args.train_images, args.test_images)
               if groups & {"fashion", "conv"} else Source("fashion-mnist", None, "Fashion-MNIST"))
    crops = (crops_source(out, args.crops, args.test_crops, args.crop_size, args.crop_seed)
             if "colour" in groups else Source(None, None, "photo crops"))
    cifar = (subset_source("cifar10", out, args.train_images, args.test_images)
             if "cifar" in groups else Source("cifar10", None, "CIFAR-10"))
    return {"fashion": fashion, "colour": crops, "cifar": cifar}


def available(name: str) -> bool:
    try:
        load_splits(name, download=False, progress=False)
    except DataError:
        return False
    return True


# ------------------------------------------------------------------------------------------ rows


def protocol_text(cfg: TrainConfig) -> str:
    data = {"none": "grey levels", "dynamic": "dynamically binarized", "static": "statically binarized"}[cfg.binarize]
    if cfg.likelihood == "discretized-logistic":
        data = "8-bit pixels"
    obj = f"IWAE k={cfg.k}" if cfg.objective == "iwae" else ("ELBO" if cfg.k == 1 else f"ELBO k={cfg.k}")
    return f"{data}, {cfg.likelihood}, {obj}"


def command(cfg: TrainConfig, out: Path, samples: int, device: str) -> str:
    data = ["--data", cfg.data] if cfg.data else ["--dataset", cfg.dataset]
    args = ["vaekit", "train", *data, "--model", cfg.model, "--epochs", str(cfg.epochs)]
    defaults = TrainConfig()
    for name, flag in [("zdim", "--zdim"), ("batch_size", "--batch-size"), ("lr", "--lr"),
                       ("likelihood", "--likelihood"), ("objective", "--objective"), ("k", "--k"),
                       ("binarize", "--binarize")]:
        if getattr(cfg, name) != getattr(defaults, name):
            args += [flag, str(getattr(cfg, name))]
    if device != "auto":
        args += ["--device", device]
    args += ["--out", str(out)]
    return shlex.join(args) + " && " + shlex.join(["vaekit", "evaluate", str(out), "--nll", "--samples", str(samples),
                                                   "--device", device if device != "auto" else "cpu", "--json"])


# Settings that must match for a finished run folder to be reused instead of retrained.
SAME_RUN = ("dataset", "data", "epochs", "model", "zdim", "lr", "batch_size", "likelihood", "objective", "k",
            "binarize", "seed")


def reusable(run_dir: Path, cfg: TrainConfig) -> bool:
    """A finished run of exactly these settings is already in ``run_dir``."""
    try:
        stored = json.loads((run_dir / "config.json").read_text())["train"]
        done = (run_dir / "summary.json").exists()
    except (OSError, ValueError, KeyError, TypeError):
        return False
    want = dataclasses.asdict(cfg)
    return done and all(stored.get(k) == want[k] for k in SAME_RUN)


def fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


HEADER = [
    "| model | data | protocol | epochs | test -ELBO (nats) | test NLL (nats, K) | bits/dim | active units "
    "| published (reference) | run time |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def skipped_line(row: Row, cfg: TrainConfig, data_label: str) -> str:
    reason = NEEDS[row.needs][0]
    return (f"| {row.label} | {data_label} | {protocol_text(cfg)} | - | not run | not run | - | - "
            f"| {row.published or '-'} | {reason} |")


def result_line(row: Row, cfg: TrainConfig, data_label: str, result: dict[str, Any], run_time: str,
                samples: int) -> str:
    nll = f"{fmt(result['nll'])} ± {fmt(result['nll_stderr'], 3)} (K={samples}; test-set s.e. " \
          f"{fmt(result.get('nll_test_set_stderr'), 1)})"
    if not result["nll_protocol"]["density"]:
        nll += " (cross-entropy of grey levels, not a likelihood)"
    # bits/dim only where it is the 8-bit scale papers report; elsewhere it is the NLL in other units
    bpd = fmt(result["bits_per_dim"], 3) if cfg.likelihood == "discretized-logistic" else "-"
    units = f"{result['active_units']} / {len(result['kl_per_dim'])}"
    return (f"| {row.label} | {data_label} | {protocol_text(cfg)} | {cfg.epochs} | {fmt(result['nll_neg_elbo'])} "
            f"| {nll} | {bpd} | {units} | {row.published or '-'} | {run_time} |")


def run_row(row: Row, cfg: TrainConfig, run_dir: Path, args: argparse.Namespace, eval_device: str,
            data_label: str) -> tuple[str, dict[str, Any]]:
    """Train (unless a finished run of the same settings is there) and evaluate one row."""
    print(f"row: {row.label} on {data_label} ({protocol_text(cfg)}), {cfg.epochs} epochs", file=sys.stderr)
    t0 = time.perf_counter()
    reused = not args.force and reusable(run_dir, cfg)
    if not reused:
        vaekit.train(cfg, run_dir, force=True)
    result = vaekit.evaluate_run(run_dir, device=eval_device, nll=True, samples=args.samples, progress=True)
    seconds = time.perf_counter() - t0
    if reused:  # the run time says so: evaluation now, training then
        trained = json.loads((run_dir / "summary.json").read_text()).get("train_seconds")
        print(f"  reused the finished run in {run_dir} (trained {fmt(trained, 0)} s)", file=sys.stderr)
    print(f"  nll {result['nll']:.2f} ± {fmt(result['nll_stderr'], 3)}, -elbo {result['nll_neg_elbo']:.2f}, "
          f"bits/dim {result['bits_per_dim']:.3f}, active units {result['active_units']}, {seconds:.0f} s",
          file=sys.stderr)
    keep = ("nll", "nll_stderr", "nll_test_set_stderr", "nll_neg_elbo", "bits_per_dim", "test_loss", "active_units",
            "nll_samples", "nll_protocol", "n_test", "n_params")
    record = {"row": row.label, "group": row.group, "data": data_label, "epochs": cfg.epochs, "seconds": seconds,
              **{k: result[k] for k in keep}}
    run_time = f"{seconds:.0f} s"
    if reused:
        run_time += f" (evaluation only; the run's epochs took {fmt(trained, 0)} s when it was trained)"
        record["train_seconds_reused"] = trained
    return result_line(row, cfg, data_label, result, run_time, args.samples), record


# ------------------------------------------------------------------------------------------ main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2, help="training epochs of every row (published: 3280)")
    p.add_argument("--samples", type=int, default=5000, help="importance samples K per test image (papers: 5000)")
    p.add_argument("--out", default="runs/paper-table", help="folder for the run folders, data and the table")
    p.add_argument("--device", default="auto", help="training and evaluation device (auto, cpu, cuda)")
    p.add_argument("--only", default=",".join(GROUPS), help=f"row groups to run: {', '.join(GROUPS)}")
    p.add_argument("--table", help="Markdown file to write (default OUT/table.md)")
    p.add_argument("--force", action="store_true", help="retrain rows whose finished run folder exists")
    p.add_argument("--train-images", type=int, default=0,
                   help="Fashion-MNIST and CIFAR-10 rows: the first N training images (0: all)")
    p.add_argument("--test-images", type=int, default=0,
                   help="Fashion-MNIST and CIFAR-10 rows: the first M test images (0: all)")
    p.add_argument("--crops", type=int, default=5000, help="colour rows: training crops")
    p.add_argument("--test-crops", type=int, default=500, help="colour rows: test crops")
    p.add_argument("--crop-size", type=int, default=32, help="colour rows: crop side in pixels")
    p.add_argument("--crop-seed", type=int, default=0, help="colour rows: seed of the crop positions")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's, one per core); 1 resists busy neighbours")
    args = p.parse_args(argv)
    unknown = set(args.only.split(",")) - set(GROUPS)
    if unknown:
        p.error(f"unknown --only group(s) {', '.join(sorted(unknown))}; choose from {', '.join(GROUPS)}")
    return args


def footer(device: torch.device, args: argparse.Namespace) -> str:
    return (f"\nMeasured with vaekit {vaekit.__version__}, torch {torch.__version__}, device {device}, "
            f"{torch.get_num_threads()} CPU threads, {time.strftime('%Y-%m-%d')}, {args.epochs} epochs per row, "
            f"K = {args.samples}. Test -ELBO is minus the mean log importance weight over the same K draws; ± is "
            "the Monte Carlo standard error of the mean NLL (delta method); the test-set s.e. is the spread of the "
            "per-image NLL over the test images over the root of their count (the error of a finite test set). "
            "bits/dim is shown only for the "
            "discretized logistic, where it is the 8-bit scale of published colour-image numbers.\n")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("VAEKIT_OFFLINE", "1")  # detect data on this machine; never wait on a download
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    groups = set(args.only.split(","))
    post_data = "mnist" if "post" in groups and available("mnist") else "mnist-embedded"
    device = resolve_device(args.device)
    eval_device = "cuda" if device.type == "cuda" else "cpu"
    lines, commands, results = list(HEADER), [], []
    selected = [r for r in rows(post_data, sources(args, out, groups)) if r.group in groups]
    for i, row in enumerate(selected):
        cfg = TrainConfig(dataset=row.dataset, epochs=args.epochs, device=args.device, progress=False, **row.train)
        run_dir = out / f"{i + 1:02d}-{row.group}-{cfg.model}-{cfg.objective}{cfg.k}-{cfg.binarize}-{cfg.likelihood}"
        cmd = command(cfg, run_dir, args.samples, args.device)
        data_label = row.data_label or DATA_LABELS[row.dataset]
        if row.needs and not available(row.needs):
            lines.append(skipped_line(row, cfg, data_label))
            commands.append((row.label, data_label, f"{cmd}   # {NEEDS[row.needs][1]}"))
            print(f"skip: {row.label} on {data_label}: {NEEDS[row.needs][0]}", file=sys.stderr)
            continue
        line, record = run_row(row, cfg, run_dir, args, eval_device, data_label)
        lines.append(line)
        commands.append((row.label, data_label, cmd))
        results.append({**record, "command": cmd})

    text = "\n".join(lines) + "\n\nCommands, one per row:\n\n```bash\n"
    text += "\n".join(f"# {label}, {data}\n{cmd}" for label, data, cmd in commands) + "\n```\n"
    text += footer(device, args)
    table = Path(args.table) if args.table else out / "table.md"
    table.write_text(text)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
