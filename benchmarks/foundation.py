#!/usr/bin/env python3
"""The shipped foundation model (hpcwf/models/): package it from its pre-training run, and
measure what it is worth (a benchmark, not a test).

    python benchmarks/foundation.py ship runs/foundation-small-pretrain [--name hcno-s]
    python benchmarks/foundation.py training runs/foundation-small-pretrain

`ship` copies the parameters of the run's newest valid checkpoint into
`hpcwf/models/<name>/params.h5` (a parameter file, `hpcwf.io.checkpoint.save_params`) with the
metadata a job is checked against (basis, element layout, model size, orbitals, determinants,
ansatz version) and what the model card quotes: VMC steps, pre-training steps, optimization
wall time (sum of the logged step times, all resumes), hardware, the training set. The model
card `hpcwf/models/<name>/MODEL.md` is written by hand from the figures this script prints.

`training` prints the model's energies on its own training geometries, per compound: the mean
of each geometry's last training steps (`hpcwf.analysis.report`, as `hpcwf analyze` does)
against its HF energy and, where the dataset has one, its reference.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tomllib

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "hpcwf" / "models"


def _hardware() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{os.cpu_count()} CPU cores ({cpu}), no GPU"


def ship(run_dir: Path, name: str, hardware: str) -> Path:
    """Writes hpcwf/models/<name>/params.h5 from the newest valid checkpoint of `run_dir`;
    returns its path. Raises CheckpointError when the run has none."""
    from hpcwf.analysis.run_data import read_run
    from hpcwf.io.checkpoint import (
        load_params,
        read_checkpoint_config,
        read_training_set,
        resolve_init_checkpoint,
        save_params,
    )

    source = resolve_init_checkpoint(run_dir)
    params, attrs = load_params(source)
    config = tomllib.loads(read_checkpoint_config(source))
    training = read_training_set(source) or []
    run = read_run(run_dir)
    step_time = np.asarray(run.train["step_time"], float)
    rank0 = np.asarray(run.train.get("rank", np.zeros_like(step_time)), float) == 0
    wall_h = float(np.nansum(step_time[rank0])) / 3600.0
    groups = sorted({str(g.get("group") or g.get("name")) for g in training})
    matched = ("model_size", "orbitals", "n_determinants", "basis", "elements")
    metadata = {key: attrs[key] for key in matched if key in attrs}
    metadata.update(
        ansatz_version=int(attrs.get("ansatz_version", 1)),
        optimization_steps=int(attrs["step"]),
        pretraining_steps=int(config["pretraining"]["steps"]),
        walkers_per_geometry=int(config["optimization"]["batch_size"]),
        optimization_wall_time_h=round(wall_h, 3),
        hardware=hardware,
        training_set=f"{len(training)} geometries of {', '.join(groups)}",
        source_checkpoint=source.name,
    )
    out = MODELS / name / "params.h5"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_params(out, params, metadata, geometries=training)
    print(f"shipped {source} -> {out} ({out.stat().st_size / 1e6:.2f} MB)")
    for key, value in metadata.items():
        print(f"  {key:<26} {value}")
    return out


def training_energies(run_dir: Path) -> str:
    """Per compound (geometry group) of the run: mean over its geometries of E - E_HF (mHa) and
    of the energy's error bar, the mean variance, steps per geometry; and E - reference where
    the dataset gives references."""
    from hpcwf.analysis.report import geometry_results

    warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of a compound with no trained geometry
    rows = geometry_results(run_dir)
    by_group: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_group[str(row.get("group") or row["name"])].append(row)
    lines = [
        f"{'compound':<8} {'geoms':>5} {'steps/geom':>10} {'E-E_HF (mHa)':>13} {'+-':>6} "
        f"{'variance':>9} {'E-ref (mHa)':>12}"
    ]
    for group, members in by_group.items():

        def column(key: str, members: list[dict] = members) -> np.ndarray:
            return np.array([np.nan if r[key] is None else r[key] for r in members], float)

        e, hf, ref = column("energy"), column("hf_energy"), column("reference")
        d_ref = np.nanmean(e - ref) * 1e3 if np.isfinite(ref).any() else np.nan
        lines.append(
            f"{group:<8} {len(members):>5} {np.nanmean(column('steps_trained')):>10.0f} "
            f"{np.nanmean(e - hf) * 1e3:>+13.1f} {np.nanmean(column('error')) * 1e3:>6.1f} "
            f"{np.nanmean(column('variance')):>9.3f} {d_ref:>+12.1f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_ship = sub.add_parser("ship", help="package the run's newest checkpoint as hpcwf/models/NAME")
    p_ship.add_argument("run_dir", type=Path)
    p_ship.add_argument("--name", default="hcno-s")
    p_ship.add_argument("--hardware", default=_hardware(), help="what the run ran on (model card)")
    p_tr = sub.add_parser("training", help="energies on the model's own training geometries")
    p_tr.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "ship":
        ship(args.run_dir, args.name, args.hardware)
    else:
        print(training_energies(args.run_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
