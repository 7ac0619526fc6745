"""The run report: one self-contained HTML page with everything a run folder records.

``RUN/report.html`` leads with what a reader looks for: the headline numbers (test -ELBO, and the
importance-sampled log-likelihood and bits/dim once ``vaekit evaluate --nll`` stored them in
``summary.json``), each with how it was measured in words, then the loss curves and every figure (embedded
as PNG data URIs, so the file can be mailed or archived alone), the model, data and protocol in words, the
metrics of every epoch, and last, folded away, every raw value of ``summary.json`` and ``config.json``. It
links the latent explorer. Every piece of text from the run folder is escaped, so a run folder cannot
inject markup into the page.
"""

from __future__ import annotations

import base64
import html
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from vaekit import __version__
from vaekit import run as runs
from vaekit.artifacts import EXPLORER, FIGURES, REPORT
from vaekit.artifacts.describe import (
    CAPTIONS,
    NLL_HOW,
    Headline,
    dataset_text,
    headline,
    is_num,
    likelihood_text,
    model_text,
    split_text,
)
from vaekit.text import printable

__all__ = ["Curve", "build_report", "curves_svg", "escape", "likelihood_text", "loss_curves_svg", "model_text",
           "write_report"]

RESULT_ORDER = ("test_loss", "test_recon", "test_kl", "val_loss", "best_val_loss", "best_val_epoch", "n_val",
                "train_loss", "epochs", "dataset", "model", "zdim",
                "likelihood", "n_params", "train_samples_per_s", "train_seconds", "device")

STYLE = """
body { margin: 0 auto; max-width: 1080px; padding: 20px 24px 40px; color: #1d2126; background: #fff;
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; }
h1 { font-size: 22px; margin-bottom: 2px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #e3e6ea; }
.muted { color: #5c6670; }
table { border-collapse: collapse; margin: 6px 0; font-size: 13px; }
th, td { border: 1px solid #e3e6ea; padding: 3px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.kv th { background: #f6f7f9; font-weight: 600; }
.metrics th { background: #f6f7f9; position: sticky; top: 0; }
.scroll { max-height: 420px; overflow-y: auto; display: inline-block; }
figure { margin: 14px 0; } figure img { max-width: 100%; border: 1px solid #eceef1; }
figcaption { color: #5c6670; font-size: 13px; }
.explorer { display: inline-block; padding: 6px 12px; background: #1f77b4; color: #fff; border-radius: 4px;
            text-decoration: none; font-weight: 600; }
.note { background: #fff7e0; border: 1px solid #f0dca0; padding: 6px 10px; border-radius: 4px; }
svg text { font: 11px system-ui, sans-serif; fill: #5c6670; }
.headline th, .headline td.value { white-space: nowrap; } .headline td.value { font-weight: 600; }
.headline tr.absent td { color: #5c6670; }
details { margin: 8px 0; } summary { cursor: pointer; font-weight: 600; }
"""


def _e(value: Any) -> str:
    """Text as HTML, escaped, with file-name bytes that are not UTF-8 shown as ``\\xNN`` (see ``printable``)."""
    return html.escape(printable(value), quote=True)


escape = _e  # public: the pages built beside the report (the comparison) escape text the same way


def _fmt(value: Any) -> str:
    """Numbers with sensible precision; everything else as text (escaped)."""
    if isinstance(value, bool) or value is None:
        return _e(value)
    if isinstance(value, int):
        return _e(f"{value:,}")
    if isinstance(value, float):
        if not math.isfinite(value):
            return _e(value)
        return _e(f"{value:.6g}" if abs(value) < 1e-3 or abs(value) >= 1e6 else f"{value:.4f}")
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value) if value else "-"
    if isinstance(value, dict):
        return ", ".join(f"{_e(k)}={_fmt(v)}" for k, v in value.items())
    return _e(value)


def _kv_table(rows: dict[str, Any]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td{' class=num' if is_num(v) else ''}>{_fmt(v)}</td></tr>"
                   for k, v in rows.items())
    return f'<table class="kv">{body}</table>'


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    """Nested objects one level deep as ``outer.inner`` rows, so a table shows everything a file records."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update({f"{k}.{sk}": sv for sk, sv in v.items()})
        else:
            out[k] = v
    return out


def _metrics_table(rows: list[dict[str, float]]) -> str:
    if not rows:
        return '<p class="muted">No epochs recorded yet.</p>'
    cols = list(runs.metric_columns(rows))
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td class=num>{_fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f'<div class="scroll"><table class="metrics"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>' \
           "</table></div>"


def loss_curves_svg(rows: list[dict[str, float]], width: int = 640, height: int = 300) -> str:
    """Train, validation and test loss over the epochs as an inline SVG (crisp at any size, no image file needed).

    A run with a validation split has its test loss on the last epoch only: a single point.
    """
    series = [("train_loss", "train", "#1f77b4"), ("val_loss", "validation", "#2ca02c"),
              ("test_loss", "test", "#ff7f0e")]
    curves = [Curve(name, color, [(r["epoch"], r[key]) for r in rows if math.isfinite(r.get(key, math.nan))])
              for key, name, color in series]
    return curves_svg(curves, width, height)


@dataclass(frozen=True)
class Curve:
    """One line of a plot over the epochs: its legend name, colour and (epoch, loss) points."""

    name: str
    color: str
    points: list[tuple[float, float]]
    legend: bool = True  # False: drawn in the colour of an earlier curve that the legend already names


def curves_svg(curves: list[Curve], width: int = 640, height: int = 300, legend_width: int = 110) -> str:
    """Loss curves over the epochs as one inline SVG with a legend at the right; curves without points are left
    out, and a curve of one point is a dot."""
    curves = [c for c in curves if c.points]
    pts = [p for c in curves for p in c.points]
    if not pts:
        return '<p class="muted">No finite losses to plot.</p>'
    left, right, top, bottom = 64, legend_width, 12, 36
    height = max(height, top + bottom + 18 * sum(c.legend for c in curves) + 8)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = (y1 - y0) * 0.05 or abs(y1) * 0.05 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (y1 - y) / (y1 - y0) * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             'aria-label="loss curves">',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#c9ced4"/>']
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eef0f2"/>'
                     f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.1f}</text>')
    epochs = sorted({int(x) for x in xs})
    step = max(1, math.ceil(len(epochs) / 10))
    for ep in epochs[::step]:
        parts.append(f'<text x="{sx(ep):.1f}" y="{top + ph + 16}" text-anchor="middle">{ep}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 4}" text-anchor="middle">epoch</text>')
    parts.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {top + ph / 2})">nats per image</text>')
    n = 0  # legend entries so far
    for c in curves:
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in c.points)
        parts.append(f'<polyline class="curve" points="{coords}" fill="none" stroke="{c.color}" stroke-width="2"/>')
        parts.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{c.color}"/>' for x, y in c.points)
        if c.legend:
            ly = top + 14 + 18 * n
            parts.append(f'<line x1="{left + pw + 12}" x2="{left + pw + 32}" y1="{ly}" y2="{ly}" stroke="{c.color}" '
                         f'stroke-width="2"/><text x="{left + pw + 38}" y="{ly + 4}">{_e(c.name)}</text>')
            n += 1
    parts.append("</svg>")
    return "".join(parts)


def _figures(run_dir: Path) -> str:
    """Every PNG of the run folder, the standard figures first, embedded as data URIs."""
    names = [f for f in FIGURES if (run_dir / f).is_file()]
    names += sorted(p.name for p in run_dir.glob("*.png") if p.name not in names and not p.name.startswith("."))
    if not names:
        return '<p class="muted">No figures in the run folder; <code>vaekit plot RUN</code> draws them.</p>'
    out = []
    for name in names:
        try:
            data = (run_dir / name).read_bytes()
        except OSError as e:
            out.append(f'<p class="note">{_e(name)} could not be read: {_e(e.strerror or e)}</p>')
            continue
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        caption = CAPTIONS.get(name, "")
        out.append(f'<figure><img src="{uri}" alt="{_e(name)}"><figcaption><b>{_e(name)}</b> '
                   f"{_e(caption)}</figcaption></figure>")
    return "".join(out)


# Settings that change the blog post's objective, with the post's values; shown only where a run differs.
POST_OBJECTIVE = {"objective": "elbo", "k": 1, "beta": 1.0, "kl_warmup": 0, "binarize": "none"}


def _protocol(run: runs.Run) -> str:
    """The model, its data and how it was trained and tested, in words."""
    t, m = run.train_config, run.model_config
    changed = ", ".join(f"{k} {getattr(t, k)}" for k, v in POST_OBJECTIVE.items() if getattr(t, k) != v)
    items = [
        model_text(m),
        f"Likelihood: {likelihood_text(t, m)}; prior N(0, I); diagonal Gaussian posterior; closed-form KL.",
        f"Data: {dataset_text(run.data)}; {split_text(run.data)}.",
        f"Optimisation: Adam, learning rate {t.lr:g}, batch {t.batch_size}, {t.epochs} epochs, seed {t.seed}; "
        "the loss is the negative ELBO summed over the batch, reported per image"
        + (f" (changed from the post's objective: {changed})." if changed else "."),
        "Test loss: negative ELBO per test image in nats with one reparametrized sample per image, drawn from "
        "a fixed seed, so re-evaluating the run reproduces it.",
    ]
    return "<ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"


def _explorer_link(run_dir: Path, page_dir: Path) -> str:
    """The link to the run's explorer page, relative to where the report is written (so both can move)."""
    target = run_dir / EXPLORER
    # Percent-encoding the path's bytes names the file exactly, a name that is not UTF-8 included.
    href = _e(quote(os.fsencode(Path(os.path.relpath(target.resolve(), page_dir.resolve())).as_posix())))
    if target.is_file():
        return (f'<p><a class="explorer" href="{href}">Open the latent explorer</a> '
                '<span class="muted">move through the latent space with the decoder running in the page</span></p>')
    return (f'<p class="muted">No explorer page yet: <code>vaekit explore {_e(run_dir)}</code> writes '
            f'<a href="{href}">{EXPLORER}</a> next to this report.</p>')


def _results(run: runs.Run, summary: dict[str, Any]) -> str:
    """The headline numbers, each with its protocol in words; the absent ones said so, with how to add them."""
    rows: list[Headline] = headline(summary)
    body = "".join(f"<tr{'' if h.present else ' class=absent'}><th>{_e(h.name)}</th><td class=value>"
                   f"{_e(h.value)}</td><td>{_e(h.protocol)}</td></tr>" for h in rows)
    table = ('<table class="headline"><thead><tr><th>number</th><th>value</th><th>how it was measured</th></tr>'
             f"</thead><tbody>{body}</tbody></table>")
    if all(h.present for h in rows):
        return table
    how = _e(NLL_HOW.replace("RUN", str(run.path)))
    return table + (f'<p class="muted">Not measured yet: {_e(", ".join(h.name for h in rows if not h.present))}. '
                    f"<code>{how}</code> estimates the log-likelihood by importance sampling; "
                    "<code>vaekit report</code> then shows it here.</p>")


def _configuration(run: runs.Run, summary: dict[str, Any]) -> str:
    """Every raw value of summary.json and config.json, folded away: for a reader who wants the exact keys."""
    shown = _flat(summary)
    ordered = {k: shown.pop(k) for k in RESULT_ORDER if k in shown} | shown
    parts = [("summary.json", ordered), ("config.json: data", _flat(run.data)),
             ("config.json: model", asdict(run.model_config)), ("config.json: training", asdict(run.train_config))]
    tables = "".join(f"<h3>{_e(title)}</h3>{_kv_table(rows)}" for title, rows in parts if rows)
    return f"<details><summary>Every recorded value, key by key</summary>{tables}</details>"


def build_report(run: runs.Run | str | os.PathLike, page_dir: str | os.PathLike | None = None) -> str:
    """The report page of a run (loaded, or its folder) as HTML text; ``page_dir``: where it will be written."""
    run = run if isinstance(run, runs.Run) else runs.load_run(run)
    run_dir = run.path
    summary = run.summary if isinstance(run.summary, dict) else {}
    name = run_dir.resolve().name
    sections = [
        f"<h1>vaekit run report: {_e(name)}</h1>",
        f'<p class="muted">{_e(run_dir.resolve())} \u00b7 written {_e(time.strftime("%Y-%m-%d %H:%M"))} '
        f"by vaekit {_e(__version__)}</p>",
        _explorer_link(run_dir, Path(page_dir) if page_dir is not None else run_dir),
        "<h2>Results</h2>", _results(run, summary),
        "<h2>Figures</h2>", loss_curves_svg(run.metrics) if run.metrics else '<p class="muted">No epochs.</p>',
        _figures(run_dir),
        "<h2>Model, data and protocol</h2>", _protocol(run),
        "<h2>Metrics per epoch</h2>", _metrics_table(run.metrics),
        "<h2>Configuration</h2>", _configuration(run, summary),
    ]
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
            f"<title>{_e('vaekit report: ' + name)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(sections) + "\n</body></html>\n")


def write_report(run: runs.Run | str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the report (default ``RUN/report.html``) atomically; returns its path."""
    run = run if isinstance(run, runs.Run) else runs.load_run(run)
    path = Path(out) if out is not None else run.path / REPORT
    runs.write_bytes(path, build_report(run, path.parent).encode("utf-8"))
    return path
