"""The columns of `energies.h5`: the one list that the writer (`hpcwf.io.energy_log`), the
login-node reader (`hpcwf.analysis.run_data`) and the docs rely on. numpy only (no jax, no
h5py), so it imports anywhere.

Adding a column to a table:
  * a walker statistic (a reduction such as mean, var or max over the walkers of a per-walker
    quantity of WALKER_QUANTITIES, e.g. the local energy): one `Column` here with `statistic`,
    nothing else; the VMC step computes every declared statistic
    (`hpcwf.training.vmc.walker_statistics`);
  * any other quantity: one `Column` here and the key in the metrics dict of the step that
    computes it (`hpcwf.training`).
Rows go to the log as they are, and `check_row` makes a key that is not listed here, or a
listed key that a row lacks, an error at once (not a NaN column found weeks later). Files
written before a column existed read that column as its `missing` value (NaN for floats),
never as 0.

Tables:
    train       one row per (optimization step, rank); under MPI rank 0 gathers them (with
                `[parallel] ranks_per_geometry`, one per group of ranks sharing a geometry:
                its statistics are over the whole batch, its timings the group's first rank's).
    pretrain    one row per (HF pre-training step, rank or group), then one check row per
                geometry.
    evaluation  one entry per geometry (NaN / 0 where a geometry was not evaluated).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Column:
    """One 1-D dataset of a table.

    name: dataset name; dtype: numpy dtype on disk; unit: physical unit ("" if none);
    meaning: one line for the docs; since_start: present in every file hpcwf has written
    (the reader refuses a file without it), else read as `missing` when a file lacks it;
    missing: the value of a row that has no entry (older files, an evaluation that skipped the
    geometry); source: "runner" (what the stage runner adds to every row: the step and its
    clocks), "step" (the stage step's metrics) or "update" (the optimizer's; NaN when no update was
    computed for the step); statistic: (reduction, quantity) for a walker statistic that the
    step computes from this declaration alone: reduction one of REDUCTIONS over the walker
    axis, quantity a key of WALKER_QUANTITIES.
    """

    name: str
    dtype: type
    unit: str
    meaning: str
    since_start: bool = False
    missing: float | int = np.nan
    source: str = "step"
    statistic: tuple[str, str] | None = None


# Reductions over the walker axis that a `statistic` may name (jnp functions of the same name,
# hpcwf.training.vmc): var and std are the population ones (ddof 0).
REDUCTIONS = ("mean", "var", "std", "min", "max", "median")

# Per-walker quantities of a VMC step, [n_walkers] each, that statistics reduce.
WALKER_QUANTITIES = {
    "local_energy": "E_L of each walker after the step's MCMC sweep (Ha)",
    "clipped_local_energy": "E_L clipped to the previous visit's window (Ha; optimization only)",
}


TRAIN: tuple[Column, ...] = (
    Column("step", np.int64, "", "optimization step", True, -1, "runner"),
    Column("geometry", np.int32, "", "global index of the geometry trained", True, -1),
    Column(
        "energy",
        np.float64,
        "Ha",
        "mean local energy E_L of the walkers",
        True,
        statistic=("mean", "local_energy"),
    ),
    Column(
        "variance",
        np.float64,
        "Ha^2",
        "variance of E_L over the walkers",
        True,
        statistic=("var", "local_energy"),
    ),
    Column(
        "clipped_energy",
        np.float64,
        "Ha",
        "mean of the clipped E_L (what the gradient sees)",
        statistic=("mean", "clipped_local_energy"),
    ),
    Column("pmove", np.float64, "", "MCMC acceptance rate of the step's sweep"),
    Column("step_size", np.float64, "bohr", "MCMC proposal width after the sweep"),
    Column("learning_rate", np.float64, "", "learning rate of the update", source="update"),
    Column("damping", np.float64, "", "K-FAC damping (NaN for Adam)", source="update"),
    Column("grad_norm", np.float64, "", "norm of the (rank-averaged) energy gradient", source="update"),
    Column("update_norm", np.float64, "", "norm of the parameter update", source="update"),
    Column("time", np.float64, "s", "wall time since the start of optimization", source="runner"),
    Column("step_time", np.float64, "s", "wall time of the step", source="runner"),
    Column(
        "sync_time",
        np.float64,
        "s",
        "time in the step's collectives: the choice of the cost class, the non-finite check after "
        "sampling and the global update (waiting for the other ranks, all-reduce, K-FAC "
        "inverses); NaN for a skipped update. The exchange of energies within a group of ranks "
        "sharing a geometry is not counted (it is part of sampling)",
    ),
    Column("n_nonfinite", np.int32, "", "walkers with a non-finite E_L", missing=0),
    Column(
        "rolled_back",
        np.int8,
        "",
        "1: the step was rejected on every rank (a non-finite E_L or update somewhere); "
        "parameters, optimizer state and the geometry's walkers stayed as before it",
        missing=0,
    ),
)

PRETRAIN: tuple[Column, ...] = (
    Column("step", np.int64, "", "HF pre-training step", True, -1, "runner"),
    Column("geometry", np.int32, "", "global index of the geometry", True, -1),
    Column(
        "loss",
        np.float64,
        "bohr^-3",
        "pre-training loss on this rank's geometry (mean squared difference of network and HF "
        "orbitals, over its walkers on every rank of the group sharing it) at the parameters "
        "before the update; the global Adam step uses the mean over ranks",
        True,
    ),
    Column("rolled_back", np.int8, "", "1: the step's non-finite update was rejected", missing=0),
    Column(
        "energy",
        np.float64,
        "Ha",
        "start check, one row per geometry after the step rows (step = pre-training steps; 0 "
        "when fine-tuning; loss NaN): mean E_L of the network VMC starts from, sampled from its "
        "own psi^2; NaN on step rows",
    ),
    Column(
        "variance",
        np.float64,
        "Ha^2",
        "start check: variance of that E_L over the walkers; NaN on step rows",
    ),
)

EVALUATION: tuple[Column, ...] = (
    Column("energy", np.float64, "Ha", "mean unclipped E_L", True),
    Column("error", np.float64, "Ha", "standard error: spread of the per-walker means", True),
    Column("variance", np.float64, "Ha^2", "variance of E_L", True),
    Column(
        "autocorrelation_time",
        np.float64,
        "MCMC steps",
        "statistical inefficiency tau; NaN when the evaluation was too short to resolve it",
        True,
    ),
    Column("n_samples", np.int64, "", "steps x walkers", True, 0),
    Column(
        "autocorrelation_time_lower_bound",
        np.float64,
        "MCMC steps",
        "what the evaluation showed of tau when unresolved; NaN when resolved",
    ),
    Column("r_hat", np.float64, "", "split-R-hat of the walkers' chains"),
    Column("n_chains", np.int64, "", "walkers (independent chains)", missing=0),
    # A lower bound, not an error bar: with the evaluation's few hundred steps blocking cannot
    # reach blocks longer than the correlation (benchmarks/error_bar_coverage.py).
    Column(
        "error_blocking",
        np.float64,
        "Ha",
        "lower bound of the error (cross-check only; use `error`): Flyvbjerg-Petersen blocking of "
        "the per-step means, too small when the evaluation is short against tau (AR(1) with tau = 9: "
        "47 % of means within +- it at 200 steps, not 68 %)",
    ),
)

TABLES: dict[str, tuple[Column, ...]] = {"train": TRAIN, "pretrain": PRETRAIN, "evaluation": EVALUATION}


class LogFieldError(KeyError):
    """A row whose keys differ from its table's columns (a field computed but not declared in
    `hpcwf.io.log_schema`, or a declared one that the step no longer computes)."""

    def __str__(self) -> str:
        return str(self.args[0])


def dtypes(table: str) -> dict[str, type]:
    """{column name: numpy dtype} of `table`, in file order."""
    return {c.name: c.dtype for c in TABLES[table]}


def names(table: str, source: str | None = None) -> tuple[str, ...]:
    """Column names of `table` (only those of `source` if given)."""
    return tuple(c.name for c in TABLES[table] if source is None or c.source == source)


def statistics(table: str) -> dict[str, tuple[str, str]]:
    """{column: (reduction, walker quantity)} of the walker-statistic columns of `table`."""
    return {c.name: c.statistic for c in TABLES[table] if c.statistic is not None}


def missing_values(table: str, source: str | None = None) -> dict[str, float | int]:
    """{column: value of a row without an entry} (NaN for floats), optionally one source only."""
    return {c.name: c.missing for c in TABLES[table] if source is None or c.source == source}


def check_row(table: str, row: dict) -> None:
    """Raises LogFieldError naming the keys of `row` that `table` lacks and the columns that
    `row` lacks."""
    expected = names(table)
    unknown = [k for k in row if k not in expected]
    missing = [k for k in expected if k not in row]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown field(s) {', '.join(unknown)} (declare them in hpcwf/io/log_schema.py)")
        if missing:
            parts.append(f"missing field(s) {', '.join(missing)}")
        raise LogFieldError(f"energies.h5 /{table} row: {'; '.join(parts)}")


def markdown() -> str:
    """The columns of every table as Markdown (docs/analysis.md shows this)."""
    lines = []
    for table, columns in TABLES.items():
        lines += [f"`/{table}`:", "", "| column | dtype | unit | meaning |", "|---|---|---|---|"]
        lines += [f"| `{c.name}` | {np.dtype(c.dtype).name} | {c.unit} | {c.meaning} |" for c in columns]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
