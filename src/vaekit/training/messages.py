"""Warnings of ``vaekit train`` that must reach the user even with ``--quiet``."""

from __future__ import annotations

import sys

from vaekit.text import printable


def warn(msg: str) -> None:
    """A one-line warning on stderr, shown even with --quiet: it says the run differs from what was asked."""
    print(f"vaekit train: warning: {' '.join(printable(msg).split())}", file=sys.stderr, flush=True)
