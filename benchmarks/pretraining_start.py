#!/usr/bin/env python3
"""Where VMC starts: the energy and variance of the network after the default HF
pre-training, next to E_HF, for atoms and small molecules (issue "VMC starts at Hartree-Fock").

Every system runs as its own `hpcwf run` subprocess with every setting at its default except
`[optimization] steps = 1` and `[evaluation] steps = 0`. Reported per system:

  * E_HF (Ha) of the job's HF (its basis, STO-6G by default), parsed from the run's output;
  * the first VMC step's mean E_L and its variance (Ha, Ha^2): walkers burned in
    (`[mcmc] burn_in_steps`) and swept once under the pre-trained parameters, before the first
    update; this is what any checkout measures, so `--repo` compares two of them;
  * the end-of-pre-training check rows of /pretrain (energy, variance) where the checkout
    writes them.

    python benchmarks/pretraining_start.py [--systems O N2 ...] [--repo CHECKOUT] [--out DIR]
                                           [--set pretraining.steps=1000 ...]
    python benchmarks/pretraining_start.py --report-only --out DIR [--baseline DIR]

Geometries, spins and references come from inputs/datasets/accuracy.toml. `--baseline DIR`
prints another run's variances beside these (e.g. DIR made with --repo of an older checkout).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import tomli_w
import tomllib
from accuracy import set_key  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
DATASET = REPO / "inputs" / "datasets" / "accuracy.toml"


def load_systems() -> dict[str, dict]:
    return {t["name"]: t for t in tomllib.loads(DATASET.read_text())["geometry"]}


def run_system(geometry: dict, out: Path, repo: Path, settings: list[str]) -> dict:
    name = geometry["name"]
    run_dir = out / name
    job: dict = {
        "geometry": [geometry],
        "optimization": {"steps": 1},
        "evaluation": {"steps": 0},
        "output": {"dir": str(run_dir), "print_every": 100},
    }
    for item in settings:
        set_key(job, item)
    job_file = out / f"{name}.toml"
    job_file.write_text(tomli_w.dumps(job))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(repo))
    t0 = time.perf_counter()
    log_path = out / f"{name}.log"
    with open(log_path, "w") as log:
        # cwd = the checkout: `python -m` puts the working directory first on sys.path.
        code = subprocess.call(
            [sys.executable, "-m", "hpcwf", "run", str(job_file)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=repo,
        )
    if code != 0:
        raise SystemExit(f"{name}: hpcwf run failed with exit code {code}; see {log_path}")
    text = log_path.read_text()
    e_hf = float(re.search(r"E_HF = (-?\d+\.\d+) Ha", text).group(1))
    with h5py.File(run_dir / "energies.h5", "r") as f:
        train = f["train"]
        row = {
            "name": name,
            "e_hf": e_hf,
            "first_step_energy": float(train["energy"][0]),
            "first_step_variance": float(train["variance"][0]),
            "wall_s": time.perf_counter() - t0,
            "settings": settings,
            "repo": str(repo),
        }
        pre = f["pretrain"]
        if "energy" in pre:
            energy = np.asarray(pre["energy"])
            check = np.isfinite(energy)
            if check.any():
                row["check_energy"] = float(energy[check][0])
                row["check_variance"] = float(np.asarray(pre["variance"])[check][0])
            row["final_loss"] = float(np.asarray(pre["loss"])[~check][-1])
        else:
            row["final_loss"] = float(np.asarray(pre["loss"])[-1])
    (out / f"{name}.json").write_text(json.dumps(row, indent=1))
    return row


def report(out: Path, baseline: Path | None) -> None:
    names = list(load_systems())
    rows = {n: json.loads((out / f"{n}.json").read_text()) for n in names if (out / f"{n}.json").exists()}
    base = {}
    if baseline:
        base = {
            n: json.loads((baseline / f"{n}.json").read_text())
            for n in names
            if (baseline / f"{n}.json").exists()
        }
    head = (
        f"{'system':<6} {'E_HF':>11} {'E first step':>13} {'- E_HF (mHa)':>13} {'variance':>9} "
        f"{'check E - E_HF':>15} {'check var':>10} {'loss':>9}"
    )
    if base:
        head += f" {'baseline E - E_HF':>18} {'baseline var':>13} {'var ratio':>9}"
    print(head)
    for n, r in rows.items():
        d = 1e3 * (r["first_step_energy"] - r["e_hf"])
        check = f"{1e3 * (r['check_energy'] - r['e_hf']):+15.0f}" if "check_energy" in r else f"{'-':>15}"
        check_var = f"{r['check_variance']:10.3g}" if "check_variance" in r else f"{'-':>10}"
        line = (
            f"{n:<6} {r['e_hf']:11.4f} {r['first_step_energy']:13.4f} {d:+13.0f} "
            f"{r['first_step_variance']:9.3g} {check} {check_var} {r['final_loss']:9.2e}"
        )
        if n in base:
            b = base[n]
            line += (
                f" {1e3 * (b['first_step_energy'] - b['e_hf']):+18.0f} {b['first_step_variance']:13.3g}"
                f" {r['first_step_variance'] / b['first_step_variance']:9.2f}"
            )
        print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", nargs="*", default=None)
    p.add_argument("--repo", type=Path, default=REPO, help="checkout whose hpcwf runs (default: this one)")
    p.add_argument("--out", type=Path, default=Path("runs/pretraining_start"))
    p.add_argument("--set", nargs="*", default=[], help="job keys SECTION.KEY=VALUE (TOML values)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--baseline", type=Path, default=None)
    args = p.parse_args()
    args.out = args.out.resolve()  # the runs' working directory is the checkout
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        systems = load_systems()
        for name in args.systems or list(systems):
            row = run_system(systems[name], args.out, args.repo.resolve(), args.set)
            print(
                f"{name}: first step {row['first_step_energy']:.4f} Ha, var {row['first_step_variance']:.3g}",
                flush=True,
            )
    report(args.out, args.baseline)


if __name__ == "__main__":
    main()
