"""Symmetries of the ansatz: antisymmetry, HF-phase equivariance, odd/even maps, size independence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpcwf.model.geometry import GeometryData
from hpcwf.model.orbitals import ContextGNN, DescriptorMaps
from hpcwf.model.registry import ORBITAL_TYPES, molecule_shape, orbital_map_type
from hpcwf.model.wavefunction import MODEL_SIZES, build_wavefunction, count_parameters, init_params
from hpcwf.systems.hartree_fock import DEFAULT_BASIS, DEFAULT_ELEMENTS, descriptor_exponents
from hpcwf.systems.molecule import Molecule
from hpcwf.types import OrbitalMap, OrbitalMapType

D_DESC = 42


def random_geometry(n_atoms, n_up, n_dn, seed=0):
    rng = np.random.default_rng(seed)
    return GeometryData(
        nuclei=jnp.asarray(rng.normal(size=(n_atoms, 3)) * 1.5, jnp.float32),
        charges=jnp.asarray(rng.integers(1, 4, n_atoms), jnp.float32),
        descriptors_up=jnp.asarray(rng.normal(size=(n_atoms, n_up, D_DESC)), jnp.float32),
        descriptors_dn=jnp.asarray(rng.normal(size=(n_atoms, n_dn, D_DESC)), jnp.float32),
        descriptor_exponents=jnp.asarray(descriptor_exponents(DEFAULT_BASIS, DEFAULT_ELEMENTS), jnp.float32),
    )


@pytest.fixture(scope="module")
def tao():
    model = build_wavefunction("S", "tao", 2)
    geometry = random_geometry(3, 3, 2)
    params = init_params(model, jax.random.PRNGKey(1), geometry)
    electrons = jax.random.normal(jax.random.PRNGKey(2), (5, 3)) * 1.5
    return model, params, geometry, electrons


def test_same_spin_exchange_flips_sign(tao):
    model, params, geometry, r = tao
    sign, log_abs = model.apply(params, r, geometry)
    for perm in ([1, 0, 2, 3, 4], [0, 2, 1, 3, 4], [0, 1, 2, 4, 3]):
        sign_p, log_abs_p = model.apply(params, r[jnp.array(perm)], geometry)
        assert sign_p == -sign
        np.testing.assert_allclose(log_abs_p, log_abs, rtol=1e-5, atol=1e-5)


def test_hf_orbital_sign_flip_flips_psi(tao):
    model, params, geometry, r = tao
    sign, log_abs = model.apply(params, r, geometry)
    for spin, k in (("descriptors_up", 1), ("descriptors_dn", 0)):
        flipped = geometry.replace(**{spin: getattr(geometry, spin).at[:, k].multiply(-1.0)})
        sign_f, log_abs_f = model.apply(params, r, flipped)
        assert sign_f == -sign
        np.testing.assert_allclose(log_abs_f, log_abs, rtol=1e-6, atol=1e-6)


def test_orbital_permutation_changes_nothing_physical(tao):
    model, params, geometry, r = tao
    _, log_abs = model.apply(params, r, geometry)
    permuted = geometry.replace(descriptors_up=geometry.descriptors_up[:, jnp.array([2, 0, 1])])
    _, log_abs_p = model.apply(params, r, permuted)
    np.testing.assert_allclose(log_abs_p, log_abs, rtol=1e-5, atol=1e-5)


def test_gnn_odd_f_odd_g_even_positive():
    geometry = random_geometry(3, 2, 2)
    c = geometry.descriptors_up
    gnn = ContextGNN(width=16, n_iterations=2)
    p = gnn.init(jax.random.PRNGKey(0), c, geometry.nuclei)
    np.testing.assert_allclose(
        gnn.apply(p, -c, geometry.nuclei), -gnn.apply(p, c, geometry.nuclei), atol=1e-6
    )
    maps = DescriptorMaps(gnn_width=16, gnn_iterations=2, f_widths=(32, 32), g_widths=(16,), n_det=2, d_emb=8)
    atoms = (geometry.nuclei, geometry.charges, geometry.descriptor_exponents)
    p = maps.init(jax.random.PRNGKey(0), c, *atoms)
    f_pos, a_pos = maps.apply(p, c, *atoms)
    f_neg, a_neg = maps.apply(p, -c, *atoms)
    np.testing.assert_allclose(f_neg, -f_pos, atol=1e-6)
    np.testing.assert_allclose(a_neg, a_pos, atol=1e-6)
    assert jnp.all(a_pos > 0)
    assert float(jnp.max(jnp.abs(f_pos))) > 1e-3  # not trivially zero


def test_parameter_count_independent_of_molecule():
    """Same parameter count for H2, LiH and H2O with their real HF descriptors."""
    from hpcwf.model.geometry import geometry_data
    from hpcwf.systems.hartree_fock import run_hartree_fock
    from hpcwf.systems.molecule import Molecule

    molecules = [
        Molecule.create("H2", [["H", 0, 0, 0], ["H", 1.4, 0, 0]]),
        Molecule.create("LiH", [["Li", 0, 0, 0], ["H", 3.015, 0, 0]]),
        Molecule.create("H2O", [["O", 0, 0, 0], ["H", 1.81, 0, 0], ["H", -0.45, 1.75, 0]]),
    ]
    model = build_wavefunction("S", "tao", 4)
    counts = set()
    for mol in molecules:
        hf = run_hartree_fock(mol)
        geometry = geometry_data(mol, hf.descriptors_up, hf.descriptors_dn)
        params = init_params(model, jax.random.PRNGKey(0), geometry)
        counts.add(count_parameters(params))
        electrons = jax.random.normal(jax.random.PRNGKey(1), (mol.n_electrons, 3))
        assert jnp.isfinite(model.apply(params, electrons, geometry)[1])
    assert len(counts) == 1, counts


def test_backflow_antisymmetric():
    geometry = random_geometry(2, 2, 2)
    model = build_wavefunction("S", "backflow", 2, molecule_shape=(4, 2))
    params = init_params(model, jax.random.PRNGKey(0), geometry)
    r = jax.random.normal(jax.random.PRNGKey(3), (4, 3))
    sign, log_abs = model.apply(params, r, geometry)
    sign_p, log_abs_p = model.apply(params, r[jnp.array([0, 1, 3, 2])], geometry)
    assert sign_p == -sign
    np.testing.assert_allclose(log_abs_p, log_abs, rtol=1e-5)


def test_large_model_has_paper_size():
    model = build_wavefunction("L", "tao", 4)
    n = count_parameters(init_params(model, jax.random.PRNGKey(0), random_geometry(2, 1, 1)))
    assert 1.5e6 < n < 2.5e6, n


@pytest.mark.parametrize("name", sorted(ORBITAL_TYPES))
def test_every_registered_orbital_type_is_an_orbital_map(name):
    """Each registry entry builds through its `create` and maps (h, electrons, geometry) to
    Slater matrices [n_det, n_el, n_el]; transferable ones take any molecule, the others ask
    for one shape (shapes only, ~1 s each)."""
    cls = orbital_map_type(name)
    assert isinstance(cls, OrbitalMapType)
    size, n_det = MODEL_SIZES["S"], 3
    shape = None if ORBITAL_TYPES[name].transferable else (5, 3)
    orbital_map = cls.create(size, n_det, shape)
    assert isinstance(orbital_map, OrbitalMap)
    h = jnp.zeros((5, size.width_one), jnp.float32)
    r = jnp.zeros((5, 3), jnp.float32)
    geometry = random_geometry(3, 3, 2)  # 5 electrons, 3 atoms
    phi, _ = jax.eval_shape(orbital_map.init_with_output, jax.random.PRNGKey(0), h, r, geometry)
    assert phi.shape == (n_det, 5, 5)

    h2 = Molecule.create("H2", [["H", 0, 0, 0], ["H", 0, 0, 1.4]])
    lih = Molecule.create("LiH", [["Li", 0, 0, 0], ["H", 0, 0, 3.015]])
    if ORBITAL_TYPES[name].transferable:
        assert molecule_shape(name, [h2, lih]) is None
    else:
        assert molecule_shape(name, [h2, h2]) == (2, 2)
        with pytest.raises(ValueError, match="same n_up, n_dn, n_atoms"):
            molecule_shape(name, [h2, lih])
        with pytest.raises(ValueError, match="molecule shape"):
            cls.create(size, n_det, None)


def test_layers_reproduce_flax_dense_and_embed():
    """hpcwf.model.layers.Dense / Embed are flax's nn.Dense / nn.Embed written for kfac-jax's
    graph matcher: same parameter names, shapes, dtypes and initial values for the same key,
    the same outputs (float32 parameters also under x64), so parameter files stay valid."""
    from flax import linen as nn

    from hpcwf.model.layers import Dense, Embed

    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5)), jnp.float32)
    labels = jnp.asarray([[0, 3], [10, 1]])
    pairs = [
        (Dense(7), nn.Dense(7), x),
        (Dense(7, use_bias=False), nn.Dense(7, use_bias=False), x),
        (Embed(11, 4), nn.Embed(11, 4), labels),
    ]
    for x64 in (False, True):
        with jax.enable_x64(x64):
            for ours, theirs, inputs in pairs:
                inputs = inputs.astype(jnp.float64) if x64 and inputs.dtype == jnp.float32 else inputs
                p_ours = ours.init(jax.random.PRNGKey(3), inputs)
                p_theirs = theirs.init(jax.random.PRNGKey(3), inputs)
                assert jax.tree.structure(p_ours) == jax.tree.structure(p_theirs)
                for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_theirs), strict=True):
                    assert a.dtype == b.dtype == jnp.float32 and a.shape == b.shape
                    np.testing.assert_array_equal(a, b)
                np.testing.assert_allclose(
                    ours.apply(p_ours, inputs), theirs.apply(p_theirs, inputs), rtol=1e-6, atol=1e-6
                )
