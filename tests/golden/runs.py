"""Golden runs: the exact numbers a few small CPU trainings produced, recorded to catch any change.

``python -m tests.golden.runs record`` trains each run below on generated data and writes
``tests/golden/<name>.json`` (per-epoch metrics, the summary's numbers, a hash and the norms of every weight)
and ``tests/golden/machine.json`` (the fingerprint of the machine that recorded them).
``tests/test_golden.py`` trains them again:

* everywhere, the numbers must agree with the recorded ones within a tolerance (:data:`RTOL`), since
  floating-point kernels differ between CPUs (vector width, fused multiply-add, bf16 support);
* on a machine with the recording's fingerprint, they must agree bit for bit;
* on any other machine, the current code must agree bit for bit with the tree the goldens were recorded from
  (:data:`PINNED`, taken from git and run on that machine), which is what "a redesign changes no number" means
  there.

The runs cover the post's recipe, dynamic binarization, the IWAE objective, the fast recipe (bf16) and a
resume after a SIGKILL.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# The tree the goldens were recorded from: the last commit before the training step was reorganised.
PINNED = "af88bab9"
COMMON = ["--dataset", "mnist", "--device", "cpu", "--quiet", "--seed", "0"]
RUNS: dict[str, list[str]] = {
    "post": ["--epochs", "2"],
    "binarize_dynamic": ["--epochs", "2", "--binarize", "dynamic"],
    "iwae_k5": ["--epochs", "2", "--objective", "iwae", "--k", "5"],
    "recipe_fast": ["--recipe", "fast", "--epochs", "3"],
    "gaussian_learned_warmup": ["--epochs", "2", "--likelihood", "gaussian", "--learn-sigma", "--kl-warmup", "1"],
    "killed_resumed": ["--epochs", "3", "--batch-size", "32", "--checkpoint-every", "4"],
}
KILLED = "killed_resumed"
# Relative tolerance across machines. fp32 runs differ in the last bits of each step's sums (measured between
# an AMD EPYC with AVX2 and an Intel Xeon with AVX-512: at most 2.3e-5 after 2 epochs). The fast recipe runs in
# bf16 where the CPU computes it natively and in fp32 elsewhere; its bf16 run on the Xeon and its fp32 run on
# the EPYC differed by up to 2.2e-3 after 3 epochs.
RTOL = {"fp32": 5e-4, "bf16": 2e-2}
# Timing and placement: differ from run to run by nature.
UNSTABLE = {"train_samples_per_s", "train_seconds", "seconds", "device", "compiled", "world_size", "data_source"}


def fingerprint() -> dict[str, str]:
    """What decides the CPU kernels' bits: the torch build, the architecture, the vector ISA, the CPU model and
    the number of compute threads (a sum split over two threads is added in another order)."""
    import torch

    model = platform.processor()
    with_cpuinfo = Path("/proc/cpuinfo")
    if with_cpuinfo.is_file():
        for line in with_cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "cpu model")):
                model = line.split(":", 1)[1].strip()
                break
    return {"torch": torch.__version__, "machine": platform.machine(), "cpu": model,
            "capability": str(torch.backends.cpu.get_cpu_capability()), "threads": str(torch.get_num_threads())}


def weight_record(path: Path) -> tuple[dict[str, str], dict[str, float]]:
    """(SHA-256 of each weight's bytes, each weight's L2 norm in float64): bitwise and tolerant views."""
    import numpy as np
    from safetensors.numpy import load_file

    tensors = sorted(load_file(path).items())
    hashes = {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in tensors}
    # math.fsum: an exactly rounded sum, the same whatever BLAS and thread count the machine has.
    norms = {k: math.sqrt(math.fsum(np.square(v.astype(np.float64)).ravel())) for k, v in tensors}
    return hashes, norms


def outcome(run: Path) -> dict:
    """What a run folder says that must not change: metrics but their times, the summary's numbers, weights."""
    import csv

    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    metrics = [{k: v for k, v in r.items() if k not in UNSTABLE} for r in rows]
    summary = json.loads((run / "summary.json").read_text())
    hashes, norms = weight_record(run / "model.safetensors")
    return {"metrics": metrics, "summary": {k: v for k, v in sorted(summary.items()) if k not in UNSTABLE},
            "weights": hashes, "weight_norms": norms}


def train_cli(args: list[str], extra: list[str]) -> None:
    from vaekit.cli import main

    assert main(["train", *args, *extra]) == 0


def train_process(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "vaekit", "train", *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def kill_and_resume(args: list[str], out: Path, env: dict[str, str]) -> None:
    """Start a training process, SIGKILL it once its first mid-epoch checkpoint exists, then resume it."""
    cmd = [sys.executable, "-m", "vaekit", "train", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoint.safetensors"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def train_golden(name: str, data: Path, out: Path, extra: list[str] | None = None, src: Path | None = None) -> dict:
    """Train golden run ``name``: with this tree in this process, or with the tree at ``src`` in a child."""
    args = [*COMMON, *RUNS[name], "--data-dir", str(data), "--out", str(out), *(extra or [])]
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    if name == KILLED:
        kill_and_resume(args, out, env)
    elif src is not None:
        train_process(args, env)
    else:
        train_cli(args, [])
    return outcome(out)


def pinned_source(dest: Path) -> Path | None:
    """The ``src`` folder of :data:`PINNED`, extracted from this checkout's git history (``None``: not here)."""
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", PINNED, "src"], capture_output=True,
                                 timeout=60, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return dest / "src"


def record(tmp: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.conftest import write_dataset

    data = write_dataset(tmp / "data", 600, 200)
    for name in RUNS:
        result = train_golden(name, data, tmp / name)
        (HERE / f"{name}.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
        print(name, result["summary"].get("test_loss"))
    (HERE / "machine.json").write_text(json.dumps(fingerprint(), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    import tempfile

    assert sys.argv[1:] == ["record"], "usage: python -m tests.golden.runs record"
    with tempfile.TemporaryDirectory() as d:
        os.environ.update(VAEKIT_DATA=str(Path(d) / "cache"), VAEKIT_SEARCH_PATH="", VAEKIT_OFFLINE="1")
        record(Path(d))
