"""``vaekit compare``: real trained runs side by side, seed groups, protocols that must not rank together.

The runs are trained once for the module by ``vaekit train`` itself (tiny data, two epochs): a seed group of
three, one run that differs from its seed 0 in zdim only (with its figures), and a binarized and an 8-bit run.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vaekit.cli import main

from .artifact_runs import Html
from .conftest import hermetic_env
from .test_explorer_browser import browser  # noqa: F401 - the shared Chromium fixture

TRAIN = ["--epochs", "2", "--batch-size", "64", "--val-fraction", "0.2", "--quiet"]


@pytest.fixture(scope="module")
def runs(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``grey/seed-{0,1,2}`` (a seed group), ``zdim4`` (with figures), ``binarized`` and ``eight_bit``."""
    root = tmp_path_factory.mktemp("compare")
    jobs = {f"grey/seed-{s}": ["--seed", str(s), "--no-artifacts"] for s in range(3)}
    jobs["zdim4"] = ["--zdim", "4"]
    jobs["binarized"] = ["--binarize", "dynamic", "--no-artifacts"]
    jobs["eight_bit"] = ["--likelihood", "discretized-logistic", "--no-artifacts"]
    with hermetic_env(tmp_path_factory.mktemp("cache")):
        for name, flags in jobs.items():
            assert main(["train", "--data-dir", str(tiny_data), "--out", str(root / name), *TRAIN, *flags]) == 0
    return root


def _compare(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["compare", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys: pytest.CaptureFixture[str], *paths: Path) -> dict[str, Any]:
    code, out, _ = _compare(capsys, *paths, "--json")
    assert code == 0
    return json.loads(out)


def test_only_the_settings_that_differ_are_shown(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _json(capsys, runs / "grey" / "seed-0", runs / "zdim4")
    assert result["settings_that_differ"] == ["model.zdim"]
    assert [e["settings"] for e in result["entries"]] == [{"model.zdim": 2}, {"model.zdim": 4}]
    code, out, _ = _compare(capsys, runs / "grey" / "seed-0", runs / "zdim4")
    head = out.splitlines()[0].split()
    assert code == 0 and "model.zdim" in head
    assert not {"train.lr", "train.epochs", "train.seed", "model.activation", "train.data_dir"} & set(head)


def test_protocols_that_differ_are_never_ranked_together(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _json(capsys, runs / "binarized", runs / "eight_bit", runs / "grey" / "seed-0", runs / "zdim4")
    by_name = {Path(e["name"]).name: e for e in result["entries"]}
    protocols = {name: e["protocol"] for name, e in by_name.items()}
    assert len(result["protocols"]) == 3 and protocols["seed-0"] == protocols["zdim4"]
    assert len({protocols["binarized"], protocols["eight_bit"], protocols["zdim4"]}) == 3
    for alone in ("binarized", "eight_bit"):  # each alone in its protocol: nothing to rank it against
        assert not any(n["best_in_protocol"] for n in by_name[alone]["numbers"].values())
    losses = {n: by_name[n]["numbers"]["test_loss"]["mean"] for n in ("seed-0", "zdim4")}
    best = min(losses, key=losses.get)
    assert by_name[best]["numbers"]["test_loss"]["best_in_protocol"]
    code, out, _ = _compare(capsys, runs / "binarized", runs / "eight_bit")
    rows = [line for line in out.splitlines() if line.startswith(str(runs))]
    assert code == 0 and len(rows) == 2 and not any("*" in row for row in rows)
    assert sum("grouped by protocol" in line and "not comparable" in line for line in out.splitlines()) == 1


def test_a_seed_group_is_the_mean_and_standard_error_of_its_runs(runs: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (entry,) = _json(capsys, runs / "grey")["entries"]
    assert entry["kind"] == "seed group" and len(entry["runs"]) == 3
    summaries = [json.loads((runs / "grey" / f"seed-{s}" / "summary.json").read_text()) for s in range(3)]
    for key in ("test_loss", "best_val_loss", "train_seconds"):
        values = np.array([s[key] for s in summaries])
        got = entry["numbers"][key]
        assert got["values"] == values.tolist()
        assert got["mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert got["stderr"] == pytest.approx(values.std(ddof=1) / np.sqrt(3), rel=1e-12)
    assert len(set(entry["numbers"]["test_loss"]["values"])) == 3  # three seeds, three different runs


def test_a_broken_run_among_good_ones_is_one_warning(runs: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("seed-0", "seed-1"):
        shutil.copytree(runs / "grey" / name, tmp_path / "group" / name)
    broken = tmp_path / "group" / "seed-2"
    broken.mkdir()
    (broken / "config.json").write_text('{"format": 1, "model": [')
    (tmp_path / "group" / "loop").symlink_to("loop")  # a link to itself beside the runs is passed over
    code, out, err = _compare(capsys, tmp_path / "group")
    assert code == 0 and "(2 seeds)" in out
    assert len(err.splitlines()) == 1 and "warning" in err and str(broken) in err


def test_nothing_to_compare_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    for target in (tmp_path / "empty", tmp_path / "missing"):
        code, out, err = _compare(capsys, target)
        assert code == 2 and out == "" and len(err.splitlines()) == 1 and str(target) in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{")
    code, _, err = _compare(capsys, broken)
    assert code == 2 and len(err.splitlines()) == 1 and "nothing to compare" in err


def test_the_page_is_not_overwritten_without_force(runs: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "compare.html"
    out.write_text("mine")
    code, _, err = _compare(capsys, runs / "zdim4", "--out", out)
    assert code == 2 and "--force" in err and out.read_text() == "mine"
    code, _, _ = _compare(capsys, runs / "zdim4", "--out", out, "--force")
    assert code == 0 and Html(out.read_text()).title == "vaekit comparison"


def test_the_page_loads_and_draws_a_curve_per_run(runs: Path, tmp_path: Path, browser: Any,  # noqa: F811
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "compare.html"
    code, _, _ = _compare(capsys, runs / "grey", runs / "zdim4", runs / "binarized", runs / "eight_bit", "--out", out)
    assert code == 0
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.route("**/*", lambda route: route.abort() if not route.request.url.startswith(("file:", "data:"))
               else route.continue_())
    page.goto(out.resolve().as_uri())
    assert errors == []
    assert page.locator("polyline.curve").count() == 6  # three seeds and three runs
    assert page.locator("line.errorbar").count() >= 1  # the seed group's standard error
    assert page.locator("tr.protocol").count() == 3
    figures = page.evaluate("[...document.querySelectorAll('.figs img')].map(i => i.naturalWidth)")
    assert figures and all(w > 0 for w in figures)  # zdim4's figures, decoded from their data URIs
    page.close()


def test_log_likelihoods_at_different_k_are_not_ranked(runs: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from vaekit.eval.run import evaluate_run

    for name, k in (("seed-0", 4), ("zdim4", 8)):
        target = shutil.copytree(runs / "grey" / name if name == "seed-0" else runs / name, tmp_path / name)
        evaluate_run(target, device="cpu", nll=True, samples=k)
    entries = _json(capsys, tmp_path / "seed-0", tmp_path / "zdim4")["entries"]
    assert [e["nll_samples"] for e in entries] == [4, 8]
    assert not any(e["numbers"][key]["best_in_protocol"] for e in entries for key in ("nll", "bits_per_dim"))
    assert sum(e["numbers"]["test_loss"]["best_in_protocol"] for e in entries) == 1  # the same protocol otherwise


def test_names_from_run_folders_cannot_inject_markup(runs: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    hostile = shutil.copytree(runs / "zdim4", tmp_path / "<img src=x onerror=alert(1)>")
    out = tmp_path / "compare.html"
    code, _, _ = _compare(capsys, hostile, runs / "grey" / "seed-0", "--out", out)
    page = out.read_text()
    assert code == 0 and "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_seed_folders_that_differ_in_more_than_the_seed_are_not_averaged(runs: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(runs / "grey" / "seed-0", tmp_path / "mixed" / "seed-0")
    shutil.copytree(runs / "zdim4", tmp_path / "mixed" / "seed-1")
    code, out, err = _compare(capsys, tmp_path / "mixed", "--json")
    entries = json.loads(out)["entries"]
    assert code == 0 and [e["kind"] for e in entries] == ["run", "run"]
    assert len(err.splitlines()) == 1 and "model.zdim" in err


def _seed_group(runs: Path, folder: Path, *seeds: int) -> Path:
    for s in seeds:
        shutil.copytree(runs / "grey" / f"seed-{s}", folder / f"seed-{s}")
    return folder


def test_an_out_that_is_not_a_regular_file_is_never_replaced(runs: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "link").symlink_to(fifo)
    specials = [fifo, tmp_path / "link"]
    if os.geteuid() == 0:  # a copy of /dev/null, which --force must not turn into a file
        os.mknod(tmp_path / "nulldev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        specials.append(tmp_path / "nulldev")
    for out in specials:
        for force in ((), ("--force",)):
            code, stdout, err = _compare(capsys, runs / "zdim4", "--out", out, *force)
            assert code == 2 and stdout == "" and len(err.splitlines()) == 1 and "not a regular file" in err
    assert stat.S_ISFIFO(fifo.stat().st_mode) and (tmp_path / "link").is_symlink()
    if os.geteuid() == 0:
        assert stat.S_ISCHR((tmp_path / "nulldev").stat().st_mode)


def test_out_never_replaces_a_file_of_a_run(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = shutil.copytree(runs / "zdim4", tmp_path / "run")
    group = _seed_group(runs, tmp_path / "group", 0, 1)
    other = shutil.copytree(runs / "binarized", tmp_path / "other")  # a run not named on the command line
    (run / "notes").mkdir()
    (run / "notes" / "mine.txt").write_text("mine")
    targets = [(run, run / "config.json"), (group, group / "seed-1" / "summary.json"), (run, other / "metrics.csv"),
               (run, run / "notes" / "mine.txt")]
    before = {out: out.read_bytes() for _, out in targets}
    for arg, out in targets:
        code, stdout, err = _compare(capsys, arg, "--out", out, "--force")
        assert code == 2 and stdout == "" and len(err.splitlines()) == 1 and "in the run folder" in err
    assert {out: out.read_bytes() for _, out in targets} == before
    code, _, _ = _compare(capsys, run, "--out", run / "compare.html")  # a new file beside a run's own is fine
    assert code == 0 and Html((run / "compare.html").read_text()).title == "vaekit comparison"


def test_out_never_replaces_the_record_of_a_seed_group_or_a_sweep(runs: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    group = _seed_group(runs, tmp_path / "group", 0, 1)
    (group / "summary.json").write_text("{}")
    (group / "seeds.json").write_text("{}")
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    for name in ("sweep.json", "best.json", "study.db"):
        (sweep / name).write_text("kept")
    targets = [group / "summary.json", group / "seeds.json", sweep / "sweep.json", sweep / "best.json",
               sweep / "study.db"]
    for out in targets:
        code, stdout, err = _compare(capsys, group, "--out", out, "--force")
        assert code == 2 and len(err.splitlines()) == 1 and "is the record of the" in err, err
    assert [p.read_text() for p in targets] == ["{}", "{}", "kept", "kept", "kept"]


def test_two_seed_folders_with_the_same_seed_are_not_a_seed_group(runs: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    group = _seed_group(runs, tmp_path / "group", 0, 1, 2)
    shutil.copytree(group / "seed-0", group / "seed-07")  # a copy: it records seed 0 too
    code, out, err = _compare(capsys, group, "--json")
    entries = json.loads(out)["entries"]
    assert code == 0 and [e["kind"] for e in entries] == ["run"] * 4
    assert len(err.splitlines()) == 1 and "seed-07" in err and "seed-0 " in err and "train.seed 0" in err


def test_a_seed_left_out_or_unfinished_is_one_warning_each(runs: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    group = _seed_group(runs, tmp_path / "group", 0, 2)
    (group / "seed-1").mkdir()  # an empty seed folder: no run in it
    (group / "seed-2" / "summary.json").unlink()  # a run whose training did not finish
    code, out, err = _compare(capsys, group)
    assert code == 0 and "(2 seeds)" in out
    lines = err.splitlines()
    assert len(lines) == 2 and all("warning" in line for line in lines)
    assert str(group / "seed-1") in lines[0] and "config.json" in lines[0]
    assert str(group / "seed-2") in lines[1] and "summary.json" in lines[1] and "--resume" in lines[1]
    (entry,) = _json(capsys, group)["entries"]
    assert "test_loss" not in entry["numbers"] and "train_seconds" in entry["numbers"]
    shutil.copytree(group / "seed-0", group / "seed-3")  # now shown run by run: the empty seed-1 is still said
    code, out, err = _compare(capsys, group)
    assert code == 0 and "shown run by run" in err and str(group / "seed-1") in err


def test_where_the_data_is_is_no_setting_but_what_it_is_is(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from .conftest import make_digits

    images = make_digits(300, seed=5)[0]
    for name, pixels in (("a", images), ("b", images), ("c", images[::-1].copy())):  # c: other images, same name
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "digits.npy", pixels)
    for run, data in (("here", "a"), ("there", "b"), ("other", "c")):
        args = ["--data", str(tmp_path / data / "digits.npy"), "--out", str(tmp_path / run), "--no-artifacts", *TRAIN]
        assert main(["train", *args, "--epochs", "1"]) == 0
    same = _json(capsys, tmp_path / "here", tmp_path / "there")
    assert same["settings_that_differ"] == [] and len(same["protocols"]) == 1  # one test set, ranked together
    differ = _json(capsys, tmp_path / "here", tmp_path / "other")["settings_that_differ"]
    assert set(differ) == {"data.own.digest", "data.own.test_indices_sha256"}  # what the images are, not where
    assert len(_json(capsys, tmp_path / "here", tmp_path / "other")["protocols"]) == 2


def test_each_figure_left_out_of_the_page_is_one_warning(runs: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    run = shutil.copytree(runs / "zdim4", tmp_path / "run")
    (run / "samples.png").write_text("not an image")
    (run / "latent_grid.png").unlink()
    os.mkfifo(run / "latent_grid.png")
    (run / "reconstructions.png").unlink()
    (run / "reconstructions.png").symlink_to(tmp_path / "gone.png")
    (run / "latent_scatter.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(5 * 2**20))
    code, _, err = _compare(capsys, run, "--out", tmp_path / "compare.html")
    lines = err.splitlines()
    assert code == 0 and len(lines) == 4 and all("warning" in line and "left out" in line for line in lines)
    for name in ("samples.png", "latent_grid.png", "reconstructions.png", "latent_scatter.png"):
        assert sum(str(run / name) in line for line in lines) == 1
