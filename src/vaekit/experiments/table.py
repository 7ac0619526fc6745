"""A comparison as cells (shared by the terminal table and the HTML page), as text, and as JSON."""

from __future__ import annotations

import math
from typing import Any

from vaekit.experiments.compare import BEST, NUMBERS, Comparison, Row, protocol_label, protocol_name
from vaekit.experiments.stats import Stat
from vaekit.text import printable

MAX_CELL = 40  # characters of a setting's value shown in a cell; the JSON has it whole
DIGITS = {"bits_per_dim": 4, "train_seconds": 1}


def value_text(value: Any) -> str:
    """A setting's value, short: numbers as %g, lists joined by commas, long text cut."""
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = ",".join(value_text(v) for v in value) or "-"
    else:
        text = "-" if value is None else printable(value)
    return text if len(text) <= MAX_CELL else text[:MAX_CELL - 3] + "..."


def stat_text(stat: Stat, digits: int = 2) -> str:
    """``mean ± s.e.`` for a seed group, the value alone for one run."""
    if stat.stderr is None:
        return f"{stat.mean:.{digits}f}"
    return f"{stat.mean:.{digits}f} \u00b1 {stat.stderr:.{digits}f}"


def header(c: Comparison) -> list[str]:
    """The column names: run, the settings that differ, the numbers, K, the protocol."""
    return ["run", *c.keys, *(name for _, name in NUMBERS), "K", "protocol"]


def row_cells(c: Comparison, row: Row) -> list[str]:
    """One row's cells as text; a number that is the best of its protocol ends in ``*``."""
    e = row.entry
    name = f"{e.name} ({len(e.runs)} seeds)" if e.group else e.name
    settings = [value_text(e.settings.get(k)) if k in e.settings else "(absent)" for k in c.keys]
    numbers = []
    for key, _ in NUMBERS:
        stat = row.numbers.get(key)
        text = "-" if stat is None else stat_text(stat, DIGITS.get(key, 2))
        numbers.append(text + (f" {BEST}" if key in row.best else ""))
    k = f"{row.nll_samples:,}" if row.nll_samples is not None else "-"
    return [name, *settings, *numbers, k, protocol_name(row.protocol)]


def notes(c: Comparison) -> list[str]:
    """The lines under the table: each protocol in words, and how numbers were (not) ranked across them."""
    lines = [f"protocol {protocol_name(i)}: {protocol_label(p)}" for i, p in enumerate(c.protocols)]
    if len(c.protocols) > 1:
        lines.append(f"The runs are grouped by protocol: numbers measured under different protocols are not "
                     f"comparable, so {BEST} marks the lowest only within a protocol (and, for -log p(x) and "
                     "bits/dim, the same K), never across them.")
    else:
        lines.append(f"{BEST} marks the lowest of each number among the runs (for -log p(x) and bits/dim, at the "
                     "same K); a seed group shows mean \u00b1 standard error over its seeds.")
    return lines


def text_table(c: Comparison) -> str:
    """The comparison as an aligned text table with its notes, for the terminal."""
    body = [row_cells(c, r) for r in c.rows]
    widths = [max(len(r[i]) for r in [header(c), *body]) for i in range(len(body[0]))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip()

    lines = [line(header(c)), "  ".join("-" * w for w in widths)]
    for i, (row, cells) in enumerate(zip(c.rows, body, strict=True)):
        if i and row.protocol != c.rows[i - 1].protocol:
            lines.append("")  # a blank line between protocols
        lines.append(line(cells))
    return "\n".join([*lines, "", *notes(c)])


def _clean(value: Any) -> Any:
    """JSON without NaN or infinities (which strict parsers refuse): those become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def as_json(c: Comparison) -> dict[str, Any]:
    """The comparison as one JSON object: every entry with its settings, numbers, protocol and ranking."""
    entries = []
    for row in c.rows:
        e = row.entry
        entries.append({
            "name": e.name, "kind": "seed group" if e.group else "run", "runs": [printable(r.path) for r in e.runs],
            "settings": {k: e.settings.get(k) for k in c.keys},
            "protocol": protocol_name(row.protocol), "nll_samples": row.nll_samples,
            "numbers": {k: {**s.as_dict(), "best_in_protocol": k in row.best} for k, s in row.numbers.items()},
        })
    protocols = [{"name": protocol_name(i), "label": protocol_label(p), **p} for i, p in enumerate(c.protocols)]
    return _clean({"settings_that_differ": c.keys, "protocols": protocols, "entries": entries,
                   "skipped": c.warnings, "notes": notes(c)})
