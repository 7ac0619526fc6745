"""``vaekit evaluate`` agrees with training: the same device by default, the same noise on every device,
and settings that would make its numbers mean something else refused before anything runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from vaekit import run as runs
from vaekit.cli import main
from vaekit.config import TrainConfig
from vaekit.eval import run as eval_run
from vaekit.eval.elbo import EVAL_SEED, evaluate_elbo
from vaekit.model import VAE, model_config

from .artifact_runs import make_run

QUICK = ["--dataset", "mnist", "--epochs", "1", "--quiet", "--no-artifacts"]


def test_evaluate_with_its_defaults_reproduces_the_test_loss_training_reported(tiny_data: Path, tmp_path: Path,
                                                                               monkeypatch, capsys) -> None:
    """Both commands without --device: the same device (auto) and so the same number, bit for bit."""
    run = tmp_path / "run"
    assert main(["train", *QUICK, "--data-dir", str(tiny_data), "--out", str(run)]) == 0
    devices: list[str] = []
    resolve = eval_run.resolve_device
    monkeypatch.setattr(eval_run, "resolve_device", lambda d: devices.append(d) or resolve(d))
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert devices == [TrainConfig().device]
    summary = runs.read_json(run / runs.SUMMARY)
    assert (result["test_loss"], result["test_recon"], result["test_kl"]) == (
        summary["test_loss"], summary["test_recon"], summary["test_kl"])


def test_the_evaluation_noise_is_drawn_from_a_cpu_generator_of_the_fixed_seed(monkeypatch) -> None:
    """The draws a CPU generator makes from the seed: on a GPU they are moved there, not drawn there."""
    model = VAE(model_config("mlp", zdim=3, hidden=[8], image_shape=(2, 2)))
    seen: list[torch.Tensor] = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x, eps: seen.append(eps) or forward(x, eps))
    evaluate_elbo(model, torch.randint(0, 256, (5, 4), dtype=torch.uint8), batch_size=2)
    assert torch.equal(torch.cat(seen), torch.randn((5, 3), generator=torch.Generator().manual_seed(EVAL_SEED)))


# ---------------------------------------------------------------------------------------------- settings refused


@pytest.mark.parametrize("flags,named", [
    (["--binarize", "dynamic"], "--binarize dynamic"),
    (["--binarize", "static"], "--binarize static"),
    (["--sigma", "0.3"], "drop --sigma"),
    (["--learn-sigma"], "drop --learn-sigma"),
    (["--sigma", "learned"], "drop --learn-sigma"),
])
def test_settings_the_discretized_logistic_would_mislabel_or_ignore_are_refused(flags: list[str], named: str,
                                                                                tmp_path: Path, capsys) -> None:
    code = main(["train", "--likelihood", "discretized-logistic", *flags, "--out", str(tmp_path / "run"), *QUICK])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and named in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous-bernoulli"])
@pytest.mark.parametrize("flags", [["--sigma", "2"], ["--learn-sigma"]])
def test_a_sigma_a_likelihood_has_no_use_for_is_refused(likelihood: str, flags: list[str], tmp_path: Path,
                                                        capsys) -> None:
    code = main(["train", "--likelihood", likelihood, *flags, "--out", str(tmp_path / "run"), *QUICK])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and f"--likelihood {likelihood} has no sigma" in line and f"drop {flags[0]}" in line
    assert not (tmp_path / "run").exists()


def test_evaluating_a_discretized_logistic_run_on_binarized_images_is_refused(tiny_data: Path, tmp_path: Path,
                                                                               capsys) -> None:
    run = make_run(tmp_path / "run", tiny_data, preset="mlp", hidden=[16], likelihood="discretized-logistic",
                   sigma=0.0625, learn_sigma=True)
    assert main(["evaluate", str(run), "--binarize", "dynamic", "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "without --binarize" in err
    assert main(["evaluate", str(run), "--json"]) == 0  # its own protocol is fine


# ---------------------------------------------------------------------------------------------- help that agrees


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


def _flag_help(text: str, flag: str) -> str:
    """The entry of ``flag`` in ``--help`` output (up to the next option), on one line."""
    entry = re.search(rf"^ {{2}}{flag}\b.*?(?=^ {{2}}-|\Z)", text, re.M | re.S)
    assert entry is not None, flag
    return " ".join(entry.group().split())


def test_the_train_help_names_every_dataset_and_what_each_flag_applies_to(capsys) -> None:
    from vaekit.data import DATASETS

    text = _help("train", capsys)
    dataset = _flag_help(text, "--dataset")
    assert all(name in dataset for name in DATASETS)
    assert "mlp preset" not in _flag_help(text, "--hidden") and "conv" in _flag_help(text, "--hidden")
    assert "mlp preset" not in _flag_help(text, "--activation") and "conv" in _flag_help(text, "--activation")
    for flag in ("--sigma", "--learn-sigma"):
        assert "gaussian only" in _flag_help(text, flag)
    assert "not with --binarize" in _flag_help(text, "--likelihood")


@pytest.mark.parametrize("command", ["evaluate", "plot", "explore"])
def test_the_data_dir_help_of_a_finished_run_covers_your_own_images(command: str, capsys) -> None:
    assert "your own images" in _flag_help(_help(command, capsys), "--data-dir")


def test_the_evaluate_device_defaults_to_trains(capsys) -> None:
    assert "auto (default, as vaekit train" in _flag_help(_help("evaluate", capsys), "--device")


def test_a_stored_discretized_logistic_run_that_recorded_an_unused_sigma_still_loads(tiny_data: Path,
                                                                                     tmp_path: Path) -> None:
    """Older runs could record --sigma or --learn-sigma beside the discretized logistic, which ignored them."""
    run = make_run(tmp_path / "run", tiny_data, preset="mlp", hidden=[16], likelihood="discretized-logistic",
                   sigma=0.0625, learn_sigma=True)
    stored = runs.read_json(run / runs.CONFIG)
    stored["train"].update(sigma=0.5, learn_sigma=True)
    runs.write_json(run / runs.CONFIG, stored)
    _, train, _ = runs.read_config(run)
    assert (train.likelihood, train.sigma, train.learn_sigma) == ("discretized-logistic", 1.0, False)
    assert main(["report", str(run)]) == 0
