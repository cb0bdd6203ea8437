#!/usr/bin/env python3
"""Energy accuracy and speed of hpcwf on H2 and LiH (model S, one process).

Prints, per system: steps, evaluated energy +- its error (from the spread of the per-walker
means; tau NaN when the evaluation could not resolve it), reference, error (mHa),
seconds per optimization step (median over steps, compile excluded), wall time of the whole
job, compile+burn-in time (first step) and peak resident memory of the job's process.
Each system runs as its own `hpcwf run` subprocess so memory and time are its own.

    python benchmarks/energy_accuracy.py [--systems H2 LiH] [--steps N] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

SYSTEMS = {
    # name: (atoms (bohr), reference energy (Ha) from shared/reference/energies.csv, default steps)
    "H2": ([["H", 0.0, 0.0, 0.0], ["H", 1.4, 0.0, 0.0]], -1.1744757, 3000),
    "LiH": ([["Li", 0.0, 0.0, 0.0], ["H", 3.015, 0.0, 0.0]], -8.070548, 6000),
}

JOB = """
seed = 0
[[geometry]]
name = "{name}"
atoms = {atoms}
reference_energy = {reference}
[model]
size = "S"
[pretraining]
steps = 300
learning_rate = 1e-3
[optimization]
steps = {steps}
batch_size = 256
[mcmc]
steps_per_update = 10
burn_in_steps = 100
[evaluation]
steps = 1000
burn_in_steps = 100
[output]
dir = "{dir}"
print_every = 500
"""


def run_system(name: str, steps: int, out: Path) -> dict:
    atoms, reference, _ = SYSTEMS[name]
    run_dir = out / name
    job = out / f"{name}.toml"
    job.write_text(JOB.format(name=name, atoms=atoms, reference=reference, steps=steps, dir=run_dir))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "hpcwf", "run", str(job)], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # max over children so far
    with h5py.File(run_dir / "energies.h5", "r", locking=False) as f:
        step_time = f["train/step_time"][:]
        e, err = float(f["evaluation/energy"][0]), float(f["evaluation/error"][0])
        tau = float(f["evaluation/autocorrelation_time"][0])
    return {
        "name": name,
        "steps": steps,
        "energy": e,
        "error": err,
        "tau": tau,
        "reference": reference,
        "diff_mha": 1000 * (e - reference),
        "s_per_step": float(np.median(step_time[1:])),
        "first_step_s": float(step_time[0]),
        "wall_min": wall / 60,
        "peak_mb": peak_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--steps", type=int, default=0, help="optimization steps (0 = per-system default)")
    parser.add_argument("--out", default="runs/benchmark_energy")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.systems:
        rows.append(run_system(name, args.steps or SYSTEMS[name][2], out))
        r = rows[-1]
        print(f"{r['name']}: done in {r['wall_min']:.1f} min", flush=True)
    print(
        f"\nhpcwf, model S, 256 walkers, 10 MCMC steps/update, one process, "
        f"{os.cpu_count()} CPU cores, OPENBLAS_NUM_THREADS=1"
    )
    print(
        f"{'system':<6} {'steps':>6} {'E (Ha)':>12} {'+-':>9} {'ref (Ha)':>11} {'E-ref (mHa)':>12} "
        f"{'s/step':>7} {'1st step s':>10} {'wall min':>9} {'peak MB':>8}"
    )
    for r in rows:
        print(
            f"{r['name']:<6} {r['steps']:>6} {r['energy']:>12.5f} {r['error']:>9.5f} {r['reference']:>11.5f} "
            f"{r['diff_mha']:>+12.2f} {r['s_per_step']:>7.3f} {r['first_step_s']:>10.1f} "
            f"{r['wall_min']:>9.1f} {r['peak_mb']:>8.0f}"
        )


if __name__ == "__main__":
    main()
