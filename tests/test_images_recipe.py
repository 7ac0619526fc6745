"""The images recipe: the default for your own images and CIFAR-10 (not for MNIST and Fashion-MNIST), its budget
in optimizer steps, and early stopping that keeps the best epoch's weights and resumes bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit.cli import build_parser, main
from vaekit.config import RECIPES, ConfigError, TrainConfig, epochs_for_steps, recipe_config
from vaekit.errors import Interrupted
from vaekit.training import loop
from vaekit.training.callbacks import Callback

QUIET = ["--device", "cpu", "--no-artifacts", "--quiet"]


def config_of(*flags: str) -> TrainConfig:
    from vaekit.cli.train import config_from_args

    return config_from_args(build_parser().parse_args(["train", *flags]))[0]


@pytest.fixture
def array_file(tmp_path: Path) -> Path:
    """120 random 8x8 grey images: 97 train / 11 validation / 12 test under the default fractions."""
    path = tmp_path / "tiny.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (120, 8, 8), dtype=np.uint8))
    return path


# --- which recipe -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [["--data", "photos/"], ["--dataset", "cifar10"]])
def test_images_recipe_is_the_default_for_own_images_and_cifar10(flags: list[str]) -> None:
    c = config_of(*flags)
    assert (c.recipe, c.model, c.likelihood, c.mixtures, c.batch_size, c.lr) == (
        "images", "conv", "logistic-mixture", 5, 64, 1e-3)
    assert (c.lr_schedule, c.steps, c.val_fraction, c.patience, c.context) == ("cosine", 3000, 0.1, 10, 2)


@pytest.mark.parametrize("flags", [[], ["--dataset", "mnist"], ["--dataset", "fashion-mnist"], ["--dataset", "kmnist"],
                                   ["--data", "photos/", "--recipe", "post"]])
def test_the_posts_datasets_keep_the_posts_settings(flags: list[str]) -> None:
    c = config_of(*flags)
    assert c.recipe in (None, "post") and c.likelihood == "bernoulli" and (c.lr, c.batch_size, c.epochs) == (3e-4, 128,
                                                                                                            50)
    assert (c.steps, c.patience, c.model) == (None, 0, None)


def test_the_recipe_is_asked_for_by_name_and_explicit_flags_win() -> None:
    c = config_of("--dataset", "fashion-mnist", "--recipe", "images", "--likelihood", "gaussian", "--batch-size", "32")
    assert (c.recipe, c.model, c.likelihood, c.batch_size, c.steps) == ("images", "conv", "gaussian", 32, 3000)
    assert config_of("--data", "x/", "--epochs", "7").steps is None, "--epochs replaces the step budget"
    no_val = config_of("--data", "x/", "--val-fraction", "0")
    assert (no_val.val_fraction, no_val.patience) == (0, 0), "no validation split: no early stopping"
    assert recipe_config("images", {"epochs": 3}) == TrainConfig(**{**RECIPES["images"], "epochs": 3, "steps": None,
                                                                    "recipe": "images"})


def test_another_likelihood_takes_the_recipe_without_its_mixture_size() -> None:
    c = config_of("--data", "x", "--likelihood", "discretized-logistic")
    assert (c.recipe, c.likelihood, c.mixtures) == ("images", "discretized-logistic", None)
    assert config_of("--data", "x", "--mixtures", "3").mixtures == 3


def test_epochs_for_steps() -> None:
    assert epochs_for_steps(3000, 2000, 64) == 94  # 32 steps an epoch, the last batch short
    assert epochs_for_steps(3000, 54_000, 64) == 4
    assert epochs_for_steps(10, 1, 64) == 10 and epochs_for_steps(1, 10**6, 64) == 1
    with pytest.raises(ConfigError, match="steps"):
        TrainConfig(steps=0).validate()
    with pytest.raises(ConfigError, match="patience"):
        TrainConfig(patience=-1).validate()


# --- the step budget ----------------------------------------------------------------------------------------------


def test_a_small_folder_gets_epochs_for_its_steps_said_in_one_line(array_file: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    flags = ["--data", str(array_file), "--steps", "20", "--batch-size", "16", "--device", "cpu", "--no-artifacts"]
    assert main(["train", *flags, "--out", str(run)]) == 0
    n_train = json.loads((run / "config.json").read_text())["data"]["n_train"]
    per_epoch = -(-n_train // 16)
    epochs, patience = -(-20 // per_epoch), -(-RECIPES["images"]["patience_steps"] // per_epoch)
    line = (f"vaekit train: {n_train:,} training images, batch 16: {epochs} epochs for about 20 steps; early stopping "
            f"after {patience} epochs ({patience * per_epoch} steps) without a better val_loss (--epochs and "
            "--patience override)")
    assert line in capsys.readouterr().err.splitlines()
    stored = json.loads((run / "config.json").read_text())["train"]
    assert (stored["epochs"], stored["steps"], stored["recipe"]) == (epochs, 20, "images") and epochs > 1
    assert stored["patience"] == patience > RECIPES["images"]["patience"]  # stored, so a resumed run keeps it
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + epochs

    assert main(["train", *flags, "--epochs", "1", "--patience", "3", "--out", str(tmp_path / "one")]) == 0
    assert "vaekit train: " not in capsys.readouterr().err  # neither budget said: both given
    stored = json.loads((tmp_path / "one" / "config.json").read_text())["train"]
    assert (stored["epochs"], stored["patience"], stored["patience_steps"]) == (1, 3, 0)


def test_a_large_data_set_keeps_the_recipes_patience_in_epochs() -> None:
    from vaekit.training.budget import settle_budget

    config = recipe_config("images", {"data": "x/"})
    big = settle_budget(config, 54_000, True, True, False)  # Fashion-MNIST: 844 steps an epoch
    assert (big.epochs, big.patience) == (4, 10)
    small = settle_budget(config, 238, True, True, False)  # a folder of 300 images: 4 steps an epoch
    assert (small.epochs, small.patience) == (750, 125)
    assert settle_budget(config, 238, True, False, False) == config, "a resumed run keeps what it stored"


# --- early stopping -----------------------------------------------------------------------------------------------

VAL_LOSSES = [50.0, 30.0, 40.0, 45.0, 41.0, 42.0]  # best at epoch 2: patience 2 stops after epoch 4


@pytest.fixture
def scripted_val(monkeypatch: pytest.MonkeyPatch) -> None:
    """val_loss per epoch as VAL_LOSSES says, whatever the weights: when early stopping must stop is then known."""
    def fake(t: loop.Trainer) -> dict[str, float]:
        loss = VAL_LOSSES[len(t.state.history)]
        return {"val_loss": loss, "val_recon": loss, "val_kl": 0.0}

    monkeypatch.setattr(loop, "validation_metrics", fake)


def _config(**kw: object) -> TrainConfig:
    return recipe_config("images", {"epochs": 6, "batch_size": 32, "patience": 2, "device": "cpu", "progress": False,
                                    "artifacts": False, "lr_schedule": "constant", **kw})


def _weights(run: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(run / name)


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.usefixtures("scripted_val")
@pytest.mark.parametrize("extra", [{}, {"ema": 0.5}], ids=["raw", "ema"])
def test_early_stopping_stops_and_keeps_the_best_epochs_weights(array_file: Path, tmp_path: Path,
                                                                extra: dict[str, float]) -> None:
    """With --ema the weights validated, kept and saved are the average's."""
    run = vaekit.train(_config(**extra), tmp_path / "stopped", data=array_file)
    assert len(run.metrics) == 4 and run.summary["epochs"] == 4 and run.summary["best_val_epoch"] == 2
    # The same run trained for 2 epochs ends with the weights of epoch 2 (the rate is constant).
    vaekit.train(_config(epochs=2, patience=0, **extra), tmp_path / "two", data=array_file)
    assert _equal(_weights(tmp_path / "stopped"), _weights(tmp_path / "two"))
    assert _equal(_weights(tmp_path / "stopped", "best.safetensors"), _weights(tmp_path / "two"))
    # Its test numbers are those of the kept weights.
    assert run.summary["test_loss"] == json.loads((tmp_path / "two" / "summary.json").read_text())["test_loss"]


@pytest.mark.usefixtures("scripted_val")
def test_a_small_folder_waits_its_patience_in_steps_and_stops_early(array_file: Path, tmp_path: Path) -> None:
    """About 96 training images in batches of 32 are 3 steps an epoch: patience_steps 9 waits 3 epochs where the
    patience of 2 would wait 2, so the run stops after epoch 5 (best at epoch 2) with epoch 2's weights."""
    from dataclasses import replace

    config = replace(_config(), patience=2, patience_steps=9)
    run = vaekit.train(config, tmp_path / "stopped", data=array_file)
    assert run.train_config.patience == 3 and len(run.metrics) == 5 < config.epochs
    assert run.summary["best_val_epoch"] == 2
    vaekit.train(_config(epochs=2, patience=0), tmp_path / "two", data=array_file)
    assert _equal(_weights(tmp_path / "stopped"), _weights(tmp_path / "two"))


class KillAfter(Callback):
    """Stops the process after an epoch's checkpoint, as a kill would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer: loop.Trainer, row: dict[str, float]) -> None:
        if row["epoch"] == self.epoch:
            raise Interrupted("killed")


@pytest.mark.usefixtures("scripted_val")
@pytest.mark.parametrize("kill_after", [3, 4])
def test_resume_across_early_stopping_is_bit_for_bit(array_file: Path, tmp_path: Path, kill_after: int) -> None:
    """Killed before the stop (epoch 3) or just at it (epoch 4), resuming ends as the uninterrupted run did."""
    config = _config(lr_schedule="cosine")
    vaekit.train(config, tmp_path / "straight", data=array_file)
    with pytest.raises(Interrupted):
        vaekit.train(config, tmp_path / "killed", data=array_file, callbacks=[KillAfter(kill_after)])
    vaekit.train(config, tmp_path / "killed", data=array_file, resume=True)

    def rows(name: str) -> list[dict[str, str]]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in vaekit.load_run(tmp_path / name).metrics]

    assert rows("straight") == rows("killed") and len(rows("killed")) == 4
    assert _equal(_weights(tmp_path / "straight"), _weights(tmp_path / "killed"))
    summaries = [json.loads((tmp_path / n / "summary.json").read_text()) for n in ("straight", "killed")]
    assert summaries[0]["test_loss"] == summaries[1]["test_loss"] and summaries[1]["best_val_epoch"] == 2


def test_patience_needs_a_validation_split(array_file: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", str(array_file), "--val-fraction", "0", "--patience", "3", "--out",
                 str(tmp_path / "run"), *QUIET]) == 2
    assert "--patience 3 stops on the validation loss" in capsys.readouterr().err
