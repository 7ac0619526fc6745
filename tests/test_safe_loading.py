"""Hostile run folders: truncated, mismatched, tampered and random files, and pickles that must never be opened.

Every bad file gives one line naming the file and the problem (exit code 2 from the command line), never a
traceback; a pickle-based file is refused by looking at its name or first bytes only, which is proven with a
pickle whose unpickling would create a marker file.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import pickle
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import vaekit
from vaekit import run as runs
from vaekit.cli import main
from vaekit.config import TrainConfig
from vaekit.errors import RunFolderError
from vaekit.model import VAE
from vaekit.training.checkpoint import load_checkpoint

from .conftest import hermetic_env, write_dataset

Mutation = Callable[[Path], None]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A finished one-epoch run on a small generated dataset: (run folder, data folder)."""
    root = tmp_path_factory.mktemp("safe")
    data = write_dataset(root / "data", 128, 32)
    with hermetic_env(root / "cache"):
        vaekit.train(TrainConfig(dataset="mnist", data_dir=str(data), epochs=1, batch_size=32, device="cpu",
                                 progress=False, artifacts=False), root / "run")
    yield root / "run", data


@pytest.fixture
def run_copy(trained: tuple[Path, Path], tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    return run


# ---------------------------------------------------------------------------------------------- helpers


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k).clone() for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118


def _edit_tensors(name: str, edit: Callable[[dict[str, torch.Tensor], dict[str, str]], None]) -> Mutation:
    def mutate(run: Path) -> None:
        tensors, meta = _read(run / name)
        edit(tensors, meta)
        save_file(tensors, str(run / name), meta)
    return mutate


def _swap(name: str, key: str, make: Callable[[torch.Tensor], torch.Tensor]) -> Mutation:
    """Replace tensor ``key`` of file ``name`` by ``make(old tensor)``."""
    return _edit_tensors(name, lambda t, m: t.__setitem__(key, make(t[key])))


def _edit_state(**changes: object) -> Mutation:
    def edit(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        meta["state"] = json.dumps({**json.loads(meta["state"]), **changes})
    return _edit_tensors(runs.CHECKPOINT, edit)


def _edit_optimizer(edit_groups: Callable[[list[dict]], None]) -> Mutation:
    def edit(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        optim = json.loads(meta["optimizer"])
        edit_groups(optim["param_groups"])
        meta["optimizer"] = json.dumps(optim)
    return _edit_tensors(runs.CHECKPOINT, edit)


def _edit_config(edit: Callable[[dict], None]) -> Mutation:
    def mutate(run: Path) -> None:
        d = json.loads((run / runs.CONFIG).read_text())
        edit(d)
        (run / runs.CONFIG).write_text(json.dumps(d))
    return mutate


def _truncate(name: str, keep: float) -> Mutation:
    def mutate(run: Path) -> None:
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: int(len(data) * keep)])
    return mutate


def _random_bytes(name: str, n: int = 4096) -> Mutation:
    def mutate(run: Path) -> None:
        (run / name).write_bytes(os.urandom(n))
    return mutate


def _write(name: str, text: str) -> Mutation:
    def mutate(run: Path) -> None:
        (run / name).write_text(text)
    return mutate


def _set(d: dict, keys: str, value: object) -> None:
    *path, last = keys.split(".")
    for k in path:
        d = d[k]
    d[last] = value


def _error_lines(err: str) -> list[str]:
    """stderr without the data warnings a generated dataset draws (its checksums are not MNIST's)."""
    return [line for line in err.splitlines() if not line.startswith("vaekit: warning:")]


def _assert_one_line_naming(err: str, name: str) -> str:
    lines = _error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert name in lines[0], (name, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------------------------- what evaluate opens

RUN_FILE_FAULTS: dict[str, tuple[Mutation, str, str]] = {
    # name: (mutation, file the message must name, words the message must hold)
    "weights truncated": (_truncate(runs.WEIGHTS, 0.5), runs.WEIGHTS, "truncated or corrupt"),
    "weights header only": (_truncate(runs.WEIGHTS, 0.001), runs.WEIGHTS, "truncated or corrupt"),
    "weights empty": (_truncate(runs.WEIGHTS, 0), runs.WEIGHTS, "truncated or corrupt"),
    "weights random bytes": (_random_bytes(runs.WEIGHTS), runs.WEIGHTS, "safetensors"),
    "weights missing": (lambda run: (run / runs.WEIGHTS).unlink(), runs.WEIGHTS, "missing"),
    "weights shape": (_swap(runs.WEIGHTS, "encoder.0.weight", lambda t: torch.zeros(3, 784)), runs.WEIGHTS,
                      "shape (3, 784)"),
    "weights dtype": (_swap(runs.WEIGHTS, "decoder.0.bias", lambda t: t.half()), runs.WEIGHTS, "dtype torch.float16"),
    "weights nan": (_edit_tensors(runs.WEIGHTS, lambda t, m: t["decoder.0.bias"].fill_(float("nan"))),
                    runs.WEIGHTS, "NaN"),
    "weights extra tensor": (_edit_tensors(runs.WEIGHTS, lambda t, m: t.__setitem__("backdoor", torch.ones(1))),
                             runs.WEIGHTS, "unexpected ['backdoor']"),
    "weights tensor missing": (_edit_tensors(runs.WEIGHTS, lambda t, m: t.pop("decoder.0.bias")),
                               runs.WEIGHTS, "missing ['decoder.0.bias']"),
    "config truncated": (_truncate(runs.CONFIG, 0.5), runs.CONFIG, "not valid JSON"),
    "config random bytes": (_random_bytes(runs.CONFIG, 300), runs.CONFIG, "config.json"),
    "config missing": (lambda run: (run / runs.CONFIG).unlink(), runs.CONFIG, "missing"),
    "config not an object": (_write(runs.CONFIG, "[1, 2]"), runs.CONFIG, "not a valid vaekit config"),
    "config nested too deeply": (_write(runs.CONFIG, "[" * 100_000), runs.CONFIG, "nested too deeply"),
    "config zdim changed": (_edit_config(lambda d: _set(d, "model.zdim", 3)), runs.WEIGHTS, "shape"),
    "config wrong type": (_edit_config(lambda d: _set(d, "train.eval_batch_size", "many")), runs.CONFIG,
                          "eval_batch_size"),
    "config bad likelihood": (_edit_config(lambda d: _set(d, "train.likelihood", "poisson")), runs.CONFIG,
                              "poisson"),
    "config dataset a number": (_edit_config(lambda d: _set(d, "data.dataset", 7)), runs.CONFIG, "data.dataset"),
    "config enormous layers": (_edit_config(lambda d: _set(d, "model.encoder_hidden", [10**12, 64, 32])),
                               runs.CONFIG, "encoder_hidden"),
    "config image shape inf": (_write(runs.CONFIG, '{"model": {"image_shape": [1e400, 28]}, "train": {}}'),
                               runs.CONFIG, "not a valid vaekit config"),
    "summary not an object": (_write(runs.SUMMARY, '"done"'), runs.SUMMARY, "not an object"),
    "summary random bytes": (_random_bytes(runs.SUMMARY, 200), runs.SUMMARY, "summary.json"),
    "metrics columns": (_write(runs.METRICS, "a,b\n1,2\n"), runs.METRICS, "no epoch column"),
    "metrics text": (_write(runs.METRICS, "epoch,train_loss,test_loss,test_recon,test_kl,seconds\n1,x,2,3,4,5\n"),
                     runs.METRICS, "damaged"),
}


@pytest.mark.parametrize("fault", list(RUN_FILE_FAULTS))
def test_bad_run_files_give_one_line_naming_the_file(fault: str, run_copy: Path, capsys) -> None:
    mutate, name, words = RUN_FILE_FAULTS[fault]
    mutate(run_copy)
    with pytest.raises(RunFolderError) as info:
        runs.load_run(run_copy)
    message = str(info.value)
    assert "\n" not in message and name in message and words in message, message
    capsys.readouterr()
    assert main(["evaluate", str(run_copy)]) == 2
    line = _assert_one_line_naming(capsys.readouterr().err, name)
    assert line.startswith("vaekit evaluate: error: ")


# ---------------------------------------------------------------------------------------------- what resume opens

CHECKPOINT_FAULTS: dict[str, tuple[Mutation, str]] = {
    "truncated": (_truncate(runs.CHECKPOINT, 0.7), "truncated or corrupt"),
    "random bytes": (_random_bytes(runs.CHECKPOINT), "safetensors"),
    "weights shape": (_swap(runs.CHECKPOINT, "model.decoder.0.bias", lambda t: torch.zeros(5)), "shape (5,)"),
    "weights dtype": (_swap(runs.CHECKPOINT, "model.decoder.0.bias", lambda t: t.double()), "dtype torch.float64"),
    "optimizer moment shape": (_swap(runs.CHECKPOINT, "optim.0.exp_avg", lambda t: torch.zeros(2, 2)), "0.exp_avg"),
    "optimizer moment dtype": (_swap(runs.CHECKPOINT, "optim.1.exp_avg_sq", lambda t: t.double()), "1.exp_avg_sq"),
    "optimizer moment nan": (_edit_tensors(runs.CHECKPOINT, lambda t, m: t["optim.2.exp_avg"].fill_(float("inf"))),
                             "NaN or infinite"),
    "optimizer moment missing": (_edit_tensors(runs.CHECKPOINT, lambda t, m: [t.pop(k) for k in list(t)
                                                                            if k.endswith(".exp_avg_sq")]),
                                 "missing"),
    "optimizer lr a string": (_edit_optimizer(lambda g: g[0].__setitem__("lr", "fast")), "lr"),
    "optimizer betas": (_edit_optimizer(lambda g: g[0].__setitem__("betas", [0.9])), "betas"),
    "optimizer other parameters": (_edit_optimizer(lambda g: g[0].__setitem__("params", [0, 1])), "other parameters"),
    "optimizer metadata not JSON": (_edit_tensors(runs.CHECKPOINT, lambda t, m: m.__setitem__("optimizer", "{")),
                                    "not a valid vaekit checkpoint"),
    "state not JSON": (_edit_tensors(runs.CHECKPOINT, lambda t, m: m.__setitem__("state", "[1,")),
                       "not a valid vaekit checkpoint"),
    "state missing": (_edit_tensors(runs.CHECKPOINT, lambda t, m: m.pop("state")), "not a valid vaekit checkpoint"),
    "state a list": (_edit_tensors(runs.CHECKPOINT, lambda t, m: m.__setitem__("state", "[]")), "not an object"),
    "epoch a string": (_edit_state(epoch="one"), "epoch"),
    "epoch negative": (_edit_state(epoch=-1), "epoch"),
    "step negative": (_edit_state(step_in_epoch=-2), "step_in_epoch"),
    "step past the epoch": (_edit_state(step_in_epoch=50, global_step=60), "fewer steps"),
    "loss a string": (_edit_state(epoch_loss_sum="lots"), "epoch_loss_sum"),
    "history short": (_edit_state(history=[]), "history"),
    "history row": (_edit_state(history=[{"epoch": 1, "train_loss": "x"}]), "history row 1"),
    "unknown state": (_edit_state(surprise=1), "surprise"),
    "generator state": (_swap(runs.CHECKPOINT, "rng.noise", lambda t: torch.zeros(3)), "not a valid vaekit checkpoint"),
    "shuffle state": (_swap(runs.CHECKPOINT, "rng.epoch_shuffle", lambda t: t[:7]), "not a valid vaekit checkpoint"),
    "generator missing": (_edit_tensors(runs.CHECKPOINT, lambda t, m: t.pop("rng.shuffle")), "rng.shuffle"),
}


def _resume(run: Path, data: Path) -> list[str]:
    return ["train", "--resume", "--out", str(run), "--epochs", "2", "--quiet", "--data-dir", str(data)]


@pytest.mark.parametrize("fault", list(CHECKPOINT_FAULTS))
def test_bad_checkpoints_refuse_to_resume_in_one_line(fault: str, trained: tuple[Path, Path], run_copy: Path,
                                                       capsys) -> None:
    mutate, words = CHECKPOINT_FAULTS[fault]
    mutate(run_copy)
    before = {p.name: p.read_bytes() for p in run_copy.iterdir()}
    capsys.readouterr()
    assert main(_resume(run_copy, trained[1])) == 2
    line = _assert_one_line_naming(capsys.readouterr().err, runs.CHECKPOINT)
    assert words in line, line
    assert {p.name: p.read_bytes() for p in run_copy.iterdir()} == before, "a refused resume changes nothing"


def test_an_intact_copy_resumes(trained: tuple[Path, Path], run_copy: Path) -> None:
    """The control for the cases above: the same copy, untouched, resumes fine."""
    assert main(_resume(run_copy, trained[1])) == 0
    assert [r["epoch"] for r in runs.read_metrics(run_copy)] == [1, 2]


# ---------------------------------------------------------------------------------------------- fuzzing


def _mutate_bytes(data: bytes, edits: list[tuple[str, int, int]], span: int) -> bytes:
    out = bytearray(data)
    for op, pos, value in edits:
        i = pos % max(1, min(span, len(out) + 1))
        if op == "flip" and i < len(out):
            out[i] ^= 1 << (value % 8)
        elif op == "set" and i < len(out):
            out[i] = value
        elif op == "truncate":
            del out[i:]
        elif op == "insert":
            out[i:i] = bytes([value])
        elif op == "delete" and i < len(out):
            del out[i]
    return bytes(out)


edits = st.lists(st.tuples(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]),
                           st.integers(0, 2**31), st.integers(0, 255)), min_size=1, max_size=4)
FUZZ = settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fuzz_run(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("fuzz") / "run"
    shutil.copytree(trained[0], run)
    return run


def _header_span(path: Path) -> int:
    """Bytes of a safetensors file's length prefix and JSON header, where a flipped bit matters most."""
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


@pytest.mark.slow
@FUZZ
@given(edits, st.booleans())
def test_fuzzed_weights_load_or_fail_in_one_line(trained: tuple[Path, Path], fuzz_run: Path, changes, header: bool):
    original = (trained[0] / runs.WEIGHTS).read_bytes()
    span = _header_span(trained[0] / runs.WEIGHTS) if header else len(original)
    (fuzz_run / runs.WEIGHTS).write_bytes(_mutate_bytes(original, changes, span))
    try:
        runs.load_run(fuzz_run)
    except RunFolderError as e:
        assert "\n" not in str(e) and runs.WEIGHTS in str(e)


@pytest.mark.slow
@FUZZ
@given(edits)
def test_fuzzed_configs_load_or_fail_in_one_line(trained: tuple[Path, Path], fuzz_run: Path, changes) -> None:
    original = (trained[0] / runs.CONFIG).read_bytes()
    (fuzz_run / runs.WEIGHTS).write_bytes((trained[0] / runs.WEIGHTS).read_bytes())
    (fuzz_run / runs.CONFIG).write_bytes(_mutate_bytes(original, changes, len(original)))
    try:
        runs.load_run(fuzz_run)
    except RunFolderError as e:
        assert "\n" not in str(e) and (runs.CONFIG in str(e) or runs.WEIGHTS in str(e)), str(e)


@pytest.mark.slow
@FUZZ
@given(edits)
def test_fuzzed_checkpoints_load_or_fail_in_one_line(trained: tuple[Path, Path], fuzz_run: Path, changes) -> None:
    """Bytes of the checkpoint's header (where its training state and optimizer settings live) mutated."""
    source = trained[0] / runs.CHECKPOINT
    original = source.read_bytes()
    (fuzz_run / runs.CHECKPOINT).write_bytes(_mutate_bytes(original, changes, _header_span(source)))
    model_cfg, _, _ = runs.read_config(trained[0])
    model = VAE(model_cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    gens = {"shuffle": torch.Generator(), "noise": torch.Generator()}
    try:
        load_checkpoint(fuzz_run, model, opt, gens)
    except RunFolderError as e:
        assert "\n" not in str(e) and runs.CHECKPOINT in str(e)


# ---------------------------------------------------------------------------------------------- pickles


class _Trap:
    """Unpickling this calls ``Path.touch(marker)``: the marker file appearing means a pickle was opened."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _trap_pickle(marker: Path) -> bytes:
    return pickle.dumps({"encoder.0.weight": _Trap(marker)}, protocol=2)


def _trap_torch_zip(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"encoder.0.weight": _Trap(marker)}, buf)
    return buf.getvalue()


def test_the_trap_is_live(tmp_path: Path) -> None:
    """The control: opening the trap pickle does create its marker, so its absence below means something."""
    pickle.loads(_trap_pickle(tmp_path / "opened"))
    assert (tmp_path / "opened").exists()


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every unpickling entry point fail the test outright while vaekit code runs."""
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("vaekit tried to unpickle")

    class ForbiddenUnpickler(pickle.Unpickler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            forbidden()

    for name in ("load", "loads"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(pickle, "Unpickler", ForbiddenUnpickler)
    monkeypatch.setattr(torch, "load", forbidden)


PICKLE_PLACES = {
    "model.pt instead of weights": ("model.pt", _trap_pickle, runs.WEIGHTS, "model.pt"),
    "pickle named model.safetensors": (runs.WEIGHTS, _trap_pickle, runs.WEIGHTS, "pickle"),
    "torch.save zip named model.safetensors": (runs.WEIGHTS, _trap_torch_zip, runs.WEIGHTS, "torch.save"),
}


@pytest.mark.parametrize("place", list(PICKLE_PLACES))
def test_pickled_weights_are_refused_and_never_opened(place: str, run_copy: Path, tmp_path: Path, capsys,
                                                      no_unpickling: None) -> None:
    name, make, named, words = PICKLE_PLACES[place]
    marker = tmp_path / "unpickled"
    (run_copy / runs.WEIGHTS).unlink()
    (run_copy / name).write_bytes(make(marker))
    capsys.readouterr()
    assert main(["evaluate", str(run_copy)]) == 2
    line = _assert_one_line_naming(capsys.readouterr().err, named)
    assert words in line and "never unpickles" in line, line
    assert not marker.exists()


@pytest.mark.parametrize("make", [_trap_pickle, _trap_torch_zip])
def test_pickled_checkpoint_is_refused_and_never_opened(make, trained: tuple[Path, Path], run_copy: Path,
                                                        tmp_path: Path, capsys, no_unpickling: None) -> None:
    marker = tmp_path / "unpickled"
    (run_copy / runs.CHECKPOINT).write_bytes(make(marker))
    capsys.readouterr()
    assert main(_resume(run_copy, trained[1])) == 2
    line = _assert_one_line_naming(capsys.readouterr().err, runs.CHECKPOINT)
    assert "never unpickles" in line
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt", ".pkl"])
def test_pickle_suffixes_are_refused_by_name(suffix: str, tmp_path: Path, no_unpickling: None) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / f"weights{suffix}"
    path.write_bytes(_trap_pickle(marker))
    with pytest.raises(RunFolderError, match="pickle-based PyTorch file"):
        runs.read_tensors(path)
    assert not marker.exists()


@pytest.mark.slow  # a process of its own: torch's import alone takes seconds
def test_evaluate_in_a_real_process_refuses_the_pickle(run_copy: Path, tmp_path: Path) -> None:
    """No monkeypatching at all: the command itself exits 2 with one line and the trap stays shut."""
    marker = tmp_path / "unpickled"
    (run_copy / runs.WEIGHTS).write_bytes(_trap_torch_zip(marker))
    env = {**os.environ, "VAEKIT_OFFLINE": "1", "VAEKIT_SEARCH_PATH": ""}
    r = subprocess.run([sys.executable, "-m", "vaekit", "evaluate", str(run_copy)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert runs.WEIGHTS in r.stderr and not marker.exists()
