"""Per-geometry results of a run directory, from `energies.h5` with h5py and numpy only
(no jax, no mpi4py: runs on login nodes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np

from hpcwf.errors import InputError


class RunDirError(InputError):
    """The run directory cannot be analysed; str() names the file and the problem."""


def _nan_to_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def geometry_results(run_dir: str | Path) -> list[dict]:
    """One dict per geometry: name, energy, error, reference, error_mha (E - reference, mHa),
    variance, autocorrelation_time, n_samples, steps_trained. Energies in Hartree; values are
    None when not available (no evaluation yet, no reference)."""
    path = Path(run_dir) / "energies.h5"
    if not path.exists():
        raise RunDirError(f"{path}: not found (is {run_dir} an hpcwf run directory?)")
    try:
        with h5py.File(path, "r") as f:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["geometries/names"][:]]
            refs = f["geometries/reference_energy"][:]
            geometry_index = f["train/geometry"][:] if "train" in f else np.zeros(0, int)
            ev = {k: f["evaluation"][k][:] for k in f["evaluation"]} if "evaluation" in f else None
    except (OSError, KeyError) as err:
        raise RunDirError(f"{path}: unreadable ({err})") from err
    out = []
    for i, name in enumerate(names):
        ref = _nan_to_none(refs[i])
        row = {
            "name": name,
            "energy": None,
            "error": None,
            "reference": ref,
            "error_mha": None,
            "variance": None,
            "autocorrelation_time": None,
            "n_samples": 0,
            "steps_trained": int(np.sum(geometry_index == i)),
        }
        if ev is not None:
            row.update(
                energy=_nan_to_none(ev["energy"][i]),
                error=_nan_to_none(ev["error"][i]),
                variance=_nan_to_none(ev["variance"][i]),
                autocorrelation_time=_nan_to_none(ev["autocorrelation_time"][i]),
                n_samples=int(ev["n_samples"][i]),
            )
        if row["energy"] is not None and ref is not None:
            row["error_mha"] = 1000.0 * (row["energy"] - ref)
        out.append(row)
    return out


def format_table(rows: list[dict]) -> str:
    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    lines = [
        f"{'geometry':<20} {'E (Ha)':>14} {'+-':>10} {'reference':>13} {'E-ref (mHa)':>12} "
        f"{'variance':>10} {'tau':>6} {'steps':>7}"
    ]
    for r in rows:
        lines.append(
            f"{r['name']:<20} {fmt(r['energy'], '.6f'):>14} {fmt(r['error'], '.6f'):>10} "
            f"{fmt(r['reference'], '.6f'):>13} {fmt(r['error_mha'], '+.2f'):>12} "
            f"{fmt(r['variance'], '.4f'):>10} {fmt(r['autocorrelation_time'], '.1f'):>6} "
            f"{r['steps_trained']:>7}"
        )
    return "\n".join(lines)


def to_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=2)
