"""The runs a user names: run folders, folders of run folders, and seed groups (``DIR/seed-N/``).

A path is a run folder when it holds ``config.json``. Any other folder stands for the run folders directly inside
it; when every one of those is named ``seed-N`` the folder is a seed group, shown as one entry with the mean and
standard error of its seeds (a subfolder that is itself a seed group is one too, so ``DIR/beta1/seed-0`` and
``DIR/beta4/seed-0`` compare as two groups). A run folder that cannot be read is skipped with a warning naming it;
only when nothing readable is left does collecting fail. A group's seed-N folder that holds no run is left out of it,
and one whose run has no summary yet stays in it, each with a warning; runs that differ in another setting, or two
that record the same seed (a copied folder), are shown run by run instead, with a warning saying why.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vaekit.artifacts.card import RunRecord
from vaekit.errors import RunFolderError, VaekitError
from vaekit.run.folder import CONFIG, SUMMARY, read_metrics
from vaekit.run.io import check_path_length
from vaekit.run.lock import writer_of
from vaekit.text import printable

SEED_FOLDER = re.compile(r"^seed-(\d{1,19})$")  # DIR/seed-N/: one run of a seed group
SEED_KEY = "train.seed"
MAX_RUNS = 1000  # more run folders than one table or page can show readably

# Settings that never change a run's numbers, or that name where it was run rather than what: left out of the
# settings a comparison shows. The train section's model keys (zdim, hidden, ...) are what the flags asked for;
# the model section records what was built from them, so only that one is compared.
NOISE = frozenset({
    "train.data_dir", "train.progress", "train.artifacts", "train.tensorboard", "train.checkpoint_every",
    "train.eval_batch_size", "train.grid_size", "train.grid_spacing", "train.detect_anomaly", "train.zdim",
    "train.model", "train.width", "train.hidden", "train.activation", "train.mixtures", "data.source",
    "data.val_indices_sha256",
    "train.mlflow", "train.wandb", "train.strict_trackers",
    # where the images were read from, like train.data_dir: the same images copied elsewhere are the same data.
    # What they are is data.own.digest (a SHA-256 of the pixels and labels), which stays a setting compared.
    "train.data", "data.own.path", "data.own.name",
})


@dataclass(frozen=True)
class ComparedRun(RunRecord):
    """What a run folder records (as its model card reads it) and its metrics, read without weights or data."""

    metrics: list[dict[str, float]]
    settings: dict[str, Any]  # the flattened config, without NOISE

    @property
    def seed(self) -> int:
        return self.train.seed


@dataclass
class Entry:
    """One row of a comparison: a run, or a seed group (runs whose settings differ only in their seed)."""

    name: str
    runs: list[ComparedRun]
    group: bool = False

    @property
    def settings(self) -> dict[str, Any]:
        """The settings of the entry: a group's are its runs' shared ones, with the list of its seeds."""
        settings = dict(self.runs[0].settings)
        if self.group:
            settings[SEED_KEY] = [r.seed for r in self.runs]
        return settings


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """Nested objects as ``outer.inner`` keys (lists kept whole), so configs compare key by key."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for k, v in value.items():
        out.update(flatten(f"{prefix}.{k}", v))
    return out


def read_record(path: Path) -> ComparedRun:
    """A run folder's config, summary and metrics, each through the bounded, checked readers."""
    rec = RunRecord.read(path)
    settings = {**flatten("model", asdict(rec.model)), **flatten("train", asdict(rec.train)),
                **flatten("data", rec.data)}
    settings = {k: v for k, v in settings.items() if k not in NOISE}
    return ComparedRun(rec.path, rec.model, rec.train, rec.data, rec.summary, read_metrics(path), settings)


def is_run_folder(path: Path) -> bool:
    return os.path.lexists(path / CONFIG)


def holds_seed_runs(folder: Path) -> bool:
    """Whether ``folder`` holds the run of a seed (a seed-N folder that is a run folder), as the seed groups of
    ``vaekit train --seeds`` do: a folder no other command mixes its files into, nor replaces its records."""
    try:
        with os.scandir(folder) as it:
            return any(SEED_FOLDER.match(e.name) and is_run_folder(folder / e.name) for e in it)
    except OSError:  # no such folder, or not one
        return False


def enclosing_run(path: Path) -> Path | None:
    """The nearest folder above ``path`` (its links resolved) that is a run folder, or None: an output of a command
    that reads many runs must not replace any run's file, named on the command line or not."""
    return next((folder for folder in path.resolve().parents if is_run_folder(folder)), None)


def _is_folder(entry: os.DirEntry) -> bool:
    """Whether ``entry`` is a folder or a link to one; a link that loops (ELOOP) is neither, and does not stop the
    listing of the folders beside it."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _subfolders(folder: Path) -> list[Path]:
    """The folders directly inside ``folder`` (links to folders included), seeds in number order."""
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if _is_folder(e) and not e.name.startswith(".")]
    except OSError as e:
        raise RunFolderError(f"cannot list {printable(folder)}: {e.strerror or e}") from e

    def order(name: str) -> tuple[str, int, str]:
        m = SEED_FOLDER.match(name)
        return ("seed", int(m.group(1)), "") if m else ("", 0, name)

    return [folder / n for n in sorted(names, key=order)]


@dataclass
class _Planned:
    """One entry-to-be of a named path, before any run is read: its run folders, and for a seed group the seed-N
    folders left out of it because they hold no run."""

    name: Path
    runs: list[Path]
    group: bool
    left_out: list[Path] = field(default_factory=list)


def _seed_group(folder: Path) -> _Planned | None:
    """``folder`` as a seed group (its seed-N run folders), or None when it is not one."""
    subfolders = _subfolders(folder)
    runs = [p for p in subfolders if is_run_folder(p)]
    if runs and all(SEED_FOLDER.match(p.name) for p in runs):
        empty = [p for p in subfolders if SEED_FOLDER.match(p.name) and p not in runs]
        return _Planned(folder, runs, True, empty)
    return None


def _plan(path: Path) -> list[_Planned]:
    """The entries a named path stands for, before reading any run."""
    if is_run_folder(path):
        return [_Planned(path, [path], False)]
    group = _seed_group(path)
    if group is not None:
        return [group]
    plan: list[_Planned] = []
    for sub in _subfolders(path):
        if is_run_folder(sub):
            plan.append(_Planned(sub, [sub], False))
        elif (group := _seed_group(sub)) is not None:
            plan.append(group)
    return plan


def _read(paths: list[Path], warnings: list[str]) -> list[ComparedRun]:
    """The readable runs among ``paths``; each unreadable one becomes a warning naming it and why."""
    records = []
    for path in paths:
        try:
            records.append(read_record(path))
        except VaekitError as e:
            warnings.append(f"skipped {printable(path)}: {' '.join(str(e).split())}")
    return records


def _unfinished(item: _Planned, records: list[ComparedRun], warnings: list[str]) -> None:
    """A warning for each seed folder of a group left out (it holds no run) or unfinished (no summary.json yet):
    a number any seed lacks is '-' for the whole group, which would otherwise go unexplained."""
    for path in item.left_out:
        warnings.append(f"left {printable(path)} out of the seed group {printable(item.name)}: it holds no "
                        f"{CONFIG}, so it is not a run folder (an empty or unfinished seed)")
    for r in records:
        if r.summary:
            continue
        writer = writer_of(r.path)
        why = (f"process {writer} is still training it" if writer is not None else
               "its training stopped before the end; finish it with vaekit train --resume")
        warnings.append(f"{printable(r.path)} in the seed group {printable(item.name)} has no {SUMMARY} yet: {why}; "
                        "the group's numbers it lacks are shown as -")


def _not_a_group(records: list[ComparedRun]) -> str | None:
    """Why runs in seed-N folders are not one seed group (they differ in another setting, or two record the same
    seed: a copied folder would count twice), or None when they are."""
    base = records[0]
    for r in records[1:]:
        differ = sorted(k for k in base.settings.keys() | r.settings.keys()
                        if k != SEED_KEY and base.settings.get(k, None) != r.settings.get(k, None))
        if differ:
            return (f"{printable(r.path.name)} differs from {printable(base.path.name)} in {differ[0]}, not only in "
                    "the seed")
    first: dict[int, ComparedRun] = {}
    for r in records:
        if r.seed in first:
            return (f"{printable(r.path.name)} and {printable(first[r.seed].path.name)} both record {SEED_KEY} "
                    f"{r.seed}, so they are not two seeds")
        first[r.seed] = r
    return None


def _entries(item: _Planned, records: list[ComparedRun], warnings: list[str]) -> list[Entry]:
    """The entries of one planned item: a seed group stays one only if its runs differ in nothing but the seed,
    and each has a seed of its own."""
    if not records:
        return []
    if not item.group:
        return [Entry(printable(item.name), records)]
    why = _not_a_group(records)
    if why is not None:  # the empty seed folders are still left out, and said to be
        warnings.append(f"{printable(item.name)} is shown run by run, not as a seed group: {why}")
        _unfinished(item, [], warnings)
        return [Entry(printable(x.path), [x]) for x in records]
    _unfinished(item, records, warnings)
    return [Entry(printable(item.name), records, group=True)]


def collect(paths: list[str | os.PathLike]) -> tuple[list[Entry], list[str]]:
    """The entries to compare and the warnings about run folders skipped; fails when none is readable."""
    plan: list[_Planned] = []
    seen: set[Path] = set()
    for arg in paths:
        path = Path(arg)
        check_path_length(path, "RUN_OR_DIR")
        if not path.is_dir():
            raise RunFolderError(f"{printable(path)} is not a folder; pass run folders written by vaekit train, or "
                                 "folders holding them")
        items = _plan(path)
        if not items:
            raise RunFolderError(f"{printable(path)} holds no run folder: neither it nor a folder directly inside it "
                                 f"has a {CONFIG}; pass run folders written by vaekit train, or folders holding them")
        for item in items:
            item.runs = [p for p in item.runs if p.resolve() not in seen]
            seen.update(p.resolve() for p in item.runs)
            if item.runs:
                plan.append(item)
    if sum(len(item.runs) for item in plan) > MAX_RUNS:
        raise RunFolderError(f"more than {MAX_RUNS} run folders to compare; name fewer folders")
    warnings: list[str] = []
    entries = [e for item in plan for e in _entries(item, _read(item.runs, warnings), warnings)]
    if not entries:
        n = sum(len(item.runs) for item in plan)
        raise RunFolderError(f"no run folder named could be read ({n} tried), so there is nothing to compare; "
                             f"{warnings[0].removeprefix('skipped ')}")
    return entries, warnings
