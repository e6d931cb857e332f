"""What ends the training loop besides its epochs: the run's clock (a ``train.budget`` counts every
second of every ``train`` call of a run) and the Ctrl-C flag (the first Ctrl-C finishes the current
step, saves and stops; a second stops at once).
"""

from __future__ import annotations

import signal
import time
from typing import Any


class RunClock:
    """Seconds the run has spent: what earlier calls spent plus the time since ``started``."""

    def __init__(self, before: float, started: float | None) -> None:
        self.before = before
        self.started = time.perf_counter() if started is None else started

    def __call__(self) -> float:
        return self.before + time.perf_counter() - self.started


class InterruptFlag:
    """Turns the first Ctrl-C into a flag the loop checks after the current step (then saves)."""

    def __init__(self) -> None:
        self.flag = False
        self._previous: Any = None

    def __enter__(self) -> InterruptFlag:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.flag:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.flag = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
