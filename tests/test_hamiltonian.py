"""Local energies of known wavefunctions and agreement of the two Laplacian paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpcwf.hamiltonian import make_local_energy, potential_energy
from hpcwf.model.geometry import GeometryData
from hpcwf.model.wavefunction import build_wavefunction, init_params, log_abs_psi_fn
from hpcwf.systems.hartree_fock import DEFAULT_BASIS, DEFAULT_ELEMENTS, descriptor_exponents


def one_atom(z: float) -> GeometryData:
    return GeometryData(
        jnp.zeros((1, 3)), jnp.array([z]), jnp.zeros((1, 1, 1)), jnp.zeros((1, 0, 1)), jnp.ones(1)
    )


@pytest.mark.parametrize("method", ["forward", "loop"])
@pytest.mark.parametrize("z", [1.0, 2.0, 3.0])
def test_hydrogen_like_ion_exact(method, z):
    """psi = exp(-Z r) is the exact ground state of a one-electron ion: E_L = -Z^2/2 everywhere."""
    log_psi = lambda params, r, g: -g.charges[0] * jnp.linalg.norm(r[0] - g.nuclei[0])  # noqa: E731
    electrons = jax.random.normal(jax.random.PRNGKey(0), (16, 1, 3)) * 2.0
    e = jax.vmap(make_local_energy(log_psi, method), (None, 0, None))(None, electrons, one_atom(z))
    np.testing.assert_allclose(e, -0.5 * z**2, rtol=2e-5)


def test_non_eigenstate_is_not_constant():
    """Sanity: a wrong exponent gives a position-dependent E_L (the test above can fail)."""
    log_psi = lambda params, r, g: -0.8 * jnp.linalg.norm(r[0])  # noqa: E731
    electrons = jax.random.normal(jax.random.PRNGKey(0), (16, 1, 3))
    e = jax.vmap(make_local_energy(log_psi, "forward"), (None, 0, None))(None, electrons, one_atom(1.0))
    assert float(jnp.std(e)) > 1e-2


def test_potential_energy_h2():
    nuclei = jnp.array([[0.0, 0, 0], [1.4, 0, 0]])
    electrons = jnp.array([[0.0, 1.0, 0], [1.4, 1.0, 0]])
    expected = 1 / 1.4 + 1 / 1.4 - 2 * (1 + 1 / np.sqrt(1.4**2 + 1))
    np.testing.assert_allclose(potential_energy(electrons, nuclei, jnp.ones(2)), expected, rtol=1e-6)


def test_forward_and_loop_laplacian_agree_for_network():
    """In float64 the two Laplacian paths must agree to near machine precision."""
    with jax.enable_x64(True):
        _compare_laplacians(rtol=1e-9)


def _compare_laplacians(rtol):
    rng = np.random.default_rng(0)
    geometry = GeometryData(
        jnp.array([[0.0, 0, 0], [3.0, 0, 0]]),
        jnp.array([3.0, 1.0]),
        jnp.asarray(rng.normal(size=(2, 2, 42))),
        jnp.asarray(rng.normal(size=(2, 2, 42))),
        jnp.asarray(descriptor_exponents(DEFAULT_BASIS, DEFAULT_ELEMENTS)),
    )
    model = build_wavefunction("S", "tao", 2)
    params = init_params(model, jax.random.PRNGKey(0), geometry)
    log_psi = log_abs_psi_fn(model)
    electrons = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 3))
    e_fwd = jax.vmap(make_local_energy(log_psi, "forward"), (None, 0, None))(params, electrons, geometry)
    e_loop = jax.vmap(make_local_energy(log_psi, "loop"), (None, 0, None))(params, electrons, geometry)
    assert e_fwd.dtype == jnp.float64
    np.testing.assert_allclose(e_fwd, e_loop, rtol=rtol)
