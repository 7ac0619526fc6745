"""Prior samples beside two-stage mixture samples of one run, the same seed: the figure of docs/use.md.

Usage: python benchmarks/samplers_figure.py RUN OUT.png [--n 64] [--seed 0] [--temperature 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vaekit.artifacts.figures import new_figure, save_figure, tile_images
from vaekit.run import load_run


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("out", type=Path)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    a = p.parse_args()
    run = load_run(a.run)
    fig = new_figure(8, 4.4)
    for i, sampler in enumerate(("prior", "gmm")):
        pixels = run.sample(a.n, sampler=sampler, seed=a.seed, temperature=a.temperature)
        ax = fig.add_subplot(1, 2, i + 1)
        ax.imshow(tile_images(pixels / 255, 8), cmap="gray" if pixels.ndim == 3 else None, vmin=0, vmax=1)
        ax.set_axis_off()
        ax.set_title("prior N(0, I)" if sampler == "prior" else "two-stage: Gaussian mixture of the training codes")
    fig.suptitle(f"{run.model_config.preset}, zdim {run.model.zdim}: {a.n} samples each, seed {a.seed}")
    print(save_figure(fig, a.out))


if __name__ == "__main__":
    main()
