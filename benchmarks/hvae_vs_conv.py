"""The hierarchical preset against conv for the same training time, on a Fashion-MNIST subset.

Trains ``conv`` for ``--conv-epochs`` epochs, then ``hvae`` (with the stabilisers) until its summed per-epoch
training seconds reach conv's (checked at epoch ends), both on the first ``--train`` training and ``--test`` test
images, dynamically binarized; then evaluates each with the importance-sampled NLL (K = ``--samples``) and prints
one JSON line per model. Usage:

    python benchmarks/hvae_vs_conv.py --data-dir /usr/share/datasets/fashion-mnist --out runs/hvae-vs-conv
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np

import vaekit
from vaekit.config import TrainConfig


def idx(path: Path, offset: int) -> np.ndarray:
    return np.frombuffer(gzip.open(path).read(), np.uint8, offset=offset)


def subset(data_dir: Path, n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    """The first images of each split, test last (a test fraction of n_test / total takes them)."""
    x = np.concatenate([idx(data_dir / "train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)[:n_train],
                        idx(data_dir / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)[:n_test]])
    y = np.concatenate([idx(data_dir / "train-labels-idx1-ubyte.gz", 8)[:n_train],
                        idx(data_dir / "t10k-labels-idx1-ubyte.gz", 8)[:n_test]])
    return x, y


class Stop(Exception):
    """Raised at the epoch end where the time budget is spent."""


class Budget(vaekit.Callback):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_epoch_end(self, trainer, row) -> None:
        if sum(r["seconds"] for r in trainer.state.history) >= self.seconds:
            raise Stop


def measure(name: str, cfg: TrainConfig, out: Path, data: tuple, samples: int, budget: float | None) -> dict:
    try:
        vaekit.train(cfg, out, data=data, force=True, callbacks=[Budget(budget)] if budget else [])
    except Stop:  # the checkpoint of the epoch end is written: finish the run there
        epochs = len(vaekit.load_run(out).metrics) if (out / "metrics.csv").exists() else 0
        vaekit.train(TrainConfig(**{**cfg.__dict__, "epochs": epochs}), out, data=data, resume=True)
    run = vaekit.load_run(out)
    ev = vaekit.evaluate_run(out, nll=True, samples=samples, data=data, device="cpu")
    return dict(model=name, epochs=run.summary["epochs"], train_seconds=run.summary["train_seconds"],
                params=run.summary["n_params"], test_loss=run.summary["test_loss"], nll=ev["nll"],
                nll_stderr=ev["nll_stderr"], bits_per_dim=ev["bits_per_dim"],
                skipped_updates=run.summary.get("skipped_updates"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--out", type=Path, default=Path("runs/hvae-vs-conv"))
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--conv-epochs", type=int, default=5)
    p.add_argument("--samples", type=int, default=50)
    a = p.parse_args()
    data = subset(a.data_dir, a.train, a.test)
    base = dict(lr=1e-3, binarize="dynamic", test_fraction=a.test / (a.train + a.test), val_fraction=0.0,
                device="cpu", progress=False, artifacts=False, seed=0)
    t0 = time.perf_counter()
    conv = measure("conv", TrainConfig(epochs=a.conv_epochs, model="conv", batch_size=128, **base), a.out / "conv",
                   data, a.samples, None)
    print(json.dumps(conv), flush=True)
    hv = TrainConfig(epochs=10_000, model="hvae", hidden=[16, 32, 32, 32], batch_size=64, grad_clip=50_000.0,
                     skip_threshold=500_000.0, ema=0.95, **base)
    print(json.dumps(measure("hvae", hv, a.out / "hvae", data, a.samples, conv["train_seconds"])), flush=True)
    print(f"wall {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
