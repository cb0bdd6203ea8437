"""Molecular geometries: the one description of a system that every other module reads.

Lengths are bohr everywhere inside hpcwf; conversion from angstrom happens once, here.
"""

from __future__ import annotations

import dataclasses
import unicodedata

import numpy as np

ANGSTROM_TO_BOHR = 1.0 / 0.52917721092

# Elements hpcwf supports (H-Ne): symbol -> nuclear charge.
ELEMENTS: dict[str, int] = {
    "H": 1,
    "He": 2,
    "Li": 3,
    "Be": 4,
    "B": 5,
    "C": 6,
    "N": 7,
    "O": 8,
    "F": 9,
    "Ne": 10,
}

# Nuclei closer than this (bohr) are rejected: almost surely a unit or typing mistake.
MIN_NUCLEAR_DISTANCE = 0.1
# The network holds nuclear positions in float32 as given (not centred): beyond 1e4 bohr from
# the origin float32 resolves positions only to ~1e-3 bohr (and 1e39 is inf), so such inputs
# are refused rather than silently degraded.
MAX_COORDINATE = 1e4
# An atom whose nearest other nucleus is farther than this (bohr) belongs to no molecule: a
# unit or typing mistake (1.4e10 for 1.4), or two fragments that VMC treats as one system.
MAX_NEIGHBOUR_DISTANCE = 50.0


def name_problem(text: str, what: str, directory: bool) -> str | None:
    """Why `text` cannot be a geometry name or group (None if it can). Names end up in HDF5
    strings, log lines and, for groups (`directory`), as one directory below [output] dir: no
    control characters (HDF5 cannot store NUL), and a group must be one plain path component,
    or `hpcwf run --group-index` would write outside the run directory."""
    for c in text:
        if unicodedata.category(c) == "Cc":
            return f"{what} {text!r} holds the control character {c!r}; use printable characters"
    if directory and ("/" in text or "\\" in text or text in (".", "..")):
        return (
            f"{what} {text!r} is the name of the group's run directory (<output dir>/<group>), "
            "which must be one plain directory name: no '/' or '\\', not '.' or '..'"
        )
    return None


class MoleculeError(ValueError):
    """Invalid molecule. `key` names the offending input field (e.g. "atoms[2]", "spin")."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclasses.dataclass(frozen=True)
class Molecule:
    """One geometry of one compound.

    Attributes:
        name: label used in logs and outputs.
        symbols: element symbols, length n_atoms.
        coords: nuclear positions in bohr, shape [n_atoms, 3].
        charge: total charge (e).
        spin: n_up - n_dn.
        reference_energy: best known total energy in Hartree, or None.
        group: the compound or set this geometry belongs to (fine-tuning job arrays run one
            group per task); "" means the geometry is a group of its own.
        scan_coordinate: position along a scan (a bond length, an angle, ...) for plots; None
            when the geometry is not part of a scan.
    """

    name: str
    symbols: tuple[str, ...]
    coords: np.ndarray
    charge: int = 0
    spin: int = 0
    reference_energy: float | None = None
    group: str = ""
    scan_coordinate: float | None = None

    @classmethod
    def create(
        cls,
        name: str,
        atoms: list,
        charge: int = 0,
        spin: int | None = None,
        units: str = "bohr",
        reference_energy: float | None = None,
        group: str = "",
        scan_coordinate: float | None = None,
    ) -> Molecule:
        """Validates and builds a molecule from `[[symbol, x, y, z], ...]`.

        `spin=None` picks the lowest spin compatible with the electron count.
        Raises MoleculeError naming the offending field.
        """
        if units not in ("bohr", "angstrom"):
            raise MoleculeError("units", f"must be 'bohr' or 'angstrom', got {units!r}")
        if not isinstance(atoms, (list, tuple)) or len(atoms) == 0:
            raise MoleculeError("atoms", "must be a non-empty list of [symbol, x, y, z]")
        symbols, coords = [], []
        for i, atom in enumerate(atoms):
            if (
                not isinstance(atom, (list, tuple))
                or len(atom) != 4
                or not isinstance(atom[0], str)
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in atom[1:])
            ):
                raise MoleculeError(f"atoms[{i}]", f"must be [symbol, x, y, z], got {atom!r}")
            if atom[0] not in ELEMENTS:
                raise MoleculeError(
                    f"atoms[{i}]",
                    f"unknown element {atom[0]!r} (supported: {', '.join(ELEMENTS)})",
                )
            symbols.append(atom[0])
            coords.append([float(x) for x in atom[1:]])
        xyz = np.asarray(coords, dtype=np.float64)
        if units == "angstrom":
            xyz = xyz * ANGSTROM_TO_BOHR
        if not np.all(np.isfinite(xyz)):
            raise MoleculeError("atoms", "coordinates must be finite")
        nearest = [(np.inf, -1)] * len(xyz)  # (distance, index) of each atom's nearest neighbour
        for i in range(len(xyz)):
            for j in range(i):
                d = float(np.linalg.norm(xyz[i] - xyz[j]))
                if d < MIN_NUCLEAR_DISTANCE:
                    raise MoleculeError(
                        f"atoms[{i}]",
                        f"overlaps atoms[{j}] (distance {d:.3g} bohr < {MIN_NUCLEAR_DISTANCE})",
                    )
                nearest[i] = min(nearest[i], (d, j))
                nearest[j] = min(nearest[j], (d, i))
        for i, (d, j) in reversed(list(enumerate(nearest))):  # the later atom: the likelier typo
            if j >= 0 and d > MAX_NEIGHBOUR_DISTANCE:
                raise MoleculeError(
                    f"atoms[{i}]",
                    f"its nearest nucleus (atoms[{j}]) is {d:.3g} bohr away, more than the "
                    f"{MAX_NEIGHBOUR_DISTANCE:g} bohr of any bond: a unit or typing mistake? (fragments "
                    "that far apart are separate geometries)",
                )
        far = np.abs(xyz).max(axis=1)
        if far.max() > MAX_COORDINATE:
            i = int(far.argmax())
            raise MoleculeError(
                f"atoms[{i}]",
                f"coordinate {far[i]:.3g} bohr is beyond {MAX_COORDINATE:g} bohr from the origin, "
                "where the network's float32 positions lose their precision; move the molecule "
                "to the origin",
            )
        if isinstance(charge, bool) or not isinstance(charge, int):
            raise MoleculeError("charge", f"must be an integer, got {charge!r}")
        n_electrons = sum(ELEMENTS[s] for s in symbols) - charge
        if n_electrons < 1:
            raise MoleculeError("charge", f"leaves {n_electrons} electrons; need at least 1")
        if spin is None:
            spin = n_electrons % 2
        if isinstance(spin, bool) or not isinstance(spin, int):
            raise MoleculeError("spin", f"must be an integer (n_up - n_dn), got {spin!r}")
        if spin < 0 or spin > n_electrons or (n_electrons - spin) % 2:
            raise MoleculeError(
                "spin",
                f"spin {spin} is impossible with {n_electrons} electrons "
                f"(need 0 <= spin <= {n_electrons} and spin = n_electrons mod 2)",
            )
        if reference_energy is not None and (
            isinstance(reference_energy, bool) or not isinstance(reference_energy, (int, float))
        ):
            raise MoleculeError("reference_energy", "must be a number (Hartree)")
        if not isinstance(group, str):
            raise MoleculeError("group", f"must be a string, got {group!r}")
        # A geometry without a group is a group of its own, named by its name (group_name).
        for key, text, what in (
            ("name", str(name), "name" if group else "name (its group's name: no group is set)"),
            ("group", group, "group"),
        ):
            problem = name_problem(text, what, directory=key == "group" or not group)
            if problem is not None:
                raise MoleculeError(key, problem)
        if scan_coordinate is not None and (
            isinstance(scan_coordinate, bool)
            or not isinstance(scan_coordinate, (int, float))
            or not np.isfinite(scan_coordinate)
        ):
            raise MoleculeError("scan_coordinate", f"must be a finite number, got {scan_coordinate!r}")
        return cls(
            name=str(name),
            symbols=tuple(symbols),
            coords=xyz,
            charge=charge,
            spin=spin,
            reference_energy=None if reference_energy is None else float(reference_energy),
            group=group,
            scan_coordinate=None if scan_coordinate is None else float(scan_coordinate),
        )

    @property
    def n_atoms(self) -> int:
        return len(self.symbols)

    @property
    def charges(self) -> np.ndarray:
        """Nuclear charges Z, shape [n_atoms], float64."""
        return np.array([ELEMENTS[s] for s in self.symbols], dtype=np.float64)

    @property
    def n_electrons(self) -> int:
        return int(self.charges.sum()) - self.charge

    @property
    def n_up(self) -> int:
        return (self.n_electrons + self.spin) // 2

    @property
    def n_dn(self) -> int:
        return (self.n_electrons - self.spin) // 2

    @property
    def shape_key(self) -> tuple[int, int, int]:
        """(n_up, n_dn, n_atoms): molecules with equal keys share compiled programs."""
        return (self.n_up, self.n_dn, self.n_atoms)

    def nuclear_repulsion(self) -> float:
        """V_NN in Hartree."""
        z, e = self.charges, 0.0
        for i in range(self.n_atoms):
            for j in range(i):
                e += z[i] * z[j] / float(np.linalg.norm(self.coords[i] - self.coords[j]))
        return e

    def to_dict(self) -> dict:
        """Input-form description in bohr (used for resolved configs and checkpoints)."""
        out = {
            "name": self.name,
            "atoms": [[s, *map(float, xyz)] for s, xyz in zip(self.symbols, self.coords, strict=False)],
            "charge": self.charge,
            "spin": self.spin,
            "units": "bohr",
        }
        if self.reference_energy is not None:
            out["reference_energy"] = self.reference_energy
        if self.group:
            out["group"] = self.group
        if self.scan_coordinate is not None:
            out["scan_coordinate"] = self.scan_coordinate
        return out

    @property
    def group_name(self) -> str:
        """The group this geometry belongs to: `group`, or its own name when none is set."""
        return self.group or self.name
