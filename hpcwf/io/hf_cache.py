"""The Hartree-Fock cache: an HDF5 file of HartreeFockResults, one group per geometry and settings.

The descriptors must be identical between pre-training and fine-tuning, and HF is the slow part
of starting a job, so results are stored keyed by everything that determines them (`cache_key`)
and reused by every later job that names the same cache file.

Layout (format 2; CACHE_FORMAT_VERSION):
    /<cache_key>   group; attrs: name, energy (Ha), method ("RHF"/"UHF"), basis, elements
                   (comma-separated), format_version, complete (True)
        mo_coeff_up [n_ao, n_up], mo_coeff_dn [n_ao, n_dn], descriptors_up [n_atoms, n_up, d_desc],
        descriptors_dn [n_atoms, n_dn, d_desc], orbital_energies_up [n_up] (Ha),
        orbital_energies_dn [n_dn] (Ha), basis_centers [n_ao, 3] (bohr), basis_powers
        [n_ao, 3] int32, basis_exponents [n_ao, n_prim] (bohr^-2), basis_coefficients
        [n_ao, n_prim]: the fields of HartreeFockResult (see hpcwf.systems.hartree_fock).
Writing and reading follow hpcwf.io.h5files: never in place, no file locks (HartreeFockCache).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np

from hpcwf.io.h5files import open_h5, replace_h5
from hpcwf.systems.hartree_fock import (
    DEFAULT_BASIS,
    DEFAULT_ELEMENTS,
    HartreeFockResult,
    check_elements,
    run_hartree_fock,
)
from hpcwf.systems.molecule import Molecule

# Bump whenever anything that changes the stored arrays changes (SCF/localization settings,
# sorting, sign convention, layout in hpcwf.systems.hartree_fock): old entries then simply miss.
# 2: orbitals computed in the canonical frame (canonical_frame) and rotated back.
CACHE_FORMAT_VERSION = 2

# At most this share of the HF time is spent copying the cache file for incremental stores
# (each store writes a new version of the whole file: hpcwf.io.h5files).
STORE_OVERHEAD = 0.1

# Fields stored as HDF5 datasets (everything except the scalars, which are attributes).
_ARRAY_FIELDS = tuple(
    f.name for f in dataclasses.fields(HartreeFockResult) if f.name not in ("energy", "method")
)


def cache_key(molecule: Molecule, basis: str, elements: Sequence[str]) -> str:
    """sha256 hex digest of everything that determines a HartreeFockResult.

    Coordinates enter rounded to 1e-10 bohr; the molecule's name does not enter (the same
    geometry under two names shares one entry). `basis` is used verbatim (case matters).
    """
    coords = np.round(np.asarray(molecule.coords, dtype=np.float64), 10) + 0.0  # -0.0 -> 0.0
    canonical = json.dumps(
        {
            "version": CACHE_FORMAT_VERSION,
            "symbols": list(molecule.symbols),
            "coords": [[f"{x:.10f}" for x in row] for row in coords],
            "charge": int(molecule.charge),
            "spin": int(molecule.spin),
            "basis": str(basis),
            "elements": list(elements),
        },
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class HartreeFockCache:
    """HDF5 store of HartreeFockResults, one group per cache_key.

    The file is never written in place: `store_many` writes a new version (a copy with the new
    groups) and renames it over the old one (`hpcwf.io.h5files.replace_h5`), so a reader, or
    another job sharing the cache, always sees a complete file, a crash never damages it, and no
    file lock is needed (lock-less file systems work). Two jobs storing at the same moment do not
    corrupt it either: the later rename wins and the other's new entries are recomputed when
    next needed. Groups that are incomplete (files of older versions), unreadable or
    inconsistent with the molecule are recomputed and overwritten. A file that cannot be opened
    (not HDF5, truncated) is moved aside to `<path>.corrupt-<time>` (with a warning) and a fresh
    one started.

    Attributes:
        path: the HDF5 file.
        compute_fn: (molecule, basis, elements) -> HartreeFockResult; run_hartree_fock by default.
        n_computed: number of results computed (not loaded) by this object.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        compute_fn: Callable[[Molecule, str, Sequence[str]], HartreeFockResult] = run_hartree_fock,
    ):
        self.path = Path(path)
        self.compute_fn = compute_fn
        self.n_computed = 0

    def get_or_compute(
        self,
        molecule: Molecule,
        basis: str = DEFAULT_BASIS,
        elements: Sequence[str] = DEFAULT_ELEMENTS,
    ) -> HartreeFockResult:
        """Stored result for this geometry and settings, else computed, stored and returned."""
        result = self.lookup(molecule, basis, elements)
        if result is None:
            result = self.compute(molecule, basis, elements)
            self.store(molecule, basis, elements, result)
        return result

    def lookup(
        self, molecule: Molecule, basis: str = DEFAULT_BASIS, elements: Sequence[str] = DEFAULT_ELEMENTS
    ) -> HartreeFockResult | None:
        """The stored result, or None (read-only: safe while other processes read or store)."""
        elements = tuple(elements)
        check_elements(molecule, elements)
        return self._load(cache_key(molecule, basis, elements), molecule)

    def compute(
        self, molecule: Molecule, basis: str = DEFAULT_BASIS, elements: Sequence[str] = DEFAULT_ELEMENTS
    ) -> HartreeFockResult:
        """Runs `compute_fn` (no file access); counts it in `n_computed`."""
        result = self.compute_fn(molecule, basis, tuple(elements))
        self.n_computed += 1
        return result

    def store(
        self,
        molecule: Molecule,
        basis: str,
        elements: Sequence[str],
        result: HartreeFockResult,
    ) -> None:
        """Writes `result` (`store_many` with one entry)."""
        self.store_many([(molecule, basis, elements, result)])

    def store_many(self, entries: Sequence[tuple[Molecule, str, Sequence[str], HartreeFockResult]]) -> None:
        """Writes (molecule, basis, elements, result) entries as one new version of the file
        (one copy of the file for all of them). Raises OSError when the file cannot be written
        (e.g. a full disk); the previous version then stays as it was."""
        if not entries:
            return
        edit = self._readable_or_moved_aside()
        with replace_h5(self.path, edit=edit) as f:
            for molecule, basis, elements, result in entries:
                elements = tuple(elements)
                key = cache_key(molecule, basis, elements)
                if key in f:
                    del f[key]
                g = f.create_group(key)
                for name in _ARRAY_FIELDS:
                    g.create_dataset(name, data=np.asarray(getattr(result, name)))
                g.attrs["name"] = molecule.name
                g.attrs["energy"] = float(result.energy)
                g.attrs["method"] = result.method
                g.attrs["basis"] = basis
                g.attrs["elements"] = ",".join(elements)
                g.attrs["format_version"] = CACHE_FORMAT_VERSION
                g.attrs["complete"] = True  # what readers of in-place written older files check

    def incremental(
        self, max_overhead: float = STORE_OVERHEAD, on_stored: Callable[[int], None] | None = None
    ) -> IncrementalStore:
        """A context that stores results as they are computed (`IncrementalStore`)."""
        return IncrementalStore(self, max_overhead, on_stored)

    def _readable_or_moved_aside(self) -> bool:
        """True if the file exists and opens; a file that does not open is moved aside."""
        if not self.path.exists():
            return False
        try:
            with open_h5(self.path):
                return True
        except OSError as err:
            why = "is not an HDF5 file" if not h5py.is_hdf5(self.path) else f"is unreadable ({err})"
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        warnings.warn(f"HF cache {self.path} {why}; moved to {aside}", stacklevel=4)
        self.path.rename(aside)
        return False

    def _load(self, key: str, molecule: Molecule) -> HartreeFockResult | None:
        try:
            with open_h5(self.path) as f:
                if key not in f:
                    return None
                g = f[key]
                if not g.attrs.get("complete", False):
                    return None
                fields = {name: np.array(g[name]) for name in _ARRAY_FIELDS}
                result = HartreeFockResult(
                    energy=float(g.attrs["energy"]), method=str(g.attrs["method"]), **fields
                )
        except (OSError, KeyError, ValueError, TypeError):
            return None  # missing, not HDF5, truncated or a damaged group: recompute
        n_atoms, n_up, n_dn = molecule.n_atoms, molecule.n_up, molecule.n_dn
        if (
            result.descriptors_up.shape[:2] != (n_atoms, n_up)
            or result.descriptors_dn.shape[:2] != (n_atoms, n_dn)
            or result.mo_coeff_up.shape[1] != n_up
            or result.mo_coeff_dn.shape[1] != n_dn
        ):
            return None
        return result


class IncrementalStore:
    """Stores a job's HF results in the cache as they complete, so a stop signal, an OOM kill
    or a failing SCF in the middle of a job's HF loses only the geometry in progress: a rerun
    finds the others in the cache. (Storing once after the last geometry lost all of them.)

    Each store writes a new version of the whole file, so a result is stored at once unless
    the stores so far took more than `max_overhead` of the HF time; then results collect and
    go with a later one. `on_stored(n)` is called after each store with the number stored so
    far (the run's progress file). Leaving the context stores what is pending, also on an exception
    (a stop, an SCF that fails); a store that fails then (a full disk) is only warned about,
    so that the exception in flight is the one reported.

        with cache.incremental() as store:
            for mol in molecules:
                store.add(mol, basis, elements, cache.compute(mol, basis, elements), seconds)
    """

    def __init__(
        self,
        cache: HartreeFockCache,
        max_overhead: float = STORE_OVERHEAD,
        on_stored: Callable[[int], None] | None = None,
    ):
        self.cache, self.max_overhead, self.on_stored = cache, max_overhead, on_stored
        self.pending: list[tuple[Molecule, str, Sequence[str], HartreeFockResult]] = []
        self.compute_seconds = self.store_seconds = 0.0
        self.n_stored = 0

    def add(
        self,
        molecule: Molecule,
        basis: str,
        elements: Sequence[str],
        result: HartreeFockResult,
        compute_seconds: float,
    ) -> None:
        """Queues a computed result; stores the queue unless that exceeds the overhead."""
        self.pending.append((molecule, basis, tuple(elements), result))
        self.compute_seconds += compute_seconds
        if self.store_seconds <= self.max_overhead * self.compute_seconds:
            self.flush()

    def flush(self) -> None:
        """Stores the pending results (OSError when the file cannot be written)."""
        if not self.pending:
            return
        t0 = time.perf_counter()
        self.cache.store_many(self.pending)
        self.n_stored += len(self.pending)
        self.pending = []
        self.store_seconds += time.perf_counter() - t0
        if self.on_stored is not None:
            self.on_stored(self.n_stored)

    def __enter__(self) -> IncrementalStore:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.flush()
            return
        try:
            self.flush()
        except OSError as err:
            warnings.warn(
                f"HF cache {self.cache.path}: could not store finished results ({err})", stacklevel=2
            )
