"""Ctrl-C and SIGTERM during training: a flag checked between optimizer steps, never an exception mid-update."""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked between optimizer steps, so an interrupt never lands in the
    middle of an update and the checkpoint written on the way out is consistent.

    The handlers are installed whatever the inherited disposition: a training started from a background shell
    (which ignores SIGINT) still stops cleanly on Ctrl-C or ``kill -INT``. A second signal stops at once.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def raised(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> StopFlag:
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
