"""``vaekit explore``: write a run's latent explorer page, or serve it on localhost until stopped.

Serving stops on SIGINT (Ctrl-C) and SIGTERM whatever the disposition the process inherited: a shell
starts background jobs with SIGINT ignored, and a server that keeps that disposition cannot be stopped
but by force. The exit status is then 128 plus the signal's number (130, 143), as a shell reports it.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from vaekit.artifacts import EXPLORER
from vaekit.cli.common import DATA_DIR_HELP
from vaekit.text import printable

DEFAULT_PORT = 8765
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Stop(BaseException):
    """Raised in the main thread by a stop signal's handler, out of ``serve_forever``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    for s in STOP_SIGNALS:  # one stop is enough: a second Ctrl-C while stopping must not break the clean exit
        signal.signal(s, signal.SIG_IGN)
    raise _Stop(signum)


def serve(page: bytes, port: int = DEFAULT_PORT, open_browser: bool = False, decoder: Any = None,
          encoder: Any = None) -> int:
    """Serve ``page`` on localhost until SIGINT or SIGTERM; returns the exit status (128 + the signal).

    The handlers are installed for the time of serving only (the main thread's previous ones come back
    afterwards), and replace an inherited SIG_IGN: that is what makes Ctrl-C work in a background job.
    """
    import webbrowser

    from vaekit.artifacts.explorer import make_server

    server = make_server(page, port, decoder=decoder, encoder=encoder)
    previous = {s: signal.signal(s, _raise_stop) for s in STOP_SIGNALS}
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        print(printable(f"serving the explorer at {url} (Ctrl-C to stop)"), flush=True)
        if open_browser:
            webbrowser.open(url)
        server.serve_forever()
    except _Stop as stop:
        print(f"vaekit explore: stopped by {signal.Signals(stop.signum).name}", file=sys.stderr, flush=True)
        return 128 + stop.signum
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        server.server_close()
    return 0


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return value


def add_explore_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``explore`` subcommand."""
    p = sub.add_parser("explore", help="write the interactive latent explorer page of a run",
                       description="Write RUN/explorer.html: one self-contained page (no server, no network) "
                                   "with the decoder running in the browser over the latent plane, and the encoder "
                                   "for the image files you drop on it.")
    p.add_argument("run", help="run folder written by vaekit train")
    p.add_argument("--out", help=f"file to write (default RUN/{EXPLORER})")
    p.add_argument("--serve", action="store_true",
                   help="serve the page on 127.0.0.1 and print its address instead of writing it (Ctrl-C stops)")
    p.add_argument("--port", type=_port, default=None, help=f"port for --serve (default {DEFAULT_PORT}; 0: any free)")
    p.add_argument("--open", action="store_true", help="open the page in a web browser")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--device", default="cpu", help="device to compute the test set's latent means on (default cpu)")
    p.set_defaults(func=cmd_explore)
    return p


def cmd_explore(args: argparse.Namespace) -> int:
    """Write (or serve) the page through the artifacts stage; with --out or --serve, the same page elsewhere."""
    import webbrowser

    from vaekit.artifacts import load_inputs, write_artifacts
    from vaekit.artifacts.explorer import (
        ExplorerError,
        build_explorer,
        remote_decoder,
        remote_note,
        runs_in_page,
        torch_decoder,
        torch_encoder,
    )
    from vaekit.run import read_config, write_bytes

    if args.port is not None and not args.serve:
        raise ExplorerError("--port needs --serve")
    if not args.serve and args.out is None:
        path = write_artifacts(args.run, which=("explorer",), data_dir=args.data_dir, device=args.device)[0]
        config = read_config(Path(args.run))[0]  # the model the page was written for, from its config alone
    else:
        run, splits = load_inputs(args.run, data_dir=args.data_dir, device=args.device)
        page = build_explorer(run, splits).encode("utf-8")
        model, config = run.model, run.model_config
        in_page = runs_in_page(config)
        if args.out is not None:
            write_bytes(args.out, page)
        if args.serve:
            decoder, encoder = (None, None) if in_page else (torch_decoder(model), torch_encoder(model))
            if not in_page:
                print(f"vaekit explore: the {remote_decoder(config)} and the encoder run in PyTorch behind this "
                      "server", file=sys.stderr)
            return serve(page, DEFAULT_PORT if args.port is None else args.port, args.open, decoder, encoder)
        path = Path(args.out)
    if not runs_in_page(config):
        print(printable(f"vaekit explore: {remote_note(args.run, config)}"), file=sys.stderr)
    print(printable(path))
    if args.open:
        webbrowser.open(path.resolve().as_uri())
    return 0
