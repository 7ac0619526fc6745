"""The training core's parts: callbacks, the LR schedule of an extended run, TensorBoard, the layout."""

from __future__ import annotations

import ast
import csv
import subprocess
import sys
from pathlib import Path

import pytest

import vaekit
from vaekit.cli import main
from vaekit.config import TrainConfig
from vaekit.training.schedule import LRSchedule

from .conftest import write_dataset

SRC = Path(__file__).resolve().parents[1] / "src" / "vaekit"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("core") / "data", 256, 64)


def _cfg(data: Path, **kw: object) -> TrainConfig:
    base = dict(dataset="mnist", data_dir=str(data), epochs=2, batch_size=64, device="cpu", progress=False,
                artifacts=False)
    return TrainConfig(**{**base, **kw})


def _lrs(run: Path) -> list[float]:
    return [float(r["lr"]) for r in csv.DictReader((run / "metrics.csv").read_text().splitlines())]


class Recorder(vaekit.Callback):
    """Writes down every hook call, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_fit_start(self, trainer) -> None:
        self.calls.append(f"fit_start@{trainer.state.epoch}")

    def on_epoch_start(self, trainer, epoch) -> None:
        self.calls.append(f"epoch_start {epoch}")

    def on_step_end(self, trainer, result) -> None:
        self.calls.append(f"step {result.step} {result.images}")

    def on_save_point(self, trainer, state) -> None:
        self.calls.append(f"save {state.step_in_epoch}")

    def on_epoch_end(self, trainer, row) -> None:
        self.calls.append(f"epoch_end {row['epoch']} {row['test_loss']:.0f}")

    def on_fit_end(self, trainer) -> None:
        self.calls.append("fit_end")

    def teardown(self, trainer) -> None:
        self.calls.append("teardown")


def test_callbacks_see_every_step_epoch_and_save_point_in_order(data: Path, tmp_path: Path) -> None:
    rec = Recorder()
    run = vaekit.train(_cfg(data, checkpoint_every=3), tmp_path / "run", callbacks=[rec])
    steps = [f"step {i} {64}" for i in range(1, 5)]
    loss = [f"{r['test_loss']:.0f}" for r in run.metrics]
    assert rec.calls == ["fit_start@0", "epoch_start 1", *steps[:3], "save 3", steps[3], f"epoch_end 1 {loss[0]}",
                         "epoch_start 2", *steps[:2], "save 2", *steps[2:], f"epoch_end 2 {loss[1]}",
                         "fit_end", "teardown"]


def test_teardown_runs_when_training_fails(data: Path, tmp_path: Path) -> None:
    class Boom(Recorder):
        def on_step_end(self, trainer, result) -> None:
            super().on_step_end(trainer, result)
            raise RuntimeError("boom")

    rec = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        vaekit.train(_cfg(data), tmp_path / "run", callbacks=[rec])
    assert rec.calls == ["fit_start@0", "epoch_start 1", "step 1 64", "teardown"]


def test_extending_a_scheduled_run_continues_its_decay(data: Path, tmp_path: Path) -> None:
    """--recipe fast for 3 epochs, then --resume --epochs 6: the LR goes on down from where it was, to ~0."""
    out = tmp_path / "run"
    common = ["--dataset", "mnist", "--data-dir", str(data), "--device", "cpu", "--quiet", "--no-artifacts",
              "--out", str(out), "--batch-size", "64"]
    assert main(["train", "--recipe", "fast", "--epochs", "3", *common]) == 0
    first = _lrs(out)
    assert main(["train", "--resume", "--epochs", "6", *common]) == 0
    lrs = _lrs(out)
    assert lrs[:3] == first
    assert all(b < a for a, b in zip(lrs[2:], lrs[3:], strict=False)), lrs  # never raised again
    assert lrs[-1] < 0.05 * lrs[2]  # decayed to (nearly) 0 by the new last step


def test_schedule_extension_starts_at_the_rate_reached() -> None:
    s = LRSchedule("cosine", 1.0, warmup_steps=10, total_steps=100)
    e = s.extended(200, step=60)
    assert e.at(60) == pytest.approx(s.at(59))
    assert e.at(200) == 0.0
    assert all(e.at(i + 1) <= e.at(i) for i in range(60, 200))
    assert s.extended(200, step=5).at(150) == LRSchedule("cosine", 1.0, 10, 200).at(150)  # still warming up
    assert LRSchedule("constant", 0.5, 0, 10).extended(20, 10).at(15) == 0.5


def test_tensorboard_logs_the_epoch_scalars(data: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = vaekit.train(_cfg(data, tensorboard=True), tmp_path / "run")
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"train/loss", "test/loss", "test/recon", "test/kl", "lr"}
    test_loss = [e.value for e in acc.Scalars("test/loss")]
    assert [e.step for e in acc.Scalars("test/loss")] == [1, 2]
    assert test_loss == pytest.approx([r["test_loss"] for r in run.metrics], rel=1e-6)


def test_tensorboard_missing_is_one_line_and_writes_nothing(data: Path, tmp_path: Path) -> None:
    """Without the package (hidden from the child), training does not start and leaves no folder."""
    code = ("import sys; sys.modules['tensorboard'] = None; sys.modules['torch.utils.tensorboard'] = None\n"
            "from vaekit.cli import main\n"
            f"sys.exit(main(['train', '--dataset', 'mnist', '--data-dir', {str(data)!r}, '--epochs', '1', "
            f"'--device', 'cpu', '--tensorboard', '--out', {str(tmp_path / 'run')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and 'pip install "vaekit[tensorboard]"' in done.stderr
    assert not (tmp_path / "run").exists()


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The vaekit modules ``path`` imports when it is imported: module-level statements, TYPE_CHECKING blocks
    included (imports inside functions run later, once every module is loaded). ``from pkg import mod``
    counts as importing ``pkg.mod``."""
    module = ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    top = [n for stmt in tree.body for n in ([stmt] if not isinstance(stmt, ast.If) else [stmt, *stmt.body])]
    for node in top:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base]) if base else ".".join(parts)
            subs = {f"{base}.{a.name}" for a in node.names} & modules
            found.update(subs or {base})
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("vaekit")}


def test_no_import_cycles_between_modules() -> None:
    """Module-level import graph of src/vaekit (a package counts as its __init__) has no cycle."""
    files = {".".join(p.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in SRC.rglob("*.py")}
    graph = {m: {d for d in _imports(p, set(files)) if d in files and d != m} for m, p in files.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(d):], d]))
            if d not in state:
                visit(d, [*stack, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_version_answers_without_importing_torch_or_matplotlib() -> None:
    code = ("import sys\nfrom vaekit.cli import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'numpy', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == [f"vaekit {vaekit.__version__}", "[]"], done.stderr
