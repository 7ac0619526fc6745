"""Training end to end on small generated data: the run folder, repeatability, resume, refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit import run as runs
from vaekit.artifacts import FINAL_OUTPUTS
from vaekit.cli import main
from vaekit.config import TrainConfig
from vaekit.errors import NonFiniteError, RunFolderError

from .conftest import SHARED_MNIST, Killed, hermetic_env, kill_at_save_point, make_digits

FILES = [runs.CONFIG, runs.WEIGHTS, runs.CHECKPOINT, runs.METRICS, runs.SUMMARY, *FINAL_OUTPUTS]


def _cfg(data: Path, **kw) -> TrainConfig:
    """A small CPU run without the artifacts stage (the tests that check artifacts ask for them)."""
    base = dict(dataset="mnist", data_dir=str(data), epochs=2, batch_size=128, device="cpu", progress=False,
                artifacts=False)
    return TrainConfig(**{**base, **kw})




def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model.safetensors")


def _assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def whole_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-epoch run trained by ``vaekit train`` with everything it writes, artifacts included."""
    out = tmp_path_factory.mktemp("whole") / "run"
    with hermetic_env(tmp_path_factory.mktemp("cache")):
        assert main(["train", "--dataset", "mnist", "--data-dir", str(tiny_data), "--epochs", "2", "--out", str(out),
                     "--device", "cpu", "--quiet"]) == 0
    return out


def test_cli_train_writes_the_whole_run_folder(whole_run: Path, capsys) -> None:
    out = whole_run
    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == ["epoch", "train_loss", "test_loss", "test_recon", "test_kl", "seconds", "lr"]
    assert [float(r["lr"]) for r in rows] == [3e-4, 3e-4]  # the post's constant rate
    summary = json.loads((out / "summary.json").read_text())
    for key in ("test_loss", "test_recon", "test_kl", "train_samples_per_s", "n_params", "dataset", "epochs"):
        assert key in summary
    assert summary["n_params"] == 439_956 and summary["epochs"] == 2 and summary["dataset"] == "mnist"
    assert summary["test_loss"] == pytest.approx(summary["test_recon"] + summary["test_kl"])
    assert float(rows[-1]["test_loss"]) == pytest.approx(summary["test_loss"], abs=1e-5)
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["zdim"] == 2 and config["train"]["lr"] == 3e-4 and config["data"]["n_train"] == 600
    # evaluate reproduces the number training reported, on the same metric keys
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("test_loss", "test_recon", "test_kl"):
        assert result[key] == pytest.approx(summary[key], rel=1e-6)
    # plot redraws the figures
    (out / "samples.png").unlink()
    assert main(["plot", str(out)]) == 0
    assert (out / "samples.png").exists()


def test_no_artifacts_trains_the_same_run_without_figures_or_pages(whole_run: Path, tiny_data: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "bare"
    assert main(["train", "--dataset", "mnist", "--data-dir", str(tiny_data), "--epochs", "2", "--device", "cpu",
                 "--quiet", "--out", str(out), "--no-artifacts"]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {runs.CONFIG, runs.WEIGHTS, runs.CHECKPOINT, runs.METRICS, runs.SUMMARY}, names
    assert json.loads((out / runs.CONFIG).read_text())["train"]["artifacts"] is False
    assert runs.is_complete(out, 2)
    # the numbers of the run that draws them: the artifacts come after training and change nothing
    _assert_bitwise_equal(_weights(out), _weights(whole_run))
    assert runs.read_metrics(out)[-1]["test_loss"] == runs.read_metrics(whole_run)[-1]["test_loss"]


def test_training_lowers_the_loss_and_model_reloads_without_training_code(tiny_data: Path, tmp_path: Path) -> None:
    run = vaekit.train(_cfg(tiny_data, epochs=4, batch_size=32, lr=1e-3), tmp_path / "run")
    losses = [r["test_loss"] for r in run.metrics]
    assert losses[-1] < losses[0] - 20
    model = vaekit.load_model(run.path)
    x = torch.rand(3, 784)
    torch.testing.assert_close(model.decode(model.encode(x)[0]), run.model.decode(run.model.encode(x)[0]))


def test_same_seed_same_weights_other_seed_other_weights(tiny_data: Path, tmp_path: Path) -> None:
    a = vaekit.train(_cfg(tiny_data, epochs=1, seed=7), tmp_path / "a")
    b = vaekit.train(_cfg(tiny_data, epochs=1, seed=7), tmp_path / "b")
    c = vaekit.train(_cfg(tiny_data, epochs=1, seed=8), tmp_path / "c")
    _assert_bitwise_equal(_weights(a.path), _weights(b.path))
    assert not torch.equal(_weights(a.path)["decoder.0.weight"], _weights(c.path)["decoder.0.weight"])


def test_resume_one_then_two_equals_three_bitwise(tiny_data: Path, tmp_path: Path) -> None:
    full = vaekit.train(_cfg(tiny_data, epochs=3), tmp_path / "full")
    vaekit.train(_cfg(tiny_data, epochs=1), tmp_path / "split")
    resumed = vaekit.train(_cfg(tiny_data, epochs=3), tmp_path / "split", resume=True)
    _assert_bitwise_equal(_weights(full.path), _weights(resumed.path))
    assert [r["epoch"] for r in resumed.metrics] == [1, 2, 3]
    assert [r["test_loss"] for r in resumed.metrics] == pytest.approx([r["test_loss"] for r in full.metrics])


def test_mid_epoch_checkpoints_resume_bitwise(tiny_data: Path, tmp_path: Path) -> None:
    """A run that dies right after a mid-epoch checkpoint continues exactly where it stood."""
    full = vaekit.train(_cfg(tiny_data, epochs=2), tmp_path / "full")
    with pytest.raises(Killed):  # global step 7: inside epoch 2
        vaekit.train(_cfg(tiny_data, epochs=2, checkpoint_every=7), tmp_path / "part",
                     callbacks=[kill_at_save_point(1, 2)])
    assert not (tmp_path / "part" / ".lock").exists()
    assert json.loads(runs.read_tensors(tmp_path / "part" / runs.CHECKPOINT)[1]["state"])["global_step"] == 7
    resumed = vaekit.train(_cfg(tiny_data, epochs=2), tmp_path / "part", resume=True)
    _assert_bitwise_equal(_weights(full.path), _weights(resumed.path))
    assert [r["train_loss"] for r in resumed.metrics] == [r["train_loss"] for r in full.metrics]


def test_refuses_to_overwrite_a_run_unless_forced(tiny_data: Path, tmp_path: Path) -> None:
    vaekit.train(_cfg(tiny_data, epochs=1), tmp_path / "run")
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(RunFolderError, match="already exists"):
        vaekit.train(_cfg(tiny_data, epochs=1, seed=3), tmp_path / "run")
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before
    vaekit.train(_cfg(tiny_data, epochs=1, seed=3), tmp_path / "run", force=True)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() != before


@pytest.mark.parametrize("preset,zdim", [("mlp", 3), ("seed", 1)])
def test_other_presets_and_latent_sizes_train_and_plot(tiny_data: Path, tmp_path: Path, preset: str,
                                                       zdim: int) -> None:
    run = vaekit.train(_cfg(tiny_data, epochs=1, model=preset, zdim=zdim, likelihood="gaussian", sigma=0.5,
                            artifacts=True, grid_size=3), tmp_path / "run")
    assert run.model.zdim == zdim
    assert all((run.path / name).stat().st_size > 0 for name in FINAL_OUTPUTS)


def test_infinite_loss_stops_with_one_line_naming_epoch_and_step(tiny_data: Path, tmp_path: Path, capsys) -> None:
    # a gaussian likelihood with sigma 1e-30 overflows float32 on the first batch
    code = main(["train", "--dataset", "mnist", "--data-dir", str(tiny_data), "--out", str(tmp_path / "run"),
                 "--quiet", "--device", "cpu", "--likelihood", "gaussian", "--sigma", "1e-30", "--epochs", "1"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vaekit train: error: the loss became inf at epoch 1, step 1;") and "--lr" in err


class PoisonAfterStep(vaekit.Callback):
    """Sets a decoder bias to NaN after step ``step`` of epoch ``epoch``: the next step's loss is NaN."""

    def __init__(self, epoch: int, step: int) -> None:
        self.at = (epoch, step)
        self.epoch = 0

    def on_epoch_start(self, trainer, epoch: int) -> None:
        self.epoch = epoch

    def on_step_end(self, trainer, result) -> None:
        if (self.epoch, result.step) == self.at:
            with torch.no_grad():
                trainer.model.decoder[-1].bias[0] = float("nan")


def test_nan_mid_run_keeps_the_last_good_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    vaekit.train(_cfg(tiny_data, epochs=1), tmp_path / "run")
    good = (tmp_path / "run" / "checkpoint.safetensors").read_bytes()
    weights = (tmp_path / "run" / "model.safetensors").read_bytes()
    metrics = (tmp_path / "run" / "metrics.csv").read_bytes()
    with pytest.raises(NonFiniteError, match=r"loss became nan at epoch 2, step 3; the last good checkpoint"):
        vaekit.train(_cfg(tiny_data, epochs=3), tmp_path / "run", resume=True, callbacks=[PoisonAfterStep(2, 2)])
    assert (tmp_path / "run" / "checkpoint.safetensors").read_bytes() == good
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == weights
    assert (tmp_path / "run" / "metrics.csv").read_bytes() == metrics
    assert not (tmp_path / "run" / ".lock").exists()


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_MNIST.exists(), reason="real MNIST test digits not present")
def test_short_run_on_real_mnist_digits(tmp_path: Path) -> None:
    from vaekit.data import read_idx, write_idx

    images = read_idx(SHARED_MNIST / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(SHARED_MNIST / "t10k-labels-idx1-ubyte.gz")
    data = tmp_path / "mnist"
    data.mkdir()
    write_idx(data / "train-images-idx3-ubyte.gz", images[:2000])
    write_idx(data / "train-labels-idx1-ubyte.gz", labels[:2000])
    write_idx(data / "t10k-images-idx3-ubyte.gz", images[-500:])
    write_idx(data / "t10k-labels-idx1-ubyte.gz", labels[-500:])
    run = vaekit.train(_cfg(data, epochs=3, batch_size=64, lr=1e-3), tmp_path / "run")
    losses = [r["test_loss"] for r in run.metrics]
    assert losses[-1] < losses[0] and 130 < losses[-1] < 260  # a 2-d VAE on MNIST digits lands here


def test_generated_digits_have_classes_a_model_can_tell_apart() -> None:
    """The tests' generated data (``make_digits``) has what the latent scatter and the explorer show: images
    of a class alike and classes apart. A nearest-class-mean classifier fitted on one draw labels another."""
    train, train_labels = make_digits(500, seed=0)
    test, test_labels = make_digits(200, seed=1)
    assert train.dtype == np.uint8 and train.shape == (500, 28, 28) and set(train_labels) == set(range(10))
    means = np.stack([train[train_labels == c].reshape(-1, 784).mean(0) for c in range(10)])
    dist = ((test.reshape(-1, 1, 784).astype(np.float64) - means[None]) ** 2).sum(-1)
    assert (dist.argmin(1) == test_labels).mean() > 0.9
    assert not np.array_equal(make_digits(10, seed=0)[0], make_digits(10, seed=2)[0])
