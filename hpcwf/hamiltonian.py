"""Local energy E_L = -1/2 (lap log|psi| + |grad log|psi||^2) + V, in Hartree atomic units.

Two Laplacian paths: folx's forward Laplacian (one forward pass carrying value, gradient and
Laplacian; the fast default) and a reference jvp-of-grad loop over the 3 n_el coordinates.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from folx import forward_laplacian

from hpcwf.model.geometry import GeometryData
from hpcwf.types import LocalEnergy, LogAbsPsi

LAPLACIAN_METHODS = ("forward", "loop")


def potential_energy(electrons: jnp.ndarray, nuclei: jnp.ndarray, charges: jnp.ndarray) -> jnp.ndarray:
    """V_ee + V_eN + V_NN (Ha) for electrons [n_el, 3], nuclei [n_atoms, 3] (bohr), charges [n_atoms]."""
    n_el, n_atoms = electrons.shape[0], nuclei.shape[0]
    r_ee = jnp.linalg.norm(electrons[:, None] - electrons[None] + jnp.eye(n_el)[..., None], axis=-1)
    v_ee = jnp.sum(jnp.triu(1.0 / r_ee, k=1))
    r_en = jnp.linalg.norm(electrons[:, None] - nuclei[None], axis=-1)
    v_en = -jnp.sum(charges[None] / r_en)
    r_nn = jnp.linalg.norm(nuclei[:, None] - nuclei[None] + jnp.eye(n_atoms)[..., None], axis=-1)
    v_nn = jnp.sum(jnp.triu(charges[:, None] * charges[None] / r_nn, k=1))
    return v_ee + v_en + v_nn


def kinetic_energy_loop(log_abs: Callable[[jnp.ndarray], jnp.ndarray], electrons: jnp.ndarray):
    """-1/2 (lap + |grad|^2) of log|psi| by a jvp-of-grad loop (reference path)."""
    x = electrons.reshape(-1)
    f = lambda flat: log_abs(flat.reshape(electrons.shape))  # noqa: E731
    grad_f = jax.grad(f)
    grad, hvp = jax.linearize(grad_f, x)
    eye = jnp.eye(x.shape[0], dtype=x.dtype)
    diagonal = jax.lax.map(lambda v: jnp.vdot(v, hvp(v)), eye)
    return -0.5 * (jnp.sum(diagonal) + jnp.sum(grad**2))


def kinetic_energy_forward(log_abs: Callable[[jnp.ndarray], jnp.ndarray], electrons: jnp.ndarray):
    """-1/2 (lap + |grad|^2) of log|psi| with folx's forward Laplacian."""
    x = electrons.reshape(-1)
    result = forward_laplacian(lambda flat: log_abs(flat.reshape(electrons.shape)))(x)
    grad = result.jacobian.dense_array
    return -0.5 * (result.laplacian + jnp.sum(grad**2))


def make_local_energy(log_abs_psi: LogAbsPsi, method: str = "forward") -> LocalEnergy:
    """Returns local_energy(params, electrons [n_el, 3], geometry) -> E_L (Ha), one walker.

    `log_abs_psi(params, electrons, geometry)` -> log|psi|. vmap the result over walkers.
    """
    kinetic = {"forward": kinetic_energy_forward, "loop": kinetic_energy_loop}[method]

    def local_energy(params, electrons, geometry: GeometryData):
        t = kinetic(lambda r: log_abs_psi(params, r, geometry), electrons)
        return t + potential_energy(electrons, geometry.nuclei, geometry.charges)

    return local_energy
