"""The one reader of `<run_dir>/energies.h5` behind `hpcwf analyze`, `plot` and `compare`.

h5py and numpy only (no jax, no mpi4py): runs on login nodes. The layout is documented in
`hpcwf.io.energy_log`, the columns of its tables in `hpcwf.io.log_schema` (read here too: a
column added there is read here without a change). This reader also accepts older files
without /geometries/group and /geometries/scan_coordinate or without later columns (read as
their `missing` value, NaN), and files of a live run:

- the file is opened read-only without HDF5 file locking (`hpcwf.io.h5files.open_h5`), so
  reading works on file systems without locks;
- the writer replaces the file atomically at every flush (`hpcwf.io.energy_log`), so a read
  sees one complete version. Runs of older hpcwf versions wrote the file in place, growing the
  /train (/pretrain) columns one after another: a read that fails is therefore retried, and the
  columns are cut to their common length (rows of a flush still in progress are dropped).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import h5py
import numpy as np

from hpcwf.errors import InputError
from hpcwf.io import log_schema
from hpcwf.io.h5files import open_h5

ENERGIES_FILE = "energies.h5"
READ_ATTEMPTS = 3  # tries to read a file that a live run may be writing
READ_RETRY_DELAY_S = 0.5

# The training window: when a geometry has no evaluation, its energy is the mean of the last
# WINDOW_FRACTION of its training steps, at most WINDOW_MAX_STEPS and at least one.
WINDOW_FRACTION = 0.2
WINDOW_MAX_STEPS = 200


class RunDirError(InputError):
    """The run directory cannot be analysed; str() starts with the offending path."""


@dataclasses.dataclass(frozen=True)
class RunData:
    """Contents of one run's energies.h5 (energies in Ha).

    names, group: per geometry; reference (Ha) and scan_coordinate (units of the job file) per
    geometry, NaN = unknown / not a scan. hf_energy: the geometry's own HF energy (Ha), NaN =
    unknown (older files). outside_training_set: per geometry 1 when it has an element or
    electron count that the run's [init] checkpoint never trained on, 0 when not, -1 unknown.
    train: equal-length columns, every column of
    `log_schema.TRAIN` (step, geometry, energy in Ha, variance in Ha^2, ...), one row per
    (step, rank). evaluation: per-geometry columns of `log_schema.EVALUATION`, or None before
    evaluation. evaluation_step: the optimization step of the parameters the evaluation
    evaluated (None: none, or an older file that does not say). evaluation_stale: True when
    the run has since trained past that step or was rolled back before it, so the evaluation
    no longer belongs to the run's parameters (`energy_log`: /evaluation attr `stale`).
    pretrain: columns of `log_schema.PRETRAIN` (loss in bohr^-3), or None when the
    run has no pre-training rows. Columns a file lacks (written before they existed) hold
    their schema's `missing` value (NaN for floats).
    """

    run_dir: Path
    path: Path
    names: list[str]
    group: list[str]
    reference: np.ndarray
    scan_coordinate: np.ndarray
    train: dict[str, np.ndarray]
    evaluation: dict[str, np.ndarray] | None
    pretrain: dict[str, np.ndarray] | None
    hf_energy: np.ndarray | None = None
    outside_training_set: np.ndarray | None = None
    evaluation_step: int | None = None
    evaluation_stale: bool = False
    _rows: dict[str, list[np.ndarray]] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def is_scan(self) -> bool:
        """True when some geometry has a finite scan coordinate."""
        return bool(np.any(np.isfinite(self.scan_coordinate)))

    def series(self, table: str, field: str, geometry: int) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one geometry in `table` ("train" or "pretrain"), one value per
        step: the mean over that step's rows (one per rank under MPI) with finite values, NaN
        when it has none. Steps ascending; empty arrays when the geometry has no rows."""
        columns = self.train if table == "train" else self.pretrain
        if columns is None:
            return np.zeros(0, np.int64), np.zeros(0)
        if table not in self._rows:  # row indices per geometry, found once (long live logs)
            order = np.argsort(columns["geometry"], kind="stable")
            bounds = np.searchsorted(columns["geometry"][order], np.arange(len(self.names) + 1))
            self._rows[table] = np.split(order, bounds)[1:-1]
        rows = self._rows[table][geometry]
        return per_step_mean(columns["step"][rows], columns[field][rows])


def per_step_mean(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique steps (ascending) and the mean of the finite `values` of each (NaN if none)."""
    unique, inverse = np.unique(steps, return_inverse=True)
    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    total = np.bincount(inverse, weights=np.where(finite, values, 0.0), minlength=unique.size)
    count = np.bincount(inverse, weights=finite.astype(np.float64), minlength=unique.size)
    mean = np.divide(total, count, out=np.full(unique.size, np.nan), where=count > 0)
    return unique, mean


def window_length(n: int) -> int:
    """Length of the final window of a series of n steps (0 for an empty series)."""
    if n <= 0:
        return 0
    return int(min(max(round(WINDOW_FRACTION * n), 1), WINDOW_MAX_STEPS))


def read_run(run_dir: str | Path) -> RunData:
    """Reads `<run_dir>/energies.h5`; raises RunDirError for a missing directory, a directory
    that is not an hpcwf run directory, or an unreadable file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory")
    path = run_dir / ENERGIES_FILE
    if not path.is_file():
        if (run_dir / "config.toml").is_file():  # written first, before HF: a run, just young
            raise RunDirError(
                f"{run_dir}: no results yet: the run has logged no step (no {ENERGIES_FILE}); it is "
                "in start-up or Hartree-Fock, or stopped there: run the job again to continue"
            )
        raise RunDirError(f"{run_dir}: not an hpcwf run directory (no {ENERGIES_FILE})")
    try:
        if not h5py.is_hdf5(path):
            raise RunDirError(f"{path}: unreadable (not an HDF5 file)")
    except OSError as err:
        raise RunDirError(f"{path}: unreadable ({_one_line(err)})") from err
    for attempt in range(READ_ATTEMPTS):
        try:
            return _read(run_dir, path)
        except OSError as err:  # possibly a flush of the live run in progress: try again
            if attempt + 1 == READ_ATTEMPTS:
                raise RunDirError(f"{path}: unreadable ({_one_line(err)})") from err
            time.sleep(READ_RETRY_DELAY_S)
        except (KeyError, ValueError, TypeError) as err:  # a malformed file: no point in retrying
            raise RunDirError(f"{path}: unreadable ({_one_line(err)})") from err
    raise AssertionError("unreachable")


def _read(run_dir: Path, path: Path) -> RunData:
    with open_h5(path) as f:
        fmt = f.attrs.get("format")
        if fmt is not None and _text(fmt) != "hpcwf-energies":
            raise RunDirError(f"{path}: not an hpcwf energies file (format {_text(fmt)!r})")
        if "geometries" not in f or "names" not in f["geometries"]:
            raise RunDirError(f"{path}: not an hpcwf energies file (no /geometries/names)")
        g = f["geometries"]
        names = [_text(n) for n in g["names"][:]]
        n = len(names)
        reference = _float_column(g, "reference_energy", n)
        scan = _float_column(g, "scan_coordinate", n)
        group = [_text(x) for x in g["group"][:]] if "group" in g else list(names)
        train = _columns(f, "train", path)
        if train is None:
            train = {c.name: np.zeros(0, c.dtype) for c in log_schema.TRAIN}
        pretrain = _columns(f, "pretrain", path)
        if pretrain is not None and pretrain["step"].size == 0:
            pretrain = None
        hf_energy = _float_column(g, "hf_energy", n)
        outside = g["outside_training_set"][:].astype(np.int8) if "outside_training_set" in g else None
        evaluation = _columns(f, "evaluation", path)
        evaluation_step, stale = None, False
        if evaluation is not None:
            if any(v.shape != (n,) for v in evaluation.values()):
                raise RunDirError(f"{path}: /evaluation does not have one entry per geometry")
            attrs = f["evaluation"].attrs
            if "params_step" in attrs:
                evaluation_step = int(attrs["params_step"])
            # The writer sets `stale`; rows at or past the step are checked as well, so a
            # file whose writer did not (yet) mark it reads the same.
            trained_past = evaluation_step is not None and bool(np.any(train["step"] >= evaluation_step))
            stale = bool(attrs.get("stale", 0)) or trained_past
    if outside is None:
        outside = np.full(n, -1, np.int8)
    if len(group) != n or any(c.shape != (n,) for c in (reference, scan, hf_energy, outside)):
        raise RunDirError(f"{path}: /geometries columns differ in length")
    return RunData(
        run_dir,
        path,
        names,
        group,
        reference,
        scan,
        train,
        evaluation,
        pretrain,
        hf_energy=hf_energy,
        outside_training_set=outside,
        evaluation_step=evaluation_step,
        evaluation_stale=stale,
    )


def _columns(f: h5py.File, table: str, path: Path) -> dict[str, np.ndarray] | None:
    """The columns of `table` (`log_schema.TABLES`), cut to the common length of the group's
    datasets (a live run of an older hpcwf grows them one at a time), or None when the group
    does not exist. RunDirError when a column present in every hpcwf file is missing; a later
    column that the file lacks is filled with its `missing` value."""
    if table not in f:
        return None
    group = f[table]
    columns = log_schema.TABLES[table]
    lacking = [c.name for c in columns if c.since_start and c.name not in group]
    if lacking:
        raise RunDirError(f"{path}: /{table} lacks {', '.join(lacking)}")
    length = min((d.shape[0] for d in group.values() if isinstance(d, h5py.Dataset)), default=0)
    return {
        c.name: group[c.name][:length] if c.name in group else np.full(length, c.missing, c.dtype)
        for c in columns
    }


def _float_column(group: h5py.Group, key: str, n: int) -> np.ndarray:
    return group[key][:].astype(np.float64) if key in group else np.full(n, np.nan)


def _text(x: bytes | str | np.generic) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
