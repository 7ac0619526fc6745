"""Checking an IDX file on disk against its registry entry.

The rule: a file verifies when the MD5 of its ``.gz`` bytes matches the official MD5 *or* the SHA-256 of its
decompressed bytes matches the known SHA-256. The second half accepts recompressed and uncompressed copies,
which are common and legitimate (Debian's package, torchvision's extracted files).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .idx import load_idx
from .registry import FileSpec

__all__ = ["FileCheck", "check_file", "find_file", "find_files"]


@dataclass(frozen=True)
class FileCheck:
    """Outcome of verifying one file. ``md5_ok``/``sha256_ok`` are ``None`` when that check cannot apply."""

    path: Path
    spec: FileSpec
    compressed: bool
    md5: str
    sha256: str
    md5_ok: bool | None
    sha256_ok: bool | None

    @property
    def verified(self) -> bool:
        """True when a known digest matches, or when the registry knows no digest for this file at all."""
        if self.md5_ok or self.sha256_ok:
            return True
        return not self.spec.has_reference

    def md5_status(self) -> str:
        if not self.compressed:
            return "n/a (uncompressed)"
        if self.spec.md5 is None:
            return "no reference"
        if self.md5_ok:
            return "ok"
        # The data matches, only the compression differs: not a problem, but worth showing.
        return "differs (recompressed)" if self.sha256_ok else "MISMATCH"

    def sha256_status(self) -> str:
        if self.spec.sha256 is None:
            return "no reference"
        return "ok" if self.sha256_ok else "MISMATCH"

    def problem(self) -> str:
        """One-clause reason the file does not verify (empty when it does)."""
        if self.verified:
            return ""
        if self.md5_ok is None and self.sha256_ok is None:
            return "cannot be verified (no SHA-256 is known for the uncompressed file; use the official .gz)"
        parts = []
        if self.md5_ok is False:
            parts.append(f"md5 {self.md5} != {self.spec.md5}")
        if self.sha256_ok is False:
            parts.append(f"decompressed sha256 {self.sha256[:16]}... != {self.spec.sha256[:16]}...")
        return "checksum mismatch (" + ", ".join(parts) + ")"


def check_file(
    path: str | os.PathLike[str], spec: FileSpec, *, source: str | None = None
) -> tuple[np.ndarray, FileCheck]:
    """Decode ``path`` (raising :class:`~vaekit.data.errors.IDXError` if broken) and verify its digests.

    Returns the array too, so a verified file is read from disk only once.
    """
    contents = load_idx(path, digests=True, source=source)
    md5 = contents.file_md5 or ""
    sha = contents.payload_sha256 or ""
    md5_ok = (md5 == spec.md5) if (contents.compressed and spec.md5 is not None) else None
    sha_ok = (sha == spec.sha256) if spec.sha256 is not None else None
    check = FileCheck(Path(path), spec, contents.compressed, md5, sha, md5_ok, sha_ok)
    return contents.array, check


def find_files(folder: Path, spec: FileSpec) -> list[Path]:
    """Every copy of the file in ``folder``, under any of its accepted names, in order of preference."""
    return [folder / name for name in spec.candidate_names() if (folder / name).is_file()]


def find_file(folder: Path, spec: FileSpec) -> Path | None:
    """The preferred copy of the file in ``folder`` (``None`` if there is none)."""
    found = find_files(folder, spec)
    return found[0] if found else None
