"""``vaekit evaluate`` and ``vaekit plot``: a finished run's test metrics (and NLL), and its figures redrawn."""

from __future__ import annotations

import argparse
import json

from vaekit.cli.common import DATA_DIR_HELP, grid_int, positive_int
from vaekit.config import BINARIZE, GRID_SPACINGS
from vaekit.text import printable


def cmd_evaluate(args: argparse.Namespace) -> int:
    from vaekit.data.binarize import describe
    from vaekit.eval.run import evaluate_run

    result = evaluate_run(args.run, data_dir=args.data_dir, device=args.device or "auto", nll=args.nll,
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
        if key == "bits_per_dim":
            tag += f"  ({result['nll_protocol']['bits_per_dim']})"
        print(f"{key:<{width}}  {v}{tag}")
    return 0


# Numbers of the evaluate output that depend on the data protocol: printed with it beside them.
_PROTOCOL_KEYS = ("test_loss", "test_recon", "test_kl", "nll", "nll_stderr", "nll_test_set_stderr", "bits_per_dim",
                  "nll_neg_elbo", "active_units", "kl_per_dim")


def cmd_plot(args: argparse.Namespace) -> int:
    from vaekit.artifacts import plot_run

    for path in plot_run(args.run, data_dir=args.data_dir, grid_size=args.grid_size, spacing=args.grid_spacing):
        print(printable(path))
    return 0


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="test-set metrics of a run", description="Evaluate a run on its test set.")
    p.add_argument("run", help="run folder written by vaekit train")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--device", help="auto (default, as vaekit train: a GPU when there is one), cpu, cuda, cuda:N or "
                                    "mps; on the device the run trained on, test_loss is the one training reported")
    p.add_argument("--nll", action="store_true",
                   help="also estimate the test log-likelihood by importance sampling (stored in summary.json)")
    p.add_argument("--samples", type=positive_int, default=5000, metavar="K",
                   help="importance samples per test image for --nll (default 5000, as in the IWAE paper)")
    p.add_argument("--binarize", choices=BINARIZE,
                   help="evaluate on this data protocol instead of the run's own (dynamic and static both use "
                        "the fixed-seed binarized test copy)")
    p.add_argument("--no-save", action="store_true", help="do not store the --nll evaluation in summary.json")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the --nll estimator (default: on the CPU for estimates of 4M+ decoded rows; "
                        "falls back to eager with a message where it cannot)")
    p.set_defaults(func=cmd_evaluate)


def add_plot_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="(re)draw a run's figures", description="Write the five figures of a run.")
    p.add_argument("run", help="run folder written by vaekit train")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--grid-size", type=grid_int, default=None, help="cells per side of the latent grid")
    p.add_argument("--grid-spacing", choices=GRID_SPACINGS, default=None)
    p.set_defaults(func=cmd_plot)
