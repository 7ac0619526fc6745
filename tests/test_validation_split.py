"""The validation split: carved from the training images by a hash of their pixels, evaluated every epoch for the
callbacks to choose and stop on, while the test set gives the final number only.

On by default for your own images, off by default for a named dataset (whose runs keep their numbers: see
test_golden.py), and set either way with ``--val-fraction``. Data is generated; runs are a few hundred images.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit import run as runs
from vaekit.cli import main
from vaekit.config import ConfigError, TrainConfig
from vaekit.data import DataError, Splits
from vaekit.data.validation import carve_validation, validation_indices, validation_scores
from vaekit.errors import RunFolderError

from .conftest import make_digits, write_dataset

QUICK = ["--epochs", "1", "--device", "cpu", "--no-artifacts", "--quiet", "--batch-size", "64"]
DOCS = Path(__file__).resolve().parents[1] / "docs"


def rows(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))


def header(run: Path) -> list[str]:
    return (run / "metrics.csv").read_text().splitlines()[0].split(",")


def data_section(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())["data"]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return make_digits(150, seed=7)[0]


@pytest.fixture
def array_file(images: np.ndarray, tmp_path: Path) -> Path:
    path = tmp_path / "digits.npy"
    np.save(path, images)
    return path


def _config(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=64, device="cpu", progress=False, artifacts=False)
    return TrainConfig(**{**base, **kw})


# --- the carve -------------------------------------------------------------------------------------------------


def test_validation_images_are_disjoint_from_training_and_test_images(images: np.ndarray) -> None:
    splits = Splits("digits", images[:120], np.zeros(120, np.int64), images[120:], np.zeros(30, np.int64), "test")
    train, val = carve_validation(splits, 0.2)
    assert val is not None and 0 < len(val.images) < 120
    assert len(train.train_images) + len(val.images) == 120
    held = {img.tobytes() for img in val.images}
    assert held.isdisjoint(img.tobytes() for img in train.train_images)
    assert held.isdisjoint(img.tobytes() for img in train.test_images)
    np.testing.assert_array_equal(val.images, images[:120][val.indices])
    assert train.test_images is splits.test_images  # the test split is not touched


def test_the_validation_set_stays_when_images_come_or_go(images: np.ndarray) -> None:
    """An image's side depends on its pixels only: a new image, wherever it lands, moves no other image across."""
    def held(imgs: np.ndarray) -> set[bytes]:
        return {imgs[i].tobytes() for i in validation_indices(imgs, 0.25)}

    before = held(images)
    extra = make_digits(1, seed=99)[0]
    after = held(np.concatenate([extra, images]))  # every position shifts by one
    assert after - {extra[0].tobytes()} == before
    assert held(images[10:]) == before - {img.tobytes() for img in images[:10]}


def test_exact_duplicates_land_on_one_side(images: np.ndarray) -> None:
    doubled = np.concatenate([images, images])
    val = set(validation_indices(doubled, 0.3).tolist())
    assert all((i in val) == (i + len(images) in val) for i in range(len(images)))
    scores = validation_scores(doubled)
    assert np.all((scores >= 0) & (scores < 1)) and np.array_equal(scores[: len(images)], scores[len(images):])


def test_there_is_always_one_validation_image_and_one_to_train_on(images: np.ndarray) -> None:
    assert len(validation_indices(images[:3], 1e-9)) == 1
    assert len(validation_indices(images[:3], 0.999999)) == 2
    with pytest.raises(DataError, match=r"at least 2 training images .*--val-fraction 0"):
        validation_indices(images[:1], 0.1)


def test_binarized_runs_validate_on_one_fixed_binary_copy(images: np.ndarray) -> None:
    from vaekit.data.validation import binarize_validation

    splits = Splits("digits", images, np.zeros(150, np.int64), images[:5], np.zeros(5, np.int64), "test")
    _, val = carve_validation(splits, 0.2)
    assert binarize_validation(val, "none", 1) is val
    a, b = binarize_validation(val, "dynamic", 1), binarize_validation(val, "static", 1)
    assert set(np.unique(a.images)) <= {0, 255} and np.array_equal(a.images, b.images)  # fixed by the seed
    assert np.array_equal(a.indices, val.indices)


def test_a_training_split_of_one_image_cannot_validate(images: np.ndarray, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "two.npy", images[:2])  # one test image, one to train on
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "two.npy"), "--out", str(run), *QUICK]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert line.startswith("vaekit train: error: a validation split needs at least 2 training images")
    assert not run.exists()
    assert main(["train", "--data", str(tmp_path / "two.npy"), "--out", str(run), "--val-fraction", "0", *QUICK]) == 0


def test_val_fraction_is_checked_as_a_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for bad in (1, 1.5, -0.1, True, "0.1", float("nan")):
        with pytest.raises(ConfigError, match="val_fraction"):
            TrainConfig(val_fraction=bad).validate()
    TrainConfig(val_fraction=0).validate()
    with pytest.raises(SystemExit) as e:
        main(["train", "--val-fraction", "1", "--out", str(tmp_path / "r"), *QUICK])
    assert e.value.code == 2 and "--val-fraction: expected a number from 0 up to 1" in capsys.readouterr().err


# --- on and off ------------------------------------------------------------------------------------------------


def test_own_data_validates_by_default(array_file: Path, tmp_path: Path) -> None:
    run = vaekit.train(_config(), tmp_path / "run", data=array_file)
    assert header(run.path) == ["epoch", "train_loss", "val_loss", "val_recon", "val_kl", "test_loss", "test_recon",
                                "test_kl", "seconds", "lr"]
    got = rows(run.path)
    assert [r["test_loss"] for r in got[:-1]] == [""] and got[-1]["test_loss"] != ""  # the test set: once, at the end
    assert all(r["val_loss"] for r in got)
    data = data_section(run.path)
    assert (data["val_fraction"], data["n_val"] + data["n_train"]) == (0.1, data["own"]["n_train"])
    assert run.train_config.val_fraction == 0.1
    s = run.summary
    assert s["n_val"] == data["n_val"] and s["val_loss"] == pytest.approx(float(got[-1]["val_loss"]), abs=1e-6)
    best = min(run.metrics, key=lambda r: r["val_loss"])
    assert (s["best_val_loss"], s["best_val_epoch"]) == (pytest.approx(best["val_loss"], abs=1e-6), best["epoch"])
    assert s["test_loss"] == pytest.approx(run.metrics[-1]["test_loss"], abs=1e-6)
    # `vaekit evaluate` reports the test set, the same number training wrote at its end.
    assert vaekit.evaluate_run(run.path)["test_loss"] == s["test_loss"]


def test_val_fraction_0_turns_it_off_and_a_named_dataset_has_none_by_default(array_file: Path, tmp_path: Path) -> None:
    assert main(["train", "--data", str(array_file), "--val-fraction", "0", "--out", str(tmp_path / "own"),
                 *QUICK]) == 0
    data = write_dataset(tmp_path / "mnist", 100, 40)
    assert main(["train", "--dataset", "mnist", "--data-dir", str(data), "--out", str(tmp_path / "named"),
                 *QUICK]) == 0
    for name in ("own", "named"):
        run = tmp_path / name
        assert header(run) == list(runs.METRIC_COLUMNS) and rows(run)[0]["test_loss"] != ""
        assert "n_val" not in data_section(run) and "n_val" not in json.loads((run / "summary.json").read_text())
        assert json.loads((run / "config.json").read_text())["train"]["val_fraction"] == 0.0


def test_a_named_dataset_validates_when_asked(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "mnist", 100, 40)
    assert main(["train", "--dataset", "mnist", "--data-dir", str(data), "--val-fraction", "0.2",
                 "--out", str(tmp_path / "run"), *QUICK]) == 0
    section = data_section(tmp_path / "run")
    assert section["n_train"] + section["n_val"] == 100 and section["val_fraction"] == 0.2
    assert "val_loss" in header(tmp_path / "run")


# --- callbacks -------------------------------------------------------------------------------------------------


class Rows(vaekit.Callback):
    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_epoch_end(self, trainer, row) -> None:
        self.rows.append(dict(row))


def test_callbacks_receive_val_loss_and_no_test_numbers(array_file: Path, tmp_path: Path) -> None:
    seen = Rows()
    vaekit.train(_config(), tmp_path / "run", data=array_file, callbacks=[seen])
    assert [r["epoch"] for r in seen.rows] == [1, 2]
    for row in seen.rows:
        assert {"val_loss", "val_recon", "val_kl"} <= row.keys() and not row.keys() & {"test_loss", "test_recon"}
        assert abs(row["val_loss"] - row["val_recon"] - row["val_kl"]) < 1e-3
    without = Rows()
    vaekit.train(_config(epochs=1, val_fraction=0), tmp_path / "off", data=array_file, callbacks=[without])
    assert "test_loss" in without.rows[0] and "val_loss" not in without.rows[0]


def _docs_early_stopping() -> dict:
    """The early-stopping callback of docs/callbacks.md, as the docs define it."""
    text = (DOCS / "callbacks.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "class StopWhenFlat" in b)
    namespace: dict = {}
    exec(block.split("\ntry:")[0], namespace)  # noqa: S102 - the documented classes, without the 200-epoch run
    return namespace


def test_the_documented_early_stopping_stops_on_val_loss_and_the_test_set_comes_after(array_file: Path,
                                                                                        tmp_path: Path) -> None:
    docs = _docs_early_stopping()
    stop = docs["StopWhenFlat"](patience=1, min_delta=1e9)  # no epoch improves by 1e9 nats: stop after the second
    run = tmp_path / "run"
    with pytest.raises(docs["EarlyStop"], match="after epoch 2"):
        vaekit.train(_config(epochs=5), run, data=array_file, callbacks=[stop])
    assert stop.best == pytest.approx(float(rows(run)[0]["val_loss"]), abs=1e-6)
    assert [r["test_loss"] for r in rows(run)] == ["", ""] and not (run / "summary.json").exists()
    # As the docs say: resuming at the epochs it completed writes the summary, and evaluates the test set once.
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--data", str(array_file), "--quiet"]) == 0
    assert rows(run)[-1]["test_loss"] != "" and json.loads((run / "summary.json").read_text())["epochs"] == 2


# --- resume ----------------------------------------------------------------------------------------------------


def test_resume_with_a_validation_split_is_bit_for_bit(array_file: Path, tmp_path: Path) -> None:
    # The post's constant rate: a cosine schedule over 1 epoch, extended to 2, is not the one over 2 (see
    # test_images_recipe.py for the images recipe across a resume).
    common = ["--data", str(array_file), "--recipe", "post", "--device", "cpu", "--no-artifacts", "--quiet",
              "--batch-size", "64"]
    assert main(["train", *common, "--epochs", "2", "--out", str(tmp_path / "straight")]) == 0
    assert main(["train", *common, "--epochs", "1", "--out", str(tmp_path / "resumed")]) == 0
    assert main(["train", "--resume", "--out", str(tmp_path / "resumed"), "--epochs", "2", "--quiet"]) == 0

    def numbers(name: str) -> list[dict[str, str]]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows(tmp_path / name)]

    assert numbers("straight") == numbers("resumed")
    assert numbers("straight")[0]["test_loss"] == ""
    a, b = (load_file(tmp_path / n / "model.safetensors") for n in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summaries = [json.loads((tmp_path / n / "summary.json").read_text()) for n in ("straight", "resumed")]
    for key in ("val_loss", "best_val_loss", "n_val", "test_loss"):
        assert summaries[0][key] == summaries[1][key], key
    assert data_section(tmp_path / "straight")["val_indices_sha256"] == \
        data_section(tmp_path / "resumed")["val_indices_sha256"]


def test_a_run_from_before_validation_splits_resumes_without_one(array_file: Path, tmp_path: Path) -> None:
    """Its config.json has no val_fraction and its data section no validation record: it continues as it began."""
    def as_before(run: Path) -> None:
        config = json.loads((run / "config.json").read_text())
        del config["train"]["val_fraction"]
        (run / "config.json").write_text(json.dumps(config))

    run = tmp_path / "run"
    assert main(["train", "--data", str(array_file), "--val-fraction", "0", "--out", str(run), *QUICK]) == 0
    as_before(run)
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--quiet"]) == 0
    assert header(run) == list(runs.METRIC_COLUMNS) and all(r["test_loss"] for r in rows(run))
    as_before(run)  # --val-fraction 0 says the same as the run's record
    assert main(["train", "--resume", "--out", str(run), "--epochs", "3", "--val-fraction", "0", "--quiet"]) == 0
    assert len(rows(run)) == 3 and "val_loss" not in header(run)


def test_resume_and_evaluate_check_the_validation_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A named dataset's files replaced by others of the same size: the validation split shows they differ."""
    data, run = write_dataset(tmp_path / "mnist", 100, 40), tmp_path / "run"
    named = ["--dataset", "mnist", "--data-dir", str(data), "--val-fraction", "0.2"]
    assert main(["train", *named, "--out", str(run), *QUICK]) == 0
    write_dataset(data, 100, 40, seed=5)  # other training images, the same test images' file names
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--quiet"]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]  # the others: checksum warnings
    assert "validation split" in line and "resume with the data the run was trained on" in line
    with pytest.raises(RunFolderError, match="validation split"):
        vaekit.evaluate_run(run)


# --- readers of the run folder ---------------------------------------------------------------------------------


def test_readers_take_validation_columns_and_blank_test_cells(array_file: Path, tmp_path: Path) -> None:
    from vaekit.artifacts.figures import loss_curve_figure
    from vaekit.artifacts.report import loss_curves_svg

    run = vaekit.train(_config(artifacts=True), tmp_path / "run", data=array_file)
    metrics = runs.read_metrics(run.path)
    assert "test_loss" not in metrics[0] and "test_loss" in metrics[1] and "val_loss" in metrics[0]
    labels = [line.get_label() for line in loss_curve_figure(metrics).axes[0].get_lines()]
    assert labels == ["train (mean over the epoch)", "validation", "test"]
    svg = loss_curves_svg(metrics)
    assert ">validation</text>" in svg and ">test</text>" in svg
    report = (run.path / "report.html").read_text()
    assert "<th>val_loss</th>" in report and "best_val_loss" in report
    assert (run.path / "loss_curve.png").stat().st_size > 0


def test_a_hostile_validation_record_is_one_line(array_file: Path, tmp_path: Path) -> None:
    run = vaekit.train(_config(epochs=1), tmp_path / "run", data=array_file).path
    config = json.loads((run / "config.json").read_text())
    config["data"]["n_val"] = "many"
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunFolderError, match=r"data\.n_val is 'many'"):
        runs.read_config(run)
