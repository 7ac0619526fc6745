"""Checking a dataset file on disk against its registry entry.

The rule: a file verifies when the MD5 of its ``.gz`` bytes matches the official MD5 *or* the SHA-256 of its
decompressed bytes matches the known SHA-256. The second half accepts recompressed and uncompressed copies,
which are common and legitimate (Debian's package, torchvision's extracted files). For an archive the
"decompressed bytes" are its records (see :mod:`vaekit.data.cifar`).

A file decodes to its payload: one array for an IDX file, a dict of arrays by role for an archive;
:func:`role_arrays` gives both the same shape.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cifar import decode_cifar10
from .idx import load_idx, read_file
from .registry import FileSpec, provided_roles

__all__ = ["FileCheck", "Payload", "check_file", "find_file", "find_files", "role_arrays"]

Payload = np.ndarray | dict[str, np.ndarray]


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


def _load(path: str | os.PathLike[str], spec: FileSpec, source: str | None) -> tuple[Payload, bool, str, str]:
    """Decode ``path`` in ``spec``'s format: (payload, compressed?, MD5 of the file, SHA-256 of the data)."""
    if spec.format == "idx":
        idx = load_idx(path, digests=True, source=source)
        return idx.array, idx.compressed, idx.file_md5 or "", idx.payload_sha256 or ""
    label = source if source is not None else os.fspath(path)
    archive = decode_cifar10(read_file(path, label), label)
    return archive.arrays, archive.compressed, archive.file_md5, archive.payload_sha256


def role_arrays(key: str, payload: Payload) -> dict[str, np.ndarray]:
    """The arrays a decoded file provides, by role (``key`` is its key in :meth:`DatasetSpec.files`)."""
    if isinstance(payload, dict):
        return {role: payload[role] for role in provided_roles(key)}
    return {key: payload}


def check_file(
    path: str | os.PathLike[str], spec: FileSpec, *, source: str | None = None
) -> tuple[Payload, FileCheck]:
    """Decode ``path`` (raising :class:`~vaekit.data.errors.FileFormatError` if broken) and verify its digests.

    Returns the payload too (see :func:`role_arrays`), so a verified file is read from disk only once.
    """
    payload, compressed, md5, sha = _load(path, spec, source)
    md5_ok = (md5 == spec.md5) if (compressed and spec.md5 is not None) else None
    sha_ok = (sha == spec.sha256) if spec.sha256 is not None else None
    return payload, FileCheck(Path(path), spec, compressed, md5, sha, md5_ok, sha_ok)


def find_files(folder: Path, spec: FileSpec) -> list[Path]:
    """Every copy of the file in ``folder``, under any of its accepted names, in order of preference."""
    return [folder / name for name in spec.candidate_names() if (folder / name).is_file()]


def find_file(folder: Path, spec: FileSpec) -> Path | None:
    """The preferred copy of the file in ``folder`` (``None`` if there is none)."""
    found = find_files(folder, spec)
    return found[0] if found else None
