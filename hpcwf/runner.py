"""The stage runner: the loop that HF pre-training, VMC optimization and evaluation share.

A stage (`hpcwf.training.stages`) provides the physics as one step function
`stage.step(state, key) -> (state, metrics)`; the runner owns everything around it, once for
all stages: the step loop, the random key of each step, the stop agreement across ranks,
gathering the metrics rows and writing them to the energy log, progress lines, the count of
rolled-back steps (RunDivergedError after MAX_CONSECUTIVE_REJECTED in a row), checkpoint
cadence (every_steps, every_minutes by rank 0's clock, at the end, on a stop, before giving
up) and the timing columns. Shape after JaQMC's `WorkStage.run` + `compute_step` and NetKet's
driver loop. The runner compiles nothing (no jax.jit): the steps are jitted in `training/`.

Every rank runs the same number of steps of a stage, and every decision that ends the loop is
agreed across ranks (`ParallelContext.any`), so no rank is left waiting in a collective.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from hpcwf.errors import RunDivergedError, RunInterruptedError
from hpcwf.io import log_schema
from hpcwf.io.energy_log import EnergyLog
from hpcwf.parallel import ParallelContext
from hpcwf.signals import StopFlag
from hpcwf.types import Stage

# Rejected (non-finite) steps in a row before the run stops; each retry samples with a new key.
MAX_CONSECUTIVE_REJECTED = 20


def stage_key(root: jax.Array, stage: int, step: int) -> jax.Array:
    """Key of `step` of stage `stage`: a function of (seed, stage, step) alone, so a restart
    needs no RNG stream; steps fold the geometry index in (`geometry_key`)."""
    return jax.random.fold_in(jax.random.fold_in(root, stage), step)


def geometry_key(root: jax.Array, stage: int, step: int, index: int) -> jax.Array:
    """Key of geometry `index` at `step` of `stage`: independent of which rank holds it."""
    return jax.random.fold_in(stage_key(root, stage, step), index)


class Runner:
    """Runs stages on every rank of `ctx`; `energy_log` is rank 0's (None on the others)."""

    def __init__(
        self,
        ctx: ParallelContext,
        root: jax.Array,
        log: Callable[[str], Any],
        stop: StopFlag,
        energy_log: EnergyLog | None,
        print_every: int,
    ):
        self.ctx, self.root, self.log, self.stop = ctx, root, log, stop
        self.energy_log, self.print_every = energy_log, print_every

    def _append(self, table: str, rows: list[dict]) -> None:
        append = self.energy_log.append if table == "train" else self.energy_log.append_pretrain
        for r in rows:
            append(**r)

    def run(
        self,
        stage: Stage,
        state: Any,
        checkpoint: Callable[[Any], Path] | None = None,
        every_steps: int = 0,
        every_minutes: float = 0.0,
    ) -> Any:
        """Steps `stage` from `state` until state.step == stage.n_steps; returns the state.

        With `checkpoint` (collective, returns the file written) a checkpoint is written every
        `every_steps` steps, when rank 0 saw `every_minutes` pass since the last one, after
        the last step, on a stop and before giving up; the energy log is flushed first, so it
        never lags behind the newest checkpoint. Raises RunInterruptedError on a signal (on
        any rank) after that checkpoint, RunDivergedError after MAX_CONSECUTIVE_REJECTED
        rolled-back steps in a row, StorageError when a checkpoint cannot be written."""
        ctx, energy_log = self.ctx, self.energy_log
        # From here a stop signal only sets the flag, polled after every step (hpcwf.signals).
        self.stop.cooperate()
        runner_columns = set(log_schema.names(stage.table, "runner")) if stage.table else set()
        every_seconds = 60.0 * every_minutes
        t_start = last_checkpoint = time.perf_counter()
        window: list[float] = []
        in_a_row = 0
        while state.step < stage.n_steps:
            t, t_step = state.step, time.perf_counter()
            state, metrics = stage.step(state, stage_key(self.root, stage.tag, t))
            step_time = time.perf_counter() - t_step
            rejected = bool(metrics.get("rolled_back", 0))
            in_a_row = in_a_row + 1 if rejected else 0
            time_due = bool(every_seconds) and time.perf_counter() - last_checkpoint >= every_seconds
            # One agreement per step: stop if any rank got a signal, checkpoint if rank 0's
            # clock says so.
            stopping, time_due = ctx.any([self.stop.requested is not None, time_due and ctx.is_root])
            rows = None
            if stage.table is not None:
                bookkeeping = {"step": t, "time": time.perf_counter() - t_start, "step_time": step_time}
                row = {**{k: v for k, v in bookkeeping.items() if k in runner_columns}, **metrics}
                rows = ctx.gather_per_rank_group(row)  # the ranks of a group log one row
                if energy_log is not None:
                    self._append(stage.table, rows)
            if rejected and ctx.is_root:
                self.log(stage.rejection_line(t, rows, in_a_row))
            window.append(step_time)
            if state.step % self.print_every == 0 or state.step == stage.n_steps:
                if ctx.is_root:
                    line = stage.progress_line(state, rows, window, time.perf_counter() - t_start)
                    if line:
                        self.log(line)
                window.clear()
                if energy_log is not None:
                    energy_log.maybe_flush()  # readable by h5py while the run is live
            diverged = in_a_row >= MAX_CONSECUTIVE_REJECTED
            path = None
            if checkpoint is not None:
                due = (every_steps and state.step % every_steps == 0) or time_due
                if due or state.step == stage.n_steps or stopping or diverged:
                    if energy_log is not None:
                        energy_log.flush()  # the log never lags behind the newest checkpoint
                    path = checkpoint(state)
                    last_checkpoint = time.perf_counter()
                    self.log(f"checkpoint {path}")
                    if not stopping:
                        # A signal that arrived during the write stops the run at this
                        # checkpoint, not one step and one more write later (SLURM's KillWait
                        # may not allow it).
                        (stopping,) = ctx.any([self.stop.requested is not None])
            elif (diverged or stopping) and energy_log is not None:
                energy_log.flush()
            if diverged:
                raise RunDivergedError(stage.diverged_message(t, in_a_row, path))
            if stopping:
                raise RunInterruptedError(stage.stopped_message(self.stop.describe(), state, path))
        return state
