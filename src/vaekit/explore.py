"""The latent explorer: one self-contained HTML page that runs a run's decoder in the browser.

With zdim 2 every point of the latent plane decodes to an image; a static grid shows that once, the page
lets you move through the space. Everything it needs is embedded in the file (the decoder's weights as
base64 little-endian float32, the test set's posterior means and labels as JSON), so it works from disk
with no server and no network. The decoder is described layer by layer from the model's ``decoder``
``nn.Sequential`` rather than from assumed sizes, so every preset, latent size and activation runs in the
page exactly as in PyTorch (including the seed preset's missing activation between its first two layers).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import sys
import webbrowser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import runs, viz
from .errors import RunFolderError, VaekitError
from .models import VAE

EXPLORER = "explorer.html"
MAX_POINTS = 10_000  # test means embedded in the page (MNIST's whole test set)
DEFAULT_PORT = 8765

# Label names of the known datasets; anything else is shown by its number.
CLASS_NAMES: dict[str, list[str]] = {
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
    "kmnist": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
}


class ExplorerError(VaekitError):
    """The explorer cannot be built or served (an unsupported layer, a port in use)."""


def decoder_layers(model: VAE) -> tuple[list[dict[str, Any]], bytes]:
    """The decoder as layer descriptions for the page, and one float32 buffer holding all their parameters.

    Linear layers refer to their weight (row-major, out x in, as PyTorch stores it) and bias by offset
    into the buffer; activations carry their own parameters (ELU's alpha, LeakyReLU's slope, GELU's
    approximation) so the page computes what PyTorch computes.
    """
    layers: list[dict[str, Any]] = []
    chunks: list[np.ndarray] = []
    offset = 0

    def add(t: torch.Tensor) -> int:
        nonlocal offset
        arr = t.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").ravel()
        chunks.append(arr)
        start, offset = offset, offset + arr.size
        return start

    for module in model.decoder:
        if isinstance(module, nn.Linear):
            w = add(module.weight)
            bias = module.bias if module.bias is not None else torch.zeros(module.out_features)
            layers.append({"type": "linear", "in": module.in_features, "out": module.out_features, "w": w,
                           "b": add(bias)})
        elif isinstance(module, nn.ELU):
            layers.append({"type": "elu", "alpha": float(module.alpha)})
        elif isinstance(module, nn.LeakyReLU):
            layers.append({"type": "leaky_relu", "negative_slope": float(module.negative_slope)})
        elif isinstance(module, nn.GELU):
            layers.append({"type": "gelu", "approximate": str(module.approximate)})
        elif isinstance(module, (nn.ReLU, nn.Tanh, nn.SiLU, nn.Sigmoid, nn.Identity)):
            layers.append({"type": {nn.ReLU: "relu", nn.Tanh: "tanh", nn.SiLU: "silu", nn.Sigmoid: "sigmoid",
                                    nn.Identity: "identity"}[type(module)]})
        else:
            raise ExplorerError(f"the decoder has a {type(module).__name__} layer, which the explorer page "
                                "cannot run; supported: Linear, ELU, ReLU, LeakyReLU, Tanh, GELU, SiLU, Sigmoid")
    linear = [la for la in layers if la["type"] == "linear"]
    npix = model.config.input_dim
    if not linear or layers[-1]["type"] != "linear" or linear[0]["in"] != model.zdim or linear[-1]["out"] != npix:
        raise ExplorerError(f"the decoder does not map {model.zdim} latent dimensions to {npix} pixel logits "
                            "through linear layers; the explorer cannot run it")
    return layers, np.concatenate(chunks).tobytes()


def plane_range(means: np.ndarray) -> float:
    """Half-width of the plane: the prior's +-3 or, when wider, what holds 99.5% of the test means."""
    if means.size == 0:
        return 3.0
    q = float(np.quantile(np.abs(means), 0.995))
    return max(3.0, math.ceil(2 * q) / 2) if math.isfinite(q) else 3.0


def class_names(dataset: str | None, labels: np.ndarray) -> list[str]:
    n = int(labels.max()) + 1 if labels.size else 0
    known = CLASS_NAMES.get(str(dataset), [])
    return [known[i] if i < len(known) else str(i) for i in range(max(n, len(known)))]


def explorer_html(model: VAE, means: np.ndarray, labels: np.ndarray, *, title: str = "", meta: str = "",
                  dataset: str | None = None) -> str:
    """The page for ``model`` with ``means`` (N, zdim) and their ``labels`` (N,) drawn on the plane."""
    layers, weights = decoder_layers(model)
    means = np.asarray(means, dtype=np.float64)[:MAX_POINTS]
    labels = np.asarray(labels).astype(np.int64)[:MAX_POINTS]
    if means.ndim != 2 or means.shape[1] != model.zdim or len(means) != len(labels):
        raise ExplorerError(f"expected ({len(labels)}, {model.zdim}) latent means, got {means.shape}")
    data = {
        "format": 1,
        "title": title,
        "meta": meta,
        "zdim": model.zdim,
        "imageShape": [int(s) for s in model.config.image_shape],
        "layers": layers,
        "weights": base64.b64encode(weights).decode("ascii"),
        "range": plane_range(means),
        "classes": class_names(dataset, labels),
        # 4 decimals is far finer than a pixel of the plane and keeps the page small
        "points": {"means": [round(float(v), 4) for v in means.ravel()], "labels": [int(v) for v in labels]},
    }
    # "<" only occurs inside JSON strings, where \u003c is the same character; the page's script block
    # then can never be closed early by a title such as "</script>".
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    template = (resources.files("vaekit") / "assets" / "explorer.html").read_text(encoding="utf-8")
    page_title = html.escape(f"vaekit latent explorer: {title}" if title else "vaekit latent explorer")
    return template.replace("__VAEKIT_TITLE__", page_title, 1).replace("__VAEKIT_DATA__", payload, 1)


def _meta_line(model: VAE, summary: dict[str, Any], data: dict[str, Any], n_points: int) -> str:
    cfg = model.config
    parts = [f"dataset {data.get('dataset') or summary.get('dataset', '?')}",
             f"model {cfg.preset} ({cfg.activation}), zdim {cfg.zdim}"]
    if "epochs" in summary:
        parts.append(f"{summary['epochs']} epoch{'' if summary['epochs'] == 1 else 's'}")
    if isinstance(summary.get("test_loss"), (int, float)):
        parts.append(f"test loss {summary['test_loss']:.2f} nats/image")
    parts.append(f"{n_points} test points")
    return " \u00b7 ".join(parts)


def build_explorer(run_dir: str | os.PathLike, *, model: VAE | None = None, splits: Any = None,
                   data_dir: str | os.PathLike | None = None) -> str:
    """The explorer page of a run folder.

    ``model`` and ``splits`` skip reloading what the caller already has in memory (training passes
    them); otherwise the weights come from the folder and the data is found as training found it.
    """
    run_dir = Path(run_dir)
    if model is None or splits is None:
        from .api import load_run_data  # here: the api module imports training, which imports this module

        run = runs.load_run(run_dir)
        model = run.model if model is None else model
        splits = load_run_data(run, data_dir) if splits is None else splits
    _, _, data = runs.read_config(run_dir)
    summary_path = run_dir / runs.SUMMARY
    summary = runs.read_json(summary_path) if summary_path.exists() else {}
    summary = summary if isinstance(summary, dict) else {}
    model.eval()
    images, labels = splits.test_images[:MAX_POINTS], splits.test_labels[:MAX_POINTS]
    means = viz.latent_means(model, images)
    return explorer_html(model, means, labels, title=run_dir.resolve().name,
                         meta=_meta_line(model, summary, data, len(means)), dataset=splits.name)


def write_explorer(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, **kw: Any) -> Path:
    """Write the explorer page (default ``RUN/explorer.html``) atomically; returns its path."""
    path = Path(out) if out is not None else Path(run_dir) / EXPLORER
    runs.write_bytes(path, build_explorer(run_dir, **kw).encode("utf-8"))
    return path


# ---------------------------------------------------------------------------------------------- serving


def make_server(page: bytes, port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """An HTTP server on ``host:port`` answering ``/`` (and ``/explorer.html``) with ``page``; port 0 picks one.

    The page is served from memory, so nothing else on the disk is ever exposed.
    """

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: bool) -> None:
            if self.path.split("?", 1)[0] not in ("/", "/index.html", "/" + EXPLORER):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if body:
                self.wfile.write(page)

        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            self._answer(True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(False)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # a quiet server: the command prints its address and nothing else

    try:
        return ThreadingHTTPServer((host, port), Handler)
    except OSError as e:
        raise ExplorerError(f"cannot serve on {host}:{port}: {e.strerror or e}; choose another --port "
                            "(0 picks a free one)") from e


def serve(page: bytes, port: int = DEFAULT_PORT, open_browser: bool = False) -> None:
    """Serve ``page`` on localhost until Ctrl-C, printing the address first."""
    server = make_server(page, port)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    print(f"serving the explorer at {url} (Ctrl-C to stop)", flush=True)
    if open_browser:
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()


# ---------------------------------------------------------------------------------------------- command line


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return value


def add_explore_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("explore", help="write the interactive latent explorer page of a run",
                       description="Write RUN/explorer.html: one self-contained page (no server, no network) "
                                   "with the decoder running in the browser over the latent plane.")
    p.add_argument("run", help="run folder written by vaekit train")
    p.add_argument("--out", help=f"file to write (default RUN/{EXPLORER})")
    p.add_argument("--serve", action="store_true",
                   help="serve the page on 127.0.0.1 and print its address instead of writing it")
    p.add_argument("--port", type=_port, default=None, help=f"port for --serve (default {DEFAULT_PORT}; 0: any free)")
    p.add_argument("--open", action="store_true", help="open the page in a web browser")
    p.add_argument("--data-dir", help="folder with the dataset's IDX files, if not where training found them")
    p.set_defaults(func=cmd_explore)
    return p


def cmd_explore(args: argparse.Namespace) -> int:
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} does not exist")
    if args.port is not None and not args.serve:
        raise ExplorerError("--port needs --serve")
    if args.serve:
        page = build_explorer(run_dir, data_dir=args.data_dir).encode("utf-8")
        if args.out:
            runs.write_bytes(args.out, page)
        serve(page, DEFAULT_PORT if args.port is None else args.port, open_browser=args.open)
        return 0
    path = write_explorer(run_dir, args.out, data_dir=args.data_dir)
    print(path)
    if args.open:
        webbrowser.open(path.resolve().as_uri())
    return 0
