"""Writes that fail (disk full, read-only file system, I/O error): the previous file stays, one line, exit 1.

Failures are injected as the ``OSError`` the operating system would raise, at the rename that publishes a file
or at the ``fsync`` before it (where a full disk surfaces with delayed allocation); permissions cannot be used
because the tests may run as root, whom ``chmod`` does not stop.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors.torch import load_file

import vaekit
from vaekit import run as runs
from vaekit.artifacts import CARD, EXPLORER, FIGURES, REPORT
from vaekit.cli import main
from vaekit.config import TrainConfig
from vaekit.errors import WriteError

from .conftest import hermetic_env, write_dataset

ERRORS = {errno.ENOSPC: "No space left on device", errno.EROFS: "Read-only file system",
          errno.EIO: "Input/output error"}


def _cfg(data: Path, **kw: object) -> TrainConfig:
    return TrainConfig(**{**dict(dataset="mnist", data_dir=str(data), epochs=1, batch_size=32, device="cpu",
                                 progress=False, grid_size=2, artifacts=False), **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Path]]:
    """(one-epoch run, data, the same run trained for two epochs without interruption)."""
    root = tmp_path_factory.mktemp("faults")
    data = write_dataset(root / "data", 128, 32)
    with hermetic_env(root / "cache"):
        vaekit.train(_cfg(data), root / "one")
        vaekit.train(_cfg(data, epochs=2), root / "two")
    yield root / "one", data, root / "two"


@pytest.fixture
def run_copy(trained: tuple[Path, Path, Path], tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    return run


def _fail_when(monkeypatch: pytest.MonkeyPatch, where: str, target: str, code: int = errno.ENOSPC) -> list[str]:
    """Make the ``where`` step ("replace" or "fsync") of every write of ``target`` fail with ``code``.

    Returns the list of failures raised, for asserting that the fault was met.
    """
    raised: list[str] = []

    def hit(name: str) -> bool:
        return name == target or name.startswith(f".{target}.tmp-")

    if where == "replace":
        real_replace = os.replace

        def replace(src: str | os.PathLike, dst: str | os.PathLike, *a: object, **k: object) -> None:
            if hit(Path(dst).name):
                raised.append(str(dst))
                raise OSError(code, os.strerror(code), str(dst))
            real_replace(src, dst, *a, **k)

        monkeypatch.setattr(os, "replace", replace)
    else:
        if not Path("/proc/self/fd").is_dir():
            pytest.skip("needs /proc to tell which file an fsync is for")
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
            if hit(name):
                raised.append(name)
                raise OSError(code, os.strerror(code))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    return raised


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir()}


def _assert_clean_failure(run: Path, before: dict[str, bytes], target: str, err: str, code: int) -> None:
    lines = [line for line in err.splitlines() if not line.startswith("vaekit: warning:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"could not write {run / target}: {ERRORS[code]}" in lines[0], lines[0]
    assert "the previous version is intact" in lines[0]
    after = _snapshot(run)
    assert not [n for n in after if runs.is_temporary(n)], f"temporary files left: {sorted(after)}"
    assert runs.LOCK not in after, "the lock is released"
    if target in before:
        assert after[target] == before[target], f"{target} changed"


# The files a resumed training writes, in order: config at the start, then at the epoch's end the
# checkpoint, the weights and the metrics, then the summary.
TRAINING_FILES = [runs.CONFIG, runs.CHECKPOINT, runs.WEIGHTS, runs.METRICS, runs.SUMMARY]


@pytest.mark.parametrize("target", TRAINING_FILES)
def test_a_failed_write_during_training_keeps_the_old_file(target: str, trained, run_copy: Path,
                                                           monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    before = _snapshot(run_copy)
    raised = _fail_when(monkeypatch, "replace", target)
    capsys.readouterr()
    code = main(["train", "--resume", "--out", str(run_copy), "--epochs", "2", "--quiet"])
    assert raised and code == 1
    _assert_clean_failure(run_copy, before, target, capsys.readouterr().err, errno.ENOSPC)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_full_disk_at_fsync_mid_epoch_keeps_the_last_checkpoint_and_loses_nothing(
        code: int, trained, run_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The mid-epoch checkpoint cannot be written; resuming later still ends bit for bit where an
    uninterrupted run ends."""
    before = _snapshot(run_copy)
    raised = _fail_when(monkeypatch, "fsync", runs.CHECKPOINT, code=code)
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run_copy), "--epochs", "2", "--checkpoint-every", "2",
                 "--quiet"]) == 1
    assert raised
    _assert_clean_failure(run_copy, before, runs.CHECKPOINT, capsys.readouterr().err, code)
    monkeypatch.undo()
    assert main(["train", "--resume", "--out", str(run_copy), "--epochs", "2", "--quiet"]) == 0
    a, b = load_file(run_copy / runs.WEIGHTS), load_file(trained[2] / runs.WEIGHTS)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert [r["epoch"] for r in runs.read_metrics(run_copy)] == [1, 2]


# Files written by the commands other than train (the artifacts stage), with the command that writes them.
OTHER_OUTPUTS = [*[(name, ["plot", "{run}"]) for name in FIGURES[:2]], (EXPLORER, ["explore", "{run}"]),
                 (REPORT, ["report", "{run}"]), (CARD, ["report", "{run}"])]


@pytest.mark.parametrize("target,argv", OTHER_OUTPUTS)
def test_figures_and_pages_fail_cleanly(target: str, argv: list[str], run_copy: Path,
                                        monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    before = _snapshot(run_copy)
    raised = _fail_when(monkeypatch, "replace", target, code=errno.EROFS)
    capsys.readouterr()
    code = main([a.format(run=run_copy) for a in argv])
    assert raised and code == 1
    _assert_clean_failure(run_copy, before, target, capsys.readouterr().err, errno.EROFS)


def test_atomic_write_keeps_the_old_file_when_the_writer_dies_midway(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_bytes(b"old contents\n")

    def half_then_full(tmp: Path) -> None:
        tmp.write_bytes(b"new con")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(WriteError) as info:
        runs.atomic_write(path, half_then_full)
    assert str(info.value).startswith(f"could not write {path}: No space left on device;")
    assert "\n" not in str(info.value)

    def interrupted(tmp: Path) -> None:
        tmp.write_bytes(b"new con")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runs.atomic_write(path, interrupted)
    assert path.read_bytes() == b"old contents\n" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_leftovers_of_a_killed_writer_are_never_read_and_are_cleared(trained, run_copy: Path) -> None:
    """A kill mid-write leaves ``.<name>.tmp-<pid>``; vaekit never opens it, and the next lock holder deletes it."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    half = (run_copy / runs.CHECKPOINT).read_bytes()[:1000]
    leftovers = [run_copy / f".{runs.CHECKPOINT}.tmp-{dead}", run_copy / f".{runs.WEIGHTS}.tmp-{dead}"]
    for p in leftovers:
        p.write_bytes(half)
    mine = run_copy / f".{runs.SUMMARY}.tmp-{os.getpid()}"  # a live writer's file is left alone
    mine.write_bytes(b"{")
    run = runs.load_run(run_copy)  # reads only the published files
    assert run.metrics[0]["epoch"] == 1
    with runs.RunLock(run_copy):
        assert not any(p.exists() for p in leftovers) and mine.exists()
    mine.unlink()


def test_a_failed_download_leaves_nothing_in_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A verified download that cannot be put in place (disk full at the rename) fails on every mirror with the
    reason in one line, and leaves no partial or temporary file in the cache."""
    from vaekit.data import FileSpec, download

    source = write_dataset(tmp_path / "mirror", 8, 4) / "train-labels-idx1-ubyte.gz"
    blob = source.read_bytes()
    spec = FileSpec(source.name, hashlib.md5(blob).hexdigest(), hashlib.sha256(gzip.decompress(blob)).hexdigest())
    cache = tmp_path / "cache"
    real_replace = os.replace

    def full_disk(src: str | os.PathLike, dst: str | os.PathLike, *a: object, **k: object) -> None:
        if Path(dst).parent == cache:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        real_replace(src, dst, *a, **k)

    monkeypatch.setattr(download, "_fetch_url", lambda url, output, **kw: output.write_bytes(blob))
    monkeypatch.setattr(download.os, "replace", full_disk)
    result = download.download_file(spec, ["http://a.invalid/", "http://b.invalid/"], cache, progress=False)
    assert result.path is None and len(result.failures) == 2, result.failures
    assert all("No space left on device" in f and "\n" not in f for f in result.failures), result.failures
    assert list(cache.iterdir()) == []
