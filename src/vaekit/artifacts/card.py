"""The model card: the run folder's ``README.md``, the page a model hub shows for the folder.

It says what the model is, what it was trained on, its numbers with how they were measured, and how to
load and use it. It is built from ``config.json`` and ``summary.json`` alone (no weights, no data), so the
artifacts stage writes it last and ``vaekit evaluate --nll`` rewrites it when it adds numbers. A README.md
that vaekit did not write (it lacks :data:`MARK`) is the user's and is never replaced.
"""

from __future__ import annotations

import html
import json
import os
import re
import shlex
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaekit import __version__
from vaekit import run as runs
from vaekit.artifacts import CARD, EXPLORER, FIGURES, REPORT, describe
from vaekit.config import ModelConfig, TrainConfig
from vaekit.data.registry import EMBEDDED_NAME
from vaekit.text import printable

# The line that tells vaekit's card from a README.md someone else wrote; only a file holding it is rewritten.
MARK = "<!-- vaekit model card:"
_MARK_LINE = (f"{MARK} vaekit rewrites this file when the run's numbers change; delete this line to keep your "
              "own edits -->")
_HEAD_BYTES = 4096  # the mark is within the first lines; a large or odd README.md is not read further
# Model hubs' names of the datasets vaekit's registry knows (the embedded subset is MNIST's).
HUB_DATASETS = {"mnist": "ylecun/mnist", EMBEDDED_NAME: "ylecun/mnist",
                "fashion-mnist": "zalando-datasets/fashion_mnist", "cifar10": "uoft-cs/cifar10"}
TAGS = ("vaekit", "vae", "variational-autoencoder", "generative-model", "pytorch", "safetensors")
_FILES = {runs.CONFIG: "model and training configuration, and which data was used",
          runs.WEIGHTS: "the weights (safetensors)", runs.METRICS: "one row of losses per epoch",
          runs.SUMMARY: "the final numbers and how they were measured",
          EXPLORER: "the latent explorer: the decoder running in your browser",
          REPORT: "the run report: numbers, figures, metrics per epoch and the full configuration"}


@dataclass(frozen=True)
class RunRecord:
    """What a run folder records about its run, without its weights: all a card needs."""

    path: Path
    model: ModelConfig
    train: TrainConfig
    data: dict[str, Any]
    summary: dict[str, Any]

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> RunRecord:
        """The record of the run in ``run_dir`` (config and summary checked as ``load_run`` checks them)."""
        model, train, data = runs.read_config(Path(run_dir))
        return cls(Path(run_dir), model, train, data, runs.read_summary(Path(run_dir)))

    @classmethod
    def of(cls, run: runs.Run) -> RunRecord:
        """The record of a loaded run."""
        summary = run.summary if isinstance(run.summary, dict) else {}
        return cls(run.path, run.model_config, run.train_config, run.data, summary)


def _md(value: Any) -> str:
    """Text from the run folder as Markdown that reads as written: no markup, no table cell breaks."""
    return re.sub(r"([\\`*_\[\]|#])", r"\\\1", html.escape(printable(value), quote=False))


def is_vaekit_card(path: Path) -> bool:
    """Whether ``path`` is a card vaekit wrote: a regular file (not a link) whose first lines hold the mark."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and MARK.encode() in os.read(fd, _HEAD_BYTES)
    finally:
        os.close(fd)


def _front_matter(rec: RunRecord) -> str:
    """The YAML front matter model hubs read: library, tags, dataset and the metrics the card reports."""
    lines = ["---", "library_name: vaekit", "pipeline_tag: unconditional-image-generation", "tags:",
             *(f"- {t}" for t in TAGS)]
    hub = HUB_DATASETS.get(str(rec.data.get("dataset"))) if "own" not in rec.data else None
    if hub is not None:
        lines += ["datasets:", f"- {hub}"]
    known = [h.key for h in describe.headline(rec.summary) if h.present]
    if known:
        lines += ["metrics:", *(f"- {name}" for name in known)]
    return "\n".join([*lines, "---"])


def _results(rows: list[describe.Headline], name: str) -> str:
    table = ["| number | value | how it was measured |", "|---|---|---|"]
    table += [f"| {_md(h.name)} | {_md(h.value)} | {_md(h.protocol)} |" for h in rows]
    absent = [h.name for h in rows if not h.present]
    if absent:
        how = describe.NLL_HOW.replace("RUN", shlex.quote(printable(name)))
        table.append(f"\nNot measured yet: {', '.join(absent)}. `{how}` estimates the log-likelihood by importance "
                     "sampling and rewrites this card with it.")
    return "## Results\n\n" + "\n".join(table)


def _model(rec: RunRecord) -> str:
    n = rec.summary.get("n_params")
    return "\n".join([
        "## Model", "",
        f"- {_md(describe.model_text(rec.model))}",
        f"- Latent: {rec.model.zdim} dimensions, prior N(0, I), diagonal Gaussian posterior q(z|x).",
        f"- Likelihood p(x|z): {_md(describe.likelihood_text(rec.train, rec.model))}.",
        f"- Parameters: {n:,}." if isinstance(n, int) else "- Parameters: not recorded.",
    ])


def _training(rec: RunRecord) -> str:
    return "\n".join([
        "## Training", "",
        f"- Data: {_md(describe.dataset_text(rec.data))}.",
        f"- Splits: {_md(describe.split_text(rec.data))}.",
        f"- Training: {_md(describe.training_text(rec.train, rec.summary))}.",
    ])


def _load(name: str) -> str:
    path = json.dumps(printable(name))
    return "\n".join([
        "## Load it", "", "```python", "import torch, vaekit",
        f"model = vaekit.load_model({path})            # the VAE, from config.json and model.safetensors",
        "z = torch.randn(16, model.zdim)                # 16 latents from the prior N(0, I)",
        "images = model.mean_image(model.decode(z))     # rows of pixels in [0, 1]",
        f"run = vaekit.load_run({path})                # the model with its config, metrics and summary",
        "```",
    ])


def _use(name: str) -> str:
    run = shlex.quote(printable(name))
    return "\n".join([
        "## Use it", "", "From the folder that holds this run:", "", "```bash",
        f"vaekit sample {run} -n 64 --out samples.png                 # new images (--sampler gmm: two-stage)",
        f"vaekit encode {run} IMAGES --out latents.npy                # posterior means, one row per image",
        f"vaekit reconstruct {run} IMAGES --out reconstructions/      # originals beside their reconstructions",
        f"vaekit score {run} IMAGES --out scores.csv                  # per-image -ELBO and bits/dim, worst first",
        f"vaekit interpolate {run} A.png B.png --steps 10 --out morph.png",
        f"vaekit export {run} --onnx onnx/                            # encoder and decoder as ONNX files",
        f"vaekit explore {run} --open                                 # the latent explorer in your browser",
        "```", "",
        "IMAGES is a folder of images, an image file or a .npy/.npz array; they are prepared as the training "
        "images were.",
    ])


def _files(run_dir: Path) -> str:
    rows = [f"| `{n}` | {what} |" for n, what in _FILES.items() if (run_dir / n).is_file()]
    figures = [f"![{n}]({n})\n\n{_md(describe.CAPTIONS[n])}" for n in FIGURES if (run_dir / n).is_file()]
    return "\n".join(["## Files", "", "| file | what |", "|---|---|", *rows,
                      *(["", "## Figures", "", "\n\n".join(figures)] if figures else [])])


def build_card(rec: RunRecord) -> str:
    """The card of the run ``rec`` as Markdown text, with front matter and the mark."""
    name = rec.path.resolve().name
    t = rec.train
    intro = (f"A variational auto-encoder trained with vaekit {__version__}: the {_md(rec.model.preset)} preset, "
             f"a {rec.model.zdim}-dimensional latent and a {_md(t.likelihood)} likelihood, trained on "
             f"{_md(rec.data.get('dataset') or 'its data')}.")
    parts = [_front_matter(rec), _MARK_LINE, f"# {_md(name)}", intro, _results(describe.headline(rec.summary), name),
             _model(rec), _training(rec), _load(name), _use(name), _files(rec.path)]
    return "\n\n".join(parts) + "\n"


def users_readme(path: Path) -> bool:
    """Whether ``path`` (a run's README.md) is there and not vaekit's card: the user's own, never replaced."""
    return os.path.lexists(path) and not is_vaekit_card(path)


def write_card(run: runs.Run | RunRecord | str | os.PathLike) -> Path | None:
    """Write ``RUN/README.md`` atomically; returns its path, or ``None`` (with a one-line warning) when the
    folder holds a README.md that vaekit did not write, which is left as it is."""
    rec = run if isinstance(run, RunRecord) else RunRecord.of(run) if isinstance(run, runs.Run) \
        else RunRecord.read(run)
    path = rec.path / CARD
    if users_readme(path):
        print(f"vaekit: warning: {printable(path)} was not written by vaekit; it is left as it is and the run's "
              "model card is not written", file=sys.stderr, flush=True)
        return None
    runs.write_bytes(path, build_card(rec).encode("utf-8"))
    return path


def refresh_card(run_dir: str | os.PathLike) -> Path | None:
    """Rewrite the card of ``run_dir`` if vaekit wrote one there (after new numbers); otherwise do nothing."""
    path = Path(run_dir) / CARD
    return write_card(run_dir) if is_vaekit_card(path) else None
