"""One training per run folder: a second ``vaekit train`` into a folder in use is refused; stale locks are not.

A lock is stale when the process it names is gone (or a zombie), or when its PID now belongs to a younger
process; a lock naming a process on another machine is respected, since it cannot be checked from here.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import vaekit
from vaekit import run as runs
from vaekit.cli import main
from vaekit.config import TrainConfig
from vaekit.errors import RunFolderError
from vaekit.run import lock as lock_mod

from .conftest import write_dataset

HAS_PROC = Path("/proc/self/stat").exists()


def _cfg(data: Path, **kw: object) -> TrainConfig:
    return TrainConfig(**{**dict(dataset="mnist", data_dir=str(data), epochs=1, batch_size=32, device="cpu",
                                 progress=False, artifacts=False), **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("lockdata") / "data", 128, 32)


def _dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(folder: Path, pid: int, host: str | None = None, start: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    start = lock_mod._start_time(pid) if start is None else start
    (folder / runs.LOCK).write_text(f"{pid} {host or socket.gethostname()} {start}".rstrip() + "\n")


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended before {what}: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.slow  # a real training process, stopped by SIGTERM
def test_a_second_train_into_a_folder_in_use_is_refused(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "VAEKIT_OFFLINE": "1", "VAEKIT_SEARCH_PATH": ""}
    first = subprocess.Popen([sys.executable, "-m", "vaekit", "train", "--dataset", "mnist", "--data-dir", str(data),
                              "--epochs", "100000", "--batch-size", "32", "--out", str(out), "--device", "cpu",
                              "--quiet", "--no-artifacts"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (out / runs.CHECKPOINT).exists(), 120, "the first checkpoint", first)
        assert (out / runs.LOCK).read_text().split()[0] == str(first.pid)
        common = ["--dataset", "mnist", "--data-dir", str(data), "--out", str(out), "--quiet", "--device", "cpu"]
        for extra in (["--resume", "--epochs", "100000"], ["--force", "--epochs", "1"]):
            capsys.readouterr()
            assert main(["train", *common, *extra]) == 2
            err = [line for line in capsys.readouterr().err.splitlines() if "warning" not in line]
            assert len(err) == 1 and f"is in use by process {first.pid}" in err[0], err
        assert (out / runs.CONFIG).exists() and (out / runs.CHECKPOINT).exists(), "--force deleted nothing"
        assert first.poll() is None, "the first run goes on"
        first.send_signal(signal.SIGTERM)  # stops at the next step with a consistent checkpoint
        assert first.wait(60) == 128 + signal.SIGTERM  # as a shell reports a process ended by SIGTERM
        assert "interrupted" in first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert not (out / runs.LOCK).exists(), "a run stopped by a signal releases its lock"
    runs.read_tensors(out / runs.CHECKPOINT)


def test_a_stale_lock_of_a_dead_process_is_taken_over(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _write_lock(out, _dead_pid())  # what a run killed before it wrote anything leaves
    assert runs.is_unstarted(out)
    _write_lock(out, _dead_pid())
    run = vaekit.train(_cfg(data), out, resume=True)  # nothing to resume yet: it starts afresh
    assert [r["epoch"] for r in run.metrics] == [1]
    assert not (out / runs.LOCK).exists()


def test_a_lock_from_another_machine_is_respected(tmp_path: Path) -> None:
    _write_lock(tmp_path, _dead_pid(), host="some-other-host")
    with pytest.raises(RunFolderError, match="in use by process"):
        runs.RunLock(tmp_path).acquire()


def test_a_live_lock_holder_on_this_machine_is_respected(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path, holder.pid)
        with pytest.raises(RunFolderError, match=f"in use by process {holder.pid}"):
            runs.RunLock(tmp_path).acquire()
        assert (tmp_path / runs.LOCK).exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.skipif(not HAS_PROC, reason="needs /proc to tell processes apart beyond their PID")
def test_a_pid_reused_by_a_younger_process_or_a_zombie_does_not_hold_the_lock(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path, other.pid, start="1")  # same PID, but the lock was taken by an older process
        with runs.RunLock(tmp_path):
            pass
        _write_lock(tmp_path, other.pid)
        other.kill()
        _wait_for(lambda: lock_mod._proc_stat(other.pid) and lock_mod._proc_stat(other.pid)[0] == "Z", 10, "a zombie")
        with runs.RunLock(tmp_path):  # killed but not yet reaped by its parent: still dead
            pass
    finally:
        other.kill()
        other.wait()


def _contend(folder: str, ready, go, results, release) -> None:
    """One of the racing processes: try to lock ``folder`` at the same moment as the others."""
    ready.wait()
    go.wait()
    try:
        lock = runs.RunLock(Path(folder)).acquire()
    except RunFolderError:
        results.put("refused")
        return
    results.put("won")
    release.wait(30)
    lock.release()


def test_a_late_stale_lock_breaker_never_touches_the_live_lock_that_replaced_it(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    """A process that judged the lock stale a moment ago, before another process took it over, leaves the new
    lock in place: it is never removed or moved aside, not even for an instant another process could use."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path, other.pid)  # the live lock that replaced the stale one
        before = (tmp_path / runs.LOCK).read_text()
        touched: list[str] = []
        real_rename, real_unlink = os.rename, Path.unlink
        monkeypatch.setattr(os, "rename", lambda a, b, **kw: (touched.append(f"rename {a}"), real_rename(a, b, **kw)))
        monkeypatch.setattr(Path, "unlink", lambda self, **kw: (touched.append(f"unlink {self}"),
                                                                real_unlink(self, **kw)))
        runs.RunLock(tmp_path)._break_stale()  # the late breaker's step
        assert not [t for t in touched if t.endswith(runs.LOCK)], touched
        assert (tmp_path / runs.LOCK).read_text() == before
        with pytest.raises(RunFolderError, match=f"in use by process {other.pid}"):
            runs.RunLock(tmp_path).acquire()
    finally:
        other.kill()
        other.wait()


@pytest.mark.slow  # 72 processes
@pytest.mark.parametrize("stale", [False, True], ids=["no lock", "stale lock"])
def test_of_processes_racing_for_a_folder_exactly_one_wins(stale: bool, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
    n = 6
    for round_ in range(6):
        folder = tmp_path / f"round{round_}"
        folder.mkdir()
        if stale:
            _write_lock(folder, _dead_pid())
        ready, go, release, results = ctx.Barrier(n + 1), ctx.Event(), ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_contend, args=(str(folder), ready, go, results, release)) for _ in range(n)]
        for p in procs:
            p.start()
        ready.wait()
        go.set()
        outcomes = sorted(results.get(timeout=60) for _ in range(n))
        release.set()
        for p in procs:
            p.join(30)
        assert outcomes == ["refused"] * (n - 1) + ["won"], outcomes
        assert not (folder / runs.LOCK).exists()
        assert [p.name for p in folder.iterdir()] == [], "no temporary lock files left"


@pytest.mark.parametrize("content", ["", "\n", "garbage", "-5 {host}", "0 {host}", "0 elsewhere",
                                     "99999999999999999999 {host}", "1 {host} \x00\xff", "{host} 1"])
def test_a_damaged_lock_file_is_stale(content: str, tmp_path: Path) -> None:
    """Whatever a lock file holds, reading it never fails; one naming no live process here is taken over."""
    (tmp_path / runs.LOCK).write_text(content.format(host=socket.gethostname()))
    with runs.RunLock(tmp_path):
        assert (tmp_path / runs.LOCK).read_text().split()[0] == str(os.getpid())  # taken over: ours now
    assert not (tmp_path / runs.LOCK).exists()
