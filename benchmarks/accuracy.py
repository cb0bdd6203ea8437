#!/usr/bin/env python3
"""Single-system accuracy of hpcwf with its default settings: atoms He, B..Ne and LiH, H2O, N2.

Every system runs as its own `hpcwf run` subprocess (model S, one process, every setting at its
default except `[optimization] steps`), so time and memory are its own. Geometries, spins and
reference energies (with sources) come from inputs/datasets/accuracy.toml, written by
inputs/make_datasets.py and listed in inputs/references.md.

Prints per system: optimization steps, evaluated energy +- blocking error (Ha), reference (Ha),
error (mHa), median seconds per optimization step (compile excluded), wall time of the whole
job (HF, pre-training, compile, optimization, evaluation) and the job's peak resident memory.

    python benchmarks/accuracy.py [--systems LiH H2O ...] [--steps N | --steps He=1000 LiH=2000]
                                  [--out DIR] [--set optimization.norm_constraint=0.03 ...]
    python benchmarks/accuracy.py --report-only [--out DIR]   # table of every finished system
    python benchmarks/accuracy.py --windows 200 [--out DIR]   # progress: medians per 200 steps

Each finished system's row is kept as DIR/NAME.json, so runs done in several invocations (one
system at a time on a shared machine) print as one table.

On a shared machine the times depend on the load (energies do not): note it with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import tomli_w
import tomllib

REPO = Path(__file__).resolve().parents[1]
DATASET = REPO / "inputs" / "datasets" / "accuracy.toml"
CHEMICAL_ACCURACY_MHA = 1.6


def load_systems() -> dict[str, dict]:
    """Name -> [[geometry]] table of inputs/datasets/accuracy.toml (bohr, Ha)."""
    tables = tomllib.loads(DATASET.read_text())["geometry"]
    return {t["name"]: t for t in tables}


def parse_steps(values: list[str], names: list[str]) -> dict[str, int]:
    """`--steps N` (all systems) and/or `NAME=N` items; 0 = hpcwf's default steps."""
    steps = dict.fromkeys(names, 0)
    for item in values:
        name, _, n = item.rpartition("=")
        if not name:
            steps = dict.fromkeys(names, int(n))
        elif name not in steps:
            sys.exit(f"--steps {item}: {name} is not among --systems")
        else:
            steps[name] = int(n)
    return steps


def set_key(job: dict, item: str) -> None:
    """Applies one `--set SECTION.KEY=VALUE` (VALUE in TOML) to the job dict."""
    key, _, value = item.partition("=")
    section, _, name = key.partition(".")
    job.setdefault(section, {})[name] = tomllib.loads(f"v = {value}")["v"]


def run_system(geometry: dict, steps: int, out: Path, settings: list[str] = ()) -> dict:
    """Runs one job (every key at its default but `steps` and `settings`, items of --set)
    and returns its row of the results table."""
    name = geometry["name"]
    run_dir = out / name
    job: dict = {"geometry": [geometry], "output": {"dir": str(run_dir), "print_every": 100}}
    if steps:
        job["optimization"] = {"steps": steps}
    for item in settings:
        set_key(job, item)
    job_file = out / f"{name}.toml"
    job_file.write_text(tomli_w.dumps(job))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        command = [sys.executable, "-m", "hpcwf", "run", str(job_file)]
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        # wait4 gives this child's own peak memory (RUSAGE_CHILDREN would be the max over all).
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{name} failed; see {out / f'{name}.log'}")
    with h5py.File(run_dir / "energies.h5", "r", locking=False) as f:
        step_time = f["train/step_time"][:]
        energy, error = float(f["evaluation/energy"][0]), float(f["evaluation/error"][0])
        n_steps = len(step_time)
    reference = geometry["reference_energy"]
    return {
        "name": name,
        "steps": n_steps,
        "energy": energy,
        "error": error,
        "reference": reference,
        "diff_mha": 1000 * (energy - reference),
        "s_per_step": float(np.median(step_time[1:])) if n_steps > 1 else float("nan"),
        "wall_min": wall / 60,
        "peak_mb": usage.ru_maxrss / 1024,
    }


def print_table(rows: list[dict]) -> None:
    cores = len(os.sched_getaffinity(0))
    print(
        f"\nhpcwf defaults (model S, {rows[0]['walkers']} walkers), one process, {cores} CPU core(s), "
        "OPENBLAS_NUM_THREADS=1"
    )
    print(
        f"{'system':<6} {'steps':>6} {'E (Ha)':>13} {'+-':>8} {'ref (Ha)':>12} {'E-ref (mHa)':>12} "
        f"{'s/step':>7} {'wall min':>9} {'peak MB':>8}"
    )
    for r in rows:
        print(
            f"{r['name']:<6} {r['steps']:>6} {r['energy']:>13.5f} {r['error']:>8.5f} {r['reference']:>12.5f} "
            f"{r['diff_mha']:>+12.2f} {r['s_per_step']:>7.3f} {r['wall_min']:>9.1f} {r['peak_mb']:>8.0f}"
        )
    print(f"(chemical accuracy: {CHEMICAL_ACCURACY_MHA} mHa)")


def print_windows(out: Path, systems: dict[str, dict], width: int) -> None:
    """Progress per step: for every system with a run dir in `out` (finished or not), the
    median over each window of `width` optimization steps of (step energy - reference), mHa,
    and of the variance, Ha^2, and the median update norm (K-FAC's step length)."""
    print(f"median per {width} optimization steps: E - ref (mHa) | variance (Ha^2) | update norm")
    for name, geometry in systems.items():
        log = out / name / "energies.h5"
        if not log.exists():
            continue
        with h5py.File(log, "r", locking=False) as f:
            energy, variance = f["train/energy"][:], f["train/variance"][:]
            update = (
                f["train/update_norm"][:] if "update_norm" in f["train"] else np.full_like(energy, np.nan)
            )
        starts = range(0, len(energy), width)
        diff = [1000 * (np.median(energy[i : i + width]) - geometry["reference_energy"]) for i in starts]
        print(f"{name:<6} steps {len(energy):>5}: " + " ".join(f"{d:+7.1f}" for d in diff))
        print(
            f"{'':<6} {'variance':>11}: "
            + " ".join(f"{np.median(variance[i : i + width]):7.2f}" for i in starts)
        )
        print(
            f"{'':<6} {'update norm':>11}: "
            + " ".join(f"{np.median(update[i : i + width]):7.3f}" for i in starts)
        )


def main() -> None:
    systems = load_systems()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", nargs="+", default=list(systems), choices=list(systems))
    parser.add_argument(
        "--steps", nargs="+", default=[], help="N for all systems and/or NAME=N (default: hpcwf's default)"
    )
    parser.add_argument("--out", default="runs/benchmark_accuracy")
    parser.add_argument(
        "--set", nargs="*", default=[], help="job keys SECTION.KEY=VALUE (TOML values) for every system"
    )
    parser.add_argument("--report-only", action="store_true", help="print the table of finished systems")
    parser.add_argument(
        "--windows",
        type=int,
        default=0,
        metavar="N",
        help="print medians per N steps of every run dir in --out (also unfinished) and exit",
    )
    args = parser.parse_args()
    if args.windows:
        print_windows(Path(args.out), systems, args.windows)
        return
    if args.report_only:
        out = Path(args.out)
        rows = [
            json.loads((out / f"{name}.json").read_text())
            for name in systems
            if (out / f"{name}.json").exists()
        ]
        if not rows:
            sys.exit(f"no finished system in {out}")
        print_table(rows)
        return
    steps = parse_steps(args.steps, args.systems)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from hpcwf.io.config import OptimizationConfig

    rows = []
    for name in args.systems:
        rows.append(run_system(systems[name], steps[name], out, args.set))
        rows[-1]["walkers"] = OptimizationConfig().batch_size
        r = rows[-1]
        (out / f"{name}.json").write_text(json.dumps(r, indent=1))
        print(f"{name}: {r['diff_mha']:+.2f} mHa, {r['steps']} steps, {r['wall_min']:.1f} min", flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
