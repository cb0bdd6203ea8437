"""Metropolis-Hastings proposals (hpcwf.mcmc) sample a known density exactly: the hydrogen-like
1s density |psi|^2 = Z^3/pi exp(-2 Z r), whose moments are <r> = 3 / (2Z) and
<r^2> = 3 / Z^2 (e.g. Bransden & Joachain, Physics of Atoms and Molecules, 3.2)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpcwf.io.config import McmcConfig
from hpcwf.mcmc import PROPOSALS, harmonic_mean_distance, init_walkers, make_mcmc_sweep
from hpcwf.model.geometry import GeometryData


def _one_atom(z: float) -> GeometryData:
    return GeometryData(
        jnp.zeros((1, 3)), jnp.array([z]), jnp.zeros((1, 1, 1)), jnp.zeros((1, 0, 1)), jnp.ones(1)
    )


def _hydrogenic(z: float):
    def log_abs(params, electrons, geometry):  # [n_w, 1, 3] -> [n_w]
        return -z * jnp.linalg.norm(electrons[:, 0], axis=-1)

    return log_abs


@pytest.mark.parametrize("proposal", PROPOSALS)
@pytest.mark.parametrize("z", [1.0, 8.0])
def test_proposal_samples_the_hydrogenic_density(proposal, z):
    geometry = _one_atom(z)
    log_abs = _hydrogenic(z)
    electrons = np.random.default_rng(0).normal(size=(1024, 1, 3))
    walkers = init_walkers(log_abs, None, geometry, electrons, 0.2)
    sweep = jax.jit(make_mcmc_sweep(log_abs, 10, proposal=proposal))
    key = jax.random.PRNGKey(1)
    for i in range(30):  # burn-in, adapting the step size
        walkers, _ = sweep(None, geometry, walkers, jax.random.fold_in(key, i))
    radii = []
    for i in range(60):
        walkers, acceptance = sweep(None, geometry, walkers, jax.random.fold_in(key, 100 + i))
        radii.append(np.linalg.norm(np.asarray(walkers.electrons[:, 0]), axis=-1))
    r = np.concatenate(radii)
    assert 0.3 < float(acceptance) < 0.7
    # ~60k correlated samples: the moments are resolved to well under 2 %.
    assert np.mean(r) == pytest.approx(1.5 / z, rel=0.02)
    assert np.mean(r**2) == pytest.approx(3.0 / z**2, rel=0.04)


def test_nuclear_distance_widths_follow_the_nearest_nucleus():
    nuclei = jnp.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    electrons = jnp.array([[[0.1, 0.0, 0.0], [5.0, 0.0, 0.0]]])
    d = np.asarray(harmonic_mean_distance(electrons, nuclei))[0]
    assert d[0] == pytest.approx(1.0 / np.mean([1 / 0.1, 1 / 9.9]))
    assert d[1] == pytest.approx(5.0)


def test_config_offers_the_sampler_proposals():
    field = {f.name: f for f in dataclasses.fields(McmcConfig)}["proposal"]
    assert tuple(field.metadata["choices"]) == PROPOSALS
    assert McmcConfig().proposal in PROPOSALS
