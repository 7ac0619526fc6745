"""What a folder of images is laid out as: a given train/test split or not, class subfolders or not.

Layout (as torchvision's ``ImageFolder``, so folders prepared for it work unchanged):

* split folders at the top: ``train/`` beside ``test/`` (or, without a test folder, beside ``val/``, ``valid/``
  or ``validation/``, which is then the test split), in any case and also as ``training``/``testing`` and
  with ``_set`` (``Train/``, ``TEST/``, ``Training/``, ``training_set/``, ``test-set/``). The split is used as
  given; each part may have class subfolders. Anything else beside them (a ``val/`` folder when ``test/`` is
  there, a README) is not used, and a one-line note says which split folder was left out or stood in.
  A split folder without its partner (``train/`` alone, ``test/`` beside class folders) is refused with one
  line naming what was found: taken as a class, it would silently turn a split name into a label;
* otherwise, when every image lies in a subfolder, each top-level subfolder holding images is a class
  (sorted names give labels 0, 1, ...); images in deeper folders belong to their top-level class;
* otherwise (some images directly in the folder) the data has no labels, and all images below are used.

Vaekit run folders below the root are skipped (see :mod:`vaekit.data.walk`), with a note.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BadInputError
from .walk import Entry, list_images

__all__ = ["SPLIT_NAMES", "FolderPlan", "plan_folder"]

# Folder names that name a split rather than a class, and the split each gives: compared in lower case with
# "-" and " " read as "_", so Train, TEST, Training, training_set and test-set are all split folders.
_SPLIT_STEMS = {"train": "train", "training": "train", "test": "test", "testing": "test", "val": "val",
                "valid": "val", "validation": "val"}
SPLIT_NAMES = {**_SPLIT_STEMS, **{f"{stem}_set": split for stem, split in _SPLIT_STEMS.items()}}


def split_of(name: str) -> str | None:
    """The split a folder named ``name`` gives (``"train"``, ``"test"``, ``"val"``), or ``None``: a class."""
    return SPLIT_NAMES.get(name.lower().replace("-", "_").replace(" ", "_"))


@dataclass
class FolderPlan:
    """The images a folder holds, in dataset order (a given split: training images first), with labels.

    ``notes`` are one-line remarks for the user (a split folder used as the test split or left out, run folders
    skipped); nothing in them stops the data from being read.
    """

    root: Path
    entries: list[Entry]
    labels: list[int] | None
    class_names: list[str] | None
    n_given_train: int | None
    bad: list[tuple[str, str]] = field(default_factory=list)
    ignored: int = 0
    ignored_examples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    given: list[str] = field(default_factory=list)


def _class_of(rel: str, prefix: str) -> str | None:
    inner = rel[len(prefix) :]
    return inner.split("/", 1)[0] if "/" in inner else None


def _part(root: Path, prefix: str) -> tuple[Any, list[str | None]]:
    """List one part (the whole folder, or a split folder) and each entry's class (``None``: flat)."""
    listing = list_images(root / prefix if prefix else root, prefix)
    classes = [_class_of(e.rel, prefix) for e in listing.entries]
    if any(c is None for c in classes):
        classes = [None] * len(classes)
    return listing, classes


def _split_folders(root: Path) -> dict[str, list[str]]:
    """The top-level folders named as splits, by split: ``{"train": ["Train"], "val": ["val"]}``."""
    try:
        with os.scandir(root) as it:
            names = sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())
    except OSError:
        return {}  # listing the folder reports the problem
    found: dict[str, list[str]] = {}
    for name in names:
        split = split_of(name)
        if split is not None:
            found.setdefault(split, []).append(name)
    return found


def _given_split(root: Path) -> tuple[list[str], list[str]]:
    """(prefixes of the training and test folders, notes), or ``([], [])`` when no folder names a split."""
    found = _split_folders(root)
    if not found:
        return [], []
    for names in found.values():
        if len(names) > 1:
            raise BadInputError(f"{root}: holds {' and '.join(n + '/' for n in names)}, two folders for one split; "
                                "merge them into one")
    train, test, val = (found.get(role, [None])[0] for role in ("train", "test", "val"))
    if train is not None and (test or val) is not None:
        if test is None:
            return [f"{train}/", f"{val}/"], [f"{root}: using {val}/ as the test split (there is no test/ beside "
                                              f"{train}/)"]
        notes = [f"{root}: {val}/ is not used: {train}/ and {test}/ give the split"] if val is not None else []
        return [f"{train}/", f"{test}/"], notes
    have = train or test or val
    need = "test/ (or val/) folder" if train is not None else "train/ folder"
    raise BadInputError(f"{root}: holds {have}/, a split name, but no {need} beside it; add it to give the split "
                        f"yourself, or rename {have}/ if it is a class")


def plan_folder(root: Path) -> FolderPlan:
    """List ``root`` and work out its layout (given split or not, classes or not) without opening any image."""
    prefixes, notes = _given_split(root)
    given = bool(prefixes)
    parts = [_part(root, prefix) for prefix in prefixes or [""]]
    labelled = [bool(classes) and classes[0] is not None for _, classes in parts]
    if given and all(listing.entries for listing, _ in parts) and labelled[0] != labelled[1]:
        flat = prefixes[0] if not labelled[0] else prefixes[1]
        raise BadInputError(
            f"{root}: {flat} holds images directly while the other split has class subfolders; use the same "
            f"layout in {prefixes[0]} and {prefixes[1]} (class subfolders in both, or images directly in both)"
        )
    names = sorted({c for _, classes in parts for c in classes if c is not None}) if any(labelled) else None
    index = {name: i for i, name in enumerate(names or [])}
    plan = FolderPlan(root=root, entries=[], labels=[] if names else None, class_names=names, n_given_train=None,
                      notes=notes, given=prefixes)
    runs: list[str] = []
    for listing, classes in parts:
        plan.entries += listing.entries
        if plan.labels is not None:
            plan.labels += [index[c] for c in classes if c is not None]
        plan.bad += listing.bad
        plan.ignored += listing.ignored
        plan.ignored_examples += listing.ignored_examples
        runs += listing.runs
    if runs:
        plan.notes.append(f"{root}: skipped {len(runs):,} vaekit run folder{'s' if len(runs) != 1 else ''} inside "
                          f"the data (e.g. {runs[0]}/): a run's figures are not training data")
    if given:
        plan.n_given_train = len(parts[0][0].entries)
    plan.notes += _class_notes(root, prefixes or [""], parts, names)
    return plan


def _class_notes(root: Path, prefixes: list[str], parts: list[tuple[Any, list[str | None]]],
                 names: list[str] | None) -> list[str]:
    """One line for class folders that hold no image, and one for classes found only in the test split:
    neither stops the data from being read, but either is usually a mistake the user wants to hear of."""
    if names is None:
        return []
    notes = []
    for prefix, (_, classes) in zip(prefixes, parts, strict=True):
        try:
            with os.scandir(root / prefix if prefix else root) as it:
                folders = {e.name for e in it if not e.name.startswith(".") and e.is_dir() and split_of(e.name) is None}
        except OSError:
            continue
        listing = parts[prefixes.index(prefix)][0]
        elsewhere = {rel[len(prefix):].split("/", 1)[0] for rel in [*listing.runs, *(r for r, _ in listing.bad)]}
        empty = sorted(folders - set(classes) - elsewhere)
        if empty and not (prefix == "" and len(prefixes) > 1):
            shown = ", ".join(f"{prefix}{name}/" for name in empty[:3])
            notes.append(f"{root}: {len(empty):,} class folder{'s hold' if len(empty) > 1 else ' holds'} no "
                         f"images ({shown}) and {'are' if len(empty) > 1 else 'is'} left out")
    if len(parts) == 2:
        test_only = sorted(set(parts[1][1]) - set(parts[0][1]) - {None})
        if test_only:
            notes.append(f"{root}: class{'es' if len(test_only) > 1 else ''} {', '.join(test_only[:3])} "
                         f"{'have' if len(test_only) > 1 else 'has'} test images but no training images")
    return notes
