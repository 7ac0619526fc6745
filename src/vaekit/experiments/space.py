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
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from vaekit.config import ConfigError
from vaekit.run.io import read_regular
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


# A space file is a few hundred bytes; one far larger is not a space file, and is never read whole.
MAX_SPACE_BYTES = 2**20
# Builds the pruner or sampler a space file names from its options: (section, name, options) -> the object, or a
# ConfigError saying in the file's terms what is wrong with them.
Build = Callable[[str, str, dict[str, Any]], Any]


def read_space(path: Path, check: Callable[[dict[str, Any]], None], flags: set[str], build: Build) -> Space:
    """Read and check ``path``. ``flags`` are the train command's option names (``lr``, ``batch-size``);
    ``check`` raises ConfigError for a set of flag values the train command would refuse; ``build`` makes the
    pruner and sampler, so that their options are checked too.

    The whole file is checked before its emptiness is: a file that searches nothing hears first of any other
    mistake in it, so fixing the one reported never uncovers another that was there all along."""
    where = printable(path)
    raw = _load(Path(path), where)
    for key in sorted(set(raw) - set(SECTIONS)):
        if not isinstance(raw[key], dict):
            raise ConfigError(f"space file {where}: {key!r} is outside any section; put flags under [fixed] or "
                              "[search.FLAG]")
        raise ConfigError(f"space file {where}: unknown section [{key}]; the sections are {', '.join(SECTIONS)}")
    fixed = _table(raw, "fixed", where)
    search = {name: _param(name, spec, where) for name, spec in _table(raw, "search", where).items()}
    for name in [*fixed, *search]:
        _check_name(name, flags, where)
    pruner, sampler = _named(raw, "pruner", PRUNERS, where, build), _named(raw, "sampler", SAMPLERS, where, build)
    for name in search:
        if name in NOT_SEARCHED:
            raise ConfigError(f"space file {where}: --{name} cannot be searched, it changes what the validation "
                              f"loss is measured on; set it under [fixed] instead")
        if name in fixed:
            raise ConfigError(f"space file {where}: --{name} is both fixed and searched; keep one")
    # every value a trial can get passes the train command's own checks (with nothing searched: the fixed ones)
    for values in [{**fixed, name: v} for name, p in search.items() for v in p.candidates()] or [fixed]:
        try:
            check(values)
        except ConfigError as e:
            raise ConfigError(f"space file {where}: {e}") from None
    if not search:
        raise ConfigError(f"space file {where} searches nothing; add a [search.FLAG] table such as "
                          "[search.lr] with low and high")
    return Space(fixed, search, pruner, sampler, raw)


def _load(path: Path, where: str) -> dict[str, Any]:
    """The file's TOML: read as run folders' files are, a regular file of bounded size (a FIFO would block the
    read, a device such as /dev/zero would never end), every failure one line."""
    try:
        data = read_regular(path, MAX_SPACE_BYTES, "any space file",
                            "a space file is a TOML file of flags, so pass one (docs/experiments.md)")
    except FileNotFoundError:
        raise ConfigError(f"space file {where} does not exist; pass the TOML file that names the flags to search")\
            from None
    except OSError as e:
        raise ConfigError(f"space file {where} cannot be read: {e.strerror or e}") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"space file {where} cannot be read as TOML: {' '.join(str(e).split())}") from None


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
        if not all(isinstance(c, (str, int, float, bool)) for c in choices):
            raise ConfigError(f"space file {where}: search.{name}: each choice must be one value (a number, a string "
                              "or true/false), not a list or a table")
        twice = [c for i, c in enumerate(choices) if c in choices[:i]]
        if twice:
            raise ConfigError(f"space file {where}: search.{name}: the choice {twice[0]!r} is given twice; list each "
                              "value once")
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
    if step is not None:
        _check_step(name, low, high, step, where)
    return Param(name, low, high, log, step)


def _check_step(name: str, low: float, high: float, step: float, where: str) -> None:
    """A step that divides the range: Optuna would otherwise move ``high`` down to the last whole step (with a
    warning of its own), so the range searched would not be the one the file says, or collapse to ``low``.

    The remainder is taken in decimal, as Optuna takes it, so the refusals are exactly the ranges it would
    move; an int range (integer bounds) needs an integer step, since its values are integers."""
    where = f"space file {where}: search.{name} (--{name})"
    if step <= 0:
        raise ConfigError(f"{where}: step must be positive")
    if isinstance(low, int) and isinstance(high, int) and not isinstance(step, int):
        raise ConfigError(f"{where}: low and high are integers, so the values are integers and step must be one "
                          f"too, not {step}; write low = {float(low)} for a range of floats")
    width = Decimal(str(high)) - Decimal(str(low))
    if Decimal(str(step)) > width:
        raise ConfigError(f"{where}: step {step} is larger than the range {low}..{high}, which would hold only "
                          f"low; give a step of at most {width}")
    try:
        rest = width % Decimal(str(step))
    except InvalidOperation:  # more steps than decimal's 28 digits count: no sampler could tell them apart
        raise ConfigError(f"{where}: step {step} is too small for the range {low}..{high}; give a larger step, "
                          "or none for a continuous range") from None
    if rest:
        raise ConfigError(f"{where}: step {step} does not divide the range {low}..{high} (high - low = {width}); "
                          "give a step that does, or move high to low plus a whole number of steps")


def _named(raw: dict[str, Any], section: str, known: dict[str, str], where: str,
           build: Build) -> tuple[str, dict[str, Any]]:
    """[pruner] or [sampler]: its name (one of ``known``) and the remaining keys as the class's arguments,
    which ``build`` checks by making it."""
    table = dict(_table(raw, section, where))
    name = table.pop("name", next(iter(known)))
    if not isinstance(name, str) or name not in known:
        raise ConfigError(f"space file {where}: [{section}] name {name!r} is not one of {', '.join(known)}")
    try:
        build(section, name, table)
    except ConfigError as e:
        raise ConfigError(f"space file {where}: {e}") from None
    return name, table
