"""The orbital types by name: the one place that maps `[model] orbitals = "<name>"` to code.

Jax-free: the job-file validation (hpcwf.io.config) reads the names and `hpcwf check` runs
without jax; the class is imported only when a model is built (`orbital_map_type`).

Adding an orbital type: write its flax module with `__call__(h, electrons, geometry)` and a
classmethod `create(size, n_det, molecule_shape)` (hpcwf.types.OrbitalMap, OrbitalMapType),
and add one entry here. Its parameters are stored in checkpoints under "orbital_map".
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence

from hpcwf.systems.molecule import Molecule
from hpcwf.types import OrbitalMapType

# Jax-free here because the job check compares it with shipped models' (hpcwf.models).
# Version of the function that a parameter tree means, stored with every parameter file and
# checkpoint ("ansatz_version"): raise it whenever the same parameters would give another psi
# (a changed constant, input feature or layer), so that an old file is refused in one line
# instead of loading silently into a different wavefunction.
#   1  up to 62d0a11: the e-e stream of the embedding saw |r_ij| (a kink at coalescence).
#   2  5c31903: the e-e stream sees cusp_free_distance(r_ij), e-e cusp from the Jastrow alone.
# Files without the attribute (written before it existed) are taken as version 1.
ANSATZ_VERSION = 2


@dataclasses.dataclass(frozen=True)
class OrbitalType:
    """One registry entry.

    Attributes:
        target: "module:Class" of the OrbitalMap module.
        transferable: True if its parameter shapes fit any molecule (one model for a dataset of
            different molecules); False if they depend on (n_electrons, n_atoms), so all
            geometries of a job must share n_up, n_dn and the atom count.
    """

    target: str
    transferable: bool


ORBITAL_TYPES: dict[str, OrbitalType] = {
    # Transferable atomic orbitals from HF orbital descriptors (the paper's method).
    "tao": OrbitalType("hpcwf.model.orbitals:TAOOrbitals", transferable=True),
    # FermiNet-style orbitals with fixed per-orbital weights and envelopes (the paper's baseline).
    "backflow": OrbitalType("hpcwf.model.orbitals:BackflowOrbitals", transferable=False),
}


def _entry(name: str) -> OrbitalType:
    if name not in ORBITAL_TYPES:
        raise ValueError(f"unknown orbitals {name!r} (known: {', '.join(ORBITAL_TYPES)})")
    return ORBITAL_TYPES[name]


def orbital_map_type(name: str) -> OrbitalMapType:
    """The OrbitalMap class registered as `name` (imports its module, and so jax and flax).
    Raises ValueError for a name not in ORBITAL_TYPES."""
    module, cls = _entry(name).target.split(":")
    return getattr(importlib.import_module(module), cls)


def molecule_shape(name: str, geometries: Sequence[Molecule]) -> tuple[int, int] | None:
    """The (n_electrons, n_atoms) that orbital type `name` must be built for: None if it is
    transferable, else the shape all `geometries` share. Raises ValueError if they do not share
    one (or `name` is unknown)."""
    if _entry(name).transferable:
        return None
    if len({(m.n_up, m.n_dn, m.n_atoms) for m in geometries}) > 1:
        raise ValueError(f"{name!r} needs all geometries to have the same n_up, n_dn, n_atoms")
    return geometries[0].n_electrons, geometries[0].n_atoms
