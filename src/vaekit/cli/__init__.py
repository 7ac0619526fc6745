"""The ``vaekit`` command line: one module per command (train, evaluate and plot, explore, report, compare, data,
export; encode, reconstruct and interpolate in :mod:`.use`).

Every error a user can cause ends as one line on stderr and exit code 2 (bad input), 1 (the run failed)
or 130 (interrupted); tracebacks are for bugs only.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

from vaekit import __version__
from vaekit.cli.common import Parser
from vaekit.cli.compare import add_compare_parser
from vaekit.cli.data import add_data_parser
from vaekit.cli.evaluate import add_evaluate_parser, add_plot_parser
from vaekit.cli.explore import add_explore_parser
from vaekit.cli.export import add_export_parser
from vaekit.cli.report import add_report_parser
from vaekit.cli.sample import add_sample_parser
from vaekit.cli.score import add_score_parser
from vaekit.cli.sweep import add_sweep_parser
from vaekit.cli.train import add_train_parser
from vaekit.cli.use import add_use_parsers
from vaekit.config import ConfigError
from vaekit.errors import VaekitError
from vaekit.interrupt import ctrl_c_raises
from vaekit.text import printable

# Images larger than this a side (set by --image-size) are what runs out of memory first: the data, not the
# model, is then what to change.
_LARGE_IMAGE = 256


def build_parser() -> Parser:
    parser = Parser(prog="vaekit", description="Variational auto-encoders: train, evaluate, plot, explore.")
    parser.add_argument("--version", action="version", version=f"vaekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_plot_parser(sub)
    add_data_parser(sub)
    add_explore_parser(sub)
    add_report_parser(sub)
    add_compare_parser(sub)
    add_export_parser(sub)
    add_use_parsers(sub)
    add_sample_parser(sub)
    add_score_parser(sub)
    add_sweep_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"vaekit {args.command}"
    try:
        with ctrl_c_raises():  # also when started with SIGINT ignored (a background job)
            return int(args.func(args) or 0)
    except (ConfigError, VaekitError, *_data_errors()) as e:
        code = getattr(e, "exit_code", 2)
        message = " ".join(printable(e).split())  # always one line, file names that are not UTF-8 as \xNN
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
        size = getattr(args, "image_size", None)
        if isinstance(size, int) and size > _LARGE_IMAGE:
            print(f"{prog}: error: out of memory{reason}: {size}x{size} images (--image-size {size}) are too large "
                  f"to train on with this machine's memory; pass a smaller --image-size (such as 64 to "
                  f"{_LARGE_IMAGE})", file=sys.stderr)
            return 2
        print(f"{prog}: error: out of memory{reason}; the sizes asked for do not fit this machine: try a "
              "smaller model (--hidden, --zdim), --batch-size or --samples", file=sys.stderr)
        return 1


def _data_errors() -> tuple[type[Exception], ...]:
    """The data layer's error class, once a command has loaded it (``vaekit --version`` never does)."""
    errors = sys.modules.get("vaekit.data.errors")
    return (errors.DataError,) if errors is not None else ()


def _out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is memory exhaustion: Python's, the CPU allocator's or a GPU's."""
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return isinstance(e, MemoryError) or (oom is not None and isinstance(e, oom)) or \
        "can't allocate memory" in str(e) or "out of memory" in str(e).lower()


if __name__ == "__main__":
    sys.exit(main())
