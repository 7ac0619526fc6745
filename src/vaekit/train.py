"""The training loop: data in memory as one tensor, batches as index slices, a checkpoint every epoch.

The blog post iterates a ``DataLoader`` that converts every image from PIL to a tensor in Python; here
the whole split is one uint8 tensor on the training device and a batch is ``data[perm[i:i + B]]``, so
the loop does no per-sample Python work. Everything needed to continue a run exactly (weights, Adam
moments, both random generators, the position inside the epoch, the metrics so far) goes into
``checkpoint.safetensors``, written atomically, so a killed run resumes bit for bit.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from . import distributed, explore, precision, report, runs, viz
from .binarize import binarize_batch, binarize_splits, describe, protocol
from .config import ConfigError, TrainConfig
from .data import Splits, load_splits
from .engine import CompiledForward, FiniteGuard, lr_at, make_adam
from .errors import Interrupted, NonFiniteError, RunFolderError
from .evaluate import evaluate_elbo, to_unit
from .models import VAE, model_config, n_params
from .objectives import elbo_terms, gaussian_kl, iwae_bound, log_importance_weights, log_likelihood

# Settings a resumed run may change; everything else must match the stored run.
# precision and compile change how a step is computed, not what it computes, so a run may switch them
# (bit-for-bit continuation holds when they stay as they were).
RESUMABLE = ("epochs", "device", "progress", "checkpoint_every", "detect_anomaly", "precision", "compile")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if name.startswith("mps") and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    return torch.device(name)


@dataclass
class TrainState:
    """Where training stands; saved in the checkpoint's metadata."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # optimizer steps done in the current (incomplete) epoch
    global_step: int = 0
    epoch_loss_sum: float = 0.0  # sum of per-image losses so far in the current epoch
    epoch_seconds: float = 0.0  # training seconds so far in the current epoch
    history: list[dict[str, float]] = field(default_factory=list)
    scaler: dict[str, Any] | None = None  # the fp16 loss scaler's state (scale, growth tracker)


def _checkpoint_tensors(model: VAE, opt: torch.optim.Optimizer, gens: dict[str, torch.Generator],
                        epoch_shuffle_state: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    scalars: dict[str, Any] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    for name, g in gens.items():
        tensors[f"rng.{name}"] = g.get_state()
    tensors["rng.epoch_shuffle"] = epoch_shuffle_state
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def kl_weight(config: TrainConfig, progress: float) -> float:
    """The weight on the KL: ``beta``, ramped linearly from 0 over the first ``kl_warmup`` epochs.

    ``progress`` counts epochs done, fractionally (1.5 = half-way through the second), so the ramp is
    smooth per step and a resumed run recomputes exactly the weight it would have used.
    """
    if config.kl_warmup <= 0:
        return float(config.beta)
    return float(config.beta) * min(1.0, progress / config.kl_warmup)


def batch_loss(model: VAE, x_u8: torch.Tensor, config: TrainConfig, noise: torch.Generator,
               progress: float = 0.0, binarize: torch.Generator | None = None) -> torch.Tensor:
    """The training objective of one batch, summed over its images as the blog post's loss is.

    Summing rather than averaging keeps the post's objective exactly; Adam's updates barely depend on
    the scale of the loss, and reported numbers are divided by the number of images. The default
    (elbo, k 1, beta 1, no warm-up) is the post's negative ELBO with the closed-form KL; ``elbo`` with
    k > 1 averages the reconstruction over k draws; ``iwae`` is minus the k-sample importance-weighted
    bound. ``binarize`` (dynamic binarization) redraws the batch's pixels as Bernoulli(grey level).
    """
    x = to_unit(x_u8)
    if binarize is not None:
        x = binarize_batch(x, binarize)
    weight = kl_weight(config, progress)
    if config.objective == "elbo" and config.k == 1:
        logits, mu, logvar = model(x, generator=noise)
        t = elbo_terms(logits, x, mu, logvar, config.likelihood, config.sigma, model.log_sigma)
        return (t.recon + weight * t.kl).sum()  # weight 1.0: bit for bit the plain negative ELBO
    mu, logvar = model.encode(x)
    eps = torch.randn((config.k, *mu.shape), generator=noise, device=mu.device, dtype=mu.dtype)
    z = model.reparameterize(mu, logvar, eps)
    log_px_z = log_likelihood(config.likelihood, x, model.decode(z), config.sigma, model.log_sigma)
    if config.objective == "elbo":
        return (weight * gaussian_kl(mu, logvar) - log_px_z.mean(dim=0)).sum()
    return -iwae_bound(log_importance_weights(log_px_z, eps, logvar, z, weight)).sum()


def save_checkpoint(run_dir: Path, model: VAE, opt: torch.optim.Optimizer, gens: dict[str, torch.Generator],
                    epoch_shuffle_state: torch.Tensor, state: TrainState) -> None:
    tensors, optim_meta = _checkpoint_tensors(model, opt, gens, epoch_shuffle_state)
    meta = {
        "format": str(runs.FORMAT_VERSION),
        "state": json.dumps({k: v for k, v in state.__dict__.items()}),
        "optimizer": json.dumps(optim_meta),
    }
    runs.write_tensors(run_dir / runs.CHECKPOINT, tensors, meta)


def load_checkpoint(run_dir: Path, model: VAE, opt: torch.optim.Optimizer,
                    gens: dict[str, torch.Generator]) -> tuple[TrainState, torch.Tensor]:
    """Restore weights, optimizer and generators; returns the state and the epoch's shuffle seed state."""
    path = run_dir / runs.CHECKPOINT
    tensors, meta = runs.read_tensors(path)
    runs.load_state_into(model, tensors, path, prefix="model.")
    try:
        state = TrainState(**runs.check_train_state(json.loads(meta["state"]), path))
        optim_meta = json.loads(meta["optimizer"])
        per_param: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                per_param.setdefault(int(idx), {})[name] = v
        for key, v in optim_meta["scalars"].items():
            idx, name = key.split(".", 1)
            per_param.setdefault(int(idx), {})[name] = v
        runs.check_optimizer_state(opt, per_param, optim_meta["param_groups"], path)
        opt.load_state_dict({"state": per_param, "param_groups": optim_meta["param_groups"]})
        for name, g in gens.items():
            g.set_state(tensors[f"rng.{name}"])
        epoch_shuffle = tensors["rng.epoch_shuffle"]
        torch.Generator().set_state(epoch_shuffle)  # a bad state fails here, not at the next epoch
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError, json.JSONDecodeError) as e:
        raise RunFolderError(f"{path} is not a valid vaekit checkpoint ({e}); "
                             "start again with --force or restore the file") from e
    return state, epoch_shuffle


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked between optimizer steps, so an interrupt never lands
    in the middle of an update and the checkpoint written on the way out is consistent."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _default_out() -> Path:
    return Path("runs") / time.strftime("vae-%Y%m%d-%H%M%S")


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


def _make_folder(run_dir: Path) -> list[Path]:
    """Create ``run_dir`` and missing parents; returns the folders created, outermost first."""
    missing = [p for p in [run_dir, *run_dir.parents] if not p.exists()][::-1]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"cannot create run folder {run_dir}: {e.strerror}; choose another --out") from e
    return missing


def _merge_resume(stored: TrainConfig, requested: TrainConfig) -> TrainConfig:
    return replace(stored, **{k: getattr(requested, k) for k in RESUMABLE})


def train(config: TrainConfig | None = None, out: str | os.PathLike | None = None, *,
          resume: bool = False, force: bool = False) -> runs.Run:
    """Train a VAE as ``config`` says and return the finished :class:`~vaekit.runs.Run`.

    ``out`` is the run folder (default ``runs/vae-<time>``). With ``resume=True`` the folder's own
    config is used, with the settings in ``RESUMABLE`` (``epochs``, ``device``, ``progress``,
    ``checkpoint_every``, ``detect_anomaly``, ``precision``, ``compile``) taken from ``config`` (so
    ``epochs`` may grow).
    """
    config = config or TrainConfig()
    config.validate()
    with distributed.session(config.device) as ctx:  # joins the process group when started by torchrun
        return _train(config, out, resume, force, ctx)


def _train(config: TrainConfig, out: str | os.PathLike | None, resume: bool, force: bool,
           ctx: distributed.DistContext) -> runs.Run:
    """:func:`train` in one process of the job; only rank 0 checks, locks and writes the run folder."""
    run_dir = Path(out) if out is not None else _default_out()
    if ctx.enabled and out is None:
        raise ConfigError("training with torchrun needs --out: every process must name the same run folder")
    if resume and not (run_dir / runs.CONFIG).exists():
        if not (run_dir.is_dir() and runs.is_unstarted(run_dir)):
            raise RunFolderError(f"nothing to resume at {run_dir}: it has no {runs.CONFIG}")
        resume = False  # killed before it wrote its config: nothing was done, so start it afresh
    if resume:
        _, stored, _ = runs.read_config(run_dir)
        config = _merge_resume(stored, config)
        config.validate()
    elif ctx.is_main:
        _check_fresh_folder(run_dir, force)
    if not ctx.is_main:
        config = replace(config, progress=False)  # one progress bar and one log: rank 0's
    device = ctx.device or resolve_device(config.device)
    precision.resolve(config.precision, device)  # fp16 away from CUDA fails here, before the data is read
    model_config(config.model, config.zdim, config.hidden, config.activation)  # bad settings fail before data
    sigma_kw = {"learn_sigma": config.learn_sigma, "sigma_init": config.sigma}

    # early, so an unwritable --out fails before the data is read
    created = _make_folder(run_dir) if ctx.is_main else []
    try:
        splits = load_splits(config.dataset, config.data_dir, progress=config.progress)
        splits = binarize_splits(splits, config.binarize, config.binarize_seed)
        image_shape = tuple(splits.train_images.shape[1:])
        mcfg = model_config(config.model, config.zdim, config.hidden, config.activation, image_shape, **sigma_kw)
    except BaseException:
        for folder in reversed(created):  # leave no empty folder behind
            folder.rmdir()
        raise
    # Handed over in a list the callee empties, so that no frame here keeps the training images alive:
    # training releases them before drawing the figures, which keeps the run's peak memory down.
    handoff = [splits]
    del splits
    if not ctx.is_main:
        ctx.barrier()  # wait until rank 0 has checked and locked the folder
        with _anomaly_as_error(config, run_dir):
            return _train_locked(config, mcfg, handoff.pop(), run_dir, device, resume, ctx)
    with runs.RunLock(run_dir), _anomaly_as_error(config, run_dir):
        if not resume:  # --force: no file of the replaced run may be mistaken for one of this run
            runs.remove_run_files(run_dir, _final_outputs())
        ctx.barrier()
        return _train_locked(config, mcfg, handoff.pop(), run_dir, device, resume, ctx)


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


def _final_outputs() -> tuple[str, ...]:
    """Files a run writes after its summary; a run is finished only once they all exist."""
    return (*viz.FIGURES, explore.EXPLORER, report.REPORT)


def _data_info(splits: Splits) -> dict[str, Any]:
    return {"dataset": splits.name, "source": splits.source, "n_train": int(len(splits.train_images)),
            "n_test": int(len(splits.test_images)), "image_shape": list(splits.train_images.shape[1:])}


class _Objective(torch.nn.Module):
    """The loss of one batch as a module around the VAE.

    DistributedDataParallel synchronizes the gradients of what runs inside its wrapped module's forward,
    and torch.compile fuses what it sees, so both must see the whole objective (likelihood and KL as well
    as the network), not only the VAE. ``batch_loss`` is looked up at call time, so it stays replaceable.
    """

    def __init__(self, model: VAE, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, x_u8: torch.Tensor, noise: torch.Generator, progress: float,
                binarize: torch.Generator | None) -> torch.Tensor:
        return batch_loss(self.model, x_u8, self.config, noise, progress, binarize)


def _train_locked(config: TrainConfig, mcfg, splits: Splits, run_dir: Path, device: torch.device,
                  resume: bool, ctx: distributed.DistContext | None = None) -> runs.Run:
    ctx = ctx or distributed.DistContext()
    torch.manual_seed(config.seed)
    model = VAE(mcfg).to(device)
    opt = make_adam(model.parameters(), config.lr)
    opt_flags = {k: opt.param_groups[0][k] for k in ("fused", "foreach") if k in opt.param_groups[0]}
    gens = {
        "shuffle": torch.Generator().manual_seed(config.seed),
        "noise": torch.Generator(device=device).manual_seed(config.seed + 1),
    }
    if config.binarize == "dynamic":  # redraws every batch's pixels; checkpointed like the others
        gens["binarize"] = torch.Generator(device=device).manual_seed(config.seed + 2)
    prec_name, why = precision.resolve(config.precision, device)
    if why and ctx.is_main:
        _warn(f"--precision {config.precision}: {why}")
    prec = precision.Precision.create(prec_name, device)
    state = TrainState()
    epoch_shuffle = gens["shuffle"].get_state()
    if resume and (run_dir / runs.CHECKPOINT).exists():
        state, epoch_shuffle = load_checkpoint(run_dir, model, opt, gens)
        for group in opt.param_groups:  # keep this run's Adam implementation, whichever wrote the checkpoint
            group.update(opt_flags)
        prec.load_state(state.scaler)
        if state.step_in_epoch >= math.ceil(len(splits.train_images) / config.batch_size):
            raise RunFolderError(f"{run_dir / runs.CHECKPOINT} stands at step {state.step_in_epoch} of an epoch, "
                                 "but an epoch of this data has fewer steps; the checkpoint does not belong to it")
        # A run killed after its last checkpoint but before its summary resumes to write what it missed.
        if state.epoch > config.epochs or (state.epoch == config.epochs
                                           and runs.is_complete(run_dir, state.epoch, _final_outputs())):
            raise ConfigError(f"{run_dir} already has {state.epoch} epochs; pass a larger --epochs to train on")
        _log(config, f"resuming {run_dir} at epoch {state.epoch + 1}, step {state.step_in_epoch}"
             if state.epoch < config.epochs else f"finishing {run_dir}: writing its weights, summary and figures")
    data_info = _data_info(splits)
    if ctx.is_main:
        runs.write_config(run_dir, mcfg, config, data_info)
        if state.history:  # a kill between a checkpoint and the metrics left metrics.csv behind: catch up
            runs.write_metrics(run_dir / runs.METRICS, state.history)

    # The whole training split as one uint8 tensor (4x smaller than float); on the device for a single
    # process, on the host for data-parallel ranks, which gather their shard onto the device each epoch.
    x_all = torch.from_numpy(splits.train_images.reshape(len(splits.train_images), -1))
    x_train = None if ctx.enabled else x_all.to(device)
    x_test = torch.from_numpy(splits.test_images.reshape(len(splits.test_images), -1)).to(device) \
        if ctx.is_main else None
    n = x_all.shape[0]
    bs = config.batch_size
    steps_per_epoch = math.ceil(n / bs)
    params = list(model.parameters())
    fused = bool(opt_flags.get("fused"))
    every = _sync_every(device, fused)
    guard = FiniteGuard(params, device, every, check_grads=prec.scaler is None)
    objective = _Objective(model, config)
    trainer: torch.nn.Module = objective
    noise_mode = None
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        trainer = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
        noise_mode = distributed.RowSlicedNoise([g for k, g in gens.items() if k != "shuffle"])
    prec.attach(model)
    step_gens = list(gens.values())
    forward = CompiledForward(trainer, device, step_gens, params, _warn if ctx.is_main else lambda _: None,
                              enabled=config.compile)
    loss_factor = float(ctx.world_size)  # DDP averages gradients over ranks; the post's loss is a sum
    warmup_steps = round(config.lr_warmup * steps_per_epoch)
    total_steps = config.epochs * steps_per_epoch
    scheduled = config.lr_schedule != "constant" or warmup_steps > 0

    def forward_backward(fwd: Any, x: torch.Tensor, progress: float) -> torch.Tensor:
        with prec.autocast(), (noise_mode if noise_mode is not None else contextlib.nullcontext()):
            loss = fwd(x, gens["noise"], progress, gens.get("binarize"))
        prec.backward(loss * loss_factor if ctx.enabled else loss)
        return loss

    perm = x_src = None
    with _StopFlag() as stop, torch.autograd.set_detect_anomaly(config.detect_anomaly):
        for epoch in range(state.epoch + 1, config.epochs + 1):
            gens["shuffle"].set_state(epoch_shuffle)
            perm = torch.randperm(n, generator=gens["shuffle"])
            if ctx.enabled:  # this rank's slices of every global batch, gathered onto the device in step order
                positions, offsets = distributed.shard_rows(n, bs, ctx.world_size, ctx.rank)
                x_src = x_all.index_select(0, perm[positions]).to(device)
            else:
                perm = perm.to(device)
                x_src = x_train
            bar = tqdm(total=steps_per_epoch, initial=state.step_in_epoch, desc=f"epoch {epoch}/{config.epochs}",
                       ascii=" >=", disable=not config.progress, leave=False, dynamic_ncols=True)
            loss_sum = torch.tensor(state.epoch_loss_sum, dtype=torch.float64, device=device)
            t0 = time.perf_counter()
            step = state.step_in_epoch
            stopping = False
            while step < steps_per_epoch:
                if ctx.enabled:
                    x = x_src[offsets[step] : offsets[step + 1]]
                    rows = min(bs, n - step * bs)
                    noise_mode.set_rows(rows, rows * ctx.rank // ctx.world_size, x.shape[0])
                else:
                    x = x_src.index_select(0, perm[step * bs : (step + 1) * bs])  # rows copied with memcpy
                if scheduled:
                    lr = lr_at(config.lr_schedule, config.lr, warmup_steps, total_steps, state.global_step)
                    for group in opt.param_groups:
                        group["lr"] = lr
                for p in params:  # zero_grad(set_to_none=True) without Optimizer.zero_grad's 30 us of wrapping
                    p.grad = None
                progress = epoch - 1 + step / steps_per_epoch
                loss = forward.run(lambda fwd, x=x, progress=progress: forward_backward(fwd, x, progress))
                step += 1
                guard.observe(loss, step)
                due = bool(config.checkpoint_every) and (state.global_step + 1) % config.checkpoint_every == 0
                if step % every == 0 or step == steps_per_epoch or due:
                    bad = guard.first_bad()
                    stopping = stop.signal is not None
                    if ctx.enabled:  # every rank must agree to stop, and on the flag the optimizer honours
                        flags = torch.tensor([float(bad is not None), float(stopping)], device=device)
                        bad_anywhere, stopping = (v > 0 for v in ctx.all_reduce_(flags, "max").tolist())
                        if bad_anywhere and bad is None:
                            bad = (step, 0.0)  # the loss was finite here; it was not on another rank
                    if bad is not None:
                        raise _nonfinite_error(guard, bad, step, epoch, run_dir)
                elif not ctx.enabled:
                    stopping = stop.signal is not None
                prec.step(opt, guard.found if fused and every > 1 else None)
                state.global_step += 1
                loss_sum += loss.detach()
                bar.update(1)
                if config.progress and (step % (20 if every == 1 else every) == 0 or step == steps_per_epoch):
                    bar.set_postfix(loss=f"{loss.item() / x.shape[0]:.6f}")
                if (due or stopping) and step < steps_per_epoch:
                    partial = replace(state, step_in_epoch=step,
                                      epoch_loss_sum=ctx.all_reduce_(loss_sum.clone()).item(),
                                      epoch_seconds=state.epoch_seconds + time.perf_counter() - t0,
                                      scaler=prec.state())
                    if ctx.is_main:
                        save_checkpoint(run_dir, model, opt, gens, epoch_shuffle, partial)
                if stopping:
                    bar.close()
                    if step == steps_per_epoch:
                        break  # the epoch is complete: finish it and save at its end, as usual
                    raise Interrupted(f"interrupted at epoch {epoch}, step {step}; checkpoint saved; "
                                      f"continue with: vaekit train --resume --out {run_dir}")
            bar.close()
            seconds = state.epoch_seconds + time.perf_counter() - t0
            train_loss = ctx.all_reduce_(loss_sum.clone()).item() / n
            if ctx.is_main:
                metrics = evaluate_elbo(model, x_test, config.likelihood, config.sigma, config.eval_batch_size)
            else:  # only rank 0 evaluates and records; the others go on to the next epoch
                metrics = {"test_loss": math.nan, "test_recon": math.nan, "test_kl": math.nan}
            row = {"epoch": epoch, "train_loss": train_loss, **metrics, "seconds": seconds}
            state = replace(state, epoch=epoch, step_in_epoch=0, epoch_loss_sum=0.0, epoch_seconds=0.0,
                            history=[*state.history, row], scaler=prec.state())
            epoch_shuffle = gens["shuffle"].get_state()
            if ctx.is_main:
                save_checkpoint(run_dir, model, opt, gens, epoch_shuffle, state)
                runs.save_weights(run_dir, model)
                runs.write_metrics(run_dir / runs.METRICS, state.history)
            _log(config, f"epoch {epoch}/{config.epochs}  train {row['train_loss']:.3f}  test {row['test_loss']:.3f}"
                         f" (recon {row['test_recon']:.3f}, kl {row['test_kl']:.3f})  {seconds:.1f}s")
            if stopping and epoch < config.epochs:
                raise Interrupted(f"interrupted after epoch {epoch}; checkpoint saved; "
                                  f"continue with: vaekit train --resume --out {run_dir}")
    prec.detach()
    # Training is over: let go of the training images and the optimizer before the figures are drawn (they
    # use the test split only), and hand the freed heap back, so drawing does not raise the peak memory.
    compiled = forward.active
    x_all = x_train = x_src = perm = opt = forward = trainer = objective = None  # noqa: F841
    splits = replace(splits, train_images=np.empty((0, *splits.train_images.shape[1:]), np.uint8),
                     train_labels=np.empty(0, splits.train_labels.dtype))  # not views: they would keep the data
    _release_free_memory()

    if ctx.is_main:
        summary = _summary(config, model, state, data_info, device)
        summary.update(precision=prec_name, compiled=compiled, world_size=ctx.world_size)
        runs.save_weights(run_dir, model)
        runs.write_metrics(run_dir / runs.METRICS, state.history)
        runs.write_json(run_dir / runs.SUMMARY, summary)
        viz.plot_run(run_dir, model, splits, state.history, config)
        explore.write_explorer(run_dir, model=model, splits=splits)  # before the report, which links to it
        report.write_report(run_dir)
        _log(config, f"done: test loss {summary['test_loss']:.3f} nats/image on {summary['dataset']} "
                     f"[{describe(summary['protocol'])}]; run folder {run_dir}")
    ctx.barrier()  # the other ranks return the run rank 0 has finished writing
    return runs.load_run(run_dir, device)


def _sync_every(device: torch.device, fused: bool) -> int:
    """How often (in steps) the host reads the non-finite flag and the loss back from the device.

    Every step on the CPU, where reading is free; every 50 steps on an accelerator, where a read stalls the
    queue of kernels. In between, the fused optimizer skips any update the flag marks, so non-finite values
    never reach the weights either way (an optimizer without that ability is checked every step).
    """
    return 1 if device.type == "cpu" or not fused else 50


def _nonfinite_error(guard: FiniteGuard, bad: tuple[int, float], step: int, epoch: int,
                     run_dir: Path) -> NonFiniteError:
    """The one-line error for a non-finite loss or gradient; nothing written so far has been touched."""
    bad_step, loss = bad
    if not math.isfinite(loss):
        what = f"the loss became {loss}"
    elif bad_step == step:
        what = f"the gradient became {guard.grad_norm()}"
    else:
        what = "the gradient became non-finite"
    saved = run_dir / runs.CHECKPOINT
    kept = f"the last good checkpoint {saved} is kept" if saved.exists() else "no checkpoint had been written yet"
    return NonFiniteError(
        f"{what} at epoch {epoch}, step {bad_step}; "
        f"{kept}. Likely causes: a learning rate too high (try a smaller --lr), input pixels outside [0, 1] "
        "for the bernoulli likelihood, or reduced precision overflow; --detect-anomaly finds the operation"
    )


def _release_free_memory() -> None:
    """Return the C heap's free pages to the operating system (glibc only; elsewhere nothing to do)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl): it returns memory on its own
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _warn(msg: str) -> None:
    """A one-line warning on stderr, shown even with --quiet: it says the run differs from what was asked."""
    print(f"vaekit train: warning: {' '.join(msg.split())}", file=sys.stderr, flush=True)

def _summary(config: TrainConfig, model: VAE, state: TrainState, data_info: dict[str, Any],
             device: torch.device) -> dict[str, Any]:
    last = state.history[-1]
    train_seconds = sum(r["seconds"] for r in state.history)
    return {
        "test_loss": last["test_loss"],
        "test_recon": last["test_recon"],
        "test_kl": last["test_kl"],
        "train_loss": last["train_loss"],
        "train_samples_per_s": data_info["n_train"] * len(state.history) / max(train_seconds, 1e-9),
        "train_seconds": train_seconds,
        "n_params": n_params(model),
        "dataset": data_info["dataset"],
        "data_source": data_info["source"],
        "epochs": state.epoch,
        "likelihood": config.likelihood,
        "objective": config.objective,
        "k": config.k,
        "beta": config.beta,
        "kl_warmup": config.kl_warmup,
        "protocol": protocol(config.binarize, config.binarize_seed, config.likelihood, config.learn_sigma,
                             config.sigma),
        "model": config.model,
        "zdim": model.zdim,
        "device": str(device),
        "metric": "negative ELBO per test image in nats, one reparametrized sample per image",
    }


def _log(config: TrainConfig, msg: str) -> None:
    if config.progress:
        tqdm.write(msg, file=sys.stderr)
