"""The search space of ``vaekit sweep``: a TOML file naming ``vaekit train`` flags, fixed or searched.

::

    [fixed]                 # flags every trial gets, as on the command line (true for a switch)
    epochs = 3
    no-artifacts = true
    [search.lr]             # a float range, sampled on a log scale
    low = 1e-4
    high = 1e-2
    log = true
    [search.batch-size]     # an int range (both bounds integers), optionally with a step
    low = 32
    high = 256
    step = 32
    [search.zdim]           # a list of choices
    choices = [2, 8, 16]
    [pruner]                # optional: an Optuna pruner and its arguments (default: median)
    name = "median"
    n_startup_trials = 2
    [sampler]               # optional: an Optuna sampler and its arguments (default: tpe)
    name = "tpe"
    seed = 0

The file is checked whole before any trial starts: every flag name against the train command's own options,
every value (each bound, each choice) through that option's own parser, so a bad file fails in one line and
never halfway through a sweep.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaekit.config import ConfigError
from vaekit.text import printable

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (the sweep extra installs it)
    import tomli as tomllib

SECTIONS = ("fixed", "search", "pruner", "sampler")
# Optuna's pruners and samplers by the names a space file uses (each list of names is defined here only).
PRUNERS = {"median": "MedianPruner", "percentile": "PercentilePruner", "threshold": "ThresholdPruner",
           "successive-halving": "SuccessiveHalvingPruner", "hyperband": "HyperbandPruner", "none": "NopPruner"}
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "qmc": "QMCSampler"}
# Flags a sweep sets itself, or that make a trial something other than one run: never in a space file.
MANAGED = ("out", "resume", "force", "seeds")
# Flags that change what the objective measures rather than the model trained: fixed only, never searched. The
# seed is noise, not a setting; the data and its splits are what the validation loss is measured on.
NOT_SEARCHED = ("seed", "val-fraction", "test-fraction", "dataset", "data", "data-dir", "binarize")
_RANGE_KEYS = {"low", "high", "log", "step"}


@dataclass(frozen=True)
class Param:
    """One searched flag: a float or int range (``low``..``high``, ``log`` or ``step``) or a list of choices."""

    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int) and not self.choices

    def candidates(self) -> list[Any]:
        """The values whose validity stands for the whole parameter: its bounds, or every choice."""
        return list(self.choices) if self.choices else [self.low, self.high]


@dataclass(frozen=True)
class Space:
    """A checked space file: fixed flags, searched ones, and the pruner and sampler with their arguments."""

    fixed: dict[str, Any]
    search: dict[str, Param]
    pruner: tuple[str, dict[str, Any]] = ("median", {})
    sampler: tuple[str, dict[str, Any]] = ("tpe", {})
    raw: dict[str, Any] = field(default_factory=dict)  # the file as read, to tell whether a joined study matches


def read_space(path: Path, check: Callable[[dict[str, Any]], None], flags: set[str]) -> Space:
    """Read and check ``path``. ``flags`` are the train command's option names (``lr``, ``batch-size``);
    ``check`` raises ConfigError for a set of flag values the train command would refuse."""
    where = printable(path)
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"space file {where} does not exist; pass the TOML file that names the flags to search")\
            from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"space file {where} cannot be read as TOML: {' '.join(str(e).split())}") from None
    for key in sorted(set(raw) - set(SECTIONS)):
        if not isinstance(raw[key], dict):
            raise ConfigError(f"space file {where}: {key!r} is outside any section; put flags under [fixed] or "
                              "[search.FLAG]")
        raise ConfigError(f"space file {where}: unknown section [{key}]; the sections are {', '.join(SECTIONS)}")
    fixed = _table(raw, "fixed", where)
    search = {name: _param(name, spec, where) for name, spec in _table(raw, "search", where).items()}
    for name in [*fixed, *search]:
        _check_name(name, flags, where)
    if not search:
        raise ConfigError(f"space file {where} searches nothing; add a [search.FLAG] table such as "
                          "[search.lr] with low and high")
    for name in search:
        if name in NOT_SEARCHED:
            raise ConfigError(f"space file {where}: --{name} cannot be searched, it changes what the validation "
                              f"loss is measured on; set it under [fixed] instead")
        if name in fixed:
            raise ConfigError(f"space file {where}: --{name} is both fixed and searched; keep one")
    for name, param in search.items():  # every value a trial can get passes the train command's own checks
        for value in param.candidates():
            try:
                check({**fixed, name: value})
            except ConfigError as e:
                raise ConfigError(f"space file {where}: {e}") from None
    return Space(fixed, search, _named(raw, "pruner", PRUNERS, where), _named(raw, "sampler", SAMPLERS, where), raw)


def _table(raw: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"space file {where}: {name} must be a table ([{name}]), not a single value")
    return value


def _check_name(name: str, flags: set[str], where: str) -> None:
    if name in MANAGED:
        raise ConfigError(f"space file {where}: --{name} is set by vaekit sweep itself (a trial is one run "
                          "folder); leave it out")
    if name not in flags:
        hint = f" (flags use dashes: {name.replace('_', '-')})" if name.replace("_", "-") in flags else ""
        raise ConfigError(f"space file {where}: {name!r} is not a vaekit train flag{hint}; see vaekit train --help")


def _param(name: str, spec: Any, where: str) -> Param:
    """One [search.FLAG] table as a Param, its bounds and choices checked."""
    if not isinstance(spec, dict):
        raise ConfigError(f"space file {where}: search.{name} must be a table with low and high, or choices")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            raise ConfigError(f"space file {where}: search.{name}: choices must be a non-empty list, alone")
        return Param(name, choices=tuple(choices))
    extra = sorted(set(spec) - _RANGE_KEYS)
    if extra or "low" not in spec or "high" not in spec:
        raise ConfigError(f"space file {where}: search.{name} needs low and high (and optionally log or step) or "
                          f"choices{f', not {extra[0]}' if extra else ''}")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    numbers = [v for v in (low, high, step) if v is not None]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in numbers):
        raise ConfigError(f"space file {where}: search.{name}: low, high and step must be finite numbers")
    if not isinstance(log, bool):
        raise ConfigError(f"space file {where}: search.{name}: log must be true or false")
    if not low < high:
        raise ConfigError(f"space file {where}: search.{name}: low ({low}) must be below high ({high})")
    if log and (low <= 0 or step is not None):
        raise ConfigError(f"space file {where}: search.{name}: a log range needs low > 0 and no step")
    if step is not None and step <= 0:
        raise ConfigError(f"space file {where}: search.{name}: step must be positive")
    return Param(name, low, high, log, step)


def _named(raw: dict[str, Any], section: str, known: dict[str, str], where: str) -> tuple[str, dict[str, Any]]:
    """[pruner] or [sampler]: its name (one of ``known``) and the remaining keys as the class's arguments."""
    table = dict(_table(raw, section, where))
    name = table.pop("name", next(iter(known)))
    if name not in known:
        raise ConfigError(f"space file {where}: [{section}] name {name!r} is not one of {', '.join(known)}")
    return name, table
