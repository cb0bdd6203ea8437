"""Slater-type orbital exponents of the neutral atoms H-Ne from Slater's rules.

An atomic orbital of principal quantum number n decays as exp(-zeta r) with
zeta = Z_eff / n, Z_eff = Z - s, where the shielding s of an electron counts the other
electrons: 0.30 for the other 1s electron (1s shell), 0.35 per other electron of the
n = 2 shell and 0.85 per 1s electron (2s2p shell). Source: J. C. Slater, "Atomic Shielding
Constants", Phys. Rev. 36, 57 (1930); e.g. O: zeta_1s = 7.70, zeta_2sp = 2.275 bohr^-1
(Clementi-Raimondi's optimized values, J. Chem. Phys. 38, 2686 (1963): 7.66, 2.25).

hpcwf uses them as the prior of its envelope exponents (`hpcwf.model.orbitals`): numpy only.
"""

from __future__ import annotations

import numpy as np

MAX_Z = 10  # H..Ne


def slater_exponents(z: int) -> tuple[float, float]:
    """(zeta_core, zeta_valence) in bohr^-1 of the neutral atom of nuclear charge z (1..10).

    zeta_core is that of the 1s shell; zeta_valence that of the outermost occupied shell
    (1s for H and He, 2s2p for Li-Ne). Raises ValueError outside 1..10.
    """
    if not 1 <= z <= MAX_Z:
        raise ValueError(f"Slater's rules are tabulated here for Z = 1..{MAX_Z}, not {z}")
    n_1s = min(z, 2)
    zeta_1s = z - 0.30 * (n_1s - 1)
    if z <= 2:
        return zeta_1s, zeta_1s
    n_2 = z - 2
    zeta_2 = (z - 0.85 * 2 - 0.35 * (n_2 - 1)) / 2.0
    return zeta_1s, zeta_2


# VALENCE_EXPONENTS[z]: zeta_valence of element z (index 0 unused, set to 1), bohr^-1; what an
# orbital's envelope on an atom where the orbital has no weight starts from.
VALENCE_EXPONENTS = np.array([1.0] + [slater_exponents(z)[1] for z in range(1, MAX_Z + 1)])


def shell_exponents(z: int, shells: list[tuple[int, int]]) -> np.ndarray:
    """Slater exponent of each Cartesian basis function of one atom, in basis-function order.

    Args:
        z: nuclear charge (1..10).
        shells: (angular momentum l, number of contractions) of each shell, in the order of
            the basis (pyscf's `bas_angular`, `bas_nctr`); each contraction holds
            (l + 1)(l + 2) / 2 Cartesian functions.
    Returns:
        [n_functions] bohr^-1: the first s function of Li-Ne is the 1s core (zeta_core); every
        other function (split valence, polarization) gets zeta_valence.
    """
    zeta_core, zeta_valence = slater_exponents(z)
    out, core_given = [], z <= 2
    for l, n_contractions in shells:
        for _ in range(n_contractions):
            core = l == 0 and not core_given
            core_given = core_given or core
            out += [zeta_core if core else zeta_valence] * ((l + 1) * (l + 2) // 2)
    return np.asarray(out, dtype=np.float64)
