"""Graceful stop on SIGTERM / SIGUSR1 (what SLURM sends before a time limit or on preemption)
and SIGINT (Ctrl-C), from start-up on.

`hpcwf run` installs the handler first thing (`hpcwf.cli`), before jax is imported, so no
phase dies of a signal's default action (SIGUSR1's would kill silently, exit 138). Two modes:

- start-up and Hartree-Fock (the default): there is nothing to checkpoint yet (HF results are
  stored in the HF cache as each geometry completes), so the first signal raises
  `RunInterruptedError` at once: one `interrupted:` line, exit EXIT_INTERRUPTED (75).
- stages (`cooperate()`, called by the stage runner, hpcwf.runner): the first signal only sets
  the flag; the runner finishes the current step on every rank, writes a checkpoint (VMC
  optimization; pre-training and evaluation have none: a rerun repeats them) and raises
  `RunInterruptedError`.

A second signal exits at once (128 + signal number), in either mode: the newest checkpoint
stands. Ctrl-C is handled like SIGTERM: no KeyboardInterrupt traceback, a checkpoint in VMC.
"""

from __future__ import annotations

import os
import signal

from hpcwf.errors import RunInterruptedError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopFlag:
    """Set by the first stop signal; `requested` is the signal number or None.

    Attributes:
        phase: what the process is doing while the runner does not yet poll the flag, for the
            message of an immediate stop ("start-up", "Hartree-Fock").
        cooperative: True once the stage runner polls `requested` after every step.
    """

    def __init__(self) -> None:
        self.requested: int | None = None
        self.phase = "start-up"
        self.cooperative = False
        self._previous: dict[int, object] = {}

    def install(self) -> StopFlag:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        """Restores the handlers `install` replaced (a process that runs more than one job,
        such as a test session, gets its own Ctrl-C back)."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def cooperate(self) -> None:
        """From now on a signal only sets the flag: the caller polls it between steps."""
        self.cooperative = True

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            os._exit(128 + signum)  # second signal: leave now, the newest checkpoint stands
        self.requested = signum
        if not self.cooperative:
            raise RunInterruptedError(self.immediate_message())

    def immediate_message(self) -> str:
        """The one line of a stop before the stage runner took over."""
        return (
            f"stopped by {self.describe()} during {self.phase}, before any new training step: "
            "nothing new to checkpoint; run the same job again to continue"
        )

    def describe(self) -> str:
        """ "SIGTERM"-style name of the signal received here, "a signal on another rank" if none."""
        if self.requested is None:
            return "a signal on another rank"
        return signal.Signals(self.requested).name
