"""``vaekit sweep SPACE.toml --trials N``: search ``vaekit train`` settings with Optuna (the ``sweep`` extra).

The space file names train flags (see :mod:`vaekit.experiments.space`); this module turns flag values into the
TrainConfig ``vaekit train`` would build from them, through the train command's own parser, so the sweep
accepts exactly the flags and values that ``vaekit train`` does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

from vaekit.cli.common import positive_int
from vaekit.cli.train import add_train_parser, config_from_args
from vaekit.config import OWN_VAL_FRACTION, ConfigError, TrainConfig
from vaekit.text import printable

HEARTBEAT = 60  # seconds between a running trial's heartbeats; silent for twice that, it is marked failed

DESCRIPTION = ("Search vaekit train settings with Optuna: SPACE.toml names train flags, fixed ([fixed]) or searched "
               "([search.FLAG] with low/high/log/step or choices). Each trial is a run folder OUT/trial-NNNN; its "
               "objective is the best validation loss (a validation split is always held out: --val-fraction "
               f"{OWN_VAL_FRACTION} unless the space fixes another), never the test set, and trials whose "
               "per-epoch validation loss lags are pruned. The study is kept in OUT/study.db, or in --storage: "
               "the same command run again, or on other machines against one PostgreSQL/MySQL --storage, joins "
               "the study and adds trials. Needs: pip install \"vaekit[sweep]\".")


class _Refusing(argparse.ArgumentParser):
    """The train parser as the sweep uses it: a value it refuses is a ConfigError naming the space file's flag."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{' '.join(message.split())} (see vaekit train --help)")


def add_sweep_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``sweep`` subcommand."""
    p = sub.add_parser("sweep", help="search train settings with Optuna: trials as run folders, one study",
                       description=DESCRIPTION)
    p.add_argument("space", metavar="SPACE.toml", help="the flags to fix and to search (docs/experiments.md)")
    p.add_argument("--trials", type=positive_int, required=True, metavar="N",
                   help="trials this command runs (each worker runs its own N; the study counts them all)")
    p.add_argument("--out", help="the sweep folder holding trial-NNNN run folders, study.db and best.json "
                                 "(default sweeps/<SPACE name>)")
    p.add_argument("--storage", metavar="URL", help="Optuna RDB storage URL (default sqlite:///OUT/study.db); a "
                   "PostgreSQL or MySQL URL lets workers on several machines share the study")
    p.add_argument("--study", metavar="NAME", help="study name in the storage (default: the space file's name)")
    p.add_argument("--heartbeat", type=positive_int, default=HEARTBEAT, metavar="SECONDS",
                   help=f"a running trial's heartbeat interval; one silent for twice this (its worker died) is "
                        f"marked failed by the next worker (default {HEARTBEAT})")
    p.set_defaults(func=cmd_sweep)
    return p


class TrainFlags:
    """The train command's options, and flag values -> the TrainConfig that command would build."""

    def __init__(self) -> None:
        self.parser = add_train_parser(argparse.ArgumentParser().add_subparsers(parser_class=_Refusing))
        self.actions = {s[2:]: a for a in self.parser._actions for s in a.option_strings if s.startswith("--")}
        self.actions.pop("help", None)

    def argv(self, values: dict[str, Any]) -> list[str]:
        """The command line of ``values`` (a switch: true passes it, false leaves it out)."""
        values = {"val-fraction": OWN_VAL_FRACTION, "quiet": True, **values}
        argv: list[str] = []
        for name, value in values.items():
            switch = self.actions[name].nargs == 0
            if switch != isinstance(value, bool):
                kind = "true or false" if switch else "a value, not true or false"
                raise ConfigError(f"--{name} takes {kind}, got {value!r}")
            if switch:
                argv += [f"--{name}"] if value else []
            else:
                argv += [f"--{name}", ",".join(map(str, value)) if isinstance(value, list) else str(value)]
        return argv

    def config(self, values: dict[str, Any]) -> TrainConfig:
        """The checked TrainConfig of one trial's flag values (ConfigError, one line, for what train refuses)."""
        args = self.parser.parse_args(self.argv(values))
        if not args.val_fraction:
            raise ConfigError("--val-fraction must be above 0: the sweep's objective is the "
                              "validation loss, and the test set is never used to choose")
        config, _ = config_from_args(args)
        config.validate()
        return config


def cmd_sweep(args: argparse.Namespace) -> int:
    from vaekit.experiments.space import read_space
    from vaekit.experiments.sweep import STUDY_DB, Sweep, build, check_out, optuna, run_sweep

    optuna()  # the missing extra is the first thing said, before the space file is read
    flags = TrainFlags()
    space_path = Path(args.space)
    space = read_space(space_path, flags.config, set(flags.actions), build)
    folder = Path(args.out or Path("sweeps") / space_path.stem)
    check_out(folder)  # before anything is said or written (run_sweep checks it again, for its other callers)
    url = args.storage or f"sqlite:///{(folder / STUDY_DB).resolve()}"
    if "://" not in url:
        raise ConfigError(f"--storage {printable(url)} is not a URL; give an Optuna RDB URL such as "
                          "sqlite:///study.db or postgresql://user@host/db")
    sweep = Sweep(space, folder, args.study or space_path.stem, flags.config)
    if "val-fraction" not in space.fixed:
        print(f"vaekit sweep: holding out --val-fraction {OWN_VAL_FRACTION} of the training images for "
              "validation: the objective is the best validation loss, never the test set", file=sys.stderr)
    best = run_sweep(sweep, args.trials, url, args.heartbeat, lambda s: print(s, flush=True))
    print(f"best: trial {best['trial']} value {best['value']:.4f} {best['params']} run folder "
          f"{printable(best['run_folder'])}; {printable(folder / 'best.json')}")
    return 0
