"""Anomaly detection by likelihood on Fashion-MNIST: a VAE trained on nine classes scores the whole test set.

Writes two array files into OUT: ``normal.npz`` (the training and test images of the normal classes, what the
run trains on) and ``test_all.npz`` (all 10,000 test images with their labels, what is scored). Then::

    vaekit train --data OUT/normal.npz --out OUT/run --model pytorch-example --epochs 10
    vaekit score OUT/run OUT/test_all.npz --out OUT/scores.csv --normal 0,1,2,3,4,5,6,7,8

Usage: python benchmarks/fashion_anomaly.py OUT [--held-out 9] [--data /usr/share/datasets/fashion-mnist]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vaekit.data.idx import read_idx


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--held-out", type=int, default=9, help="the class left out of training (default 9, ankle boot)")
    p.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    a = p.parse_args()
    x_tr, y_tr = read_idx(a.data / "train-images-idx3-ubyte.gz"), read_idx(a.data / "train-labels-idx1-ubyte.gz")
    x_te, y_te = read_idx(a.data / "t10k-images-idx3-ubyte.gz"), read_idx(a.data / "t10k-labels-idx1-ubyte.gz")
    a.out.mkdir(parents=True, exist_ok=True)
    keep_tr, keep_te = y_tr != a.held_out, y_te != a.held_out
    np.savez(a.out / "normal.npz", x_train=x_tr[keep_tr], y_train=y_tr[keep_tr], x_test=x_te[keep_te],
             y_test=y_te[keep_te])
    np.savez(a.out / "test_all.npz", images=x_te, labels=y_te.astype(np.int64))
    print(f"{keep_tr.sum()} training images of the normal classes; {len(x_te)} test images to score")


if __name__ == "__main__":
    main()
