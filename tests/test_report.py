"""The run report: self-contained, faithful to the run folder, escaped, and linked to the explorer.

The pages are read with an HTML parser, as a browser reads them, and checked against the files of the run
folder they describe, so the tests hold whatever the markup looks like.
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
from pathlib import Path
from urllib.parse import unquote

import pytest

from vaekit import run as runs
from vaekit.artifacts import CARD, EXPLORER, FIGURES, REPORT, write_artifacts
from vaekit.artifacts.report import build_report, loss_curves_svg, write_report
from vaekit.cli import main
from vaekit.eval.run import NLL_KEYS, evaluate_run

from .artifact_runs import Html, make_run
from .conftest import hermetic_env

SECTIONS = ["Results", "Figures", "Model, data and protocol", "Metrics per epoch", "Configuration"]


@pytest.fixture(scope="module")
def report_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run with all its artifacts, as ``vaekit train`` leaves it."""
    out = make_run(tmp_path_factory.mktemp("report") / "run", tiny_data, epochs=3)
    with hermetic_env(tmp_path_factory.mktemp("cache")):
        write_artifacts(out)
    return out


@pytest.fixture
def run_copy(report_run: Path, tmp_path: Path) -> Path:
    """A copy of the finished run that a test may change."""
    return Path(shutil.copytree(report_run, tmp_path / "run"))


def _report(run_dir: Path) -> Html:
    return Html(build_report(run_dir))


def _likelihood_item(doc: Html) -> str:
    text = doc.text("Model, data and protocol")
    return text[text.index("Likelihood:"):].split(";")[0]


def _headline(doc: Html) -> dict[str, tuple[str, str]]:
    """The Results table: each number's value and how it was measured, by name."""
    (table,) = doc.tables["Results"]
    assert table[0] == ["number", "value", "how it was measured"]
    return {name: (value, protocol) for name, value, protocol in table[1:]}


def _summary_table(doc: Html) -> dict[str, str]:
    """The first table of the folded-away configuration: summary.json, key by key."""
    return {row[0]: row[1] for row in doc.tables["Configuration"][0] if len(row) == 2}


def test_report_is_self_contained_and_shows_the_run_folder(report_run: Path) -> None:
    doc = Html((report_run / REPORT).read_text(encoding="utf-8"))
    assert [s for s in doc.sections if s] == SECTIONS
    # every figure embedded byte for byte, in the stage's order, and nothing fetched from elsewhere
    images = doc.find("img")
    assert [i["alt"] for i in images] == list(FIGURES)
    for img in images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        assert base64.b64decode(img["src"][len(prefix):]) == (report_run / img["alt"]).read_bytes()
    links = [a.get("src") or a.get("href") for _, a in doc.elements if a.get("src") or a.get("href")]
    assert all(link.startswith("data:") or "://" not in link and not link.startswith("//") for link in links)
    # the headline numbers of summary.json first, with their protocol in words; every raw value folded away
    summary = runs.read_summary(report_run)
    assert _headline(doc)["test -ELBO"][0].startswith(f"{summary['test_loss']:.2f} nats per image")
    assert "one reparametrized sample per image" in _headline(doc)["test -ELBO"][1]
    results = _summary_table(doc)
    assert float(results["test_loss"]) == pytest.approx(summary["test_loss"], abs=1e-4)
    assert results["dataset"] == "mnist" and results["epochs"] == "3"
    table = doc.tables["Metrics per epoch"][0]
    header, rows = table[0], table[1:]
    assert [int(r[header.index("epoch")]) for r in rows] == [1, 2, 3]
    for row, ref in zip(rows, runs.read_metrics(report_run), strict=True):
        assert float(row[header.index("test_loss")]) == pytest.approx(ref["test_loss"], abs=1e-4)
    assert len(doc.find("polyline", "Figures")) == 2  # train and test
    assert _headline(doc)["-log p(x)"][0] == "absent: not estimated yet"
    assert f"vaekit evaluate {report_run} --nll" in doc.text("Results")
    assert "Adam, learning rate 0.0003, batch 128, 3 epochs" in doc.text("Model, data and protocol")
    # the explorer link leads to the page the stage wrote
    (link,) = [a for a in doc.find("a", "") if a.get("class") == "explorer"]
    assert (report_run / unquote(link["href"])).resolve() == (report_run / EXPLORER).resolve()


def test_the_raw_values_are_folded_away_below_the_numbers_and_figures(report_run: Path) -> None:
    """The page leads with the headline numbers and the figures; each raw key of config.json and summary.json
    appears once, inside the one <details> element at the end."""
    page = (report_run / REPORT).read_text(encoding="utf-8")
    order = [page.index(f"<h2>{s}</h2>") for s in SECTIONS]
    assert order == sorted(order) and page.index("<img") < page.index("<h2>Model, data and protocol</h2>")
    assert page.count("<details>") == 1 and page.index("<details>") > order[-1]
    folded = page[page.index("<details>"):page.index("</details>")]
    for key in ("eval_batch_size", "skip_first_decoder_activation", "binarize_seed", "n_params", "source"):
        assert f">{key}<" in folded and page.count(f">{key}<") == 1, key
    assert len(Html(page).find("details", "Configuration")) == 1


def test_log_likelihood_comes_from_the_evaluation_stored_in_the_summary(run_copy: Path) -> None:
    """``vaekit evaluate --nll`` merges its numbers into summary.json; the report shows exactly those."""
    with hermetic_env(run_copy.parent / "cache"):
        result = evaluate_run(run_copy, nll=True, samples=8, compile=False)
    doc = _report(run_copy)
    rows = _headline(doc)
    assert rows["-log p(x)"][0] == f"{result['nll']:.2f} \u00b1 {result['nll_stderr']:.2f} nats per image"
    assert "K = 8 samples per test image" in rows["-log p(x)"][1]
    assert rows["bits/dim"][0] == f"{result['bits_per_dim']:.4f} bits per dimension"
    assert "Not measured yet" not in doc.text("Results")
    section = doc.text("Results")
    raw = _summary_table(doc)
    assert float(raw["nll"]) == pytest.approx(result["nll"], abs=1e-4)
    assert {k.split(".")[0] for k in raw if k.split(".")[0] in NLL_KEYS} == {k for k in NLL_KEYS if k in result}

    # A file named evaluation.json is nothing of vaekit's: it changes nothing in the report.
    (run_copy / "evaluation.json").write_text(json.dumps({"nll": 1.5, "nll_stderr": 0.25, "bits_per_dim": 0.001}))
    assert _report(run_copy).text("Results") == section
    (run_copy / "evaluation.json").write_text("{not json")
    assert _report(run_copy).text("Results") == section


def test_an_infinite_nll_is_shown_as_such(run_copy: Path) -> None:
    summary = runs.read_summary(run_copy)
    runs.write_json(run_copy / runs.SUMMARY, {**summary, "nll": math.inf, "nll_stderr": None, "nll_samples": 10})
    section = _report(run_copy).text("Results")
    assert _headline(_report(run_copy))["-log p(x)"][0] == "inf nats per image" and "nan" not in section.lower()


@pytest.mark.parametrize("likelihood,sigma,learned,expected", [
    ("gaussian", 1.0, True, "Gaussian with a learned per-pixel sigma (from 1), constants included"),  # --sigma learned
    ("gaussian", 0.5, True, "Gaussian with a learned per-pixel sigma (from 0.5), constants included"),
    ("gaussian", 0.25, False, "Gaussian with sigma 0.25, constants included"),
    ("discretized-logistic", 0.0625, True,
     "discretized logistic over 256 levels with learned per-pixel scales (from 0.0625)"),
])
def test_the_likelihood_is_described_as_trained(tiny_data: Path, tmp_path: Path, likelihood: str, sigma: float,
                                                learned: bool, expected: str) -> None:
    run_dir = make_run(tmp_path / "run", tiny_data, likelihood=likelihood, sigma=sigma, learn_sigma=learned)
    assert _likelihood_item(_report(run_dir)) == f"Likelihood: {expected}"


def test_text_from_the_run_folder_is_escaped(run_copy: Path) -> None:
    summary = runs.read_summary(run_copy)
    summary["dataset"] = "<script>alert(1)</script>"
    summary["note & more"] = '"quoted" <b>'
    runs.write_json(run_copy / runs.SUMMARY, summary)
    doc = _report(run_copy)
    assert not doc.find("script") and not doc.find("b", "Configuration")  # no markup got in ...
    results = _summary_table(doc)  # ... and the text reads as written
    assert results["dataset"] == "<script>alert(1)</script>" and results["note & more"] == '"quoted" <b>'


def test_missing_explorer_is_explained_and_other_pngs_are_included(run_copy: Path) -> None:
    (run_copy / EXPLORER).unlink()
    (run_copy / "latent_grid.png").unlink()
    shutil.copy(run_copy / "samples.png", run_copy / "extra_figure.png")
    doc = _report(run_copy)
    assert "No explorer page yet" in doc.text("")
    assert [a["href"] for a in doc.find("a", "")] == [EXPLORER]  # where vaekit explore writes it
    assert [i["alt"] for i in doc.find("img")] == [*FIGURES[1:], "extra_figure.png"]


def test_cli_report_writes_through_the_stage_and_out_keeps_the_explorer_link(run_copy: Path, tmp_path: Path,
                                                                              capsys) -> None:
    (run_copy / REPORT).unlink()
    assert main(["report", str(run_copy)]) == 0
    assert capsys.readouterr().out.split() == [str(run_copy / REPORT), str(run_copy / CARD)]  # and the model card
    assert [s for s in Html((run_copy / REPORT).read_text()).sections if s] == SECTIONS
    out = tmp_path / "elsewhere" / "page.html"
    out.parent.mkdir()
    assert main(["report", str(run_copy), "--out", str(out)]) == 0
    (link,) = [a for a in Html(out.read_text()).find("a") if a.get("class") == "explorer"]
    assert (out.parent / unquote(link["href"])).resolve() == (run_copy / EXPLORER).resolve()


@pytest.mark.parametrize("damage,needle", [
    (None, "does not exist"),
    ("config.json", "config.json is not valid JSON"),
    ("model.safetensors", "model.safetensors is not a readable safetensors file"),
    ("metrics.csv", "metrics.csv is damaged"),
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
    one = Html(loss_curves_svg([{"epoch": 1, "train_loss": 200.0, "test_loss": 190.0}]))
    assert len(one.find("svg")) == 1 and len(one.find("circle")) == 2
    bad = Html(loss_curves_svg([{"epoch": 1, "train_loss": float("nan"), "test_loss": float("inf")}]))
    assert not bad.find("svg") and "No finite losses" in bad.text("")


def test_write_report_is_atomic_and_returns_the_path(run_copy: Path) -> None:
    before = set(os.listdir(run_copy))
    path = write_report(run_copy)
    assert path == run_copy / REPORT and set(os.listdir(run_copy)) == before  # replaced, nothing left behind
