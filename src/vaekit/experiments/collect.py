"""The runs a user names: run folders, folders of run folders, and seed groups (``DIR/seed-N/``).

A path is a run folder when it holds ``config.json``. Any other folder stands for the run folders directly inside
it; when every one of those is named ``seed-N`` the folder is a seed group, shown as one entry with the mean and
standard error of its seeds (a subfolder that is itself a seed group is one too, so ``DIR/beta1/seed-0`` and
``DIR/beta4/seed-0`` compare as two groups). A run folder that cannot be read is skipped with a warning naming it;
only when nothing readable is left does collecting fail.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vaekit.artifacts.card import RunRecord
from vaekit.errors import RunFolderError, VaekitError
from vaekit.run.folder import CONFIG, read_metrics
from vaekit.run.io import check_path_length
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


def _subfolders(folder: Path) -> list[Path]:
    """The folders directly inside ``folder`` (links to folders included), seeds in number order."""
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if e.is_dir() and not e.name.startswith(".")]
    except OSError as e:
        raise RunFolderError(f"cannot list {printable(folder)}: {e.strerror or e}") from e

    def order(name: str) -> tuple[str, int, str]:
        m = SEED_FOLDER.match(name)
        return ("seed", int(m.group(1)), "") if m else ("", 0, name)

    return [folder / n for n in sorted(names, key=order)]


def _seed_runs(folder: Path) -> list[Path] | None:
    """The seed-N run folders of a seed group, or None when ``folder`` is not one."""
    runs = [p for p in _subfolders(folder) if is_run_folder(p)]
    if runs and all(SEED_FOLDER.match(p.name) for p in runs):
        return runs
    return None


def _plan(path: Path) -> list[tuple[Path, list[Path], bool]]:
    """The entries a named path stands for, as (name, run folders, is a seed group), before reading any."""
    if is_run_folder(path):
        return [(path, [path], False)]
    seeds = _seed_runs(path)
    if seeds is not None:
        return [(path, seeds, True)]
    plan: list[tuple[Path, list[Path], bool]] = []
    for sub in _subfolders(path):
        if is_run_folder(sub):
            plan.append((sub, [sub], False))
        elif (seeds := _seed_runs(sub)) is not None:
            plan.append((sub, seeds, True))
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


def _entries(name: Path, records: list[ComparedRun], group: bool, warnings: list[str]) -> list[Entry]:
    """The entries of one planned item: a seed group stays one only if its runs differ in nothing but the seed."""
    if not records:
        return []
    if not group:
        return [Entry(printable(name), records)]
    first = records[0].settings
    for r in records[1:]:
        differ = sorted(k for k in first.keys() | r.settings.keys()
                        if k != SEED_KEY and first.get(k, None) != r.settings.get(k, None))
        if differ:
            warnings.append(f"{printable(name)} is shown run by run, not as a seed group: {printable(r.path.name)} "
                            f"differs from {printable(records[0].path.name)} in {differ[0]}, not only in the seed")
            return [Entry(printable(x.path), [x]) for x in records]
    return [Entry(printable(name), records, group=True)]


def collect(paths: list[str | os.PathLike]) -> tuple[list[Entry], list[str]]:
    """The entries to compare and the warnings about run folders skipped; fails when none is readable."""
    plan: list[tuple[Path, list[Path], bool]] = []
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
        for name, runs, group in items:
            fresh = [p for p in runs if p.resolve() not in seen]
            seen.update(p.resolve() for p in fresh)
            if fresh:
                plan.append((name, fresh, group))
    if sum(len(runs) for _, runs, _ in plan) > MAX_RUNS:
        raise RunFolderError(f"more than {MAX_RUNS} run folders to compare; name fewer folders")
    warnings: list[str] = []
    entries = [e for name, runs, group in plan for e in _entries(name, _read(runs, warnings), group, warnings)]
    if not entries:
        n = sum(len(runs) for _, runs, _ in plan)
        raise RunFolderError(f"no run folder named could be read ({n} tried), so there is nothing to compare; "
                             f"{warnings[0].removeprefix('skipped ')}")
    return entries, warnings
