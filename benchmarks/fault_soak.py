"""Fault soak: kill training at random moments and resume it, over and over, then feed vaekit bad inputs.

Part one trains a small model with ``--checkpoint-every`` in a subprocess, kills it with SIGKILL at a random
moment (mid-step, mid-write, mid-evaluation, while it writes its figures, or before it has done anything),
resumes it with ``--resume``, and repeats. After every kill each file in the run folder must be whole and the
folder consistent (metrics never ahead of the checkpoint); at the end the weights must be bit for bit those of
an uninterrupted run trained alongside, and ``metrics.csv`` must hold every epoch exactly once. Part two gives
``vaekit evaluate`` and ``vaekit train --resume`` truncated, bit-flipped, random, mismatched and pickled
files and checks that each is refused in one line, exit code 2, without the pickle ever being opened.

    python benchmarks/fault_soak.py [--kills 50] [--seed 0] [--bad-inputs 200]

It prints kills survived, bad inputs tried and files lost or corrupted (which must be 0) and exits 1 if
anything was lost, corrupted or accepted that should not have been. ``tests/test_crash_resume.py`` runs the
same harness with a handful of kills.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import pickle
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from vaekit import run as runs
from vaekit.data import write_idx
from vaekit.training.checkpoint import check_train_state

PNG_END = b"IEND\xaeB`\x82"


def write_small_dataset(folder: Path, n_train: int = 256, n_test: int = 64, seed: int = 0) -> Path:
    """Four MNIST-named IDX files of random blobs, enough to train on for a few seconds."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = (rng.random((n, 28, 28)) < rng.random((n, 1, 1)) * 0.5).astype(np.uint8) * 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8))
    return folder


def train_command(data: Path, out: Path, epochs: int, *, batch_size: int = 32, checkpoint_every: int = 2,
                  resume: bool = False) -> list[str]:
    return [sys.executable, "-m", "vaekit", "train", "--dataset", "mnist", "--data-dir", str(data), "--out", str(out),
            "--epochs", str(epochs), "--batch-size", str(batch_size), "--checkpoint-every", str(checkpoint_every),
            "--device", "cpu", "--grid-size", "2", "--quiet", *(["--resume"] if resume else [])]


def quiet_env() -> dict[str, str]:
    """The environment of the trainings: no network, no machine-wide dataset copies, one thread each
    (so the interrupted run and its reference do not compete for cores in a way that changes timing)."""
    return {**os.environ, "VAEKIT_OFFLINE": "1", "VAEKIT_SEARCH_PATH": "", "OMP_NUM_THREADS": "1"}


def folder_problems(run_dir: Path) -> list[str]:
    """Everything wrong with a run folder as a kill may leave it: a published file that does not load, or
    metrics that run ahead of (or too far behind) the checkpoint. Missing files are fine at this point."""
    problems: list[str] = []

    def check(name: str, action) -> object:
        if not (run_dir / name).exists():
            return None
        try:
            return action(run_dir)
        except Exception as e:  # noqa: BLE001 (any failure to load is the finding)
            problems.append(f"{name}: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
            return None

    check(runs.CONFIG, runs.read_config)
    check(runs.WEIGHTS, lambda d: runs.read_tensors(d / runs.WEIGHTS))
    check(runs.SUMMARY, runs.read_summary)
    state = check(runs.CHECKPOINT, lambda d: check_train_state(
        json.loads(runs.read_tensors(d / runs.CHECKPOINT)[1]["state"]), d / runs.CHECKPOINT))
    metrics = check(runs.METRICS, runs.read_metrics)
    if metrics is not None:
        epochs = [int(r["epoch"]) for r in metrics]
        if epochs != list(range(1, len(epochs) + 1)):
            problems.append(f"{runs.METRICS}: epochs {epochs}")
        if isinstance(state, dict) and not state["epoch"] - 1 <= len(epochs) <= state["epoch"]:
            problems.append(f"{runs.METRICS} has {len(epochs)} epochs but the checkpoint {state['epoch']}")
    for png in run_dir.glob("*.png"):
        data = png.read_bytes()
        if not (data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(PNG_END)):
            problems.append(f"{png.name}: not a whole PNG file")
    for html in run_dir.glob("*.html"):
        if not html.read_bytes().rstrip().lower().endswith(b"</html>"):
            problems.append(f"{html.name}: not a whole HTML page")
    return problems


def _progress_mark(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


@dataclass
class SoakResult:
    """What a kill/resume soak saw."""

    kills: int = 0
    starts: int = 0
    mid_write: int = 0  # kills that left a temporary file behind: they struck during an atomic write
    early: int = 0  # kills at a random moment of start-up rather than after progress
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # files lost or corrupted, or results that differ
    log: list[str] = field(default_factory=list)

    @property
    def seconds_per_kill(self) -> float:
        return self.seconds / max(self.kills, 1)


def _wait_for_change(path: Path, mark: tuple[int, int] | None, proc: subprocess.Popen,
                     deadline: float) -> tuple[int, int] | None:
    """Wait until ``path`` is replaced (a new checkpoint) or ``proc`` ends; returns the new mark."""
    while proc.poll() is None:
        now = _progress_mark(path)
        if now != mark:
            return now
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"no new checkpoint by the deadline in {path.parent}")
        time.sleep(0.001)
    return _progress_mark(path)


def kill_resume_soak(data: Path, workdir: Path, *, kills: int, epochs: int, seed: int = 0,
                     early_kill_rate: float = 0.15, timeout: float = 180.0) -> SoakResult:
    """Train ``epochs`` epochs into ``workdir/killed``, SIGKILLing it ``kills`` times, and compare with an
    uninterrupted run in ``workdir/reference`` trained at the same time.

    Most kills wait until the process has written a new checkpoint (so every start makes progress) and 0 to 2
    more, then a random part of up to two checkpoint intervals: a moment anywhere in a step, a write, or the
    evaluation at an epoch's end, and a bounded amount of progress per kill however fast the machine. A
    fraction ``early_kill_rate`` land instead at a random moment of the start-up (imports, data loading,
    taking the lock, writing the config), between launch and the earliest first checkpoint seen so far.
    """
    rng = random.Random(seed)
    env = quiet_env()
    killed, reference = workdir / "killed", workdir / "reference"
    checkpoint = killed / runs.CHECKPOINT
    result = SoakResult()
    startups: list[float] = []  # launch to first new checkpoint, per start
    intervals: list[float] = []  # between checkpoints seen one after the other
    started = time.monotonic()
    ref_log = open(workdir / "reference.log", "w")  # noqa: SIM115 (closed below, after the process ends)
    ref = subprocess.Popen(train_command(data, reference, epochs), env=env, stdout=ref_log, stderr=subprocess.STDOUT)
    try:
        resume = False
        while True:
            if resume and runs.is_complete(killed, epochs, _final_outputs()):
                break  # the last kill came after the run had finished
            mark = _progress_mark(checkpoint)
            log = open(workdir / f"start-{result.starts}.log", "w")  # noqa: SIM115
            launched = time.monotonic()
            proc = subprocess.Popen(train_command(data, killed, epochs, resume=resume), env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
            result.starts += 1
            resume = True
            deadline = launched + timeout
            if result.kills >= kills:
                code = proc.wait(timeout)
                log.close()
                if code != 0:
                    result.problems.append(f"the final resume exited {code}: {_tail(workdir, result.starts - 1)}")
                break
            early = bool(startups) and rng.random() < early_kill_rate
            if early:
                moment = launched + rng.uniform(0.0, min(startups))
                while time.monotonic() < moment and proc.poll() is None:
                    time.sleep(0.001)
            else:
                mark = _wait_for_change(checkpoint, mark, proc, deadline)
                startups.append(time.monotonic() - launched)
                for _ in range(rng.randint(0, 2)):
                    seen = time.monotonic()
                    mark = _wait_for_change(checkpoint, mark, proc, deadline)
                    intervals.append(time.monotonic() - seen)
                typical = sorted(intervals)[len(intervals) // 2] if intervals else 0.05
                moment = time.monotonic() + rng.uniform(0.0, 2 * typical)
                while time.monotonic() < moment and proc.poll() is None:
                    time.sleep(0.001)
            if proc.poll() is not None:  # it finished (or failed) before the kill
                log.close()
                if proc.returncode != 0:
                    result.problems.append(f"start {result.starts} exited {proc.returncode}: "
                                           f"{_tail(workdir, result.starts - 1)}")
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            log.close()
            result.kills += 1
            result.early += early
            result.mid_write += killed.exists() and any(runs.is_temporary(p.name) for p in killed.iterdir())
            found = folder_problems(killed)
            result.problems += [f"after kill {result.kills}: {p}" for p in found]
            result.log.append(f"kill {result.kills}: {'early' if early else 'after progress'}, "
                              f"{_describe(killed)}")
        if ref.wait(timeout) != 0:
            result.problems.append(f"the uninterrupted run failed: {(workdir / 'reference.log').read_text()[-500:]}")
    finally:
        if ref.poll() is None:
            ref.kill()
            ref.wait()
        ref_log.close()
    result.seconds = time.monotonic() - started
    if not result.problems:
        result.problems += compare_runs(killed, reference, epochs)
    return result


def _final_outputs() -> tuple[str, ...]:
    from vaekit.artifacts import FINAL_OUTPUTS

    return FINAL_OUTPUTS


def _tail(workdir: Path, start: int) -> str:
    path = workdir / f"start-{start}.log"
    return " | ".join(path.read_text().strip().splitlines()[-3:]) if path.exists() else "(no output)"


def _describe(run_dir: Path) -> str:
    """Where a killed run stands: its checkpoint, its metrics, and any write the kill cut short."""
    if not (run_dir / runs.CONFIG).exists():
        return "nothing written yet" if not run_dir.exists() else "before its config was written"
    where = "no checkpoint yet"
    if (run_dir / runs.CHECKPOINT).exists():
        state = json.loads(runs.read_tensors(run_dir / runs.CHECKPOINT)[1]["state"])
        where = f"checkpoint at epoch {state['epoch']} + {state['step_in_epoch']} steps"
    where += f", metrics through epoch {len(runs.read_metrics(run_dir))}"
    cut = sorted(p.name for p in run_dir.iterdir() if runs.is_temporary(p.name))
    return where + (f", killed while writing {', '.join(cut)}" if cut else "")


def compare_runs(killed: Path, reference: Path, epochs: int) -> list[str]:
    """Differences between the killed-and-resumed run and the uninterrupted one (none expected)."""
    problems = folder_problems(killed)
    for name in (runs.CONFIG, runs.WEIGHTS, runs.CHECKPOINT, runs.METRICS, runs.SUMMARY, *_final_outputs()):
        if not (killed / name).exists():
            problems.append(f"{name} is missing from the resumed run")
    if problems:
        return problems
    a, b = load_file(killed / runs.WEIGHTS), load_file(reference / runs.WEIGHTS)
    if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
        problems.append("the final weights differ from the uninterrupted run's")
    rows, ref_rows = runs.read_metrics(killed), runs.read_metrics(reference)
    if [r["epoch"] for r in rows] != list(range(1, epochs + 1)):
        problems.append(f"metrics.csv epochs are {[r['epoch'] for r in rows]}, expected each of 1..{epochs} once")
    keys = ("epoch", "train_loss", "test_loss", "test_recon", "test_kl")
    if [[r[k] for k in keys] for r in rows] != [[r[k] for k in keys] for r in ref_rows]:
        problems.append("metrics.csv differs from the uninterrupted run's (seconds aside)")
    return problems


# ---------------------------------------------------------------------------------------------- bad inputs


class _Trap:
    """Unpickling this creates ``marker``: the file appearing would mean vaekit opened a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _torch_zip(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _mutations(rng: random.Random, original: bytes, header: int) -> bytes:
    data = bytearray(original)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(max(1, min(len(data), header if rng.random() < 0.7 else len(data))))
        op = rng.choice(["flip", "set", "truncate", "insert", "delete"])
        if op == "flip" and data:
            data[i] ^= 1 << rng.randrange(8)
        elif op == "set" and data:
            data[i] = rng.randrange(256)
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = bytes([rng.randrange(256)])
        elif op == "delete" and data:
            del data[i]
    return bytes(data)


def _damaged_files(run: Path, count: int, seed: int, marker: Path):
    """``count`` (description, file name, damaged contents) cases made from the finished run ``run``, one at a
    time: the fixed kinds first, then random mutations (mostly of the headers, where a flip matters most)."""
    rng = random.Random(seed)
    made = 0
    for name in (runs.WEIGHTS, runs.CHECKPOINT):
        blob = (run / name).read_bytes()
        for case in ((f"{name} truncated", name, blob[: rng.randrange(len(blob))]),
                     (f"{name} empty", name, b""),
                     (f"{name} random bytes", name, os.urandom(rng.randrange(1, 9000))),
                     (f"{name} pickle", name, pickle.dumps({"w": _Trap(marker)}, protocol=2)),
                     (f"{name} torch.save zip", name, _torch_zip({"w": _Trap(marker)}))):
            if made < count:
                made += 1
                yield case
    config = (run / runs.CONFIG).read_bytes()
    enormous = json.loads(config)
    enormous["model"]["encoder_hidden"][0] = 10**12
    for case in (("config.json truncated", runs.CONFIG, config[: len(config) // 2]),
                 ("config.json random bytes", runs.CONFIG, os.urandom(300)),
                 ("config.json deeply nested", runs.CONFIG, b"[" * 200_000),
                 ("config.json enormous layers", runs.CONFIG, json.dumps(enormous).encode()),
                 ("metrics.csv scrambled", runs.METRICS, b"epoch,bogus\n1,x\n"),
                 ("summary.json a list", runs.SUMMARY, b"[1, 2]"),
                 ("model.pt beside no weights", "model.pt", _torch_zip({"w": _Trap(marker)}))):
        if made < count:
            made += 1
            yield case
    originals = {name: (run / name).read_bytes() for name in (runs.WEIGHTS, runs.CHECKPOINT, runs.CONFIG)}
    while made < count:
        name = rng.choice(list(originals))
        blob = originals[name]
        header = 8 + struct.unpack("<Q", blob[:8])[0] if name != runs.CONFIG else len(blob)
        made += 1
        yield f"{name} mutated", name, _mutations(rng, blob, header)


def bad_inputs(run: Path, data: Path, workdir: Path, count: int, epochs: int,
               seed: int = 0) -> tuple[int, list[str]]:
    """Feed ``count`` damaged copies of the finished run ``run`` to ``vaekit evaluate`` (weights, config and
    the rest) or ``vaekit train --resume`` (checkpoints); returns (inputs tried, problems).

    A case is fine when the command accepts it (a mutation that changed nothing that matters: exit 0, or
    for a checkpoint of the finished run "already has N epochs") or refuses it with exit 2 and one line
    naming the damaged file (or config.json, or the weights a damaged config no longer matches).
    """
    import contextlib

    from vaekit.cli import main as vaekit_main

    marker = workdir / "unpickled"
    folder = workdir / "case"
    problems: list[str] = []
    tried = 0
    for what, name, blob in _damaged_files(run, count, seed, marker):
        tried += 1
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(run, folder, copy_function=os.link)  # vaekit only ever renames over these links
        if name == "model.pt":
            (folder / runs.WEIGHTS).unlink()
        (folder / name).unlink(missing_ok=True)
        (folder / name).write_bytes(blob)
        argv = (["train", "--resume", "--out", str(folder), "--epochs", str(epochs), "--data-dir", str(data),
                 "--quiet"] if name == runs.CHECKPOINT else ["evaluate", str(folder), "--data-dir", str(data)])
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = vaekit_main(argv)
        except SystemExit as e:
            code = e.code
        except BaseException as e:  # noqa: BLE001 (a traceback is the finding)
            code = f"{type(e).__name__}: {e}"
        text = err.getvalue()
        lines = [line for line in text.splitlines() if not line.startswith("vaekit: warning:")]
        if code not in (0, 2):
            problems.append(f"{what}: exit {code!r}: {' | '.join(lines)[-300:]}")
        elif code == 2 and (len(lines) != 1 or "Traceback" in text):
            problems.append(f"{what}: not one line: {lines!r}"[:400])
        elif code == 2 and "already has" not in lines[0] and not any(
                n in lines[0] for n in (name, runs.CONFIG, runs.WEIGHTS)):
            problems.append(f"{what}: the message does not name the file: {lines[0][:200]}")
    shutil.rmtree(folder, ignore_errors=True)
    if marker.exists():
        problems.append("a pickle was opened: the trap's marker file exists")
    return tried, problems


def _with_nan(metrics: Path) -> bytes:
    """metrics.csv with the first epoch's train_loss replaced by nan."""
    header, first, *rest = metrics.read_text().splitlines()
    epoch, _, *cells = first.split(",")
    return "\n".join([header, ",".join([epoch, "nan", *cells]), *rest, ""]).encode()


def _hostile_cases(run: Path) -> list[tuple[str, str | None, bytes | str | None, list[str]]]:
    """(what, file to replace, its new content: bytes, a path to link to, "fifo" or None, the command)."""
    evaluate = ["evaluate", "{case}"]
    cases: list[tuple[str, str | None, bytes | str | None, list[str]]] = []
    for name in (runs.CONFIG, runs.SUMMARY, runs.METRICS):
        cases += [(f"{name} -> /dev/zero", name, "/dev/zero", evaluate),
                  (f"{name} -> /dev/urandom", name, "/dev/urandom", evaluate),
                  (f"{name} is a FIFO", name, "fifo", evaluate)]
    cases += [(f"{runs.WEIGHTS} is a FIFO", runs.WEIGHTS, "fifo", evaluate),
              (f"{runs.CHECKPOINT} is a FIFO (resume)", runs.CHECKPOINT, "fifo",
               ["train", "--resume", "--out", "{case}", "--epochs", "99", "--quiet"]),
              ("config.json with a 100,000-digit zdim", runs.CONFIG,
               b'{"format": 1, "model": {"zdim": ' + b"9" * 100_000 + b'}, "train": {}}', evaluate),
              ("summary.json with a 5,000-digit number", runs.SUMMARY, b'{"nll": ' + b"7" * 5000 + b"}", evaluate),
              ("metrics.csv with nan", runs.METRICS, _with_nan(run / runs.METRICS), evaluate)]
    cases += [("--seed of 29 digits", None, None, ["train", "--seed", "9" * 29, "--out", "{work}/seed"]),
              ("--out name of 300 bytes", None, None, ["train", "--out", "{work}/" + "x" * 300]),
              ("--out path of 5,000 bytes", None, None, ["train", "--out", "{work}/" + "/".join(["y" * 200] * 25)]),
              ("--grid-size 100000000", None, None, ["plot", "{case}", "--grid-size", "100000000"]),
              ("evaluate --device tpu", None, None, ["evaluate", "{case}", "--device", "tpu"])]
    return cases


def hostile_inputs(run: Path, workdir: Path) -> tuple[int, list[str], int]:
    """Device files, FIFOs, huge numbers, overlong paths and bad flags against real ``vaekit`` processes.

    Each must end within 60 s with exit 2 and one line on stderr. Returns (cases tried, problems, the largest
    peak resident memory of a case in kB, from the kernel's accounting of the child).
    """
    import resource

    problems, worst = [], 0
    folder = workdir / "hostile"
    for what, name, content, argv in _hostile_cases(run):
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(run, folder)
        if name is not None:
            (folder / name).unlink()
            if content == "fifo":
                os.mkfifo(folder / name)
            elif isinstance(content, str):
                (folder / name).symlink_to(content)
            else:
                (folder / name).write_bytes(content)
        args = [a.replace("{case}", str(folder)).replace("{work}", str(workdir)) for a in argv]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        try:
            done = subprocess.run([sys.executable, "-m", "vaekit", *args], capture_output=True, text=True,
                                  timeout=60, env=quiet_env())
        except subprocess.TimeoutExpired:
            problems.append(f"{what}: no answer within 60 s")
            continue
        worst = max(worst, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)
        lines = [line for line in done.stderr.splitlines() if "warning:" not in line]
        if done.returncode != 2 or len(lines) != 1 or "Traceback" in done.stderr:
            problems.append(f"{what}: exit {done.returncode}: {' | '.join(lines)[-300:]}")
    shutil.rmtree(folder, ignore_errors=True)
    return len(_hostile_cases(run)), problems, worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs to survive (default 50)")
    parser.add_argument("--epochs", type=int, default=0, help="epochs of the soaked run (default: enough for the "
                                                              "kills)")
    parser.add_argument("--bad-inputs", type=int, default=200, help="damaged files to try (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the work folder and print where it is")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vaekit-soak-"))
    try:
        data = write_small_dataset(work / "data")
        epochs = args.epochs or max(12, 2 * args.kills)  # a kill costs at most 10 steps, 1.25 epochs
        print(f"kill/resume soak: {args.kills} kills over {epochs} epochs of 256 images, checkpoint every 2 steps",
              flush=True)
        soak = kill_resume_soak(data, work, kills=args.kills, epochs=epochs, seed=args.seed)
        for line in soak.log:
            print("  " + line)
        print(f"bad inputs: {args.bad_inputs} damaged copies of the finished run", flush=True)
        tried, bad_problems = bad_inputs(work / "reference", data, work, args.bad_inputs, epochs, args.seed)
        print("hostile inputs: device files, FIFOs, huge numbers, long paths, bad flags", flush=True)
        hostile, hostile_problems, peak_kb = hostile_inputs(work / "reference", work)
        lost = soak.problems + bad_problems + hostile_problems
        print()
        print(f"kills survived:             {soak.kills} ({soak.early} during start-up, {soak.mid_write} during a "
              f"write; {soak.starts} starts, {soak.seconds:.0f} s, {soak.seconds_per_kill:.1f} s per kill)")
        print(f"bad inputs tried:           {tried}")
        print(f"hostile inputs tried:       {hostile} ({hostile - len(hostile_problems)} answered with one line and "
              f"exit 2; peak memory of the worst {peak_kb / 1024:.0f} MB)")
        print(f"files lost or corrupted:    {len(lost)}")
        for problem in lost:
            print(f"  {problem}")
        return 1 if lost or soak.kills < args.kills else 0
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
