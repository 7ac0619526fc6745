"""Golden runs: the exact numbers a few small CPU trainings produced, recorded to catch any change.

``python -m tests.golden.runs record`` trains each run below on generated data and writes
``tests/golden/<name>.json`` (per-epoch metrics, the summary's numbers and a hash of every weight);
``tests/test_golden.py`` trains them again and requires the same numbers bit for bit. The runs cover the
post's recipe, dynamic binarization, the IWAE objective, the fast recipe and a resume after a SIGKILL.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
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
# Timing and placement: differ from run to run by nature.
UNSTABLE = {"train_samples_per_s", "train_seconds", "seconds", "device", "compiled", "world_size", "data_source"}


def weight_hashes(path: Path) -> dict[str, str]:
    from safetensors.numpy import load_file

    return {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in sorted(load_file(path).items())}


def outcome(run: Path) -> dict:
    """What a run folder says that must not change: metrics but their times, the summary's numbers, weights."""
    import csv

    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    metrics = [{k: v for k, v in r.items() if k not in UNSTABLE} for r in rows]
    summary = json.loads((run / "summary.json").read_text())
    return {"metrics": metrics, "summary": {k: v for k, v in sorted(summary.items()) if k not in UNSTABLE},
            "weights": weight_hashes(run / "model.safetensors")}


def train_cli(args: list[str], extra: list[str]) -> None:
    from vaekit.cli import main

    assert main(["train", *args, *extra]) == 0


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


def train_golden(name: str, data: Path, out: Path, extra: list[str] | None = None) -> dict:
    args = [*COMMON, *RUNS[name], "--data-dir", str(data), "--out", str(out)]
    if name == KILLED:
        kill_and_resume([*args, *(extra or [])], out, dict(os.environ))
    else:
        train_cli(args, extra or [])
    return outcome(out)


def record(tmp: Path) -> None:
    sys.path.insert(0, str(HERE.parents[1]))
    from tests.conftest import write_dataset

    data = write_dataset(tmp / "data", 600, 200)
    for name in RUNS:
        result = train_golden(name, data, tmp / name)
        (HERE / f"{name}.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
        print(name, result["summary"].get("test_loss"))


if __name__ == "__main__":
    import tempfile

    assert sys.argv[1:] == ["record"], "usage: python -m tests.golden.runs record"
    with tempfile.TemporaryDirectory() as d:
        os.environ.update(VAEKIT_DATA=str(Path(d) / "cache"), VAEKIT_SEARCH_PATH="", VAEKIT_OFFLINE="1")
        record(Path(d))
