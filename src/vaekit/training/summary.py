"""The end of a run: its weights, metrics.csv and summary.json, then its artifacts (figures, explorer, report).

``summary.json`` holds the run's final numbers and how they were measured (the data protocol, the metric).
With a validation split the test set is evaluated here, once, on the final weights: its numbers go into the
summary and the last row of metrics.csv, and no choice made during training has seen them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from vaekit import run as runs
from vaekit.config import TrainConfig
from vaekit.data import Splits
from vaekit.data.binarize import describe, protocol
from vaekit.eval.elbo import evaluate_elbo
from vaekit.model import VAE, n_params
from vaekit.training.callbacks import log
from vaekit.training.checkpoint import TrainState
from vaekit.training.memory import release_free_memory
from vaekit.training.trainer import Trainer


def finish(t: Trainer, data_info: dict[str, Any], test_labels: np.ndarray) -> None:
    """Weights, metrics and summary of the finished run, then its artifacts (rank 0 only)."""
    compiled = t.step.compiled
    prec_name = t.step.prec.name
    n_val = None if t.data.x_val is None else len(t.data.x_val)
    if t.ctx.is_main and n_val is not None:
        final_test(t)
    test_images = t.data.x_test.cpu().numpy() if t.ctx.is_main else None
    t.data = t.step = t.opt = None  # type: ignore[assignment] - release the data and optimizer before drawing
    release_free_memory()
    if not t.ctx.is_main:
        return
    summary = summary_of(t.config, t.eval_model, t.state, data_info, t.device)
    summary.update(precision=prec_name, compiled=compiled, world_size=t.ctx.world_size)
    if t.config.grad_clip or t.config.skip_threshold or t.config.ema:
        summary.update(grad_clip=t.config.grad_clip, skip_threshold=t.config.skip_threshold, ema=t.config.ema,
                       skipped_updates=t.state.skipped_updates)
    if n_val is not None:
        summary.update(validation_summary(t.state.history, n_val))
    runs.save_weights(t.run_dir, t.eval_model)
    runs.write_metrics(t.run_dir / runs.METRICS, t.state.history)
    runs.write_json(t.run_dir / runs.SUMMARY, summary)
    if t.config.artifacts:
        from vaekit.artifacts import write_artifacts

        write_artifacts(t.run_dir, splits=_test_only(data_info, test_images, test_labels))
    if t.config.progress:
        log(f"done: test loss {summary['test_loss']:.3f} nats/image on {summary['dataset']} "
            f"[{describe(summary['protocol'])}]; run folder {t.run_dir}")


def final_test(t: Trainer) -> None:
    """Evaluate the test set once, on the final weights, into the last row of ``t.state.history``."""
    c = t.config
    test = evaluate_elbo(t.eval_model, t.data.x_test, c.likelihood, c.sigma, c.eval_batch_size)
    t.state = replace(t.state, history=[*t.state.history[:-1], {**t.state.history[-1], **test}])


def validation_summary(history: list[dict[str, float]], n_val: int) -> dict[str, Any]:
    """The validation numbers of summary.json: the last epoch's, and the best ``val_loss`` with its epoch."""
    last = history[-1]
    best = min(history, key=lambda r: r["val_loss"])
    return {"val_loss": last["val_loss"], "val_recon": last["val_recon"], "val_kl": last["val_kl"],
            "best_val_loss": best["val_loss"], "best_val_epoch": int(best["epoch"]), "n_val": n_val}


def _test_only(data_info: dict[str, Any], test_images: np.ndarray, test_labels: np.ndarray) -> Splits:
    """The test split as the artifacts stage takes it: no training images, the class names kept."""
    shape = tuple(data_info["image_shape"])
    names = (data_info.get("own") or {}).get("class_names")
    return Splits(data_info["dataset"], np.empty((0, *shape), np.uint8), np.empty(0, np.int64),
                  test_images.reshape(-1, *shape), test_labels, data_info["source"],
                  class_names=tuple(names) if names else None)


def summary_of(config: TrainConfig, model: VAE, state: TrainState, data_info: dict[str, Any],
               device: torch.device) -> dict[str, Any]:
    """The run's final numbers with what they measure (protocol, metric), so summary.json stands on its own."""
    last = state.history[-1]
    train_seconds = sum(r["seconds"] for r in state.history)
    return {
        "test_loss": last["test_loss"], "test_recon": last["test_recon"], "test_kl": last["test_kl"],
        "train_loss": last["train_loss"],
        "train_samples_per_s": data_info["n_train"] * len(state.history) / max(train_seconds, 1e-9),
        "train_seconds": train_seconds, "n_params": n_params(model), "dataset": data_info["dataset"],
        "data_source": data_info["source"], "epochs": state.epoch, "likelihood": config.likelihood,
        "objective": config.objective, "k": config.k, "beta": config.beta, "kl_warmup": config.kl_warmup,
        "protocol": protocol(config.binarize, config.binarize_seed, config.likelihood, config.learn_sigma,
                             config.sigma, model.config.head, model.config.mixtures),
        "model": config.model, "zdim": model.zdim, "device": str(device),
        "metric": "negative ELBO per test image in nats, one reparametrized sample per image",
    }
