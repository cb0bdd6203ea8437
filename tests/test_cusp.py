"""Nuclear cusp and envelope exponents (hpcwf.model.envelopes): the slope of log|psi| at every
nucleus is -Z for any parameters, E_L stays bounded as an electron reaches a nucleus, the
envelope exponents start at Slater's rules and every weight of the descriptor maps has a
gradient from the first step; opposite-spin electrons meet with the exact e-e cusp (Jastrow) for
any Jastrow range."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpcwf.hamiltonian import make_local_energy
from hpcwf.model.envelopes import envelope_exponent_prior
from hpcwf.model.geometry import geometry_data
from hpcwf.model.wavefunction import JASTROW_RANGE_INIT, build_wavefunction, init_params
from hpcwf.systems.hartree_fock import run_hartree_fock
from hpcwf.systems.molecule import ELEMENTS, Molecule
from hpcwf.systems.slater_rules import slater_exponents

# Ground-state spins of the atoms H-Ne (2S = number of unpaired electrons, Hund's rule).
ATOM_SPINS = {"H": 1, "He": 0, "Li": 1, "Be": 0, "B": 1, "C": 2, "N": 3, "O": 2, "F": 1, "Ne": 0}


def _atom(symbol: str):
    mol = Molecule.create(symbol, [[symbol, 0.0, 0.0, 0.0]], spin=ATOM_SPINS[symbol])
    hf = run_hartree_fock(mol, "STO-6G")
    return mol, geometry_data(mol, hf.descriptors_up, hf.descriptors_dn, jnp.float64)


def _radial_slopes(model, params, data, electrons, radius, directions):
    """d log|psi| / dr of electron 0 at `radius` from the nucleus (at the origin), [n_dir]."""
    grad = jax.jit(jax.grad(lambda r: model.apply(params, r, data)[1]))
    out = []
    for d in directions:
        x = electrons.at[0].set(radius * d)
        out.append(float(grad(x)[0] @ d))
    return np.array(out)


@pytest.fixture(scope="module")
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("symbol", list(ATOM_SPINS))
def test_slope_of_log_psi_at_the_nucleus_is_minus_z(x64, symbol):
    """Kato's cusp: spherically averaged d log|psi|/dr -> -Z at the nucleus (T. Kato,
    Commun. Pure Appl. Math. 10, 151 (1957)), for two random
    parameter draws (the cusp is built in, not learned). Main before the envelope rework: -6.2
    for O after the default pre-training."""
    mol, data = _atom(symbol)
    z = ELEMENTS[symbol]
    model = build_wavefunction("S", "tao", 2)
    rng = np.random.default_rng(z)
    directions = rng.normal(size=(6, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    # Antipodal pairs: the spherical average cancels the linear (p-like) part of psi.
    directions = np.concatenate([directions, -directions])
    for seed in (0, 1):
        params = init_params(model, jax.random.PRNGKey(seed), data)
        electrons = jnp.asarray(rng.normal(size=(mol.n_electrons, 3)))
        slope = _radial_slopes(model, params, data, electrons, 1e-6, directions).mean()
        assert abs(slope + z) < 0.05 * z, (symbol, seed, slope)


@pytest.mark.parametrize("symbol", ["H", "Li", "O", "Ne"])
def test_local_energy_stays_bounded_as_an_electron_reaches_the_nucleus(x64, symbol):
    """Without the exact cusp E_L ~ (slope + Z) / r: 1e3 x larger at r = 1e-5 than at 1e-2."""
    mol, data = _atom(symbol)
    model = build_wavefunction("S", "tao", 2)
    params = init_params(model, jax.random.PRNGKey(0), data)
    local_energy = jax.jit(make_local_energy(lambda p, r, g: model.apply(p, r, g)[1]))
    rng = np.random.default_rng(3)
    electrons = jnp.asarray(rng.normal(size=(mol.n_electrons, 3)) * 1.5)
    d = np.array([0.48, -0.6, 0.64])
    energies = {r: float(local_energy(params, electrons.at[0].set(r * d), data)) for r in (1e-2, 1e-3, 1e-5)}
    assert all(np.isfinite(list(energies.values()))), energies
    # The electron's own -Z/r is -Z * 1e5 Ha at 1e-5 bohr; bounded E_L changes by O(Z^2) at most.
    assert abs(energies[1e-5] - energies[1e-2]) < 2.0 * ELEMENTS[symbol] ** 2, energies


def test_exponent_prior_follows_slater_rules():
    """O atom, STO-6G: the 1s-like localized orbital starts near zeta_1s = 7.70, the others
    near zeta_2sp = 2.275 (J. C. Slater, Phys. Rev. 36, 57 (1930))."""
    _, data = _atom("O")
    prior = np.asarray(envelope_exponent_prior(data.descriptors_up, data.charges, data.descriptor_exponents))
    core, valence = slater_exponents(8)
    assert (core, valence) == pytest.approx((7.70, 2.275))
    assert prior.shape == (1, 5)
    assert prior[0, 0] == pytest.approx(core, rel=0.05)  # orbitals are sorted by energy
    np.testing.assert_allclose(prior[0, 1:], valence, rtol=0.1)


def test_exponents_start_at_the_prior_and_every_map_weight_has_a_gradient():
    """H2O: alpha at initialization within 10 % of the prior; the gradient of a
    pre-training-like loss reaches every kernel of the descriptor maps (g's first layer had
    none before)."""
    mol = Molecule.create("H2O", [["O", 0, 0, 0], ["H", 1.81, 0, 0], ["H", -0.45, 1.75, 0]])
    hf = run_hartree_fock(mol, "STO-6G")
    data = geometry_data(mol, hf.descriptors_up, hf.descriptors_dn, jnp.float32)
    model = build_wavefunction("S", "tao", 2)
    params = init_params(model, jax.random.PRNGKey(0), data)
    maps = model.bind(params).orbital_map.maps_up
    _, alpha = maps(data.descriptors_up, data.nuclei, data.charges, data.descriptor_exponents)
    prior = envelope_exponent_prior(data.descriptors_up, data.charges, data.descriptor_exponents)
    ratio = np.asarray(alpha / prior[:, :, None, None])
    assert np.all(np.abs(ratio - 1.0) < 0.1), ratio
    electrons = jnp.asarray(np.random.default_rng(0).normal(size=(4, mol.n_electrons, 3)), jnp.float32)

    def loss(p):
        phi = jax.vmap(lambda r: model.apply(p, r, data, method=model.slater_matrices))(electrons)
        return jnp.mean((phi - 0.5) ** 2)

    grads = jax.grad(loss)(params)["params"]["orbital_map"]["maps_up"]
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        name = jax.tree_util.keystr(path)
        if "kernel" in name:
            assert float(jnp.max(jnp.abs(g))) > 1e-7, name


def _with_jastrow_range(params, value: float):
    inner = dict(params["params"])
    inner["jastrow_scale"] = jnp.full_like(inner["jastrow_scale"], value)
    return {**params, "params": inner}


@pytest.mark.parametrize("symbol", ["He", "O"])
def test_opposite_spin_electrons_meet_with_kato_cusp_for_any_jastrow_range(x64, symbol):
    """Electron-electron cusp: for an opposite-spin pair the spherically averaged
    d log|psi| / d r_12 -> +1/2 at coalescence (Kato 1957), and E_L stays bounded as the pair
    meets (V_ee = 1/r_12 is 1e5 Ha at 1e-5 bohr) - at the initial Jastrow range
    (JASTROW_RANGE_INIT) and at other ranges, which the training may reach."""
    mol, data = _atom(symbol)
    model = build_wavefunction("S", "tao", 2)
    params0 = init_params(model, jax.random.PRNGKey(0), data)
    np.testing.assert_allclose(params0["params"]["jastrow_scale"], JASTROW_RANGE_INIT)
    rng = np.random.default_rng(7)
    directions = rng.normal(size=(6, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    directions = np.concatenate([directions, -directions])
    electrons = jnp.asarray(rng.normal(size=(mol.n_electrons, 3)) * 1.2)
    other = mol.n_up  # the first down electron; electron 0 is up
    centre = electrons[0]
    log_psi = lambda p, r: model.apply(p, r, data)[1]  # noqa: E731
    local_energy = jax.jit(make_local_energy(lambda p, r, g: model.apply(p, r, g)[1]))
    for a in (JASTROW_RANGE_INIT, 0.05, 2.0):
        params = _with_jastrow_range(params0, a)
        grad = jax.jit(jax.grad(log_psi, argnums=1))
        slopes = [
            float(grad(params, electrons.at[other].set(centre + 1e-6 * d))[other] @ d) for d in directions
        ]
        assert abs(np.mean(slopes) - 0.5) < 0.025, (symbol, a, np.mean(slopes))
        d = jnp.asarray(directions[0])
        energies = {
            r: float(local_energy(params, electrons.at[other].set(centre + r * d), data))
            for r in (1e-2, 1e-3, 1e-5)
        }
        assert all(np.isfinite(list(energies.values()))), energies
        assert abs(energies[1e-5] - energies[1e-2]) < 50.0, (symbol, a, energies)
