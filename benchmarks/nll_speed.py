"""Speed of the importance-sampled log-likelihood: vaekit's batched estimator against a per-image loop.

All estimate log p(x) with K draws per image on the same model and images, in the same process:

* batched: :func:`vaekit.eval.likelihood.model_log_px` with ``compile=True``, as ``vaekit evaluate --nll`` runs
  on a CPU when the estimate decodes 2^22 rows or more (K = 5000 on 839+ test images; smaller estimates run
  eagerly): each image encoded once, its K draws decoded in chunks of at most ``--rows`` images-times-draws,
  each chunk's decoder, likelihood and weights compiled by ``torch.compile`` (the first call, which
  compiles, is timed apart and printed, not counted: it is paid once per process);
* eager: the same estimator without ``torch.compile``;
* per-image loop: one image at a time, repeated K times and run through the whole model (encoder and
  decoder), then a log-sum-exp, which is how many VAE code bases write the IWAE evaluation.

It prints images/s of each, the ratio batched / loop, and how close the batched estimator comes to the
machine's floor: the FLOPs the estimate cannot avoid, images x (encoder + K x decoder) multiply-adds x 2
(the encoder once per image, the decoder once per draw; element-wise work such as the likelihood's
log-sigmoid is not counted), divided by a matrix-product rate measured right before and after the timing
(the higher of the two), so a machine whose speed drifts moves both sides together. Two rates are
measured: a large square product (the machine's peak) and a product of the decoder's widest shape
(rows x hidden @ hidden x 784), which is what the estimate is made of. ``ceiling`` is the ratio an
estimator running exactly at the floor would reach against this loop: no estimator can exceed it.

    python benchmarks/nll_speed.py [--model seed] [--samples 5000,100,10] [--images 200] [--loop-images 20]
                                   [--device cpu] [--threads N] [--rounds 3] [--json OUT]

The estimators draw their noise differently, so their estimates agree within their standard errors, not
bit for bit; the script prints the means as a check.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch
from torch import nn

from vaekit.eval.likelihood import ROWS, ROWS_ACCELERATOR, model_log_px
from vaekit.model import VAE, model_config
from vaekit.objectives import bernoulli_log_likelihood, diagonal_normal_log_prob, standard_normal_log_prob


def linear_macs(module: nn.Module) -> int:
    """Multiply-adds of one row through every Linear layer of ``module``."""
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def matmul_rate(m: int, k: int, n: int, device: torch.device, seconds: float = 1.0) -> float:
    """FLOP/s of float32 (m x k) @ (k x n) products, best of repeated timings over ~``seconds``."""
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device)
    out = torch.empty(m, n, device=device)
    torch.mm(a, b, out=out)
    best = math.inf
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(5):
            torch.mm(a, b, out=out)
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / 5)
    return 2 * m * k * n / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def per_image_loop(model: VAE, images: torch.Tensor, samples: int, seed: int = 0) -> torch.Tensor:
    """log p(x) one image at a time: the image repeated K times through encoder and decoder."""
    gen = torch.Generator(device=images.device).manual_seed(seed)
    out = torch.empty(len(images), dtype=torch.float64)
    for i, x in enumerate(images):
        xs = x.unsqueeze(0).repeat(samples, 1)
        mu, logvar = model.encode(xs)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen, device=mu.device)
        log_w = (bernoulli_log_likelihood(xs, model.decode(z)) + standard_normal_log_prob(z)
                 - diagonal_normal_log_prob(z, mu, logvar))
        out[i] = (torch.logsumexp(log_w, 0) - math.log(samples)).item()
    return out


def timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls (the least disturbed by other work on the machine) and a result."""
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        result = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="seed", help="model preset (seed, burda, pytorch-example, mlp)")
    p.add_argument("--zdim", type=int, default=None, help="latent size (default: the preset's)")
    p.add_argument("--samples", default="5000,100,10", help="comma-separated K values")
    p.add_argument("--images", type=int, default=200, help="images for the batched estimator")
    p.add_argument("--loop-images", type=int, default=20, help="images for the per-image loop (it is slower)")
    p.add_argument("--rows", type=int, default=None,
                   help=f"decoder rows per chunk of the batched estimator (default {ROWS} on the CPU, "
                        f"{ROWS_ACCELERATOR} on an accelerator)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=3, help="timings per measurement; the best is kept")
    p.add_argument("--rounds", type=int, default=3,
                   help="measure every K this many times and report the median of each figure")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.rows = args.rows or (ROWS if device.type == "cpu" else ROWS_ACCELERATOR)
    torch.manual_seed(0)
    model = VAE(model_config(args.model, args.zdim)).to(device).eval()
    g = torch.Generator().manual_seed(1)
    n = max(args.images, args.loop_images)
    images = (torch.rand(n, model.config.input_dim, generator=g) < 0.3).float().to(device)  # binary pixels

    enc, dec = linear_macs(model.encoder), linear_macs(model.decoder)
    widest = max(model.config.decoder_hidden)
    shape = (args.rows, widest, model.config.input_dim)
    print(f"device {device} ({torch.get_num_threads()} threads), model {args.model} (zdim {model.zdim}): "
          f"{2 * enc / 1e6:.2f} MFLOP encoder, {2 * dec / 1e6:.2f} MFLOP decoder per row")
    # Each round measures the matmul rates right before and right after the batched timing and again after the
    # loop's; the batched estimator's floor uses the higher of the two around it, the loop's ceiling the higher
    # of the two around the loop, so a machine whose speed drifts moves both sides of each comparison together.
    measured = []
    batched_images = images[: args.images]
    loop_images = images[: args.loop_images]

    def rates() -> tuple[float, float]:
        return matmul_rate(2048, 2048, 2048, device, 0.5), matmul_rate(*shape, device, 0.5)

    for k in [int(s) for s in args.samples.split(",")]:
        t0 = time.perf_counter()
        model_log_px(model, batched_images, k, rows=args.rows, compile=True)  # compiles every chunk shape
        first_s = time.perf_counter() - t0
        model_log_px(model, batched_images[:1], k, rows=args.rows, compile=False)
        rounds = []
        for _ in range(args.rounds):
            r0 = rates()
            tb, est = timed(lambda k=k: model_log_px(model, batched_images, k, rows=args.rows, compile=True),
                            device, args.repeats)
            r1 = rates()
            te, eager = timed(lambda k=k: model_log_px(model, batched_images, k, rows=args.rows, compile=False),
                              device, args.repeats)
            tl, loop = timed(lambda k=k: per_image_loop(model, loop_images, k), device, args.repeats)
            r2 = rates()
            rounds.append({"batched": len(batched_images) / tb, "eager": len(batched_images) / te,
                           "loop": len(loop_images) / tl, "peak_batched": max(r0[0], r1[0]),
                           "shaped_batched": max(r0[1], r1[1]), "peak_loop": max(r1[0], r2[0]),
                           "peak_samples": [r0[0], r1[0], r2[0]]})
        print(f"K={k}: measured ({args.rounds} rounds; first compiled call {first_s:.1f} s)", file=sys.stderr,
              flush=True)
        measured.append((k, rounds, first_s, est, eager, loop))

    peaks = [x for _, rounds, *_ in measured for r in rounds for x in r["peak_samples"]]
    print(f"2048^3 matmul rate over the run: median {statistics.median(peaks) / 1e9:.1f} GFLOP/s, range "
          f"{min(peaks) / 1e9:.0f}-{max(peaks) / 1e9:.0f}")
    print(f"medians of {args.rounds} round(s). ratio = batched / loop. floor = the FLOPs over the matmul rate "
          f"measured around the timing (2048^3 product: peak; {shape[0]}x{shape[1]} @ {shape[1]}x{shape[2]}: shaped); "
          f"'of floor' and 'ceiling' (floor / loop: the ratio of an estimator at the floor) are medians of each "
          f"round's own quotient, so they need not equal quotients of the printed medians.")
    print()
    print(f"{'K':>6} {'batched img/s':>14} {'eager img/s':>12} {'loop img/s':>11} {'ratio':>7} {'ceiling':>8} "
          f"{'floor img/s':>12} {'of floor (peak)':>16} {'of floor (shaped)':>18} {'batched nll':>12} "
          f"{'loop nll':>10}")
    rows = []
    for k, rounds, first_s, est, eager, loop in measured:
        batched_ips, eager_ips, loop_ips = (statistics.median(r[key] for r in rounds)
                                            for key in ("batched", "eager", "loop"))
        flops = 2 * (enc + k * dec)  # per image
        row = {
            "K": k, "batched_images_per_s": batched_ips, "eager_images_per_s": eager_ips,
            "loop_images_per_s": loop_ips, "per_round": rounds, "first_compiled_call_s": first_s,
            "floor_images_per_s_peak": statistics.median(r["peak_batched"] / flops for r in rounds),
            "batched_nll": -est.log_px[: len(loop_images)].mean().item(),
            "eager_nll": -eager.log_px[: len(loop_images)].mean().item(), "loop_nll": -loop.mean().item(),
        }
        row["ratio"] = batched_ips / loop_ips
        row["ceiling"] = statistics.median(r["peak_loop"] / flops / r["loop"] for r in rounds)
        row["fraction_of_floor_peak"] = statistics.median(r["batched"] * flops / r["peak_batched"] for r in rounds)
        row["fraction_of_floor_shaped"] = statistics.median(r["batched"] * flops / r["shaped_batched"]
                                                            for r in rounds)
        rows.append(row)
        print(f"{k:>6} {batched_ips:>14.1f} {eager_ips:>12.1f} {loop_ips:>11.1f} {row['ratio']:>7.1f} "
              f"{row['ceiling']:>8.1f} {row['floor_images_per_s_peak']:>12.1f} {row['fraction_of_floor_peak']:>16.2f} "
              f"{row['fraction_of_floor_shaped']:>18.2f} {row['batched_nll']:>12.2f} {row['loop_nll']:>10.2f}")
    if args.json:
        meta = {"device": str(device), "threads": torch.get_num_threads(), "model": args.model, "zdim": model.zdim,
                "repeats": args.repeats, "rounds": args.rounds, "images": args.images,
                "loop_images": args.loop_images, "rows": args.rows, "torch": torch.__version__}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
