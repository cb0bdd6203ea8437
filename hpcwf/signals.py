"""Graceful stop on SIGTERM / SIGUSR1 (what SLURM sends before a time limit or on preemption).

The first signal sets a flag; the stage runner (hpcwf.runner) finishes the current step on
every rank, writes a checkpoint (VMC optimization; pre-training and evaluation have none: a
rerun repeats them) and raises `RunInterruptedError` (exit code EXIT_INTERRUPTED). A second
signal exits at once.
"""

from __future__ import annotations

import os
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopFlag:
    """Set by the first stop signal; `requested` is the signal number or None."""

    def __init__(self) -> None:
        self.requested: int | None = None

    def install(self) -> StopFlag:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            os._exit(128 + signum)  # second signal: leave now, the newest checkpoint stands
        self.requested = signum

    def describe(self) -> str:
        """ "SIGTERM"-style name of the signal received here, "a signal on another rank" if none."""
        if self.requested is None:
            return "a signal on another rank"
        return signal.Signals(self.requested).name
