"""`energies.h5`: the training log and evaluation results of a run, readable with h5py alone.

Layout:
    /            attrs: format ("hpcwf-energies"), version
    /geometries  per geometry [n_geometries]: names (utf-8), reference_energy (Ha, NaN = unknown),
                 group (utf-8; the geometry's own name when it has no group),
                 scan_coordinate (NaN = not part of a scan)
    /train       equal-length 1-D datasets, one row per (step, geometry): step, geometry, energy,
                 variance, clipped_energy, pmove, step_size, learning_rate, damping, grad_norm,
                 time (s since the start of optimization), step_time (s), sync_time (s spent
                 in the global update: waiting for the other ranks, all-reduce and K-FAC inverse;
                 NaN for a skipped update), n_nonfinite (walkers with non-finite E_L)
                 Under MPI every step has one row per rank, gathered by rank 0.
    /evaluation  per geometry (NaN / 0 where a geometry was not evaluated; attrs: steps):
                 energy (Ha), error (its standard error, Ha: the spread of the per-walker means,
                 `hpcwf.analysis.statistics.multi_chain_statistics`), variance (of E_L, Ha^2),
                 autocorrelation_time (statistical inefficiency tau in MCMC steps; NaN when the
                 evaluation was too short to resolve it), autocorrelation_time_lower_bound (then
                 what it showed of tau; NaN when resolved), r_hat (split-R-hat of the walkers),
                 n_samples (steps x walkers), n_chains (walkers), error_blocking (cross-check:
                 blocking error of the per-step walker means, Ha). Files written before
                 autocorrelation_time_lower_bound .. error_blocking existed lack those columns.
    /pretrain    equal-length 1-D datasets, one row per (HF pre-training step, rank): step,
                 geometry, loss (that rank's HF pre-training loss on its own geometry at the
                 parameters before the step's update: mean squared difference of network and HF
                 orbital values, bohr^-3; the global Adam step uses the average over ranks).
                 Empty when the run had no pre-training. Pre-training is not resumable: the group
                 is emptied when pre-training (re)starts.
Energies in Hartree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from hpcwf.systems.molecule import Molecule

TRAIN_FIELDS: dict[str, type] = {
    "step": np.int64,
    "geometry": np.int32,
    "energy": np.float64,
    "variance": np.float64,
    "clipped_energy": np.float64,
    "pmove": np.float64,
    "step_size": np.float64,
    "learning_rate": np.float64,
    "damping": np.float64,
    "grad_norm": np.float64,
    "time": np.float64,
    "step_time": np.float64,
    "sync_time": np.float64,
    "n_nonfinite": np.int32,
}
PRETRAIN_FIELDS: dict[str, type] = {"step": np.int64, "geometry": np.int32, "loss": np.float64}
EVALUATION_FIELDS = (
    "energy",
    "error",
    "variance",
    "autocorrelation_time",
    "n_samples",
    "autocorrelation_time_lower_bound",
    "r_hat",
    "n_chains",
    "error_blocking",
)
_INTEGER_EVALUATION_FIELDS = ("n_samples", "n_chains")


def _require_columns(group: h5py.Group, fields: dict[str, type]) -> None:
    """Empty, appendable 1-D datasets for `fields` (existing ones are kept)."""
    for name, dtype in fields.items():
        if name not in group:
            group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(1024,))


class EnergyLog:
    """Appends training and pre-training rows and stores evaluation results. Rows are buffered
    in memory and written by `flush()` (call it at least at every checkpoint)."""

    def __init__(self, path: str | Path, geometries: Sequence[Molecule]):
        self.path = Path(path)
        self._buffer: list[dict] = []
        self._pretrain_buffer: list[dict] = []
        with h5py.File(self.path, "a") as f:
            f.attrs["format"] = "hpcwf-energies"
            f.attrs["version"] = 1
            g = f.require_group("geometries")

            def nan_if_none(x):
                return np.nan if x is None else x

            columns = {
                "names": np.array([m.name for m in geometries], dtype=h5py.string_dtype()),
                "reference_energy": np.array(
                    [nan_if_none(m.reference_energy) for m in geometries], np.float64
                ),
                "group": np.array([m.group_name for m in geometries], dtype=h5py.string_dtype()),
                "scan_coordinate": np.array([nan_if_none(m.scan_coordinate) for m in geometries], np.float64),
            }
            for key, data in columns.items():
                if key in g:
                    del g[key]
                g.create_dataset(key, data=data)
            for group, fields in (("train", TRAIN_FIELDS), ("pretrain", PRETRAIN_FIELDS)):
                _require_columns(f.require_group(group), fields)

    def append(self, **row) -> None:
        self._buffer.append(row)

    def append_pretrain(self, **row) -> None:
        self._pretrain_buffer.append(row)

    def start_pretrain(self) -> None:
        """Empties /pretrain: a restarted pre-training starts over, so its old rows are stale."""
        self._pretrain_buffer.clear()
        with h5py.File(self.path, "a") as f:
            if "pretrain" in f:
                del f["pretrain"]
            _require_columns(f.create_group("pretrain"), PRETRAIN_FIELDS)

    def flush(self) -> None:
        for group, fields, buffer in (
            ("train", TRAIN_FIELDS, self._buffer),
            ("pretrain", PRETRAIN_FIELDS, self._pretrain_buffer),
        ):
            if not buffer:
                continue
            with h5py.File(self.path, "a") as f:
                columns = f[group]
                n_old = columns["step"].shape[0]
                n_new = n_old + len(buffer)
                for name, dtype in fields.items():
                    values = np.array([row.get(name, np.nan) for row in buffer], dtype=dtype)
                    columns[name].resize((n_new,))
                    columns[name][n_old:] = values
            buffer.clear()

    def truncate(self, n_steps: int) -> None:
        """Drops every row with step >= n_steps (used when resuming from a checkpoint)."""
        self.flush()
        with h5py.File(self.path, "a") as f:
            train = f["train"]
            keep = int(np.sum(train["step"][:] < n_steps))
            for name in TRAIN_FIELDS:
                train[name].resize((keep,))

    def write_evaluation(self, results: dict[int, dict], n_geometries: int, steps: int) -> None:
        """results: geometry index -> {key: value for every key of EVALUATION_FIELDS}."""
        with h5py.File(self.path, "a") as f:
            if "evaluation" in f:
                del f["evaluation"]
            g = f.create_group("evaluation")
            g.attrs["steps"] = steps
            for key in EVALUATION_FIELDS:
                integer = key in _INTEGER_EVALUATION_FIELDS
                data = np.full(n_geometries, 0 if integer else np.nan, np.int64 if integer else np.float64)
                for i, res in results.items():
                    data[i] = res[key]
                g.create_dataset(key, data=data)
