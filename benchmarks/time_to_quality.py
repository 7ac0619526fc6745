"""Time to quality: how soon ``--recipe fast`` reaches the test loss of the post's 50-epoch recipe.

One run trains, on the same data and machine, (1) the post's recipe (batch 128, Adam lr 3e-4 constant,
50 epochs, fp32) with vaekit's loop, and (2) ``--recipe fast``; it prints the post recipe's final test loss,
the time the fast recipe needed to first reach it (its epochs' training seconds up to that epoch, and the
whole run's wall time), and the ratios. Since the post's own pipeline runs the same recipe more slowly, it
also times a few epochs of that pipeline (benchmarks/throughput.py's faithful re-creation) and prints its
50-epoch time, extrapolated from the measured rate.

Both vaekit runs evaluate the test set after every epoch; training seconds exclude that evaluation (and
the figures), wall seconds include everything from the call to the finished run folder.

    python benchmarks/time_to_quality.py [--dataset fashion-mnist] [--data-dir DIR] [--post-epochs 2] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import vaekit
from vaekit.data import load_splits
from vaekit.recipes import RECIPES, recipe_config

try:
    from throughput import post_epoch
except ImportError:  # run from elsewhere than benchmarks/
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from throughput import post_epoch


def _train(config: vaekit.TrainConfig, tmp: str, name: str) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    run = vaekit.train(config, Path(tmp) / name)
    return run.metrics, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--post-epochs", type=int, default=2, help="epochs of the post's pipeline to time (0: skip)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's, one per core); 1 resists noisy neighbours")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    common = dict(dataset=args.dataset, data_dir=args.data_dir, device=args.device, progress=False)
    n = len(load_splits(args.dataset, args.data_dir, progress=False).train_images)
    print(f"data: {args.dataset} ({n} training images); torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, device {args.device}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        fast_cfg = recipe_config("fast", common)
        fast, fast_wall = _train(fast_cfg, tmp, "fast")
        print(f"fast recipe {RECIPES['fast']}: final test loss {fast[-1]['test_loss']:.3f} after "
              f"{len(fast)} epochs, {sum(r['seconds'] for r in fast):.1f} s training, {fast_wall:.1f} s wall",
              flush=True)
        post, post_wall = _train(vaekit.TrainConfig(**common), tmp, "post")
    target = post[-1]["test_loss"]
    post_train = sum(r["seconds"] for r in post)
    print(f"post recipe (batch 128, lr 3e-4 constant, 50 epochs, fp32) in vaekit's loop: test loss "
          f"{target:.3f}, {post_train:.1f} s training, {post_wall:.1f} s wall", flush=True)
    reached = next((i for i, r in enumerate(fast) if r["test_loss"] <= target), None)
    if reached is None:
        print(f"fast recipe did NOT reach {target:.3f} (best {min(r['test_loss'] for r in fast):.3f})")
        return
    fast_train = sum(r["seconds"] for r in fast[: reached + 1])
    print(f"fast recipe reaches {fast[reached]['test_loss']:.3f} <= {target:.3f} at epoch {reached + 1}: "
          f"{fast_train:.1f} s training, {post_train / fast_train:.1f}x sooner than the post recipe in vaekit's "
          f"loop; whole runs (all {len(fast)} epochs, evaluations, figures): {fast_wall:.1f} s against "
          f"{post_wall:.1f} s, {post_wall / fast_wall:.1f}x")
    if args.post_epochs > 0:
        splits = load_splits(args.dataset, args.data_dir, progress=False)
        device = torch.device(args.device)
        rates = [post_epoch(splits.train_images, device) for _ in range(args.post_epochs)]
        post_pipeline = 50 * n / statistics.median(rates)
        print(f"the post's own pipeline (DataLoader + ToTensor) runs the post recipe at "
              f"{statistics.median(rates):,.0f} images/s (median of {len(rates)} epochs): 50 epochs take about "
              f"{post_pipeline:.0f} s of training, {post_pipeline / fast_train:.1f}x the fast recipe's "
              f"time to the same loss")


if __name__ == "__main__":
    main()
