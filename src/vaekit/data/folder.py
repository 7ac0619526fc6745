"""Reading a folder of images into one ``uint8`` array, decoded once and cached.

The layout (a given split, class subfolders or neither) is worked out by :mod:`vaekit.data.layout`.

Reading happens in two passes over a thread pool: the headers first (cheap; skipped when ``image_size`` and
``channels`` are both given), which settle the number of channels and the image size or show that sizes
differ, then the pixels. Pillow releases the GIL while it decodes, so one thread per core uses the machine's
cores where decoding costs most (large photos); small images cost little either way (a 28x28 PNG decodes in
about 0.25 ms), and threads spare the user's script the pitfalls of worker processes (pickled results, a
re-imported ``__main__``). Every unusable file is found before anything is raised, and the result is cached
(see :mod:`vaekit.data.imagecache`) only when it is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from . import imagecache
from .errors import BadInputError
from .images import FORMAT_NAMES, ImageProblem, Probe, decode_image, probe_image
from .layout import FolderPlan, plan_folder
from .memory import check_fits
from .resolve import warn
from .splits import RawData, content_digest
from .walk import Entry

__all__ = ["FolderPlan", "bad_files_error", "parallel_map", "plan_folder", "read_folder", "warn_ignored"]

_BATCH = 32
T = TypeVar("T")
R = TypeVar("R")


def _digest_key(plan: FolderPlan, image_size: int | None, channels: int | None) -> tuple[str, str]:
    """(cache key, identity of the folder + options) for ``plan`` decoded with these options.

    The key covers the folder's real path and, per file, everything that identifies its content on disk (see
    :class:`~vaekit.data.walk.Entry`), so another folder with the same names, sizes and times, or a file rewritten
    keeping its size and modification time, never gets this folder's decoded pixels.
    """
    options = json.dumps(
        {"format": imagecache.FORMAT_VERSION, "image_size": image_size, "channels": channels,
         "given": plan.given}
    )
    identity = hashlib.sha256(f"{os.path.realpath(plan.root)}\0{options}".encode("utf-8", "surrogateescape"))
    digest = identity.copy()
    for e in plan.entries:
        digest.update(f"{e.rel}\0{e.size}\0{e.mtime_ns}\0{e.ctime_ns}\0{e.inode}\0{e.device}\n"
                      .encode("utf-8", "surrogateescape"))
    for rel, problem in plan.bad:
        digest.update(f"bad\0{rel}\0{problem}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32], identity.hexdigest()[:32]


def parallel_map(work: Callable[[Sequence[T]], list[R]], items: Sequence[T], desc: str, progress: bool) -> list[R]:
    """``work`` over ``items`` in batches on a thread pool, in order, with a progress bar; Ctrl-C stops it."""
    from tqdm.auto import tqdm

    batches = [items[i : i + _BATCH] for i in range(0, len(items), _BATCH)]
    results: list[list[R]] = [[] for _ in batches]
    pool = ThreadPoolExecutor(max_workers=_cores(), thread_name_prefix="vaekit-decode")
    try:
        with warnings.catch_warnings(), tqdm(
            total=len(items), desc=desc, unit="img", disable=not progress, leave=False, file=sys.stderr
        ) as bar:
            # Problems are reported per file by vaekit; Pillow's own warnings (oversized images, odd EXIF)
            # would only repeat them, many lines at a time.
            warnings.filterwarnings("ignore", module=r"PIL\.")
            warnings.simplefilter("ignore", category=_bomb_warning())
            futures: dict[Future[list[R]], int] = {pool.submit(work, b): i for i, b in enumerate(batches)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    results[futures[future]] = future.result()
                    bar.update(len(batches[futures[future]]))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [r for batch in results for r in batch]


def _cores() -> int:
    """CPU cores this process may use (its affinity mask where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _bomb_warning() -> type[Warning]:
    from PIL import Image

    return Image.DecompressionBombWarning


def _probe_all(plan: FolderPlan, progress: bool) -> tuple[list[Probe | None], list[tuple[str, str]]]:
    """Headers of every entry: a :class:`Probe` each (``None`` where the file is bad) and the bad ones."""

    def work(batch: Sequence[Entry]) -> list[Probe | str]:
        out: list[Probe | str] = []
        for entry in batch:
            try:
                out.append(probe_image(plan.root / entry.rel))
            except ImageProblem as exc:
                out.append(str(exc))
        return out

    found = parallel_map(work, plan.entries, "checking images", progress)
    bad = [(e.rel, r) for e, r in zip(plan.entries, found, strict=True) if isinstance(r, str)]
    return [r if isinstance(r, Probe) else None for r in found], bad


def _size_error(plan: FolderPlan, probes: list[Probe | None], n_bad: int) -> BadInputError:
    counts = Counter((p.width, p.height) for p in probes if p is not None)
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{w}x{h}: {n:,}" for (w, h), n in ordered[:6])
    if len(ordered) > 6:
        shown += f", and {len(ordered) - 6} more sizes"
    rare = ordered[-1][0]
    example = next(e.rel for e, p in zip(plan.entries, probes, strict=True) if p and (p.width, p.height) == rare)
    also = f"; {n_bad:,} more files cannot be read" if n_bad else ""
    return BadInputError(
        f"{plan.root}: the images have different sizes (width x height: {shown}; e.g. {example} is "
        f"{rare[0]}x{rare[1]}){also}; pass --image-size N to resize (shorter side) and centre-crop them all to NxN"
    )


def _decode_all(
    plan: FolderPlan, rows: list[int], out: np.ndarray, channels: int, image_size: int | None, progress: bool
) -> list[tuple[str, str]]:
    """Decode entries ``rows`` into ``out`` (row i of ``out`` for the i-th of ``rows``); return the bad ones."""

    def work(batch: Sequence[int]) -> list[tuple[str, str]]:
        failed = []
        for slot in batch:
            rel = plan.entries[rows[slot]].rel
            try:
                array = decode_image(plan.root / rel, channels=channels, image_size=image_size)
            except ImageProblem as exc:
                failed.append((rel, str(exc)))
                continue
            if array.shape != out.shape[1:]:
                failed.append((rel, f"decodes to shape {array.shape}, not the {out.shape[1:]} its header says"))
                continue
            out[slot] = array
        return failed

    return parallel_map(work, range(len(rows)), "decoding images", progress)


def bad_files_error(root: Path | str, bad: list[tuple[str, str]]) -> BadInputError:
    """The one-line error for unusable files: the first one, how many others, and what to do."""
    rel, problem = bad[0]
    others = len(bad) - 1
    more = f"; {others:,} other file{'s are' if others != 1 else ' is'} bad too" if others else ""
    fix = "replace or delete it" if not others else "replace or delete them"
    return BadInputError(
        f"{Path(root) / rel}: {problem}{more}; {fix}, or pass --skip-bad to leave the bad files out", bad
    )


def _channels_for(probes: list[Probe | None], channels: int | None) -> int:
    if channels is not None:
        return channels
    return 1 if all(p.grey for p in probes if p is not None) else 3


def _empty_error(plan: FolderPlan) -> BadInputError:
    ignored = ""
    if plan.ignored:
        ignored = f" (ignored {plan.ignored:,} other files such as {', '.join(plan.ignored_examples)})"
    return BadInputError(
        f"{plan.root}: holds no images{ignored}; vaekit reads {FORMAT_NAMES} files in the folder and its "
        "subfolders, hidden ones excepted; put images there or pass another --data"
    )


def warn_ignored(plan: FolderPlan) -> None:
    """One line counting the files left out for their extension (``.heic``, none), so none vanishes unnoticed."""
    if plan.ignored:
        warn(f"{plan.root}: ignored {plan.ignored:,} other file(s) such as {', '.join(plan.ignored_examples)}; "
             f"vaekit reads {FORMAT_NAMES} files, so convert any of them you want used")


def _layout(
    plan: FolderPlan, image_size: int | None, channels: int | None, progress: bool
) -> tuple[list[int], int, tuple[int, int], list[tuple[str, str]]]:
    """(entries to decode, channels, (height, width), files refused by their header).

    The headers are read only when they decide something: the channels or, without ``image_size``, the size.
    """
    if image_size is not None and channels is not None:
        return list(range(len(plan.entries))), channels, (image_size, image_size), []
    probes, bad = _probe_all(plan, progress)
    found = [p for p in probes if p is not None]
    if image_size is None and len({(p.width, p.height) for p in found}) > 1:
        raise _size_error(plan, probes, len(plan.bad) + len(bad))
    if image_size is not None:
        size = (image_size, image_size)
    else:
        size = (found[0].height, found[0].width) if found else (1, 1)
    usable = [i for i, p in enumerate(probes) if p is not None]
    return usable, _channels_for(probes, channels), size, bad


def _decode_plan(
    plan: FolderPlan, image_size: int | None, channels: int | None, skip_bad: bool, progress: bool
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Decode the plan's images; return (images of the usable rows, their entry indices, the bad files)."""
    usable, n_channels, (height, width), header_bad = _layout(plan, image_size, channels, progress)
    shape = (len(usable), height, width) + ((3,) if n_channels == 3 else ())
    what = f"{plan.root}: the {len(usable):,} decoded {width}x{height} images"
    check_fits(int(np.prod(shape, dtype=np.int64)), what, "pass a smaller --image-size, or use fewer images")
    out = np.empty(shape, dtype=np.uint8)
    failed = _decode_all(plan, usable, out, n_channels, image_size, progress)
    bad = sorted(plan.bad + header_bad + failed)
    if failed and skip_bad:
        failed_rels = {rel for rel, _ in failed}
        keep = [slot for slot, i in enumerate(usable) if plan.entries[i].rel not in failed_rels]
        out = out[keep]
        usable = [usable[slot] for slot in keep]
    if bad and not skip_bad:
        raise bad_files_error(plan.root, bad)
    return out, usable, bad


def _check_counts(plan: FolderPlan, n_train: int | None, n_total: int, n_bad: int) -> None:
    """Refuse data too small to train and test on (after bad files are left out)."""
    skipped = f" ({n_bad:,} bad files left out)" if n_bad else ""
    if n_train is not None:
        for part, n in zip(plan.given, (n_train, n_total - n_train), strict=True):
            if n == 0:
                raise BadInputError(f"{plan.root / part}: holds no usable images{skipped}; put images there")
    if n_total < 2:
        raise BadInputError(
            f"{plan.root}: holds only {n_total} usable image{skipped}; at least 2 are needed (one to train on, "
            "one to test); add images"
        )


def _from_cache(plan: FolderPlan, key: str, skip_bad: bool) -> RawData | None:
    """The plan's images from the cache (``None``: not there, or the entry is damaged)."""
    entry = imagecache.read_entry(key)
    if entry is None:
        return None
    bad = [(rel, problem) for rel, problem in entry.meta["bad"]]
    if bad and not skip_bad:
        raise bad_files_error(plan.root, bad)
    return _raw(plan, entry.images, entry.labels, entry.meta, bad)


def read_folder(
    root: Path,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    cache: bool = True,
) -> RawData:
    """Decode every image under ``root`` (see the module docstring), from the cache when it is up to date."""
    plan = plan_folder(root)
    for note in plan.notes:
        warn(note)
    if plan.entries:
        warn_ignored(plan)
    if not plan.entries and not plan.bad:
        raise _empty_error(plan)
    key, identity = _digest_key(plan, image_size, channels)
    cached = _from_cache(plan, key, skip_bad) if cache else None
    if cached is not None:
        return cached
    images, rows, bad = _decode_plan(plan, image_size, channels, skip_bad, progress)
    n_train = None if plan.n_given_train is None else sum(1 for i in rows if i < plan.n_given_train)
    _check_counts(plan, n_train, len(rows), len(bad))
    labels = np.zeros(len(rows), np.int64) if plan.labels is None else np.asarray(plan.labels, np.int64)[rows]
    labels = labels.astype(np.uint8) if (labels.size == 0 or labels.max() < 256) else labels
    labelled = plan.labels is not None
    meta = {
        "bad": bad, "n_given_train": n_train, "stale_of": identity, "labelled": labelled,
        "files": [plan.entries[i].rel for i in rows],
        "digest": content_digest(images, labels if labelled else None, n_train),
    }
    if cache:
        try:
            stored = imagecache.write_entry(key, images, labels, meta)
            images, labels, meta = stored.images, stored.labels, stored.meta
        except OSError as exc:
            warn(f"cannot write the image cache under {imagecache.images_root()} ({exc}); decoding again next time")
    return _raw(plan, images, labels, meta, bad)


def _raw(plan: FolderPlan, images: np.ndarray, labels: np.ndarray, meta: dict[str, Any],
         bad: list[tuple[str, str]]) -> RawData:
    root = plan.root.resolve()
    return RawData(
        kind="folder",
        name=root.name or str(root),
        path=str(root),
        images=images,
        labels=labels if plan.class_names is not None else None,
        class_names=plan.class_names,
        digest=str(meta["digest"]),
        n_given_train=meta.get("n_given_train"),
        bad=bad,
        names=list(meta["files"]),
    )
