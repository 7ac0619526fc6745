"""Downloading one dataset file (an IDX file or an archive) from a list of mirrors, safely.

Guarantees, because a half-written or wrong file in the cache would poison every later run:

* bytes go to a temporary ``.part`` file in the destination folder and are renamed into place (atomic on the
  same file system) only after the file decodes in its format and verifies against the registry;
* on any failure (HTTP error, timeout, connection dropped mid-body, checksum mismatch) the temporary file is
  removed and the next mirror is tried; the reason for each mirror is recorded for the final error message.

HTTP is done by pooch's :class:`~pooch.HTTPDownloader` (requests underneath, proxies from the environment),
with a short timeout so an unreachable mirror costs seconds, not minutes.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FileFormatError
from .registry import FileSpec
from .verify import FileCheck, Payload, check_file

__all__ = ["DOWNLOAD_TIMEOUT", "DownloadResult", "download_file", "offline"]

DOWNLOAD_TIMEOUT = 15.0
_CHUNK = 1 << 16


@dataclass
class DownloadResult:
    """Where the file landed (``None`` if every mirror failed) and why each failed mirror was rejected.

    ``array`` is the decoded payload: an array for an IDX file, arrays by role for an archive.
    """

    path: Path | None = None
    array: Payload | None = None
    check: FileCheck | None = None
    failures: list[str] = field(default_factory=list)


def offline() -> bool:
    """True when ``$VAEKIT_OFFLINE`` asks vaekit never to touch the network."""
    return os.environ.get("VAEKIT_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def _short_reason(exc: BaseException) -> str:
    """A short, one-line description of a network error (requests' own messages run to hundreds of chars)."""
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection broken mid-download"
    text = " ".join(str(exc).split())
    errno_match = re.search(r"\[Errno -?\d+\] [^')\]]+", text)
    if errno_match:
        text = errno_match.group(0)
    elif len(text) > 120:
        text = text[:117] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _ProgressBar:
    """The progress-bar protocol pooch expects (``total``, ``update``, ``reset``, ``close``) over tqdm.

    A bare tqdm cannot be handed to pooch: pooch tests the bar's truthiness, which tqdm refuses to define
    before its total is known.
    """

    def __init__(self, desc: str) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(
            desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False, file=sys.stderr
        )

    @property
    def total(self) -> float | None:
        return self._bar.total

    @total.setter
    def total(self, value: float) -> None:
        self._bar.total = value or None  # 0 means the server sent no length
        self._bar.refresh()

    def update(self, n: float) -> None:
        self._bar.update(n)

    def reset(self) -> None:
        self._bar.reset(total=self._bar.total)

    def close(self) -> None:
        self._bar.close()


def _fetch_url(url: str, output: Path, *, progress: bool, timeout: float, desc: str) -> None:
    import pooch

    bar = _ProgressBar(desc) if progress else None
    try:
        downloader = pooch.HTTPDownloader(
            progressbar=bar if bar is not None else False,
            chunk_size=_CHUNK,
            timeout=timeout,
            # The .gz bytes are the checksummed object; never let a server or proxy re-encode them in transit.
            headers={"Accept-Encoding": "identity"},
        )
        downloader(url, str(output), None)
    finally:
        if bar is not None:
            bar.close()


def download_file(
    spec: FileSpec,
    mirrors: tuple[str, ...] | list[str],
    dest_dir: Path,
    *,
    progress: bool = True,
    timeout: float = DOWNLOAD_TIMEOUT,
) -> DownloadResult:
    """Download ``spec`` into ``dest_dir``, trying ``mirrors`` in order until one yields a verified file.

    The file is saved under its official ``.gz`` name, or its uncompressed name if a mirror served it
    decompressed (it then verifies by SHA-256). An existing file of that name is replaced only by a verified
    one.
    """
    import requests

    result = DownloadResult()
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        result.failures.append(f"cannot create {dest_dir} ({exc.strerror or exc})")
        return result
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + spec.filename
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=dest_dir)
        except OSError as exc:
            result.failures.append(f"cannot write to {dest_dir} ({exc.strerror or exc})")
            return result
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _fetch_url(url, tmp, progress=progress, timeout=timeout, desc=spec.filename)
            array, check = check_file(tmp, spec, source=url)
            if not check.verified:
                result.failures.append(f"{url}: {check.problem()}")
                continue
            final = dest_dir / (spec.filename if check.compressed else spec.raw_name)
            os.replace(tmp, final)
            result.path, result.array = final, array
            result.check = FileCheck(
                final, spec, check.compressed, check.md5, check.sha256, check.md5_ok, check.sha256_ok
            )
            return result
        except FileFormatError as exc:
            result.failures.append(str(exc).split(";")[0])
        except (requests.RequestException, OSError, ValueError) as exc:
            result.failures.append(f"{url}: {_short_reason(exc)}")
        finally:
            tmp.unlink(missing_ok=True)
    return result
