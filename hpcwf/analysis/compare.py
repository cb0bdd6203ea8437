"""Several runs side by side (`hpcwf compare RUN_DIR...`), e.g. pre-trained vs from scratch.
h5py and numpy only, like `report`.

Geometries are matched by name; the rows are the union over the runs (in order of first
appearance). Each run is labelled by its directory's basename, or by as many trailing path
components as it takes to tell the runs apart.

JSON (`compare_runs`): {"runs": [{"label", "run_dir"}], "geometries": [{"name", "reference",
"results": {label: {"energy", "error", "error_mha", "source", "flags"} or null if the run lacks
the geometry}}], "summary": {"mean_abs_error_mha": {label: ...}, "n_with_reference": {label: ...},
"common_geometries": [names every run has an error_mha for], "mean_abs_error_mha_common":
{label: ...}}}. Energies in Ha, errors vs reference in mHa; the same fields as `hpcwf analyze`.

CSV (`to_csv`): columns name, reference, then per run `<label> energy`, `<label> error`,
`<label> error_mha`, `<label> source`, `<label> flags`; one line per geometry and a final line named
`mean |E-ref| (mHa)` with each run's mean absolute error in its `<label> error_mha` column.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from hpcwf.analysis import report
from hpcwf.analysis.report import FLAG_NOTES, SOURCE_TRAIN, format_value, geometry_results

RUN_FIELDS = ("energy", "error", "error_mha", "source", "flags")
MEAN_ROW_NAME = "mean |E-ref| (mHa)"


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Distinct column labels: basenames, extended by parent directories where equal."""
    parts = [Path(os.path.abspath(d)).parts for d in run_dirs]
    labels = [str(d) for d in run_dirs]
    for depth in range(1, max((len(p) for p in parts), default=0) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{label}#{i + 1}" for i, label in enumerate(labels)]  # the same directory twice


def compare_runs(run_dirs: Sequence[str | Path]) -> dict:
    """The comparison of several runs (structure: module docstring). Raises RunDirError for the
    first run directory that cannot be read."""
    labels = run_labels(run_dirs)
    per_run = {
        label: {r["name"]: r for r in geometry_results(d)} for label, d in zip(labels, run_dirs, strict=True)
    }
    names = list(dict.fromkeys(name for rows in per_run.values() for name in rows))
    geometries = []
    for name in names:
        refs = [rows[name]["reference"] for rows in per_run.values() if name in rows]
        geometries.append(
            {
                "name": name,
                "reference": next((r for r in refs if r is not None), None),
                "results": {
                    label: {k: rows[name][k] for k in RUN_FIELDS} if name in rows else None
                    for label, rows in per_run.items()
                },
            }
        )

    def errors(label: str, only: list[str] | None = None) -> list[float]:
        rows = per_run[label]
        return [
            abs(rows[n]["error_mha"])
            for n in (names if only is None else only)
            if n in rows and rows[n]["error_mha"] is not None
        ]

    common = [n for n in names if all(len(errors(label, [n])) == 1 for label in labels)]
    return {
        "runs": [{"label": label, "run_dir": str(d)} for label, d in zip(labels, run_dirs, strict=True)],
        "geometries": geometries,
        "summary": {
            "mean_abs_error_mha": {label: _mean(errors(label)) for label in labels},
            "n_with_reference": {label: len(errors(label)) for label in labels},
            "common_geometries": common,
            "mean_abs_error_mha_common": {label: _mean(errors(label, common)) for label in labels},
        },
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def format_table(comparison: dict) -> str:
    """Text table: one line per geometry, per run `E (Ha) +- error` and `E-ref (mHa)` (a `*`
    marks energies from training, not evaluation; a `!` flagged ones, see `hpcwf analyze`),
    then the mean |E-ref| per run."""
    labels = [r["label"] for r in comparison["runs"]]
    name_width = max([len(MEAN_ROW_NAME) + 9, *(len(g["name"]) for g in comparison["geometries"])])
    col = [max(len(label), 34) for label in labels]

    def cells(energy: str, err: str) -> str:
        return f"{energy:>23} {err:>11}"

    head = f"{'geometry':<{name_width}} {'reference':>13}"
    sub = f"{'':<{name_width}} {'(Ha)':>13}"
    for label, w in zip(labels, col, strict=True):
        head += f" | {label:<{w}}"
        sub += f" | {cells('E (Ha)', 'E-ref (mHa)'):<{w}}"
    lines = [head, sub]
    train_marked, flagged = False, set()
    for g in comparison["geometries"]:
        line = f"{g['name']:<{name_width}} {format_value(g['reference'], '.6f'):>13}"
        for label, w in zip(labels, col, strict=True):
            r = g["results"][label]
            if r is None or r["energy"] is None:
                text = cells("-", "-")
            else:
                mark = ("*" if r["source"] == SOURCE_TRAIN else "") + ("!" if r["flags"] else "")
                energy = f"{r['energy']:.6f} +- {format_value(r['error'], '.6f')}{mark:<2}"
                train_marked |= "*" in mark
                flagged.update((r["flags"] or "").split(",") if r["flags"] else ())
                text = cells(energy, format_value(r["error_mha"], "+.2f"))
            line += f" | {text:<{w}}"
        lines.append(line)
    summary = comparison["summary"]
    rows = [(MEAN_ROW_NAME, summary["mean_abs_error_mha"], summary["n_with_reference"])]
    common = summary["common_geometries"]
    if common and any(n != len(common) for n in summary["n_with_reference"].values()):
        n_common = dict.fromkeys(labels, len(common))
        rows.append((f"{MEAN_ROW_NAME}, common", summary["mean_abs_error_mha_common"], n_common))
    for title, means, counts in rows:
        line = f"{title:<{name_width}} {'':>13}"
        for label, w in zip(labels, col, strict=True):
            line += f" | {cells(f'n={counts[label]}', format_value(means[label], '.2f')):<{w}}"
        lines.append(line)
    if train_marked:
        lines.append(
            "* not evaluated (yet), or its evaluation is stale: mean of the last training steps "
            "(see `hpcwf analyze`)"
        )
    for flag in FLAG_NOTES:
        if flag in flagged:
            lines.append(f"! {flag}: {FLAG_NOTES[flag].format(evaluation_step='(see hpcwf analyze)')}")
    return "\n".join(lines)


def to_json(comparison: dict) -> str:
    return json.dumps(comparison, indent=2, allow_nan=False)


def csv_columns(comparison: dict) -> list[str]:
    """Header of `to_csv`."""
    labels = [r["label"] for r in comparison["runs"]]
    return ["name", "reference", *(f"{label} {k}" for label in labels for k in RUN_FIELDS)]


def to_csv(comparison: dict) -> str:
    """Wide CSV (columns: module docstring); unknown values as empty cells."""
    labels = [r["label"] for r in comparison["runs"]]
    rows = []
    for g in comparison["geometries"]:
        row = {"name": g["name"], "reference": g["reference"]}
        for label in labels:
            row.update({f"{label} {k}": v for k, v in (g["results"][label] or {}).items()})
        rows.append(row)
    means = comparison["summary"]["mean_abs_error_mha"]
    rows.append({"name": MEAN_ROW_NAME, **{f"{label} error_mha": means[label] for label in labels}})
    return report.to_csv(rows, keys=tuple(csv_columns(comparison)))
