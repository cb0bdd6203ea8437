"""Metropolis-Hastings sampling of |psi|^2 with Gaussian all-electron moves.

State per geometry is an explicit pytree (`WalkerState`) so it can be checkpointed and moved
between ranks; the sampler is a pure function of (params, geometry, state, key).
"""

from __future__ import annotations

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
        step_size: Gaussian proposal width, bohr (scalar).
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


def make_mcmc_sweep(
    log_abs_batched: BatchedLogAbsPsi, n_steps: int, target_acceptance: float = 0.5, max_age: int = 20
) -> MCMCSweep:
    """Returns sweep(params, geometry, state, key) -> (state, acceptance).

    `log_abs_batched(params, electrons [n_w, n_el, 3], geometry) -> [n_w]`.
    Runs `n_steps` Metropolis steps; walkers that were rejected `max_age` times in a row are
    moved unconditionally (they are stuck in a region the current parameters no longer favour).
    After the sweep the step size is scaled towards `target_acceptance`.
    """

    def sweep(params, geometry: GeometryData, state: WalkerState, key: jax.Array):
        # log_prob may come from older parameters: refresh once before moving.
        log_prob = 2.0 * log_abs_batched(params, state.electrons, geometry)
        state = state.replace(log_prob=log_prob)

        def step(carry, key):
            state, accepted_total = carry
            k_move, k_accept = jax.random.split(key)
            proposal = state.electrons + state.step_size * jax.random.normal(
                k_move, state.electrons.shape, state.electrons.dtype
            )
            log_prob_new = 2.0 * log_abs_batched(params, proposal, geometry)
            log_u = jnp.log(jax.random.uniform(k_accept, log_prob_new.shape, log_prob_new.dtype))
            accept = (log_u < log_prob_new - state.log_prob) | (state.age >= max_age)
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
        acceptance = accepted / n_steps
        # Multiplicative adaptation, bounded so one noisy sweep cannot collapse the step size.
        factor = jnp.clip(jnp.sqrt((acceptance + 0.05) / (target_acceptance + 0.05)), 0.8, 1.25)
        state = state.replace(step_size=jnp.clip(state.step_size * factor, 1e-3, 5.0))
        return state, acceptance

    return sweep
