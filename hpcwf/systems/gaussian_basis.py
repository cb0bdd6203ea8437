"""Contracted Cartesian Gaussian basis functions, evaluable (and differentiable) in JAX.

An atomic orbital (AO) is

    chi_a(r) = x_a^lx y_a^ly z_a^lz * sum_p c_ap exp(-alpha_ap |r - R_a|^2),
    (x_a, y_a, z_a) = r - R_a,

with all normalization folded into the contraction coefficients c_ap, so that the values equal
pyscf's `mol.eval_gto("GTOval_cart", r)` for a Mole built with `cart=True`, in the same AO
order. Lengths are bohr.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import struct

from hpcwf.systems.basis_sets import MAX_ANGULAR_MOMENTUM

# Largest Cartesian exponent (per axis) evaluate_aos supports: g functions. Fixed rather than read
# from the basis so that the basis stays a pure-array pytree (no shape-dependent static fields);
# job validation (basis_sets) rejects basis sets beyond it before anything runs.
MAX_POWER = MAX_ANGULAR_MOMENTUM

# basis_from_pyscf checks that pyscf's functions are a constant multiple of ours to this
# relative accuracy; anything worse means an AO-ordering or convention mismatch.
_NORMALIZATION_FIT_TOL = 1e-10


@struct.dataclass
class GaussianBasis:
    """Contracted Cartesian Gaussians; every field is an array (a pytree leaf).

    Attributes:
        centers: AO centres R_a in bohr, [n_ao, 3].
        powers: Cartesian exponents (lx, ly, lz), int32, [n_ao, 3].
        exponents: primitive exponents alpha_ap in bohr^-2, [n_ao, n_prim]; zero-padded.
        coefficients: contraction coefficients c_ap including all normalization, [n_ao, n_prim];
            zero where padded (so padded primitives contribute exactly 0).
    """

    centers: np.ndarray
    powers: np.ndarray
    exponents: np.ndarray
    coefficients: np.ndarray

    @property
    def n_ao(self) -> int:
        return self.centers.shape[0]


def _cartesian_powers(l: int) -> list[tuple[int, int, int]]:
    """pyscf/libcint Cartesian component order for angular momentum l (xx, xy, xz, yy, yz, zz)."""
    return [(lx, ly, l - lx - ly) for lx in range(l, -1, -1) for ly in range(l - lx, -1, -1)]


def _evaluate_aos_numpy(
    centers: np.ndarray,
    powers: np.ndarray,
    exponents: np.ndarray,
    coefficients: np.ndarray,
    r: np.ndarray,
) -> np.ndarray:
    """Host float64 twin of `evaluate_aos`, for fitting normalizations. r [n, 3] -> [n, n_ao]."""
    d = r[:, None, :] - centers[None]  # [n, n_ao, 3]
    r2 = np.sum(d * d, axis=-1)
    radial = np.sum(coefficients * np.exp(-exponents * r2[..., None]), axis=-1)
    angular = np.prod(d ** powers[None], axis=-1)  # host only: 0**0 = 1 is fine here
    return radial * angular


def basis_from_pyscf(mol) -> GaussianBasis:
    """Builds the basis of a pyscf Mole with `mol.cart = True`, AOs in pyscf's order.

    Exponents and contraction coefficients come from pyscf's shells; the remaining per-AO
    normalization (pyscf's Cartesian convention) is fitted: both our unnormalized functions and
    pyscf's are evaluated at random points near the atoms, and the ratio must be a constant per AO
    to 1e-10 relative, else ValueError (which would mean an ordering/convention mismatch).
    The returned arrays are numpy float64 (int32 for powers).
    """
    from pyscf import gto  # local: keep pyscf off the import path of JAX-only users

    if not mol.cart:
        raise ValueError("basis_from_pyscf needs a Cartesian basis (mol.cart = True)")
    ao_loc = mol.ao_loc_nr(cart=True)
    n_prim_max = max(mol.bas_nprim(ib) for ib in range(mol.nbas))
    n_ao = int(ao_loc[-1])
    centers = np.zeros((n_ao, 3))
    powers = np.zeros((n_ao, 3), dtype=np.int32)
    exponents = np.zeros((n_ao, n_prim_max))
    coefficients = np.zeros((n_ao, n_prim_max))
    for ib in range(mol.nbas):
        l = mol.bas_angular(ib)
        if l > MAX_POWER:
            raise ValueError(f"angular momentum l={l} exceeds the supported maximum {MAX_POWER}")
        alpha = mol.bas_exp(ib)  # [n_prim]
        # bas_ctr_coeff divides out the primitive radial norms; libcint evaluates with them.
        ctr = mol.bas_ctr_coeff(ib) * gto.gto_norm(l, alpha)[:, None]  # [n_prim, n_ctr]
        comps = _cartesian_powers(l)
        ao = int(ao_loc[ib])
        # Within a shell pyscf orders AOs contraction-major, Cartesian component fastest.
        for ictr in range(ctr.shape[1]):
            for pw in comps:
                centers[ao] = mol.bas_coord(ib)
                powers[ao] = pw
                exponents[ao, : len(alpha)] = alpha
                coefficients[ao, : len(alpha)] = ctr[:, ictr]
                ao += 1
        if ao != ao_loc[ib + 1]:
            raise ValueError(f"shell {ib}: AO count {ao - ao_loc[ib]} disagrees with pyscf")

    # Sample points around every atom on the scale of valence orbitals; fixed seed: deterministic.
    rng = np.random.default_rng(1234)
    atom_xyz = mol.atom_coords(unit="Bohr")
    offsets = rng.normal(scale=0.8, size=(len(atom_xyz), 12, 3))
    points = (atom_xyz[:, None, :] + offsets).reshape(-1, 3)
    ref = mol.eval_gto("GTOval_cart", points)  # [n_points, n_ao]
    ours = _evaluate_aos_numpy(centers, powers, exponents, coefficients, points)
    scale = np.sum(ref * ours, axis=0) / np.sum(ours * ours, axis=0)
    err = np.max(np.abs(ref - scale * ours), axis=0)
    size = np.max(np.abs(ref), axis=0)
    bad = np.nonzero(~(err <= _NORMALIZATION_FIT_TOL * size) | ~(size > 0))[0]
    if len(bad):
        a = int(bad[0])
        raise ValueError(
            f"AO {a} ({mol.cart_labels()[a].strip()}) is not a constant multiple of pyscf's "
            f"(relative deviation {err[a] / max(size[a], 1e-300):.2e}); basis conventions differ"
        )
    return GaussianBasis(
        centers=centers,
        powers=powers,
        exponents=exponents,
        coefficients=coefficients * scale[:, None],
    )


def _integer_power(x: jnp.ndarray, p: jnp.ndarray) -> jnp.ndarray:
    """x**p for integer p in [0, MAX_POWER] by repeated multiplication.

    `x ** p` with a traced p has a NaN gradient at x = 0 (it goes through log x); the product of
    `where(k < p, x, 1)` factors is exact and has finite derivatives everywhere.
    """
    out = jnp.ones_like(x)
    for k in range(MAX_POWER):
        out = out * jnp.where(k < p, x, 1.0)
    return out


def evaluate_aos(basis: GaussianBasis, r: jnp.ndarray) -> jnp.ndarray:
    """AO values at positions r [..., 3] (bohr) -> [..., n_ao].

    Pure jnp; safe under jit, vmap and grad (finite gradients also at the AO centres).
    """
    d = r[..., None, :] - basis.centers  # [..., n_ao, 3]
    r2 = jnp.sum(d * d, axis=-1)  # no sqrt: differentiable at the nuclei
    radial = jnp.sum(basis.coefficients * jnp.exp(-basis.exponents * r2[..., None]), axis=-1)
    angular = jnp.prod(_integer_power(d, basis.powers), axis=-1)
    return radial * angular


def evaluate_orbitals(basis: GaussianBasis, mo_coeff: jnp.ndarray, r: jnp.ndarray) -> jnp.ndarray:
    """Orbital values at r [..., 3] (bohr): AO values @ mo_coeff [n_ao, n_orb] -> [..., n_orb]."""
    return evaluate_aos(basis, r) @ mo_coeff
