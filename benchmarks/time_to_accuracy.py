#!/usr/bin/env python3
"""Time to an accurate energy, hpcwf next to DeepErwin (a benchmark, not a test).

What a user pays for is wall time until the energy is right, not steps. For LiH at equilibrium
(`lih1`, one geometry) and the 3-geometry LiH set of the peer configuration (`lih3`, bond lengths
2.8, 3.015, 3.2 bohr, shared weights), each code runs for a fixed wall-clock budget from launch
(everything counts: HF, pre-training, compilation, burn-in) and is then stopped with SIGTERM.
Its per-step energies (walker means, Ha) and their wall times since launch are read back:

  * hpcwf: `energies.h5` `/train` (energy, time since the start of optimization); the offset of
    that clock from the launch is taken from the wall time at which the first progress line
    `step N/...` appeared on the job's stdout (time of that step's row).
  * DeepErwin: the timestamped `opt Epoch` lines of its `log.out` (`opt_E_mean`, `geom_id`),
    read with the peer recipe's `summarize_dw.read_log`, launched as in
    `../shared/peers/run_dw_tao_small.sh` (config `dw_tao_lih3_small.yml`, the paper's schedule).

The running energy of a geometry after its step i is the mean of its last `--window` step
energies (noise of one step's 256-walker mean is several mHa). Printed per run:
  t_acc, steps_acc  wall time (min) and that geometry's step count when the running energy at
                    the equilibrium geometry (R = 3.015 bohr, the one with a sourced exact
                    reference: -8.070548 Ha, Cencek & Rychlewski 2000) first comes within 1.6 mHa
                    (chemical accuracy) of the reference; "-" if never within the budget
  E(5/15/30 min)    the running energy error (mHa) at the equilibrium geometry at those wall times
  E(step 500/1000/2000)  the same at fixed step counts of that geometry: per-step progress
  other geometries  running energies at the end (no sourced exact reference: lower is better)

    python benchmarks/time_to_accuracy.py --code hpcwf --system lih1 [--budget-min 30]
    python benchmarks/time_to_accuracy.py --code deeperwin --system lih3 --peers /work/peers
    python benchmarks/time_to_accuracy.py --report-only [--out DIR]   # table of finished runs
    python benchmarks/time_to_accuracy.py --code deeperwin --system lih1 --reparse  # summarize again

Run the codes one after the other on a quiet machine (never concurrently), OPENBLAS_NUM_THREADS=1
for both. DeepErwin needs `--peers DIR` holding `dw-venv` and `deeperwin-src`, installed as in
`../shared/peers/README.md`; `--shared DIR` is that shared folder (default ../shared next to
the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import tomli_w

REPO = Path(__file__).resolve().parents[1]
REFERENCE_HA = -8.070548  # LiH, R = 3.015 bohr, near-exact; Cencek & Rychlewski 2000 (inputs/references.md)
CHEMICAL_ACCURACY_HA = 1.6e-3
SYSTEMS = {"lih1": [3.015], "lih3": [2.8, 3.015, 3.2]}  # Li-H distances, bohr
BUDGET_MARKS_MIN = (5, 15, 30)
STEP_MARKS = (500, 1000, 2000)
STEP_LINE = re.compile(r"^step\s+(\d+)/")


def run_hpcwf(system: str, budget_s: float, run_dir: Path, schedule: str | None) -> dict:
    """Runs `hpcwf run` on the system until the budget; returns per-geometry (wall s, energy) series."""
    geometries = [
        {"name": f"LiH_{r:.3f}", "atoms": [["Li", 0.0, 0.0, 0.0], ["H", r, 0.0, 0.0]]}
        for r in SYSTEMS[system]
    ]
    job: dict = {
        "geometry": geometries,
        "optimization": {"steps": 1_000_000},
        "evaluation": {"steps": 0},
        "output": {"dir": str(run_dir / "run"), "print_every": 10},
    }
    if schedule:
        job["optimization"]["schedule"] = schedule
    job_file = run_dir / "job.toml"
    job_file.write_text(tomli_w.dumps(job))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(REPO))
    first_step: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpcwf", "run", str(job_file)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def read_stdout() -> None:
        with open(run_dir / "stdout.txt", "w") as out:
            for line in proc.stdout:
                out.write(line)
                m = STEP_LINE.match(line)
                if m and not first_step:
                    first_step.append((time.perf_counter() - t0, int(m.group(1))))

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    _stop_at_budget(proc, t0, budget_s)
    reader.join()
    if not first_step:
        sys.exit(f"hpcwf printed no optimization step within the budget; see {run_dir / 'stdout.txt'}")
    t_line, step_line = first_step[0]
    (run_dir / "timing.json").write_text(json.dumps({"first_step_s": t_line, "first_step": step_line}))
    return read_hpcwf(system, run_dir)


def read_hpcwf(system: str, run_dir: Path) -> dict:
    """Per-geometry (wall s since launch, energy) series of a finished hpcwf run."""
    timing = json.loads((run_dir / "timing.json").read_text())
    with h5py.File(run_dir / "run" / "energies.h5", "r", locking=False) as f:
        train = {k: f["train"][k][:] for k in ("step", "geometry", "energy", "time")}
    rows_of_step = np.flatnonzero(train["step"] == timing["first_step"])
    offset = timing["first_step_s"] - float(train["time"][rows_of_step[-1]])
    series = {}
    for g, r in enumerate(SYSTEMS[system]):
        rows = train["geometry"] == g
        series[r] = (train["time"][rows] + offset, train["energy"][rows])
    return series


def run_deeperwin(system: str, budget_s: float, run_dir: Path, peers: Path, shared: Path) -> dict:
    """Runs DeepErwin (peer recipe) on the system until the budget; returns per-geometry series."""
    python = peers / "dw-venv" / "bin"
    overrides = ["optimization.n_epochs=1000000", "logging.basic.n_skip_epochs=0"]
    if system == "lih1":
        overrides += ["physical.changes=null"]
    env = dict(
        os.environ, OPENBLAS_NUM_THREADS="1", WANDB_MODE="disabled", PATH=f"{python}:{os.environ['PATH']}"
    )
    recipe = shared / "peers"
    make_config = [
        str(python / "python"),
        str(recipe / "make_dw_config.py"),
        str(recipe / "dw_tao_lih3_small.yml"),
    ]
    subprocess.run([*make_config, str(run_dir / "config.yml"), *overrides], check=True, env=env, cwd=run_dir)
    command = ["deeperwin", "run" if system == "lih1" else "run-multiple-shared", "config.yml"]
    t0 = time.perf_counter()
    (run_dir / "timing.json").write_text(json.dumps({"launch_unix_s": time.time()}))
    with open(run_dir / "stdout.txt", "w") as out:
        proc = subprocess.Popen(command, env=env, cwd=run_dir, stdout=out, stderr=subprocess.STDOUT)
        _stop_at_budget(proc, t0, budget_s)
    return read_deeperwin(system, run_dir, shared)


def read_deeperwin(system: str, run_dir: Path, shared: Path) -> dict:
    """Per-geometry (wall s since launch, energy) series of a finished DeepErwin run."""
    t0_wall = json.loads((run_dir / "timing.json").read_text())["launch_unix_s"]
    sys.path.insert(0, str(shared / "peers"))
    from summarize_dw import read_log

    records, _ = read_log(str(run_dir / "log.out"))
    opt = [r for r in records if r["_phase"] == "opt" and "opt_E_mean" in r]
    series = {}
    for g, r in enumerate(SYSTEMS[system]):
        mine = [x for x in opt if int(x.get("geom_id", 0)) == g]
        series[r] = (np.array([x["_t"] - t0_wall for x in mine]), np.array([x["opt_E_mean"] for x in mine]))
    return series


def _stop_at_budget(proc: subprocess.Popen, t0: float, budget_s: float) -> None:
    """Waits for the process; SIGTERM at the budget (then SIGKILL after 120 s of grace)."""
    try:
        proc.wait(timeout=max(0.0, budget_s - (time.perf_counter() - t0)))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def running_mean(energies: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` entries up to and including each index (fewer at the start)."""
    csum = np.concatenate([[0.0], np.cumsum(energies)])
    idx = np.arange(1, len(energies) + 1)
    lo = np.maximum(0, idx - window)
    return (csum[idx] - csum[lo]) / (idx - lo)


def summarize(series: dict, window: int, budget_s: float) -> dict:
    """Time/steps to chemical accuracy and marks of the equilibrium geometry's running energy."""
    t, e = series[3.015]
    run = running_mean(e, window)
    error = run - REFERENCE_HA
    # A full window is required: the first steps' means are too noisy to count.
    ok = np.flatnonzero((np.abs(error) <= CHEMICAL_ACCURACY_HA) & (np.arange(len(e)) >= window - 1))
    row: dict = {
        "steps": len(e),
        "t_acc_min": float(t[ok[0]] / 60) if len(ok) else None,
        "steps_acc": int(ok[0] + 1) if len(ok) else None,
        "final_mha": float(1000 * error[-1]) if len(e) else None,
    }
    for minutes in BUDGET_MARKS_MIN:
        before = np.flatnonzero(t <= 60 * minutes)
        reached = len(before) and 60 * minutes <= budget_s + 1
        row[f"E_{minutes}min_mha"] = float(1000 * error[before[-1]]) if reached else None
    for n in STEP_MARKS:
        row[f"E_step{n}_mha"] = float(1000 * error[n - 1]) if len(e) >= n else None
    row["others_final_ha"] = {
        f"{r}": float(running_mean(series[r][1], window)[-1])
        for r in series
        if r != 3.015 and len(series[r][1])
    }
    return row


def print_table(rows: list[dict]) -> None:
    def cell(v, fmt):
        return "-" if v is None else format(v, fmt)

    print(f"\nLiH, running energy over the last steps vs {REFERENCE_HA} Ha (R = 3.015 bohr); errors in mHa")
    head = f"{'code':<22} {'system':<6} {'budget':>6} {'steps':>6} {'t_acc min':>9} {'steps_acc':>9}"
    head += "".join(f" {f'E {m}min':>8}" for m in BUDGET_MARKS_MIN)
    head += "".join(f" {f'E@{n}':>8}" for n in STEP_MARKS)
    print(head + "  other geometries (Ha)")
    for r in rows:
        line = f"{r['code']:<22} {r['system']:<6} {r['budget_min']:>6.0f} {r['steps']:>6} "
        line += f"{cell(r['t_acc_min'], '.1f'):>9} {cell(r['steps_acc'], 'd'):>9}"
        line += "".join(f" {cell(r[f'E_{m}min_mha'], '+.1f'):>8}" for m in BUDGET_MARKS_MIN)
        line += "".join(f" {cell(r[f'E_step{n}_mha'], '+.1f'):>8}" for n in STEP_MARKS)
        line += "  " + ", ".join(f"{k}: {v:.4f}" for k, v in r["others_final_ha"].items())
        print(line)
    accuracy_mha = 1000 * CHEMICAL_ACCURACY_HA
    print(f"(window {rows[0]['window']} steps of that geometry; chemical accuracy {accuracy_mha} mHa)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", choices=("hpcwf", "deeperwin"))
    parser.add_argument("--system", choices=tuple(SYSTEMS), default="lih1")
    parser.add_argument("--budget-min", type=float, default=30.0)
    parser.add_argument("--window", type=int, default=200, help="steps in the running energy")
    parser.add_argument("--schedule", default=None, help="hpcwf [optimization] schedule (default: hpcwf's)")
    parser.add_argument("--peers", default="/work/peers", help="folder with dw-venv and deeperwin-src")
    parser.add_argument("--shared", default=str(REPO.parent / "shared"))
    parser.add_argument("--out", default="runs/benchmark_time_to_accuracy")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--reparse", action="store_true", help="summarize the existing run dir again")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    if not args.report_only:
        if args.code is None:
            parser.error("--code is required")
        label = args.code + (f"-{args.schedule}" if args.schedule else "")
        if args.code == "hpcwf" and os.environ.get("HPCWF_CPU_DEVICES"):
            label += f"-dev{os.environ['HPCWF_CPU_DEVICES']}"
        run_dir = out / f"{label}_{args.system}"
        budget_s = 60 * args.budget_min
        if args.reparse:
            if args.code == "hpcwf":
                series = read_hpcwf(args.system, run_dir)
            else:
                series = read_deeperwin(args.system, run_dir, Path(args.shared))
        else:
            if run_dir.exists():
                sys.exit(f"{run_dir} exists: remove it, choose another --out, or --reparse it")
            run_dir.mkdir(parents=True)
            if args.code == "hpcwf":
                series = run_hpcwf(args.system, budget_s, run_dir, args.schedule)
            else:
                series = run_deeperwin(args.system, budget_s, run_dir, Path(args.peers), Path(args.shared))
        row = {"code": label, "system": args.system, "budget_min": args.budget_min, "window": args.window}
        row.update(summarize(series, args.window, budget_s))
        (run_dir / "result.json").write_text(json.dumps(row, indent=1))
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*/result.json"))]
    if not rows:
        sys.exit(f"no finished run in {out}")
    print_table(rows)


if __name__ == "__main__":
    main()
