"""Per-geometry results of a run directory (`hpcwf analyze`), from `energies.h5` with h5py and
numpy only (no jax, no mpi4py: runs on login nodes, also on a run that is still training).

Every geometry gives one row with these keys (JSON: null, CSV: empty cell where unknown);
energies in Hartree (Ha):

    name                  geometry name
    group                 its group (the geometry's own name when it has none)
    scan_coordinate       position along a scan (units of the job file), null if not a scan
    source                where `energy` comes from: "evaluation" (the final evaluation run),
                          "train" (no current evaluation of this geometry: the mean of the last
                          training steps, see below) or null (no data yet)
    flags                 markers, comma-separated, null when none: "stale_evaluation" (the
                          run's evaluation is of the parameters of an earlier step, see
                          `evaluation_step`, and the run has trained past it or was rolled back
                          since: E comes from the training window instead), "extrapolated"
                          (evaluated without training here on a geometry with an element or
                          electron count that the [init] checkpoint's training set never
                          contained), "above_hf" (an evaluation more than ABOVE_HF_HA = 0.1 Ha
                          above the geometry's own Hartree-Fock energy: far worse than HF)
    energy                E (Ha)
    error                 its standard error (Ha): for "evaluation" the spread of the per-walker
                          means (`statistics.multi_chain_statistics`), for "train" the windowed
                          autocorrelation estimate (`statistics.single_series_statistics`)
    reference             reference energy (Ha), null if unknown
    error_mha             E - reference (mHa)
    hf_energy             the geometry's Hartree-Fock energy (Ha) in the job's basis, null in
                          files of older runs
    variance              variance of the local energy (Ha^2)
    autocorrelation_time  statistical inefficiency tau of the averaged series: MCMC steps for
                          "evaluation", training steps for "train"; null when the series was too
                          short to resolve it
    autocorrelation_time_lower_bound  when tau is unresolved, what the series showed of it
                          (the true tau is larger; the error accounts for that), else null
    r_hat                 split-R-hat of the evaluation's walkers (~1 + tau / steps when they are
                          equilibrated; > 1.1: too few evaluation steps or burn-in), null for
                          "train" and for files written before it was stored
    n_samples             number of values averaged: evaluation samples, or training steps in
                          the window for "train"
    steps_trained         number of optimization steps that trained this geometry so far
    evaluation_step       optimization step of the parameters the run's evaluation evaluated
                          (current or stale), null without evaluation or in older files
    pretrain_loss         mean HF pre-training loss (bohr^-3) over the last pre-training steps
                          of this geometry, null without pre-training

"train" (live runs, extensions, a stale evaluation): the per-step training energies (the mean
over ranks where several ranks train the geometry in a step) of the geometry's last 20 % of
steps, at least 1 and at most 200 (`run_data.WINDOW_*`), averaged; the error is the
single-series error of that window. It is a statistical error only: while the optimization
still improves the wavefunction, the mean lies above the converged energy by more than that
error.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from hpcwf.analysis.run_data import RunData, RunDirError, read_run, window_length
from hpcwf.analysis.statistics import single_series_statistics

__all__ = [
    "KEYS",
    "RunDirError",
    "format_table",
    "format_tau",
    "format_value",
    "geometry_results",
    "results_from_data",
    "to_csv",
    "to_json",
]

KEYS: tuple[str, ...] = (
    "name",
    "group",
    "scan_coordinate",
    "source",
    "flags",
    "energy",
    "error",
    "reference",
    "error_mha",
    "hf_energy",
    "variance",
    "autocorrelation_time",
    "autocorrelation_time_lower_bound",
    "r_hat",
    "n_samples",
    "steps_trained",
    "evaluation_step",
    "pretrain_loss",
)
SOURCE_EVALUATION = "evaluation"
SOURCE_TRAIN = "train"
FLAG_STALE = "stale_evaluation"
FLAG_EXTRAPOLATED = "extrapolated"
FLAG_ABOVE_HF = "above_hf"
# An energy more than this above the geometry's own Hartree-Fock energy is flagged (Ha). A
# trained network lies below E_HF (it contains the HF determinant's physics); VMC noise and an
# unconverged but sane run stay well within 0.1 Ha of it, while a model used far outside what
# it learnt (an H2-only model on LiH: +3.35 Ha) does not.
ABOVE_HF_HA = 0.1


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def geometry_results(run_dir: str | Path) -> list[dict]:
    """One dict per geometry with the keys `KEYS` (see the module docstring); energies in Ha,
    error_mha in mHa. Raises RunDirError when the run directory cannot be read."""
    return results_from_data(read_run(run_dir))


def results_from_data(data: RunData) -> list[dict]:
    """`geometry_results` of an already read run."""
    rows = []
    for i, name in enumerate(data.names):
        steps, energies = data.series("train", "energy", i)
        row: dict = dict.fromkeys(KEYS)
        row.update(
            name=name,
            group=data.group[i],
            scan_coordinate=_finite_or_none(data.scan_coordinate[i]),
            reference=_finite_or_none(data.reference[i]),
            hf_energy=_finite_or_none(data.hf_energy[i]) if data.hf_energy is not None else None,
            n_samples=0,
            steps_trained=int(steps.size),
            evaluation_step=data.evaluation_step,
            pretrain_loss=_final_mean(data, "pretrain", "loss", i),
        )
        flags = []
        ev = data.evaluation
        evaluated = ev is not None and math.isfinite(ev["energy"][i])
        if evaluated and data.evaluation_stale:
            flags.append(FLAG_STALE)  # of parameters the run no longer has: training window
        if evaluated and not data.evaluation_stale:
            row.update(
                source=SOURCE_EVALUATION,
                energy=float(ev["energy"][i]),
                error=_finite_or_none(ev["error"][i]),
                variance=_finite_or_none(ev["variance"][i]),
                autocorrelation_time=_finite_or_none(ev["autocorrelation_time"][i]),
                autocorrelation_time_lower_bound=_finite_or_none(ev["autocorrelation_time_lower_bound"][i]),
                r_hat=_finite_or_none(ev["r_hat"][i]),
                n_samples=int(ev["n_samples"][i]),
            )
        elif np.any(np.isfinite(energies)):
            window = slice(steps.size - window_length(steps.size), None)
            stats = single_series_statistics(energies[window])
            row.update(
                source=SOURCE_TRAIN,
                energy=_finite_or_none(stats.mean),
                error=_finite_or_none(stats.error),
                variance=_final_mean(data, "train", "variance", i),
                autocorrelation_time=_finite_or_none(stats.autocorrelation_time),
                autocorrelation_time_lower_bound=_finite_or_none(stats.autocorrelation_time_lower_bound),
                n_samples=stats.n_samples,
            )
        if row["energy"] is not None and row["reference"] is not None:
            row["error_mha"] = 1000.0 * (row["energy"] - row["reference"])
        outside = data.outside_training_set is not None and data.outside_training_set[i] == 1
        if row["source"] == SOURCE_EVALUATION and outside and steps.size == 0:
            flags.append(FLAG_EXTRAPOLATED)  # zero-shot beyond the training set
        hf = row["hf_energy"]
        if row["source"] == SOURCE_EVALUATION and hf is not None and row["energy"] - hf > ABOVE_HF_HA:
            flags.append(FLAG_ABOVE_HF)  # far worse than HF: garbage, not a result
        row["flags"] = ",".join(flags) or None
        rows.append(row)
    return rows


def _final_mean(data: RunData, table: str, field: str, geometry: int) -> float | None:
    """Mean of the per-step `field` over the geometry's final window of steps in `table`."""
    _, values = data.series(table, field, geometry)
    values = values[values.size - window_length(values.size) :]
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def format_value(x: float | None, spec: str) -> str:
    """`x` formatted with `spec`, or "-" when unknown."""
    return "-" if x is None else format(x, spec)


def format_tau(row: dict) -> str:
    """The autocorrelation time of a row: "9.1", ">7.0" when only a lower bound is known, or
    "-"."""
    if row["autocorrelation_time"] is None and row.get("autocorrelation_time_lower_bound") is not None:
        return ">" + format(row["autocorrelation_time_lower_bound"], ".1f")
    return format_value(row["autocorrelation_time"], ".1f")


CHEMICAL_ACCURACY_MHA = 1.6  # 1 kcal/mol = 1.594 mHa


def accuracy_verdict(row: dict) -> str | None:
    """One line saying whether an evaluated energy is within chemical accuracy (1.6 mHa) of
    its reference, counting its error bar; None without a reference or an evaluation."""
    if row["error_mha"] is None or row["source"] != SOURCE_EVALUATION or row["flags"]:
        return None
    err, sigma = row["error_mha"], 1000.0 * (row["error"] or 0.0)
    what = f"{row['name']}: E - reference = {err:+.1f} +- {sigma:.1f} mHa:"
    if abs(err) <= CHEMICAL_ACCURACY_MHA:
        return f"{what} within chemical accuracy ({CHEMICAL_ACCURACY_MHA} mHa)"
    if abs(err) - 2.0 * sigma <= CHEMICAL_ACCURACY_MHA:
        return f"{what} chemical accuracy ({CHEMICAL_ACCURACY_MHA} mHa) within two error bars"
    return f"{what} NOT within chemical accuracy ({CHEMICAL_ACCURACY_MHA} mHa); train longer"


def format_table(rows: list[dict]) -> str:
    """Fixed-width text table of `geometry_results` rows, with a note when some energies come
    from training (no evaluation yet)."""
    width = max([20, *(len(r["name"]) for r in rows)])
    lines = [
        f"{'geometry':<{width}} {'E (Ha)':>14} {'+-':>10} {'reference':>13} {'E-ref (mHa)':>12} "
        f"{'variance':>10} {'tau':>6} {'steps':>7}  source"
    ]
    for r in rows:
        cells = [
            f"{r['name']:<{width}}",
            f"{format_value(r['energy'], '.6f'):>14}",
            f"{format_value(r['error'], '.6f'):>10}",
            f"{format_value(r['reference'], '.6f'):>13}",
            f"{format_value(r['error_mha'], '+.2f'):>12}",
            f"{format_value(r['variance'], '.4f'):>10}",
            f"{format_tau(r):>6}",
            f"{r['steps_trained']:>7} ",
            (r["source"] or "-") + (f" [{r['flags']}]" if r["flags"] else ""),
        ]
        lines.append(" ".join(cells))
    if any(
        r["autocorrelation_time"] is None and r["autocorrelation_time_lower_bound"] is not None for r in rows
    ):
        lines.append(
            "tau >x: the series was too short to resolve the autocorrelation time (x is what it "
            "showed); the error bar accounts for that"
        )
    if any(r["source"] == SOURCE_TRAIN for r in rows):
        lines.append(
            "source train: not evaluated yet (or stale); mean of the last training steps (biased high while "
            "the optimization still improves)"
        )
    for r in rows:
        verdict = accuracy_verdict(r)
        if verdict:
            lines.append(verdict)
    flagged = {f: [r for r in rows if f in (r["flags"] or "").split(",")] for f in FLAG_NOTES}
    for flag, marked in flagged.items():
        if marked:
            lines.append(f"{flag}: " + FLAG_NOTES[flag].format(**marked[0]))
    return "\n".join(lines)


# What each flag means, as the text table's note (formatted with the first flagged row).
FLAG_NOTES = {
    FLAG_STALE: (
        "the evaluation in energies.h5 is of the parameters of step {evaluation_step}; the run has "
        "since trained past it (or was rolled back before it), so E is from the last training steps; "
        "rerun with [evaluation] steps > 0 to evaluate the current parameters"
    ),
    FLAG_EXTRAPOLATED: (
        "evaluated without training on a geometry with an element or electron count that the "
        "[init] checkpoint's training set never contained: the transferable model extrapolates"
    ),
    FLAG_ABOVE_HF: (
        f"E is more than {ABOVE_HF_HA} Ha above the geometry's own Hartree-Fock energy: the "
        "wavefunction is far worse than HF there (unconverged, or a model used outside what it learnt)"
    ),
}


def to_json(rows: list[dict]) -> str:
    """JSON array of the rows (unknown values as null)."""
    return json.dumps(rows, indent=2, allow_nan=False)


def to_csv(rows: list[dict], keys: tuple[str, ...] = KEYS) -> str:
    """CSV with a header line of `keys` and one line per row (unknown values as empty cells);
    floats are written exactly (shortest round-trip representation)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(keys), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in keys})
    return out.getvalue()
