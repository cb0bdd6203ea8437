"""Variational Monte Carlo: per-geometry sampling, clipped local energies, the energy loss.

Everything here is a pure JAX function of (params, geometry, state, key); the VMC stage
(hpcwf.training.stages.VMCStage) chooses the geometry of a step and the stage runner
(hpcwf.runner) owns the loop, files and clocks.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct

from hpcwf.io import log_schema
from hpcwf.mcmc import WalkerState, make_mcmc_sweep
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
) -> Callable:
    """Returns jitted f(params, geometry, state, key) -> (state, batch, stats): an MCMC sweep
    of the walkers of `state` (GeometryState), then their local energies.

    With `clip_width` (VMC optimization): E_L clipped with the previous visit's statistics (the
    current ones on the first visit), `batch` the VMCBatch of the energy gradient, and the new
    state holds the clipping statistics for the next visit. With clip_width None (evaluation):
    no clipping, `batch` is the unclipped E_L of every walker [n_walkers] (Ha), and the state's
    clipping statistics stay as they were.
    stats: the walker statistics of the `train` table of hpcwf.io.log_schema (energy: mean E_L,
    Ha; variance, Ha^2; clipped_energy, Ha, only with clipping; any other declared there),
    pmove, step_size (bohr), n_nonfinite (walkers with a non-finite E_L).
    """
    batched = jax.vmap(log_abs_psi, (None, 0, None))
    sweep = make_mcmc_sweep(batched, mcmc_steps, target_acceptance, max_age, proposal)
    energies_fn = jax.vmap(local_energy, (None, 0, None))

    @jax.jit
    def sample_and_measure(params, geometry: GeometryData, state: GeometryState, key):
        walkers, pmove = sweep(params, geometry, state.walkers, key)
        energies = energies_fn(params, walkers.electrons, geometry)
        finite = jnp.isfinite(energies)
        stats = {
            **walker_statistics("train", {"local_energy": energies}),
            "pmove": pmove,
            "step_size": walkers.step_size,
            "n_nonfinite": jnp.sum(~finite),
        }
        if clip_width is None:
            return state.replace(walkers=walkers), energies, stats
        safe = jnp.where(finite, energies, jnp.nanmedian(jnp.where(finite, energies, jnp.nan)))
        median = jnp.median(safe)
        width = clip_width * jnp.mean(jnp.abs(safe - median))
        first_visit = jnp.isnan(state.clip_center)
        center = jnp.where(first_visit, median, state.clip_center)
        half_width = jnp.where(first_visit, width, state.clip_width)
        clipped = clip_energies(safe, center, half_width)
        batch = VMCBatch(walkers.electrons, clipped - jnp.mean(clipped), geometry)
        stats.update(walker_statistics("train", {"clipped_local_energy": clipped}))
        new_state = GeometryState(walkers=walkers, clip_center=median, clip_width=width)
        return new_state, batch, stats

    return sample_and_measure


def make_burn_in(
    log_abs_psi: Callable, mcmc_steps: int, target_acceptance: float, max_age: int, proposal: str = "gaussian"
):
    """Jitted f(params, geometry, walkers, key) -> walkers: `mcmc_steps` steps, adapting step size."""
    batched = jax.vmap(log_abs_psi, (None, 0, None))
    sweep = make_mcmc_sweep(batched, mcmc_steps, target_acceptance, max_age, proposal)
    return jax.jit(lambda params, geometry, walkers, key: sweep(params, geometry, walkers, key)[0])
