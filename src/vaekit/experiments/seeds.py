"""Several seeds of one setting: one ordinary run per seed in ``DIR/seed-N/``, then their mean and standard error.

Papers report a setting as the mean and standard error over a few seeds; ``vaekit train --seeds 0,1,2 --out DIR``
does that. Each seed is trained by :func:`vaekit.training.train` exactly as ``--seed N --out DIR/seed-N`` would
train it alone (so every seed folder is a normal run that any other command reads, bit for bit the same weights),
one after another. ``DIR/summary.json`` then holds each number's mean, standard error and per-seed values, read
back from the seed folders the way ``vaekit compare`` reads a seed group, so the two always agree.

Resuming continues seed by seed: a finished seed is left as it is, an interrupted one continues from its
checkpoint, and one not started yet starts.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vaekit import run as runs
from vaekit.config import MAX_SEED, TrainConfig
from vaekit.errors import Interrupted, RunFolderError
from vaekit.experiments.collect import MAX_RUNS, Entry, read_record
from vaekit.experiments.compare import NUMBERS, entry_numbers, protocol_label, run_protocol
from vaekit.experiments.stats import Stat
from vaekit.experiments.table import DIGITS, stat_text
from vaekit.text import printable

SEEDS_SUMMARY = "summary.json"  # DIR/summary.json, beside the seed folders
_ITEM = re.compile(r"^(\d{1,19})(?:-(\d{1,19}))?$")  # "3" or "0-4"

# (seed, its run folder, the run folder whose stored settings it continues or None) -> the config to train that seed
# with: its own folder when resuming a started seed, a started sibling's for a seed not started yet (so it trains
# with the settings of the seeds before it, not the defaults), None for a fresh start.
ConfigFor = Callable[[int, Path, Path | None], TrainConfig]


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: distinct seeds as a comma list, with ``A-B`` ranges (both ends included), in the order given."""
    shown = repr(text) if len(text) <= 40 else repr(text[:37] + "...")
    seeds: list[int] = []
    for item in text.replace(" ", "").split(","):
        m = _ITEM.match(item)
        if m is None:
            raise argparse.ArgumentTypeError(f"expected distinct seeds from 0 to {MAX_SEED} as a comma list or "
                                             f"ranges such as 0,1,2 or 0-4, got {shown}")
        first, last = int(m.group(1)), int(m.group(2) or m.group(1))
        if last < first or last > MAX_SEED:
            raise argparse.ArgumentTypeError(f"expected seeds from 0 to {MAX_SEED} and ranges low-high, got {shown}")
        if last - first + len(seeds) >= MAX_RUNS:
            raise argparse.ArgumentTypeError(f"at most {MAX_RUNS} seeds, got {shown}")
        span = range(first, last + 1)
        twice = set(seeds).intersection(span)
        if twice:
            raise argparse.ArgumentTypeError(f"seed {min(twice)} is given twice in {shown}; name each seed once")
        seeds.extend(span)
    return seeds


def seed_folder(out: Path, seed: int) -> Path:
    """``OUT/seed-N``: the name ``vaekit compare`` reads as one run of a seed group."""
    return out / f"seed-{seed}"


def check_out(out: Path, seeds: list[int], resume: bool, force: bool) -> None:
    """Refuse, before any seed trains, a folder that is a run itself or holds runs that only --force replaces."""
    from vaekit.training.setup import check_fresh_folder

    runs.check_path_length(out, "--out")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {printable(out)} exists and is not a folder")
    if (out / runs.CONFIG).exists():
        raise RunFolderError(f"--out {printable(out)} is a run folder; seeds need a folder of their own: choose "
                             "another --out")
    if resume:
        return
    if (out / SEEDS_SUMMARY).exists() and not force:
        raise RunFolderError(f"{printable(out)} already holds the seeds of another run; use --resume to continue "
                             "them, --force to train into it anyway, or another --out")
    for seed in seeds:
        check_fresh_folder(seed_folder(out, seed), force)


def is_finished(run_dir: Path, config: TrainConfig) -> bool:
    """A seed folder whose run reached the epochs asked for and wrote all its outputs: resuming leaves it alone."""
    from vaekit.training.setup import outputs

    return runs.is_complete(run_dir, config.epochs, outputs(config))


def train_seeds(config_for: ConfigFor, seeds: list[int], out: Path, *, resume: bool = False,
                force: bool = False, again: str = "") -> dict[str, Any]:
    """Train each seed into ``out/seed-N`` one after another, then write and return ``out/summary.json``.

    An interrupted seed stops the whole: its checkpoint is saved as a single run's is, and the error says how to
    continue every seed (``again``: the command line that does, without ``--resume``).
    """
    from vaekit.training import train

    check_out(out, seeds, resume, force)
    started = [seed_folder(out, s) for s in seeds if resume and (seed_folder(out, s) / runs.CONFIG).exists()]
    for seed in seeds:
        run_dir = seed_folder(out, seed)
        own = run_dir in started
        config = config_for(seed, run_dir, run_dir if own else (started[0] if started else None))
        if own and is_finished(run_dir, config):
            if config.progress:
                print(f"seed {seed}: {printable(run_dir)} is finished; left as it is", flush=True)
            continue
        if config.progress:
            print(f"seed {seed} of {printable(out)} ({seeds.index(seed) + 1}/{len(seeds)})", flush=True)
        try:
            train(config, run_dir, resume=own, force=force and not resume)
        except Interrupted as e:
            hint = f"; to continue every seed: {again} --resume" if again else ""
            raise Interrupted(f"seed {seed}: {e}{hint}", e.exit_code - 128) from e
    return write_summary(out, seeds)


def seeds_summary(out: Path, seeds: list[int]) -> dict[str, Any]:
    """Each number's mean, standard error and per-seed values over the seed folders, and how they were measured."""
    records = [read_record(seed_folder(out, s)) for s in seeds]
    numbers, k = entry_numbers(Entry(printable(out), records, group=True))
    protocol = run_protocol(records[0])
    return {
        "seeds": seeds,
        "runs": [seed_folder(Path(), s).as_posix() for s in seeds],
        "n": len(seeds),
        "metrics": {key: {**numbers[key].as_dict(), "label": label} for key, label in NUMBERS if key in numbers},
        "nll_samples": k,
        "protocol": {**protocol, "label": protocol_label(protocol)},
        "order": "sequential: one seed after another in one process",
    }


def write_summary(out: Path, seeds: list[int]) -> dict[str, Any]:
    """``out/summary.json``, written atomically so a reader never sees half of it."""
    summary = seeds_summary(out, seeds)
    runs.write_json(out / SEEDS_SUMMARY, summary)
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """One line per number: ``name: mean ± s.e. (seed 0: ..., seed 1: ...)``."""
    lines = []
    for key, m in summary["metrics"].items():
        digits = DIGITS.get(key, 2)
        stat = Stat(m["mean"], m["stderr"], tuple(m["values"]))
        each = ", ".join(f"seed {s}: {v:.{digits}f}" for s, v in zip(summary["seeds"], stat.values, strict=True))
        lines.append(f"{m['label']}: {stat_text(stat, digits)} ({each})")
    return lines


def out_folder(out: str | os.PathLike | None) -> Path:
    """``--out``, or where seeds go when none is given: named like a single run's default folder."""
    return Path(out) if out is not None else Path("runs") / time.strftime("seeds-%Y%m%d-%H%M%S")
