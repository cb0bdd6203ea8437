"""Metropolis-Hastings sampling of |psi|^2 with Gaussian all-electron moves.

Two proposals (`PROPOSALS`), both moving every electron at once:
    "gaussian"          x' = x + s * N(0, 1): one width s (bohr) for every electron;
    "nuclear-distance"  each electron's width s * (d_i / bohr)^(1/2), d_i the harmonic mean
                        of its distances to the nuclei, so core electrons take small steps
                        and valence electrons large ones; s is then in bohr^(1/2). FermiNet's
                        `mh_update` with atoms scales by d_i itself; on the HF density of O
                        (benchmarks/mcmc_autocorrelation.py, 256 walkers, 2000 moves) the
                        square root mixes both kinds of electrons: integrated autocorrelation
                        times of the core / valence radii 34 / 88 moves, against 114 / 88
                        with d_i and 25 / 187 with "gaussian". The proposal is not symmetric:
                        the acceptance carries the Hastings factor q(x | x') / q(x' | x)
                        (Hastings, Biometrika 57, 97 (1970)).

State per geometry is an explicit pytree (`WalkerState`) so it can be checkpointed and moved
between ranks; the sampler is a pure function of (params, geometry, state, key).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from hpcwf.model.geometry import GeometryData
from hpcwf.types import BatchedLogAbsPsi, MCMCSweep


@struct.dataclass
class WalkerState:
    """Walkers of one geometry.

    Attributes:
        electrons: [n_walkers, n_el, 3], bohr (first n_up electrons are spin up).
        log_prob: log|psi|^2 of each walker under the parameters it was last evaluated with, [n_walkers].
        age: MCMC steps since the walker last moved, [n_walkers] int32.
        step_size: Gaussian proposal width (scalar): bohr for the "gaussian" proposal, the
            factor s (bohr^(1/2)) of each electron's width for "nuclear-distance".
    """

    electrons: jnp.ndarray
    log_prob: jnp.ndarray
    age: jnp.ndarray
    step_size: jnp.ndarray


def initial_electrons(
    rng: np.random.Generator,
    nuclei: np.ndarray,
    charges: np.ndarray,
    n_up: int,
    n_dn: int,
    n_walkers: int,
) -> np.ndarray:
    """Electrons placed around nuclei (spins alternating per atom), Gaussian noise of 1 bohr.

    Returns [n_walkers, n_up + n_dn, 3] float64.
    """
    # Place Z electrons on each atom, alternating spins over the whole molecule (so H2 starts
    # with one electron of each spin on each atom); charge/spin surpluses are taken cyclically.
    slots = [atom for atom, z in enumerate(np.round(charges).astype(int)) for _ in range(z)]
    up_slots, dn_slots = slots[0::2], slots[1::2]

    def take(primary: list, secondary: list, n: int) -> list:
        seq = primary + secondary or list(range(len(nuclei)))
        return [seq[i % len(seq)] for i in range(n)]

    atoms = np.array(take(up_slots, dn_slots, n_up) + take(dn_slots, up_slots, n_dn), dtype=int)
    centers = nuclei[atoms]
    return centers[None] + rng.normal(size=(n_walkers, n_up + n_dn, 3))


def init_walkers(log_abs_batched: BatchedLogAbsPsi, params, geometry: GeometryData, electrons, step_size):
    """WalkerState for given starting positions [n_walkers, n_el, 3]."""
    electrons = jnp.asarray(electrons, geometry.nuclei.dtype)
    return WalkerState(
        electrons=electrons,
        log_prob=2.0 * log_abs_batched(params, electrons, geometry),
        age=jnp.zeros(electrons.shape[0], jnp.int32),
        step_size=jnp.asarray(step_size, geometry.nuclei.dtype),
    )


def start_walkers(geometry: GeometryData, electrons, step_size) -> WalkerState:
    """WalkerState at starting positions [n_walkers, n_el, 3] (bohr) whose log|psi|^2 is not
    evaluated yet (0): every sweep (`make_mcmc_moves`) evaluates it under its own parameters
    before the first move, so it is not computed here. Computing it cost one un-jitted
    network evaluation per geometry at start-up: 250 s for the 360-geometry foundation set
    (benchmarks/startup.py)."""
    electrons = jnp.asarray(electrons, geometry.nuclei.dtype)
    return WalkerState(
        electrons=electrons,
        log_prob=jnp.zeros(electrons.shape[0], electrons.dtype),
        age=jnp.zeros(electrons.shape[0], jnp.int32),
        step_size=jnp.asarray(step_size, geometry.nuclei.dtype),
    )


PROPOSALS = ("gaussian", "nuclear-distance")
# Power of the harmonic-mean nuclear distance in the "nuclear-distance" width (see above).
DISTANCE_POWER = 0.5


def harmonic_mean_distance(electrons: jnp.ndarray, nuclei: jnp.ndarray) -> jnp.ndarray:
    """Per electron, 1 / mean_I (1 / |r_i - R_I|), bohr: [..., n_el, 3], [n_atoms, 3] -> [..., n_el].

    Dominated by the nearest nucleus (a core electron of O at 0.1 bohr gets ~0.1 n_atoms)."""
    dist = jnp.linalg.norm(electrons[..., :, None, :] - nuclei, axis=-1)
    return 1.0 / jnp.mean(1.0 / jnp.maximum(dist, 1e-6), axis=-1)


def _gaussian_log_density(x: jnp.ndarray, mean: jnp.ndarray, width: jnp.ndarray) -> jnp.ndarray:
    """log N(x; mean, width^2 I) per walker, constants dropped: x, mean [n_w, n_el, 3],
    width [n_w, n_el]."""
    sq = jnp.sum((x - mean) ** 2, axis=-1)
    return jnp.sum(-0.5 * sq / width**2 - 3.0 * jnp.log(width), axis=-1)


def _identity(x):
    return x


@dataclasses.dataclass(frozen=True)
class WalkerGroup:
    """How one geometry's walkers are shared by the ranks that sample it together
    (`[parallel] ranks_per_geometry`): this rank holds walkers first_walker ... first_walker +
    n_local - 1 of the geometry's batch; `gather` concatenates a per-walker array [n_local, ...]
    of every rank of the group, in walker order, to [n_group, ...]; `mean` averages a scalar
    over the group's ranks (all hold equally many walkers, so it is the mean over walkers).
    `hpcwf.parallel.ParallelContext.walker_group` builds one over MPI; the default is a rank
    that holds all walkers of its geometry (no communication)."""

    first_walker: int = 0
    gather: Callable = _identity
    mean: Callable = _identity


ONE_RANK = WalkerGroup()


def walker_keys(key: jax.Array, first_walker, n_walkers: int) -> jax.Array:
    """One key per walker, [n_walkers] keys: `key` folded with the walker's index in its
    geometry's batch. So a walker draws the same numbers whichever rank or device holds it,
    and splitting a batch over ranks (WalkerGroup) or devices changes no sample."""
    index = jnp.asarray(first_walker, jnp.int32) + jnp.arange(n_walkers, dtype=jnp.int32)
    return jax.vmap(jax.random.fold_in, (None, 0))(key, index)


def adapt_step_size(state: WalkerState, acceptance, target_acceptance: float) -> WalkerState:
    """`state` with its step size scaled towards `target_acceptance` after a sweep that
    accepted the fraction `acceptance` of its proposals: by sqrt((acc + 0.05) / (target +
    0.05)), bounded to [0.8, 1.25] so one noisy sweep cannot collapse it, and kept in [1e-3, 5]."""
    factor = jnp.clip(jnp.sqrt((acceptance + 0.05) / (target_acceptance + 0.05)), 0.8, 1.25)
    return state.replace(step_size=jnp.clip(state.step_size * factor, 1e-3, 5.0))


def make_mcmc_moves(
    log_abs_batched: BatchedLogAbsPsi, n_steps: int, max_age: int = 20, proposal: str = "gaussian"
) -> Callable:
    """Returns moves(params, geometry, state, key, first_walker=0) -> (state, acceptance):
    `n_steps` Metropolis-Hastings steps with `proposal` (one of PROPOSALS) at the state's step
    size, which stays as it is (`adapt_step_size` adapts it from the acceptance, a scalar in
    [0, 1]: the mean over these walkers). Walkers rejected `max_age` times in a row are moved
    unconditionally (they are stuck in a region the current parameters no longer favour).
    Random numbers are drawn per walker (`walker_keys`, with `first_walker` the index of the
    state's first walker in its geometry's batch). ValueError for an unknown proposal.

    `log_abs_batched(params, electrons [n_w, n_el, 3], geometry) -> [n_w]`.
    """
    if proposal not in PROPOSALS:
        raise ValueError(f"unknown MCMC proposal {proposal!r}; choose one of {', '.join(PROPOSALS)}")
    scaled = proposal == "nuclear-distance"

    def moves(params, geometry: GeometryData, state: WalkerState, key: jax.Array, first_walker=0):
        # log_prob may come from older parameters: refresh once before moving.
        log_prob = 2.0 * log_abs_batched(params, state.electrons, geometry)
        state = state.replace(log_prob=log_prob)
        n_walkers = state.electrons.shape[0]

        def step(carry, key):
            state, accepted_total = carry
            keys = walker_keys(key, first_walker, n_walkers)
            x = state.electrons
            k_move, k_accept = jax.vmap(lambda k: (jax.random.fold_in(k, 0), jax.random.fold_in(k, 1)))(keys)
            noise = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(k_move)
            if scaled:
                width = state.step_size * harmonic_mean_distance(x, geometry.nuclei) ** DISTANCE_POWER
                proposal = x + width[..., None] * noise
                width_back = (
                    state.step_size * harmonic_mean_distance(proposal, geometry.nuclei) ** DISTANCE_POWER
                )
                log_hastings = _gaussian_log_density(x, proposal, width_back) - _gaussian_log_density(
                    proposal, x, width
                )
            else:
                proposal = x + state.step_size * noise
                log_hastings = jnp.zeros(x.shape[0], x.dtype)
            log_prob_new = 2.0 * log_abs_batched(params, proposal, geometry)
            log_u = jnp.log(jax.vmap(lambda k: jax.random.uniform(k, (), x.dtype))(k_accept))
            accept = (log_u < log_prob_new - state.log_prob + log_hastings) | (state.age >= max_age)
            accept = accept & jnp.isfinite(log_prob_new)
            state = state.replace(
                electrons=jnp.where(accept[:, None, None], proposal, state.electrons),
                log_prob=jnp.where(accept, log_prob_new, state.log_prob),
                age=jnp.where(accept, 0, state.age + 1),
            )
            return (state, accepted_total + jnp.mean(accept)), None

        (state, accepted), _ = jax.lax.scan(
            step, (state, jnp.zeros((), state.log_prob.dtype)), jax.random.split(key, n_steps)
        )
        return state, accepted / n_steps

    return moves


def make_mcmc_sweep(
    log_abs_batched: BatchedLogAbsPsi,
    n_steps: int,
    target_acceptance: float = 0.5,
    max_age: int = 20,
    proposal: str = "gaussian",
) -> MCMCSweep:
    """Returns sweep(params, geometry, state, key) -> (state, acceptance): `make_mcmc_moves`'s
    `n_steps` steps of walkers that are a whole batch (first_walker 0), then the step size
    adapted from their acceptance (`adapt_step_size`). ValueError for an unknown proposal."""
    moves = make_mcmc_moves(log_abs_batched, n_steps, max_age, proposal)

    def sweep(params, geometry: GeometryData, state: WalkerState, key: jax.Array):
        state, acceptance = moves(params, geometry, state, key)
        return adapt_step_size(state, acceptance, target_acceptance), acceptance

    return sweep


def make_grouped_sweep(
    log_abs_batched: BatchedLogAbsPsi,
    n_steps: int,
    target_acceptance: float,
    max_age: int,
    proposal: str,
    group: WalkerGroup = ONE_RANK,
) -> MCMCSweep:
    """`make_mcmc_sweep` for walkers shared by the ranks of `group`: sweep(params, geometry,
    state, key) -> (state, acceptance of the whole group), the moves jitted, the step size
    adapted from the group's acceptance, so every rank of the group keeps the same step size
    and the result equals one rank holding all the walkers. Not itself jitted (the group's
    mean is a host collective); with ONE_RANK it moves no data to the host."""
    moves = jax.jit(make_mcmc_moves(log_abs_batched, n_steps, max_age, proposal))
    adapt = jax.jit(adapt_step_size, static_argnums=2)

    def sweep(params, geometry: GeometryData, state: WalkerState, key: jax.Array):
        state, acceptance = moves(params, geometry, state, key, group.first_walker)
        acceptance = group.mean(acceptance)
        return adapt(state, acceptance, target_acceptance), acceptance

    return sweep
