#!/usr/bin/env python3
"""Time to an accurate energy, hpcwf next to DeepErwin and FermiNet (a benchmark, not a test).

What a user pays for is wall time until the energy is right, not steps. Systems: LiH at
equilibrium (`lih1`, one geometry), the 3-geometry LiH set of the peer configuration (`lih3`,
bond lengths 2.8, 3.015, 3.2 bohr, shared weights), the O atom (`O`, triplet: 5 up, 3 down) and
N2 (`N2`, bond 2.068 bohr, singlet); the O and N2 geometries and spins are those of hpcwf's
`inputs/datasets/accuracy.toml`. Each code runs for a fixed wall-clock budget from launch
(everything counts: HF, pre-training, compilation, burn-in) and is then stopped with SIGTERM.
Its per-step energies (walker means, Ha) and their wall times since launch are read back:

  * hpcwf (model S, 256 walkers, its defaults): `energies.h5` `/train` (energy, time since the
    start of optimization); the offset of that clock from the launch is taken from the wall time
    at which the first progress line `step N/...` appeared on the job's stdout (time of that
    step's row).
  * DeepErwin: the timestamped `opt Epoch` lines of its `log.out` (`opt_E_mean`, `geom_id`),
    read with the peer recipe's `summarize_dw.read_log`, launched as in
    `../shared/peers/run_dw_tao_small.sh` (config `dw_tao_lih3_small.yml`, the paper's schedule,
    TAO of the same size as hpcwf's S, 256 walkers; for O and N2 the same config with that one
    geometry, its spin and its atom types, written by the recipe's `make_dw_config.py`).
  * FermiNet (google-deepmind/ferminet, `../shared/peers/README.md`): a small model ((64, 16) x 3
    layers, 8 determinants), 256 walkers, everything else its defaults (HF pre-training, 10 MCMC
    steps per update, K-FAC); run by a driver written next to the run (`ferminet_run.py`) that
    gives FermiNet's own `train_stats.csv` writer one more column, the wall time of each row
    (unix s, written when the step's energy is on the host), and flushes every row so that the
    SIGTERM loses none.

The running energy of a geometry after its step i is the mean of its last `--window` step
energies (noise of one step's 256-walker mean is several mHa). Printed per run, for the
system's reference geometry (the one with a sourced reference energy, REFERENCES below):
  t_acc, steps_acc  wall time (min) and that geometry's step count when the running energy first
                    comes within 1.6 mHa (chemical accuracy) of the reference; "-" if never
                    within the budget
  E(5/15/30 min)    the running energy error (mHa) at those wall times
  E(step 500/1000/2000)  the same at fixed step counts of that geometry: per-step progress
  other geometries  running energies at the end (no sourced exact reference: lower is better)

    python benchmarks/time_to_accuracy.py --code hpcwf --system lih1 [--budget-min 30]
    python benchmarks/time_to_accuracy.py --code deeperwin --system lih3 --peers /work/peers
    python benchmarks/time_to_accuracy.py --code ferminet --system O --peers /work/peers
    python benchmarks/time_to_accuracy.py --code deeperwin --system N2 --config-only  # inputs only
    python benchmarks/time_to_accuracy.py --report-only [--out DIR]   # table of finished runs
    python benchmarks/time_to_accuracy.py --code deeperwin --system lih1 --reparse  # summarize again

Run the codes one after the other on a quiet machine (never concurrently), OPENBLAS_NUM_THREADS=1
for all. The peers need `--peers DIR` holding `dw-venv` and `deeperwin-src` (DeepErwin) and
`fn-venv` (FermiNet installed into it), installed as in `../shared/peers/README.md`; `--shared
DIR` is that shared folder (default ../shared next to the repository).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import tomli_w

REPO = Path(__file__).resolve().parents[1]
CHEMICAL_ACCURACY_HA = 1.6e-3
WALKERS = 256
ATOMIC_NUMBERS = {"H": 1, "Li": 3, "N": 7, "O": 8}


@dataclass(frozen=True)
class Geometry:
    name: str
    atoms: tuple  # (symbol, x, y, z), bohr
    n_up: int
    n_dn: int

    @property
    def spin(self) -> int:
        return self.n_up - self.n_dn


def _lih(r: float) -> Geometry:
    return Geometry(f"LiH_{r:.3f}", (("Li", 0.0, 0.0, 0.0), ("H", r, 0.0, 0.0)), 2, 2)


# Geometries and spins as in inputs/datasets/accuracy.toml (O: spin 2; N2: z = +-1.034 bohr).
SYSTEMS = {
    "lih1": [_lih(3.015)],
    "lih3": [_lih(2.8), _lih(3.015), _lih(3.2)],
    "O": [Geometry("O", (("O", 0.0, 0.0, 0.0),), 5, 3)],
    "N2": [Geometry("N2", (("N", 0.0, 0.0, -1.034), ("N", 0.0, 0.0, 1.034)), 7, 7)],
}
# Reference geometry of each system and its energy (Ha), as in inputs/references.md:
REFERENCES = {
    # LiH, R = 3.015 bohr, near-exact; Cencek & Rychlewski 2000 (../shared/reference/energies.csv)
    "lih1": ("LiH_3.015", -8.070548),
    "lih3": ("LiH_3.015", -8.070548),
    # O atom, exact non-relativistic (estimated); Chakravorty et al. PRA 47, 3649 (1993), as
    # tabulated in the FermiNet paper (Pfau et al. 2020, Table I); energies.csv has no O row
    "O": ("O", -75.0673),
    # N2, bond 2.068 bohr, estimated exact, as tabulated in the FermiNet paper
    # (../shared/reference/energies.csv)
    "N2": ("N2", -109.5423),
}
BUDGET_MARKS_MIN = (5, 15, 30)
STEP_MARKS = (500, 1000, 2000)
STEP_LINE = re.compile(r"^step\s+(\d+)/")


def run_hpcwf(system: str, budget_s: float, run_dir: Path, schedule: str | None, config_only: bool) -> dict:
    """Runs `hpcwf run` on the system until the budget; returns per-geometry (wall s, energy) series."""
    geometries = [
        {"name": g.name, "atoms": [list(a) for a in g.atoms], "spin": g.spin} for g in SYSTEMS[system]
    ]
    job: dict = {
        "geometry": geometries,
        "model": {"size": "S"},
        "optimization": {"steps": 1_000_000, "batch_size": WALKERS},
        "evaluation": {"steps": 0},
        "output": {"dir": str(run_dir / "run"), "print_every": 10},
    }
    if schedule:
        job["optimization"]["schedule"] = schedule
    job_file = run_dir / "job.toml"
    job_file.write_text(tomli_w.dumps(job))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(REPO))
    if config_only:
        subprocess.run([sys.executable, "-m", "hpcwf", "check", str(job_file)], check=True, env=env)
        return {}
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
    for i, g in enumerate(SYSTEMS[system]):
        rows = train["geometry"] == i
        series[g.name] = (train["time"][rows] + offset, train["energy"][rows])
    return series


def run_deeperwin(
    system: str, budget_s: float, run_dir: Path, peers: Path, shared: Path, config_only: bool
) -> dict:
    """Runs DeepErwin (peer recipe) on the system until the budget; returns per-geometry series."""
    python = peers / "dw-venv" / "bin"
    overrides = ["optimization.n_epochs=1000000", "logging.basic.n_skip_epochs=0"]
    overrides += _deeperwin_system_overrides(system)
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
    if config_only:
        return {}
    command = ["deeperwin", "run" if len(SYSTEMS[system]) == 1 else "run-multiple-shared", "config.yml"]
    t0 = time.perf_counter()
    (run_dir / "timing.json").write_text(json.dumps({"launch_unix_s": time.time()}))
    with open(run_dir / "stdout.txt", "w") as out:
        proc = subprocess.Popen(command, env=env, cwd=run_dir, stdout=out, stderr=subprocess.STDOUT)
        _stop_at_budget(proc, t0, budget_s)
    return read_deeperwin(system, run_dir, shared)


def _deeperwin_system_overrides(system: str) -> list[str]:
    """Overrides of the LiH x 3 peer config for a system: its geometry, spin and TAO atom types."""
    if system == "lih3":
        return []
    if system == "lih1":  # the config's base geometry is LiH at 3.015 bohr
        return ["physical.changes=null"]
    (g,) = SYSTEMS[system]
    Z = [ATOMIC_NUMBERS[a[0]] for a in g.atoms]
    R = [list(a[1:]) for a in g.atoms]
    return [
        f"experiment_name=dw_tao_{system}_small",
        f"physical.name={g.name}",
        f"physical.R={json.dumps(R)}",
        f"physical.Z={json.dumps(Z)}",
        f"physical.n_electrons={g.n_up + g.n_dn}",
        f"physical.n_up={g.n_up}",
        f"physical.E_ref={REFERENCES[system][1]}",
        "physical.changes=null",
        f"model.orbitals.transferable_atomic_orbitals.atom_types={json.dumps(sorted(set(Z)))}",
    ]


def read_deeperwin(system: str, run_dir: Path, shared: Path) -> dict:
    """Per-geometry (wall s since launch, energy) series of a finished DeepErwin run."""
    t0_wall = json.loads((run_dir / "timing.json").read_text())["launch_unix_s"]
    sys.path.insert(0, str(shared / "peers"))
    from summarize_dw import read_log

    records, _ = read_log(str(run_dir / "log.out"))
    opt = [r for r in records if r["_phase"] == "opt" and "opt_E_mean" in r]
    series = {}
    for i, g in enumerate(SYSTEMS[system]):
        mine = [x for x in opt if int(x.get("geom_id", 0)) == i]
        series[g.name] = (
            np.array([x["_t"] - t0_wall for x in mine]),
            np.array([x["opt_E_mean"] for x in mine]),
        )
    return series


FERMINET_DRIVER = """\
# Written by hpcwf's benchmarks/time_to_accuracy.py: runs FermiNet on the system of spec.json.
import json
import sys
import time

from absl import logging
from ferminet import base_config, train
from ferminet.utils import system, writers


class TimedWriter(writers.Writer):
    # FermiNet's train_stats.csv writer plus the wall time of each row, flushed every row.
    def __init__(self, name, schema, **kwargs):
        super().__init__(name, [*schema, "wall_unix_s"], **kwargs)

    def write(self, t, **data):
        super().write(t, **data, wall_unix_s=repr(time.time()))
        self._file.flush()


writers.Writer = TimedWriter  # train.train looks it up at call time
spec = json.load(open(sys.argv[1]))
cfg = base_config.default()
cfg.system.molecule = [system.Atom(a[0], tuple(a[1:]), units="bohr") for a in spec["atoms"]]
cfg.system.electrons = tuple(spec["electrons"])
cfg.system.units = "bohr"
cfg.batch_size = spec["walkers"]
cfg.network.ferminet.hidden_dims = tuple(tuple(layer) for layer in spec["hidden_dims"])
cfg.network.determinants = spec["determinants"]
cfg.log.save_path = spec["save_path"]
cfg = base_config.resolve(cfg)
if sys.argv[2:] == ["--check"]:  # the resolved system and model, no training
    print(cfg.system.molecule, "electrons", cfg.system.electrons, "walkers", cfg.batch_size)
    print("hidden_dims", cfg.network.ferminet.hidden_dims, "determinants", cfg.network.determinants)
    sys.exit(0)
logging.set_verbosity(logging.INFO)
logging.info("System config:\\n%s", cfg)
train.train(cfg)
"""


def run_ferminet(system: str, budget_s: float, run_dir: Path, peers: Path, config_only: bool) -> dict:
    """Runs FermiNet (small model, its defaults otherwise) on the system until the budget."""
    if len(SYSTEMS[system]) != 1:
        sys.exit("FermiNet runs one geometry at a time: use a single-geometry system")
    (g,) = SYSTEMS[system]
    spec = {
        "atoms": [list(a) for a in g.atoms],
        "electrons": [g.n_up, g.n_dn],
        "walkers": WALKERS,
        "hidden_dims": [[64, 16]] * 3,
        "determinants": 8,
        "save_path": str(run_dir / "ferminet"),
    }
    (run_dir / "spec.json").write_text(json.dumps(spec, indent=1))
    (run_dir / "ferminet_run.py").write_text(FERMINET_DRIVER)
    python = peers / "fn-venv" / "bin" / "python"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    if config_only:
        subprocess.run(
            [str(python), "ferminet_run.py", "spec.json", "--check"], check=True, env=env, cwd=run_dir
        )
        return {}
    t0 = time.perf_counter()
    (run_dir / "timing.json").write_text(json.dumps({"launch_unix_s": time.time()}))
    with open(run_dir / "stdout.txt", "w") as out:
        proc = subprocess.Popen(
            [str(python), "ferminet_run.py", "spec.json"],
            env=env,
            cwd=run_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        _stop_at_budget(proc, t0, budget_s)
    return read_ferminet(system, run_dir)


def read_ferminet(system: str, run_dir: Path) -> dict:
    """Per-geometry (wall s since launch, energy) series of a finished FermiNet run."""
    t0_wall = json.loads((run_dir / "timing.json").read_text())["launch_unix_s"]
    stats = run_dir / "ferminet" / "train_stats.csv"
    if not stats.exists():
        sys.exit(f"FermiNet wrote no {stats}; see {run_dir / 'stdout.txt'}")
    with open(stats) as f:
        rows = list(csv.DictReader(f))
    rows = [r for r in rows if r.get("wall_unix_s")]  # a row cut by the SIGTERM has none
    (g,) = SYSTEMS[system]
    t = np.array([float(r["wall_unix_s"]) - t0_wall for r in rows])
    return {g.name: (t, np.array([float(r["energy"]) for r in rows]))}


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


def summarize(system: str, series: dict, window: int, budget_s: float) -> dict:
    """Time/steps to chemical accuracy and marks of the reference geometry's running energy."""
    name, reference = REFERENCES[system]
    t, e = series[name]
    run = running_mean(e, window)
    error = run - reference
    # A full window is required: the first steps' means are too noisy to count.
    ok = np.flatnonzero((np.abs(error) <= CHEMICAL_ACCURACY_HA) & (np.arange(len(e)) >= window - 1))
    # Wall time per optimization step over all geometries (first 5 steps, compilation, dropped).
    t_all = np.sort(np.concatenate([series[g][0] for g in series]))
    row: dict = {
        "steps": len(e),
        "first_step_min": float(t_all[0] / 60) if len(t_all) else None,
        "s_per_step": float(np.median(np.diff(t_all[5:]))) if len(t_all) > 6 else None,
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
        g: float(running_mean(series[g][1], window)[-1]) for g in series if g != name and len(series[g][1])
    }
    return row


def print_table(rows: list[dict]) -> None:
    def cell(v, fmt):
        return "-" if v is None else format(v, fmt)

    for system in dict.fromkeys(r["system"] for r in rows):
        name, reference = REFERENCES[system]
        print(f"\n{system}: running energy over the last steps of {name} vs {reference} Ha; errors in mHa")
        head = f"{'code':<22} {'budget':>6} {'steps':>6} {'1st step':>8} {'s/step':>6}"
        head += f" {'t_acc min':>9} {'steps_acc':>9} {'E end':>8}"
        head += "".join(f" {f'E {m}min':>8}" for m in BUDGET_MARKS_MIN)
        head += "".join(f" {f'E@{n}':>8}" for n in STEP_MARKS)
        print(head + "  other geometries (Ha)")
        for r in rows:
            if r["system"] != system:
                continue
            line = f"{r['code']:<22} {r['budget_min']:>6.0f} {r['steps']:>6}"
            line += f" {cell(r.get('first_step_min'), '.1f'):>8} {cell(r.get('s_per_step'), '.3f'):>6}"
            line += f" {cell(r['t_acc_min'], '.1f'):>9} {cell(r['steps_acc'], 'd'):>9}"
            line += f" {cell(r['final_mha'], '+.1f'):>8}"
            line += "".join(f" {cell(r[f'E_{m}min_mha'], '+.1f'):>8}" for m in BUDGET_MARKS_MIN)
            line += "".join(f" {cell(r[f'E_step{n}_mha'], '+.1f'):>8}" for n in STEP_MARKS)
            line += "  " + ", ".join(f"{k}: {v:.4f}" for k, v in r["others_final_ha"].items())
            print(line)
    accuracy_mha = 1000 * CHEMICAL_ACCURACY_HA
    print(
        f"(window {rows[0]['window']} steps of that geometry; chemical accuracy {accuracy_mha} mHa;"
        " 1st step: min from launch; s/step: median wall s per step, all geometries)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", choices=("hpcwf", "deeperwin", "ferminet"))
    parser.add_argument("--system", choices=tuple(SYSTEMS), default="lih1")
    parser.add_argument("--budget-min", type=float, default=30.0)
    parser.add_argument("--window", type=int, default=200, help="steps in the running energy")
    parser.add_argument("--schedule", default=None, help="hpcwf [optimization] schedule (default: hpcwf's)")
    parser.add_argument("--peers", default="/work/peers", help="folder with dw-venv, deeperwin-src, fn-venv")
    parser.add_argument("--shared", default=str(REPO.parent / "shared"))
    parser.add_argument("--out", default="runs/benchmark_time_to_accuracy")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--reparse", action="store_true", help="summarize the existing run dir again")
    parser.add_argument(
        "--config-only",
        action="store_true",
        help="write (and check) the run's inputs in <run dir>_config, no run",
    )
    args = parser.parse_args()
    out = Path(args.out).resolve()
    if not args.report_only:
        if args.code is None:
            parser.error("--code is required")
        label = args.code + (f"-{args.schedule}" if args.schedule else "")
        if args.code == "hpcwf" and os.environ.get("HPCWF_CPU_DEVICES"):
            label += f"-dev{os.environ['HPCWF_CPU_DEVICES']}"
        run_dir = out / (f"{label}_{args.system}" + ("_config" if args.config_only else ""))
        budget_s = 60 * args.budget_min
        if args.reparse:
            if args.code == "hpcwf":
                series = read_hpcwf(args.system, run_dir)
            elif args.code == "deeperwin":
                series = read_deeperwin(args.system, run_dir, Path(args.shared))
            else:
                series = read_ferminet(args.system, run_dir)
        else:
            if run_dir.exists():
                sys.exit(f"{run_dir} exists: remove it, choose another --out, or --reparse it")
            run_dir.mkdir(parents=True)
            peers, config_only = Path(args.peers), args.config_only
            if args.code == "hpcwf":
                series = run_hpcwf(args.system, budget_s, run_dir, args.schedule, config_only)
            elif args.code == "deeperwin":
                series = run_deeperwin(args.system, budget_s, run_dir, peers, Path(args.shared), config_only)
            else:
                series = run_ferminet(args.system, budget_s, run_dir, peers, config_only)
            if config_only:
                print(f"inputs written to {run_dir}; nothing run")
                return
        row = {"code": label, "system": args.system, "budget_min": args.budget_min, "window": args.window}
        row.update(summarize(args.system, series, args.window, budget_s))
        (run_dir / "result.json").write_text(json.dumps(row, indent=1))
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*/result.json"))]
    if not rows:
        sys.exit(f"no finished run in {out}")
    print_table(rows)


if __name__ == "__main__":
    main()
