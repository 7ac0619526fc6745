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
import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaekit import run as runs
from vaekit.config import MAX_SEED, SEEDS_TOGETHER, TrainConfig
from vaekit.data.resolve import warn
from vaekit.errors import Interrupted, RunFolderError
from vaekit.experiments.collect import MAX_RUNS, Entry, read_record
from vaekit.experiments.compare import NUMBERS, entry_numbers, protocol_label, run_protocol
from vaekit.experiments.stats import Stat
from vaekit.experiments.table import DIGITS, stat_text
from vaekit.experiments.together import StackedStep, fit_together, probe, together_blocker
from vaekit.text import printable
from vaekit.training.session import Session, open_session

SEEDS_SUMMARY = "summary.json"  # DIR/summary.json, beside the seed folders
SEEDS_PROGRESS = "seeds.json"  # DIR/seeds.json: how the seeds train, kept while they do (read_progress)
# How the seeds were trained, as summary.json's "order" says it.
ORDER_SEQUENTIAL = "sequential: one seed after another in one process"
ORDER_TOGETHER = ("together: the seeds' steps stacked in one vmapped computation, each seed bit for bit its own "
                  "run (checked before training)")
# Seeds opened at once to train together (each holds its own data and model): more train in groups of this many.
GROUP = 8
ORDER_ROUNDING = "together (--seeds-together yes): each seed within rounding of its own run, not bit for bit"
_ITEM = re.compile(r"^([0-9]{1,19})(?:-([0-9]{1,19}))?$")  # "3" or "0-4", ASCII digits only

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
    record = out / SEEDS_PROGRESS
    if (record.exists() or record.is_symlink()) and (record.is_symlink() or not record.is_file()):
        raise RunFolderError(f"{printable(record)} is not a regular file; vaekit keeps the record of the seeds "
                             "there: move it away, or choose another --out")
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


@dataclass(frozen=True)
class Todo:
    """A seed still to train: its folder, whether it continues a started run there, and its settings."""

    seed: int
    run_dir: Path
    own: bool
    config: TrainConfig


def train_seeds(config_for: ConfigFor, seeds: list[int], out: Path, *, resume: bool = False,
                force: bool = False, again: str = "", together: str | None = None) -> dict[str, Any]:
    """Train each seed into ``out/seed-N``, then write and return ``out/summary.json``.

    ``together`` (``--seeds-together``): ``auto`` computes the seeds' steps together where that reproduces each
    seed's own run bit for bit (:mod:`vaekit.experiments.together`), else trains them one after another;
    ``yes`` stacks them wherever the model allows; ``no`` never does; None: ``auto``, or when resuming, what the
    seeds were started with. An interrupted seed stops the whole: its checkpoint is saved as a single run's is,
    and the error says how to continue every seed (``again``: the command line that does, without ``--resume``).
    """
    check_out(out, seeds, resume, force)
    started = [seed_folder(out, s) for s in seeds if resume and (seed_folder(out, s) / runs.CONFIG).exists()]
    if resume and not started:
        raise RunFolderError(f"nothing to resume at {printable(out)}: none of its seed folders (seed-N) holds a run; "
                             "check --out, or train the seeds without --resume")
    stored = _stored_progress(out, seeds) if resume else {}
    together = together or stored.get("together") or "auto"
    todo = []
    for seed in seeds:
        run_dir = seed_folder(out, seed)
        own = run_dir in started
        config = config_for(seed, run_dir, run_dir if own else (started[0] if started else None))
        if own and is_finished(run_dir, config):
            if config.progress:
                print(f"seed {seed}: {printable(run_dir)} is finished; left as it is", flush=True)
            continue
        todo.append(Todo(seed, run_dir, own, config))
    if todo:
        write_progress(out, {"together": together, "seeds": sorted(seeds), "orders": stored.get("orders", []),
                             "resumed": resume})
    hint = f"; to continue every seed: {again} --resume" if again else ""
    try:
        for i in range(0, len(todo), GROUP):
            _train(todo[i:i + GROUP], together, force and not resume)
    except Interrupted as e:
        raise Interrupted(f"{e}{hint}", e.exit_code - 128) from e
    orders = read_progress(out)[0].get("orders") or [_stored_order(out)]
    return write_summary(out, seeds, "; ".join(dict.fromkeys(orders)))


def read_progress(out: Path) -> tuple[dict[str, Any], str | None]:
    """``OUT/seeds.json``: how the seeds are being trained (``together``), which (``seeds``) and how each group
    was (``orders``), kept while they train so that ``--resume`` continues as they started and the summary tells
    the whole story; and what was wrong with it (None: nothing, or no file). The folder may come from anyone:
    each field is kept only if it is what vaekit writes."""
    path = out / SEEDS_PROGRESS
    if not path.exists() and not path.is_symlink():
        return {}, None
    try:
        record = runs.read_json(path)
    except (OSError, RunFolderError) as e:
        return {}, " ".join(str(e).split())
    if not isinstance(record, dict):
        return {}, f"{printable(path)} is not a vaekit record of seeds"
    kept: dict[str, Any] = {}
    if record.get("together") in SEEDS_TOGETHER:
        kept["together"] = record["together"]
    orders = record.get("orders")
    if isinstance(orders, list) and all(isinstance(o, str) and o.isprintable() and len(o) < 2000 for o in orders):
        kept["orders"] = orders
    seeds = record.get("seeds")
    if isinstance(seeds, list) and all(type(v) is int and 0 <= v <= MAX_SEED for v in seeds):
        kept["seeds"] = seeds
    kept["resumed"] = record.get("resumed") is True
    lost = sorted({"together", "orders", "seeds"} - set(kept))
    return kept, (f"{printable(path)} has no usable {', '.join(lost)}" if lost else None)


def _stored_progress(out: Path, seeds: list[int]) -> dict[str, Any]:
    """The record of the seeds being resumed: refused when it names other seeds, a warning when it is damaged
    (the mode is then ``auto`` unless given, and the summary tells of this call only)."""
    stored, problem = read_progress(out)
    if "seeds" in stored and sorted(stored["seeds"]) != sorted(seeds):
        listed = ",".join(map(str, stored["seeds"]))
        raise RunFolderError(f"{printable(out)} holds the seeds {listed}; resume them all with --seeds {listed}, or "
                             "train other seeds into another --out")
    if problem is not None:
        warn(f"{problem}; resuming with --seeds-together as given (else auto), and the summary's order tells of "
             "this call only")
    return stored


def write_progress(out: Path, record: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(out / SEEDS_PROGRESS, record)


def _train(todo: list[Todo], together: str, force: bool) -> None:
    """Train the seeds of ``todo`` as ``together`` says (and say how, :func:`_announce`)."""
    from vaekit.training import distributed

    if together == "no" or len(todo) == 1:
        _announce(todo, ORDER_SEQUENTIAL)
        _train_each(todo, todo, force)
        return
    with distributed.session(todo[0].config.device) as ctx, contextlib.ExitStack() as held:
        first = open_sessions(held, ctx, todo[:1], force)[0]
        blocker = together_blocker([first.trainer] * len(todo))
        if blocker is None:
            _fit_sessions(todo, [first, *open_sessions(held, ctx, todo[1:], force)], together)
            return
        _announce(todo, f"sequential: {blocker}")
        _seed_line(todo, todo[0])
        _fit_one(todo[0], first)
    _train_each(todo, todo[1:], force)


def _train_each(todo: list[Todo], items: list[Todo], force: bool) -> None:
    """Train ``items`` (of the group ``todo``) one after another, each as ``vaekit train`` would."""
    from vaekit.training import train

    for item in items:
        _seed_line(todo, item)
        _seed_errors(item.seed, lambda item=item: train(item.config, item.run_dir, resume=item.own, force=force))


def _fit_sessions(todo: list[Todo], sessions: list[Session], together: str) -> None:
    """Stack the opened seeds' steps if ``together`` and the probe allow, else fit them one after another."""
    trainers = [s.trainer for s in sessions]
    blocker = together_blocker(trainers)
    stacked = found = None
    if blocker is None:
        n, b = trainers[0].data.n, trainers[0].data.batch_size
        stacked = StackedStep(trainers)
        found = probe(stacked, sorted({n % b, b} - {0}))
    if stacked is None or found is None or (together == "auto" and (found.differs is not None or not found.faster)):
        why = blocker or (f"the stacked step does not reproduce each seed's own step here ({found.differs})"
                          if found.differs else f"stacking is slower here ({found.times()})")
        _announce(todo, f"sequential: {why}")
        for item, session in zip(todo, sessions, strict=True):
            _seed_line(todo, item)
            _fit_one(item, session)
        return
    _announce(todo, f"{ORDER_TOGETHER} ({found.times()})" if found.differs is None
              else f"{ORDER_ROUNDING}: {found.differs} ({found.times()})")
    fit_together(sessions, stacked)
    for session in sessions:
        session.finish()


def _fit_one(item: Todo, session: Session) -> None:
    from vaekit.training.loop import fit

    def run() -> None:
        fit(session.trainer, session.callbacks)
        session.finish()

    _seed_errors(item.seed, run)


def _seed_errors(seed: int, run: Callable[[], object]) -> None:
    """``run()``, its interruption naming the seed."""
    try:
        run()
    except Interrupted as e:
        raise Interrupted(f"seed {seed}: {e}", e.exit_code - 128) from e


def open_sessions(held: contextlib.ExitStack, ctx: Any, todo: list[Todo], force: bool) -> list[Session]:
    """Each seed's run opened for fitting (folder locked, data read, model built or restored)."""
    return [open_session(held, ctx, item.config, item.run_dir, resume=item.own, force=force) for item in todo]


def _announce(todo: list[Todo], order: str) -> None:
    """Say how these seeds train, and record it for the summary."""
    if todo[0].config.progress:
        print(f"seeds {_seed_list(todo)}: {order}", flush=True)
    out = todo[0].run_dir.parent
    record = read_progress(out)[0]
    if "orders" in record:
        said = f"resumed: {order}" if record.get("resumed") else order
        write_progress(out, {**record, "orders": [*record["orders"], f"seeds {_seed_list(todo)}: {said}"]})


def _seed_list(todo: list[Todo]) -> str:
    return ",".join(str(i.seed) for i in todo)


def _seed_line(todo: list[Todo], item: Todo) -> None:
    if item.config.progress:
        print(f"seed {item.seed} of {printable(item.run_dir.parent)} ({todo.index(item) + 1}/{len(todo)})",
              flush=True)


def _stored_order(out: Path) -> str:
    """How the seeds were trained when this call trained none (all finished): as the summary said before."""
    try:
        return str(runs.read_json(out / SEEDS_SUMMARY).get("order", ORDER_SEQUENTIAL))
    except (OSError, ValueError, RunFolderError):
        return ORDER_SEQUENTIAL


def seeds_summary(out: Path, seeds: list[int], order: str = "") -> dict[str, Any]:
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
        "order": order,
    }


def write_summary(out: Path, seeds: list[int], order: str = "") -> dict[str, Any]:
    """``out/summary.json``, written atomically so a reader never sees half of it. ``order``: how the seeds
    were trained, in words."""
    summary = seeds_summary(out, seeds, order or ORDER_SEQUENTIAL)
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
