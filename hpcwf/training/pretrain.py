"""Supervised HF pre-training: fit network orbitals to the (localized) HF orbitals.

Loss = mean over walkers and determinants of |Phi^d - Phi_HF|^2, where Phi_HF is block
diagonal (HF up orbitals at up electrons, HF down orbitals at down electrons; the off-diagonal
spin blocks are fitted to 0). Walkers are sampled from the HF density |psi_HF|^2.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from hpcwf.mcmc import make_mcmc_sweep
from hpcwf.model.geometry import GeometryData
from hpcwf.systems.gaussian_basis import GaussianBasis, evaluate_orbitals


@struct.dataclass
class HartreeFockOrbitals:
    """Occupied HF orbitals evaluable in JAX: basis + coefficients [n_ao, n_up], [n_ao, n_dn]."""

    basis: GaussianBasis
    mo_coeff_up: jnp.ndarray
    mo_coeff_dn: jnp.ndarray


def hf_slater_matrix(hf: HartreeFockOrbitals, electrons: jnp.ndarray, n_up: int) -> jnp.ndarray:
    """Block-diagonal HF Slater matrix [n_el, n_el] for one walker."""
    up = evaluate_orbitals(hf.basis, hf.mo_coeff_up, electrons[:n_up])  # [n_up, n_up]
    dn = evaluate_orbitals(hf.basis, hf.mo_coeff_dn, electrons[n_up:])  # [n_dn, n_dn]
    n_dn = electrons.shape[0] - n_up
    return jnp.block(
        [
            [up, jnp.zeros((n_up, n_dn), up.dtype)],
            [jnp.zeros((n_dn, n_up), up.dtype), dn],
        ]
    )


def hf_log_abs_psi(hf: HartreeFockOrbitals, electrons: jnp.ndarray, geometry: GeometryData):
    """log|det Phi_HF| for one walker (signature of a log|psi| function with hf as params)."""
    return jnp.linalg.slogdet(hf_slater_matrix(hf, electrons, geometry.n_up))[1]


def make_pretrain_step(
    model, learning_rate: float, mcmc_steps: int
) -> tuple[optax.GradientTransformation, Callable]:
    """Returns (optax transform, jitted step).

    step(params, opt_state, geometry, hf, walkers, key) -> (params, opt_state, walkers, loss, pmove)
    """
    tx = optax.adam(learning_rate)
    hf_batched = jax.vmap(hf_log_abs_psi, (None, 0, None))
    sweep = make_mcmc_sweep(hf_batched, mcmc_steps)

    def loss_fn(params, geometry, hf, electrons):
        phi = jax.vmap(lambda r: model.apply(params, r, geometry, method=model.slater_matrices))(electrons)
        target = jax.vmap(lambda r: hf_slater_matrix(hf, r, geometry.n_up))(electrons)
        return jnp.mean((phi - target[:, None]) ** 2)

    @jax.jit
    def step(params, opt_state, geometry, hf, walkers, key):
        walkers, pmove = sweep(hf, geometry, walkers, key)
        loss, grads = jax.value_and_grad(loss_fn)(params, geometry, hf, walkers.electrons)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, walkers, loss, pmove

    return tx, step
