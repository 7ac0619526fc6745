"""``vaekit score`` and ``Run.score``: per-image scores worst first, the AUROC by class, bounded memory."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from vaekit import run as runs
from vaekit.cli import main
from vaekit.data.tensors import as_rows, to_unit
from vaekit.eval.run import evaluate_run, load_run_data

from .artifact_runs import make_run
from .conftest import peak_allocations, write_dataset

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A finished run (random weights, zdim 3) on 200 training and 150 test images of its own folder."""
    return make_run(tmp_path / "run", write_dataset(tmp_path / "data", 200, 150), zdim=3)


def _code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _mann_whitney(rows: list[dict[str, str]], normal: set[int], column: str) -> float:
    """The AUROC by counting pairs: P(anomalous score > normal score) + P(tie) / 2, in plain Python."""
    bad = [float(r[column]) for r in rows if int(r["label"]) not in normal]
    good = [float(r[column]) for r in rows if int(r["label"]) in normal]
    wins = sum((b > g) + 0.5 * (b == g) for b in bad for g in good)
    return wins / (len(bad) * len(good))


def test_the_csv_has_one_finite_row_per_image_worst_first_and_agrees_with_evaluate(run_dir: Path, capsys) -> None:
    out = run_dir.parent / "scores.csv"
    assert main(["score", str(run_dir), "--split", "test", "--out", str(out)]) == 0
    rows = _rows(out)
    assert list(rows[0]) == ["name", "label", "neg_elbo_nats", "bits_per_dim"]
    assert sorted(r["name"] for r in rows) == sorted(f"test:{i}" for i in range(150))
    scores = [float(r["neg_elbo_nats"]) for r in rows]
    assert all(np.isfinite(scores)) and scores == sorted(scores, reverse=True)
    for r in rows:  # bits/dim is the same number over 784 pixels in bits
        assert float(r["bits_per_dim"]) == pytest.approx(float(r["neg_elbo_nats"]) / (784 * np.log(2)), rel=1e-5)
    labels = load_run_data(runs.load_run(run_dir)).test_labels
    assert all(int(r["label"]) == labels[int(r["name"][5:])] for r in rows)
    # one draw per image as vaekit evaluate makes (other draws): the mean is its test loss up to the draws' noise
    assert np.mean(scores) == pytest.approx(evaluate_run(run_dir, device="cpu", save=False)["test_loss"], rel=1e-2)
    assert main(["score", str(run_dir), "--split", "test", "--out", str(out), "--batch-size", "7", "--force",
                 "--no-figure"]) == 0
    again = {r["name"]: float(r["neg_elbo_nats"]) for r in _rows(out)}  # the same scores whatever the batch size
    assert again == pytest.approx({r["name"]: float(r["neg_elbo_nats"]) for r in rows}, rel=1e-6)
    assert (run_dir.parent / "scores_extremes.png").read_bytes()[:4] == b"\x89PNG"
    assert "bits/dim" in capsys.readouterr().out


def test_nll_scores_are_the_likelihood_estimators_and_lower_than_the_elbo(run_dir: Path) -> None:
    from vaekit.eval.likelihood import model_log_px

    run = runs.load_run(run_dir)
    table = run.score(split="test", nll=20, batch_size=150)
    x = as_rows(load_run_data(run).test_images)
    ref = -model_log_px(run.model, to_unit(x), 20, run.train_config.likelihood).log_px.numpy()
    np.testing.assert_allclose(table["nll"], ref, rtol=1e-6)
    assert table["nll"].mean() < run.score(split="test")["neg_elbo"].mean()


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST is not on this machine")
def test_the_auroc_of_a_held_out_fashion_class_is_well_above_chance_and_matches_the_csv(tmp_path: Path) -> None:
    from vaekit.data.idx import read_idx

    x, y = read_idx(FASHION / "train-images-idx3-ubyte.gz"), read_idx(FASHION / "train-labels-idx1-ubyte.gz")
    keep = np.flatnonzero(y != 8)[:1000]  # bags left out of training
    np.savez(tmp_path / "train.npz", images=x[keep], labels=y[keep])
    xt, yt = read_idx(FASHION / "t10k-images-idx3-ubyte.gz"), read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    np.savez(tmp_path / "test.npz", images=xt[:400], labels=yt[:400].astype(np.int64))
    assert main(["train", "--data", str(tmp_path / "train.npz"), "--out", str(tmp_path / "run"), "--model",
                 "pytorch-example", "--epochs", "2", "--quiet", "--no-artifacts", "--val-fraction", "0"]) == 0
    out = tmp_path / "scores.csv"
    assert main(["score", str(tmp_path / "run"), str(tmp_path / "test.npz"), "--out", str(out), "--no-figure",
                 "--normal", "0,1,2,3,4,5,6,7,9"]) == 0
    result = json.loads((tmp_path / "scores_auroc.json").read_text())
    assert result["anomalous"] == [8] and result["n_anomalous"] == int((yt[:400] == 8).sum())
    assert result["auroc"] > 0.65
    assert result["auroc"] == pytest.approx(_mann_whitney(_rows(out), {0, 1, 2, 3, 4, 5, 6, 7, 9}, "neg_elbo_nats"),
                                            abs=1e-9)


def test_scoring_ten_thousand_images_takes_no_more_memory_than_two_thousand(run_dir: Path) -> None:
    """Through the real reader: a .npy file of generated images, memory-mapped and read a batch at a time."""
    rng = np.random.default_rng(0)
    peaks = {}
    code = ("tracemalloc.stop()\nimport numpy as np\nrun = vaekit.load_run(sys.argv[1])\ntracemalloc.start()\n"
            "table = run.score(sys.argv[2], batch_size=500)\n"
            "assert len(table['name']) == int(sys.argv[3]) and np.isfinite(table['neg_elbo']).all()")
    for n in (2000, 10_000):
        path = run_dir.parent / f"images_{n}.npy"
        np.save(path, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        peaks[n] = peak_allocations(code, str(run_dir), str(path), str(n))
    # What grows is a name and two numbers per image (~100 bytes), not its 784 pixels (6 MB for 8,000 images)
    assert peaks[10_000] - peaks[2000] < 1_500_000, peaks


def test_the_python_api_returns_columns_in_input_order_and_the_auroc(run_dir: Path) -> None:
    run = runs.load_run(run_dir)
    table = run.score(split="test", normal=[0, 1, 2, 3, 4])
    labels = load_run_data(run).test_labels
    assert table["name"] == [f"test:{i}" for i in range(150)]
    assert np.array_equal(table["label"], labels) and table["neg_elbo"].shape == (150,)
    from sklearn.metrics import roc_auc_score

    assert table["auroc"] == pytest.approx(roc_auc_score(labels > 4, table["neg_elbo"]))
    images = load_run_data(run).test_images[:10]
    np.testing.assert_allclose(run.score(images)["neg_elbo"], table["neg_elbo"][:10], rtol=1e-6)


@pytest.mark.parametrize("argv, words", [
    (["--split", "test", "--normal", "0,42"], "'42' is not a class"),
    (["--split", "test", "--normal", "jumper"], "'jumper' is not a class"),
    (["--split", "test", "--normal", ",".join(map(str, range(10)))], "every class"),
    (["--split", "test", "--normal", ""], "names no class"),
    (["UNLABELLED", "--normal", "0"], "no labels"),
    (["UNLABELLED", "--split", "test"], "not both"),
    (["--split", "test", "--out-csv-is-a-png"], "must name a .csv"),
    (["--split", "test", "--existing"], "exists"),
])
def test_bad_flags_are_one_line_and_exit_2(run_dir: Path, argv: list[str], words: str, capsys) -> None:
    unlabelled = run_dir.parent / "unlabelled.npz"
    np.savez(unlabelled, images=np.zeros((3, 28, 28), np.uint8))
    out = run_dir.parent / "s.csv"
    if "--existing" in argv:
        out.write_text("keep me")
    if "--out-csv-is-a-png" in argv:
        out = run_dir.parent / "s.png"
    args = [str(unlabelled) if a == "UNLABELLED" else a for a in argv if a not in ("--existing", "--out-csv-is-a-png")]
    assert _code(["score", str(run_dir), *args, "--out", str(out), "--no-figure"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and words in errors[0], errors
    if "--existing" in argv:
        assert out.read_text() == "keep me"



def test_normal_classes_are_named_as_the_folders_name_them(run_dir: Path) -> None:
    from PIL import Image

    from .conftest import make_digits

    images, _ = make_digits(12, seed=5)
    for i, im in enumerate(images):
        folder = run_dir.parent / "photos" / ("bad" if i % 3 == 0 else "good")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(folder / f"{i}.png")
    out = run_dir.parent / "s.csv"
    assert main(["score", str(run_dir), str(run_dir.parent / "photos"), "--out", str(out), "--normal", "GOOD"]) == 0
    result = json.loads((run_dir.parent / "s_auroc.json").read_text())
    assert result["normal_names"] == ["good"] and result["anomalous_names"] == ["bad"]
    assert (result["n_normal"], result["n_anomalous"]) == (8, 4)
    assert result["auroc"] == pytest.approx(_mann_whitney(_rows(out), set(result["normal"]), "neg_elbo_nats"))
    assert all(r["name"].endswith(".png") for r in _rows(out))
