"""``vaekit.train``: a training session around :func:`~vaekit.training.loop.fit`.

It checks the run folder and the settings, reads the data, locks the folder, builds the model, optimizer and
step (or restores them from the checkpoint), runs ``fit`` with the callbacks, writes the weights and the
summary, and finally hands the finished folder to the artifacts stage (figures, explorer, report).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from vaekit import run as runs
from vaekit.config import DISCRETIZED_LOGISTIC_SCALE, ConfigError, ModelConfig, TrainConfig
from vaekit.data import Splits, load_splits
from vaekit.data.binarize import binarize_splits, describe, protocol
from vaekit.devices import resolve_device
from vaekit.errors import NonFiniteError, RunFolderError
from vaekit.eval.elbo import as_rows
from vaekit.model import VAE, model_config, n_params
from vaekit.training import distributed, precision
from vaekit.training.callbacks import Callback, default_callbacks, log
from vaekit.training.checkpoint import TrainState, load_checkpoint
from vaekit.training.loop import fit
from vaekit.training.optim import make_adam
from vaekit.training.schedule import LRSchedule
from vaekit.training.step import TrainStep
from vaekit.training.trainer import TrainData, Trainer

# Seed of the random train/test split of your own images: fixed, so runs of any --seed share a test set.
OWN_SPLIT_SEED = 0
SKIPPED = "skipped_files.txt"  # with --skip-bad: the images left out, one "path<TAB>problem" per line
# Settings a resumed run may change; everything else must match the stored run. precision, compile,
# fused_step and cuda_graph change how a step is computed, not what it computes (bit-for-bit continuation
# holds when they stay; fused_step changes no bit at all).
RESUMABLE = ("epochs", "device", "progress", "checkpoint_every", "detect_anomaly", "precision", "compile", "fused_step",
             "cuda_graph", "artifacts", "tensorboard")


def train(config: TrainConfig | None = None, out: str | os.PathLike | None = None, *, resume: bool = False,
          force: bool = False, callbacks: Sequence[Callback] = (), data: Any = None) -> runs.Run:
    """Train a VAE as ``config`` says and return the finished :class:`~vaekit.run.Run`.

    ``out`` is the run folder (default ``runs/vae-<time>``). With ``resume=True`` the folder's own config is
    used, with the settings in ``RESUMABLE`` taken from ``config`` (so ``epochs`` may grow). ``callbacks``
    run after the default ones (progress, checkpoints, metrics, log); see :mod:`vaekit.training.callbacks`.
    ``data`` is your own images: a folder or ``.npy``/``.npz`` path (as ``config.data``), a NumPy array or a
    tensor (N, H, W) or (N, H, W, C), or an ``(images, labels)`` pair.
    """
    config = config or TrainConfig()
    if data is not None and isinstance(data, (str, os.PathLike)):
        config, data = replace(config, data=os.fspath(data)), None
    config.validate()
    with distributed.session(config.device) as ctx:  # joins the process group when started by torchrun
        run_dir, config, stored = _settle(config, out, resume, force, ctx)
        resume = stored is not None
        if not ctx.is_main:
            config = replace(config, progress=False)  # one progress bar and one log: rank 0's
        device = ctx.device or resolve_device(config.device)
        precision.resolve(config.precision, device)  # fp16 away from CUDA fails here, before the data is read
        extra = default_callbacks(config.progress, config.tensorboard, run_dir) + list(callbacks)
        splits, own = _read_data(config, run_dir, ctx, data, stored)
        config = replace(config, model=config.model or default_model(splits, ctx.is_main))
        mcfg = model_config_for(config, tuple(splits.train_images.shape[1:]))
        with _folder_held(run_dir, config, resume, ctx):
            t = build_trainer(config, mcfg, splits, run_dir, device, ctx)
            data_info, test_labels = data_description(splits, own), splits.test_labels
            del splits
            if ctx.is_main and own is not None:
                _report_skipped(run_dir, own)
            if stored is not None:
                _restore(t, stored.epochs)
            if ctx.is_main:
                runs.write_config(run_dir, mcfg, config, data_info)
            fit(t, extra)
            _finish(t, data_info, test_labels)
        ctx.barrier()  # the other ranks return the run rank 0 has finished writing
    return runs.load_run(run_dir, device)


def _settle(config: TrainConfig, out: str | os.PathLike | None, resume: bool, force: bool,
            ctx: distributed.DistContext) -> tuple[Path, TrainConfig, Stored | None]:
    """The run folder, the config to train with and, when resuming, what the stored run's config says."""
    run_dir = Path(out) if out is not None else Path("runs") / time.strftime("vae-%Y%m%d-%H%M%S")
    runs.check_path_length(run_dir, "--out")
    if ctx.enabled and out is None:
        raise ConfigError("training with torchrun needs --out: every process must name the same run folder")
    if resume and not (run_dir / runs.CONFIG).exists():
        if not (run_dir.is_dir() and runs.is_unstarted(run_dir)):
            raise RunFolderError(f"nothing to resume at {run_dir}: it has no {runs.CONFIG}")
        resume = False  # killed before it wrote its config: nothing was done, so start it afresh
    if resume:
        _, stored, recorded = runs.read_config(run_dir)
        # --data may name where the run's images are now: what they are is checked against the run's record.
        config = replace(stored, **{k: getattr(config, k) for k in RESUMABLE}, data=config.data or stored.data)
        config.validate()
        return run_dir, config, Stored(stored.epochs, recorded)
    if ctx.is_main:
        _check_fresh_folder(run_dir, force)
    return run_dir, config, None


class Stored(NamedTuple):
    """What a resumed run's config.json says beyond its settings: the epochs it was set to, its data section."""

    epochs: int
    data: dict[str, Any]


def _check_fresh_folder(run_dir: Path, force: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"--out {run_dir} exists and is not a folder")
    if run_dir.is_dir() and not runs.is_unstarted(run_dir) and not force:
        raise RunFolderError(f"run folder {run_dir} already exists; use --resume to continue it, "
                             "--force to train into it anyway, or another --out")
    parent = run_dir if run_dir.exists() else run_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise RunFolderError(f"cannot create run folder {run_dir}: {parent} is not writable")


def _read_data(config: TrainConfig, run_dir: Path, ctx: distributed.DistContext, data: Any,
               stored: Stored | None) -> tuple[Splits, dict[str, Any] | None]:
    """Create the run folder (so an unwritable --out fails first), then read the data.

    Returns the splits and, for your own images, the record that rebuilds them (``None`` for a named
    dataset). A failure removes the folders this created: a run that never started leaves nothing behind.
    """
    if config.model is not None:  # bad model settings fail before the data is read
        model_config(config.model, config.zdim, config.hidden, config.activation)
    missing = [p for p in [run_dir, *run_dir.parents] if not p.exists()][::-1] if ctx.is_main else []
    try:
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        splits, own = _load(config, data, stored)
        splits = binarize_splits(splits, config.binarize, config.binarize_seed)
    except OSError as e:
        _remove_created(missing)
        raise RunFolderError(f"cannot create run folder {run_dir}: {e.strerror}; choose another --out") from e
    except BaseException:
        _remove_created(missing)
        raise
    return splits, own


def _load(config: TrainConfig, data: Any, stored: Stored | None) -> tuple[Splits, dict[str, Any] | None]:
    """A named dataset, or your own images (a resumed run rebuilds exactly the images it was trained on)."""
    if config.data is None and data is None:
        return load_splits(config.dataset, config.data_dir, progress=config.progress), None
    from vaekit.data import load_own_data, load_own_data_from_info

    if stored is not None:
        return load_own_data_from_info(stored.data.get("own"), config.data if data is None else data,
                                       progress=config.progress)
    return load_own_data(config.data if data is None else data, image_size=config.image_size,
                         channels=config.channels, test_fraction=config.test_fraction, seed=OWN_SPLIT_SEED,
                         skip_bad=config.skip_bad, progress=config.progress)


def default_model(splits: Splits, announce: bool) -> str:
    """The post's ``seed`` model for 28x28 grey images; otherwise ``conv``, which fits any size, said once."""
    shape = tuple(splits.train_images.shape[1:])
    if shape == (28, 28):
        return "seed"
    if announce:
        size = "x".join(map(str, shape[:2])) + (" colour" if len(shape) == 3 else " grey")
        print(f"vaekit train: {size} images: using the conv preset, a convolutional VAE for any image size "
              "(choose another with --model)", file=sys.stderr, flush=True)
    return "conv"


def model_config_for(config: TrainConfig, image_shape: tuple[int, ...]) -> ModelConfig:
    """The model a run trains: its preset and overrides sized for the data, with the likelihood's scales.

    The discretized logistic always learns its per-pixel scales (a weight of the model, like a learned
    Gaussian sigma), starting at ``DISCRETIZED_LOGISTIC_SCALE``.
    """
    learn = config.learn_sigma or config.likelihood == "discretized-logistic"
    start = DISCRETIZED_LOGISTIC_SCALE if config.likelihood == "discretized-logistic" else config.sigma
    return model_config(config.model, config.zdim, config.hidden, config.activation, image_shape,
                        learn_sigma=learn, sigma_init=start, width=config.width)


def _report_skipped(run_dir: Path, own: dict[str, Any]) -> None:
    """With --skip-bad: the list of skipped files beside the run, and one warning line that points to it."""
    from vaekit.data import bad_files_text, skipped_warning

    listing = run_dir / SKIPPED
    message = skipped_warning(own, listing)
    if message is not None:
        runs.write_bytes(listing, bad_files_text(own).encode("utf-8", "surrogateescape"))  # names as on disk
        warn(message)


def _remove_created(folders: list[Path]) -> None:
    for folder in reversed(folders):  # leave no empty folder behind
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def _folder_held(run_dir: Path, config: TrainConfig, resume: bool, ctx: distributed.DistContext) -> Iterator[None]:
    """Rank 0 holds the run folder's lock (the others wait for it); a --detect-anomaly NaN becomes one line."""
    if not ctx.is_main:
        ctx.barrier()  # wait until rank 0 has checked and locked the folder
        with _anomaly_as_error(config, run_dir):
            yield
        return
    with runs.RunLock(run_dir), _anomaly_as_error(config, run_dir):
        if not resume:  # --force: no file of the replaced run may be mistaken for one of this run
            runs.remove_run_files(run_dir, final_outputs())
        ctx.barrier()
        yield


@contextlib.contextmanager
def _anomaly_as_error(config: TrainConfig, run_dir: Path) -> Iterator[None]:
    """Report the error autograd raises under ``--detect-anomaly`` like any non-finite stop: one line.

    Anomaly mode raises inside the backward pass, at the operation whose gradient became NaN, before
    vaekit's own check sees it; torch has already printed the forward call that created that operation.
    """
    try:
        yield
    except RuntimeError as e:
        if not (config.detect_anomaly and "returned nan values" in str(e)):
            raise
        saved = run_dir / runs.CHECKPOINT
        kept = f"the last good checkpoint {saved} is kept" if saved.exists() else "no checkpoint had been written yet"
        raise NonFiniteError(f"--detect-anomaly stopped training: {str(e).splitlines()[0].rstrip('.')} "
                             f"(the forward call that produced it is printed above); {kept}") from e


def final_outputs() -> tuple[str, ...]:
    """Files a run writes after its summary; a run is finished only once they all exist."""
    from vaekit.artifacts import FINAL_OUTPUTS

    return FINAL_OUTPUTS


def build_trainer(config: TrainConfig, mcfg: ModelConfig, splits: Splits, run_dir: Path, device: torch.device,
                  ctx: distributed.DistContext) -> Trainer:
    """A fresh model, optimizer, generators and step, with the data laid out for the loop."""
    torch.manual_seed(config.seed)
    model = VAE(mcfg).to(device)
    opt = make_adam(model.parameters(), config.lr)
    gens = {"shuffle": torch.Generator().manual_seed(config.seed),
            "noise": torch.Generator(device=device).manual_seed(config.seed + 1)}
    if config.binarize == "dynamic":  # redraws every batch's pixels; checkpointed like the others
        gens["binarize"] = torch.Generator(device=device).manual_seed(config.seed + 2)
    prec_name, why = precision.resolve(config.precision, device)
    if why and ctx.is_main:
        warn(f"--precision {config.precision}: {why}")
    step = TrainStep(model, opt, config, precision.Precision.create(prec_name, device), ctx, device,
                     warn if ctx.is_main else lambda _: None)
    # The whole training split as one uint8 tensor (4x smaller than float); on the device for a single
    # process, on the host for data-parallel ranks, which gather their shard onto the device each epoch.
    x_all = as_rows(splits.train_images)
    x_test = as_rows(splits.test_images).to(device) if ctx.is_main else None
    data = TrainData(x_all, None if ctx.enabled else x_all.to(device), x_test, config.batch_size)
    warmup = round(config.lr_warmup * data.steps_per_epoch)
    schedule = LRSchedule(config.lr_schedule, config.lr, warmup, config.epochs * data.steps_per_epoch)
    return Trainer(config, model, opt, step, gens, TrainState(), schedule, data, run_dir, ctx, device,
                   gens["shuffle"].get_state())


def _restore(t: Trainer, stored_epochs: int) -> None:
    """Continue from the checkpoint: weights, Adam, generators, position, and the LR schedule, extended
    (from the rate reached, decaying to 0 by the new end) when ``--epochs`` grew."""
    path = t.run_dir / runs.CHECKPOINT
    if not path.exists():
        return
    opt_flags = {k: t.opt.param_groups[0][k] for k in ("fused", "foreach") if k in t.opt.param_groups[0]}
    t.state, t.epoch_shuffle = load_checkpoint(t.run_dir, t.model, t.opt, t.gens)
    for group in t.opt.param_groups:  # keep this run's Adam implementation, whichever wrote the checkpoint
        group.update(opt_flags)
    t.step.prec.load_state(t.state.scaler)
    spe = t.data.steps_per_epoch
    if t.state.step_in_epoch >= spe:
        raise RunFolderError(f"{path} stands at step {t.state.step_in_epoch} of an epoch, but an epoch of this "
                             "data has fewer steps; the checkpoint does not belong to it")
    if t.state.epoch > t.config.epochs or (t.state.epoch == t.config.epochs
                                           and runs.is_complete(t.run_dir, t.state.epoch, _outputs(t.config))):
        raise ConfigError(f"{t.run_dir} already has {t.state.epoch} epochs; pass a larger --epochs to train on")
    heading = t.state.lr_schedule or {"total_steps": stored_epochs * spe, "restart_step": 0, "restart_lr": None}
    t.schedule = replace(t.schedule, **heading).extended(t.config.epochs * spe, t.state.global_step)
    if t.config.progress:
        log(f"resuming {t.run_dir} at epoch {t.state.epoch + 1}, step {t.state.step_in_epoch}"
            if t.state.epoch < t.config.epochs else f"finishing {t.run_dir}: writing its weights, summary and figures")


def _outputs(config: TrainConfig) -> tuple[str, ...]:
    return final_outputs() if config.artifacts else ()


def _finish(t: Trainer, data_info: dict[str, Any], test_labels: np.ndarray) -> None:
    """Weights, metrics and summary of the finished run, then its artifacts (rank 0 only)."""
    compiled = t.step.forward.active
    prec_name = t.step.prec.name
    test_images = t.data.x_test.cpu().numpy() if t.ctx.is_main else None
    t.data = t.step = t.opt = None  # type: ignore[assignment] - release the data and optimizer before drawing
    _release_free_memory()
    if not t.ctx.is_main:
        return
    summary = summary_of(t.config, t.model, t.state, data_info, t.device)
    summary.update(precision=prec_name, compiled=compiled, world_size=t.ctx.world_size)
    runs.save_weights(t.run_dir, t.model)
    runs.write_metrics(t.run_dir / runs.METRICS, t.state.history)
    runs.write_json(t.run_dir / runs.SUMMARY, summary)
    if t.config.artifacts:
        from vaekit.artifacts import write_artifacts

        write_artifacts(t.run_dir, splits=_test_only(data_info, test_images, test_labels))
    if t.config.progress:
        log(f"done: test loss {summary['test_loss']:.3f} nats/image on {summary['dataset']} "
            f"[{describe(summary['protocol'])}]; run folder {t.run_dir}")


def _test_only(data_info: dict[str, Any], test_images: np.ndarray, test_labels: np.ndarray) -> Splits:
    """The test split as the artifacts stage takes it: no training images, the class names kept."""
    shape = tuple(data_info["image_shape"])
    names = (data_info.get("own") or {}).get("class_names")
    return Splits(data_info["dataset"], np.empty((0, *shape), np.uint8), np.empty(0, np.int64),
                  test_images.reshape(-1, *shape), test_labels, data_info["source"],
                  class_names=tuple(names) if names else None)


def data_description(splits: Splits, own: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``data`` section of config.json: which data the run saw (``own``: the record of your own images)."""
    info = {"dataset": splits.name, "source": splits.source, "n_train": int(len(splits.train_images)),
            "n_test": int(len(splits.test_images)), "image_shape": list(splits.train_images.shape[1:])}
    return {**info, "own": own} if own is not None else info


def summary_of(config: TrainConfig, model: VAE, state: TrainState, data_info: dict[str, Any],
               device: torch.device) -> dict[str, Any]:
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
                             config.sigma),
        "model": config.model, "zdim": model.zdim, "device": str(device),
        "metric": "negative ELBO per test image in nats, one reparametrized sample per image",
    }


def _release_free_memory() -> None:
    """Return the C heap's free pages to the operating system (glibc only; elsewhere nothing to do).

    The training data and the optimizer's moments are freed by reference counting as soon as they are
    dropped; no collection of cycles is needed first, which in a long-lived process costs a noticeable pause.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl): it returns memory on its own
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def warn(msg: str) -> None:
    """A one-line warning on stderr, shown even with --quiet: it says the run differs from what was asked."""
    print(f"vaekit train: warning: {' '.join(msg.split())}", file=sys.stderr, flush=True)

