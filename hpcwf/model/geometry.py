"""Per-geometry inputs of the wavefunction as a JAX pytree.

One `GeometryData` holds everything the network needs about one geometry; all arrays are
float32/float64 device arrays so a batch of walkers can be vmapped against a single geometry
and the geometry-only parts of the network (context GNN, f, g) stay un-batched under vmap,
i.e. they are computed once per call rather than once per walker.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from flax import struct

from hpcwf.systems.hartree_fock import DEFAULT_BASIS, DEFAULT_ELEMENTS, descriptor_exponents
from hpcwf.systems.molecule import Molecule


@struct.dataclass
class GeometryData:
    """Inputs of the wavefunction for one geometry.

    Attributes:
        nuclei: nuclear positions, bohr, [n_atoms, 3].
        charges: nuclear charges Z, [n_atoms].
        descriptors_up: HF orbital descriptors of the spin-up orbitals, [n_atoms, n_up, d_desc].
        descriptors_dn: same for spin-down orbitals, [n_atoms, n_dn, d_desc].
        descriptor_exponents: Slater exponent of the atomic orbital behind each descriptor
            entry, bohr^-1, [d_desc] (`hpcwf.systems.hartree_fock.descriptor_exponents`); the
            prior of the envelope exponents.
    """

    nuclei: jnp.ndarray
    charges: jnp.ndarray
    descriptors_up: jnp.ndarray
    descriptors_dn: jnp.ndarray
    descriptor_exponents: jnp.ndarray

    @property
    def n_up(self) -> int:
        return self.descriptors_up.shape[1]

    @property
    def n_dn(self) -> int:
        return self.descriptors_dn.shape[1]

    @property
    def n_electrons(self) -> int:
        return self.n_up + self.n_dn

    @property
    def n_atoms(self) -> int:
        return self.nuclei.shape[0]


def geometry_data(
    molecule: Molecule,
    descriptors_up: np.ndarray,
    descriptors_dn: np.ndarray,
    dtype=jnp.float32,
    basis: str = DEFAULT_BASIS,
    elements: Sequence[str] = DEFAULT_ELEMENTS,
) -> GeometryData:
    """Packs a molecule and its HF descriptors (built with `basis` and `elements`) into device
    arrays of `dtype`. ValueError if the descriptor size does not match basis and elements."""
    exponents = descriptor_exponents(basis, elements)
    if np.shape(descriptors_up)[-1] != exponents.size:
        raise ValueError(
            f"descriptors of size {np.shape(descriptors_up)[-1]}, but {basis} on "
            f"{', '.join(elements)} gives {exponents.size}"
        )
    return GeometryData(
        nuclei=jnp.asarray(molecule.coords, dtype),
        charges=jnp.asarray(molecule.charges, dtype),
        descriptors_up=jnp.asarray(descriptors_up, dtype),
        descriptors_dn=jnp.asarray(descriptors_dn, dtype),
        descriptor_exponents=jnp.asarray(exponents, dtype),
    )
