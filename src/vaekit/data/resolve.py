"""Finding a dataset: the user's folder, the cache, copies already on the machine, then the mirrors.

:func:`load_splits` resolves a dataset in this order and stops at the first complete, usable copy:

1. ``data_dir``, if given: the folder itself, or its torchvision-style ``<DIR>/MNIST/raw`` (etc.) or
   ``<DIR>/<name>`` subfolder. Structure is fully validated, but a checksum mismatch is only a warning: the
   user pointed at these files on purpose (a custom subset, say). Missing files are an error; there is no
   fallback.
2. the cache, ``cache_dir()/<name>/``, strictly verified: a file that fails is warned about and ignored.
3. copies already on the machine, strictly verified: ``<root>/MNIST/raw`` (torchvision; ``FashionMNIST``,
   ``KMNIST`` likewise) and ``<root>/<name>`` for each root in ``$VAEKIT_SEARCH_PATH``
   (``os.pathsep``-separated) or, when that is unset, the current folder, ``./data``, ``~/data``, ``~/.torch``
   and ``/usr/share/datasets`` (where Debian's ``dataset-fashion-mnist`` package puts Fashion-MNIST). Setting
   ``$VAEKIT_SEARCH_PATH`` replaces that whole list, so an empty value searches nowhere.
4. a download into the cache, unless ``download=False`` or ``$VAEKIT_OFFLINE=1``.
5. otherwise a one-line :class:`~vaekit.data.errors.DatasetNotFoundError` saying what was tried and how to
   fix it.

When no dataset is named at all (``name=None`` and no ``data_dir``) and MNIST cannot be found or downloaded,
the 5,000-digit MNIST subset embedded in vaekit is returned instead, with a warning on stderr, so that a
fresh install works offline. Naming ``"mnist"`` explicitly never falls back: asking for MNIST and silently
training on 5,000 digits would make results incomparable.

Warnings are printed as one ``vaekit: warning: ...`` line on stderr (not through :mod:`warnings`, which would
print a source line and hide repeats).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..text import printable
from .download import download_file, offline
from .embedded import EMBEDDED_SOURCE, embedded_csv_path, load_embedded
from .errors import DataError, DatasetNotFoundError, FileFormatError
from .registry import (
    EMBEDDED_NAME,
    ROLES,
    DatasetSpec,
    FileSpec,
    cache_dir,
    get_spec,
    normalise_name,
    provided_roles,
)
from .splits import Splits, make_splits
from .verify import FileCheck, check_file, find_file, find_files, role_arrays

__all__ = [
    "default_search_roots",
    "fetch",
    "load_splits",
    "locate",
    "search_folders",
    "search_roots",
    "verify_folder",
    "verify_locations",
]

DEBIAN_DATASETS = Path("/usr/share/datasets")


def warn(message: str) -> None:
    """Print a one-line warning on stderr."""
    print(f"vaekit: warning: {printable(message)}", file=sys.stderr, flush=True)


def default_search_roots() -> list[Path]:
    """Roots searched for existing copies when ``$VAEKIT_SEARCH_PATH`` is not set."""
    roots = []
    try:
        cwd = Path.cwd()
        roots += [cwd, cwd / "data"]
    except OSError:
        pass
    home = Path.home()
    roots += [home / "data", home / ".torch", DEBIAN_DATASETS]
    return roots


def search_roots() -> list[Path]:
    """``$VAEKIT_SEARCH_PATH`` (replacing the defaults entirely, so tests can be hermetic) or the defaults."""
    env = os.environ.get("VAEKIT_SEARCH_PATH")
    if env is None:
        return default_search_roots()
    return [Path(part).expanduser() for part in env.split(os.pathsep) if part.strip()]


def _layouts(base: Path, spec: DatasetSpec) -> list[Path]:
    """Folders under ``base`` that may hold ``spec``'s files: torchvision's ``<Folder>/raw``, ``<name>``."""
    folders = []
    if spec.torchvision_folder:
        folders.append(base / spec.torchvision_folder / "raw")
    folders.append(base / spec.name)
    return folders


def search_folders(spec: DatasetSpec) -> list[Path]:
    """Every folder step 3 looks in for ``spec``, in order."""
    return [folder for root in search_roots() for folder in _layouts(root, spec)]


@dataclass
class _FolderScan:
    """What one folder holds of a dataset: usable arrays by role, and why the other roles are not usable."""

    folder: Path
    n_files: int = len(ROLES)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(role in self.arrays for role in ROLES)

    @property
    def present(self) -> bool:
        """True when at least one of the files exists here (usable or not)."""
        return len(self.missing) < self.n_files

    def summary(self) -> str:
        if not self.present:
            return "no files"
        parts = list(self.problems)
        if self.missing:
            parts.append("missing " + ", ".join(self.missing))
        return "; ".join(parts) if parts else "complete"


def _scan(folder: Path, spec: DatasetSpec, *, strict: bool, warn_rejects: bool = False) -> _FolderScan:
    """Load what ``folder`` holds of ``spec``. In strict mode broken or unverified files count as absent.

    In strict mode every copy of a file (``.gz``, uncompressed, ...) is tried, so one bad copy does not hide a
    good one next to it; otherwise the preferred copy is the one the user gets.
    """
    scan = _FolderScan(folder, n_files=len(spec.files()))
    for role, fspec in spec.files().items():
        paths = find_files(folder, fspec)
        if not paths:
            scan.missing.append(fspec.filename)
            continue
        for path in paths if strict else paths[:1]:
            if _scan_one(scan, role, path, fspec, strict=strict, warn_rejects=warn_rejects):
                break
    return scan


def _scan_one(
    scan: _FolderScan, role: str, path: Path, fspec: FileSpec, *, strict: bool, warn_rejects: bool
) -> bool:
    """Load one file into ``scan``; return whether it was accepted."""
    try:
        payload, check = check_file(path, fspec)
    except FileFormatError as exc:
        if not strict:
            raise
        reason = str(exc).split(";")[0]
        scan.problems.append(reason)
        if warn_rejects:
            warn(f"{reason}; ignoring this cached copy")
        return False
    if not check.verified:
        if strict:
            scan.problems.append(f"{path}: {check.problem()}")
            if warn_rejects:
                warn(f"{path}: {check.problem()}; ignoring this cached copy")
            return False
        warn(f"{path}: {check.problem()}; using it anyway because it was passed as the data folder")
    for provided, array in role_arrays(role, payload).items():
        scan.arrays[provided] = array
        scan.names[provided] = str(path)
    return True


def _splits_or_problem(spec: DatasetSpec, scan: _FolderScan, source: str) -> Splits | None:
    """Splits from a complete strict scan, or ``None`` (problem recorded) if the files do not fit together."""
    try:
        return make_splits(spec, scan.arrays, scan.names, source)
    except DataError as exc:
        scan.problems.append(str(exc).split(";")[0])
        return None


def _load_user_dir(spec: DatasetSpec, base: Path) -> Splits:
    if not base.is_dir():
        raise DataError(
            f"data folder {base} does not exist or is not a folder; pass --data-dir DIR holding "
            f"{_files_phrase(spec)} of {spec.name}"
        )
    candidates = [base, *_layouts(base, spec)]
    present = {
        folder: [f for f in spec.files().values() if find_file(folder, f) is not None]
        for folder in candidates
    }
    complete = [folder for folder in candidates if len(present[folder]) == len(spec.files())]
    if not complete:
        best = max(candidates, key=lambda folder: len(present[folder]))  # first wins ties, i.e. base itself
        missing = [f.filename for f in spec.files().values() if f not in present[best]]
        raise DataError(
            f"data folder {best} lacks {', '.join(missing)} for {spec.name}; put {_files_phrase(spec)} there"
        )
    scan = _scan(complete[0], spec, strict=False)
    return make_splits(spec, scan.arrays, scan.names, str(complete[0]))


def _find_local(spec: DatasetSpec, attempts: list[str] | None = None) -> tuple[Splits | None, _FolderScan]:
    """Steps 2 and 3: a verified complete copy in the cache or a search folder (and the cache's scan)."""
    cache = cache_dir() / spec.name
    cache_scan = _scan(cache, spec, strict=True, warn_rejects=True)
    if cache_scan.complete:
        splits = _splits_or_problem(spec, cache_scan, str(cache))
        if splits is not None:
            return splits, cache_scan
        cache_scan.arrays.clear()
    if attempts is not None:
        attempts.append(f"cache {cache}: {cache_scan.summary()}")
    roots = search_roots()
    rejected: list[str] = []
    for root in roots:
        for folder in _layouts(root, spec):
            if not folder.is_dir():
                continue
            scan = _scan(folder, spec, strict=True)
            if scan.complete:
                splits = _splits_or_problem(spec, scan, str(folder))
                if splits is not None:
                    return splits, cache_scan
            if scan.present:
                rejected.append(f"{folder}: {scan.summary()}")
    if attempts is not None:
        where = ", ".join(str(r) for r in roots) if roots else "nothing ($VAEKIT_SEARCH_PATH is empty)"
        attempts.append(f"searched {where}" + (f" ({'; '.join(rejected)})" if rejected else ": no copy"))
    return None, cache_scan


def _download_missing(
    spec: DatasetSpec, dest: Path, have: dict[str, np.ndarray], names: dict[str, str], progress: bool
) -> list[str]:
    """Download each role not in ``have`` into ``dest`` (filling ``have``/``names``); return failures."""
    for role, fspec in spec.files().items():
        if all(provided in have for provided in provided_roles(role)):
            continue
        result = download_file(fspec, spec.mirrors, dest, progress=progress)
        if result.path is None or result.array is None:
            # Later files would almost surely fail the same way; stop rather than wait on more timeouts.
            return [f"download of {fspec.filename} failed ({', '.join(result.failures) or 'no mirrors'})"]
        for provided, array in role_arrays(role, result.array).items():
            have[provided] = array
            names[provided] = str(result.path)
    return []


def _download_blocker(spec: DatasetSpec, download: bool) -> str | None:
    """Why no download may be attempted (``None``: it may)."""
    if not download:
        return "disabled (download=False)"
    if offline():
        return "skipped ($VAEKIT_OFFLINE is set)"
    if not spec.mirrors:
        return "impossible (no mirrors registered)"
    return None


def _files_phrase(spec: DatasetSpec) -> str:
    """How to name the files a folder must hold for ``spec``, for error messages."""
    names = ", ".join(f.filename for f in spec.files().values())
    if spec.archive is not None:
        return names
    return f"all four IDX files ({names}, .gz or uncompressed)"


def _not_found(spec: DatasetSpec, attempts: list[str]) -> DatasetNotFoundError:
    files = ", ".join(f.filename for f in spec.files().values())
    what = files if spec.archive is not None else f"{files} (.gz or uncompressed)"
    fix = (
        f"fix: pass --data-dir DIR holding {what}, or run `vaekit data fetch "
        f"{spec.name}` on a connected machine and copy {cache_dir() / spec.name} to the same place here, or "
        f"set VAEKIT_DATA to a folder holding {spec.name}/ with those files"
    )
    return DatasetNotFoundError(f"{spec.name} not found: " + "; ".join(attempts) + "; " + fix)


def _resolve(spec: DatasetSpec, *, download: bool, progress: bool) -> Splits:
    attempts: list[str] = []
    splits, cache_scan = _find_local(spec, attempts)
    if splits is not None:
        return splits
    blocker = _download_blocker(spec, download)
    if blocker is not None:
        attempts.append(f"download: {blocker}")
        raise _not_found(spec, attempts)
    have, names = dict(cache_scan.arrays), dict(cache_scan.names)
    failures = _download_missing(spec, cache_dir() / spec.name, have, names, progress)
    if failures:
        attempts += failures
        raise _not_found(spec, attempts)
    return make_splits(spec, have, names, "download")


def load_splits(
    name: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    progress: bool = True,
) -> Splits:
    """Load a dataset's train and test splits as ``uint8`` arrays (images (N, 28, 28), labels (N,)).

    ``name`` is a registered dataset (``"mnist"``, ``"fashion-mnist"``, ``"kmnist"``, ...) or
    ``"mnist-embedded"``. ``None`` means MNIST, with the embedded-subset fallback described in the module
    docstring (only when ``data_dir`` is not given either). ``progress`` shows a progress bar while
    downloading. Raises :class:`~vaekit.data.errors.DataError` (one line: what is wrong and what to do).
    """
    fallback = name is None and data_dir is None
    key = "mnist" if name is None else normalise_name(name)
    if key == EMBEDDED_NAME:
        return load_embedded()
    spec = get_spec(key)
    if data_dir is not None:
        return _load_user_dir(spec, Path(data_dir).expanduser())
    try:
        return _resolve(spec, download=download, progress=progress)
    except DatasetNotFoundError:
        if not fallback:
            raise
        splits = load_embedded()
        warn(
            "MNIST was not found on this machine and could not be downloaded; training on the 5,000-digit "
            "MNIST subset embedded in vaekit (4,000 train / 1,000 test) instead. For the full data run "
            "`vaekit data fetch mnist` on a connected machine, or pass --data-dir DIR with the four MNIST "
            "IDX files"
        )
        return splits


def locate(name: str) -> str | None:
    """Where a verified complete copy of ``name`` is now (cache or search folder); never downloads."""
    key = normalise_name(name)
    if key == EMBEDDED_NAME:
        try:
            embedded_csv_path()
        except DataError:
            return None
        return EMBEDDED_SOURCE
    splits, _ = _find_local(get_spec(key))
    return None if splits is None else splits.source


def _copy_into(src: Path, dest_dir: Path) -> Path:
    """Copy ``src`` into ``dest_dir`` under the same name, atomically (temporary file, then rename)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{src.name}.", suffix=".part", dir=dest_dir)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest_dir / src.name)
        return dest_dir / src.name
    finally:
        Path(tmp).unlink(missing_ok=True)


def fetch(
    name: str, data_dir: str | os.PathLike[str] | None = None, *, progress: bool = True
) -> dict[str, Path]:
    """Put a verified copy of every file of ``name`` in ``data_dir`` (default: the cache); return the paths.

    Files already there and verified are kept; others are copied from a verified copy elsewhere on the machine
    (cache or search folders) or downloaded. In the cache an unverified file is replaced; in a user's folder
    it is never overwritten (a :class:`DataError` says to move it away).
    """
    key = normalise_name(name)
    if key == EMBEDDED_NAME:
        raise DataError(f"{EMBEDDED_NAME} ships inside vaekit; there is nothing to fetch")
    spec = get_spec(key)
    managed = data_dir is None
    dest = cache_dir() / spec.name if managed else Path(data_dir).expanduser()
    elsewhere = [folder for folder in [cache_dir() / spec.name, *search_folders(spec)] if folder != dest]
    paths: dict[str, Path] = {}
    for role, fspec in spec.files().items():
        good, bad = None, []
        for path in find_files(dest, fspec):
            problem = _problem(path, fspec)
            if not problem:
                good = path
                break
            bad.append((path, problem))
        if good is not None:
            paths[role] = good
            continue
        if bad and not managed:
            path, problem = bad[0]
            raise DataError(
                f"{path}: {problem}; it was not overwritten, move it away and run the fetch again"
            )
        for path, _ in bad:
            path.unlink()  # a bad copy in the cache would shadow the good one fetched next
        copied = _copy_verified(fspec, elsewhere, dest)
        if copied is not None:
            paths[role] = copied
            continue
        blocker = _download_blocker(spec, True)
        if blocker is not None:
            raise DatasetNotFoundError(
                f"cannot fetch {fspec.filename} of {spec.name}: no verified copy on this machine and "
                f"download {blocker}; run the fetch on a connected machine (without VAEKIT_OFFLINE) and copy "
                f"the files into {dest}"
            )
        result = download_file(fspec, spec.mirrors, dest, progress=progress)
        if result.path is None:
            raise DatasetNotFoundError(
                f"cannot fetch {fspec.filename} of {spec.name}: {', '.join(result.failures)}; check the "
                f"network connection or copy the file from a machine that has it into {dest}"
            )
        paths[role] = result.path
    return paths


def _problem(path: Path, fspec: FileSpec) -> str:
    """Why ``path`` is not a verified copy of ``fspec`` (empty string: it is)."""
    try:
        _, check = check_file(path, fspec)
    except FileFormatError as exc:
        return str(exc).split(";")[0].removeprefix(f"{path}: ")
    return check.problem()


def _copy_verified(fspec: FileSpec, folders: list[Path], dest: Path) -> Path | None:
    """Copy the first verified copy of ``fspec`` found in ``folders`` into ``dest``."""
    for folder in folders:
        for path in find_files(folder, fspec):
            if not _problem(path, fspec):
                return _copy_into(path, dest)
    return None


@dataclass
class FileReport:
    """One row of ``vaekit data verify``: a file's digests against the registry."""

    role: str
    expected_name: str
    path: Path | None
    check: FileCheck | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.check is not None and self.check.verified


def verify_folder(spec: DatasetSpec, folder: Path) -> list[FileReport]:
    """Check each of ``spec``'s files in ``folder``; never raises for missing or broken files."""
    reports = []
    for role, fspec in spec.files().items():
        path = find_file(folder, fspec)
        report = FileReport(role, fspec.filename, path)
        if path is None:
            report.error = "missing"
        else:
            try:
                _, report.check = check_file(path, fspec)
            except FileFormatError as exc:
                report.error = str(exc).split(";")[0]
        reports.append(report)
    return reports


def _user_dir_folder(spec: DatasetSpec, base: Path) -> Path:
    """The folder under ``base`` (itself or a known subfolder layout) holding the most of ``spec``'s files."""
    candidates = [base, *_layouts(base, spec)]
    return max(candidates, key=lambda f: sum(find_file(f, s) is not None for s in spec.files().values()))


def verify_locations(
    name: str, data_dir: str | os.PathLike[str] | None = None
) -> list[tuple[Path, list[FileReport]]]:
    """Reports for ``data_dir`` (if given) or for every location (cache, search folders) holding any file."""
    spec = get_spec(name)
    if data_dir is not None:
        folder = _user_dir_folder(spec, Path(data_dir).expanduser())
        return [(folder, verify_folder(spec, folder))]
    out = []
    for folder in [cache_dir() / spec.name, *search_folders(spec)]:
        if folder.is_dir() and any(find_file(folder, f) is not None for f in spec.files().values()):
            out.append((folder, verify_folder(spec, folder)))
    return out
