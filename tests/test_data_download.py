"""Downloads from a real HTTP server on 127.0.0.1: mirror fallback, verification, nothing partial cached."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from vaekit.cli import main as data_main
from vaekit.data import (
    DATASETS,
    DataError,
    DatasetNotFoundError,
    DatasetSpec,
    FileSpec,
    load_splits,
    register,
    write_idx,
)
from vaekit.data.download import download_file
from vaekit.data.idx import encode_idx
from vaekit.data.registry import ROLES

from .conftest import http_server

NAMES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def make_arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, 40, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, 12, dtype=np.uint8),
    }


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the mirror folders; ``/cut/...`` sends half a file then hangs up, ``/hang/`` stalls."""

    requests_seen: list[str]

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self.server.requests_seen.append(self.path)  # type: ignore[attr-defined]
        if self.path.startswith("/cut/"):
            body = (Path(self.directory) / "good" / self.path.rsplit("/", 1)[1]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path.startswith("/hang/"):
            time.sleep(5)  # longer than the client's timeout; the client is gone by now, so send nothing
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A threaded HTTP server over a temporary folder; yields (base URL, folder, list of request paths)."""
    root = tmp_path / "www"
    root.mkdir()
    with http_server(root, Handler) as (url, seen):
        yield url, root, seen


@pytest.fixture
def online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Network allowed (only the local server is ever contacted); own cache; registry restored afterwards."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("VAEKIT_DATA", str(cache))
    monkeypatch.setenv("VAEKIT_SEARCH_PATH", "")
    monkeypatch.delenv("VAEKIT_OFFLINE", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    saved = dict(DATASETS)
    yield cache
    DATASETS.clear()
    DATASETS.update(saved)


@pytest.fixture
def arrays(server) -> dict[str, np.ndarray]:
    """The true data, served by mirror ``good``; ``bad`` serves other valid IDX data, ``junk`` non-IDX."""
    _, root, _ = server
    good, bad = make_arrays(0), make_arrays(1)
    for role in ROLES:
        write_idx(_mkdir(root / "good") / NAMES[role], good[role])
        write_idx(_mkdir(root / "bad") / NAMES[role], bad[role])
        (_mkdir(root / "junk") / NAMES[role]).write_bytes(b"<html>mirror moved</html>")
        (_mkdir(root / "plain") / NAMES[role]).write_bytes(encode_idx(good[role]))  # served uncompressed
    _mkdir(root / "empty")
    return good


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def register_tiny(base: str, arrays: dict[str, np.ndarray], *mirrors: str) -> DatasetSpec:
    files = {}
    for role, array in arrays.items():
        payload = encode_idx(array)
        files[role] = FileSpec(
            NAMES[role],
            hashlib.md5(gzip.compress(payload, compresslevel=6, mtime=0)).hexdigest(),
            hashlib.sha256(payload).hexdigest(),
        )
    spec = DatasetSpec(
        name="tiny", description="test", mirrors=tuple(f"{base}/{m}/" for m in mirrors), **files
    )
    register(spec)
    return spec


def cache_listing(cache: Path) -> list[str]:
    return (
        sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) if cache.exists() else []
    )


def assert_same(splits, arrays: dict[str, np.ndarray]) -> None:
    for role in ROLES:
        np.testing.assert_array_equal(getattr(splits, role), arrays[role])


def test_download_success_then_cached(online: Path, server, arrays, capsys) -> None:
    base, _, seen = server
    register_tiny(base, arrays, "good")
    splits = load_splits("tiny", progress=False)
    assert splits.source == "download"
    assert_same(splits, arrays)
    assert cache_listing(online) == sorted(f"tiny/{n}" for n in NAMES.values())
    assert capsys.readouterr().err == "", "no progress bar when progress=False"
    assert len(seen) == 4
    again = load_splits("tiny", progress=False)
    assert again.source == str(online / "tiny") and len(seen) == 4, "second load comes from the cache"


def test_progress_bar_when_asked(online: Path, server, arrays, capsys) -> None:
    base, _, _ = server
    register_tiny(base, arrays, "good")
    assert_same(load_splits("tiny", progress=True), arrays)
    assert "train-images-idx3-ubyte.gz" in capsys.readouterr().err


def test_first_mirror_404_uses_second(online: Path, server, arrays) -> None:
    base, _, seen = server
    register_tiny(base, arrays, "empty", "good")
    assert_same(load_splits("tiny", progress=False), arrays)
    assert seen[:2] == ["/empty/train-images-idx3-ubyte.gz", "/good/train-images-idx3-ubyte.gz"]


@pytest.mark.parametrize("first", ["bad", "junk", "cut"])
def test_bad_first_mirror_retries_next(online: Path, server, arrays, first: str) -> None:
    base, _, seen = server
    register_tiny(base, arrays, first, "good")
    assert_same(load_splits("tiny", progress=False), arrays)
    assert f"/{first}/train-images-idx3-ubyte.gz" in seen
    assert cache_listing(online) == sorted(f"tiny/{n}" for n in NAMES.values())


def test_uncompressed_download_verified_by_sha256(online: Path, server, arrays) -> None:
    base, _, _ = server
    register_tiny(base, arrays, "plain")
    assert_same(load_splits("tiny", progress=False), arrays)
    assert cache_listing(online) == sorted(f"tiny/{n[:-3]}" for n in NAMES.values())


def test_all_mirrors_bad_leaves_nothing(online: Path, server, arrays) -> None:
    base, _, _ = server
    register_tiny(base, arrays, "empty", "bad", "junk", "cut")
    with pytest.raises(DatasetNotFoundError) as info:
        load_splits("tiny", progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert f"{base}/empty/train-images-idx3-ubyte.gz: HTTP 404" in message
    assert f"{base}/bad/train-images-idx3-ubyte.gz: checksum mismatch" in message
    assert f"{base}/junk/train-images-idx3-ubyte.gz: bad IDX magic" in message
    assert f"{base}/cut/train-images-idx3-ubyte.gz: connection broken" in message
    assert cache_listing(online) == [], "no partial or temporary file may land in the cache"


def test_connection_dropped_mid_body_leaves_nothing(online: Path, server, arrays) -> None:
    base, _, _ = server
    register_tiny(base, arrays, "cut")
    with pytest.raises(DataError):
        load_splits("tiny", progress=True)
    assert cache_listing(online) == []


def test_only_missing_files_are_downloaded(online: Path, server, arrays) -> None:
    base, root, seen = server
    register_tiny(base, arrays, "good")
    for role in ("train_images", "train_labels", "test_images"):
        write_idx(_mkdir(online / "tiny") / NAMES[role], arrays[role])
    assert load_splits("tiny", progress=False).source == "download"
    assert seen == ["/good/t10k-labels-idx1-ubyte.gz"]


def test_tampered_cache_file_is_replaced_by_download(online: Path, server, arrays, capsys) -> None:
    base, _, _ = server
    register_tiny(base, arrays, "good")
    load_splits("tiny", progress=False)
    write_idx(online / "tiny" / NAMES["test_images"], make_arrays(7)["test_images"])
    assert_same(load_splits("tiny", progress=False), arrays)
    assert "ignoring this cached copy" in capsys.readouterr().err
    assert_same(load_splits("tiny", progress=False), arrays)


def test_timeout_is_recorded(online: Path, server, arrays) -> None:
    base, _, _ = server
    spec = register_tiny(base, arrays, "hang")
    started = time.monotonic()
    result = download_file(spec.test_labels, spec.mirrors, online / "tiny", progress=False, timeout=0.3)
    assert time.monotonic() - started < 4, "the short timeout applies, not the server's 5 s stall"
    assert result.path is None and result.failures == [f"{base}/hang/t10k-labels-idx1-ubyte.gz: timed out"]
    assert cache_listing(online) == []


def test_cli_fetch_downloads(online: Path, server, arrays, capsys) -> None:
    base, _, _ = server
    register_tiny(base, arrays, "empty", "good")
    assert data_main(["data", "fetch", "tiny", "--no-progress"]) == 0
    assert capsys.readouterr().out.count(str(online / "tiny")) == 4
    dest = online.parent / "portable"
    assert data_main(["data", "fetch", "tiny", "--data-dir", str(dest), "--no-progress"]) == 0
    assert sorted(p.name for p in dest.iterdir()) == sorted(NAMES.values())


def test_cli_fetch_replaces_bad_cache_file(online: Path, server, arrays, capsys) -> None:
    base, _, seen = server
    register_tiny(base, arrays, "good")
    assert data_main(["data", "fetch", "tiny", "--no-progress"]) == 0
    tampered = online / "tiny" / NAMES["test_images"]
    write_idx(tampered, make_arrays(3)["test_images"])
    assert data_main(["data", "fetch", "tiny", "--no-progress"]) == 0
    assert seen.count("/good/t10k-images-idx3-ubyte.gz") == 2 and len(seen) == 5
    assert data_main(["data", "verify", "tiny"]) == 0
    assert_same(load_splits("tiny", progress=False), arrays)


def test_cli_fetch_failure_exits_2(online: Path, server, arrays, capsys) -> None:
    base, _, _ = server
    register_tiny(base, arrays, "empty")
    assert data_main(["data", "fetch", "tiny", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vaekit data: error: cannot fetch") and "HTTP 404" in err
    assert cache_listing(online) == []


def test_unnamed_dataset_falls_back_after_failed_download(online: Path, server, arrays, capsys) -> None:
    """MNIST mirrors that fail verification: the download is tried, then the embedded subset is used."""
    base, _, seen = server
    mnist = DATASETS["mnist"]
    register(dataclasses.replace(mnist, mirrors=(f"{base}/bad/",)))
    splits = load_splits(progress=False)
    assert splits.name == "mnist-embedded" and splits.train_images.shape == (4000, 28, 28)
    assert seen == ["/bad/train-images-idx3-ubyte.gz"]
    assert "vaekit: warning: MNIST was not found" in capsys.readouterr().err
    assert cache_listing(online) == []


def test_checksum_mismatch_tries_the_next_mirror_once_then_errors(online: Path, server, arrays) -> None:
    """Two mirrors serving the wrong data: each is asked once for the first file, then the load stops with one
    line naming both mismatches, and nothing lands in the cache."""
    base, root, seen = server
    for name in NAMES.values():
        (_mkdir(root / "bad2") / name).write_bytes((root / "bad" / name).read_bytes())
    register_tiny(base, arrays, "bad", "bad2")
    with pytest.raises(DatasetNotFoundError) as info:
        load_splits("tiny", progress=False)
    assert seen == ["/bad/train-images-idx3-ubyte.gz", "/bad2/train-images-idx3-ubyte.gz"]
    message = str(info.value)
    assert "\n" not in message and message.count("checksum mismatch") == 2
    assert cache_listing(online) == []


def test_leftover_of_a_killed_download_is_never_used(online: Path, server, arrays) -> None:
    """A download killed mid-body leaves only its hidden ``.part`` file; it is never taken for the real file."""
    base, root, _ = server
    register_tiny(base, arrays, "good")
    cached = _mkdir(online / "tiny")
    for name in NAMES.values():
        (cached / f".{name}.k1ll3d.part").write_bytes((root / "bad" / name).read_bytes()[:100])
    assert_same(load_splits("tiny", progress=False), arrays)
    assert sorted(p for p in cache_listing(online) if not p.split("/")[-1].startswith(".")) == \
        sorted(f"tiny/{n}" for n in NAMES.values())
