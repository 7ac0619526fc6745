"""Test bits/dim of the 8-bit likelihood heads after the same training steps, on a Fashion-MNIST subset.

Compares the discretized logistic whose scale is one learned number per pixel for every image (the
``logits`` head of older runs) with the z-conditioned discretized logistic and the logistic mixture: the
same MLP (512-256, zdim 16), data, batches, noise and steps for each. The number is the test negative ELBO
(one draw per image, a fixed seed) in bits per dimension, an upper bound on the 8-bit code length.

    python benchmarks/likelihood_heads.py --steps 1500 --train 10000 --test 2000
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from vaekit.config import DISCRETIZED_LOGISTIC_SCALE
from vaekit.data import load_splits
from vaekit.data.tensors import to_unit
from vaekit.eval.elbo import evaluate_elbo
from vaekit.model import VAE, model_config
from vaekit.objectives import elbo_terms

VARIANTS = {
    "global scale (old)": dict(head="logits", learn_sigma=True, sigma_init=DISCRETIZED_LOGISTIC_SCALE),
    "discretized-logistic": dict(head="discretized-logistic"),
    "logistic-mixture (K 10)": dict(head="logistic-mixture", mixtures=10),
}


def train_variant(spec: dict, train: torch.Tensor, test: torch.Tensor, steps: int, batch: int, lr: float) -> dict:
    """Train one variant from seed 0 and return its test bits/dim before and after, and its wall time."""
    torch.manual_seed(0)
    model = VAE(model_config("mlp", zdim=16, hidden=[512, 256], **spec))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(1)
    d = model.config.input_dim
    likelihood = "discretized-logistic" if spec["head"] == "logits" else spec["head"]
    bpd = lambda: evaluate_elbo(model, test, likelihood)["test_loss"] / (d * math.log(2))  # noqa: E731
    start_bpd, t0 = bpd(), time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(train), (batch,), generator=gen)
        x = to_unit(train[idx])
        eps = torch.randn(batch, model.zdim, generator=gen)
        params, mu, logvar = model(x, eps)
        loss = elbo_terms(params, x, mu, logvar, likelihood, log_sigma=model.log_sigma, channels=1,
                          mixtures=model.config.mixtures).loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 500 == 0 and step < steps:
            print(f"  step {step}: test bits/dim {bpd():.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"start": start_bpd, "end": bpd(), "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--only", choices=list(VARIANTS), action="append", help="run only these variants")
    args = ap.parse_args()
    splits = load_splits("fashion-mnist", progress=False)
    train = torch.from_numpy(splits.train_images[: args.train].reshape(args.train, -1))
    test = torch.from_numpy(splits.test_images[: args.test].reshape(args.test, -1))
    for name, spec in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        r = train_variant(spec, train, test, args.steps, args.batch, args.lr)
        print(f"{name:26s} test bits/dim {r['start']:.3f} at the start, {r['end']:.3f} after {args.steps} steps "
              f"({r['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
