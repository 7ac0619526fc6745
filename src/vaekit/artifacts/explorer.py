"""The latent explorer: one self-contained HTML page that runs a run's decoder and encoder in the browser.

With zdim 2 every point of the latent plane decodes to an image; a static grid shows that once, the page
lets you move through the space, and images the user drops on it are encoded to points of that space.
Everything it needs is embedded in the file (both networks' weights as base64 little-endian float32, the
test set's posterior means and labels as JSON), so it works from disk with no server and no network. The
decoder and the encoder are described layer by layer from the model's ``nn.Sequential`` bodies, by the same
code, rather than from assumed sizes, so every preset (MLP or convolutional), image size, latent size and
activation runs in the page exactly as in PyTorch (including the seed preset's missing activation between
its first two layers, the conv presets' strided and transposed convolutions, nearest upsampling and residual
blocks).
:func:`make_server` serves a page from memory on localhost (``vaekit explore --serve``), with PyTorch
decoding and encoding behind it for a model the page cannot run.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vaekit import run as runs
from vaekit.artifacts import EXPLORER
from vaekit.artifacts.figures import label_classes
from vaekit.config import ModelConfig
from vaekit.errors import VaekitError
from vaekit.model import VAE
from vaekit.model.conv import Residual, ToImage, ToRows
from vaekit.text import printable
from vaekit.use.latent import latent_means

MAX_POINTS = 10_000  # test means embedded in the page (MNIST's whole test set)
DECODE_PATH = "/decode"  # where `vaekit explore --serve` decodes latents in PyTorch for a page that cannot
MAX_DECODE_BODY = 1 << 20  # bytes of one decode request: a latent as JSON, far below this
ENCODE_PATH = "/encode"  # where it encodes one image the page prepared, for the same pages
MAX_ENCODE_BODY = 16 << 20  # bytes of one encode request: a 256x256 colour image as JSON takes about 4 MB
_NO_REQUESTS = "default-src 'none';"  # the page's content policy, which forbids every request


class ExplorerError(VaekitError):
    """The explorer cannot be built or served (an unsupported layer, a port in use)."""


_ACTIVATION_NAMES: dict[type, str] = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.SiLU: "silu", nn.Sigmoid: "sigmoid",
                                      nn.Identity: "identity"}
SUPPORTED = ("Linear, Unflatten, Flatten, Conv2d, ConvTranspose2d (zero padding, no groups or dilation), "
             "Upsample (nearest), Residual (of these), ToImage, ToRows, ELU, ReLU, LeakyReLU, Tanh, GELU, SiLU, "
             "Sigmoid")


class _Weights:
    """The networks' parameters as one little-endian float32 buffer, each array referred to by its offset."""

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.offset = 0

    def add(self, t: torch.Tensor | np.ndarray) -> int:
        arr = t.detach().to("cpu", torch.float32).numpy() if isinstance(t, torch.Tensor) else t
        arr = np.ascontiguousarray(arr, dtype="<f4").ravel()
        self.chunks.append(arr)
        start, self.offset = self.offset, self.offset + arr.size
        return start

    def tobytes(self) -> bytes:
        return np.concatenate(self.chunks).tobytes() if self.chunks else b""


def _activation(module: nn.Module) -> dict[str, Any] | None:
    """An activation's description (with its own parameters), or None for a module that is not one."""
    if isinstance(module, nn.ELU):
        return {"type": "elu", "alpha": float(module.alpha)}
    if isinstance(module, nn.LeakyReLU):
        return {"type": "leaky_relu", "negative_slope": float(module.negative_slope)}
    if isinstance(module, nn.GELU):
        return {"type": "gelu", "approximate": str(module.approximate)}
    name = _ACTIVATION_NAMES.get(type(module))
    return {"type": name} if name is not None else None


def _conv(module: nn.Conv2d | nn.ConvTranspose2d, shape: tuple[int, ...], weights: _Weights,
          part: str = "decoder") -> dict[str, Any]:
    """A 2-d convolution or transposed convolution of an image of ``shape`` (C, H, W), as the page runs it.

    The weight goes into the buffer as (out channels, kernel rows, kernel columns, in channels) for both
    kinds (PyTorch stores a transposed convolution's as (in, out, rows, columns)): the page's inner loop
    then runs along one input pixel's channels, which lie next to each other in its channels-last images.
    """
    transposed = isinstance(module, nn.ConvTranspose2d)
    name = type(module).__name__
    if (isinstance(module.padding, str) or module.groups != 1 or tuple(module.dilation) != (1, 1)
            or module.padding_mode != "zeros"):
        raise ExplorerError(f"the {part} has a {name} with groups, dilation or padding the explorer page cannot "
                            "run (it runs numeric zero padding, groups 1, dilation 1)")
    if len(shape) != 3 or shape[0] != module.in_channels:
        raise ExplorerError(f"the {part}'s {name} expects {module.in_channels} channels of an image but gets "
                            f"values of shape {shape}; the explorer cannot run it")
    (kh, kw), (sh, sw), (ph, pw) = module.kernel_size, module.stride, module.padding
    _, h, w = shape
    if transposed:
        oph, opw = module.output_padding
        size = [(h - 1) * sh - 2 * ph + kh + oph, (w - 1) * sw - 2 * pw + kw + opw]
        wt = module.weight.detach().permute(1, 2, 3, 0)
    else:
        size = [(h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1]
        wt = module.weight.detach().permute(0, 2, 3, 1)
    if min(size) < 1:
        raise ExplorerError(f"the {part}'s {name} makes an empty image from {shape}")
    bias = module.bias if module.bias is not None else torch.zeros(module.out_channels)
    return {"type": "conv_transpose2d" if transposed else "conv2d", "in": module.in_channels,
            "out": module.out_channels, "kernel": [kh, kw], "stride": [sh, sw], "padding": [ph, pw],
            "inSize": [h, w], "outSize": size, "w": weights.add(wt), "b": weights.add(bias)}


def _upsample(module: nn.Upsample, shape: tuple[int, ...], part: str = "decoder") -> dict[str, Any]:
    """Nearest-neighbour upsampling of a (C, H, W) image, as the source row and column of every output pixel.

    The indices are computed by PyTorch's own kernel on an image of row (column) numbers, so the page copies
    exactly the pixels PyTorch copies, whatever rounding its scale factors use for odd sizes.
    """
    if module.mode != "nearest" or len(shape) != 3:
        raise ExplorerError(f"the {part} has an Upsample ({module.mode}) of values of shape {shape}; the explorer "
                            "runs only nearest-neighbour upsampling of an image")
    c, h, w = shape
    grid = torch.stack(torch.meshgrid(torch.arange(h, dtype=torch.float64),
                                      torch.arange(w, dtype=torch.float64), indexing="ij"))
    src = module(grid.unsqueeze(0))[0]
    rows, cols = src[0, :, 0].long().tolist(), src[1, 0, :].long().tolist()
    return {"type": "upsample_nearest", "channels": c, "inSize": [h, w], "outSize": [len(rows), len(cols)],
            "rows": rows, "cols": cols}


def _reshape(module: nn.Module, shape: tuple[int, ...], part: str) -> tuple[dict[str, Any], tuple[int, ...]] | None:
    """A module that only lays values out anew (between a row and a (C, H, W) image), or None for another.

    The page keeps images channels last, as the data are stored: ``to_image`` (a row of the data to an
    image) and ``to_rows`` (back) cost nothing there, while ``unflatten`` and ``flatten`` reorder between
    that and PyTorch's (C, H, W) order.
    """
    if isinstance(module, ToImage):
        h, w, c = module.shape
        if shape != (h * w * c,):
            raise ExplorerError(f"the {part} lays {shape} out as a {h}x{w}x{c} image; the explorer cannot run it")
        return {"type": "to_image"}, (c, h, w)
    if isinstance(module, (ToRows, nn.Flatten)):
        if len(shape) != 3 or (isinstance(module, nn.Flatten) and (module.start_dim, module.end_dim) != (1, -1)):
            raise ExplorerError(f"the {part} flattens {shape}, which is not one image; the explorer cannot run it")
        desc = {"type": "to_rows"} if isinstance(module, ToRows) else {"type": "flatten", "shape": list(shape)}
        return desc, (math.prod(shape),)
    if isinstance(module, nn.Unflatten):
        size = tuple(int(s) for s in module.unflattened_size)
        if module.dim not in (-1, 1) or len(size) != 3 or len(shape) != 1 or math.prod(size) != shape[0]:
            raise ExplorerError(f"the {part} unflattens {shape} into {size}; the explorer page runs only the "
                                "unflattening of a row of values into one (C, H, W) image")
        return {"type": "unflatten", "shape": list(size)}, size
    return None


def _residual(module: Residual, shape: tuple[int, ...], weights: _Weights, part: str) -> dict[str, Any]:
    """A residual block as the layers of its body, which the page runs on a copy of the image and adds back."""
    body: list[dict[str, Any]] = []
    out = shape
    for inner in module.body:
        layer, out = _layer(inner, out, weights, part)
        body.append(layer)
    if out != shape:
        raise ExplorerError(f"the {part} has a residual block whose body maps {shape} to {out}; the sum needs "
                            "the same shape")
    return {"type": "residual", "size": math.prod(shape), "layers": body}


def _layer(module: nn.Module, shape: tuple[int, ...], weights: _Weights,
           part: str = "decoder") -> tuple[dict[str, Any], tuple[int, ...]]:
    """One module of the ``part`` network and the shape of what it outputs: (n,) values or a (C, H, W) image."""
    act = _activation(module)
    if act is not None:
        return act, shape
    reshaped = _reshape(module, shape, part)
    if reshaped is not None:
        return reshaped
    if isinstance(module, nn.Linear):
        if shape != (module.in_features,):
            raise ExplorerError(f"the {part}'s Linear layer expects {module.in_features} values but gets {shape}")
        bias = module.bias if module.bias is not None else torch.zeros(module.out_features)
        return ({"type": "linear", "in": module.in_features, "out": module.out_features,
                 "w": weights.add(module.weight), "b": weights.add(bias)}, (module.out_features,))
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        desc = _conv(module, shape, weights, part)
        return desc, (desc["out"], *desc["outSize"])
    if isinstance(module, nn.Upsample):
        desc = _upsample(module, shape, part)
        return desc, (desc["channels"], *desc["outSize"])
    if isinstance(module, Residual):
        return _residual(module, shape, weights, part), shape
    raise ExplorerError(f"the {part} has a {type(module).__name__} layer, which the explorer page cannot run; "
                        f"supported: {SUPPORTED}")


def _network(body: nn.Sequential, n_in: int, n_out: int, part: str,
             weights: _Weights) -> list[dict[str, Any]]:
    """The layers of ``body``, a map from rows of ``n_in`` values to rows of ``n_out``, with their parameters
    added to ``weights``. Its output must be a row in the data's channels-last layout (``linear`` or
    ``to_rows``): a ``flatten`` of an image would hand the page its values in (C, H, W) order."""
    layers: list[dict[str, Any]] = []
    shape: tuple[int, ...] = (n_in,)
    for module in body:
        layer, shape = _layer(module, shape, weights, part)
        layers.append(layer)
    if shape != (n_out,) or not layers or layers[-1]["type"] not in ("linear", "to_rows"):
        how = " (it ends in a Flatten, in (C, H, W) order)" if layers and layers[-1]["type"] == "flatten" else ""
        raise ExplorerError(f"the {part} does not map {n_in} values to {n_out} values (its output has shape "
                            f"{shape}){how}; the explorer cannot run it")
    return layers


def _decoder(model: VAE, weights: _Weights) -> list[dict[str, Any]]:
    npix = model.config.input_dim // model.channels * model.params_per_pixel
    return _network(model.decoder, model.zdim, npix, "decoder", weights)


def _encoder(model: VAE, weights: _Weights) -> list[dict[str, Any]]:
    return _network(model.encoder, model.config.input_dim, 2 * model.zdim, "encoder", weights)


def decoder_layers(model: VAE) -> tuple[list[dict[str, Any]], bytes]:
    """The decoder as layer descriptions for the page, and one float32 buffer holding all their parameters.

    Linear layers refer to their weight (row-major, out x in, as PyTorch stores it) and bias by offset
    into the buffer; convolutions to theirs as :func:`_conv` lays them out, with the sizes of the images
    they read and write; activations carry their own parameters (ELU's alpha, LeakyReLU's slope, GELU's
    approximation) so the page computes what PyTorch computes. The page keeps images channels last, so
    ``unflatten`` reorders a row of (C, H, W) values and ``to_rows`` (channels last, flattened) is free. The
    decoder's output is ``model.params_per_pixel`` values per pixel (see :mod:`vaekit.heads`).
    """
    weights = _Weights()
    return _decoder(model, weights), weights.tobytes()


def encoder_layers(model: VAE) -> tuple[list[dict[str, Any]], bytes]:
    """The encoder as :func:`decoder_layers` describes the decoder: from a row of the data (H*W*C values in
    [0, 1], channels last) to the ``2 * zdim`` values whose first half is the posterior mean (``VAE.encode``).
    The conv encoders' ``to_image`` is free in the page and their ``flatten`` reorders to (C, H, W)."""
    weights = _Weights()
    return _encoder(model, weights), weights.tobytes()


def plane_range(means: np.ndarray) -> float:
    """Half-width of the plane: the prior's +-3 or, when wider, what holds 99.5% of the test means."""
    if means.size == 0:
        return 3.0
    q = float(np.quantile(np.abs(means), 0.995))
    return max(3.0, math.ceil(2 * q) / 2) if math.isfinite(q) else 3.0


def class_names(dataset: str | None, known: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """The names known for labels 0, 1, 2, ...: ``known`` (the data's own), else the registry's for ``dataset``."""
    from vaekit.data import DATASETS

    spec = DATASETS.get(str(dataset))
    return list(known or (spec.class_names if spec is not None else None) or ())


def runs_in_page(config: ModelConfig) -> bool:
    """Whether the page can run the decoder and encoder of a model of ``config`` itself: sequential ones (MLP,
    conv), not a hierarchy's residual passes nor a causal context's pixel-by-pixel image, which `vaekit explore
    --serve` runs in PyTorch instead. (The config says it: no model need be built to know.)"""
    return config.architecture != "hierarchical" and not config.context


def remote_decoder(config: ModelConfig) -> str:
    """What the decoder the page cannot run is, in words, for the lines that say where it runs instead."""
    return "hierarchical decoder" if config.architecture == "hierarchical" else "pixel-by-pixel decoder (--context)"


def remote_note(run_dir: str | os.PathLike, config: ModelConfig) -> str:
    """The one line that says where a decoder and encoder the page cannot run are run."""
    how = (" (the first group's latent, the others at their prior means)" if config.architecture == "hierarchical"
           else " (each pixel the mean given the ones before it)")
    return (f"The {remote_decoder(config)} and the encoder of this run cannot run inside the page: `vaekit explore "
            f"{run_dir} --serve` serves them, decoding and encoding in PyTorch{how}.")


def explorer_html(model: VAE, means: np.ndarray, labels: np.ndarray, *, title: str = "", meta: str = "",
                  dataset: str | None = None, classes: list[str] | tuple[str, ...] | None = None,
                  note: str = "") -> str:
    """The page for ``model`` with ``means`` (N, zdim) and their ``labels`` (N,) drawn on the plane.

    The decoder and the encoder share one buffer of weights. Networks the page cannot run (:func:`runs_in_page`)
    are left out: the page posts each latent to ``DECODE_PATH`` and each of the user's images to
    ``ENCODE_PATH`` of the server that serves it, and from disk shows ``note`` instead.
    """
    buffer = _Weights()
    layers, encoder = (_decoder(model, buffer), _encoder(model, buffer)) if runs_in_page(model.config) else ([], [])
    means = np.asarray(means, dtype=np.float64)[:MAX_POINTS]
    labels = np.asarray(labels).astype(np.int64)[:MAX_POINTS]
    if means.ndim != 2 or means.shape[1] != model.zdim or len(means) != len(labels):
        raise ExplorerError(f"expected ({len(labels)}, {model.zdim}) latent means, got {means.shape}")
    # Each point's label as an index into the class names: identifiers in the millions become their rank.
    index, names = label_classes(labels, class_names(dataset, classes))
    data = {
        "format": 1,
        "title": printable(title),
        "meta": printable(meta),
        "zdim": model.zdim,
        "imageShape": [int(s) for s in model.config.image_shape],
        "layers": layers,
        "encoder": encoder,
        # What the decoder's outputs are: the page computes the displayed image from them as VAE.mean_image does.
        "head": {"type": model.config.head, "perPixel": model.params_per_pixel, "mixtures": model.config.mixtures},
        "weights": base64.b64encode(buffer.tobytes()).decode("ascii"),
        "range": plane_range(means),
        "classes": names,
        # 4 decimals is far finer than a pixel of the plane and keeps the page small
        "points": {"means": [round(float(v), 4) for v in means.ravel()], "labels": index.tolist()},
    }
    if not runs_in_page(model.config):
        data.update(decodeUrl=DECODE_PATH, encodeUrl=ENCODE_PATH, remoteNote=printable(note))
    # "<" only occurs inside JSON strings, where \u003c is the same character; the page's script block
    # then can never be closed early by a title such as "</script>".
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    template = (resources.files("vaekit") / "assets" / "explorer.html").read_text(encoding="utf-8")
    if not runs_in_page(model.config):  # its requests go to the server that served it, and nowhere else
        template = template.replace(_NO_REQUESTS, _NO_REQUESTS + " connect-src 'self';", 1)
    page_title = html.escape(printable(f"vaekit latent explorer: {title}" if title else "vaekit latent explorer"))
    return template.replace("__VAEKIT_TITLE__", page_title, 1).replace("__VAEKIT_DATA__", payload, 1)


def _meta_line(run: runs.Run, n_points: int) -> str:
    """One line under the page's title: what was trained on what, for how long, and how well."""
    cfg, summary = run.model.config, run.summary
    parts = [f"dataset {run.data.get('dataset') or summary.get('dataset', '?')}",
             f"model {cfg.preset} ({cfg.activation}), zdim {cfg.zdim}"]
    epochs = summary.get("epochs")
    if isinstance(epochs, int):
        parts.append(f"{epochs} epoch{'' if epochs == 1 else 's'}")
    loss = summary.get("test_loss")
    if isinstance(loss, (int, float)) and not isinstance(loss, bool):
        parts.append(f"test loss {loss:.2f} nats/image")
    parts.append(f"{n_points} test points")
    return " \u00b7 ".join(parts)


def build_explorer(run: runs.Run, splits: Any) -> str:
    """The explorer page of a loaded run, with the posterior means of (up to ``MAX_POINTS``) test images.

    ``splits`` needs only ``test_images``, ``test_labels`` and ``name`` (for the class names).
    """
    model = run.model.eval()
    images, labels = splits.test_images[:MAX_POINTS], splits.test_labels[:MAX_POINTS]
    means = latent_means(model, images)
    return explorer_html(model, means, labels, title=run.path.resolve().name, meta=_meta_line(run, len(means)),
                         dataset=splits.name, classes=getattr(splits, "class_names", None),
                         note=remote_note(run.path, run.model.config))


def write_explorer(run: runs.Run, splits: Any, out: str | os.PathLike | None = None) -> Path:
    """Write the explorer page (default ``RUN/explorer.html``) atomically; returns its path."""
    path = Path(out) if out is not None else run.path / EXPLORER
    runs.write_bytes(path, build_explorer(run, splits).encode("utf-8"))
    return path


# ---------------------------------------------------------------------------------------------- serving


class _Handler(BaseHTTPRequestHandler):
    """Answers ``/`` (and ``/index.html``, ``/explorer.html``) with the page; with a ``decoder``, POSTs to
    ``DECODE_PATH`` with the decoded means of the posted latent, and with an ``encoder``, POSTs to
    ``ENCODE_PATH`` with the posterior mean of the posted image; everything else is 404. A refused POST
    is answered with one line of JSON, ``{"error": "..."}``, that the page shows as it is."""

    page = b""
    decoder: Any = None  # latent (list of floats) -> decoder means (list of floats), or None
    encoder: Any = None  # image (list of floats in [0, 1]) -> posterior mean (list of floats), or None

    def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
        route = {DECODE_PATH: (self.decoder, MAX_DECODE_BODY), ENCODE_PATH: (self.encoder, MAX_ENCODE_BODY)}
        answer, limit = route.get(self.path, (None, 0))
        if answer is None:
            self._json(404, {"error": f"this server answers no POST to {printable(self.path)[:80]}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= limit:
            self._json(413 if length > limit else 400,
                       {"error": f"a request to {self.path} must have a body of 1 to {limit} bytes"})
            return
        try:
            result = answer(json.loads(self.rfile.read(length)))
        except (ValueError, TypeError) as e:
            self._json(400, {"error": " ".join(str(e).split())})
            return
        self._json(200, result)

    def _json(self, status: int, value: Any) -> None:
        body = json.dumps(value, allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _answer(self, body: bool) -> None:
        if self.path.split("?", 1)[0] not in ("/", "/index.html", "/" + EXPLORER):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.page)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(self.page)

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        self._answer(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # a quiet server: the command prints its address and nothing else


class PageServer(ThreadingHTTPServer):
    """A threaded HTTP server for one page held in memory, so nothing else on the disk is ever exposed."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer is routine (a closed tab): no traceback, and the server goes on."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return
        print(f"vaekit: warning: a request from {client_address[0]} failed: {error!r}", file=sys.stderr,
              flush=True)


def torch_decoder(model: VAE) -> Any:
    """A function from one latent (a list of ``model.zdim`` finite numbers) to the decoder's means, in PyTorch."""
    model = model.eval()

    def decode(z: Any) -> list[float]:
        if (not isinstance(z, list) or len(z) != model.zdim
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in z)):
            raise ValueError(f"expected a list of {model.zdim} finite numbers")
        param = next(model.parameters())
        with torch.inference_mode():
            out = model.mean_image(model.decode(torch.tensor([z], dtype=param.dtype, device=param.device)))
        return [round(v, 5) for v in out[0].tolist()]

    return decode


def torch_encoder(model: VAE) -> Any:
    """A function from one image (a list of the ``input_dim`` values the model reads, in [0, 1], channels last:
    an image as the page prepares it) to its posterior mean, ``model.encode``'s first output, in PyTorch."""
    model = model.eval()
    n = model.config.input_dim

    def encode(x: Any) -> list[float]:
        if (not isinstance(x, list) or len(x) != n
                or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in x)):
            shape = "x".join(str(s) for s in model.config.image_shape)
            raise ValueError(f"expected a list of {n} pixel values in [0, 1] (one {shape} image, channels last)")
        param = next(model.parameters())
        with torch.inference_mode():
            mu, _ = model.encode(torch.tensor([x], dtype=param.dtype, device=param.device))
        return [float(v) for v in mu[0].tolist()]

    return encode


def make_server(page: bytes, port: int, host: str = "127.0.0.1", decoder: Any = None,
                encoder: Any = None) -> PageServer:
    """A server on ``host:port`` answering with ``page``; port 0 picks a free one. ``decoder``
    (:func:`torch_decoder`) and ``encoder`` (:func:`torch_encoder`) answer the page's decode and encode
    requests when its model does not run in the page.

    Run it with ``serve_forever()`` (in a thread of its own to keep a notebook responsive); it answers
    until ``shutdown()``.
    """
    handler = type("PageHandler", (_Handler,), {"page": page, "decoder": staticmethod(decoder) if decoder else None,
                                                 "encoder": staticmethod(encoder) if encoder else None})
    try:
        return PageServer((host, port), handler)
    except OSError as e:
        raise ExplorerError(f"cannot serve on {host}:{port}: {e.strerror or e}; choose another --port "
                            "(0 picks a free one)") from e
