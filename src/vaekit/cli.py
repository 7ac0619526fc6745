"""The ``vaekit`` command line: train, evaluate, plot and data.

Every error a user can cause ends as one line on stderr and exit code 2 (bad input), 1 (the run failed)
or 130 (interrupted); tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import __version__
from .config import ConfigError, TrainConfig
from .data import DataError, add_data_parser
from .errors import VaekitError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``vaekit train: error: ...``) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())  # an argument may hold line breaks; the message stays one line
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, minimum: float, inclusive: bool = True, what: str = "") -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what or kind.__name__}, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")) or (
            value < minimum if inclusive else value <= minimum
        ):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_int = _number(int, 1, what="a positive integer")
nonnegative_int = _number(int, 0, what="an integer >= 0")
positive_float = _number(float, 0.0, inclusive=False, what="a positive number")


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return sizes


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
    p.add_argument("--dataset", help="mnist, fashion-mnist or kmnist (default: MNIST, or its embedded "
                                     "5,000-digit subset when offline)")
    p.add_argument("--data-dir", help="folder holding the four IDX files of the dataset")
    p.add_argument("--epochs", type=positive_int, help="number of epochs in total (default 50)")
    p.add_argument("--batch-size", type=positive_int, help="images per optimizer step (default 128)")
    p.add_argument("--lr", type=positive_float, help="Adam learning rate (default 3e-4)")
    p.add_argument("--zdim", type=positive_int, help="latent dimensions (default: the preset's, 2 for seed)")
    p.add_argument("--model", help="model preset: seed (the post's MLP, default), mlp, burda (the IWAE paper's "
                                   "2x200 tanh, zdim 50) or pytorch-example (400 ReLU, zdim 20)")
    p.add_argument("--hidden", type=_hidden, help="hidden sizes of the mlp preset, e.g. 512,256")
    p.add_argument("--activation", help="activation of the mlp preset (elu, relu, tanh, gelu, silu, leaky_relu)")
    p.add_argument("--likelihood", help="bernoulli (the post's BCE, default), gaussian or continuous-bernoulli "
                                        "(the normalized density on [0, 1])")
    p.add_argument("--sigma", type=_sigma, help="standard deviation of the gaussian likelihood (default 1), or "
                                                "'learned' for a learned per-pixel one")
    p.add_argument("--learn-sigma", action="store_true", default=None,
                   help="learn a per-pixel gaussian standard deviation, starting at --sigma")
    p.add_argument("--objective", choices=["elbo", "iwae"], help="elbo (default) or iwae, the k-sample "
                                                                 "importance-weighted bound")
    p.add_argument("--k", type=positive_int, help="samples per image of the objective (default 1)")
    p.add_argument("--beta", type=_number(float, 0.0, what="a number >= 0"), help="weight on the KL (default 1)")
    p.add_argument("--kl-warmup", type=nonnegative_int, metavar="EPOCHS",
                   help="raise the KL weight linearly from 0 to --beta over this many epochs (default 0: none)")
    p.add_argument("--binarize", choices=["none", "dynamic", "static"],
                   help="none (grey levels, default), dynamic (pixels redrawn as Bernoulli(grey) every batch) or "
                        "static (one fixed binarized copy); evaluation uses one binarized test copy of fixed seed")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=nonnegative_int, help="random seed; same seed, same weights on CPU (default 0)")
    p.add_argument("--out", help="run folder to create (default runs/vae-<date>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--force", action="store_true", help="train into an existing --out folder, replacing its run")
    p.add_argument("--checkpoint-every", type=nonnegative_int, help="also checkpoint every N optimizer steps")
    p.add_argument("--grid-size", type=positive_int, help="cells per side of latent_grid.png (default 20)")
    p.add_argument("--grid-spacing", choices=["linear", "normal"], help="even spacing or normal quantiles")
    p.add_argument("--detect-anomaly", action="store_true", default=None,
                   help="find the operation that produced a NaN (slow; for debugging)")
    p.add_argument("--recipe", choices=["post", "fast"],
                   help="post (the blog post's settings, default) or fast (batch 256, lr 5e-3 with a 1-epoch "
                        "warm-up and cosine decay, 16 epochs, bf16 where native); flags given as well override it")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                   help="fp32 (default), bf16 (autocast; CUDA, or CPUs with AVX-512 BF16/AMX) or fp16 (CUDA)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the training step (falls back to eager with a message where it cannot)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"],
                   help="constant (default) or cosine (decays to 0 at the last step)")
    p.add_argument("--lr-warmup", type=_number(float, 0.0, what="a number of epochs >= 0"),
                   help="epochs of linear learning-rate warm-up (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.set_defaults(func=cmd_train)
    return p


_FLAG_TO_FIELD = {
    "dataset": "dataset", "data_dir": "data_dir", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
    "zdim": "zdim", "model": "model", "hidden": "hidden", "activation": "activation",
    "likelihood": "likelihood", "sigma": "sigma", "device": "device", "seed": "seed",
    "checkpoint_every": "checkpoint_every", "grid_size": "grid_size", "grid_spacing": "grid_spacing",
    "detect_anomaly": "detect_anomaly", "learn_sigma": "learn_sigma", "objective": "objective", "k": "k",
    "beta": "beta", "kl_warmup": "kl_warmup", "binarize": "binarize",
    "precision": "precision", "compile": "compile", "lr_schedule": "lr_schedule", "lr_warmup": "lr_warmup",
    "recipe": "recipe",
}


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, dict[str, Any]]:
    """The TrainConfig the flags describe, and the subset of fields the user set explicitly."""
    given = {field: getattr(args, flag) for flag, field in _FLAG_TO_FIELD.items() if getattr(args, flag) is not None}
    if given.get("sigma") == "learned":  # --sigma learned: a learned sigma starting at 1
        del given["sigma"]
        given["learn_sigma"] = True
    from .recipes import recipe_config

    config = recipe_config(given.get("recipe"), given)  # a recipe's settings, under the flags given
    config.progress = not args.quiet
    return config, given


def cmd_train(args: argparse.Namespace) -> int:
    from .runs import CONFIG, read_config
    from .train import RESUMABLE, train

    config, given = config_from_args(args)
    if args.resume and args.force:
        raise ConfigError("--resume and --force contradict each other: pick one")
    if args.resume:
        if not args.out:
            raise ConfigError("--resume needs --out RUN_FOLDER")
        from pathlib import Path

        if (Path(args.out) / CONFIG).exists():
            _, stored, _ = read_config(Path(args.out))
            def same(field: str, value: object) -> bool:
                old = getattr(stored, field)
                return old == value or (field == "recipe" and {old, value} <= {None, "post"})  # post: the default

            clash = [f for f, v in given.items() if f not in RESUMABLE and not same(f, v)]
            if clash:
                flags = ", ".join("--" + f.replace("_", "-") for f in clash)
                verb = "differs" if len(clash) == 1 else "differ"
                raise ConfigError(f"{flags} {verb} from the run being resumed; resume with the same settings "
                                  "or start a new run with another --out")
            for f in RESUMABLE:  # keep the stored value unless the flag was given
                if f not in given and f != "progress":
                    setattr(config, f, getattr(stored, f))
    config.validate()
    train(config, args.out, resume=args.resume, force=args.force)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .api import evaluate_run
    from .binarize import describe

    result = evaluate_run(args.run, data_dir=args.data_dir, device=args.device or "cpu", nll=args.nll,
                          samples=args.samples, binarize=args.binarize, save=not args.no_save,
                          progress=not args.json, compile=args.compile)
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    proto = describe(result.get("nll_protocol", result["protocol"]))
    k = f", K={result['nll_samples']}" if "nll_samples" in result else ""
    width = max(map(len, result))
    for key, v in result.items():
        if key in ("protocol", "nll_protocol", "nll_samples"):
            continue
        if isinstance(v, list):
            v = "[" + ", ".join(f"{x:.3f}" for x in v) + "]"
        elif isinstance(v, float):
            v = f"{v:.4f}"
        tag = f"  [{proto}{k if key.startswith(('nll', 'bits')) else ''}]" if key in _PROTOCOL_KEYS else ""
        print(f"{key:<{width}}  {v}{tag}")
    return 0


# Numbers of the evaluate output that depend on the data protocol: printed with it beside them.
_PROTOCOL_KEYS = ("test_loss", "test_recon", "test_kl", "nll", "nll_stderr", "nll_test_set_stderr", "bits_per_dim",
                  "nll_neg_elbo", "active_units", "kl_per_dim")


def cmd_plot(args: argparse.Namespace) -> int:
    from .api import plot_run

    for path in plot_run(args.run, data_dir=args.data_dir, grid_size=args.grid_size, spacing=args.grid_spacing):
        print(path)
    return 0


def build_parser() -> Parser:
    parser = Parser(prog="vaekit", description="Variational auto-encoders: train, evaluate, plot, explore.")
    parser.add_argument("--version", action="version", version=f"vaekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    add_train_parser(sub)

    p = sub.add_parser("evaluate", help="test-set metrics of a run", description="Evaluate a run on its test set.")
    p.add_argument("run", help="run folder written by vaekit train")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--data-dir", help="folder with the dataset's IDX files, if not where training found them")
    p.add_argument("--device", help="cpu (default), auto, cuda, cuda:N or mps")
    p.add_argument("--nll", action="store_true",
                   help="also estimate the test log-likelihood by importance sampling (stored in summary.json)")
    p.add_argument("--samples", type=positive_int, default=5000, metavar="K",
                   help="importance samples per test image for --nll (default 5000, as in the IWAE paper)")
    p.add_argument("--binarize", choices=["none", "dynamic", "static"],
                   help="evaluate on this data protocol instead of the run's own (dynamic and static both use "
                        "the fixed-seed binarized test copy)")
    p.add_argument("--no-save", action="store_true", help="do not store the --nll evaluation in summary.json")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the --nll estimator (default: on the CPU for estimates of 4M+ decoded rows; "
                        "falls back to eager with a message where it cannot)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("plot", help="(re)draw a run's figures", description="Write the five figures of a run.")
    p.add_argument("run", help="run folder written by vaekit train")
    p.add_argument("--data-dir", help="folder with the dataset's IDX files, if not where training found them")
    p.add_argument("--grid-size", type=positive_int, default=None, help="cells per side of the latent grid")
    p.add_argument("--grid-spacing", choices=["linear", "normal"], default=None)
    p.set_defaults(func=cmd_plot)

    add_data_parser(sub)

    from .explore import add_explore_parser
    from .report import add_report_parser

    add_explore_parser(sub)
    add_report_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"vaekit {args.command}"
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError, VaekitError) as e:
        code = getattr(e, "exit_code", 2)
        message = " ".join(str(e).split())  # always one line
        print(f"{prog}: error: {message}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`vaekit evaluate RUN --json | head`): nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        asked = re.search(r"tried to allocate ([\d.]+ ?[A-Za-z]*)", str(e))
        reason = f" (it tried to allocate {asked.group(1)})" if asked else ""
        print(f"{prog}: error: out of memory{reason}; the sizes asked for do not fit this machine: try a "
              "smaller model (--hidden, --zdim), --batch-size or --samples", file=sys.stderr)
        return 1


def _out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is memory exhaustion: Python's, the CPU allocator's or a GPU's."""
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return isinstance(e, MemoryError) or (oom is not None and isinstance(e, oom)) or \
        "can't allocate memory" in str(e) or "out of memory" in str(e).lower()


if __name__ == "__main__":
    sys.exit(main())
