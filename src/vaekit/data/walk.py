"""Listing the image files under a folder: recursive, deterministic, and safe against symlink loops.

Hidden files and folders (names starting with ``.``) are skipped, as are files whose extension is not one of
:data:`~vaekit.data.images.IMAGE_EXTENSIONS`. Symbolic links are followed, but a folder whose real path was
already listed is not listed again, so two links to one folder do not duplicate its images (which could put
the same picture in both the training and the test split), and a link back to one of its own parent folders
is reported as a symlink loop instead of being followed forever.

Entries come out sorted by their path relative to the root (POSIX separators), so the same folder always
gives the same order on every machine.

A vaekit run folder below the root (one holding ``config.json`` beside ``model.safetensors`` or
``checkpoint.safetensors``) is not listed: its figures are a model's output, not training data, and a run
written inside its own data folder (``cd photos && vaekit train --data .``) would otherwise turn them into a
class of the next run. Such folders are counted in :attr:`Listing.runs`, so the caller can say so.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .images import IMAGE_EXTENSIONS

__all__ = ["Entry", "Listing", "list_images"]


# The files that make a folder a vaekit run folder (see vaekit.run.folder): its config and weights or checkpoint.
RUN_CONFIG = "config.json"
RUN_WEIGHTS = ("model.safetensors", "checkpoint.safetensors")


@dataclass(frozen=True)
class Entry:
    """One image file: its path relative to the listed root and what identifies its content on disk.

    Size and modification time alone do not: ``cp -p``, ``rsync -a`` and ``touch -r`` rewrite a file and keep
    both. The change time cannot be set by a program and moves with every write, and the device and inode tell
    a file apart from another with the same name, size and times elsewhere, so the decode cache keys on all.
    """

    rel: str
    size: int
    mtime_ns: int
    ctime_ns: int = 0
    inode: int = 0
    device: int = 0


@dataclass
class Listing:
    """Everything found under a root: usable entries, unusable ones ``(rel, problem)``, ignored file count."""

    entries: list[Entry] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    ignored: int = 0
    ignored_examples: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)


def _is_run_folder(names: set[str]) -> bool:
    """Whether a folder holding files ``names`` is a vaekit run folder."""
    return RUN_CONFIG in names and any(name in names for name in RUN_WEIGHTS)


def _stat_problem(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop (the link points back to itself)"
    if exc.errno == errno.ENOENT:
        return "broken symlink (its target does not exist)"
    return f"cannot read file ({exc.strerror or exc})"


def _ignore(listing: Listing, rel: str) -> None:
    listing.ignored += 1
    if len(listing.ignored_examples) < 3:
        listing.ignored_examples.append(rel)


def _scan_folder(folder: str, prefix: str, listing: Listing) -> list[tuple[str, str, str]]:
    """List one folder into ``listing``; return its subfolders as (path, relative prefix, real path)."""
    try:
        with os.scandir(folder) as it:
            items = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        listing.bad.append((prefix.rstrip("/") or ".", f"cannot list folder ({exc.strerror or exc})"))
        return []
    if prefix and _is_run_folder({item.name for item in items}):
        listing.runs.append(prefix.rstrip("/"))
        return []
    subfolders = []
    for item in items:
        if item.name.startswith("."):
            continue
        rel = prefix + item.name
        is_image = os.path.splitext(item.name)[1].lower() in IMAGE_EXTENSIONS
        try:
            info = item.stat()
        except OSError as exc:
            if is_image or exc.errno == errno.ELOOP:
                listing.bad.append((rel, _stat_problem(exc)))
            else:
                _ignore(listing, rel)
            continue
        if stat.S_ISDIR(info.st_mode):
            subfolders.append((item.path, rel + "/", os.path.realpath(item.path)))
        elif not is_image:
            _ignore(listing, rel)
        elif not stat.S_ISREG(info.st_mode):
            listing.bad.append((rel, "not a regular file"))
        else:
            listing.entries.append(
                Entry(rel, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev)
            )
    return subfolders


def list_images(root: Path, prefix: str = "") -> Listing:
    """Every image file under ``root`` (recursively), with ``prefix`` prepended to each relative path."""
    listing = Listing()
    top = os.path.realpath(root)
    seen = {top}
    # Each stack item carries its chain of parent folders as (real path, relative path) to detect loops.
    stack: list[tuple[str, str, tuple[tuple[str, str], ...]]] = [
        (os.fspath(root), prefix, ((top, prefix.rstrip("/") or "."),))
    ]
    while stack:
        folder, rel_prefix, chain = stack.pop()
        found = []
        for path, rel, real in _scan_folder(folder, rel_prefix, listing):
            parents = {parent_real: parent_rel for parent_real, parent_rel in chain}
            if real in parents:
                listing.bad.append((rel.rstrip("/"), f"symlink loop (links back to {parents[real]})"))
            elif real not in seen:
                seen.add(real)
                found.append((path, rel, (*chain, (real, rel.rstrip("/")))))
        stack.extend(reversed(found))
    listing.entries.sort(key=lambda e: e.rel)
    listing.bad.sort()
    listing.runs.sort()
    return listing
