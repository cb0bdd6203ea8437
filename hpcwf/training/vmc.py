"""Variational Monte Carlo: per-geometry sampling, clipped local energies, the energy loss.

Everything here is a pure JAX function of (params, geometry, state, key); the VMC stage
(hpcwf.training.stages.VMCStage) chooses the geometry of a step and the stage runner
(hpcwf.runner) owns the loop, files and clocks.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from hpcwf.io import log_schema
from hpcwf.mcmc import (
    ONE_RANK,
    WalkerGroup,
    WalkerState,
    adapt_step_size,
    make_grouped_sweep,
    make_mcmc_moves,
)
from hpcwf.model.geometry import GeometryData
from hpcwf.training.kfac_adapter import kfac_jax


@struct.dataclass
class GeometryState:
    """Everything that persists between visits of one geometry.

    Attributes:
        walkers: MCMC state (positions, log|psi|^2, ages, step size).
        clip_center: median of E_L at the previous visit (Ha); NaN before the first.
        clip_width: clip_width x mean absolute deviation at the previous visit (Ha); NaN before.
    """

    walkers: WalkerState
    clip_center: jnp.ndarray
    clip_width: jnp.ndarray


@struct.dataclass
class VMCBatch:
    """Input of one optimization step. `electrons` comes first: kfac-jax reads the batch size
    from the leading axis of the first leaf."""

    electrons: jnp.ndarray  # [n_walkers, n_el, 3]
    centered_energy: jnp.ndarray  # [n_walkers], E_clip - mean(E_clip), no gradient
    geometry: GeometryData


def new_geometry_state(walkers: WalkerState) -> GeometryState:
    nan = jnp.full((), jnp.nan, walkers.log_prob.dtype)
    return GeometryState(walkers=walkers, clip_center=nan, clip_width=nan)


def clip_energies(energies: jnp.ndarray, center: jnp.ndarray, width: jnp.ndarray) -> jnp.ndarray:
    """E_L clipped to [center - width, center + width]."""
    return jnp.clip(energies, center - width, center + width)


_REDUCERS: dict[str, Callable] = {
    "mean": jnp.mean,
    "var": jnp.var,
    "std": jnp.std,
    "min": jnp.min,
    "max": jnp.max,
    "median": jnp.median,
}


def walker_statistics(table: str, per_walker: dict[str, jnp.ndarray]) -> dict[str, jnp.ndarray]:
    """Every walker-statistic column of energy-log `table` (`hpcwf.io.log_schema`, `statistic`)
    whose quantity is in `per_walker` ({quantity: [n_walkers]}): {column: scalar}.

    So a new statistic of an existing per-walker quantity is declared in the schema alone.
    Raises KeyError for a reduction that log_schema.REDUCTIONS does not list."""
    return {
        column: _REDUCERS[reduction](per_walker[quantity])
        for column, (reduction, quantity) in log_schema.statistics(table).items()
        if quantity in per_walker
    }


def make_energy_loss(log_abs_psi: Callable) -> Callable:
    """loss(params, batch) -> (surrogate, aux); grad = 2 <(E_clip - <E_clip>) d log|psi|>."""

    def loss(params, batch: VMCBatch):
        # The geometry is broadcast to every walker here (and only here): K-FAC needs each
        # dense layer's inputs to carry the batch axis first, also for the geometry-only
        # layers (context GNN, f, g). MCMC and the Laplacian keep them un-batched.
        n_walkers = batch.electrons.shape[0]
        per_walker = jax.tree_util.tree_map(
            lambda x: jnp.broadcast_to(x, (n_walkers, *x.shape)), batch.geometry
        )
        log_abs = jax.vmap(log_abs_psi, (None, 0, 0))(params, batch.electrons, per_walker)
        kfac_jax.register_normal_predictive_distribution(log_abs[:, None])
        surrogate = 2.0 * jnp.mean(jax.lax.stop_gradient(batch.centered_energy) * log_abs)
        return surrogate, {"log_abs_mean": jnp.mean(log_abs)}

    return loss


def make_sample_and_measure(
    log_abs_psi: Callable,
    local_energy: Callable,
    mcmc_steps: int,
    target_acceptance: float,
    max_age: int,
    clip_width: float | None,
    proposal: str = "gaussian",
    group: WalkerGroup = ONE_RANK,
) -> Callable:
    """Returns f(params, geometry, state, key) -> (state, batch, stats): an MCMC sweep of the
    walkers of `state` (GeometryState), then their local energies. The sweep and the
    measurement are jitted; between them the walkers of the ranks of `group` (ranks that share
    this geometry, `[parallel] ranks_per_geometry`) exchange their local energies and
    acceptance, so every statistic, the clipping and the centring below are over the
    geometry's whole batch and equal those of one rank holding all its walkers.

    With `clip_width` (VMC optimization): E_L clipped with the previous visit's statistics (the
    current ones on the first visit), `batch` the VMCBatch of the energy gradient for this
    rank's walkers (centred on the group's mean clipped E_L), and the new state holds the
    clipping statistics for the next visit. With clip_width None (evaluation): no clipping,
    `batch` is the unclipped E_L of this rank's walkers [n_local] (Ha), and the state's
    clipping statistics stay as they were.
    stats (over the group's walkers): the walker statistics of the `train` table of
    hpcwf.io.log_schema (energy: mean E_L, Ha; variance, Ha^2; clipped_energy, Ha, only with
    clipping; any other declared there), pmove, step_size (bohr), n_nonfinite (walkers with a
    non-finite E_L).
    """
    batched = jax.vmap(log_abs_psi, (None, 0, None))
    moves = make_mcmc_moves(batched, mcmc_steps, max_age, proposal)
    energies_fn = jax.vmap(local_energy, (None, 0, None))

    @jax.jit
    def sample(params, geometry: GeometryData, walkers: WalkerState, key, first_walker):
        walkers, pmove = moves(params, geometry, walkers, key, first_walker)
        return walkers, pmove, energies_fn(params, walkers.electrons, geometry)

    @jax.jit
    def measure(state: GeometryState, geometry: GeometryData, walkers, energies, all_energies, pmove):
        walkers = adapt_step_size(walkers, pmove, target_acceptance)
        finite = jnp.isfinite(all_energies)
        stats = {
            **walker_statistics("train", {"local_energy": all_energies}),
            "pmove": pmove,
            "step_size": walkers.step_size,
            "n_nonfinite": jnp.sum(~finite),
        }
        if clip_width is None:
            return state.replace(walkers=walkers), energies, stats
        fill = jnp.nanmedian(jnp.where(finite, all_energies, jnp.nan))
        safe = jnp.where(finite, all_energies, fill)
        median = jnp.median(safe)
        width = clip_width * jnp.mean(jnp.abs(safe - median))
        first_visit = jnp.isnan(state.clip_center)
        center = jnp.where(first_visit, median, state.clip_center)
        half_width = jnp.where(first_visit, width, state.clip_width)
        clipped = clip_energies(safe, center, half_width)
        mine = clip_energies(jnp.where(jnp.isfinite(energies), energies, fill), center, half_width)
        batch = VMCBatch(walkers.electrons, mine - jnp.mean(clipped), geometry)
        stats.update(walker_statistics("train", {"clipped_local_energy": clipped}))
        new_state = GeometryState(walkers=walkers, clip_center=median, clip_width=width)
        return new_state, batch, stats

    def sample_and_measure(params, geometry: GeometryData, state: GeometryState, key):
        walkers, pmove, energies = sample(params, geometry, state.walkers, key, group.first_walker)
        return measure(state, geometry, walkers, energies, group.gather(energies), group.mean(pmove))

    return sample_and_measure


def make_burn_in(
    log_abs_psi: Callable,
    mcmc_steps: int,
    target_acceptance: float,
    max_age: int,
    proposal: str = "gaussian",
    group: WalkerGroup = ONE_RANK,
):
    """f(params, geometry, walkers, key) -> walkers: `mcmc_steps` steps, then the step size
    adapted from the acceptance of the walkers of every rank of `group` (make_grouped_sweep)."""
    sweep = make_grouped_sweep(
        jax.vmap(log_abs_psi, (None, 0, None)), mcmc_steps, target_acceptance, max_age, proposal, group
    )
    return lambda params, geometry, walkers, key: sweep(params, geometry, walkers, key)[0]


def join_walker_shares(shares: list[GeometryState]) -> GeometryState:
    """One geometry's state from the parts that the ranks of its group hold, in walker order:
    per-walker arrays (leading walker axis) concatenated, scalars (step size, clipping
    statistics, equal on every rank of the group) taken from the first."""
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs) if np.ndim(xs[0]) else xs[0], *shares)


def walker_share(state: GeometryState, first: int, count: int) -> GeometryState:
    """Walkers first ... first + count - 1 of a geometry's state (a rank's part of it)."""
    return jax.tree_util.tree_map(lambda x: x[first : first + count] if np.ndim(x) else x, state)
