"""Several seeds with their steps stacked (``--seeds-together yes``) against one seed after another (``no``).

Both train the same seeds of the post's model with the same flags through ``vaekit train --seeds``, in this
process, alternating which goes first each round so that machine noise hits both alike. Each round times the
whole command (data read per seed, training, each epoch's evaluation, the weights and summaries written; no
figures), so the ratio is what a user waits, and reports images trained per second over all seeds. It also
prints what the stacked run's ``summary.json`` says of its bits: whether the stacked step reproduced each seed's
own step on this machine (``auto`` stacks only then), or by how much it differed.

    python benchmarks/seeds_together.py [--dataset fashion-mnist] [--data-dir DIR] [--seeds 0,1,2]
                                        [--epochs 2] [--rounds 3] [--batch-size 128] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vaekit.cli import main
from vaekit.run import read_summary

MODES = ("no", "yes")


def one_round(args: argparse.Namespace, mode: str, root: Path) -> tuple[float, dict]:
    """Seconds for ``vaekit train --seeds ... --seeds-together MODE``, and its summary.json."""
    out = root / f"{mode}-{time.monotonic_ns()}"
    argv = ["train", "--seeds", args.seeds, "--seeds-together", mode, "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--device", args.device, "--no-artifacts", "--quiet",
            "--out", str(out)]
    argv += ["--dataset", args.dataset] if args.dataset else []
    argv += ["--data-dir", args.data_dir] if args.data_dir else []
    start = time.perf_counter()
    if main(argv) != 0:
        raise SystemExit(f"vaekit train {' '.join(argv[1:])} failed")
    seconds = time.perf_counter() - start
    return seconds, json.loads((out / "summary.json").read_text())


def images_trained(run: Path) -> int:
    """Training images one seed saw: its training split's size times the epochs it trained."""
    return int(json.loads((run / "config.json").read_text())["data"]["n_train"]) * int(read_summary(run)["epochs"])


def main_benchmark() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=None, help="default: whatever vaekit train would use")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; seeds {args.seeds}, "
          f"{args.epochs} epochs, batch {args.batch_size}")
    times: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for r in range(args.rounds):
            for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                seconds, summary = one_round(args, mode, root)
                times[mode].append(seconds)
                print(f"round {r + 1} {mode:>3}: {seconds:6.2f} s  ({summary['order']})", flush=True)
        images = sum(images_trained(run) for run in next(root.glob("no-*")).glob("seed-*"))
    med = {m: statistics.median(v) for m, v in times.items()}
    for m in MODES:
        label = "one after another (--seeds-together no)" if m == "no" else "stacked (--seeds-together yes)"
        print(f"{label}: median {med[m]:.2f} s, {images / med[m]:,.0f} img/s over all seeds")
    print(f"stacked / one after another: {med['no'] / med['yes']:.2f}x the throughput")


if __name__ == "__main__":
    main_benchmark()
