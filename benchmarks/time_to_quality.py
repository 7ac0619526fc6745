"""Time to quality: how soon ``--recipe fast`` reaches the test loss of the post's 50-epoch recipe.

One run trains, on the same data and machine, (1) the post's recipe (batch 128, Adam lr 3e-4 constant,
50 epochs, fp32) with vaekit's loop, and (2) ``--recipe fast``; it prints the post recipe's final test loss,
the time the fast recipe needed to first reach it (its epochs' training seconds up to that epoch, and the
whole run's wall time), and the ratios. Since the post's own pipeline runs the same recipe more slowly, it
also trains the post's recipe in that pipeline (benchmarks/throughput.py's faithful re-creation: per-sample
ToTensor dataset, DataLoader, Sigmoid + BCE, a tqdm bar) for all 50 epochs, and evaluates the result with
vaekit's test metric (the two models have the same layers, so the weights load as they are).

Both vaekit runs evaluate the test set after every epoch; training seconds exclude that evaluation (and
the figures), wall seconds include everything from the call to the finished run folder.

    python benchmarks/time_to_quality.py [--dataset fashion-mnist] [--data-dir DIR] [--post-epochs 50] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

import vaekit
from vaekit.config import RECIPES, recipe_config
from vaekit.data import load_splits

try:
    from throughput import post_train
except ImportError:  # run from elsewhere than benchmarks/
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from throughput import post_train


def post_pipeline(splits, epochs: int, device: torch.device) -> tuple[float, float]:
    """The post's training loop for ``epochs`` epochs; returns (training seconds, vaekit test loss)."""
    from vaekit.eval.elbo import evaluate_elbo
    from vaekit.model import VAE, model_config

    torch.manual_seed(0)
    model, rates = post_train(splits.train_images, epochs, device)
    same = VAE(model_config("seed")).to(device)
    same.load_state_dict(model.state_dict())
    x_test = torch.from_numpy(splits.test_images.reshape(len(splits.test_images), -1))
    return sum(len(splits.train_images) / r for r in rates), evaluate_elbo(same, x_test)["test_loss"]


def _train(config: vaekit.TrainConfig, tmp: str, name: str) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    run = vaekit.train(dataclasses.replace(config, artifacts=False), Path(tmp) / name)  # time the training only
    return run.metrics, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--post-epochs", type=int, default=50,
                    help="epochs of the post's own pipeline to train (50: its whole recipe; 0: skip)")
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
        seconds, loss = post_pipeline(splits, args.post_epochs, torch.device(args.device))
        print(f"the post's own pipeline (DataLoader + ToTensor), {args.post_epochs} epochs: test loss {loss:.3f}, "
              f"{seconds:.1f} s training ({args.post_epochs * n / seconds:,.0f} images/s)")
        hit = next((i for i, r in enumerate(fast) if r["test_loss"] <= loss), None)
        if hit is None:
            print(f"fast recipe did NOT reach the post pipeline's {loss:.3f}")
        else:
            t = sum(r["seconds"] for r in fast[: hit + 1])
            print(f"fast recipe reaches {fast[hit]['test_loss']:.3f} <= {loss:.3f} at epoch {hit + 1}: {t:.1f} s "
                  f"training, {seconds / t:.1f}x sooner than the post's recipe in the post's pipeline")


if __name__ == "__main__":
    main()
