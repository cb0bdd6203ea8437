"""Faults that tests inject (TEST ONLY), read once from the environment at the edge.

Production leaves the HPCWF_TEST_* variables unset; then nothing here does anything.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

from hpcwf.parallel import ParallelContext


@dataclasses.dataclass(frozen=True)
class FaultInjection:
    """Faults that tests inject, read once from the environment here at the edge (TEST ONLY;
    leave these variables unset in production):

    HPCWF_TEST_POISON_STEPS   comma-separated steps or inclusive ranges ("3,4", "0-99") whose
                              update comes out non-finite: the last parameter leaf is set to NaN
                              on the highest rank after the global update. A "pretrain:" prefix
                              ("pretrain:2") means an HF pre-training step.
    HPCWF_TEST_CHECKPOINT_SIGNAL  "SIGTERM@6": rank 0 sends itself that signal while writing the
                              checkpoint of step 6, after its bytes and before the rename (as a
                              scancel or a kill would hit a write in progress).
    HPCWF_TEST_HF_SIGNAL      "SIGUSR1@1": every rank sends itself that signal once that many
                              geometries of its shard have finished HF (0: as its HF starts),
                              as SLURM's warning signal would arrive in the middle of HF.
    """

    poison: tuple[tuple[str, int, int], ...] = ()  # (stage, first step, last step)
    checkpoint_signal: tuple[int, int] | None = None  # (signal number, step)
    hf_signal: tuple[int, int] | None = None  # (signal number, geometries done)

    @classmethod
    def from_environment(cls) -> FaultInjection:
        poison = []
        for item in filter(None, os.environ.get("HPCWF_TEST_POISON_STEPS", "").replace(" ", "").split(",")):
            stage, _, steps = item.rpartition(":")
            first, _, last = steps.partition("-")
            poison.append((stage or "vmc", int(first), int(last or first)))
        return cls(
            tuple(poison),
            _signal_at(os.environ.get("HPCWF_TEST_CHECKPOINT_SIGNAL", "")),
            _signal_at(os.environ.get("HPCWF_TEST_HF_SIGNAL", "")),
        )

    def hf_progress(self, n_done: int) -> None:
        """Called with the number of this rank's geometries whose HF is done (0 at the start)."""
        if self.hf_signal is not None and self.hf_signal[1] == n_done:
            os.kill(os.getpid(), self.hf_signal[0])

    def poisons(self, stage: str, step: int, ctx: ParallelContext) -> bool:
        return ctx.rank == ctx.size - 1 and any(
            s == stage and first <= step <= last for s, first, last in self.poison
        )

    def checkpoint_hook(self, step: int) -> Callable[[Path], None] | None:
        if self.checkpoint_signal is None or self.checkpoint_signal[1] != step:
            return None
        return lambda tmp: os.kill(os.getpid(), self.checkpoint_signal[0])


def _signal_at(spec: str) -> tuple[int, int] | None:
    """ "SIGTERM@6" -> (signal number, 6); "" -> None."""
    if not spec:
        return None
    name, _, at = spec.partition("@")
    return int(signal.Signals[name]), int(at)


def poisoned(params):
    """`params` with its last leaf set to NaN (FaultInjection)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    leaves[-1] = leaves[-1] * jnp.nan
    return jax.tree_util.tree_unflatten(treedef, leaves)
