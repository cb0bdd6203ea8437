"""The three stages of a job as step functions for `hpcwf.runner.Runner`: HF pre-training,
VMC optimization and evaluation. Each provides `step(state, key) -> (state, metrics)` (the
metrics dict goes to the energy log as it is, columns in `hpcwf.io.log_schema`) and the lines
the runner prints; files, clocks, the stop agreement and checkpoints are the runner's and
`hpcwf.workflow`'s.

Parallel picture (hpcwf.parallel): every step each rank works on ONE geometry of its shard
(pre-training: round-robin; VMC: chosen by the scheduler), computes its gradient (and K-FAC
statistics) locally, and all ranks meet in one global update. With `[parallel]
ranks_per_geometry = k` a group of k ranks holds one shard and each rank a k-th of every
geometry's walkers; they exchange energies and acceptance (`hpcwf.mcmc.WalkerGroup`), so
everything below is computed over the group's whole batch. An update that is not finite on
some rank is rejected on every rank: parameters, optimizer state and that geometry's walkers
stay as before the step (FermiNet's reset-if-NaN, DeepQMC's rewind), and the metrics say
`rolled_back` = 1. Evaluation has no collective across groups: each group samples its shard.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from hpcwf.analysis.statistics import MonteCarloEstimate, multi_chain_statistics
from hpcwf.faults import FaultInjection, poisoned
from hpcwf.hamiltonian import make_local_energy
from hpcwf.io import log_schema
from hpcwf.io.config import JobConfig
from hpcwf.mcmc import WalkerState, start_walkers
from hpcwf.model.geometry import GeometryData
from hpcwf.model.wavefunction import Wavefunction, log_abs_psi_fn
from hpcwf.parallel import ParallelContext
from hpcwf.runner import geometry_key, stage_key
from hpcwf.systems.hartree_fock import HartreeFockResult
from hpcwf.training.optimizer import ScheduleSettings, all_finite, make_optimizer
from hpcwf.training.pretrain import (
    HartreeFockOrbitals,
    PretrainBatch,
    make_hf_sweep,
    make_pretrain_optimizer,
)
from hpcwf.training.schedule import GeometryScheduler
from hpcwf.training.state import TrainState
from hpcwf.training.vmc import (
    GeometryState,
    VMCBatch,
    make_burn_in,
    make_energy_loss,
    make_sample_and_measure,
    new_geometry_state,
)

# Stage tags folded into the root key so stages never share random numbers (the burn-ins have
# their own: burn-in chunk c and step c of the same tag would get the same key).
(
    STAGE_INIT,
    STAGE_PRETRAIN,
    STAGE_BURN_IN,
    STAGE_VMC,
    STAGE_EVAL,
    STAGE_EVAL_BURN_IN,
    STAGE_PRETRAIN_CHECK,
    STAGE_HF_START,
) = range(8)
BURN_IN_CHUNK = 10  # MCMC steps between step-size adaptations during burn-in
# The optimizer's log columns of a step without an update (NaN).
_NO_UPDATE = log_schema.missing_values("train", "update")
# Sweeps (of [mcmc] steps_per_update moves) in the end-of-pre-training energy check: 10 x 256
# walkers resolve the mean to ~ sqrt(variance / 2560), e.g. 70 mHa at a variance of 14 Ha^2.
PRETRAIN_CHECK_SWEEPS = 10
R_HAT_WARNING = 1.1  # split-R-hat above this: walkers not equilibrated (Gelman et al., BDA3 11.4)

DTYPE = jnp.float32


@dataclasses.dataclass
class System:
    """One geometry of the dataset, ready for the network."""

    index: int
    name: str
    hf: HartreeFockResult
    data: GeometryData
    hf_orbitals: HartreeFockOrbitals
    reference: float | None


def place_walkers(ctx: ParallelContext, state):
    """A walker-state pytree (`WalkerState`, `GeometryState`) on this rank's devices: arrays
    with a walker axis (leading) split over the devices, scalars (step size, clipping
    statistics) replicated."""
    return jax.tree_util.tree_map(
        lambda x: ctx.local_split(jnp.asarray(x)) if np.ndim(x) else ctx.local_replicated(jnp.asarray(x)),
        state,
    )


def _burn(burn_in, root, params, s: System, walkers: WalkerState, steps: int, stage: int) -> WalkerState:
    """`steps` MCMC steps of `walkers` in chunks of BURN_IN_CHUNK, adapting the step size."""
    for chunk in range(steps // BURN_IN_CHUNK):
        walkers = burn_in(params, s.data, walkers, geometry_key(root, stage, chunk, s.index))
    return walkers


# ---------------------------------------------------------------------------------------------
# HF pre-training.


@struct.dataclass
class PretrainState:
    """params, the Adam state, walkers sampled from |psi_HF|^2 per geometry index, step."""

    params: Any
    opt_state: Any
    walkers: dict[int, WalkerState]
    step: int = struct.field(pytree_node=False, default=0)


class PretrainStage:
    """HF pre-training; each rank goes round-robin through its shard, one global Adam update
    per step. Metrics: the loss on this rank's geometry (before the update; over the walkers
    of every rank of its group) and rolled_back. Not resumable: it has no checkpoints, a rerun starts over."""

    tag, table = STAGE_PRETRAIN, "pretrain"

    def __init__(
        self,
        cfg: JobConfig,
        model: Wavefunction,
        systems: list[System],
        ctx: ParallelContext,
        faults: FaultInjection,
    ):
        self.cfg, self.systems, self.ctx, self.faults = cfg, systems, ctx, faults
        self.n_steps = cfg.pretraining.steps
        # This rank's walkers per geometry (the ranks of a group share a geometry's batch).
        self.n_walkers = (cfg.pretraining.batch_size or cfg.optimization.batch_size) // ctx.group_size
        self.group = ctx.walker_group(self.n_walkers)
        self.optimizer = make_pretrain_optimizer(model, cfg.pretraining.learning_rate)
        self.update = ctx.make_global_update(self.optimizer.apply)
        self.sweep = make_hf_sweep(cfg.mcmc.steps_per_update, cfg.mcmc.proposal, self.group)
        self._last: tuple = ()

    def initial_state(self, params, electrons: dict[int, np.ndarray]) -> PretrainState:
        """Walkers at this rank's share of the first pre-training batch of `electrons` [n,
        n_el, 3], the whole batch of each geometry index (walkers first_walker ...
        first_walker + n_walkers - 1 of it)."""
        first = self.group.first_walker
        walkers = {
            s.index: place_walkers(
                self.ctx,
                start_walkers(
                    s.data,
                    electrons[s.index][first : first + self.n_walkers],
                    self.cfg.mcmc.initial_step_size,
                ),
            )
            for s in self.systems
        }
        opt_state = self.ctx.local_replicated(self.optimizer.init(params, None, None))
        return PretrainState(params=params, opt_state=opt_state, walkers=walkers, step=0)

    def step(self, state: PretrainState, key) -> tuple[PretrainState, dict]:
        t = state.step
        s = self.systems[t % len(self.systems)]
        key = jax.random.fold_in(key, s.index)
        walkers = dict(state.walkers)
        before = walkers[s.index]
        walkers[s.index], pmove = self.sweep(s.hf_orbitals, s.data, before, key)
        batch = PretrainBatch(walkers[s.index].electrons, s.data, s.hf_orbitals)
        stats = self.optimizer.local_statistics(state.params, state.opt_state, key, batch)
        # info["loss"] is averaged over ranks; the per-geometry curve needs each geometry's own
        # (over the walkers of its group's ranks).
        loss = float(self.group.mean(jax.device_get(stats.loss)[0]))
        new_params, new_state, info = self.update(state.params, state.opt_state, stats, t)
        if self.faults.poisons("pretrain", t, self.ctx):
            new_params = poisoned(new_params)
        # Every rank checks its own copy and all follow the verdict.
        (rejected,) = self.ctx.any([not bool(all_finite((new_params, new_state)))])
        if rejected:
            walkers[s.index] = before
            new_params, new_state = state.params, state.opt_state
        self._last = (s, info, pmove)
        state = state.replace(params=new_params, opt_state=new_state, walkers=walkers, step=t + 1)
        return state, {
            "geometry": s.index,
            "loss": loss,
            "rolled_back": int(rejected),
            "energy": np.nan,
            "variance": np.nan,
        }

    def progress_line(self, state, rows, window, elapsed) -> str:
        s, info, pmove = self._last
        return (
            f"pretrain {state.step:>6}/{self.n_steps}  {s.name:<12} loss {float(info['loss']):.3e}  "
            f"pmove {float(pmove):.2f}  {elapsed / state.step:.3f} s/step"
        )

    def rejection_line(self, step: int, rows, in_a_row: int) -> str:
        return f"pretrain step {step}: non-finite update rejected, rolled back ({in_a_row} in a row)"

    def diverged_message(self, step: int, in_a_row: int, checkpoint) -> str:
        return (
            f"HF pre-training: {in_a_row} consecutive non-finite updates up to step {step}; "
            "nothing was saved (pre-training has no checkpoints, a rerun starts over)"
        )

    def stopped_message(self, signal: str, state, checkpoint) -> str:
        return (
            f"stopped by {signal} during HF pre-training at step {state.step} (no checkpoint yet: "
            "a rerun starts over)"
        )

    def sampled_electrons(self, state: PretrainState, electrons: dict[int, np.ndarray]) -> dict:
        """`electrons` (whole batches) with the pre-training batch in front replaced by the
        pre-trained walkers (HF distribution) of every rank of this rank's group. Collective
        within the group."""
        sampled = {i: electrons[i].copy() for i in electrons}
        for i, w in state.walkers.items():
            batch = np.concatenate(self.ctx.group_allgather(np.asarray(w.electrons)))
            sampled[i][: batch.shape[0]] = batch[: sampled[i].shape[0]]
        return sampled


HF_START_MOVES = 500  # moves in |psi_HF|^2 before a fine-tune's walkers meet the network


def hf_density_electrons(
    cfg: JobConfig, systems: list[System], electrons: dict[int, np.ndarray], root, ctx: ParallelContext
) -> dict[int, np.ndarray]:
    """`electrons` [n_walkers, n_el, 3] per geometry index moved HF_START_MOVES Metropolis
    steps in the HF density |psi_HF|^2 of each of this rank's `systems` (the sampler of HF
    pre-training, cheap: no network): where a fine-tune's walkers start, as a scratch run's
    start after pre-training. Collective within a group of ranks sharing a geometry."""
    n_local = next(iter(electrons.values())).shape[0] if electrons else 0
    sweep = make_hf_sweep(BURN_IN_CHUNK, cfg.mcmc.proposal, ctx.walker_group(n_local))
    out = {}
    for s in systems:
        walkers = place_walkers(ctx, start_walkers(s.data, electrons[s.index], cfg.mcmc.initial_step_size))
        for chunk in range(HF_START_MOVES // BURN_IN_CHUNK):
            walkers, _ = sweep(
                s.hf_orbitals, s.data, walkers, geometry_key(root, STAGE_HF_START, chunk, s.index)
            )
        out[s.index] = np.asarray(walkers.electrons)
    return out


# ---------------------------------------------------------------------------------------------
# VMC optimization.


class VMCStage:
    """Variational optimization of this rank's shard, one geometry per step and rank (or group
    of ranks sharing it), chosen by the scheduler (`GeometryScheduler` on the state's
    scheduler arrays); one global update per step over all ranks. Its state is the
    `TrainState`."""

    tag, table = STAGE_VMC, "train"

    def __init__(
        self,
        cfg: JobConfig,
        model: Wavefunction,
        systems: list[System],
        root,
        finetune: bool,
        ctx: ParallelContext,
        faults: FaultInjection | None = None,
        classes: list[int] | None = None,
        slots: list[tuple[int, int]] | None = None,
    ):
        self.cfg, self.systems, self.root, self.ctx = cfg, systems, root, ctx
        self.faults = faults or FaultInjection()
        # Cost class of each geometry of the dataset and the warm-up round, the same on every
        # rank (hpcwf.parallel.sharding); None: one class, the shard in order.
        self.classes, self.slots = classes, slots
        o = cfg.optimization
        self.n_steps = o.steps
        # This rank's walkers per geometry: a group of ranks shares each geometry's batch.
        self.n_walkers = o.batch_size // ctx.group_size
        self.group = ctx.walker_group(self.n_walkers)
        # Fine-tuning: fresh optimizer, lower lr, schedule offset, constant damping (METHOD 2.3).
        schedule = ScheduleSettings.from_config(o, cfg.init if finetune else None)
        self.log_abs_psi = log_abs_psi_fn(model)
        self.local_energy = make_local_energy(self.log_abs_psi, "forward")
        self.optimizer = make_optimizer(
            o.optimizer, make_energy_loss(self.log_abs_psi), schedule, o.batch_size * ctx.n_rank_groups
        )
        self.update = ctx.make_global_update(self.optimizer.apply)
        self.sample_and_measure = make_sample_and_measure(
            self.log_abs_psi,
            self.local_energy,
            cfg.mcmc.steps_per_update,
            cfg.mcmc.target_acceptance,
            cfg.mcmc.max_age,
            o.clip_width,
            cfg.mcmc.proposal,
            self.group,
        )
        self.burn_in = make_burn_in(
            self.log_abs_psi,
            BURN_IN_CHUNK,
            cfg.mcmc.target_acceptance,
            cfg.mcmc.max_age,
            cfg.mcmc.proposal,
            self.group,
        )
        self._last: tuple = ()

    def _scheduler(self, arrays: dict | None = None) -> GeometryScheduler:
        sched = self.cfg.scheduler
        classes = None if self.classes is None else np.array([self.classes[s.index] for s in self.systems])
        scheduler = GeometryScheduler(
            len(self.systems), sched.warmup_rounds, sched.max_age, classes, self.slots
        )
        if arrays is not None:
            scheduler.load_state_dict(arrays)  # a copy: the state passed in stays as it was
        return scheduler

    def _template_batch(self) -> VMCBatch:
        """A batch of the right structure (this rank's first geometry) for optimizer.init."""
        s, n = self.systems[0], self.n_walkers
        return VMCBatch(jnp.zeros((n, s.data.n_electrons, 3), DTYPE), jnp.zeros(n, DTYPE), s.data)

    def init_optimizer(self, params):
        # The same key and parameters on every rank: the state starts identical everywhere.
        return self.optimizer.init(params, stage_key(self.root, STAGE_INIT, 1), self._template_batch())

    def initial_state(self, params, electrons: dict[int, np.ndarray]) -> TrainState:
        """The state at step 0 (not placed on devices): `params`, a fresh optimizer state and
        walkers at `electrons` [n_walkers, n_el, 3] per geometry index. Also the template of
        every checkpoint load (`state_template`: `jax.eval_shape` of it)."""
        geometries = {
            s.index: new_geometry_state(
                start_walkers(s.data, electrons[s.index], self.cfg.mcmc.initial_step_size)
            )
            for s in self.systems
        }
        return TrainState(
            params=params,
            opt_state=self.init_optimizer(params),
            geometries=geometries,
            scheduler=self._scheduler().state_dict(),
            step=0,
        )

    def state_template(self, params, n_walkers: int | None = None) -> TrainState:
        """Shapes and dtypes (jax.ShapeDtypeStruct leaves) of this rank's state with
        `n_walkers` walkers per geometry (default: this rank's share), from `initial_state`
        itself."""
        n = n_walkers or self.n_walkers
        electrons = {s.index: jax.ShapeDtypeStruct((n, s.data.n_electrons, 3), DTYPE) for s in self.systems}
        return jax.eval_shape(self.initial_state, params, electrons)

    def place(self, state: TrainState) -> TrainState:
        """`state` on this rank's devices: parameters and optimizer state replicated, walkers
        split."""
        return state.replace(
            params=self.ctx.local_replicated(state.params),
            opt_state=self.ctx.local_replicated(state.opt_state),
            geometries={i: place_walkers(self.ctx, g) for i, g in state.geometries.items()},
        )

    def start_energies(
        self, params, electrons: dict[int, np.ndarray], n_steps: int, sweeps: int = PRETRAIN_CHECK_SWEEPS
    ) -> tuple[dict[int, np.ndarray], list[dict]]:
        """Where VMC starts (after HF pre-training, or loaded for fine-tuning), per geometry of
        this rank: walkers from `electrons` [n_walkers, n_el, 3] (the HF density) burned in under `params`
        ([mcmc] burn_in_steps), then `sweeps` sweeps of the VMC step's own sampler (no update)
        with E_L after each. Returns ({index: equilibrated electrons}, one `pretrain` row per
        geometry: step = n_steps, energy = mean E_L over all sweeps (Ha), variance (Ha^2),
        loss NaN). Reuses the compiled VMC functions; collective only within a group of ranks
        sharing a geometry."""
        out, rows = {}, []
        for s in self.systems:
            walkers = start_walkers(s.data, electrons[s.index], self.cfg.mcmc.initial_step_size)
            walkers = _burn(
                self.burn_in,
                self.root,
                params,
                s,
                place_walkers(self.ctx, walkers),
                self.cfg.mcmc.burn_in_steps,
                STAGE_PRETRAIN_CHECK,
            )
            state = place_walkers(self.ctx, new_geometry_state(walkers))  # as VMC places it: one compile
            means, variances = [], []
            for k in range(sweeps):
                key = geometry_key(self.root, STAGE_PRETRAIN_CHECK, 1_000_000 + k, s.index)
                state, _, stats = self.sample_and_measure(params, s.data, state, key)
                stats = jax.device_get(stats)
                means.append(float(stats["energy"]))
                variances.append(float(stats["variance"]))
            out[s.index] = np.asarray(state.walkers.electrons)
            means_arr = np.asarray(means)
            rows.append(
                {
                    "step": n_steps,
                    "geometry": s.index,
                    "loss": np.nan,
                    "rolled_back": 0,
                    "energy": float(np.mean(means_arr)),
                    # total variance over all sweeps' walkers (within- plus between-sweep)
                    "variance": float(np.mean(variances) + np.var(means_arr)),
                    "error": float(np.std(means_arr, ddof=1) / np.sqrt(sweeps)) if sweeps > 1 else np.nan,
                }
            )
        return out, rows

    def _update(self, params, opt_state, batch: VMCBatch, key, t: int):
        """The global update of step `t` from this rank's `batch`, kept only if the new
        parameters and optimizer state are finite on every rank. Returns (params, opt_state,
        info, sync_time, accepted); on rejection the old params and opt_state. Collective."""
        local = jax.block_until_ready(self.optimizer.local_statistics(params, opt_state, key, batch))
        t_sync = time.perf_counter()
        new_params, new_state, info = self.update(params, opt_state, local, t)
        if self.faults.poisons("vmc", t, self.ctx):
            new_params = poisoned(new_params)
        finite = bool(all_finite((new_params, new_state)))
        info = jax.device_get(info)
        sync_time = time.perf_counter() - t_sync
        # Every rank checks its own copy and all follow the verdict, so the parameters stay
        # identical on all ranks even if only one of them went bad.
        (rejected,) = self.ctx.any([not finite])
        if rejected:
            return params, opt_state, info, sync_time, False
        return new_params, new_state, info, sync_time, True

    def step(self, state: TrainState, key) -> tuple[TrainState, dict]:
        """One VMC step: pick a geometry, equilibrate it on its first visit, sample, measure,
        update. Skipped (rolled back) when a local energy is not finite on any rank."""
        t, params, opt_state = state.step, state.params, state.opt_state
        scheduler = self._scheduler(state.scheduler)
        # The ranks of a group compute the same choice from the same statistics; the first
        # rank's is taken, so they can never sample different geometries.
        choice_time = 0.0
        if scheduler.in_warmup(t) or scheduler.n_classes == 1:
            j = scheduler.next_geometry(t)  # position in this rank's shard
        else:  # the same cost class on every rank (a collective: its wait counts in sync_time)
            t_choice = time.perf_counter()
            priority = self.ctx.max(scheduler.class_priority(t))
            choice_time = time.perf_counter() - t_choice
            j = scheduler.next_geometry(t, scheduler.pick_class(priority))
        j = self.ctx.group_bcast(j)
        s = self.systems[j]
        geometries = dict(state.geometries)
        if scheduler.n_updates[j] == 0:  # first visit: equilibrate its walkers
            walkers = _burn(
                self.burn_in,
                self.root,
                params,
                s,
                geometries[s.index].walkers,
                self.cfg.mcmc.burn_in_steps,
                STAGE_BURN_IN,
            )
            geometries[s.index] = geometries[s.index].replace(walkers=walkers)
        before = geometries[s.index]  # what a rejected step rolls this geometry back to
        k_sample, k_opt = jax.random.split(jax.random.fold_in(key, s.index))
        after, batch, stats = self.sample_and_measure(params, s.data, before, k_sample)
        stats = jax.device_get(stats)
        # Skip the update if any rank has non-finite energies. The first collective of the
        # step: a rank that sampled faster than another waits here, counted in sync_time.
        t_check = time.perf_counter()
        (skip,) = self.ctx.any([stats["n_nonfinite"] > 0])
        check_time = time.perf_counter() - t_check
        info, sync_time, accepted = _NO_UPDATE, np.nan, False
        if not skip:
            params, opt_state, info, sync_time, accepted = self._update(params, opt_state, batch, k_opt, t)
            sync_time += check_time + choice_time
        geometries[s.index] = after if accepted else before
        scheduler.record(j, t, float(stats["variance"]))
        self._last = (stats, s, self.cfg.optimization.batch_size)  # stats are over the whole batch
        # The surrogate loss (about 0 by construction) means nothing; the energy is logged.
        update_metrics = {k: v for k, v in info.items() if k != "loss"}
        metrics = {
            "geometry": s.index,
            **stats,
            **update_metrics,
            "sync_time": sync_time,
            "rolled_back": int(not accepted),
        }
        state = state.replace(
            params=params,
            opt_state=opt_state,
            geometries=geometries,
            scheduler=scheduler.state_dict(),
            step=t + 1,
        )
        return state, metrics

    def progress_line(self, state: TrainState, rows, window, elapsed) -> str:
        """Rank 0's own geometry, plus throughput and sync share over ranks."""
        stats, s, n_walkers = self._last
        err = float(np.sqrt(stats["variance"] / n_walkers))
        line = (
            f"step {state.step:>7}/{self.n_steps}  {s.name:<12}"
            f" E = {float(stats['energy']):.5f} +- {err:.5f} Ha"
            f"  var {float(stats['variance']):.4f}  pmove {float(stats['pmove']):.2f}"
            f"  {np.median(window):.3f} s/step"
        )
        if self.ctx.size > 1:
            # The rank that arrived last in the global update waited least: its time there is
            # the update itself (all-reduce + K-FAC inverses); the rest is lock-step waiting.
            sync = np.array([r["sync_time"] for r in rows])
            step = max(float(np.median(window)), 1e-9)
            if np.isfinite(sync).all():
                line += (
                    f"  [{len(rows)} geometries/step, update {sync.min() / step:.0%},"
                    f" wait {(sync.max() - sync.min()) / step:.0%}]"
                )
        return line

    def rejection_line(self, step: int, rows: list[dict], in_a_row: int) -> str:
        names = [self.cfg.geometries[r["geometry"]].name for r in rows]
        bad = [f"{r['n_nonfinite']} on {n}" for r, n in zip(rows, names, strict=True) if r["n_nonfinite"]]
        why = f"non-finite E_L ({', '.join(bad)})" if bad else "non-finite update"
        return f"step {step}: {why}; rejected, rolled back ({in_a_row} in a row)"

    def diverged_message(self, step: int, in_a_row: int, checkpoint: Path | None) -> str:
        return (
            f"{in_a_row} consecutive steps rejected as non-finite; "
            f"checkpoint of the last finite state: {checkpoint}"
        )

    def stopped_message(self, signal: str, state: TrainState, checkpoint: Path | None) -> str:
        return f"stopped by {signal} at step {state.step}; checkpoint {checkpoint}"


# ---------------------------------------------------------------------------------------------
# Evaluation.


@struct.dataclass
class EvaluationState:
    """Fixed params, this rank's geometry states, E_L per geometry index [steps, n_walkers]."""

    params: Any
    geometries: dict[int, GeometryState]
    local_energies: dict[int, np.ndarray]
    step: int = struct.field(pytree_node=False, default=0)


class EvaluationStage:
    """Unclipped E_L over `evaluation.steps` MCMC steps of every walker of every geometry of
    this rank's shard, with fixed parameters; each step samples all of them once, so every
    rank runs the same number of steps (and agrees on a stop). Each walker is an independent
    Markov chain, so the error bar is the spread of the per-walker means
    (`multi_chain_statistics`: right at any number of steps, also below the autocorrelation
    time), with tau, split-R-hat and a blocking cross-check."""

    tag, table = STAGE_EVAL, None

    def __init__(self, cfg: JobConfig, vmc: VMCStage, systems: list[System], root):
        self.cfg, self.systems, self.root, self.vmc = cfg, systems, root, vmc
        self.n_steps = cfg.evaluation.steps
        self.sample_and_measure = make_sample_and_measure(
            vmc.log_abs_psi,
            vmc.local_energy,
            cfg.mcmc.steps_per_update,
            cfg.mcmc.target_acceptance,
            cfg.mcmc.max_age,
            None,
            cfg.mcmc.proposal,
            vmc.group,
        )

    def initial_state(self, params, geometries: dict[int, GeometryState]) -> EvaluationState:
        """The training's walkers after `evaluation.burn_in_steps` steps with `params`."""
        geometries = dict(geometries)
        for s in self.systems:
            g = geometries[s.index]
            walkers = _burn(
                self.vmc.burn_in,
                self.root,
                params,
                s,
                g.walkers,
                self.cfg.evaluation.burn_in_steps,
                STAGE_EVAL_BURN_IN,
            )
            geometries[s.index] = g.replace(walkers=walkers)
        energies = {
            i: np.empty((self.n_steps, g.walkers.electrons.shape[0])) for i, g in geometries.items()
        }  # [steps, walkers]
        return EvaluationState(params=params, geometries=geometries, local_energies=energies, step=0)

    def step(self, state: EvaluationState, key) -> tuple[EvaluationState, dict]:
        t = state.step
        geometries = dict(state.geometries)
        for s in self.systems:
            k = jax.random.fold_in(key, s.index)
            geometries[s.index], energies, _ = self.sample_and_measure(
                state.params, s.data, geometries[s.index], k
            )
            state.local_energies[s.index][t] = np.asarray(energies)
        return state.replace(geometries=geometries, step=t + 1), {}

    def progress_line(self, state, rows, window, elapsed) -> None:
        return None  # one line per geometry at the end (`results`)

    def rejection_line(self, step, rows, in_a_row) -> str:
        raise AssertionError("evaluation rejects no step")

    def diverged_message(self, step, in_a_row, checkpoint) -> str:
        raise AssertionError("evaluation rejects no step")

    def stopped_message(self, signal: str, state, checkpoint) -> str:
        return f"stopped by {signal} during evaluation (training is checkpointed: a rerun re-evaluates)"

    def results(self, state: EvaluationState) -> tuple[dict[int, dict], dict[int, str]]:
        """({index: {column of log_schema.EVALUATION: value}}, {index: `eval` line}) of this
        rank's geometries."""
        results, lines = {}, {}
        for s in self.systems:
            # [steps, walkers of every rank of the group]: the same result on each of them
            chains = np.concatenate(self.vmc.ctx.group_allgather(state.local_energies[s.index]), axis=1)
            b = multi_chain_statistics(chains)
            row = dataclasses.asdict(b)  # the estimate's fields are the table's columns
            row["energy"] = row.pop("mean")
            results[s.index] = row
            lines[s.index] = evaluation_line(s, b)
        return results, lines


def evaluation_line(s: System, b: MonteCarloEstimate) -> str:
    """`eval NAME E = ... +- ... Ha  tau ...  R-hat ...  [ref ... diff ... mHa]`; tau is shown
    as '>x' when the evaluation was too short to resolve it."""
    tau = (
        f"{b.autocorrelation_time:.1f}"
        if b.tau_resolved
        else f">{b.autocorrelation_time_lower_bound:.1f} (unresolved)"
    )
    line = f"eval {s.name:<16} E = {b.mean:.6f} +- {b.error:.6f} Ha  tau {tau}  R-hat {b.r_hat:.3f}"
    if s.reference is not None:
        line += f"  ref {s.reference:.5f}  diff {1000 * (b.mean - s.reference):+.2f} mHa"
    if b.r_hat > R_HAT_WARNING:
        line += "  (R-hat > 1.1: more evaluation.burn_in_steps / steps advised)"
    return line
