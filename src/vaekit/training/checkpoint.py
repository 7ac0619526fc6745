"""Checkpoints: everything needed to continue a run exactly, written and checked in one place.

``checkpoint.safetensors`` holds the weights, Adam's moments, the random generators, the position inside
the epoch and the metrics so far, written atomically, so a killed run resumes bit for bit. Loading checks
every part before anything is used: a tampered checkpoint fails as one line, never as a traceback or as
silently wrong training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vaekit import run as runs
from vaekit.errors import RunFolderError
from vaekit.model import VAE
from vaekit.run.io import finite_number


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
    lr_schedule: dict[str, Any] | None = None  # LRSchedule.state(): where the schedule is heading
    skipped_updates: int = 0  # updates skipped for a gradient norm above --skip-threshold, over the whole run


def _checkpoint_tensors(model: VAE, opt: torch.optim.Optimizer, gens: dict[str, torch.Generator],
                        epoch_shuffle_state: torch.Tensor,
                        average: VAE | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if average is not None:  # the weight average (--ema), continued exactly on resume
        tensors.update({f"ema.{k}": v for k, v in average.state_dict().items()})
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


def save_checkpoint(run_dir: Path, model: VAE, opt: torch.optim.Optimizer, gens: dict[str, torch.Generator],
                    epoch_shuffle_state: torch.Tensor, state: TrainState, average: VAE | None = None) -> None:
    """``average``: the model holding the weight average (--ema), saved beside the trained weights."""
    tensors, optim_meta = _checkpoint_tensors(model, opt, gens, epoch_shuffle_state, average)
    meta = {
        "format": str(runs.FORMAT_VERSION),
        "state": json.dumps({k: v for k, v in state.__dict__.items()}),
        "optimizer": json.dumps(optim_meta),
    }
    runs.write_tensors(run_dir / runs.CHECKPOINT, tensors, meta)


def load_checkpoint(run_dir: Path, model: VAE, opt: torch.optim.Optimizer, gens: dict[str, torch.Generator],
                    average: VAE | None = None) -> tuple[TrainState, torch.Tensor]:
    """Restore weights, optimizer, generators and the weight average (``average``, with --ema); returns the
    state and the epoch's shuffle seed state."""
    path = run_dir / runs.CHECKPOINT
    tensors, meta = runs.read_tensors(path)
    runs.load_state_into(model, tensors, path, prefix="model.")
    if average is not None:
        runs.load_state_into(average, tensors, path, prefix="ema.")
    try:
        state = TrainState(**check_train_state(json.loads(meta["state"]), path))
        optim_meta = json.loads(meta["optimizer"])
        per_param: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                per_param.setdefault(int(idx), {})[name] = v
        for key, v in optim_meta["scalars"].items():
            idx, name = key.split(".", 1)
            per_param.setdefault(int(idx), {})[name] = v
        check_optimizer_state(opt, per_param, optim_meta["param_groups"], path)
        opt.load_state_dict({"state": per_param, "param_groups": optim_meta["param_groups"]})
        _match_layouts(opt)
        for name, g in gens.items():
            g.set_state(tensors[f"rng.{name}"])
        epoch_shuffle = tensors["rng.epoch_shuffle"]
        torch.Generator().set_state(epoch_shuffle)  # a bad state fails here, not at the next epoch
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError, json.JSONDecodeError) as e:
        raise RunFolderError(f"{path} is not a valid vaekit checkpoint ({e}); "
                             "start again with --force or restore the file") from e
    return state, epoch_shuffle


def _match_layouts(opt: torch.optim.Optimizer) -> None:
    """Lay each moment out in memory as its parameter is (channels last for a conv model trained so).

    A checkpoint stores tensors contiguous; Adam, starting afresh, makes its moments like their parameters.
    The values are the same either way, but with the moments contiguous and the parameters channels last a
    resumed run drifted from the uninterrupted one in the fifth digit within an epoch.
    """
    for param, state in opt.state.items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape and value.dim() > 1:
                state[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _nonnegative_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_train_state(state: Any, path: Path) -> dict[str, Any]:
    """The training position stored in a checkpoint, checked so a tampered one fails here as one line.

    Known entries must have their types and ranges, and the history one row per completed epoch; other
    entries are left to the caller.
    """
    def bad(what: str) -> RunFolderError:
        return RunFolderError(f"{path} is not a valid vaekit checkpoint ({what}); "
                              "start again with --force or restore the file")

    if not isinstance(state, dict):
        raise bad(f"its training state is a JSON {type(state).__name__}, not an object")
    for key in ("epoch", "step_in_epoch", "global_step", "skipped_updates"):
        if key in state and not _nonnegative_int(state[key]):
            raise bad(f"{key} is {state[key]!r:.40}, expected an integer >= 0")
    for key in ("epoch_loss_sum", "epoch_seconds"):
        if key in state and not finite_number(state[key]):
            raise bad(f"{key} is {state[key]!r:.40}, expected a finite number")
    scaler = state.get("scaler")
    if scaler is not None and not (isinstance(scaler, dict) and all(finite_number(v) for v in scaler.values())):
        raise bad("its loss scaler state is not a set of finite numbers")
    if state.get("step_in_epoch", 0) > state.get("global_step", 0):
        raise bad("step_in_epoch is larger than global_step")
    schedule = state.get("lr_schedule")
    if schedule is not None and not _schedule_ok(schedule):
        raise bad("its learning-rate schedule state is damaged")
    history = state.get("history", [])
    if not isinstance(history, list) or len(history) != state.get("epoch", len(history)):
        raise bad("its history does not have one row per completed epoch")
    for i, row in enumerate(history, 1):
        if not isinstance(row, dict) or row.get("epoch") != i:
            raise bad(f"history row {i} is not the metrics of epoch {i}")
        for key in runs.row_required_columns(row):
            if not finite_number(row.get(key)):
                raise bad(f"history row {i} has {key} = {row.get(key)!r:.40}")
    return state


def _same_kind(saved: Any, fresh: Any) -> bool:
    """Whether an optimizer setting read from JSON has the kind of value the optimizer itself holds."""
    if isinstance(fresh, bool) or fresh is None:
        return saved is None or isinstance(saved, bool)
    if isinstance(fresh, (int, float)):
        return finite_number(saved)
    if isinstance(fresh, (list, tuple)):
        return isinstance(saved, (list, tuple)) and len(saved) == len(fresh) and all(
            _same_kind(s, f) for s, f in zip(saved, fresh, strict=True))
    if isinstance(fresh, str):
        return isinstance(saved, str)
    return False


def _plain_json(value: Any) -> bool:
    """A flat JSON value (a scalar or a list of scalars): what an optimizer setting can be."""
    if isinstance(value, (list, tuple)):
        return all(v is None or isinstance(v, (bool, str)) or finite_number(v) for v in value)
    return value is None or isinstance(value, (bool, str)) or finite_number(value)


# Per-parameter state an optimizer cannot step without (others: all parameters alike is checked).
_REQUIRED_OPTIMIZER_STATE: dict[type, tuple[str, ...]] = {
    torch.optim.Adam: ("step", "exp_avg", "exp_avg_sq"),
    torch.optim.AdamW: ("step", "exp_avg", "exp_avg_sq"),
}


def check_optimizer_state(optimizer: torch.optim.Optimizer, per_param: dict[int, dict[str, Any]],
                          param_groups: Any, path: Path) -> None:
    """A checkpoint's optimizer state fits ``optimizer``: same groups and settings, every parameter's
    state complete, tensors shaped and typed like their parameter and finite.

    ``torch.optim`` trusts a state dict; a tampered one would surface at the first step as a traceback
    (a missing moment, a string learning rate) or as silently wrong training (NaN moments).
    """
    def bad(what: str) -> RunFolderError:
        return RunFolderError(f"{path} is not a valid vaekit checkpoint (optimizer state: {what}); "
                              "start again with --force or restore the file")

    fresh = optimizer.state_dict()["param_groups"]
    if not isinstance(param_groups, list) or len(param_groups) != len(fresh):
        raise bad(f"expected {len(fresh)} parameter group(s)")
    for saved, ref in zip(param_groups, fresh, strict=True):
        if not isinstance(saved, dict) or saved.get("params") != ref["params"]:
            raise bad("the parameter group lists other parameters")
        # Settings this optimizer knows must be of its kind; one written by another torch version that
        # this one lacks (or the reverse) is torch's to reconcile.
        for key, value in ref.items():
            if key != "params" and key in saved and not _same_kind(saved[key], value):
                raise bad(f"setting {key} is {saved[key]!r:.40}")
        for key, value in saved.items():
            if key not in ref and not _plain_json(value):
                raise bad(f"setting {key} is {value!r:.40}")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not per_param:
        return
    if set(per_param) != set(range(len(params))):
        raise bad(f"it covers parameters {sorted(per_param)[:5]}, expected all {len(params)}")
    names = {frozenset(st) for st in per_param.values()}
    required = next((keys for cls, keys in _REQUIRED_OPTIMIZER_STATE.items() if type(optimizer) is cls), ())
    if len(names) != 1 or not set(required) <= next(iter(names)):
        raise bad(f"entries are missing (expected {', '.join(required) or 'the same for every parameter'})")
    for idx, st in per_param.items():
        p = params[idx]
        for name, v in st.items():
            if torch.is_tensor(v):
                if v.dim() > 0 and (v.shape != p.shape or v.dtype != p.dtype):
                    raise bad(f"{idx}.{name} has shape {tuple(v.shape)} and dtype {v.dtype}, expected "
                              f"{tuple(p.shape)} and {p.dtype}")
                if (v.is_floating_point() or v.is_complex()) and not torch.isfinite(v).all():
                    raise bad(f"{idx}.{name} contains NaN or infinite values")
            elif not finite_number(v):
                raise bad(f"{idx}.{name} is {v!r:.40}")


def _schedule_ok(schedule: Any) -> bool:
    if not isinstance(schedule, dict) or set(schedule) != {"total_steps", "restart_step", "restart_lr"}:
        return False
    lr = schedule["restart_lr"]
    return (_nonnegative_int(schedule["total_steps"]) and _nonnegative_int(schedule["restart_step"])
            and (lr is None or (finite_number(lr) and lr >= 0)))
