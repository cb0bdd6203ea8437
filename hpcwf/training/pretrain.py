"""Supervised HF pre-training: fit network orbitals to the (localized) HF orbitals.

Loss = mean over walkers and determinants of |Phi^d - Phi_HF|^2, where Phi_HF is block
diagonal (HF up orbitals at up electrons, HF down orbitals at down electrons; the off-diagonal
spin blocks are fitted to 0). Walkers are sampled from the HF density |psi_HF|^2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import struct

from hpcwf.mcmc import ONE_RANK, WalkerGroup, make_grouped_sweep
from hpcwf.model.geometry import GeometryData
from hpcwf.systems.gaussian_basis import GaussianBasis, evaluate_orbitals
from hpcwf.training.optimizer import OptaxOptimizer
from hpcwf.types import Loss, MCMCSweep


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


@struct.dataclass
class PretrainBatch:
    """Walkers of one geometry sampled from |psi_HF|^2 and the HF orbitals to fit there."""

    electrons: jnp.ndarray  # [n_walkers, n_el, 3], bohr
    geometry: GeometryData
    hf: HartreeFockOrbitals


def make_pretrain_loss(model) -> Loss:
    """loss(params, batch) -> (mean |Phi^d - Phi_HF|^2, {}) over walkers, determinants, entries."""

    def loss(params, batch: PretrainBatch):
        geometry, hf = batch.geometry, batch.hf
        phi = jax.vmap(lambda r: model.apply(params, r, geometry, method=model.slater_matrices))(
            batch.electrons
        )
        target = jax.vmap(lambda r: hf_slater_matrix(hf, r, geometry.n_up))(batch.electrons)
        return jnp.mean((phi - target[:, None]) ** 2), {}

    return loss


def make_pretrain_optimizer(model, learning_rate: float) -> OptaxOptimizer:
    """Adam on the pre-training loss, with the same local/global split as VMC."""
    return OptaxOptimizer(make_pretrain_loss(model), optax.adam(learning_rate), lambda t: learning_rate)


def make_hf_sweep(mcmc_steps: int, proposal: str = "gaussian", group: WalkerGroup = ONE_RANK) -> MCMCSweep:
    """sweep(hf, geometry, walkers, key) -> (walkers, pmove) sampling |psi_HF|^2 (moves
    jitted; step size adapted to acceptance 0.5 from the acceptance of every rank of `group`)."""
    batched = jax.vmap(hf_log_abs_psi, (None, 0, None))
    return make_grouped_sweep(batched, mcmc_steps, 0.5, 20, proposal, group)
