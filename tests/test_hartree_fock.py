"""Hartree-Fock orbitals, Boys localization conventions, descriptors, Gaussian basis, HF cache."""

import dataclasses

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pyscf import gto, lo, scf

from hpcwf.io.hf_cache import HartreeFockCache
from hpcwf.systems.gaussian_basis import basis_from_pyscf, evaluate_aos, evaluate_orbitals
from hpcwf.systems.hartree_fock import (
    DEFAULT_ELEMENTS,
    SIGN_SUM_TOL,
    _ao_frame_transform,
    _boys_hessian_min,
    build_pyscf_molecule,
    canonical_frame,
    descriptor_layout,
    descriptor_size,
    run_hartree_fock,
)
from hpcwf.systems.molecule import Molecule

H2 = Molecule.create("H2", [["H", 0, 0, 0], ["H", 0, 0, 1.4]])
LIH = Molecule.create("LiH", [["Li", 0, 0, 0], ["H", 0, 0, 3.015]])
H2O = Molecule.create("H2O", [["O", 0, 0, 0], ["H", 0, 1.43, 1.1], ["H", 0, -1.43, 1.1]])
# Symmetric CH4: triply degenerate canonical orbitals, the hard case for determinism.
CH4 = Molecule.create(
    "CH4",
    [
        ["C", 0, 0, 0],
        ["H", 1.18, 1.18, 1.18],
        ["H", -1.18, -1.18, 1.18],
        ["H", -1.18, 1.18, -1.18],
        ["H", 1.18, -1.18, -1.18],
    ],
)
H_ATOM = Molecule.create("H", [["H", 0.1, -0.2, 0.3]])
LIH_CATION = Molecule.create("LiH+", [["Li", 0, 0, 0], ["H", 0, 0, 3.015]], charge=1)


@pytest.fixture
def x64():
    """float64 JAX inside one test, restored afterwards."""
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


@pytest.fixture(scope="module")
def hf_h2o():
    return run_hartree_fock(H2O)


@pytest.fixture(scope="module")
def hf_lih_cation():
    return run_hartree_fock(LIH_CATION)


def test_descriptor_layout():
    elements = ("H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne")
    layout = descriptor_layout("STO-6G", elements)
    assert layout["H"] == (0, 1) and layout["He"] == (1, 1) and layout["Li"] == (2, 5)
    assert layout["Ne"] == (37, 5)
    assert descriptor_size("STO-6G", elements) == 42
    assert descriptor_size("STO-6G", ("H", "C", "N", "O")) == 16
    with pytest.raises(ValueError, match="not in the descriptor element list"):
        run_hartree_fock(LIH, elements=("H", "C"))


def test_h2_energy_matches_pyscf():
    res = run_hartree_fock(H2)
    mol = gto.M(atom="H 0 0 0; H 0 0 1.4", unit="Bohr", basis="STO-6G", cart=True, verbose=0)
    mf = scf.RHF(mol)
    mf.conv_tol = 1e-12
    ref = mf.kernel()
    assert res.method == "RHF"
    assert abs(res.energy - ref) < 1e-9
    # RHF/STO-6G of H2 at 1.4 bohr (STO-3G would give -1.1167).
    assert abs(res.energy - (-1.12532)) < 1e-4
    np.testing.assert_array_equal(res.mo_coeff_up, res.mo_coeff_dn)


def test_lih_rhf_and_uhf_shapes(hf_lih_cation):
    res = run_hartree_fock(LIH)
    assert res.method == "RHF"
    assert res.mo_coeff_up.shape == res.mo_coeff_dn.shape == (6, 2)
    assert res.descriptors_up.shape == res.descriptors_dn.shape == (2, 2, 42)
    np.testing.assert_array_equal(res.descriptors_up, res.descriptors_dn)
    assert hf_lih_cation.method == "UHF"
    assert hf_lih_cation.mo_coeff_up.shape == (6, 2) and hf_lih_cation.mo_coeff_dn.shape == (6, 1)
    assert hf_lih_cation.descriptors_up.shape == (2, 2, 42)
    assert hf_lih_cation.descriptors_dn.shape == (2, 1, 42)
    triplet = run_hartree_fock(dataclasses.replace(LIH, spin=2))
    assert triplet.method == "UHF" and triplet.descriptors_dn.shape == (2, 1, 42)
    assert triplet.descriptors_up.shape == (2, 3, 42)


def test_hydrogen_atom_has_empty_down_arrays(tmp_path):
    res = run_hartree_fock(H_ATOM)
    assert res.method == "UHF" and abs(res.energy - (-0.4710)) < 1e-3
    assert res.descriptors_up.shape == (1, 1, 42) and res.descriptors_dn.shape == (1, 0, 42)
    assert res.mo_coeff_dn.shape == (1, 0) and res.orbital_energies_dn.shape == (0,)
    cache = HartreeFockCache(tmp_path / "hf.h5")
    cache.get_or_compute(H_ATOM)
    again = HartreeFockCache(tmp_path / "hf.h5").get_or_compute(H_ATOM)
    assert again.descriptors_dn.shape == (1, 0, 42)
    np.testing.assert_array_equal(again.descriptors_up, res.descriptors_up)


@pytest.mark.parametrize(
    "basis, atom",
    [
        ("STO-6G", "O 0 0 0; H 0 1.43 1.1; H 0 -1.43 1.1"),
        ("6-31G**", "N 0.1 0 0; H 0 1.77 -0.7; H 1.53 -0.885 -0.7"),  # d on N, p on H
    ],
)
def test_evaluate_aos_matches_pyscf(x64, basis, atom):
    mol = gto.M(atom=atom, unit="Bohr", basis=basis, cart=True, spin=None, verbose=0)
    basis_jax = basis_from_pyscf(mol)
    r = np.random.default_rng(0).normal(scale=1.5, size=(40, 3))
    r = np.concatenate([r, mol.atom_coords()])  # include the nuclei themselves
    ours = np.asarray(jax.jit(evaluate_aos)(basis_jax, jnp.asarray(r)))
    ref = mol.eval_gto("GTOval_cart", r)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-10 * np.abs(ref).max())


@pytest.mark.parametrize("which", ["h2o", "lih_cation"])
def test_localized_orbitals_orthonormal_and_span(which, hf_h2o, hf_lih_cation):
    molecule, res = {"h2o": (H2O, hf_h2o), "lih_cation": (LIH_CATION, hf_lih_cation)}[which]
    mol = build_pyscf_molecule(molecule)
    s = mol.intor_symmetric("int1e_ovlp")
    mf = scf.RHF(mol) if res.method == "RHF" else scf.UHF(mol)
    mf.conv_tol = 1e-10
    mf.kernel()
    if res.method == "RHF":
        canon = [mf.mo_coeff[:, mf.mo_occ > 0]] * 2
    else:
        canon = [mf.mo_coeff[i][:, mf.mo_occ[i] > 0] for i in (0, 1)]
    for c, c0 in zip((res.mo_coeff_up, res.mo_coeff_dn), canon, strict=True):
        np.testing.assert_allclose(c.T @ s @ c, np.eye(c.shape[1]), atol=1e-10)
        np.testing.assert_allclose(c @ c.T, c0 @ c0.T, atol=1e-6)  # same occupied space
    for e in (res.orbital_energies_up, res.orbital_energies_dn):
        assert np.all(np.diff(e) > -1e-4)  # sorted up to the tie tolerance


def test_boys_reaches_a_minimum_not_a_saddle(hf_h2o):
    """From canonical orbitals pyscf's Boys stops at a symmetric saddle (sigma/pi lone pairs)."""
    loc = lo.Boys(build_pyscf_molecule(H2O), hf_h2o.mo_coeff_up)
    assert _boys_hessian_min(loc)[0] > -1e-5


def test_descriptors_rebuild_coefficients(hf_h2o, hf_lih_cation):
    for molecule, res in ((H2O, hf_h2o), (LIH_CATION, hf_lih_cation)):
        mol = build_pyscf_molecule(molecule)
        layout = descriptor_layout("STO-6G", DEFAULT_ELEMENTS)
        pairs = ((res.descriptors_up, res.mo_coeff_up), (res.descriptors_dn, res.mo_coeff_dn))
        for desc, c in pairs:
            rebuilt = np.zeros_like(c)
            for I, (_, _, a0, a1) in enumerate(mol.aoslice_by_atom()):
                off, size = layout[molecule.symbols[I]]
                rebuilt[a0:a1] = desc[I, :, off : off + size].T
                mask = np.ones(desc.shape[-1], bool)
                mask[off : off + size] = False
                assert np.all(desc[I][:, mask] == 0)
            np.testing.assert_array_equal(rebuilt, c)


def test_deterministic_and_sign_convention():
    """Same result twice; the sign convention holds in the canonical frame, where it is applied."""
    for molecule in (H2O, CH4):
        a, b = run_hartree_fock(molecule), run_hartree_fock(molecule)
        np.testing.assert_array_equal(a.descriptors_up, b.descriptors_up)
        np.testing.assert_array_equal(a.descriptors_dn, b.descriptors_dn)
        frame = canonical_frame(molecule)
        canonical = dataclasses.replace(
            molecule, symbols=tuple(molecule.symbols[i] for i in frame.order), coords=frame.coords
        )
        mol_can, mol = build_pyscf_molecule(canonical), build_pyscf_molecule(molecule)
        to_input = _ao_frame_transform(mol_can, mol, frame.axes, frame.order)
        for c in (a.mo_coeff_up, a.mo_coeff_dn):
            c = np.linalg.solve(to_input, c)
            sums = c.sum(axis=0)
            for k, total in enumerate(sums):
                if abs(total) >= SIGN_SUM_TOL:
                    assert total > 0
                else:
                    assert c[np.argmax(np.abs(c[:, k])), k] > 0


def test_cache_reuses_results(tmp_path, hf_h2o):
    calls = []

    def fake_compute(molecule, basis, elements):
        calls.append(molecule.name)
        return hf_h2o

    path = tmp_path / "sub" / "hf.h5"
    cache = HartreeFockCache(path, compute_fn=fake_compute)
    first = cache.get_or_compute(H2O, "STO-6G")
    second = cache.get_or_compute(H2O, "STO-6G")
    third = HartreeFockCache(path, compute_fn=fake_compute).get_or_compute(H2O, "STO-6G")
    assert calls == ["H2O"] and cache.n_computed == 1
    for res in (second, third):
        assert res.energy == first.energy and res.method == "RHF"
        for f in dataclasses.fields(res):
            np.testing.assert_array_equal(getattr(res, f.name), getattr(hf_h2o, f.name))
    # A different basis or geometry is a different entry.
    cache.get_or_compute(dataclasses.replace(H2O, coords=H2O.coords + 1e-6), "STO-6G")
    assert len(calls) == 2
    with h5py.File(path, "r") as f:
        assert len(f) == 2
        assert all(g.attrs["name"] == "H2O" for g in f.values())
    b = third.basis()
    assert b.centers.shape == (7, 3) and b.powers.dtype == np.int32


def test_cache_does_not_reuse_entries_of_the_old_format(tmp_path, hf_h2o, monkeypatch):
    """Format 1 (before the canonical frame) stored orbitals that depend on position and atom
    order; such entries must be recomputed, not reused."""
    import hpcwf.io.hf_cache as hf_cache

    calls = []

    def fake_compute(molecule, basis, elements):
        calls.append(1)
        return hf_h2o

    path = tmp_path / "hf.h5"
    current = hf_cache.CACHE_FORMAT_VERSION
    monkeypatch.setattr(hf_cache, "CACHE_FORMAT_VERSION", 1)
    HartreeFockCache(path, compute_fn=fake_compute).get_or_compute(H2O)
    monkeypatch.setattr(hf_cache, "CACHE_FORMAT_VERSION", current)
    assert HartreeFockCache(path).lookup(H2O) is None
    HartreeFockCache(path, compute_fn=fake_compute).get_or_compute(H2O)
    assert len(calls) == 2


def test_cache_recomputes_incomplete_group(tmp_path, hf_h2o):
    calls = []

    def fake_compute(molecule, basis, elements):
        calls.append(1)
        return hf_h2o

    path = tmp_path / "hf.h5"
    HartreeFockCache(path, compute_fn=fake_compute).get_or_compute(H2O)
    with h5py.File(path, "a") as f:  # simulate a crash between datasets
        (group,) = f.values()
        del group["descriptors_dn"]
    again = HartreeFockCache(path, compute_fn=fake_compute).get_or_compute(H2O)
    assert len(calls) == 2
    np.testing.assert_array_equal(again.descriptors_dn, hf_h2o.descriptors_dn)
    with h5py.File(path, "a") as f:  # never marked complete
        (group,) = f.values()
        del group.attrs["complete"]
    HartreeFockCache(path, compute_fn=fake_compute).get_or_compute(H2O)
    assert len(calls) == 3
    HartreeFockCache(path, compute_fn=fake_compute).get_or_compute(H2O)
    assert len(calls) == 3

    path.write_bytes(b"not an hdf5 file")
    with pytest.warns(UserWarning, match="not an HDF5 file"):
        HartreeFockCache(path, compute_fn=fake_compute).get_or_compute(H2O)
    assert len(calls) == 4 and h5py.is_hdf5(path)
    assert len(list(tmp_path.glob("hf.h5.corrupt-*"))) == 1


def test_orbital_gradient_finite_at_nucleus(hf_h2o):
    # As the workflow does: float arrays to float32 (default JAX), powers stay int32.
    basis32 = jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, jnp.float32) if x.dtype.kind == "f" else x, hf_h2o.basis()
    )
    mo = jnp.asarray(hf_h2o.mo_coeff_up, jnp.float32)
    for b, c in ((hf_h2o.basis(), hf_h2o.mo_coeff_up), (basis32, mo)):
        nucleus = jnp.asarray(H2O.coords[0], jnp.float32)
        jac = jax.jacfwd(lambda r, b=b, c=c: evaluate_orbitals(b, c, r))(nucleus)
        grad = jax.grad(lambda r, b=b, c=c: jnp.sum(evaluate_orbitals(b, c, r) ** 2))(nucleus)
        assert jac.shape == (5, 3)
        assert bool(jnp.all(jnp.isfinite(jac))) and bool(jnp.all(jnp.isfinite(grad)))
    # Batched evaluation: [..., 3] -> [..., n_orb].
    r = jnp.zeros((4, 6, 3), jnp.float32)
    assert evaluate_orbitals(basis32, mo, r).shape == (4, 6, 5)


def test_ao_gradient_matches_finite_differences_at_nucleus(x64):
    """At a nucleus the s AOs are flat and the p AOs have slope = their prefactor: no NaN tricks
    that silently zero a true gradient."""
    mol = gto.M(
        atom="O 0 0 0; H 0 1.43 1.1; H 0 -1.43 1.1",
        unit="Bohr",
        basis="6-31G**",
        cart=True,
        verbose=0,
    )
    basis = basis_from_pyscf(mol)
    nucleus = jnp.asarray(mol.atom_coords()[0])
    jac = np.asarray(jax.jacfwd(lambda r: evaluate_aos(basis, r))(nucleus))  # [n_ao, 3]
    h = 1e-5
    fd = np.stack(
        [
            (
                mol.eval_gto("GTOval_cart", (np.asarray(nucleus) + h * e)[None])[0]
                - mol.eval_gto("GTOval_cart", (np.asarray(nucleus) - h * e)[None])[0]
            )
            / (2 * h)
            for e in np.eye(3)
        ],
        axis=1,
    )
    np.testing.assert_allclose(jac, fd, atol=1e-6 * np.abs(fd).max())
