"""Results table: train and evaluate published protocols and write a Markdown table with a command per row.

Rows:

* the IWAE paper's one-stochastic-layer models (preset ``burda``: 2x200 tanh, zdim 50) on dynamically
  binarized MNIST: VAE (k = 1, published test NLL 86.76 nats) and IWAE (k = 50, published 84.78), both with
  K = 5000 importance samples (Burda, Grosse and Salakhutdinov, 2016, table 1). They need the full MNIST
  training set; without it they are listed as not run, with the reason;
* the same two protocols on Fashion-MNIST (no published number for this model);
* the blog post's own setting (``seed`` preset, zdim 2, BCE on grey levels, Adam 3e-4, batch 128) on the data
  ``vaekit train`` uses by default (MNIST, or offline the embedded 5,000-digit subset), where the Bernoulli
  "likelihood" of grey levels is not a density, and the same model under dynamic binarization and under the
  continuous Bernoulli, which are.

The published models trained for 3,280 epochs (batch 20, an Adam schedule from lr 1e-3); ``--epochs`` sets
how long the rows here train, so numbers from short runs are far from converged and say so in the table.

    python benchmarks/paper_table.py --epochs 2 [--samples 5000] [--out runs/paper-table] [--device auto]
                                     [--only fashion,post] [--table FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import vaekit
from vaekit.config import TrainConfig
from vaekit.data import DataError, load_splits
from vaekit.devices import resolve_device


@dataclass
class Row:
    group: str  # mnist | fashion | post: what --only selects
    label: str
    dataset: str
    train: dict[str, Any]
    published: str = ""
    needs: str = ""  # a dataset that must be present, or the row is skipped
    notes: list[str] = field(default_factory=list)


def rows(post_data: str) -> list[Row]:
    burda = dict(model="burda", binarize="dynamic", lr=1e-3, batch_size=100)
    return [
        Row("mnist", "VAE (burda, k=1)", "mnist", {**burda, "objective": "elbo", "k": 1}, "86.76", "mnist"),
        Row("mnist", "IWAE (burda, k=50)", "mnist", {**burda, "objective": "iwae", "k": 50}, "84.78", "mnist"),
        Row("fashion", "VAE (burda, k=1)", "fashion-mnist", {**burda, "objective": "elbo", "k": 1}),
        Row("fashion", "IWAE (burda, k=50)", "fashion-mnist", {**burda, "objective": "iwae", "k": 50}),
        Row("post", "the post's VAE (seed, zdim 2)", post_data, {"model": "seed"}),
        Row("post", "seed, dynamic binarization", post_data, {"model": "seed", "binarize": "dynamic"}),
        Row("post", "seed, continuous Bernoulli", post_data, {"model": "seed", "likelihood": "continuous-bernoulli"}),
    ]


def protocol_text(cfg: TrainConfig) -> str:
    data = {"none": "grey levels", "dynamic": "dynamically binarized", "static": "statically binarized"}[cfg.binarize]
    obj = f"IWAE k={cfg.k}" if cfg.objective == "iwae" else ("ELBO" if cfg.k == 1 else f"ELBO k={cfg.k}")
    return f"{data}, {cfg.likelihood}, {obj}"


def command(cfg: TrainConfig, out: Path, samples: int, device: str) -> str:
    args = ["vaekit", "train", "--dataset", cfg.dataset, "--model", cfg.model, "--epochs", str(cfg.epochs)]
    defaults = TrainConfig()
    for name, flag in [("batch_size", "--batch-size"), ("lr", "--lr"), ("likelihood", "--likelihood"),
                       ("objective", "--objective"), ("k", "--k"), ("binarize", "--binarize")]:
        if getattr(cfg, name) != getattr(defaults, name):
            args += [flag, str(getattr(cfg, name))]
    if device != "auto":
        args += ["--device", device]
    args += ["--out", str(out)]
    return shlex.join(args) + " && " + shlex.join(["vaekit", "evaluate", str(out), "--nll", "--samples", str(samples),
                                                   "--device", device if device != "auto" else "cpu", "--json"])


def available(name: str) -> bool:
    try:
        load_splits(name, download=False, progress=False)
    except DataError:
        return False
    return True


def fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2, help="training epochs of every row (published: 3280)")
    p.add_argument("--samples", type=int, default=5000, help="importance samples K per test image (papers: 5000)")
    p.add_argument("--out", default="runs/paper-table", help="folder for the run folders and the table")
    p.add_argument("--device", default="auto", help="training and evaluation device (auto, cpu, cuda)")
    p.add_argument("--only", default="mnist,fashion,post", help="row groups to run: mnist, fashion, post")
    p.add_argument("--table", help="Markdown file to write (default OUT/table.md)")
    p.add_argument("--force", action="store_true", help="retrain rows whose run folder exists")
    args = p.parse_args(argv)
    os.environ.setdefault("VAEKIT_OFFLINE", "1")  # detect data on this machine; never wait on a download
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    groups = set(args.only.split(","))
    has_mnist = available("mnist")
    post_data = "mnist" if has_mnist else "mnist-embedded"
    device = resolve_device(args.device)
    eval_device = "cuda" if device.type == "cuda" else "cpu"

    lines = [
        "| model | data | protocol | epochs | test -ELBO | test NLL (K) | active units | published NLL | run time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    commands, results = [], []
    for i, row in enumerate(r for r in rows(post_data) if r.group in groups):
        cfg = TrainConfig(dataset=row.dataset, epochs=args.epochs, device=args.device, progress=False, **row.train)
        run_dir = out / f"{i + 1:02d}-{row.group}-{cfg.model}-{cfg.objective}{cfg.k}-{cfg.binarize}-{cfg.likelihood}"
        cmd = command(cfg, run_dir, args.samples, args.device)
        data_label = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST",
                      "mnist-embedded": "MNIST subset (4,000 train / 1,000 test digits)"}[row.dataset]
        if row.needs and not available(row.needs):
            lines.append(f"| {row.label} | {data_label} | {protocol_text(cfg)} | - | not run | not run | - "
                         f"| {row.published or '-'} | full {data_label} training set not found on this machine |")
            commands.append((row.label, data_label, cmd + "   # needs the full MNIST files (vaekit data fetch mnist)"))
            print(f"skip: {row.label} on {data_label}: the dataset is not on this machine", file=sys.stderr)
            continue
        print(f"row {i + 1}: {row.label} on {data_label} ({protocol_text(cfg)}), {args.epochs} epochs", file=sys.stderr)
        t0 = time.perf_counter()
        if args.force or not (run_dir / "summary.json").exists():
            vaekit.train(cfg, run_dir, force=True)
        result = vaekit.evaluate_run(run_dir, device=eval_device, nll=True, samples=args.samples, progress=True)
        seconds = time.perf_counter() - t0
        density = result["nll_protocol"]["density"]
        nll = f"{fmt(result['nll'])} ± {fmt(result['nll_stderr'], 3)} (K={args.samples})"
        if not density:
            nll += " (cross-entropy of grey levels, not a likelihood)"
        units = f"{result['active_units']} / {len(result['kl_per_dim'])}"
        lines.append(f"| {row.label} | {data_label} | {protocol_text(cfg)} | {args.epochs} "
                     f"| {fmt(result['nll_neg_elbo'])} | {nll} | {units} | {row.published or '-'} | {seconds:.0f} s |")
        commands.append((row.label, data_label, cmd))
        results.append({"row": row.label, "data": data_label, "command": cmd, "seconds": seconds,
                        **{k: result[k] for k in ("nll", "nll_stderr", "nll_neg_elbo", "test_loss", "active_units",
                                                  "nll_samples", "nll_protocol", "n_test")}})
        print(f"  nll {result['nll']:.2f} ± {fmt(result['nll_stderr'], 3)}, -elbo {result['nll_neg_elbo']:.2f}, "
              f"active units {result['active_units']}, {seconds:.0f} s", file=sys.stderr)

    text = "\n".join(lines) + "\n\nCommands, one per row:\n\n```bash\n"
    text += "\n".join(f"# {label}, {data}\n{cmd}" for label, data, cmd in commands) + "\n```\n"
    text += (f"\nMeasured with vaekit {vaekit.__version__}, torch {torch.__version__}, device {device}, "
             f"{torch.get_num_threads()} CPU threads, {time.strftime('%Y-%m-%d')}. Test -ELBO is minus the mean log "
             "importance weight over the same K draws; ± is the Monte Carlo standard error of the mean NLL "
             "(delta method).\n")
    table = Path(args.table) if args.table else out / "table.md"
    table.write_text(text)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
