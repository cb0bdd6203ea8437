#!/usr/bin/env python3
"""Start-up of the 360-geometry foundation data set on 1 and 2 ranks, and its checkpoint.

Each run is a fresh `hpcwf run` (empty HF cache) of inputs/datasets/foundation.toml (18
compounds x 20 geometries, STO-6G, elements H C N O) with no pre-training and ONE optimization
step, one core per rank. From the output lines as they arrive (wall clock since launch):

  - HF         until the `model:` line: MPI/JAX set-up, the model's parameter initialization,
               HF + Boys localization + descriptors of each rank's shard on every rank (in
               parallel), the cache written, device arrays
  - first step until the first `step` line: walkers of every geometry, the optimizer, the
               compilation and burn-in of the first step's geometries, the step
  - checkpoint from that line to the `checkpoint` line: the write of the checkpoint holding
               every geometry's walkers (its size is printed too)
  - peak RSS   the largest resident set of any rank (getrusage of the launched tree)

    python benchmarks/startup.py [--ranks 1 2] [--walkers 256] [--size S] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Runs the command, then reports the largest resident set of any process of its tree that has
# ended (getrusage of the waited-for descendants, KiB) on stderr.
PEAK_RSS = (
    "import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
    "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
    "sys.exit(rc)"
)

JOB = """
seed = 0
dataset = "{dataset}"
[hartree_fock]
basis = "STO-6G"
elements = ["H", "C", "N", "O"]
[model]
size = "{size}"
orbitals = "tao"
n_determinants = 4
[pretraining]
steps = 0
[optimization]
steps = 1
batch_size = {walkers}
[mcmc]
burn_in_steps = 10
[evaluation]
steps = 0
[output]
dir = "{dir}"
print_every = 1
[checkpoint]
every_steps = 1
"""


def run(n_ranks: int, args, work: Path) -> dict:
    run_dir = work / f"ranks{n_ranks}"
    job = work / f"ranks{n_ranks}.toml"
    job.write_text(
        JOB.format(
            dataset=REPO / "inputs" / "datasets" / "foundation.toml",
            size=args.size,
            walkers=args.walkers,
            dir=run_dir,
        )
    )
    hpcwf = [sys.executable, "-m", "hpcwf", "run", str(job)]
    pinned = ["sh", "-c", 'exec taskset -c "${PMI_RANK:-0}" "$@"', "pin", *hpcwf]
    mpiexec = Path(sys.executable).with_name("mpiexec")
    cmd = pinned if n_ranks == 1 else [str(mpiexec), "-n", str(n_ranks), *pinned]
    cmd = [sys.executable, "-c", PEAK_RSS, *cmd]  # a fresh wrapper per run: its own peak
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    marks: dict[str, float] = {}
    t0 = time.perf_counter()
    err_file = work / f"ranks{n_ranks}.stderr"  # a file, not a pipe: a full pipe would block the run
    with err_file.open("w") as err_out:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=err_out, text=True)
    for line in proc.stdout:
        now = time.perf_counter() - t0
        for key, prefix in (("hf", "model:"), ("step", "step "), ("checkpoint", "checkpoint ")):
            if key not in marks and line.startswith(prefix):
                marks[key] = now
    returncode = proc.wait()
    err = err_file.read_text(errors="replace")
    if returncode != 0:
        sys.exit(f"{n_ranks} ranks failed (exit {proc.returncode}):\n{err[-3000:]}")
    wall = time.perf_counter() - t0
    peak_kib = int(err.rsplit("PEAK_RSS_KIB ", 1)[1].split()[0])
    ckpt = sorted((run_dir / "checkpoints").glob("ckpt_*.h5"))[-1]
    return {
        "ranks": n_ranks,
        "hf": marks["hf"],
        "first_step": marks["step"] - marks["hf"],
        "checkpoint": marks["checkpoint"] - marks["step"],
        "size_mb": ckpt.stat().st_size / 1e6,
        "cache_mb": (run_dir / "hf_cache.h5").stat().st_size / 1e6,
        "wall": wall,
        "peak_mb": peak_kib / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--walkers", type=int, default=256, help="walkers per geometry (default 256)")
    parser.add_argument("--size", default="S", help="model size (default S)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run dirs here")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="hpcwf-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"foundation set (360 geometries), model {args.size}, {args.walkers} walkers,"
        f" one core per rank; in {work}"
    )
    print(
        f"{'ranks':>5} {'HF s':>7} {'first step s':>12} {'checkpoint s':>12} {'checkpoint MB':>13}"
        f" {'HF cache MB':>11} {'wall s':>7} {'peak RSS MB':>11}"
    )
    for n in args.ranks:
        r = run(n, args, work)
        print(
            f"{r['ranks']:>5} {r['hf']:>7.1f} {r['first_step']:>12.1f} {r['checkpoint']:>12.2f}"
            f" {r['size_mb']:>13.1f} {r['cache_mb']:>11.1f} {r['wall']:>7.0f} {r['peak_mb']:>11.0f}"
        )


if __name__ == "__main__":
    main()
