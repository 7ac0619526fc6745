"""The run report: written by training, self-contained, escaped, and showing the log-likelihood when present."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import vaekit
from vaekit.cli import main
from vaekit.config import TrainConfig
from vaekit.report import build_report, loss_curves_svg, write_report
from vaekit.viz import FIGURES

from .conftest import hermetic_env


@pytest.fixture(scope="module")
def report_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    with hermetic_env(tmp_path_factory.mktemp("cache")):
        vaekit.train(TrainConfig(dataset="mnist", data_dir=str(tiny_data), epochs=2, device="cpu", progress=False), out)
    return out


@pytest.fixture
def run_copy(report_run: Path, tmp_path: Path) -> Path:
    """A copy of the trained run that a test may change."""
    return Path(shutil.copytree(report_run, tmp_path / "run"))


def test_training_writes_a_self_contained_report(report_run: Path) -> None:
    text = (report_run / "report.html").read_text()
    assert (report_run / "explorer.html").is_file()
    assert '<a class="explorer" href="explorer.html">' in text
    for heading in ("Results", "Log-likelihood", "Data and protocol", "Metrics per epoch", "Loss curves", "Figures",
                    "Configuration"):
        assert f"<h2>{heading}</h2>" in text, heading
    # every figure embedded, nothing fetched from elsewhere
    assert text.count('src="data:image/png;base64,') == len(FIGURES)
    assert not re.search(r'(src|href)="(https?:|//|file:)', text)
    # one metrics row per epoch, and the curves
    rows = re.search(r'<table class="metrics">.*?</table>', text, re.S).group(0)
    assert rows.count("<tr>") == 1 + 2
    assert "<svg" in text and text.count("<polyline") == 2
    summary = json.loads((report_run / "summary.json").read_text())
    assert f"{summary['test_loss']:.4f}" in text
    assert "Not evaluated yet" in text
    assert "Adam, learning rate 0.0003, batch 128, 2 epochs" in text


def test_log_likelihood_is_shown_from_the_summary_or_evaluation_json(run_copy: Path) -> None:
    summary = json.loads((run_copy / "summary.json").read_text())
    summary.update(nll=95.25, nll_stderr=0.125, bits_per_dim=0.1753, nll_samples=5000)
    (run_copy / "summary.json").write_text(json.dumps(summary))
    text = build_report(run_copy)
    assert "log p(x) \u2248 -95.25 \u00b1 0.12 nats per test image (0.1753 bits per dimension)" in text
    assert "5,000 samples per image" in text and "Not evaluated yet" not in text

    (run_copy / "evaluation.json").write_text(json.dumps({"nll": 94.5, "iwae_k": 5000, "kl_per_dim": [2.5, 0.125],
                                                         "nll_protocol": {"binarize": "static"}}))
    text = build_report(run_copy)
    assert "-94.50" in text and "iwae_k" in text
    section = text.split("<h2>Log-likelihood</h2>")[1].split("<h2>")[0]
    assert "2.5000, 0.1250" in section and "nll_protocol.binarize" in section and "static" in section

    (run_copy / "evaluation.json").write_text("{not json")
    text = build_report(run_copy)  # a broken optional file is a note, not a failure
    assert "evaluation.json is not valid JSON" in text and "-95.25" in text


def test_text_from_the_run_folder_is_escaped(run_copy: Path) -> None:
    summary = json.loads((run_copy / "summary.json").read_text())
    summary["dataset"] = "<script>alert(1)</script>"
    summary["note & more"] = '"quoted" <b>'
    (run_copy / "summary.json").write_text(json.dumps(summary))
    text = build_report(run_copy)
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "note &amp; more" in text and "&quot;quoted&quot; &lt;b&gt;" in text


def test_missing_explorer_is_explained_and_other_pngs_are_included(run_copy: Path) -> None:
    (run_copy / "explorer.html").unlink()
    (run_copy / "latent_grid.png").unlink()
    shutil.copy(run_copy / "samples.png", run_copy / "extra_figure.png")
    text = build_report(run_copy)
    assert "No explorer page yet" in text and 'href="explorer.html"' in text
    assert text.count('src="data:image/png;base64,') == len(FIGURES)  # one fewer standard, one extra
    assert "extra_figure.png" in text


def test_cli_report(run_copy: Path, tmp_path: Path, capsys) -> None:
    (run_copy / "report.html").unlink()
    assert main(["report", str(run_copy)]) == 0
    assert capsys.readouterr().out.strip() == str(run_copy / "report.html")
    assert (run_copy / "report.html").stat().st_size > 10_000
    out = tmp_path / "elsewhere.html"
    assert main(["report", str(run_copy), "--out", str(out)]) == 0
    assert out.is_file()


@pytest.mark.parametrize("damage,needle", [
    (None, "does not exist"),
    ("config.json", "config.json is not valid JSON"),
    ("model.safetensors", "model.safetensors is not a readable safetensors file"),
    ("metrics.csv", "metrics.csv is corrupt"),
])
def test_cli_report_bad_run_folders_are_one_line(run_copy: Path, capsys, damage: str | None, needle: str) -> None:
    target = run_copy
    if damage is None:
        target = run_copy / "missing"
    else:
        (run_copy / damage).write_text("epoch,train_loss\nx,y\n" if damage.endswith(".csv") else "{garbage")
    assert main(["report", str(target)]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_loss_curves_handle_one_epoch_and_non_finite_values() -> None:
    one = loss_curves_svg([{"epoch": 1, "train_loss": 200.0, "test_loss": 190.0}])
    assert one.startswith("<svg") and one.count("<circle") == 2
    bad = loss_curves_svg([{"epoch": 1, "train_loss": float("nan"), "test_loss": float("inf")}])
    assert "No finite losses" in bad


def test_write_report_is_atomic_and_returns_the_path(run_copy: Path) -> None:
    path = write_report(run_copy)
    assert path == run_copy / "report.html"
    assert not list(run_copy.glob(".report.html.tmp-*"))
