"""A run's encoder and decoder as ONNX files, checked against PyTorch with ONNX Runtime before they are kept.

ONNX lets a trained model run where PyTorch is not installed (ONNX Runtime in a service, a browser, a phone).
Two files, each with a dynamic batch axis:

* ``encoder.onnx``: ``x`` (batch, H*W*C) float32 rows of pixels in [0, 1], channels last, prepared as the run's
  data were -> ``mu``, ``logvar`` (batch, zdim), the posterior q(z|x) (of a hierarchy: its first group's);
* ``decoder.onnx``: ``z`` (batch, zdim) -> ``logits`` (one per sub-pixel) or, for an 8-bit head, ``params``
  (its distribution's parameters per pixel, laid out as :mod:`vaekit.heads` says), and ``image`` (batch,
  H*W*C) in [0, 1], the image to show for them (:meth:`vaekit.model.VAE.mean_image`), so no consumer has to
  reimplement a head.

Export writes into a temporary folder next to the destination and moves the files in only once ONNX Runtime
has reproduced PyTorch's outputs within ``TOLERANCE`` on a batch of one and a larger batch: a failed export
leaves nothing behind and never replaces files the user had. ``onnx.json`` and ``README.md`` in the folder
describe the inputs, outputs, input preparation and opset. The exporter is ``torch.onnx.export``'s default
(the ``torch.export``-based one), which needs the optional packages of the ``onnx`` extra.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import math
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from vaekit import __version__
from vaekit.errors import VaekitError, WriteError
from vaekit.heads import params_per_pixel
from vaekit.model import VAE
from vaekit.run import Run, check_path_length, load_run, write_bytes, write_json

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
DESCRIPTION_FILE = "onnx.json"
README_FILE = "README.md"
# ONNX Runtime must reproduce every PyTorch output to this absolute difference, or nothing is kept.
TOLERANCE = 1e-4
# The batches the check runs: one image (the dynamic axis at its smallest) and a batch of several.
CHECK_BATCHES = (1, 16)
CHECK_SEED = 0
# The optional packages export needs (the ``onnx`` extra): the model format, the exporter's translation
# library and the runtime that checks the result.
ONNX_EXTRA = "onnx"
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


class OnnxMissingError(VaekitError):
    """The optional packages of the ``onnx`` extra are not installed."""


class OnnxExportError(VaekitError):
    """The exporter could not translate a part of the model, or its result differs from PyTorch."""

    exit_code = 1


class UnexportableError(VaekitError):
    """The run's model is of a kind the exported files cannot hold (its images drawn pixel by pixel)."""


class OpsetError(VaekitError):
    """The exporter cannot write the opset asked for."""


class OutputExistsError(VaekitError):
    """The destination already holds files and ``force`` was not given."""


def require_onnx() -> ModuleType:
    """``onnxruntime`` once every package of the extra imports; else one line naming the extra to install."""
    modules = {}
    for name in ONNX_PACKAGES:
        try:
            modules[name] = importlib.import_module(name)
        except ImportError as e:
            raise OnnxMissingError(f"exporting to ONNX needs the package {name}, which is not installed: "
                                   f"install the {ONNX_EXTRA} extra (pip install 'vaekit[{ONNX_EXTRA}]')") from e
    return modules["onnxruntime"]


class _Encoder(nn.Module):
    """x -> (mu, logvar): what ``VAE.encode`` returns, as a module the exporter traces."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.encode(x)


class _Decoder(nn.Module):
    """z -> (decoder outputs, the image to show for them)."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        params = self.model.decode(z)
        return params, self.model.mean_image(params)


@dataclass
class _Part:
    """One file to export: its module, input name and example batch, and the names of its outputs."""

    file: str
    module: nn.Module
    input_name: str
    outputs: tuple[str, ...]
    inputs: Tensor  # the check's largest batch; its first rows make the smaller ones


def decoder_output_name(model: VAE) -> str:
    """``logits`` when the decoder outputs one logit per sub-pixel, ``params`` for an 8-bit head's parameters."""
    return "logits" if model.config.head == "logits" else "params"


def _parts(model: VAE) -> list[_Part]:
    """The encoder and decoder with the check's inputs: 8-bit pixel levels, and latents both from the posterior
    of those images and from the prior (where a sampler's latents come from)."""
    gen = torch.Generator().manual_seed(CHECK_SEED)
    n = max(CHECK_BATCHES)
    x = torch.randint(0, 256, (n, model.config.input_dim), generator=gen).float() / 255
    with torch.no_grad():
        mu, logvar = model.encode(x)
    half = n // 2  # the first half drawn from q(z|x) of the first images, the rest from the prior N(0, I)
    eps = torch.randn(mu.shape, generator=gen)
    z = torch.cat([mu[:half] + torch.exp(0.5 * logvar[:half]) * eps[:half], eps[half:]])
    return [_Part(ENCODER_FILE, _Encoder(model).eval(), "x", ("mu", "logvar"), x),
            _Part(DECODER_FILE, _Decoder(model).eval(), "z", (decoder_output_name(model), "image"), z)]


# The loggers of the exporter and its translation library: they warn about optional operator libraries and an
# opset they cannot convert to (with a traceback), which the export reports itself, as one line.
_EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's own warnings held back for the time of an export; what matters is raised as one line."""
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _export(part: _Part, path: Path, opset: int | None) -> None:
    """Write ``part`` to ``path`` with a dynamic batch axis; an exporter failure is one line naming the part."""
    batch = torch.export.Dim("batch")
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(part.module, (part.inputs[:2],), input_names=[part.input_name],
                                        output_names=list(part.outputs), opset_version=opset,
                                        dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
            program.save(str(path))
    except Exception as e:  # the exporter raises many kinds (torch.export, onnxscript, onnx): each is this one
        first = " ".join(str(e).split())[:200] or type(e).__name__
        raise OnnxExportError(f"the {part.file.split('.')[0]} of this model cannot be exported to ONNX"
                              f"{'' if opset is None else f' at opset {opset}'}: {first}") from e


def _max_differences(part: _Part, path: Path, onnxruntime: ModuleType) -> dict[str, float]:
    """The largest absolute difference between ONNX Runtime's and PyTorch's outputs, per output, over the
    check's batch sizes (NaN where either is not finite, which fails the check)."""
    worst = dict.fromkeys(part.outputs, 0.0)
    session = _session_call(part, path, partial(onnxruntime.InferenceSession, str(path),
                                                providers=["CPUExecutionProvider"]))
    for size in CHECK_BATCHES:
        inputs = part.inputs[:size]
        with torch.no_grad():
            expected = part.module(inputs)
        got = _session_call(part, path, partial(session.run, list(part.outputs), {part.input_name: inputs.numpy()}))
        for name, ref, out in zip(part.outputs, expected, got, strict=True):
            out_t = torch.from_numpy(out)
            if out_t.shape != ref.shape:
                raise OnnxExportError(f"{part.file} gives {name} of shape {tuple(out_t.shape)} for a batch of "
                                      f"{size}, PyTorch {tuple(ref.shape)}; nothing was kept")
            diff = (out_t.double() - ref.double()).abs().max().item()
            worst[name] = diff if math.isnan(diff) else max(worst[name], diff)
    return worst


def _session_call(part: _Part, path: Path, call: Callable[[], Any]) -> Any:
    """``call()``, loading or running the file in ONNX Runtime (the session is made once, then run per batch
    size); a file it cannot load or run is one line (an exporter asked for an old opset can write a graph that is
    not valid there)."""
    try:
        return call()
    except Exception as e:  # ONNX Runtime's errors are its own classes (InvalidGraph, Fail, ...), one per cause
        first = " ".join(str(e).replace(str(path), path.name).split())[:200] or type(e).__name__
        raise OnnxExportError(f"ONNX Runtime cannot run the exported {part.file} (opset {_opset(path)}): {first}; "
                              "nothing was kept (leave --opset out for the exporter's default)") from e


def _check_opset(path: Path, asked: int | None) -> int:
    """The opset written, which must be the one asked for: the exporter writes its lowest supported opset instead
    of an older one without saying so."""
    written = _opset(path)
    if asked is not None and written != asked:
        raise OpsetError(f"the installed ONNX exporter cannot write opset {asked} (it wrote opset {written} "
                         "instead); choose another --opset, or leave it out for the exporter's default")
    return written


def _opset(path: Path) -> int:
    """The default-domain opset a written model declares (what the exporter chose when none was asked for)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _check_destination(out: Path, run_dir: Path, force: bool) -> None:
    """A destination that is a folder with files in it is replaced only with ``force``; a file, the run folder
    (whose README.md is the run's own) or the file system's root never."""
    check_path_length(out, "--onnx")
    if not out.name:
        raise OutputExistsError(f"{out} is the file system's root; choose a folder for the ONNX files")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} is a file, not a folder; choose a folder for the ONNX files")
    if out.exists() and out.samefile(run_dir):
        raise OutputExistsError(f"{out} is the run folder itself; choose a folder of its own for the ONNX files, "
                                "such as RUN/onnx")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"{out} already holds files; pass --force to replace the exported files in it, "
                                "or choose another folder")


def _move_into(tmp: Path, out: Path) -> None:
    """The checked files into ``out``: the folder renamed into place when new, else each file replaced."""
    if not out.exists():
        os.replace(tmp, out)
        return
    for f in tmp.iterdir():
        os.replace(f, out / f.name)


def _abandon(tmp: Path, created: list[Path]) -> None:
    """Remove what a failed export wrote: its temporary folder, and the folders it made on the way to the
    destination, deepest first."""
    shutil.rmtree(tmp, ignore_errors=True)
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _cpu_model(run: Run) -> VAE:
    """The run's model on the CPU (ONNX Runtime's device here), left where it was for the caller."""
    model = run.model
    if next(model.parameters()).device.type != "cpu":
        model = copy.deepcopy(model).to("cpu")
    return model.eval()


def export_onnx(run_or_path: Run | str | os.PathLike, out_dir: str | os.PathLike, opset: int | None = None, *,
                force: bool = False) -> dict[str, Any]:
    """Write ``out_dir``/encoder.onnx, decoder.onnx, onnx.json and README.md for a run, checked with ONNX Runtime.

    ``opset`` None takes the exporter's default. Returns what onnx.json records: the opset, the files, and per
    output the largest absolute difference from PyTorch (``max_abs_diff`` overall). Raises
    :class:`OnnxMissingError` without the ``onnx`` extra, :class:`OutputExistsError` for a folder with files
    in it (unless ``force``), :class:`OpsetError` for an opset the exporter cannot write, and
    :class:`OnnxExportError` when a part cannot be exported, run, or differs by more than ``TOLERANCE``; then
    nothing is written.
    """
    onnxruntime = require_onnx()
    run = run_or_path if isinstance(run_or_path, Run) else load_run(run_or_path)
    if run.model.config.context:
        raise UnexportableError(f"{run.path} has a causal context (--context {run.model.config.context}): its "
                                "images are drawn pixel by pixel, a loop the exported decoder cannot hold; export a "
                                "run trained with --context 0")
    out = Path(os.path.abspath(out_dir))  # "." and "a/.." have a name to put a temporary folder beside
    _check_destination(out, run.path, force)
    created = [p for p in [out.parent, *out.parent.parents] if not p.exists()][::-1]
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        info = _export_checked(run, _cpu_model(run), tmp, opset, onnxruntime)
        _move_into(tmp, out)
    except OSError as e:
        _abandon(tmp, created)
        raise WriteError(f"could not write the ONNX files to {out}: {e.strerror or e}") from e
    except BaseException:
        _abandon(tmp, created)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def _export_checked(run: Run, model: VAE, folder: Path, opset: int | None, onnxruntime: ModuleType) -> dict[str, Any]:
    """Export both parts into ``folder``, check them, and describe them there; refuses a difference over the
    tolerance (or a non-finite one) with the worst output named."""
    parts = _parts(model)
    differences: dict[str, dict[str, float]] = {}
    for part in parts:
        _export(part, folder / part.file, opset)
        written = _check_opset(folder / part.file, opset)
        differences[part.file] = _max_differences(part, folder / part.file, onnxruntime)
    flat = {(f, name): d for f, ds in differences.items() for name, d in ds.items()}
    (file, name), worst = max(flat.items(), key=lambda kv: math.inf if math.isnan(kv[1]) else kv[1])
    if not worst <= TOLERANCE:
        raise OnnxExportError(f"ONNX Runtime's {name} from {file} differs from PyTorch's by {worst:.3g}, more than "
                              f"the {TOLERANCE:g} allowed; nothing was kept")
    info = describe(run, model, written)
    info["check"] = {"tolerance": TOLERANCE, "batch_sizes": list(CHECK_BATCHES), "max_abs_diff": worst,
                     "max_abs_diff_per_output": differences}
    write_json(folder / DESCRIPTION_FILE, info)
    write_bytes(folder / README_FILE, readme(info).encode("utf-8"))
    return info


# ---------------------------------------------------------------------------------------------- description

# What the decoder's first output holds per pixel, for each head (vaekit.heads defines them), and how the
# ``image`` output is made from it.
_HEAD_LAYOUTS = {
    "logits": "one logit per sub-pixel, laid out as x; the pixel values are sigmoid(logits), which is the "
              "image output",
    "discretized-logistic": "2C values per pixel, [means (C), log-scales (C)]: a logistic at sigmoid(mean) with "
                            "scale exp(log-scale) (log-scale floored at -7), discretized to the 256 levels; the "
                            "image output is sigmoid(mean)",
    "logistic-mixture": "K(1 + 2C + C(C-1)/2) values per pixel, [mixture logits (K), means (K x C), log-scales "
                        "(K x C), coupling coefficients (K x C(C-1)/2)], component-major as in PixelCNN++; the "
                        "image output is the mixture's expected value with its channel coupling, clamped to [0, 1]",
}


def _input_preparation(run: Run, model: VAE) -> dict[str, Any]:
    """How an image becomes a row of ``x``: what the run's data pipeline did to the images it trained on."""
    h, w = model.config.image_shape[:2]
    size = run.train_config.image_size
    binarize = run.train_config.binarize
    return {
        "height": h, "width": w, "channels": model.channels,
        "colour": "RGB" if model.channels == 3 else "grey (one channel)",
        "size": (f"resized so that the shorter side is {size}, then centre-cropped to {size} x {size}"
                 if size is not None else f"exactly {h} x {w}, as the run's images were"),
        "layout": f"float32 rows of {h * w * model.channels} values: a (H, W, C) = ({h}, {w}, {model.channels}) "
                  "array flattened in row-major order (each pixel's channels together)",
        "scale": "8-bit pixel values divided by 255, in [0, 1]",
        "binarized": binarize,
        "pixels": ("8-bit levels as they are, not binarized" if binarize == "none" else
                   "the model trained on binarized pixels (0 or 1, drawn with probability level / 255); grey levels "
                   "in [0, 1] are accepted"),
        "dataset": run.data.get("dataset"),
    }


def describe(run: Run, model: VAE, opset: int) -> dict[str, Any]:
    """The machine-readable description of an export (``onnx.json``): files, names, shapes and meanings."""
    cfg, c = model.config, model.channels
    d, z, per_pixel = cfg.input_dim, model.zdim, params_per_pixel(cfg.head, c, cfg.mixtures)
    head_meaning = f"{_HEAD_LAYOUTS[cfg.head]} (C = {c}{f', K = {cfg.mixtures}' if cfg.mixtures else ''})"
    latent = ("the first (coarsest) latent group of the hierarchy; decoding sets every later group to its prior "
              "mean" if model.hierarchical else "the latent")
    return {
        "format": 1, "vaekit_version": __version__, "run": str(run.path), "opset": opset,
        "preset": cfg.preset, "zdim": z, "prior": "standard normal N(0, I)",
        "input": _input_preparation(run, model),
        "encoder": {"file": ENCODER_FILE, "inputs": [_tensor("x", [d], "images as rows, see input")],
                    "outputs": [_tensor("mu", [z], f"posterior mean of {latent}"),
                                _tensor("logvar", [z], f"posterior log-variance of {latent}")]},
        "decoder": {"file": DECODER_FILE, "inputs": [_tensor("z", [z], latent)],
                    "outputs": [_tensor(decoder_output_name(model), [d // c * per_pixel], head_meaning),
                                _tensor("image", [d], "the image to show, laid out as x, values in [0, 1]")]},
        "head": {"name": cfg.head, "mixtures": cfg.mixtures, "params_per_pixel": per_pixel},
    }


def _tensor(name: str, shape: list[int], meaning: str) -> dict[str, Any]:
    """One input or output of a file, in the order the file lists them (the batch axis first, of any size)."""
    return {"name": name, "shape": ["batch", *shape], "meaning": meaning}


def _table(tensors: list[dict[str, Any]], kind: str) -> list[str]:
    return [f"| `{t['name']}` | {kind} | {' x '.join(map(str, t['shape']))} | {t['meaning']} |" for t in tensors]


def readme(info: dict[str, Any]) -> str:
    """``README.md`` of an export: the description of :func:`describe` in words, and a working example."""
    inp, check = info["input"], info["check"]
    h, w, c = inp["height"], inp["width"], inp["channels"]
    rows = [f"### `{part['file']}`\n\n| name | | shape | meaning |\n|---|---|---|---|\n"
            + "\n".join(_table(part["inputs"], "input") + _table(part["outputs"], "output")) + "\n"
            for part in (info["encoder"], info["decoder"])]
    shape = f"{h}, {w}" if c == 1 else f"{h}, {w}, 3"
    return f"""# ONNX export of {info['run']}

vaekit {info['vaekit_version']}, {info['preset']} preset, zdim {info['zdim']}, prior {info['prior']}, ONNX opset \
{info['opset']}. The batch axis is dynamic. ONNX Runtime reproduced PyTorch's outputs within \
{check['max_abs_diff']:.2g} (allowed: {check['tolerance']:g}) at batch sizes \
{', '.join(map(str, check['batch_sizes']))}. `onnx.json` holds all of this for programs.

## Input preparation

Images {inp['size']}, {inp['colour']}; {inp['scale']}; {inp['pixels']}. Each image is one row of `x`: \
{inp['layout']}.

## Files

{chr(10).join(rows)}

## Example

```python
import numpy as np
import onnxruntime as ort
from PIL import Image

encoder = ort.InferenceSession("{ENCODER_FILE}")
decoder = ort.InferenceSession("{DECODER_FILE}")
pixels = np.asarray(Image.open("image.png").convert("{'L' if c == 1 else 'RGB'}").resize(({w}, {h})))
x = (pixels.astype(np.float32) / 255).reshape(1, -1)
mu, logvar = encoder.run(None, {{"x": x}})
_, image = decoder.run(None, {{"z": mu}})
Image.fromarray((image.reshape({shape}) * 255).round().astype(np.uint8)).save("reconstruction.png")
```
"""
