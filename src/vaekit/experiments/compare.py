"""Runs side by side: the settings that differ, the numbers, and the protocol each number was measured under.

A number only ranks against numbers measured the same way: the same data protocol (binarized or grey pixels,
the likelihood and its scale, which is what bits/dim is a fraction of), the same test set, and for the
importance-sampled -log p(x) the same number of samples K (the bound tightens as K grows). Entries are grouped
by protocol, each group ranked on its own, and no number is marked best across groups. A seed group's numbers
are the mean and standard error over its seeds.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from vaekit.data.binarize import bits_per_dim_scale, describe, protocol
from vaekit.experiments.collect import ComparedRun, Entry, collect
from vaekit.experiments.stats import Stat, mean_stderr
from vaekit.run.io import finite_number

# (summary.json key, column name); every one is lower-is-better except the training time, which is not ranked.
NUMBERS = (("test_loss", "test -ELBO"), ("nll", "-log p(x)"), ("bits_per_dim", "bits/dim"),
           ("best_val_loss", "best val -ELBO"), ("train_seconds", "train time (s)"))
RANKED = ("test_loss", "nll", "bits_per_dim", "best_val_loss")
NLL_KEYS = ("nll", "bits_per_dim")  # the importance-sampled numbers: comparable only at the same K
BEST = "*"


@dataclass
class Row:
    """An entry's numbers and the protocol (index into ``Comparison.protocols``) they were measured under."""

    entry: Entry
    protocol: int
    numbers: dict[str, Stat]
    nll_samples: int | None
    best: set[str] = field(default_factory=set)


@dataclass
class Comparison:
    """The settings that differ between the entries, their rows grouped by protocol, and what was skipped."""

    keys: list[str]
    rows: list[Row]
    protocols: list[dict[str, Any]]
    warnings: list[str]


def run_protocol(r: ComparedRun) -> dict[str, Any]:
    """How a run's test numbers were measured: its data protocol and its test set.

    Your own images are told apart by what they are (the SHA-256 of their pixels and labels, and of the images held
    out for testing), not where they were read from: the same file copied elsewhere is the same test set."""
    t, m = r.train, r.model
    p = protocol(t.binarize, t.binarize_seed, t.likelihood, t.learn_sigma, t.sigma, m.head, m.mixtures)
    test: dict[str, Any] = {"dataset": r.data.get("dataset"), "n_test": r.data.get("n_test")}
    own = r.data.get("own")
    if isinstance(own, dict):
        test["own"] = {"digest": own.get("digest"), "test_indices_sha256": own.get("test_indices_sha256")}
    return {**p, "test_set": test, "bits_per_dim": bits_per_dim_scale(t.binarize, t.likelihood)}


def protocol_label(p: dict[str, Any]) -> str:
    """A protocol in words, one line: data protocol, test set, and what its bits/dim measure."""
    test = p["test_set"]
    size = f", {test['n_test']:,} images" if isinstance(test.get("n_test"), int) else ""
    images = test.get("own")
    which = f" (SHA-256 {str(images.get('digest'))[:12]}...)" if isinstance(images, dict) else ""
    return f"{describe(p)}; test set {test.get('dataset')}{which}{size}; bits/dim: {p['bits_per_dim']}"


def protocol_name(index: int) -> str:
    """A, B, ..., Z, then P27, P28, ..."""
    return chr(ord("A") + index) if index < 26 else f"P{index + 1}"


def _value(r: ComparedRun, key: str) -> float | None:
    """One number of a run; its training time from metrics.csv when summary.json has none."""
    value = r.summary.get(key)
    if key == "train_seconds" and not finite_number(value) and r.metrics:
        value = math.fsum(row.get("seconds", math.nan) for row in r.metrics)
    return float(value) if finite_number(value) else None


def entry_numbers(entry: Entry) -> tuple[dict[str, Stat], int | None]:
    """An entry's numbers over its runs (a number missing from any run is left out) and the K of its -log p(x)."""
    ks = {repr(r.summary.get("nll_samples")) for r in entry.runs}
    k = entry.runs[0].summary.get("nll_samples") if len(ks) == 1 else None
    k = k if isinstance(k, int) and not isinstance(k, bool) else None
    out: dict[str, Stat] = {}
    for key, _ in NUMBERS:
        if key in NLL_KEYS and k is None:
            continue  # not estimated, or at different K in different seeds: no mean of incomparable numbers
        values = [_value(r, key) for r in entry.runs]
        if values and all(v is not None for v in values):
            out[key] = mean_stderr([v for v in values if v is not None])
    return out, k


def differing(entries: list[Entry]) -> list[str]:
    """The settings whose values are not the same in every entry (absent counts as a value), in config order."""
    order: dict[str, None] = {}
    for e in entries:
        order.update(dict.fromkeys(e.settings))
    missing = object()
    return [k for k in order if len({repr(e.settings.get(k, missing)) for e in entries}) > 1]


def _rank(rows: list[Row]) -> None:
    """Mark each row's numbers that are the lowest among the rows measured the same way (two or more of them)."""
    for key in RANKED:
        buckets: dict[tuple[int, int | None], list[Row]] = {}
        for row in rows:
            if key in row.numbers:
                buckets.setdefault((row.protocol, row.nll_samples if key in NLL_KEYS else None), []).append(row)
        for bucket in buckets.values():
            if len(bucket) < 2:
                continue
            low = min(r.numbers[key].mean for r in bucket)
            for r in bucket:
                if r.numbers[key].mean == low:
                    r.best.add(key)


def compare(paths: list[str | os.PathLike]) -> Comparison:
    """The comparison of the runs at ``paths`` (run folders, folders of them, seed groups)."""
    entries, warnings = collect(paths)
    protocols: list[dict[str, Any]] = []
    rows = []
    for entry in entries:
        p = run_protocol(entry.runs[0])
        if p not in protocols:
            protocols.append(p)
        numbers, k = entry_numbers(entry)
        rows.append(Row(entry, protocols.index(p), numbers, k))
    rows.sort(key=lambda r: r.protocol)  # stable: the order given, within each protocol
    _rank(rows)
    return Comparison(differing(entries), rows, protocols, warnings)
