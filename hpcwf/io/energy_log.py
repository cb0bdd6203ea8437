"""`energies.h5`: the training log and evaluation results of a run, readable with h5py alone.

Layout:
    /            attrs: format ("hpcwf-energies"), version
    /geometries  per geometry [n_geometries]: names (utf-8), reference_energy (Ha, NaN = unknown),
                 group (utf-8; the geometry's own name when it has no group),
                 scan_coordinate (NaN = not part of a scan), hf_energy (Ha: the geometry's
                 own Hartree-Fock energy in the job's basis, NaN = unknown),
                 outside_training_set (int8: 1 = it has an element or an electron count that
                 the training set of the run's [init] checkpoint never contained, 0 = both
                 occurred there, -1 = unknown: no [init] checkpoint, or it stores none)
    /train       equal-length 1-D datasets, one row per (optimization step, rank);
                 under MPI rank 0 gathers every rank's row
    /pretrain    equal-length 1-D datasets, one row per (HF pre-training step, rank); empty
                 when the run had no pre-training. Pre-training is not resumable: the group is
                 emptied when the run (re)starts from scratch (`EnergyLog.start_over`).
    /evaluation  one entry per geometry. attrs: steps (evaluation steps), params_step (the
                 optimization step of the parameters evaluated: those after /train steps
                 0..params_step-1), stale (1 once the run trained past params_step or was
                 rolled back before it: the energies belong to parameters the run no longer
                 has; readers then fall back to the training window). An evaluation written
                 by an older hpcwf (no params_step) is taken to be of the step its log ended
                 at when a later run first opens the file.
The columns of /train, /pretrain and /evaluation, with dtype, unit and meaning, are listed in
`hpcwf.io.log_schema` (the one list; the reader `hpcwf.analysis.run_data` uses it too). A
column added after a file was written is filled with its `missing` value (NaN) for the rows
already there.
Energies in Hartree.

Writing: only `EnergyLog` (rank 0 of the run) writes the file, and never in place: each flush
renames a complete new version over it (`hpcwf.io.h5files.replace_h5`). Readers need no
coordination with the run: any open (h5py with or without locking, h5dump, a notebook holding
the file for hours) sees one complete version, the one current when it opened the file;
reopening shows the newer rows. Pass `locking=False` to read on file systems without locks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np

from hpcwf.io import log_schema
from hpcwf.io.h5files import open_h5, replace_h5
from hpcwf.systems.molecule import Molecule

TRAIN_FIELDS = log_schema.dtypes("train")
PRETRAIN_FIELDS = log_schema.dtypes("pretrain")
EVALUATION_FIELDS = log_schema.names("evaluation")
# `EnergyLog.maybe_flush` spends at most this share of the wall time on publishing new versions.
PUBLISH_TIME_SHARE = 0.02


def _require_columns(group: h5py.Group, table: str) -> None:
    """Appendable 1-D datasets for the columns of `table` (`log_schema`). Existing ones are
    kept; a column the file lacks (written before it existed) is created with its `missing`
    value (NaN) for the rows already there, so old rows never read as 0."""
    n_rows = group["step"].shape[0] if "step" in group else 0
    for c in log_schema.TABLES[table]:
        if c.name not in group:
            group.create_dataset(
                c.name, data=np.full(n_rows, c.missing, c.dtype), maxshape=(None,), chunks=(1024,)
            )


def damage_reason(path: str | Path) -> str | None:
    """Why the energies file at `path` cannot be continued (one line), or None when it is fine
    or does not exist. Reads every dataset, so a truncated or damaged file is found before a
    run appends to it."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with open_h5(path) as f:
            fmt = f.attrs.get("format")
            if isinstance(fmt, bytes):
                fmt = fmt.decode(errors="replace")
            if fmt is not None and fmt != "hpcwf-energies":
                return f"not an hpcwf energies file (format {fmt!r})"

            def read(_: str, obj) -> None:  # visititems stops at the first non-None return
                if isinstance(obj, h5py.Dataset):
                    obj[()]

            f.visititems(read)
    except Exception as err:  # h5py reports damage as OSError, KeyError, ValueError, ...
        return f"unreadable: {' '.join(str(err).split())}"
    return None


class EnergyLog:
    """Appends training and pre-training rows and stores evaluation results.

    Rows are buffered in memory. `flush()` writes them: it publishes a new version of the file
    (a copy of the current one with the rows appended, renamed over it; see
    `hpcwf.io.h5files`), so a reader never blocks the run, never sees a half-written flush,
    and keeps the version it opened. Call `flush()` at least at every checkpoint, so the file
    holds every row up to the checkpoint's step; `maybe_flush()` is for progress updates: it
    skips (keeping the rows) while publishing would take more than `PUBLISH_TIME_SHARE` of the
    wall time, which bounds the cost of the copies when the log grows large. A failed write
    (e.g. a full disk) leaves the previous version in place and the rows buffered.
    """

    def __init__(
        self,
        path: str | Path,
        geometries: Sequence[Molecule],
        hf_energy: Sequence[float] | None = None,
        outside_training_set: Sequence[int] | None = None,
    ):
        """`hf_energy`: E_HF (Ha) per geometry; `outside_training_set`: per geometry 1/0/-1
        (module docstring), None to keep what the file holds (a resume, which does not read
        the [init] checkpoint again)."""
        self.path = Path(path)
        self._buffer: list[dict] = []
        self._pretrain_buffer: list[dict] = []
        self._last_cost = 0.0  # duration (s) of the last publication
        self._last_end = -np.inf  # time.monotonic() when it ended

        def nan_if_none(x):
            return np.nan if x is None else x

        columns = {
            "names": np.array([m.name for m in geometries], dtype=h5py.string_dtype()),
            "reference_energy": np.array([nan_if_none(m.reference_energy) for m in geometries], np.float64),
            "group": np.array([m.group_name for m in geometries], dtype=h5py.string_dtype()),
            "scan_coordinate": np.array([nan_if_none(m.scan_coordinate) for m in geometries], np.float64),
        }
        if hf_energy is not None:
            columns["hf_energy"] = np.array([nan_if_none(e) for e in hf_energy], np.float64)
        if outside_training_set is not None:
            columns["outside_training_set"] = np.array(outside_training_set, np.int8)

        def init(f: h5py.File) -> None:
            f.attrs["format"] = "hpcwf-energies"
            f.attrs["version"] = 1
            g = f.require_group("geometries")
            for key, data in columns.items():
                if key in g:
                    del g[key]
                g.create_dataset(key, data=data)
            for table in ("train", "pretrain"):
                _require_columns(f.require_group(table), table)
            if "evaluation" in f and "params_step" not in f["evaluation"].attrs:
                # Written by an older hpcwf at the end of its run: of the step its log ends at.
                f["evaluation"].attrs["params_step"] = _n_steps(f["train"])
                f["evaluation"].attrs["stale"] = 0

        # A damaged file is replaced by a fresh one: callers never resume into it (the run
        # refuses to, workflow._resume_point), and a run that starts over drops its rows anyway.
        self._publish(init, fresh=damage_reason(self.path) is not None)

    def _publish(self, *edits: Callable[[h5py.File], None], fresh: bool = False) -> None:
        """One new version of the file: the current one (an empty one if `fresh`) with `edits`
        applied in order."""
        t0 = time.monotonic()
        with replace_h5(self.path, edit=not fresh) as f:
            for edit in edits:
                edit(f)
        self._last_end = time.monotonic()
        self._last_cost = self._last_end - t0

    def append(self, **row) -> None:
        """Buffers one /train row; LogFieldError unless its keys are exactly the columns of
        `log_schema.TRAIN`."""
        log_schema.check_row("train", row)
        self._buffer.append(row)

    def append_pretrain(self, **row) -> None:
        """Buffers one /pretrain row; LogFieldError unless its keys are exactly the columns of
        `log_schema.PRETRAIN`."""
        log_schema.check_row("pretrain", row)
        self._pretrain_buffer.append(row)

    def _append_buffered(self, f: h5py.File) -> None:
        if self._buffer:
            _mark_stale_evaluation(f, lambda p: max(row["step"] for row in self._buffer) >= p)
        for group, fields, buffer in (
            ("train", TRAIN_FIELDS, self._buffer),
            ("pretrain", PRETRAIN_FIELDS, self._pretrain_buffer),
        ):
            if not buffer:
                continue
            columns = f[group]
            n_old = columns["step"].shape[0]
            n_new = n_old + len(buffer)
            for name, dtype in fields.items():
                values = np.array([row[name] for row in buffer], dtype=dtype)
                columns[name].resize((n_new,))
                columns[name][n_old:] = values

    def _publish_buffered(self, *more: Callable[[h5py.File], None]) -> None:
        self._publish(self._append_buffered, *more)
        self._buffer.clear()  # only once the version holding them is in place
        self._pretrain_buffer.clear()

    def flush(self) -> None:
        """Writes the buffered rows now (a new version of the file)."""
        if self._buffer or self._pretrain_buffer:
            self._publish_buffered()

    def maybe_flush(self) -> None:
        """`flush()`, unless the previous one ended less than its duration / PUBLISH_TIME_SHARE
        ago (the rows stay buffered for a later flush)."""
        if time.monotonic() - self._last_end >= self._last_cost / PUBLISH_TIME_SHARE:
            self.flush()

    def truncate(self, n_steps: int) -> None:
        """Drops every row with step >= n_steps (used when resuming from a checkpoint); an
        evaluation of parameters after a later step is marked stale (a rollback)."""

        def cut(f: h5py.File) -> None:
            _mark_stale_evaluation(f, lambda p: p > n_steps)
            train = f["train"]
            # Columns of unequal length: a flush of an older hpcwf (which wrote in place) was cut
            # short; its rows are after the checkpoint, so the common length is what counts.
            common = min(train[name].shape[0] for name in TRAIN_FIELDS)
            keep = int(np.sum(train["step"][:common] < n_steps))
            for name in TRAIN_FIELDS:
                train[name].resize((keep,))

        self._publish_buffered(cut)

    def start_over(self) -> None:
        """Empties /train and /pretrain and drops /evaluation: a run that starts from scratch in
        this file (no checkpoint to resume) keeps nothing of an earlier attempt."""
        self._buffer.clear()
        self._pretrain_buffer.clear()

        def reset(f: h5py.File) -> None:
            for table in ("train", "pretrain", "evaluation"):
                if table in f:
                    del f[table]
            for table in ("train", "pretrain"):
                _require_columns(f.create_group(table), table)

        self._publish(reset)

    def write_evaluation(
        self, results: dict[int, dict], n_geometries: int, steps: int, params_step: int
    ) -> None:
        """results: geometry index -> {column of `log_schema.EVALUATION`: value} (exactly those
        keys, else LogFieldError); geometries without results get the columns' missing values.
        `steps`: evaluation steps; `params_step`: the optimization step of the parameters
        evaluated (the run's /train rows end just before it)."""
        for res in results.values():
            log_schema.check_row("evaluation", res)

        def store(f: h5py.File) -> None:
            if "evaluation" in f:
                del f["evaluation"]
            g = f.create_group("evaluation")
            g.attrs["steps"] = steps
            g.attrs["params_step"] = int(params_step)
            g.attrs["stale"] = 0
            for c in log_schema.EVALUATION:
                data = np.full(n_geometries, c.missing, c.dtype)
                for i, res in results.items():
                    data[i] = res[c.name]
                g.create_dataset(c.name, data=data)

        self._publish_buffered(store)


def _n_steps(train: h5py.Group) -> int:
    """Optimization steps in /train: its largest step + 1 (0 when empty)."""
    common = min(train[name].shape[0] for name in TRAIN_FIELDS)
    return int(train["step"][:common].max()) + 1 if common else 0


def _mark_stale_evaluation(f: h5py.File, outdated: Callable[[int], bool]) -> None:
    """Sets /evaluation's `stale` attr when `outdated(params_step)`: the run has trained past
    the evaluated parameters, or rolled back before them."""
    if "evaluation" in f:
        attrs = f["evaluation"].attrs
        if not attrs.get("stale", 0) and "params_step" in attrs and outdated(int(attrs["params_step"])):
            attrs["stale"] = 1
