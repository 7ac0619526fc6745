"""Ctrl-C while a command runs: a KeyboardInterrupt however the process was started.

A process started from a background shell (``cmd &``, a CI job run from one) inherits an ignored SIGINT, and
Python then installs no handler of its own: Ctrl-C or ``kill -INT`` would be ignored until some code installs
one (training does, :mod:`vaekit.training.signals`), so a command interrupted while it loads its data or sets up
would run on to the end. The command line runs every command inside :func:`ctrl_c_raises`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def ctrl_c_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt inside the block, whatever disposition the process inherited; the previous
    one is restored after. Off the main thread (where no handler can be installed) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
