"""Metropolis-Hastings proposals (hpcwf.mcmc) sample a known density exactly: the hydrogen-like
1s density |psi|^2 = Z^3/pi exp(-2 Z r), whose moments are <r> = 3 / (2Z) and
<r^2> = 3 / Z^2 (e.g. Bransden & Joachain, Physics of Atoms and Molecules, 3.2)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpcwf.io.config import McmcConfig
from hpcwf.mcmc import (
    PROPOSALS,
    adapt_step_size,
    harmonic_mean_distance,
    init_walkers,
    make_mcmc_moves,
    make_mcmc_sweep,
)
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


@pytest.mark.parametrize("proposal", PROPOSALS)
def test_a_batch_split_over_ranks_moves_as_the_whole_batch(proposal):
    """Random numbers are drawn per walker by its index in the batch (`walker_keys`), so two
    halves moved apart with their first_walker, and their step size adapted from the mean of
    their acceptances (what the ranks of a WalkerGroup do), equal the whole batch moved at once:
    sharing a geometry over ranks changes no sample."""
    geometry = _one_atom(3.0)
    log_abs = _hydrogenic(3.0)
    electrons = np.random.default_rng(0).normal(size=(12, 1, 3))
    whole = init_walkers(log_abs, None, geometry, electrons, 0.3)
    halves = [init_walkers(log_abs, None, geometry, electrons[i : i + 6], 0.3) for i in (0, 6)]
    moves = jax.jit(make_mcmc_moves(log_abs, 5, proposal=proposal))
    for i in range(3):
        key = jax.random.PRNGKey(i)
        whole, accepted = moves(None, geometry, whole, key)
        whole = adapt_step_size(whole, accepted, 0.5)
        moved = [moves(None, geometry, h, key, first) for h, first in zip(halves, (0, 6), strict=True)]
        mean = np.mean([float(a) for _, a in moved])
        halves = [adapt_step_size(h, mean, 0.5) for h, _ in moved]
        np.testing.assert_allclose(float(accepted), mean, rtol=1e-6)
    joined = np.concatenate([np.asarray(h.electrons) for h in halves])
    np.testing.assert_allclose(np.asarray(whole.electrons), joined, rtol=1e-6, atol=1e-6)
    assert not np.allclose(joined, electrons)  # they did move
    np.testing.assert_allclose(float(whole.step_size), float(halves[1].step_size), rtol=1e-6)
    # Halves that both started at walker 0 would repeat each other's random numbers.
    alone, _ = moves(None, geometry, init_walkers(log_abs, None, geometry, electrons[6:], 0.3), key)
    assert not np.allclose(np.asarray(alone.electrons), np.asarray(halves[1].electrons))


def test_walker_shares_join_to_the_batch_and_split_back():
    from hpcwf.training.vmc import join_walker_shares, new_geometry_state, walker_share

    log_abs = _hydrogenic(1.0)
    electrons = np.random.default_rng(1).normal(size=(8, 1, 3)).astype(np.float32)
    state = jax.device_get(new_geometry_state(init_walkers(log_abs, None, _one_atom(1.0), electrons, 0.2)))
    shares = [walker_share(state, first, 4) for first in (0, 4)]
    assert shares[1].walkers.electrons.shape == (4, 1, 3) and float(
        shares[1].walkers.step_size
    ) == pytest.approx(0.2)
    joined = join_walker_shares(shares)
    for a, b in zip(jax.tree.leaves(joined), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), strict=False)
