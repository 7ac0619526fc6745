"""Training throughput and memory: vaekit's loop against a faithful re-creation of the blog post's pipeline.

Both train the post's model (seed preset, zdim 2) with Adam lr 3e-4 and batch 128 on the same images, in
the same process, alternating rounds so machine noise hits both alike. The post's pipeline is a per-sample
dataset that turns each uint8 image into a PIL image and then a float tensor (what
``transforms.ToTensor`` does), a ``DataLoader(batch_size=128, shuffle=True)``, a model ending in
``Sigmoid`` with ``F.binary_cross_entropy(reduction='sum')``, and a tqdm bar updated every step.

It also prints how close vaekit gets to the arithmetic floor: the model's FLOPs per image (forward and
backward matrix products) times vaekit's images/s, over the rate at which this machine multiplies
matrices, measured here both for one large product and for the model's own products at the batch size.
With ``--memory`` it measures the peak resident memory (VmHWM) of a whole one-epoch training process of
each kind, each in a fresh subprocess on the full training set.

With ``--model conv`` both sides train vaekit's ``conv`` preset (zdim 32) for the data's image size instead:
vaekit's loop against a plain PyTorch loop of the same model, a per-sample dataset that turns each uint8 image
into a float tensor in [0, 1], a ``DataLoader(batch_size=128, shuffle=True)``, the same ``vaekit.VAE`` module,
``F.binary_cross_entropy_with_logits(reduction='sum')`` plus the KL, and Adam lr 3e-4 (no progress bar). The
floor then counts the convolutions' products too and is compared with the large-product rate only.

``--images N`` trains both on the first N training images (vaekit tests each epoch, untimed, on the first
max(100, N // 10) test images); ``--crops N`` trains both on N colour 32x32 crops of scikit-image's photos, cut
as ``benchmarks/paper_table.py`` cuts them (seed 0). Both are written to a temporary ``.npz`` for vaekit.

    python benchmarks/throughput.py [--dataset fashion-mnist] [--data-dir DIR] [--rounds 5] [--memory]
                                    [--device cpu|cuda] [--batch-size 128] [--precision fp32] [--compile]
                                    [--threads N] [--model seed|conv] [--images N] [--crops N] [--profile]

``--profile`` prints, instead of the rounds, where one training step's time goes (matrix products, element-wise
kernels, the optimizer, dispatch) and its fraction of the floor, for the autograd step and vaekit's default step
(see ``benchmarks/step_profile.py``).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from step_profile import sync as _sync
from torch import nn
from tqdm import tqdm

import vaekit
from vaekit.data import load_splits
from vaekit.run import read_metrics
from vaekit.training.precision import cpu_has_native_bf16


class PostDataset(torch.utils.data.Dataset):
    """MNIST as torchvision serves it: PIL image per item, then ToTensor and flatten."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        pic = Image.fromarray(self.images[i], mode="L")
        x = torch.from_numpy(np.array(pic, copy=True)).view(28, 28, 1).permute(2, 0, 1).float().div(255)
        return torch.flatten(x), 0


class PostVAE(nn.Module):
    def __init__(self, zdim: int = 2) -> None:
        super().__init__()
        self.zdim = zdim
        self.encoder = nn.Sequential(nn.Linear(784, 256), nn.ELU(), nn.Linear(256, 64), nn.ELU(),
                                     nn.Linear(64, 32), nn.ELU(), nn.Linear(32, 2 * zdim))
        self.decoder = nn.Sequential(nn.Linear(zdim, 32), nn.Linear(32, 64), nn.ELU(), nn.Linear(64, 256),
                                     nn.ELU(), nn.Linear(256, 784), nn.Sigmoid())

    def forward(self, x: torch.Tensor):
        mu, logvar = torch.split(self.encoder(x), self.zdim, dim=1)
        std = (logvar * 0.5).exp()
        z = std * torch.randn(mu.shape).to(mu.device) + mu
        return self.decoder(z), mu, std, logvar

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        rx, mu, std, logvar = self(x)
        return F.binary_cross_entropy(rx, x, reduction="sum") - 0.5 * (1 + logvar - mu * mu - std * std).sum()


CPU = torch.device("cpu")


def post_train(images: np.ndarray, epochs: int = 1, device: torch.device = CPU,
               model: PostVAE | None = None) -> tuple[PostVAE, list[float]]:
    """The post's loop for ``epochs`` epochs with one model and one Adam (batches moved to ``device`` as the
    post does); returns the model and each epoch's images per second."""
    model = model or PostVAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    loader = torch.utils.data.DataLoader(PostDataset(images), batch_size=128, shuffle=True)
    rates = []
    for _ in range(epochs):
        _sync(device)
        t0 = time.perf_counter()
        bar = tqdm(loader, ascii=" >=", leave=False, file=sys.stderr)
        for x, _ in bar:
            x = x.to(device)
            opt.zero_grad()
            loss = model.loss(x)
            loss.backward()
            opt.step()
            bar.set_postfix({"loss": f"{loss.item():.6f}"})
        _sync(device)
        rates.append(len(images) / (time.perf_counter() - t0))
    return model, rates


def post_epoch(images: np.ndarray, device: torch.device = CPU, model: PostVAE | None = None) -> float:
    """One epoch of the post's loop with a fresh optimizer; returns images per second."""
    return post_train(images, 1, device, model)[1][0]


class PlainDataset(torch.utils.data.Dataset):
    """The plain PyTorch way: one uint8 image per item, turned into a float row in [0, 1] (channels last, the
    layout ``vaekit.VAE`` takes)."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.asarray(self.images[i])).float().div(255).flatten(), 0


def conv_model(image_shape: tuple[int, ...]) -> nn.Module:
    """vaekit's ``conv`` preset for this image size: the very module ``vaekit train --model conv`` builds."""
    return vaekit.VAE(vaekit.model_config("conv", image_shape=tuple(image_shape)))


def plain_conv_epoch(images: np.ndarray, device: torch.device = CPU, model: nn.Module | None = None) -> float:
    """One epoch of a plain DataLoader loop over the conv VAE (BCE with logits, summed, plus the KL; Adam lr
    3e-4) with a fresh optimizer; returns images per second."""
    model = conv_model(images.shape[1:]).to(device) if model is None else model
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    loader = torch.utils.data.DataLoader(PlainDataset(images), batch_size=128, shuffle=True)
    total = 0.0
    _sync(device)
    t0 = time.perf_counter()
    for x, _ in loader:
        x = x.to(device)
        eps = torch.randn(x.shape[0], model.zdim, device=device)
        logits, mu, logvar = model(x, eps)
        kl = -0.5 * (1 + logvar - mu * mu - logvar.exp()).sum()
        loss = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") + kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item()
    _sync(device)
    return len(images) / (time.perf_counter() - t0)


def vaekit_epochs(args: argparse.Namespace, epochs: int, data: str | None = None) -> list[float]:
    """vaekit's own training loop (the real ``vaekit.train``; ``data``: an ``.npz`` of the images instead of
    the dataset); images per second of each epoch. Figures are off: they come after the timed epochs."""
    with tempfile.TemporaryDirectory() as tmp:
        where = dict(data=data) if data else dict(dataset=args.dataset, data_dir=args.data_dir)
        cfg = vaekit.TrainConfig(**where, model=args.model, epochs=epochs, device=args.device, artifacts=False,
                                 batch_size=args.batch_size, precision=args.precision, compile=args.compile)
        run = vaekit.train(cfg, Path(tmp) / "run")
        n = run.data["n_train"]
        return [n / row["seconds"] for row in read_metrics(run.path)]


# ------------------------------------------------------------------------------------------ the floor


def model_flops_per_image(model: nn.Module) -> int:
    """Multiply-add FLOPs of one training image through the Linear layers: 2*in*out forward, the same for the
    weight gradient, and the same again for the input gradient except at the first layer (its input, the
    data, needs none). Elementwise work is left out: the floor is the matrix products."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    total = 0
    for i, m in enumerate(linears):
        mac = m.in_features * m.out_features
        total += 2 * mac * (2 if i == 0 else 3)
    return total


def _time_it(fn, device: torch.device, min_seconds: float = 0.5) -> float:
    """Seconds per call of ``fn``: best of 5 repeats of enough calls to last ``min_seconds`` / 5."""
    fn()
    _sync(device)
    reps = 1
    while True:
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        _sync(device)
        dt = time.perf_counter() - t
        if dt > min_seconds / 5:
            break
        reps *= 2
    best = dt / reps
    for _ in range(4):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        _sync(device)
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def conv_flops_per_image(model: nn.Module, image_shape: tuple[int, ...]) -> int:
    """Multiply-add FLOPs of one training image through every Conv2d, ConvTranspose2d and Linear layer,
    counted as ``model_flops_per_image`` counts them (forward, weight gradient, input gradient but at the
    first layer); the spatial sizes come from one traced forward pass."""
    macs: list[int] = []

    def hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if isinstance(m, nn.Linear):
            macs.append(m.in_features * m.out_features)
        elif isinstance(m, nn.Conv2d):  # every output pixel: in_channels * k * k products per output channel
            macs.append(m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] * out[0, 0].numel())
        else:  # transposed: every input pixel scatters in_channels' values through a k x k x out kernel
            macs.append(m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] * inputs[0][0, 0].numel())

    layers = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, layers)]
    try:
        with torch.no_grad():
            dim = int(np.prod(image_shape))
            model(torch.zeros(1, dim), torch.zeros(1, model.zdim))
    finally:
        for h in handles:
            h.remove()
    return sum(2 * mac * (2 if i == 0 else 3) for i, mac in enumerate(macs))


def matmul_rates(model: nn.Module, batch: int, device: torch.device) -> tuple[float, float]:
    """FLOP/s of (a) one large fp32 product (2048^3 on a CPU, 8192^3 on a GPU) and (b) the model's own
    forward and backward products at ``batch``, run back to back, nothing else."""
    size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    big = 2 * size**3 / _time_it(lambda: torch.mm(a, b), device)
    shapes = []
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for i, m in enumerate(linears):
        x = torch.randn(batch, m.in_features, device=device)
        w = torch.randn(m.out_features, m.in_features, device=device)
        g = torch.randn(batch, m.out_features, device=device)
        shapes.append((x, w, g, i == 0))

    def step() -> None:
        for x, w, g, first in shapes:
            torch.mm(x, w.t())  # forward
            torch.mm(g.t(), x)  # weight gradient
            if not first:
                torch.mm(g, w)  # input gradient

    own = model_flops_per_image(model) * batch / _time_it(step, device)
    return big, own


# ------------------------------------------------------------------------------------------ memory

_HWM = re.compile(r"VmHWM:\s+(\d+)\s+kB")


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (VmHWM), in MiB."""
    try:
        return int(_HWM.search(Path("/proc/self/status").read_text()).group(1)) / 1024
    except (OSError, AttributeError):  # not Linux: getrusage's peak (kB on Linux, bytes on macOS)
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _child_post(args: argparse.Namespace) -> None:
    """The post's whole script in one process: load, one epoch, the latent-grid figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = load_splits(args.dataset, args.data_dir)
    model = PostVAE()
    post_epoch(splits.train_images, model=model)
    with torch.no_grad():
        grid = torch.stack(torch.meshgrid(torch.linspace(-2, 2, 20), torch.linspace(-2, 2, 20), indexing="xy"), -1)
        images = model.decoder(grid.reshape(-1, 2)).reshape(20, 20, 28, 28).permute(0, 2, 1, 3).reshape(560, 560)
    with tempfile.TemporaryDirectory() as tmp:
        plt.imshow(images.numpy(), cmap="gray")
        plt.savefig(Path(tmp) / "grid.png")
    print(f"PEAK_RSS_MIB {peak_rss_mib():.1f}")


def _child_vaekit(args: argparse.Namespace) -> None:
    """``vaekit train`` for one epoch, figures and all, as a user runs it."""
    from vaekit.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        argv = ["train", "--epochs", "1", "--device", "cpu", "--quiet", "--out", str(Path(tmp) / "run")]
        argv += ["--dataset", args.dataset] if args.dataset else []
        argv += ["--data-dir", args.data_dir] if args.data_dir else []
        if main(argv) != 0:
            raise SystemExit(1)
    print(f"PEAK_RSS_MIB {peak_rss_mib():.1f}")


def measure_peak(kind: str, args: argparse.Namespace) -> float:
    cmd = [sys.executable, __file__, "--child", kind]
    cmd += ["--dataset", args.dataset] if args.dataset else []
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"PEAK_RSS_MIB ([\d.]+)", out).group(1))


# ------------------------------------------------------------------------------------------ main


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=None, help="default: whatever vaekit train would use")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--model", choices=["seed", "conv"], default="seed",
                    help="seed: vaekit against the post's pipeline (default); conv: vaekit's conv preset against a "
                    "plain DataLoader loop of the same model")
    ap.add_argument("--images", type=int, default=0, help="train both on the first N training images (0: all)")
    ap.add_argument("--crops", type=int, default=0,
                    help="train both on N 32x32 colour crops of scikit-image's photos instead (needs --model conv)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="alternating rounds (baseline: 1 epoch, vaekit: 2 epochs); 0: memory only")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--batch-size", type=int, default=128, help="vaekit's batch size (the post's is 128)")
    ap.add_argument("--precision", default="fp32", help="vaekit's precision (the post's is fp32)")
    ap.add_argument("--compile", action="store_true", help="vaekit with --compile (with --profile: a third step)")
    ap.add_argument("--memory", action="store_true", help="also measure peak memory of whole CPU runs (seed only)")
    ap.add_argument("--profile", action="store_true",
                    help="instead of the rounds: where one step's time goes, for the autograd step and vaekit's own")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for both (default: torch's, one per core); 1 resists noisy neighbours")
    ap.add_argument("--variants", default=None,
                    help="with --model conv, instead of the rounds: training-step img/s of each of these, e.g. "
                    "fp32,bf16,fp32-cl,bf16-cl,fp32-compile (cl: channels last), ratios against fp32 in each round")
    ap.add_argument("--steps", type=int, default=10, help="with --variants: timed steps per variant and round")
    ap.add_argument("--check-steps", type=int, default=0,
                    help="with --variants: also train each N steps from the same start and compare test losses")
    ap.add_argument("--child", choices=["post", "vaekit"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variants and args.model != "conv":
        ap.error("--variants measures the conv preset's step: use --model conv")
    if args.model == "conv" and args.memory:
        ap.error("--memory measures the post's whole script; it has no conv counterpart")
    if args.crops and args.model != "conv":
        ap.error("--crops are colour images: use --model conv")
    if args.memory and args.images:
        ap.error("--memory measures whole runs on the whole training set; leave out --images")
    return args


def training_images(args: argparse.Namespace, tmp: Path) -> tuple[np.ndarray, str | None, str]:
    """The training images both loops use, the ``.npz`` vaekit reads them from (None: the dataset as
    ``vaekit train`` finds it) and a label."""
    if args.crops:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from paper_table import PHOTOS, photo_crops

        train, test = photo_crops(args.crops, max(100, args.crops // 10))
        label = f"{len(train):,} colour 32x32 crops of scikit-image's {', '.join(PHOTOS)} (seed 0)"
    else:
        splits = load_splits(args.dataset, args.data_dir)
        label = f"{splits.name} ({len(splits.train_images):,} training images, from {splits.source})"
        if not args.images:
            return splits.train_images, None, label
        train = splits.train_images[: args.images]
        test = splits.test_images[: max(100, args.images // 10)]
        label = f"{splits.name}, its first {len(train):,} training images (from {splits.source})"
    path = tmp / "images.npz"
    np.savez(path, x_train=train, x_test=test)
    return train, str(path), label


def main() -> None:
    args = parse()
    if args.child:
        (_child_post if args.child == "post" else _child_vaekit)(args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        images, data, label = training_images(args, Path(tmp))
        print(f"data: {label}; torch {torch.__version__}, {torch.get_num_threads()} threads; device "
              f"{device_name(device)}", flush=True)
        base = "post: batch 128, fp32" if args.model == "seed" else "plain DataLoader loop: batch 128, fp32"
        print(f"model: {args.model}; vaekit settings: batch {args.batch_size}, {args.precision}"
              f"{', compiled' if args.compile else ''}; {base}", flush=True)
        if args.variants:
            measure_variants(args, images)
        elif args.profile:
            measure_profile(args, images, device)
        elif args.rounds > 0:
            measure_speed(args, images, data, device)
    if args.memory:
        measure_memory(args, len(images))


def measure_speed(args: argparse.Namespace, images: np.ndarray, data: str | None, device: torch.device) -> None:
    """Alternating rounds of the baseline (one epoch) and vaekit (two epochs), then the floor."""
    conv = args.model == "conv"
    baseline, name = (plain_conv_epoch, "plain") if conv else (post_epoch, "post")
    post, ours, ratios = [], [], []
    for r in range(args.rounds):
        post.append(baseline(images, device))
        mine = vaekit_epochs(args, epochs=2, data=data)
        ours.extend(mine)
        ratios.append(statistics.median(mine) / post[-1])
        print(f"round {r + 1}: {name} {post[-1]:,.0f} img/s, vaekit {mine[0]:,.0f} / {mine[1]:,.0f} img/s "
              f"(ratio {ratios[-1]:.2f}x)", flush=True)
    p, o = statistics.median(post), statistics.median(ours)
    what = "plain loop (DataLoader, per-image float conversion)" if conv else "post pipeline (DataLoader + ToTensor)"
    print(f"{what}: {p:,.0f} images/s (median of {len(post)} epochs)")
    print(f"vaekit loop (in-memory, index slices): {o:,.0f} images/s (median of {len(ours)} epochs)")
    print(f"ratio: {o / p:.2f}x (ratio of medians); median of per-round ratios {statistics.median(ratios):.2f}x")
    (print_conv_floor if conv else print_floor)(args, images.shape[1:], device, o, p)


def measure_variants(args: argparse.Namespace, images: np.ndarray) -> None:
    """Step img/s of the conv preset under each of ``--variants`` (CPU), and with ``--check-steps`` their test
    losses after equal steps (see ``benchmarks/step_variants.py``)."""
    from step_variants import VARIANTS, check, measure

    names = ["fp32", *[n for n in args.variants.split(",") if n != "fp32"]]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    x = torch.from_numpy(images).float().div(255)
    n_test = max(100, len(x) // 10)
    train, test = x[n_test:], x[:n_test]
    print(f"bf16 native on this CPU: {cpu_has_native_bf16()}; batch {args.batch_size}, {args.steps} steps per "
          f"variant and round, {args.rounds} rounds", flush=True)
    result = measure(train, names, args.rounds, args.steps, args.batch_size)
    for n, (rate, ratio) in result.items():
        print(f"{n:>13}: {rate:8,.0f} img/s (median of {args.rounds} rounds), x{ratio:.2f} fp32 (median of "
              f"per-round ratios)")
    if args.check_steps:
        losses = check(train, test, names, args.check_steps, args.batch_size)
        print(f"test -ELBO after {args.check_steps} equal steps (first {n_test} images held out): "
              + ", ".join(f"{n} {v:.3f}" for n, v in losses.items()))
        spread = abs(losses["fp32-noise"] - losses["fp32"])
        for n in names[1:]:
            rel = losses[n] / losses["fp32"] - 1
            print(f"{n:>13}: {losses[n] - losses['fp32']:+.3f} nats/image against fp32 ({rel:+.2%}); "
                  f"fp32 with other noise {spread:+.3f}")


def print_floor(args: argparse.Namespace, shape: tuple[int, ...], device: torch.device, o: float, p: float) -> None:
    model = vaekit.VAE(vaekit.model_config("seed"))
    flops = model_flops_per_image(model)
    big, own = matmul_rates(model, args.batch_size, device)
    print(f"floor: {flops / 1e6:.3f} MFLOP per training image (matrix products); this machine multiplies "
          f"{big / 1e9:,.1f} GFLOP/s (one large fp32 product) and {own / 1e9:,.1f} GFLOP/s (the model's own "
          f"products at batch {args.batch_size})")
    print(f"vaekit reaches {flops * o / 1e9:,.1f} GFLOP/s: {flops * o / big:.0%} of the large-product floor, "
          f"{flops * o / own:.0%} of the model's-products floor; the post's pipeline {flops * p / own:.0%}")


def print_conv_floor(args: argparse.Namespace, shape: tuple[int, ...], device: torch.device, o: float,
                     p: float) -> None:
    model = conv_model(shape)
    flops = conv_flops_per_image(model, shape)
    big, _ = matmul_rates(nn.Sequential(nn.Linear(1, 1)), args.batch_size, device)
    n = sum(q.numel() for q in model.parameters())
    print(f"floor: conv preset for {'x'.join(map(str, shape))} ({n:,} parameters), {flops / 1e6:.1f} MFLOP per "
          f"training image (convolution and matrix products); this machine multiplies {big / 1e9:,.1f} GFLOP/s "
          "(one large fp32 product)")
    print(f"vaekit reaches {flops * o / 1e9:,.1f} GFLOP/s ({flops * o / big:.0%} of the large-product floor), "
          f"the plain loop {flops * p / 1e9:,.1f} GFLOP/s ({flops * p / big:.0%})")


def measure_profile(args: argparse.Namespace, images: np.ndarray, device: torch.device) -> None:
    """One step of the autograd path (every operation dispatched from the host, as before the hand-written
    step and CUDA graphs) and of vaekit's step with the default flags, each split into where its time goes."""
    import step_profile

    shape = tuple(images.shape[1:])
    model = vaekit.VAE(vaekit.model_config(args.model, image_shape=shape))
    if args.model == "conv":
        flops = conv_flops_per_image(model, shape)
        big, _ = matmul_rates(nn.Sequential(nn.Linear(1, 1)), args.batch_size, device)
    else:
        flops = model_flops_per_image(model)
        big, _ = matmul_rates(model, args.batch_size, device)
    floor_ms = flops * args.batch_size / big * 1e3
    print(f"floor: {flops / 1e6:.3f} MFLOP per training image in products; large-product rate {big / 1e9:,.1f} "
          f"GFLOP/s")
    variants = [("autograd step (--no-fused-step --no-cuda-graph)", dict(fused_step=False, cuda_graph=False)),
                ("vaekit's step (default flags)", dict(fused_step=True, cuda_graph=True))]
    if args.compile:
        variants.append(("torch.compile step (--compile)", dict(compiled=True, fused_step=True, cuda_graph=True)))
    built = []
    for label, flags in variants:
        flags.setdefault("compiled", False)
        step, config, m = step_profile.build_step(args.model, shape, device, args.batch_size, args.precision,
                                                  **flags)
        built.append((f"{label} [{step.plan.strategy}]", step, config, m))
    for p in step_profile.profile_steps(built, images, device):
        step_profile.print_profile(p, floor_ms)


def measure_memory(args: argparse.Namespace, n: int) -> None:
    """Peak memory of each kind of whole run, twice each, alternating; the smaller of each pair is printed."""
    peaks: dict[str, list[float]] = {k: [] for k in ("post", "vaekit")}
    for _ in range(2):
        for kind in peaks:
            peaks[kind].append(measure_peak(kind, args))
    pp, vp = min(peaks["post"]), min(peaks["vaekit"])
    print(f"peak resident memory of a whole one-epoch CPU run on {n:,} images: "
          f"post {pp:,.0f} MiB, vaekit {vp:,.0f} MiB ({vp - pp:+,.0f} MiB); "
          f"runs: post {peaks['post']}, vaekit {peaks['vaekit']}")


if __name__ == "__main__":
    main()
