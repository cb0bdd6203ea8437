#!/usr/bin/env python3
"""Weak scaling of distributed VMC: 1 rank vs N ranks, one CPU core per rank.

The job is a multi-geometry hydrogen chain (H4 at several bond lengths). Work per rank is held
fixed: every rank holds `--per-rank` geometries, so the N-rank job has N times the geometries
of the 1-rank job; each step every rank optimizes one geometry of its shard, all in one
all-reduced K-FAC update. Each rank is pinned to its own core (taskset), so XLA's thread pool
sees one core per rank.

Measured from the runs' own `energies.h5` (one row per rank per step), on the steps after the
warm-up (each geometry's first visit includes compilation and MCMC burn-in):
  - s/step        median over steps of the slowest rank's step time
  - geometries/s  rows per step / (s/step)
  - efficiency    geometries/s (N ranks) / (N * geometries/s (1 rank))
  - update        median over steps of the fastest rank's sync_time: the global update itself
                  (all-reduce + K-FAC inverses + parameter update); the fastest rank waited least
  - wait          median of (slowest - fastest) sync_time: lock-step waiting for other ranks
  - comm          (update(N) - update(1)) / step(N): the share of step time the N-rank job
                  spends on what the 1-rank job does not do, i.e. communication

    python benchmarks/weak_scaling.py [--ranks 2] [--per-rank 2] [--steps 120] [--walkers 256]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

JOB = """
seed = 0
[model]
size = "{size}"
[pretraining]
steps = 1
[optimization]
steps = {steps}
batch_size = {walkers}
damping = 1e-3
damping_initial = 1e-3
learning_rate = 0.05
[mcmc]
steps_per_update = {mcmc_steps}
burn_in_steps = 20
[evaluation]
steps = 0
[output]
dir = "{dir}"
print_every = 20
"""

GEOMETRY = """
[[geometry]]
name = "H4_{d:.2f}"
atoms = [{atoms}]
"""


def h_chain(n_atoms: int, spacing: float) -> str:
    """Equidistant chain along x, spacing in bohr."""
    return ", ".join(f'["H", {i * spacing:.4f}, 0.0, 0.0]' for i in range(n_atoms))


def write_job(path: Path, n_geometries: int, args, run_dir: Path) -> None:
    spacings = np.linspace(1.4, 2.2, n_geometries)
    text = JOB.format(
        size=args.size, steps=args.steps, walkers=args.walkers, mcmc_steps=args.mcmc_steps, dir=run_dir
    )
    text += "".join(GEOMETRY.format(d=d, atoms=h_chain(4, d)) for d in spacings)
    path.write_text(text)


def run(n_ranks: int, args, work: Path) -> dict:
    run_dir = work / f"ranks{n_ranks}"
    job = work / f"ranks{n_ranks}.toml"
    write_job(job, n_ranks * args.per_rank, args, run_dir)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    hpcwf = [sys.executable, "-m", "hpcwf", "run", str(job)]
    # Pin rank r to core r: hydra sets PMI_RANK in each rank's environment.
    pinned = ["sh", "-c", 'exec taskset -c "${PMI_RANK:-0}" "$@"', "pin", *hpcwf]
    mpiexec = Path(sys.executable).with_name("mpiexec")
    cmd = pinned if n_ranks == 1 else [str(mpiexec), "-n", str(n_ranks), *pinned]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{n_ranks} ranks failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    with h5py.File(run_dir / "energies.h5", "r", locking=False) as f:
        step = f["train/step"][:]
        step_time, sync_time = f["train/step_time"][:], f["train/sync_time"][:]
    warm = step >= 2 * args.per_rank  # every geometry visited, compiled and burnt in
    per_step_max, sync_min, sync_spread = [], [], []
    for t in np.unique(step[warm]):
        rows = step == t
        per_step_max.append(step_time[rows].max())
        sync_min.append(sync_time[rows].min())
        sync_spread.append(sync_time[rows].max() - sync_time[rows].min())
    s_step = float(np.median(per_step_max))
    return {
        "ranks": n_ranks,
        "geometries": n_ranks * args.per_rank,
        "steps": int(len(per_step_max)),
        "s_step": s_step,
        "geometries_per_s": n_ranks / s_step,
        "update": float(np.median(sync_min)),
        "wait": float(np.median(sync_spread)),
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ranks", type=int, default=2, help="ranks of the scaled run (default 2)")
    parser.add_argument("--per-rank", type=int, default=2, help="geometries per rank (default 2)")
    parser.add_argument("--steps", type=int, default=120, help="optimization steps (default 120)")
    parser.add_argument("--walkers", type=int, default=256, help="walkers per geometry (default 256)")
    parser.add_argument("--mcmc-steps", type=int, default=5, help="MCMC moves per step (default 5)")
    parser.add_argument("--size", default="S", help="model size (default S)")
    parser.add_argument("--out", type=Path, default=None, help="keep the run dirs here")
    args = parser.parse_args()
    if args.ranks > os.cpu_count():
        sys.exit(f"--ranks {args.ranks} needs {args.ranks} cores; this machine has {os.cpu_count()}")
    work = args.out or Path(tempfile.mkdtemp(prefix="hpcwf-weak-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"H4 chains, model {args.size}, {args.walkers} walkers/geometry, {args.mcmc_steps} MCMC moves/step,"
        f" {args.per_rank} geometries/rank, {args.steps} steps, one core per rank; runs in {work}"
    )
    results = [run(1, args, work), run(args.ranks, args, work)]
    one = results[0]
    print(
        f"{'ranks':>5} {'geoms':>5} {'steps':>5} {'s/step':>8} {'geoms/s':>8} {'efficiency':>10}"
        f" {'update s':>9} {'wait s':>7} {'comm':>6} {'wall s':>7}"
    )
    for r in results:
        efficiency = r["geometries_per_s"] / (r["ranks"] * one["geometries_per_s"])
        comm = (r["update"] - one["update"]) / r["s_step"]  # signed: noise shows as < 0
        print(
            f"{r['ranks']:>5} {r['geometries']:>5} {r['steps']:>5} {r['s_step']:>8.4f}"
            f" {r['geometries_per_s']:>8.2f} {efficiency:>10.0%} {r['update']:>9.4f} {r['wait']:>7.4f}"
            f" {comm:>+6.1%} {r['wall']:>7.1f}"
        )


if __name__ == "__main__":
    main()
