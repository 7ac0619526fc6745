"""The comparison as one self-contained HTML page: the table, error bars, overlaid loss curves and figures.

Like a run's report (:mod:`vaekit.artifacts.report`, whose style, escaping and plotting it shares) the page
needs no network and no other file: the figures are PNG data URIs, each and all of them bounded in size, so a
folder of hundreds of runs cannot make a page no browser opens. Text from run folders is escaped.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

from vaekit import __version__
from vaekit.artifacts.describe import CAPTIONS
from vaekit.artifacts.report import STYLE, Curve, curves_svg
from vaekit.artifacts.report import escape as _e
from vaekit.errors import VaekitError
from vaekit.experiments.compare import NLL_KEYS, NUMBERS, RANKED, Comparison, Row, protocol_label, protocol_name
from vaekit.experiments.table import header, notes, row_cells
from vaekit.run.io import read_bytes, write_bytes
from vaekit.text import printable

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
SIDE_BY_SIDE = ("latent_grid.png", "samples.png", "latent_scatter.png", "reconstructions.png")
MAX_FIGURE_BYTES = 4 * 2**20  # one figure vaekit draws is well under a megabyte
MAX_PAGE_FIGURE_BYTES = 48 * 2**20  # all figures of one page together
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXTRA_STYLE = """
tr.protocol th { background: #eef3f8; font-weight: 600; text-align: left; }
td.num { white-space: nowrap; } td.best { font-weight: 700; }
.figs td { text-align: center; } .figs img { max-width: 240px; }
"""


def color(i: int) -> str:
    """The colour of the ``i``-th entry: the usual ten, then evenly spread hues."""
    return PALETTE[i] if i < len(PALETTE) else f"hsl({(i * 137) % 360}, 60%, 45%)"


def _table(c: Comparison) -> str:
    """The table of the terminal, its rows under one heading row per protocol."""
    cols = header(c)
    first_number = 1 + len(c.keys)
    body = []
    for i, row in enumerate(c.rows):
        if i == 0 or row.protocol != c.rows[i - 1].protocol:
            label = protocol_label(c.protocols[row.protocol])
            body.append(f'<tr class="protocol"><th colspan="{len(cols)}">protocol {protocol_name(row.protocol)}: '
                        f"{_e(label)}</th></tr>")
        cells = []
        for j, text in enumerate(row_cells(c, row)):
            key = NUMBERS[j - first_number][0] if first_number <= j < first_number + len(NUMBERS) else None
            cls = " class=\"num best\"" if key in row.best else (" class=num" if key else "")
            cells.append(f"<td{cls}>{_e(text)}</td>")
        body.append(f'<tr class="entry" style="border-left: 4px solid {color(i)}">{"".join(cells)}</tr>')
    head = "".join(f"<th>{_e(h)}</th>" for h in cols)
    lines = f"<p>{_e(notes(c)[-1])}</p>"  # the protocols in words head their rows already
    return f'<table class="compare"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>{lines}'


def _curves(c: Comparison) -> str:
    """One curve per run (its validation loss when it held images out, else its test loss), a colour per entry."""
    curves = []
    for i, row in enumerate(c.rows):
        for j, run in enumerate(row.entry.runs):
            key = "val_loss" if any("val_loss" in r for r in run.metrics) else "test_loss"
            points = [(r["epoch"], r[key]) for r in run.metrics if key in r]
            name = row.entry.name if len(row.entry.name) <= 24 else "..." + row.entry.name[-21:]
            curves.append(Curve(name, color(i), points, legend=j == 0))
    note = ("Each run's validation loss where it held images out, else its test loss; a seed group's runs share "
            "its colour. Curves of different protocols are on different scales.")
    return curves_svg(curves, width=900, legend_width=200) + f'<p class="muted">{_e(note)}</p>'


def error_bars_svg(rows: list[tuple[str, str, float, float | None]], width: int = 640) -> str:
    """One number of several entries as dots with mean ± standard error bars; rows: (name, colour, mean, s.e.)."""
    left, right, row_h, top = 220, 24, 22, 8
    lows = [m - (s or 0.0) for _, _, m, s in rows]
    highs = [m + (s or 0.0) for _, _, m, s in rows]
    x0, x1 = min(lows), max(highs)
    pad = (x1 - x0) * 0.08 or abs(x1) * 0.01 or 1.0
    x0, x1 = x0 - pad, x1 + pad
    height = top + row_h * len(rows) + 24

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             'aria-label="mean and standard error">']
    for i, (name, col, mean, se) in enumerate(rows):
        y = top + row_h * i + row_h / 2
        shown = name if len(name) <= 32 else "..." + name[-29:]
        parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{_e(shown)}</text>')
        if se is not None:
            parts.append(f'<line class="errorbar" x1="{sx(mean - se):.1f}" x2="{sx(mean + se):.1f}" y1="{y:.1f}" '
                         f'y2="{y:.1f}" stroke="{col}" stroke-width="2"/>')
        parts.append(f'<circle cx="{sx(mean):.1f}" cy="{y:.1f}" r="4" fill="{col}"/>')
    axis_y = top + row_h * len(rows) + 14
    parts.append(f'<text x="{left}" y="{axis_y}">{x0:.2f}</text>'
                 f'<text x="{width - right}" y="{axis_y}" text-anchor="end">{x1:.2f}</text></svg>')
    return "".join(parts)


def _spread(c: Comparison) -> str:
    """Error bars of every ranked number, one plot per protocol (and K): never one axis across protocols."""
    if not any(row.entry.group for row in c.rows):
        return ""
    out = []
    names = dict(NUMBERS)
    for key in RANKED:
        plots: dict[tuple[int, int | None], list[tuple[str, str, float, float | None]]] = {}
        for i, row in enumerate(c.rows):
            if key in row.numbers:
                s = row.numbers[key]
                where = (row.protocol, row.nll_samples if key in NLL_KEYS else None)
                plots.setdefault(where, []).append((row.entry.name, color(i), s.mean, s.stderr))
        for (proto, k), rows in plots.items():
            if all(se is None for *_, se in rows):
                continue  # single runs only: nothing spreads
            title = f"{names[key]}, protocol {protocol_name(proto)}" + (f", K = {k:,}" if k is not None else "")
            out.append(f"<h3>{_e(title)}</h3>{error_bars_svg(rows)}")
    return ("<h2>Seed groups</h2><p class=\"muted\">Mean \u00b1 standard error over each group's seeds (a single "
            "run: its value alone). Lower is better.</p>" + "".join(out))


def _png_uri(path: Path, budget: list[int], left_out: list[str]) -> str:
    """A figure as a data URI, or a note saying why it is left out (unreadable, not a PNG, too large), that reason
    also added to ``left_out`` as one line naming the figure."""
    try:
        data = read_bytes(path, MAX_FIGURE_BYTES, "a figure vaekit draws")
        if not data.startswith(PNG_MAGIC):
            raise VaekitError(f"{printable(path.name)} is not a PNG image")
        if len(data) > budget[0]:
            raise VaekitError(f"{printable(path.name)}: the page holds {MAX_PAGE_FIGURE_BYTES // 2**20} MB of figures "
                              "already")
    except VaekitError as e:
        why = " ".join(str(e).split())
        left_out.append(f"figure {printable(path)} left out of the page: {why}")
        return f'<span class="muted">{_e(why)}; left out</span>'
    budget[0] -= len(data)
    return f'<img src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}" alt="{_e(path.name)}">'


def _figures(c: Comparison, left_out: list[str]) -> str:
    """The runs' figures side by side, a row per figure and a column per entry (a group: its first seed's)."""
    budget = [MAX_PAGE_FIGURE_BYTES]
    rows = []
    for name in SIDE_BY_SIDE:
        present = [os.path.lexists(row.entry.runs[0].path / name) for row in c.rows]
        if not any(present):
            continue
        cells = "".join(f"<td>{_png_uri(row.entry.runs[0].path / name, budget, left_out) if has else '-'}</td>"
                        for row, has in zip(c.rows, present, strict=True))
        rows.append(f'<tr><th title="{_e(CAPTIONS.get(name, ""))}">{_e(name)}</th>{cells}</tr>')
    if not rows:
        return ('<p class="muted">No figures in these run folders; <code>vaekit plot RUN</code> draws them.</p>')
    head = "".join(f"<th>{_e(_entry_title(row))}</th>" for row in c.rows)
    return f'<div class="scroll"><table class="figs"><thead><tr><th></th>{head}</tr></thead>' \
           f"<tbody>{''.join(rows)}</tbody></table></div>"


def _entry_title(row: Row) -> str:
    e = row.entry
    return f"{e.name} (seed {e.runs[0].seed})" if e.group else e.name


def build_page(c: Comparison, left_out: list[str] | None = None) -> str:
    """The comparison page as HTML text; ``left_out`` receives a line for each figure it could not embed."""
    n = sum(len(row.entry.runs) for row in c.rows)
    skipped = "".join(f'<p class="note">{_e(w)}</p>' for w in c.warnings)
    sections = [
        f"<h1>vaekit comparison of {n} run{'' if n == 1 else 's'}</h1>",
        f'<p class="muted">written {_e(time.strftime("%Y-%m-%d %H:%M"))} by vaekit {_e(__version__)}</p>', skipped,
        "<h2>Runs</h2>", _table(c), _spread(c),
        "<h2>Loss curves</h2>", _curves(c),
        "<h2>Figures</h2>", _figures(c, [] if left_out is None else left_out),
    ]
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
            f"<title>vaekit comparison</title><style>{STYLE}{EXTRA_STYLE}</style></head><body>\n"
            + "\n".join(sections) + "\n</body></html>\n")


def write_page(c: Comparison, out: str | os.PathLike, left_out: list[str] | None = None) -> Path:
    """Write the page to ``out`` atomically; returns its path. ``left_out``: as for :func:`build_page`."""
    path = Path(out)
    write_bytes(path, build_page(c, left_out).encode("utf-8"))
    return path
