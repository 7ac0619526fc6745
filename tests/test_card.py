"""The model card (the run folder's README.md): written by training with the run's real numbers, rewritten when
an evaluation adds numbers, readable by a model hub, and never written over a README.md that vaekit did not write.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import vaekit
from vaekit import run as runs
from vaekit.artifacts import CARD, write_artifacts
from vaekit.artifacts.card import HUB_DATASETS, MARK
from vaekit.cli import main
from vaekit.config import TrainConfig
from vaekit.data.registry import DATASETS, EMBEDDED_NAME
from vaekit.eval.run import evaluate_run

from .conftest import hermetic_env

USER_README = "# My experiment\n\nNotes that only I write.\n"


def front_matter(text: str) -> dict[str, str | list[str]]:
    """The YAML front matter of a card as a model hub reads it: ``key: value`` lines and ``- item`` lists."""
    lines = text.splitlines()
    assert lines[0] == "---", "the card must start with its front matter"
    end = lines.index("---", 1)
    out: dict[str, str | list[str]] = {}
    key = None
    for line in lines[1:end]:
        if line.startswith("- "):
            assert isinstance(out[key], list), line
            out[key].append(line[2:])  # type: ignore[union-attr]
            continue
        key, sep, value = line.partition(": ") if ": " in line else line.partition(":")
        assert sep and key and key == key.strip() and " " not in key, line
        out[key] = value if value else []
    return out


@pytest.fixture(scope="module")
def trained(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch run trained with its artifacts, as ``vaekit train`` leaves it."""
    out = tmp_path_factory.mktemp("card") / "run"
    config = TrainConfig(dataset="mnist", data_dir=str(tiny_data), epochs=1, device="cpu", progress=False)
    with hermetic_env(tmp_path_factory.mktemp("cache")):
        vaekit.train(config, out)
    return out


@pytest.fixture
def run_copy(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _card(run_dir: Path) -> str:
    return (run_dir / CARD).read_text(encoding="utf-8")


def _row(card: str, name: str) -> list[str]:
    """The cells of the Results table's row ``name``."""
    (line,) = [line for line in card.splitlines() if line.startswith(f"| {name} |")]
    return [cell.strip() for cell in line.strip("|").split(" | ")]


def test_training_writes_the_card_with_the_runs_own_numbers(trained: Path) -> None:
    card, summary = _card(trained), runs.read_summary(trained)
    data = runs.read_config(trained)[2]
    meta = front_matter(card)
    assert meta["library_name"] == "vaekit" and "vae" in meta["tags"]
    assert meta["datasets"] == [HUB_DATASETS["mnist"]] and meta["metrics"] == ["negative-elbo"]
    assert set(HUB_DATASETS) <= {*DATASETS, EMBEDDED_NAME}  # hub names only for datasets vaekit knows
    assert MARK in card
    name, value, protocol = _row(card, "test -ELBO")
    assert value.startswith(f"{summary['test_loss']:.2f} nats per image")
    assert f"KL {summary['test_kl']:.2f}" in value and "one reparametrized sample" in protocol
    assert f"{summary['n_params']:,}" in card and f"{data['n_train']:,} training images" in card
    assert f"{data['n_test']:,} test images" in card and "1 epoch," in card
    # the log-likelihood is said to be absent, with the command that adds it
    assert _row(card, "-log p(x)")[1] == "absent: not estimated yet"
    assert _row(card, "bits/dim")[1] == "absent: not estimated yet"
    assert "`vaekit evaluate run --nll`" in card
    # how to load and use it, naming the folder
    assert 'vaekit.load_model("run")' in card and 'vaekit.load_run("run")' in card
    for command in ("sample", "encode", "reconstruct", "score", "interpolate", "export", "explore"):
        assert f"vaekit {command} run " in card, command
    assert "![samples.png](samples.png)" in card  # the figures the folder holds, which a hub shows


def test_the_cards_python_example_runs_as_printed(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From the folder that holds the run, the card's example loads it and decodes prior samples."""
    card = _card(trained)
    code = card[card.index("```python\n") + len("```python\n"):]
    code = code[:code.index("```")]
    monkeypatch.chdir(trained.parent)
    scope: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the card's own example
    assert tuple(scope["images"].shape) == (16, 784) and scope["run"].summary == runs.read_summary(trained)


def test_evaluate_nll_rewrites_the_card_with_its_numbers(run_copy: Path, capsys) -> None:
    with hermetic_env(run_copy.parent / "cache"):
        result = evaluate_run(run_copy, nll=True, samples=8, compile=False)
    card = _card(run_copy)
    value, protocol = _row(card, "-log p(x)")[1:]
    assert value == f"{result['nll']:.2f} \u00b1 {result['nll_stderr']:.2f} nats per image"
    assert "K = 8 samples per test image" in protocol and "standard error" in protocol
    assert _row(card, "bits/dim")[1] == f"{result['bits_per_dim']:.4f} bits per dimension"
    assert "absent" not in card and "Not measured yet" not in card
    assert front_matter(card)["metrics"] == ["negative-elbo", "nll", "bits-per-dim"]
    err = capsys.readouterr().err
    assert "model card" not in err and "not stored" not in err


def test_a_readme_vaekit_did_not_write_is_never_replaced(run_copy: Path, capsys) -> None:
    readme = run_copy / CARD
    readme.write_text(USER_README)
    assert write_artifacts(run_copy, which=("card",)) == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was not written by vaekit" in err[0] and str(readme) in err[0]
    with hermetic_env(run_copy.parent / "cache"):
        evaluate_run(run_copy, nll=True, samples=2, compile=False)
    assert main(["report", str(run_copy)]) == 0
    assert readme.read_text() == USER_README
    # a card whose mark the user deleted to keep their edits is theirs now
    edited = "\n".join(line for line in _card_of(run_copy).splitlines() if MARK not in line)
    readme.write_text(edited)
    assert write_artifacts(run_copy, which=("card",)) == [] and readme.read_text() == edited


def _card_of(run_dir: Path) -> str:
    """The card vaekit would write for ``run_dir`` (built, not written)."""
    from vaekit.artifacts.card import RunRecord, build_card

    return build_card(RunRecord.read(run_dir))


def test_training_again_with_force_keeps_the_users_readme(run_copy: Path, tiny_data: Path) -> None:
    (run_copy / CARD).write_text(USER_README)
    config = TrainConfig(dataset="mnist", data_dir=str(tiny_data), epochs=1, device="cpu", progress=False,
                         artifacts=False)
    with hermetic_env(run_copy.parent / "cache"):
        vaekit.train(config, run_copy, force=True)
    assert (run_copy / CARD).read_text() == USER_README


def test_text_from_the_run_folder_cannot_add_markup(run_copy: Path) -> None:
    model, train, data = runs.read_config(run_copy)
    data["dataset"] = "<img src=x onerror=alert(1)> | [link](http://example.com)"
    runs.write_config(run_copy, model, train, data)
    card = _card_of(run_copy)
    assert "<img" not in card and "&lt;img" in card  # shown as text, not an element ...
    assert "[link](" not in card and "\\[link\\](" in card  # ... and no link either
    assert "datasets:" not in card  # an unknown dataset names no hub dataset
    intro = next(line for line in card.splitlines() if line.startswith("A variational"))
    assert intro.count("|") == intro.count("\\|") == 1
