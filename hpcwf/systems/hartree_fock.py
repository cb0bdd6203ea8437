"""Hartree-Fock reference orbitals and the orbital descriptors built from them (METHOD.md 1.1).

Per geometry: RHF (even electron count, spin 0) or UHF (otherwise) with pyscf in a Cartesian
Gaussian basis; occupied orbitals of each spin Foster-Boys localized, sorted by an estimated
orbital energy and sign-fixed, all deterministically; then scattered into element-block
descriptors [n_atoms, n_orbitals, d_desc]. The results are cached in HDF5 (hpcwf.io.hf_cache),
keyed by geometry and settings, because the descriptors must be identical between pre-training
and fine-tuning.

Everything up to the sign convention runs in a canonical frame of the nuclei (`canonical_frame`:
centre of nuclear charge, principal axes of the nuclear charge distribution, canonical atom
order) and the orbitals are then rotated back, so that the same molecule gives the same network
input wherever it sits and however its atoms are listed (see `run_hartree_fock` for exactly what
holds, and where molecular symmetry limits it).

Units: lengths bohr, energies Hartree.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import warnings
from collections.abc import Sequence

import numpy as np

from hpcwf.systems.basis_sets import element_mole
from hpcwf.systems.gaussian_basis import GaussianBasis, _cartesian_powers, basis_from_pyscf
from hpcwf.systems.molecule import ELEMENTS, Molecule
from hpcwf.systems.slater_rules import shell_exponents

DEFAULT_BASIS = "STO-6G"
DEFAULT_ELEMENTS: tuple[str, ...] = tuple(ELEMENTS)

# Whatever changes the results (SCF/localization settings, sorting, sign convention, layout)
# must bump hpcwf.io.hf_cache.CACHE_FORMAT_VERSION, so that cached results of the old code miss.
SCF_CONV_TOL = 1e-10  # Ha
SCF_CONV_TOL_GRAD = 1e-7
BOYS_CONV_TOL = 1e-10
# Negative Boys Hessian eigenvalues below this mark a saddle point (pyscf's own threshold).
BOYS_STABILITY_TOL = -1e-5
BOYS_MAX_RESTARTS = 10
# Estimated orbital energies closer than this (Ha) count as tied; ties are ordered by centroid.
# Symmetry-equivalent orbitals differ by ~1e-6 Ha of localization noise; distinct ones by far more.
ENERGY_TIE_TOL = 1e-4
CENTROID_DECIMALS = 4  # centroids are rounded to 1e-4 bohr for the tie-break (noise ~1e-6)
# Sign convention: if |sum of coefficients| is below this, use the largest coefficient instead.
SIGN_SUM_TOL = 1e-6
# Coefficients within this relative distance of the largest magnitude count as tied for it.
SIGN_MAX_REL_TOL = 1e-6

# Canonical frame (canonical_frame). Canonical coordinates are rounded to 1e-8 bohr, so that
# translated, rotated or re-ordered copies of a geometry (which differ there by ~1e-15 bohr of
# floating-point noise) hand bitwise identical input to pyscf; the rounding moves nuclei by at
# most 5e-9 bohr (HF energy changes ~1e-9 Ha).
FRAME_DECIMALS = 8
# Eigenvalues of the nuclear-charge second moment closer than this (relative to the largest)
# count as degenerate; the in-plane axes are then fixed by atom directions instead (valid for any
# molecule, so a generous threshold costs nothing and keeps eigenvector noise ~1e-13).
FRAME_DEGENERACY_TOL = 1e-2
FRAME_ATOM_TOL = 1e-3  # bohr: atoms closer than this to the centre / axis define no direction
FRAME_MATRIX_DECIMALS = 6  # frames tied on the atom table are ordered by their rounded matrices
# Linear molecules: orbital centroids further than this (bohr) from the axis fix the azimuth of
# the localized set (the Boys minimum is a continuous family of rotations about the axis).
LINEAR_OFF_AXIS_TOL = 1e-2


@dataclasses.dataclass
class HartreeFockResult:
    """Occupied, localized HF orbitals of one geometry, and their descriptors.

    Attributes:
        energy: HF total energy in Hartree (includes V_NN).
        method: "RHF" or "UHF".
        mo_coeff_up: spin-up occupied orbitals in the Cartesian AO basis, [n_ao, n_up].
        mo_coeff_dn: spin-down occupied orbitals, [n_ao, n_dn] (equal to the first n_dn up
            orbitals for RHF).
        descriptors_up: element-block descriptors of the up orbitals, [n_atoms, n_up, d_desc].
        descriptors_dn: same for down orbitals, [n_atoms, n_dn, d_desc].
        orbital_energies_up: estimated orbital energies (Ha) the up orbitals are sorted by, [n_up].
        orbital_energies_dn: same for down, [n_dn].
        basis_centers, basis_powers, basis_exponents, basis_coefficients: the GaussianBasis arrays
            (see gaussian_basis.GaussianBasis), so the orbitals can be evaluated without pyscf.
    """

    energy: float
    method: str
    mo_coeff_up: np.ndarray
    mo_coeff_dn: np.ndarray
    descriptors_up: np.ndarray
    descriptors_dn: np.ndarray
    orbital_energies_up: np.ndarray
    orbital_energies_dn: np.ndarray
    basis_centers: np.ndarray
    basis_powers: np.ndarray
    basis_exponents: np.ndarray
    basis_coefficients: np.ndarray

    def basis(self) -> GaussianBasis:
        """The AO basis as numpy arrays (float64, powers int32)."""
        return GaussianBasis(
            centers=self.basis_centers,
            powers=self.basis_powers,
            exponents=self.basis_exponents,
            coefficients=self.basis_coefficients,
        )


@functools.lru_cache(maxsize=64)
def _layout(basis: str, elements: tuple[str, ...]) -> tuple[tuple[str, int, int], ...]:
    for el in elements:
        if el not in ELEMENTS:
            raise ValueError(f"unknown element {el!r} in descriptor elements {elements}")
    if len(set(elements)) != len(elements):
        raise ValueError(f"descriptor elements contain repeats: {elements}")
    out, offset = [], 0
    for el in elements:
        size = element_mole(el, basis).nao  # Cartesian AO count (cart=True)
        out.append((el, offset, size))
        offset += size
    return tuple(out)


def descriptor_layout(basis: str, elements: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Element -> (offset, size) of its block in the descriptor vector.

    `basis` is a pyscf basis name; size = number of Cartesian AOs of one atom of that element
    (STO-6G: H, He 1; Li-Ne 5). Blocks follow the order of `elements`.
    """
    return {el: (off, size) for el, off, size in _layout(basis, tuple(elements))}


def descriptor_size(basis: str, elements: Sequence[str]) -> int:
    """d_desc: total length of the descriptor vector (42 for STO-6G and H..Ne)."""
    return sum(size for _, _, size in _layout(basis, tuple(elements)))


@functools.lru_cache(maxsize=64)
def _descriptor_exponents(basis: str, elements: tuple[str, ...]) -> np.ndarray:
    parts = []
    for el, _, size in _layout(basis, elements):
        mol = element_mole(el, basis)
        shells = [(int(mol.bas_angular(i)), int(mol.bas_nctr(i))) for i in range(mol.nbas)]
        zetas = shell_exponents(ELEMENTS[el], shells)
        if zetas.size != size:  # pyscf's AO order is shell by shell, contraction by contraction
            raise ValueError(f"{el} in {basis}: {zetas.size} exponents for {size} functions")
        parts.append(zetas)
    out = np.concatenate(parts)
    out.setflags(write=False)
    return out


def descriptor_exponents(basis: str, elements: Sequence[str]) -> np.ndarray:
    """Slater exponent (bohr^-1) of the atomic orbital behind each descriptor entry, [d_desc].

    Entry a of an orbital's descriptor on atom I is its coefficient on one basis function of
    I's element block (`descriptor_layout`); that function stands for an atomic orbital whose
    exponent Slater's rules give (`hpcwf.systems.slater_rules.shell_exponents`: 1s core or
    valence). The envelope prior of `hpcwf.model.orbitals` weights them by the squared
    coefficients."""
    return _descriptor_exponents(basis, tuple(elements))


def check_elements(molecule: Molecule, elements: Sequence[str]) -> None:
    """Raises ValueError if `molecule` has an element outside the descriptor `elements`."""
    missing = sorted(set(molecule.symbols) - set(elements), key=list(ELEMENTS).index)
    if missing:
        raise ValueError(
            f"molecule {molecule.name!r} contains element(s) {', '.join(missing)} that are not in "
            f"the descriptor element list ({', '.join(elements)})"
        )


def make_descriptors(mol, mo_coeff: np.ndarray, basis: str, elements: Sequence[str]) -> np.ndarray:
    """Scatters orbital coefficients into element blocks.

    Args:
        mol: the pyscf Mole (cart=True) the coefficients refer to.
        mo_coeff: [n_ao, n_orb].
    Returns:
        [n_atoms, n_orb, d_desc]: row I holds orbital k's coefficients on atom I's AOs, placed in
        the block of atom I's element; zeros elsewhere.
    """
    layout = descriptor_layout(basis, elements)
    n_orb = mo_coeff.shape[1]
    out = np.zeros((mol.natm, n_orb, descriptor_size(basis, elements)))
    for I, (_, _, ao0, ao1) in enumerate(mol.aoslice_by_atom()):
        offset, size = layout[mol.atom_pure_symbol(I)]
        if ao1 - ao0 != size:  # e.g. a per-atom basis override would break the fixed layout
            raise ValueError(f"atom {I} has {ao1 - ao0} AOs, its descriptor block {size}")
        out[I, :, offset : offset + size] = mo_coeff[ao0:ao1].T
    return out


@dataclasses.dataclass(frozen=True)
class CanonicalFrame:
    """A molecule's nuclei in their canonical frame (see `canonical_frame`).

    Attributes:
        origin: centre of nuclear charge in input coordinates (bohr), [3].
        axes: orthogonal matrix whose rows are the canonical x, y, z axes in input coordinates,
            [3, 3] (determinant +1 or -1); canonical coordinates are y = axes @ (x - origin).
        order: canonical atom j is input atom order[j], [n_atoms] int.
        coords: canonical coordinates of the atoms in canonical order, rounded to FRAME_DECIMALS
            (bohr), [n_atoms, 3].
        linear: all nuclei on the canonical x axis (and more than one of them).
    """

    origin: np.ndarray
    axes: np.ndarray
    order: np.ndarray
    coords: np.ndarray
    linear: bool


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _perpendicular_directions(u: np.ndarray, points: np.ndarray) -> list[np.ndarray]:
    """Unit vectors along the components of `points` [n, 3] perpendicular to unit vector u, for
    the points further than FRAME_ATOM_TOL from the line along u."""
    perp = points - np.outer(points @ u, u)
    return [_unit(p) for p in perp if np.linalg.norm(p) > FRAME_ATOM_TOL]


def _any_perpendicular(u: np.ndarray) -> np.ndarray:
    """A unit vector perpendicular to u: the projection of the Cartesian axis least aligned with u
    (first on ties). Deterministic, but no rotation-covariant choice exists (hairy ball)."""
    k = int(np.argmin(np.round(np.abs(u), FRAME_MATRIX_DECIMALS)))
    return _unit(np.eye(3)[k] - u[k] * u)


def _candidate_frames(charges: np.ndarray, rel: np.ndarray) -> list[np.ndarray]:
    """Orthogonal matrices (rows = axes) that are covariant functions of the nuclei `rel`
    [n, 3] (relative to the centre of charge), as a set: rotating the nuclei rotates every
    candidate. Principal axes of sum_I Z_I r_I r_I^T in descending order of the eigenvalue, all
    sign choices; a degenerate pair of axes is replaced by (direction of an atom's projection
    onto their plane, its cross product with the unique axis) for every atom off that axis; a
    triply degenerate set by (direction of atom I, direction of atom J's component
    perpendicular to it, their cross product) for every such pair of atoms."""
    w, v = np.linalg.eigh((charges[:, None] * rel).T @ rel)
    w, v = w[::-1], v[:, ::-1]  # descending
    tol = FRAME_DEGENERACY_TOL * max(w[0], 1e-300)
    deg01, deg12 = w[0] - w[1] <= tol, w[1] - w[2] <= tol
    signs = list(itertools.product((1.0, -1.0), repeat=3))
    if not deg01 and not deg12:
        return [np.asarray(s)[:, None] * v.T for s in signs]
    if deg01 and deg12:  # spherical top (CH4, an atom, ...)
        frames = []
        for a in [_unit(r) for r in rel if np.linalg.norm(r) > FRAME_ATOM_TOL]:
            for b in _perpendicular_directions(a, rel) or [_any_perpendicular(a)]:
                frames += [np.stack([a, b, s * np.cross(a, b)]) for s in (1.0, -1.0)]
        return frames or [np.eye(3)]
    # Symmetric top: one unique axis u (largest eigenvalue: prolate, smallest: oblate).
    prolate = deg12
    u = v[:, 0] if prolate else v[:, 2]
    frames = []
    for a in _perpendicular_directions(u, rel) or [_any_perpendicular(u)]:
        for su, sb in itertools.product((1.0, -1.0), repeat=2):
            b = sb * np.cross(su * u, a)
            frames.append(np.stack([su * u, a, b] if prolate else [a, b, su * u]))
    return frames


def canonical_frame(molecule: Molecule) -> CanonicalFrame:
    """The canonical frame of a molecule's nuclei: a deterministic function of the nuclear
    geometry that does not depend on where the molecule sits or how its atoms are listed.

    Origin: the centre of nuclear charge. Axes: among the candidate frames (principal axes of
    the nuclear charge distribution with every sign choice; degenerate axes fixed by atom
    directions, see _candidate_frames) the one whose table of (Z, canonical coordinates rounded
    to FRAME_DECIMALS), rows sorted, is lexicographically smallest. Candidates with equal tables
    differ by a symmetry operation of the nuclei; among those the one with the lexicographically
    smallest rounded matrix is taken (a fixed but not rotation-covariant choice: none exists).
    Linear molecules lie along the canonical x axis; their perpendicular axes come from the
    input Cartesian axes (_any_perpendicular). Reflections are allowed (det(axes) = -1).

    Consequently: translated or re-ordered copies of a geometry get the same `coords` (bitwise,
    barring a coordinate within ~1e-15 bohr of a rounding boundary) and, up to ~1e-15, the same
    `axes`; a rotated copy (rotation R) gets the same `coords` and axes' = S axes R^T, where S
    is a symmetry operation of the nuclei in the canonical frame (S = 1 without symmetry).
    """
    charges = molecule.charges
    xyz = np.asarray(molecule.coords, dtype=np.float64)
    origin = charges @ xyz / charges.sum()
    rel = xyz - origin
    best = None
    for q in _candidate_frames(charges, rel):
        y = np.round(rel @ q.T, FRAME_DECIMALS) + 0.0  # -0.0 -> 0.0
        order = np.lexsort((y[:, 2], y[:, 1], y[:, 0], charges))  # by Z, then x, y, z
        key = (
            tuple(np.column_stack([charges[order], y[order]]).ravel()),
            tuple((np.round(q, FRAME_MATRIX_DECIMALS) + 0.0).ravel()),
        )
        if best is None or key < best[0]:
            best = (key, q, order, y[order])
    _, axes, order, coords = best
    linear = len(coords) > 1 and not np.any(coords[:, 1:])
    return CanonicalFrame(origin=origin, axes=axes, order=order, coords=coords, linear=linear)


def _cartesian_transform(l: int, q: np.ndarray) -> np.ndarray:
    """M [n_cart, n_cart] with m_mu(q u) = sum_nu M[nu, mu] m_nu(u) for the degree-l Cartesian
    monomials m (x^a y^b z^c, pyscf order) and a 3x3 matrix q: how Cartesian GTO coefficients
    of one shell transform under a change of frame (exact; pyscf gives all components of a
    Cartesian shell the same normalization)."""
    comps = _cartesian_powers(l)
    index = {p: i for i, p in enumerate(comps)}
    m = np.zeros((len(comps), len(comps)))
    for mu, p in enumerate(comps):
        rows = [0] * p[0] + [1] * p[1] + [2] * p[2]  # m_mu(q u) = prod over these rows of (q u)
        for pick in itertools.product(range(3), repeat=l):
            coef = np.prod([q[r, c] for r, c in zip(rows, pick, strict=True)])
            m[index[tuple(np.bincount(pick, minlength=3))], mu] += coef
    return m


def _ao_frame_transform(mol_src, mol_dst, q: np.ndarray, atom_map: np.ndarray) -> np.ndarray:
    """T [n_ao, n_ao] with phi_dst(x) = phi_src(q (x - X_dst) + Y_src) for orbitals
    phi = AOs @ c, c_dst = T c_src, when atom j of mol_src (at Y_src) is atom atom_map[j] of
    mol_dst (at X_dst) with the same element and basis: a block of _cartesian_transform(l, q)
    per shell."""
    t = np.zeros((mol_dst.nao, mol_src.nao))
    loc_src, loc_dst = mol_src.ao_loc_nr(), mol_dst.ao_loc_nr()
    for j, i in enumerate(atom_map):
        shells_src, shells_dst = mol_src.atom_shell_ids(j), mol_dst.atom_shell_ids(int(i))
        if len(shells_src) != len(shells_dst):
            raise ValueError(f"atoms {j} and {i} have different shells")
        for bs, bd in zip(shells_src, shells_dst, strict=True):
            l = mol_src.bas_angular(bs)
            if l != mol_dst.bas_angular(bd) or mol_src.bas_nctr(bs) != mol_dst.bas_nctr(bd):
                raise ValueError(f"atoms {j} and {i} have different shells")
            block = np.kron(np.eye(mol_src.bas_nctr(bs)), _cartesian_transform(l, q))
            t[loc_dst[bd] : loc_dst[bd + 1], loc_src[bs] : loc_src[bs + 1]] = block
    return t


def _boys_hessian_min(loc) -> tuple[float, np.ndarray]:
    """Lowest eigenpair of the Boys cost Hessian at loc.mo_coeff, from the explicit Hessian.

    pyscf's `Boys.stability` seeds Davidson with numpy's global RNG (not reproducible) and needs
    more than a handful of rotation parameters; the explicit Hessian is exact, deterministic and
    cheap for the few tens of occupied orbitals we handle.
    """
    _, h_op, _ = loc.gen_g_hop()
    n = loc.pdim
    hess = np.stack([h_op(col) for col in np.eye(n)], axis=1)
    w, v = np.linalg.eigh(0.5 * (hess + hess.T))
    return float(w[0]), v[:, 0]


def _boys_localize(mol, mo: np.ndarray) -> np.ndarray:
    """Foster-Boys localization of orbitals mo [n_ao, n], started from mo itself.

    pyscf's CIAH optimizer started from canonical orbitals of symmetric molecules stops at
    saddle points of the Boys functional (symmetry is preserved along the way); after each
    convergence we check the Hessian and restart along its most negative direction.
    """
    from pyscf import lo

    if mo.shape[1] <= 1:
        return mo.copy()
    loc = lo.Boys(mol, mo)
    loc.init_guess = None  # start from the given orbitals: no AO-projection heuristics
    loc.conv_tol = BOYS_CONV_TOL
    loc.verbose = 0
    c = loc.kernel(mo)
    for _ in range(BOYS_MAX_RESTARTS):
        w, v = _boys_hessian_min(loc)
        if w >= BOYS_STABILITY_TOL:
            return c
        c = loc.kernel(loc.rotate_orb(loc.extract_rotation(v)))
    warnings.warn(
        f"Boys localization still at a saddle point after {BOYS_MAX_RESTARTS} restarts; using it anyway",
        RuntimeWarning,
        stacklevel=3,
    )
    return c


def _sign_fix(c: np.ndarray) -> np.ndarray:
    """Per column: make the coefficient sum positive; if |sum| < SIGN_SUM_TOL, make the
    largest-magnitude coefficient (first one within SIGN_MAX_REL_TOL of the max) positive."""
    c = c.copy()
    for k in range(c.shape[1]):
        s = c[:, k].sum()
        if abs(s) < SIGN_SUM_TOL:
            mag = np.abs(c[:, k])
            s = c[int(np.argmax(mag >= mag.max() * (1.0 - SIGN_MAX_REL_TOL))), k]
        if s < 0:
            c[:, k] = -c[:, k]
    return c


def _linear_azimuth_rotation(mol, localized: Sequence[tuple[np.ndarray, np.ndarray]], dip: np.ndarray):
    """AO transform [n_ao, n_ao] that picks one member of the continuous family of solutions of
    a linear molecule, or None when no orbital lies off the axis.

    The nuclei lie on the x axis of `mol`, so a rotation about it maps the SCF solution (both
    spins together: an open pi shell of a UHF solution is not itself axially symmetric) and its
    Boys minima onto equally good ones. Rule: the off-axis orbital (centroid further than
    LINEAR_OFF_AXIS_TOL from the axis) with the lowest estimated energy, first spin first, gets
    its centroid into the x-y half-plane with y > 0. Which of several symmetry-equivalent
    orbitals serves as the reference does not matter: their rotations map the set onto itself.

    Args:
        localized: per spin, (localized orbitals [n_ao, n], estimated energies [n]).
        dip: position integrals [3, n_ao, n_ao] (origin on the axis).
    """
    for mo_loc, e_est in localized:
        centroid = np.einsum("ak,xab,bk->kx", mo_loc, dip, mo_loc)  # [n, 3]
        off_axis = np.nonzero(np.hypot(centroid[:, 1], centroid[:, 2]) > LINEAR_OFF_AXIS_TOL)[0]
        if len(off_axis):
            ref = off_axis[np.argmin(e_est[off_axis])]
            theta = np.arctan2(centroid[ref, 2], centroid[ref, 1])
            c, s = np.cos(theta), np.sin(theta)
            rot = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])  # phi'(y) = phi(rot y)
            return _ao_frame_transform(mol, mol, rot, np.arange(mol.natm))
    return None


def _localize(mol, mo_can: np.ndarray, eps: np.ndarray, s1e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boys-localizes occupied canonical orbitals mo_can [n_ao, n] with canonical energies eps [n].

    Returns (localized orbitals [n_ao, n], estimated energies e_k = sum_j U_jk^2 eps_j [n],
    U = mo_can^T S mo_loc the canonical->localized rotation).
    """
    if mo_can.shape[1] == 0:
        return mo_can.copy(), np.zeros(0)
    mo_loc = _boys_localize(mol, mo_can)
    u = mo_can.T @ s1e @ mo_loc  # mo_loc = mo_can @ U (orthogonal)
    return mo_loc, (u**2).T @ eps


def _sort_sign(mo_loc: np.ndarray, e_est: np.ndarray, dip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorts localized orbitals [n_ao, n] by estimated energy e_est [n] (ties by centroid, from
    the position integrals dip [3, n_ao, n_ao]) and fixes their signs (_sign_fix).

    Returns (orbitals [n_ao, n], estimated energies [n]).
    """
    if mo_loc.shape[1] == 0:
        return mo_loc.copy(), e_est.copy()
    centroid = np.round(np.einsum("ak,xab,bk->kx", mo_loc, dip, mo_loc), CENTROID_DECIMALS)
    centroid = centroid + 0.0  # -0.0 -> 0.0 so rounding noise cannot flip the order

    # Sort by energy; runs of near-equal energies (chained within ENERGY_TIE_TOL) are ordered by
    # centroid x, y, z, then energy: symmetry-equivalent orbitals get a reproducible order.
    order = list(np.argsort(e_est, kind="stable"))
    groups, current = [], [order[0]]
    for a, b in zip(order[:-1], order[1:], strict=True):
        if e_est[b] - e_est[a] > ENERGY_TIE_TOL:
            groups.append(current)
            current = []
        current.append(b)
    groups.append(current)
    final = []
    for g in groups:
        final += sorted(g, key=lambda k: (*centroid[k], e_est[k], k))
    final = np.asarray(final)
    return _sign_fix(mo_loc[:, final]), e_est[final]


def _localize_sort_sign(
    mol,
    spins: Sequence[tuple[np.ndarray, np.ndarray]],
    s1e: np.ndarray,
    dip: np.ndarray,
    linear: bool = False,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Localizes, sorts and sign-fixes the occupied canonical orbitals of each spin.

    Args:
        spins: per spin channel, (canonical orbitals [n_ao, n], canonical energies [n]).
        s1e: AO overlap [n_ao, n_ao]. dip: position integrals <mu|r|nu> [3, n_ao, n_ao].
        linear: the nuclei lie on the x axis (then _linear_azimuth_rotation picks the member of
            the solution family, the same rotation for all spins).
    Returns:
        per spin, (orbitals [n_ao, n], estimated energies [n]).
    """
    localized = [_localize(mol, c, e, s1e) for c, e in spins]
    rotation = _linear_azimuth_rotation(mol, localized, dip) if linear else None
    if rotation is not None:  # estimated energies are invariant under the common rotation
        localized = [(rotation @ c, e) for c, e in localized]
    return [_sort_sign(c, e, dip) for c, e in localized]


def build_pyscf_molecule(molecule: Molecule, basis: str = DEFAULT_BASIS):
    """pyscf Mole for `molecule`: Cartesian basis, coordinates in bohr, silent."""
    from pyscf import gto

    return gto.M(
        atom=[[s, tuple(map(float, xyz))] for s, xyz in zip(molecule.symbols, molecule.coords, strict=True)],
        basis=basis,
        cart=True,
        unit="Bohr",
        charge=molecule.charge,
        spin=molecule.spin,
        symmetry=False,
        verbose=0,
    )


def _run_scf(mol, restricted: bool):
    from pyscf import scf

    mf = scf.RHF(mol) if restricted else scf.UHF(mol)
    # No SCF chkfile: hpcwf never reads it, and pyscf writes it with h5py's default file
    # locking, which fails on file systems without locks (NFS, some Lustre mounts).
    mf.chkfile = None
    mf.conv_tol = SCF_CONV_TOL
    mf.conv_tol_grad = SCF_CONV_TOL_GRAD
    mf.max_cycle = 200
    mf.verbose = 0
    mf.kernel()
    if not mf.converged:
        # DIIS can oscillate for stretched geometries; second-order SCF from there usually fixes it.
        mf = mf.newton()
        mf.kernel(mf.mo_coeff, mf.mo_occ)
    if not mf.converged:
        raise RuntimeError(f"{'RHF' if restricted else 'UHF'} did not converge")
    return mf


def run_hartree_fock(
    molecule: Molecule,
    basis: str = DEFAULT_BASIS,
    elements: Sequence[str] = DEFAULT_ELEMENTS,
) -> HartreeFockResult:
    """HF, Boys localization, sorting, sign convention and descriptors for one geometry.

    RHF if the electron count is even and spin == 0, else UHF. SCF, localization, sorting and
    the sign convention run on the molecule in its canonical frame (`canonical_frame`); the
    orbitals are then transformed back to the input frame and atom order (Cartesian shells
    transform exactly under rotations: p coefficients as a vector, d and higher as products).
    The energy is that of the canonical geometry (nuclei moved by < 1e-8 bohr by the rounding).

    What holds (tests/test_descriptors.py):
    - translation: orbitals, order, signs and descriptors invariant (to ~1e-15);
    - re-listing the atoms: the atom axis of the descriptors and the AO blocks of the
      coefficients permute along; orbital order and signs do not change;
    - rotation or reflection R: orbital k becomes R S applied to orbital k (p coefficients
      rotate; descriptor rows follow the atom permutation of S), where S is a symmetry operation
      of the nuclear framework chosen by the frame rule; S = 1 for a molecule without symmetry.
      A symmetric molecule cannot do better: R could itself be a symmetry operation, and then
      exact covariance would demand that a symmetry operation leaves each localized orbital
      unchanged, which symmetry-equivalent orbitals (the CH bonds of CH4) contradict.
    - linear molecules: the Boys minimum is a continuous family (rotations about the axis);
      _fix_linear_azimuth picks the member, the axis of the rotation S above is the molecular
      axis. Other degenerate minima (the two Kekule-like sets of a benzene ring, the rotations
      of an atom's sp3 hybrids) are resolved by the optimizer's path from the canonical
      orbitals, which is a fixed function of the canonical geometry, i.e. reproducible on a given
      machine and library build but not a fixed rule.
    Deterministic for a given machine: pyscf runs single-threaded here, because its
    multi-threaded Fock builds are not bitwise reproducible and degenerate canonical orbitals
    (CH4, N2, ...) amplify that noise into different localized orbitals.

    Raises ValueError if the molecule has an element outside `elements`.
    """
    from pyscf import lib

    elements = tuple(elements)
    check_elements(molecule, elements)
    descriptor_layout(basis, elements)  # validate the element list early
    restricted = molecule.n_electrons % 2 == 0 and molecule.spin == 0
    frame = canonical_frame(molecule)
    canonical = dataclasses.replace(
        molecule, symbols=tuple(molecule.symbols[i] for i in frame.order), coords=frame.coords
    )
    with lib.with_omp_threads(1):
        mol_can = build_pyscf_molecule(canonical, basis)
        mf = _run_scf(mol_can, restricted)
        s1e = mol_can.intor_symmetric("int1e_ovlp")
        with mol_can.with_common_origin((0.0, 0.0, 0.0)):  # the centre of nuclear charge
            dip = mol_can.intor_symmetric("int1e_r", comp=3)
        if restricted:
            occ = mf.mo_occ > 0
            spins = [(mf.mo_coeff[:, occ], mf.mo_energy[occ])]
            ((c_up, e_up),) = _localize_sort_sign(mol_can, spins, s1e, dip, frame.linear)
            c_dn, e_dn = c_up[:, : molecule.n_dn].copy(), e_up[: molecule.n_dn].copy()
        else:
            spins = [(mf.mo_coeff[s][:, mf.mo_occ[s] > 0], mf.mo_energy[s][mf.mo_occ[s] > 0]) for s in (0, 1)]
            (c_up, e_up), (c_dn, e_dn) = _localize_sort_sign(mol_can, spins, s1e, dip, frame.linear)
        mol = build_pyscf_molecule(molecule, basis)
        to_input = _ao_frame_transform(mol_can, mol, frame.axes, frame.order)
        c_up, c_dn = to_input @ c_up, to_input @ c_dn
        gb = basis_from_pyscf(mol)
    if c_up.shape[1] != molecule.n_up or c_dn.shape[1] != molecule.n_dn:
        raise RuntimeError(
            f"HF occupations ({c_up.shape[1]}, {c_dn.shape[1]}) do not match "
            f"(n_up, n_dn) = ({molecule.n_up}, {molecule.n_dn})"
        )
    return HartreeFockResult(
        energy=float(mf.e_tot),
        method="RHF" if restricted else "UHF",
        mo_coeff_up=c_up,
        mo_coeff_dn=c_dn,
        descriptors_up=make_descriptors(mol, c_up, basis, elements),
        descriptors_dn=make_descriptors(mol, c_dn, basis, elements),
        orbital_energies_up=e_up,
        orbital_energies_dn=e_dn,
        basis_centers=np.asarray(gb.centers),
        basis_powers=np.asarray(gb.powers),
        basis_exponents=np.asarray(gb.exponents),
        basis_coefficients=np.asarray(gb.coefficients),
    )
