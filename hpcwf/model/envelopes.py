"""Envelopes and the electron-nucleus cusp of the orbitals.

Every orbital obeys Kato's cusp condition at every nucleus I: its spherical average falls
off as exp(-Z_I r) as an electron approaches R_I (T. Kato, Commun. Pure Appl. Math. 10, 151
(1957)); a wavefunction that misses it has E_L ~ (slope + Z) / r there, unbounded. hpcwf
builds the cusp in exactly, for any parameters:

  * each electron's row of the Slater matrices is multiplied by the cusp factor
    exp(sum_I exp(-Z_I r_iI)), whose radial slope at R_I is -Z_I and which is 1 far from
    every nucleus (`nuclear_cusp`);
  * everything else in the orbitals is smooth at the nuclei: the envelopes decay as
    exp(-alpha u_I(r)) with u_I(r) = r - a_I (1 - exp(-r / a_I)), a_I = 1 / Z_I
    (`cusp_free_distance`, u ~ r^2 / 2a near R_I, ~ r - a far away), and the embedding sees
    the nuclei through smooth functions of r^2 (`hpcwf.model.embedding`).

Together an envelope of exponent alpha becomes exp(1 - alpha r - (Z - alpha) a (1 - exp(-r/a))):
e exp(-Z r) for alpha = Z (a 1s orbital), slope -Z at the nucleus and decay exp(-alpha r) far
from it for any alpha. PauliNet (Hermann et al., Nat. Chem. 12, 891 (2020)) also makes the
nuclear cusp exact by construction; FermiNet and DeepErwin leave it to be learned.

The envelope exponents start from Slater's rules (`envelope_exponent_prior`).
"""

from __future__ import annotations

import jax.numpy as jnp

from hpcwf.systems.slater_rules import VALENCE_EXPONENTS

# Descriptor weight (sum of squared coefficients) below which an orbital's exponent on an
# atom falls back to that atom's valence exponent: the orbital has (almost) nothing there.
PRIOR_WEIGHT_FLOOR = 1e-2


# a_I = CUSP_LENGTH / Z_I: the range of the cusp factor and of the envelopes' smoothing.
CUSP_LENGTH = 1.0


def cusp_length(charges: jnp.ndarray) -> jnp.ndarray:
    """a_I = CUSP_LENGTH / Z_I (bohr), the radius of a 1s orbital: where the cusp factor acts.
    [n_atoms]."""
    return CUSP_LENGTH / jnp.maximum(charges, 1.0)


def cusp_free_distance(dist_en: jnp.ndarray, charges: jnp.ndarray) -> jnp.ndarray:
    """u_I(r) = r - a_I (1 - exp(-r / a_I)) for distances dist_en [..., n_atoms] (bohr).

    Smooth at r = 0 (u ~ r^2 / 2 a_I, zero slope) and r - a_I far away; written with expm1 so
    that the small-r value does not cancel."""
    a = cusp_length(charges)
    return dist_en + a * jnp.expm1(-dist_en / a)


def nuclear_cusp(dist_en: jnp.ndarray, charges: jnp.ndarray) -> jnp.ndarray:
    """log of each electron's cusp factor, sum_I Z_I a_I exp(-r_iI / a_I) = sum_I exp(-Z_I r_iI),
    [n_el].

    dist_en: electron-nucleus distances [n_el, n_atoms], bohr. The slope in r_iI at R_I is
    -Z_I; far from every nucleus the factor is 1, so it does not depend on how many atoms a
    molecule has."""
    a = cusp_length(charges)
    return jnp.sum(charges * a * jnp.exp(-dist_en / a), axis=-1)


def envelope_exponent_prior(
    descriptors: jnp.ndarray, charges: jnp.ndarray, descriptor_exponents: jnp.ndarray
) -> jnp.ndarray:
    """Slater-rule exponents of each orbital on each atom, bohr^-1, [n_atoms, n_orb].

    alpha0_Ik = (sum_a c_Ika^2 zeta_a + w0 zeta_val(Z_I)) / (sum_a c_Ika^2 + w0): the exponents
    zeta_a of atom I's atomic orbitals (`descriptor_exponents` [d_desc]) weighted by orbital k's
    squared coefficients on them (`descriptors` [n_atoms, n_orb, d_desc]; zero outside atom I's
    element block), the valence exponent of Z_I where the orbital has no weight on I
    (w0 = PRIOR_WEIGHT_FLOOR). A 1s core orbital of O starts at ~7.7, its valence orbitals at
    ~2.3 (`hpcwf.systems.slater_rules`). Even in the descriptor, as the exponents must be."""
    weights = descriptors**2
    valence = jnp.asarray(VALENCE_EXPONENTS, descriptors.dtype)[
        jnp.clip(jnp.round(charges).astype(jnp.int32), 0, VALENCE_EXPONENTS.size - 1)
    ]
    numerator = weights @ descriptor_exponents + PRIOR_WEIGHT_FLOOR * valence[:, None]
    return numerator / (jnp.sum(weights, axis=-1) + PRIOR_WEIGHT_FLOOR)
