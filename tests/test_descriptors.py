"""Localized orbitals and descriptors depend only on the molecule: invariant under translation,
equivariant under re-listing the atoms, covariant under rotation and reflection (up to a symmetry
operation of the nuclei for symmetric molecules, which is all that is possible).

Cost: about 30 small STO-6G HF calculations (plus one 6-31G*), ~15 s in all.
"""

import dataclasses

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from hpcwf.systems.hartree_fock import (
    DEFAULT_ELEMENTS,
    _ao_frame_transform,
    _localize_sort_sign,
    build_pyscf_molecule,
    canonical_frame,
    descriptor_layout,
    run_hartree_fock,
)
from hpcwf.systems.molecule import Molecule

# Standard orientations; every test rotates them by ORIENT first, so that no input axis is special.
_R6 = [(np.cos(k * np.pi / 3), np.sin(k * np.pi / 3)) for k in range(6)]
GEOMETRIES = {
    "N2": [["N", 0, 0, -1.034], ["N", 0, 0, 1.034]],
    "C2H2": [["C", 0, 0, -1.137], ["C", 0, 0, 1.137], ["H", 0, 0, -3.141], ["H", 0, 0, 3.141]],
    "CO2": [["O", 0, 0, -2.196], ["C", 0, 0, 0], ["O", 0, 0, 2.196]],
    "CH4": [["C", 0, 0, 0]]
    + [["H", *(1.18 * np.array(s))] for s in ((1, 1, 1), (-1, -1, 1), (-1, 1, -1), (1, -1, -1))],
    # Planar H6 ring (D6h): two equivalent Kekule-like sets of three localized bonds.
    "H6": [["H", 1.8 * c, 1.8 * s, 0.0] for c, s in _R6],
    "C6H6": [["C", 2.64 * c, 2.64 * s, 0.0] for c, s in _R6]
    + [["H", 4.69 * c, 4.69 * s, 0.0] for c, s in _R6],
    # A radical with an open pi shell: its UHF solution is not axially symmetric.
    "OH": [["O", 0, 0, -0.915], ["H", 0, 0, 0.915]],
    # Hydroxylamine, distorted: no symmetry at all.
    "generic": [
        ["N", 0.0, 0.0, 0.0],
        ["O", 2.70, 0.12, -0.05],
        ["H", -0.55, 1.72, 0.31],
        ["H", -0.62, -0.81, 1.55],
        ["H", 3.05, 1.02, 1.33],
    ],
}
ORIENT = Rotation.from_rotvec([0.3, -1.1, 0.7]).as_matrix()
ROTATION = Rotation.from_rotvec([1.9, 0.4, -0.8]).as_matrix()
SHIFT = np.array([0.45, -1.3, 2.2])  # bohr
PERMUTATION_SEED = 7

_results: dict = {}


def molecule(name: str, coords_map=lambda x: x, order=None) -> Molecule:
    atoms = GEOMETRIES[name]
    xyz = coords_map(np.array([a[1:] for a in atoms], dtype=float) @ ORIENT.T)
    order = range(len(atoms)) if order is None else order
    return Molecule.create(name, [[atoms[i][0], *map(float, xyz[i])] for i in order])


def hf(mol: Molecule, basis: str = "STO-6G"):
    """run_hartree_fock, memoized within this module (the base geometries serve several tests)."""
    key = (mol.symbols, mol.coords.tobytes(), mol.charge, mol.spin, basis)
    if key not in _results:
        _results[key] = run_hartree_fock(mol, basis)
    return _results[key]


def permutation(n: int) -> np.ndarray:
    """A fixed permutation of n atoms that moves the first one."""
    p = np.random.default_rng(PERMUTATION_SEED).permutation(n)
    return p if p[0] != 0 else np.roll(p, 1)


def centroids(mol: Molecule, c: np.ndarray, basis: str) -> np.ndarray:
    """Orbital centroids <phi_k| r |phi_k> in bohr, [n_orb, 3] (pyscf integrals)."""
    m = build_pyscf_molecule(mol, basis)
    with m.with_common_origin((0.0, 0.0, 0.0)):
        r = m.intor_symmetric("int1e_r", comp=3)
    return np.einsum("ak,xab,bk->kx", c, r, c)


def orbital_values(mol: Molecule, c: np.ndarray, points: np.ndarray, basis: str) -> np.ndarray:
    return build_pyscf_molecule(mol, basis).eval_gto("GTOval_cart", points) @ c


def charge_centre(mol: Molecule) -> np.ndarray:
    return mol.charges @ mol.coords / mol.charges.sum()


ALL = ["N2", "C2H2", "CO2", "CH4", "H6", "C6H6", "generic"]


@pytest.mark.parametrize("name", ALL)
def test_canonical_frame_ignores_position_order_and_orientation(name):
    base = canonical_frame(molecule(name))
    n = len(GEOMETRIES[name])
    for other in (
        molecule(name, lambda x: x + SHIFT),
        molecule(name, order=permutation(n)),
        molecule(name, lambda x: x @ ROTATION.T),
    ):
        frame = canonical_frame(other)
        np.testing.assert_array_equal(frame.coords, base.coords)
        assert frame.linear == (name in ("N2", "C2H2", "CO2"))
        # axes @ (x - origin) reproduces the canonical coordinates of every atom
        rel = (other.coords - frame.origin)[frame.order]
        np.testing.assert_allclose(rel @ frame.axes.T, frame.coords, atol=1e-10)
        np.testing.assert_allclose(frame.axes @ frame.axes.T, np.eye(3), atol=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_translation_invariant(name):
    """The reported case: a rigidly shifted molecule must give the same network input."""
    a, b = hf(molecule(name)), hf(molecule(name, lambda x: x + SHIFT))
    np.testing.assert_allclose(b.descriptors_up, a.descriptors_up, rtol=0, atol=1e-10)
    np.testing.assert_allclose(b.descriptors_dn, a.descriptors_dn, rtol=0, atol=1e-10)
    np.testing.assert_allclose(b.orbital_energies_up, a.orbital_energies_up, rtol=0, atol=1e-10)
    assert abs(a.energy - b.energy) < 1e-8


@pytest.mark.parametrize("name", ALL)
def test_atom_order_equivariant(name):
    """Re-listing the atoms permutes the atom axis of the descriptors and nothing else: orbital
    order and signs stay, for symmetric molecules too."""
    p = permutation(len(GEOMETRIES[name]))
    a, b = hf(molecule(name)), hf(molecule(name, order=p))
    np.testing.assert_allclose(b.descriptors_up, a.descriptors_up[p], rtol=0, atol=1e-10)
    np.testing.assert_allclose(b.descriptors_dn, a.descriptors_dn[p], rtol=0, atol=1e-10)
    np.testing.assert_allclose(b.orbital_energies_up, a.orbital_energies_up, rtol=0, atol=1e-10)


def _rotate_block(block: np.ndarray, powers: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Descriptor block of one atom [n_orb, n_ao_atom] under the linear map m of space: s entries
    stay, each (px, py, pz) triple is multiplied by m."""
    out = block.copy()
    order = np.abs(powers).sum(axis=1)
    assert np.all(order <= 1), "only s and p shells here"
    for i in np.nonzero((powers == (1, 0, 0)).all(axis=1))[0]:
        assert (powers[i : i + 3] == np.eye(3, dtype=int)).all()
        out[:, i : i + 3] = block[:, i : i + 3] @ m.T
    return out


def _symmetry_map(mol: Molecule, s: np.ndarray) -> np.ndarray:
    """pi with S (X_I - C) = X_pi(I) - C, or an assertion error if S is no symmetry of the nuclei."""
    rel = mol.coords - charge_centre(mol)
    dist = np.linalg.norm((rel @ s.T)[:, None, :] - rel[None], axis=-1)
    pi = np.argmin(dist, axis=1)
    assert np.sort(pi).tolist() == list(range(mol.n_atoms)), "S is no symmetry of the nuclei"
    assert dist[np.arange(mol.n_atoms), pi].max() < 1e-6, "S is no symmetry of the nuclei"
    assert [mol.symbols[j] for j in pi] == list(mol.symbols)
    return pi


@pytest.mark.parametrize(
    "name, basis, improper",
    [(n, "STO-6G", False) for n in [*ALL, "OH"]]
    + [("generic", "STO-6G", True), ("generic", "6-31G*", False)],
)
def test_rotation_covariant(name, basis, improper):
    """Rotating (or reflecting) and shifting the molecule maps orbital k onto orbital k moved
    rigidly by g(x) = C' + R S (x - C), same order, same sign; S = 1 for the generic molecule,
    a symmetry operation of the nuclei otherwise (determined here from the orbital centroids,
    which pyscf's integral screening, precision 1e-8, limits to ~1e-9: hence 1e-8 here)."""
    rot = ROTATION @ np.diag([1.0, 1.0, -1.0]) if improper else ROTATION
    mol_a, mol_b = molecule(name), molecule(name, lambda x: x @ rot.T + SHIFT)
    a, b = hf(mol_a, basis), hf(mol_b, basis)
    np.testing.assert_allclose(b.orbital_energies_up, a.orbital_energies_up, rtol=0, atol=1e-10)
    ca, cb = charge_centre(mol_a), charge_centre(mol_b)
    for c_a, c_b, d_a, d_b in (
        (a.mo_coeff_up, b.mo_coeff_up, a.descriptors_up, b.descriptors_up),
        (a.mo_coeff_dn, b.mo_coeff_dn, a.descriptors_dn, b.descriptors_dn),
    ):
        # Orthogonal Procrustes: the M = R S that maps the centroids of a onto those of b.
        mu_a, mu_b = centroids(mol_a, c_a, basis) - ca, centroids(mol_b, c_b, basis) - cb
        u, _, vt = np.linalg.svd(mu_b.T @ mu_a)
        m = u @ vt
        s = rot.T @ m
        if name == "generic":
            np.testing.assert_allclose(s, np.eye(3), atol=1e-8)
        pi = _symmetry_map(mol_a, s)
        # Real space: phi_b,k(g(x)) = phi_a,k(x) at points around the molecule.
        x = mol_a.coords[np.arange(40) % mol_a.n_atoms] + np.random.default_rng(0).normal(size=(40, 3))
        phi_a = orbital_values(mol_a, c_a, x, basis)
        phi_b = orbital_values(mol_b, c_b, cb + (x - ca) @ m.T, basis)
        np.testing.assert_allclose(phi_b, phi_a, rtol=0, atol=1e-8 * max(np.abs(phi_a).max(), 1))
        if basis != "STO-6G":
            continue
        # Descriptors: row pi(I) of b is row I of a with its p coefficients rotated by M.
        pyscf_mol = build_pyscf_molecule(mol_a)
        layout = descriptor_layout("STO-6G", DEFAULT_ELEMENTS)
        for i, (_, _, a0, a1) in enumerate(pyscf_mol.aoslice_by_atom()):
            off, size = layout[mol_a.symbols[i]]
            expected = _rotate_block(d_a[i][:, off : off + size], a.basis_powers[a0:a1], m)
            np.testing.assert_allclose(d_b[pi[i]][:, off : off + size], expected, rtol=0, atol=1e-8)


def test_linear_family_member_fixed_by_rule():
    """N2's three bond orbitals can rotate freely about the axis at the Boys minimum. Started from
    canonical orbitals turned about the axis by different angles, Boys lands on different members;
    the rule maps them all to the same one, a banana bond in the canonical x-y half-plane y > 0."""
    from pyscf import lib, scf

    frame = canonical_frame(molecule("N2"))
    mol = build_pyscf_molecule(dataclasses.replace(molecule("N2"), coords=frame.coords))
    with lib.with_omp_threads(1):  # pyscf's threads are slow and not reproducible here
        mf = scf.RHF(mol).run(conv_tol=1e-10)
    occ = mf.mo_occ > 0
    s1e = mol.intor_symmetric("int1e_ovlp")
    with mol.with_common_origin((0.0, 0.0, 0.0)):
        dip = mol.intor_symmetric("int1e_r", comp=3)
    results = []
    for angle in (0.0, 0.4, 1.3):
        turn = Rotation.from_rotvec([angle, 0.0, 0.0]).as_matrix()
        start = _ao_frame_transform(mol, mol, turn, np.arange(2)) @ mf.mo_coeff[:, occ]
        with lib.with_omp_threads(1):
            ((c, _),) = _localize_sort_sign(mol, [(start, mf.mo_energy[occ])], s1e, dip, linear=True)
        mu = np.einsum("ak,xab,bk->kx", c, dip, c)
        bonds = np.nonzero(np.hypot(mu[:, 1], mu[:, 2]) > 0.01)[0]
        assert len(bonds) == 3  # a triple bond as three banana bonds, 120 degrees apart
        azimuth = np.sort(np.degrees(np.arctan2(mu[bonds, 2], mu[bonds, 1])))
        np.testing.assert_allclose(azimuth, [-120, 0, 120], atol=1e-3)
        results.append(c)
    for c in results[1:]:  # same up to the Boys convergence (~1e-6)
        np.testing.assert_allclose(c, results[0], atol=1e-5)


def test_spin_orbitals_of_a_radical_follow_too():
    """UHF of the OH radical (open pi shell: a continuous family of UHF solutions, not just of
    Boys minima) under a shift and a re-listing of the atoms; its rotation is in
    test_rotation_covariant. The orbitals returned must still form the UHF solution."""
    from pyscf import scf

    base, moved = molecule("OH"), molecule("OH", lambda x: x + SHIFT, order=[1, 0])
    a, b = hf(base), hf(moved)
    assert a.method == "UHF" and a.descriptors_up.shape[1] == 5 and a.descriptors_dn.shape[1] == 4
    np.testing.assert_allclose(b.descriptors_up, a.descriptors_up[::-1], rtol=0, atol=1e-10)
    np.testing.assert_allclose(b.descriptors_dn, a.descriptors_dn[::-1], rtol=0, atol=1e-10)
    mf = scf.UHF(build_pyscf_molecule(base))
    dm = np.stack([a.mo_coeff_up @ a.mo_coeff_up.T, a.mo_coeff_dn @ a.mo_coeff_dn.T])
    assert abs(mf.energy_tot(dm) - a.energy) < 1e-7  # same determinant, same energy
    fock = mf.get_fock(dm=dm)
    s1e = mf.get_ovlp()
    for f, d in zip(fock, dm, strict=True):  # a stationary point: [F, D S] = 0 in the AO basis
        np.testing.assert_allclose(f @ d @ s1e, s1e @ d @ f, atol=1e-6)
