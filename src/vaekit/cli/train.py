"""``vaekit train``: flags -> TrainConfig (recipes under the flags given), resume checks, training."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vaekit.cli.common import _number, grid_int, nonnegative_int, positive_float, positive_int, seed_int
from vaekit.config import (
    ACTIVATIONS,
    BINARIZE,
    CHANNELS,
    CONTEXTS,
    GRID_SPACINGS,
    LIKELIHOODS,
    LR_SCHEDULES,
    OBJECTIVES,
    OWN_VAL_FRACTION,
    PRECISIONS,
    PRESETS,
    RECIPES,
    RES_BLOCKS,
    SEEDS_TOGETHER,
    ConfigError,
    TrainConfig,
    default_recipe,
    recipe_config,
)


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return sizes


def _fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value


def _val_fraction(text: str) -> float:
    """A number from 0 (no validation split) up to, not including, 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 up to 1, got {text[:40]!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 up to 1, got {text[:40]!r}")
    return value


def _seed_list(text: str) -> list[int]:
    """--seeds, parsed by the module that trains them (imported only when the flag is given: it loads torch)."""
    from vaekit.experiments.seeds import parse_seeds

    return parse_seeds(text)


def _sigma(text: str) -> float | str:
    """A positive number, or ``learned`` for a per-pixel standard deviation learned with the weights."""
    if text.strip().lower() == "learned":
        return "learned"
    return positive_float(text)


def add_train_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a VAE (defaults: the blog post's model and settings on MNIST)",
                       description="Train a VAE and write a run folder with weights, metrics and figures. "
                                   "Defaults reproduce the blog post: seed model, zdim 2, BCE, Adam lr 3e-4, "
                                   "batch 128, 50 epochs, on MNIST.")
    # Every default is None so that --resume can tell which flags were given.
    _data_flags(p.add_argument_group("data"))
    _model_flags(p.add_argument_group("model and objective"))
    _optimization_flags(p.add_argument_group("optimization"))
    _run_flags(p.add_argument_group("run folder and output"))
    p.set_defaults(func=cmd_train)
    return p


def _data_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--dataset", help="mnist, fashion-mnist, kmnist or cifar10 (default: MNIST, or its embedded "
                                     "5,000-digit subset when offline)")
    g.add_argument("--data-dir", help="folder holding the dataset's files: the four IDX files, or CIFAR-10's "
                                      "cifar-10-binary.tar.gz")
    g.add_argument("--data", metavar="PATH", help="train on your own images: a folder of images (class subfolders "
                   "give labels; train/ and test/ subfolders give the split) or a .npy/.npz array")
    g.add_argument("--image-size", type=positive_int, metavar="N",
                   help="resize the shorter side to N and centre-crop N x N (needed when sizes differ)")
    g.add_argument("--channels", type=int, choices=CHANNELS,
                   help="1 (grey) or 3 (colour); default: 1 when every image is grey, else 3")
    g.add_argument("--test-fraction", type=_fraction, metavar="F",
                   help="share of the images held out for testing when no test/ folder is given (default 0.1)")
    g.add_argument("--val-fraction", type=_val_fraction, metavar="F",
                   help="share of the training images held out for validation, whose val_loss callbacks choose "
                        "and stop on (the test set is then evaluated once, at the end); default "
                        f"{OWN_VAL_FRACTION} with --data, 0 (none: the test set evaluated every epoch) for a dataset")
    g.add_argument("--skip-bad", action="store_true", default=None,
                   help="leave unreadable images out (listed in RUN/skipped_files.txt) instead of stopping")
    g.add_argument("--binarize", choices=BINARIZE,
                   help="none (grey levels, default), dynamic (pixels redrawn as Bernoulli(grey) every batch) or "
                        "static (one fixed binarized copy); evaluation uses one binarized test copy of fixed seed")


def _model_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--model", choices=tuple(PRESETS), help="model preset: seed (the post's MLP, default for 28x28 "
                   "grey images), mlp, burda (the IWAE paper's 2x200 tanh, zdim 50), pytorch-example (400 ReLU, zdim "
                   "20), conv (convolutional, any size, zdim 32; default for other images), pytorch-vae-vanilla "
                   "(after PyTorch-VAE's VanillaVAE for 64x64 colour, zdim 128) or hvae (hierarchical, VDVAE-style: "
                   "latent groups at several resolutions, zdim channels per group)")
    g.add_argument("--zdim", type=positive_int, help="latent dimensions (default: the preset's, 2 for seed)")
    g.add_argument("--width", type=positive_float, help="channel multiplier of the conv presets (default 1)")
    g.add_argument("--res-blocks", type=int, choices=RES_BLOCKS, metavar="N",
                   help=f"residual blocks after each level of a conv preset's encoder and decoder, one of "
                        f"{', '.join(map(str, RES_BLOCKS))} (default 0)")
    g.add_argument("--hidden", type=_hidden, help="hidden sizes in encoder order, e.g. 512,256, mirrored by the "
                   "decoder: the layer widths of an MLP preset or the channels per level of a conv preset (not seed)")
    g.add_argument("--activation", choices=ACTIVATIONS, help="activation of the preset's hidden layers, MLP or conv "
                                                             "(default: the preset's own)")
    g.add_argument("--likelihood", choices=LIKELIHOODS, help="bernoulli (the post's BCE, default), gaussian, "
                   "continuous-bernoulli (the normalized density on [0, 1]), or for the 256 levels of 8-bit pixels "
                   "discretized-logistic (location and scale per pixel from z) or logistic-mixture (PixelCNN++'s "
                   "mixture with coupled colour channels); the last two give bits/dim comparable to papers, "
                   "not with --binarize, --sigma or --learn-sigma")
    g.add_argument("--mixtures", type=positive_int, metavar="K",
                   help="components per pixel of --likelihood logistic-mixture (default 10)")
    g.add_argument("--context", type=int, choices=CONTEXTS, metavar="N",
                   help="an 8-bit likelihood's causal window: each pixel's distribution also reads the N rows above it "
                        "and the N pixels before it (PixelVAE-style; 0: none, the default; one of "
                        f"{', '.join(map(str, CONTEXTS))}); sampling then goes pixel by pixel")
    g.add_argument("--sigma", type=_sigma, help="standard deviation of the gaussian likelihood (default 1), or "
                                                "'learned' for a learned per-pixel one; gaussian only")
    g.add_argument("--learn-sigma", action="store_true", default=None,
                   help="learn a per-pixel gaussian standard deviation, starting at --sigma; gaussian only (the "
                        "8-bit likelihoods take their scales from the decoder)")
    g.add_argument("--objective", choices=OBJECTIVES, help="elbo (default) or iwae, the k-sample "
                                                           "importance-weighted bound")
    g.add_argument("--k", type=positive_int, help="samples per image of the objective (default 1)")
    g.add_argument("--beta", type=_number(float, 0.0, what="a number >= 0"), help="weight on the KL (default 1)")
    g.add_argument("--kl-warmup", type=nonnegative_int, metavar="EPOCHS",
                   help="raise the KL weight linearly from 0 to --beta over this many epochs (default 0: none)")


def _optimization_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--recipe", choices=tuple(RECIPES),
                   help="post (the blog post's settings; default for MNIST, Fashion-MNIST and KMNIST), fast (batch "
                        "256, lr 5e-3 with a 1-epoch warm-up and cosine decay, 16 epochs, bf16 where native) or "
                        "images (8-bit images: conv, discretized logistic, batch 64, lr 1e-3 with warm-up and cosine "
                        "decay, 3,000 steps, validation and early stopping; default for --data and cifar10); flags "
                        "given as well override it")
    g.add_argument("--epochs", type=positive_int, help="number of epochs in total (default 50; overrides a "
                                                       "recipe's --steps)")
    g.add_argument("--steps", type=positive_int, help="a training budget in optimizer steps: epochs = steps / steps "
                                                      "per epoch, rounded up (the images recipe: 3,000)")
    g.add_argument("--patience", type=nonnegative_int, metavar="EPOCHS",
                   help="stop once val_loss has not improved for this many epochs and keep the best epoch's "
                        "weights (default 0: never; the images recipe: 10); needs a validation split")
    g.add_argument("--batch-size", type=positive_int, help="images per optimizer step (default 128)")
    g.add_argument("--lr", type=positive_float, help="Adam learning rate (default 3e-4)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                   help="constant (default) or cosine (decays to 0 at the last step)")
    g.add_argument("--lr-warmup", type=_number(float, 0.0, what="a number of epochs >= 0"),
                   help="epochs of linear learning-rate warm-up (default 0)")
    g.add_argument("--seed", type=seed_int, help="random seed; same seed, same weights on CPU (default 0)")
    g.add_argument("--seeds", type=_seed_list, metavar="LIST",
                   help="train one run per seed, such as 0,1,2 or 0-4, one after another into OUT/seed-N/, then "
                        "write OUT/summary.json and print each number's mean \u00b1 standard error (not with --seed)")
    g.add_argument("--seeds-together", choices=SEEDS_TOGETHER,
                   help="with --seeds: compute the seeds' steps together in one stacked step (post's MLP objective) "
                        "where that reproduces each seed's own run bit for bit (auto, the default), wherever the "
                        "model allows (yes: each seed then within rounding of its own run) or never (no)")
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    g.add_argument("--precision", choices=PRECISIONS,
                   help="auto (default: bf16 for conv models where bf16 is native, else fp32), fp32, bf16 (autocast; "
                   "CUDA, or CPUs with AVX-512 BF16/AMX) or fp16 (CUDA)")
    g.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the training step (falls back to eager with a message where it cannot)")
    g.add_argument("--no-fused-step", dest="fused_step", action="store_false", default=None,
                   help="compute the post's step through autograd instead of the hand-written step (same numbers)")
    g.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false", default=None,
                   help="on CUDA, dispatch every step from the host instead of replaying a recorded CUDA graph")
    g.add_argument("--detect-anomaly", action="store_true", default=None,
                   help="find the operation that produced a NaN (slow; for debugging)")
    g.add_argument("--grad-clip", type=_number(float, 0.0, what="a number >= 0"), metavar="NORM",
                   help="clip the global gradient norm (of the loss summed over the batch) to NORM before each update "
                        "(default 0: off)")
    g.add_argument("--skip-threshold", type=_number(float, 0.0, what="a number >= 0"), metavar="NORM",
                   help="skip any update whose gradient norm exceeds NORM, counted as skipped_updates in "
                        "summary.json (default 0: off)")
    g.add_argument("--ema", type=_number(float, 0.0, what="a rate from 0 up to 1"), metavar="RATE",
                   help="keep an exponential moving average of the weights at RATE (e.g. 0.999), evaluated, "
                        "sampled and saved as model.safetensors; the trained weights stay in the checkpoint "
                        "(default 0: off)")


def _run_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--out", help="run folder to create (default runs/vae-<date>-<time>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g.add_argument("--force", action="store_true", help="train into an existing --out folder, replacing its run")
    g.add_argument("--checkpoint-every", type=nonnegative_int, help="also checkpoint every N optimizer steps")
    g.add_argument("--grid-size", type=grid_int, help="cells per side of latent_grid.png (default 20)")
    g.add_argument("--grid-spacing", choices=GRID_SPACINGS, help="even spacing or normal quantiles")
    g.add_argument("--no-artifacts", dest="artifacts", action="store_false", default=None,
                   help="skip the figures, explorer and report at the end (vaekit plot/explore/report make them)")
    g.add_argument("--tensorboard", action="store_true", default=None,
                   help="log per-epoch scalars to RUN/tensorboard/ (needs: pip install \"vaekit[tensorboard]\")")
    g.add_argument("--mlflow", nargs="?", const="", metavar="URI",
                   help="track the run in MLflow at URI (default $MLFLOW_TRACKING_URI; needs \"vaekit[mlflow]\")")
    g.add_argument("--wandb", nargs="?", const="", metavar="PROJECT",
                   help="track the run in W&B PROJECT (default $WANDB_PROJECT or vaekit; needs \"vaekit[wandb]\")")
    g.add_argument("--strict-trackers", action="store_true", default=None,
                   help="stop training (checkpointed) when --mlflow or --wandb fails, instead of a warning")
    g.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")


# The TrainConfig fields set by flags of the same name (dashes for underscores).
_FIELDS = (
    "dataset", "data_dir", "data", "image_size", "channels", "test_fraction", "skip_bad", "epochs", "batch_size",
    "lr", "zdim", "model", "width", "res_blocks", "hidden", "activation", "likelihood", "mixtures", "context",
    "sigma", "learn_sigma",
    "device", "seed", "checkpoint_every", "grid_size", "grid_spacing", "detect_anomaly", "objective", "k", "beta",
    "kl_warmup", "binarize", "precision", "compile", "fused_step", "cuda_graph", "lr_schedule", "lr_warmup", "recipe",
    "artifacts", "tensorboard", "val_fraction", "steps", "patience", "grad_clip", "skip_threshold", "ema",
    "mlflow", "wandb", "strict_trackers",
)


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, dict[str, Any]]:
    """The TrainConfig the flags describe, and the subset of fields the user set explicitly."""
    given = {field: getattr(args, field) for field in _FIELDS if getattr(args, field) is not None}
    if given.get("sigma") == "learned":  # --sigma learned: a learned sigma starting at 1
        del given["sigma"]
        given["learn_sigma"] = True
    # a recipe's settings, under the flags given; none named: images for your own images and CIFAR-10
    config = recipe_config(given.get("recipe") or default_recipe(given), given)
    config.progress = not args.quiet
    return config, given


def cmd_train(args: argparse.Namespace) -> int:
    from vaekit.training import train

    config, given = config_from_args(args)
    if args.resume and args.force:
        raise ConfigError("--resume and --force contradict each other: pick one")
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out RUN_FOLDER")
    if args.seeds is not None:
        return _train_seeds(args, config, given)
    if args.seeds_together is not None:
        raise ConfigError("--seeds-together needs --seeds: it says how several seeds train")
    if args.resume:
        config = _resumed_config(config, given, Path(args.out))
    config.validate()
    train(config, args.out, resume=args.resume, force=args.force)
    return 0


def _resumed_config(config: TrainConfig, given: dict[str, Any], out: Path) -> TrainConfig:
    """The config to resume ``out`` with: the flags given must match its stored settings but for RESUMABLE ones,
    whose stored values are kept unless given."""
    from vaekit.run import CONFIG, read_config
    from vaekit.training import RESUMABLE

    if not (out / CONFIG).exists():
        return config
    _, stored, _ = read_config(out)

    def same(field: str, value: object) -> bool:
        old = getattr(stored, field)
        return (old == value or (field == "recipe" and {old, value} <= {None, "post"})  # post: the default
                or (field == "val_fraction" and old is None and value == 0))  # a run from before: none

    clash = [f for f, v in given.items() if f not in (*RESUMABLE, "data") and not same(f, v)]
    if clash:
        flags = ", ".join("--" + f.replace("_", "-") for f in clash)
        verb = "differs" if len(clash) == 1 else "differ"
        raise ConfigError(f"{flags} {verb} from the run being resumed; resume with the same settings "
                          "or start a new run with another --out")
    for f in RESUMABLE:  # keep the stored value unless the flag was given
        if f not in given and f != "progress":
            setattr(config, f, getattr(stored, f))
    return config


def _train_seeds(args: argparse.Namespace, config: TrainConfig, given: dict[str, Any]) -> int:
    """``--seeds``: one run per seed into OUT/seed-N, each exactly the run ``--seed N --out OUT/seed-N`` is."""
    from dataclasses import replace

    from vaekit.experiments.seeds import out_folder, summary_lines, train_seeds

    if args.seed is not None:
        raise ConfigError("--seed and --seeds exclude each other: give --seeds for several seeds, --seed for one")
    out = out_folder(args.out)

    def config_for(seed: int, run_dir: Path, stored: Path | None) -> TrainConfig:
        seeded = replace(config, seed=seed)
        if stored == run_dir:  # a started seed: resumed like a single run
            seeded = _resumed_config(seeded, {**given, "seed": seed}, run_dir)
        elif stored is not None:  # not started yet: the settings the started seeds were trained with
            from vaekit.run import read_config
            from vaekit.training import RESUMABLE

            seeded = _resumed_config(seeded, given, stored)
            settings = read_config(stored)[1]
            seeded = replace(settings, seed=seed, data=seeded.data or settings.data,
                             **{f: getattr(seeded, f) for f in RESUMABLE})
        seeded.validate()
        return seeded

    seeds = ",".join(map(str, args.seeds))
    summary = train_seeds(config_for, args.seeds, out, resume=args.resume, force=args.force,
                          again=f"vaekit train --seeds {seeds} --out {out}", together=args.seeds_together)
    print("\n".join(summary_lines(summary)))
    return 0
