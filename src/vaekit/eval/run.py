"""Evaluate a run folder: rebuild its test data as training saw it, the test ELBO and optionally the NLL."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from vaekit import run as runs
from vaekit.config import BINARIZE, EIGHT_BIT_LIKELIHOODS, ConfigError
from vaekit.data.binarize import bits_per_dim_scale, protocol
from vaekit.data.tensors import as_rows
from vaekit.devices import resolve_device
from vaekit.errors import VaekitError
from vaekit.eval.elbo import evaluate_elbo
from vaekit.run import load_run
from vaekit.run.dataset import load_run_data

# The keys an importance-sampled evaluation adds to the evaluate output and merges into summary.json.
NLL_KEYS = ("nll", "nll_stderr", "nll_test_set_stderr", "bits_per_dim", "nll_samples", "nll_neg_elbo", "active_units",
            "kl_per_dim", "nll_protocol")


def evaluate_run(path: str | os.PathLike, data_dir: str | os.PathLike | None = None, device: str = "auto", *,
                 nll: bool = False, samples: int = 5000, binarize: str | None = None, save: bool = True,
                 progress: bool = False, compile: bool | None = None, data: Any = None) -> dict[str, Any]:  # noqa: A002
    """Test-set metrics of a run: the keys of ``summary.json``'s ``test_*`` entries and more.

    ``protocol`` says which data and likelihood the numbers belong to. With ``nll`` it adds the
    importance-sampled test log-likelihood with K = ``samples`` draws per image (see
    :mod:`vaekit.eval.likelihood`): ``nll`` (nats per image), ``nll_stderr``, ``bits_per_dim``,
    ``nll_samples``, ``active_units``, ``kl_per_dim`` and more (``NLL_KEYS``), and, with ``save``, merges
    them into the run's ``summary.json``. ``binarize`` evaluates under another protocol than the run's.
    ``compile`` is :func:`vaekit.eval.likelihood.estimate_log_px`'s (``None``: decided by the estimate's size).
    """
    if binarize is not None and binarize not in BINARIZE:
        raise ConfigError(f"unknown binarize mode {binarize!r}; choose one of {', '.join(BINARIZE)}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"--samples must be a positive integer (got {samples!r})")
    run = load_run(path, resolve_device(device))
    cfg = run.train_config
    mode = binarize or cfg.binarize
    if mode != "none" and cfg.likelihood in EIGHT_BIT_LIKELIHOODS:
        raise ConfigError(f"--binarize {mode} evaluates binary pixels, and this run's {cfg.likelihood} models "
                          "8-bit ones (its bits/dim would not be 8-bit bits/dim): evaluate it without --binarize")
    splits = load_run_data(run, data_dir, mode, data)
    x_test = as_rows(splits.test_images)
    metrics = evaluate_elbo(run.model, x_test, cfg.likelihood, cfg.sigma, cfg.eval_batch_size)
    proto = protocol(mode, cfg.binarize_seed, cfg.likelihood, cfg.learn_sigma, cfg.sigma, run.model.config.head,
                     run.model.config.mixtures)
    result = {**metrics, "dataset": splits.name, "n_test": len(x_test),
              "n_params": sum(p.numel() for p in run.model.parameters()),
              "epochs": run.summary.get("epochs", len(run.metrics)), "protocol": proto}
    if not nll:
        return result
    from vaekit.eval.likelihood import NLL_SEED, latent_statistics, model_log_px

    est = model_log_px(run.model, x_test, samples, cfg.likelihood, cfg.sigma, progress=progress,
                       compile=compile).summary()
    stats = latent_statistics(run.model, x_test, cfg.eval_batch_size)
    extra = {
        "nll": est["nll"], "nll_stderr": est["nll_stderr"], "nll_test_set_stderr": est["nll_test_set_stderr"],
        "bits_per_dim": est["bits_per_dim"], "nll_samples": samples, "nll_neg_elbo": est["neg_elbo"],
        "active_units": stats["active_units"], "kl_per_dim": stats["kl_per_dim"],
        "nll_protocol": {**proto, "samples": samples, "draw_seed": NLL_SEED, "dataset": splits.name,
                         "n_test": len(x_test), "bits_per_dim": bits_per_dim_scale(mode, cfg.likelihood)},
    }
    result.update(extra)
    if save:
        _store(Path(path), extra)
    return result


def _store(run_dir: Path, extra: dict[str, Any]) -> None:
    """Merge an evaluation into ``summary.json`` (atomically, under the run's lock) and rewrite the run's model
    card with it, so the README.md beside the weights shows the new numbers; a failure is a warning."""
    try:
        with runs.RunLock(run_dir):
            path = run_dir / runs.SUMMARY
            summary = runs.read_json(path) if path.exists() else {}
            runs.write_json(path, {**(summary if isinstance(summary, dict) else {}), **extra})
            _refresh_card(run_dir)
    except VaekitError as e:
        _warn(f"the evaluation was not stored in {run_dir / runs.SUMMARY}", e)


def _refresh_card(run_dir: Path) -> None:
    """The model card rewritten with the numbers just stored (only where vaekit wrote one)."""
    from vaekit.artifacts.card import refresh_card

    try:
        refresh_card(run_dir)
    except VaekitError as e:
        _warn(f"the model card in {run_dir} was not updated", e)


def _warn(what: str, error: Exception) -> None:
    message = " ".join(str(error).split())
    print(f"vaekit: warning: {what}: {message}", file=sys.stderr, flush=True)
