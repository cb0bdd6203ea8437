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

`transfer` measures the model on molecules it never saw, one run after another (`hpcwf run`,
each job written to OUT/jobs/, its output to OUT/logs/; a run that finished before is not
repeated), then prints the table and writes the plot:

    python benchmarks/foundation.py transfer [--model hcno-s] [--out runs/foundation-transfer]
        [--steps 1000] [--mpi 2] [--report-only] [--only zeroshot ft-C2H4 scratch-C2H4 ...]

  zeroshot      `[init] mode = "evaluate"` of the model on every geometry of
                inputs/datasets/foundation_small_unseen.toml (training compounds, unseen
                geometries) and foundation_small_new.toml (compounds it never saw)
  ft-<C>        fine-tuning from the model ([init] defaults: the paper's schedule offset) on
                compound C of foundation_small_new, `--steps` VMC steps, then evaluation
  scratch-<C>   the same job from scratch, with hpcwf's default HF pre-training first
Both get the same walkers, MCMC and evaluation. Printed per compound: the zero-shot error, the
error of the running energy (mean of the last 50 steps) after 250 and `--steps` steps,
fine-tuned and from scratch, the evaluated energy of both, and at equal wall time: the fine-
tune's running error when it had used the wall time scratch needed for all its steps
(HF, pre-training and compilation included, `hpcwf run` timed from outside). Errors in mHa
against the references of the datasets (inputs/references.md). The plot
`docs/foundation_transfer.png`: running energy minus reference against step, both curves per
compound.

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
    # One training geometry's energy as the model's own runs measured it (the mean of its last
    # training steps): the suite evaluates the shipped model there and must find it again.
    from hpcwf.analysis.report import geometry_results

    trained = [r for r in geometry_results(run_dir) if r["energy"] is not None and r["error"] is not None]
    check = min(trained, key=lambda r: (r["error"], r["name"]))
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
        check_geometry=check["name"],
        check_energy=round(float(check["energy"]), 6),
        check_error=round(float(check["error"]), 6),
        check_steps=int(check["steps_trained"]),
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


# --- transfer -----------------------------------------------------------------------------

DATASETS = REPO / "inputs" / "datasets"
RUNNING_WINDOW = 50  # steps in the running energy of the table and the plot
EARLY_STEP = 250  # the table's early column
TIMES_FILE = "times.json"
SETTINGS = {  # every transfer job: the shipped model's descriptor layout and architecture
    "hartree_fock": {"basis": "STO-6G", "elements": ["H", "C", "N", "O"]},
    "model": {"size": "S", "orbitals": "tao", "n_determinants": 4},
    "mcmc": {"steps_per_update": 20, "burn_in_steps": 200},
}


def _geometries(*stems: str) -> list[dict]:
    return [g for stem in stems for g in tomllib.loads((DATASETS / f"{stem}.toml").read_text())["geometry"]]


def transfer_jobs(model: str, steps: int, walkers: int) -> dict[str, dict]:
    """Job name -> job (TOML data) of the transfer measurement; output.dir set by the caller."""
    new = _geometries("foundation_small_new")
    jobs: dict[str, dict] = {
        "zeroshot": {
            "seed": 0,
            "geometry": _geometries("foundation_small_unseen", "foundation_small_new"),
            **SETTINGS,
            "init": {"checkpoint": f"model:{model}", "mode": "evaluate"},
            "optimization": {"batch_size": walkers},
            "evaluation": {"steps": 400, "burn_in_steps": 200},
        }
    }
    for g in new:
        compound = g["group"]
        common = {
            "seed": 0,
            "geometry": [g],
            **SETTINGS,
            "optimization": {"steps": steps, "batch_size": walkers},
            "evaluation": {"steps": 400, "burn_in_steps": 200},
            "checkpoint": {"every_minutes": 10.0},
        }
        jobs[f"ft-{compound}"] = {**common, "init": {"checkpoint": f"model:{model}", "mode": "finetune"}}
        jobs[f"scratch-{compound}"] = dict(common)
    return jobs


def run_transfer(jobs: dict[str, dict], out: Path, mpi: int) -> None:
    """Runs the jobs one after another; wall times (s, from launch to exit) in OUT/times.json."""
    import json
    import subprocess
    import sys
    import time

    import tomli_w

    times_path = out / TIMES_FILE
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    for name, job in jobs.items():
        if times.get(name, {}).get("rc") == 0:
            print(f"{name:<16} done before ({times[name]['wall_s']:.0f} s)", flush=True)
            continue
        job = {**job, "output": {"dir": str(out / name), "print_every": 50}}
        job_file = out / "jobs" / f"{name}.toml"
        job_file.parent.mkdir(parents=True, exist_ok=True)
        job_file.write_text("# Generated by benchmarks/foundation.py transfer\n" + tomli_w.dumps(job))
        log_path = out / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        launcher = ["mpiexec", "-n", str(mpi)] if mpi > 1 else []
        print(f"{name:<16} running (log {log_path}) ...", flush=True)
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            rc = subprocess.run(
                [*launcher, sys.executable, "-m", "hpcwf", "run", str(job_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, OPENBLAS_NUM_THREADS="1"),
            ).returncode
        wall = time.perf_counter() - t0
        times[name] = {"wall_s": round(wall, 1), "rc": rc}
        times_path.write_text(json.dumps(times, indent=1))
        print(f"{name:<16} {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {wall:.0f} s", flush=True)


def _running(run_dir: Path, geometry: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, running energy (Ha), optimization wall time (s)) of one geometry's training."""
    from hpcwf.analysis.run_data import read_run

    run = read_run(run_dir)
    steps, energy = run.series("train", "energy", geometry)
    _, seconds = run.series("train", "time", geometry)
    kernel = np.ones(RUNNING_WINDOW)
    counts = np.convolve(np.ones_like(energy), kernel)[: energy.size]
    return steps, np.convolve(energy, kernel)[: energy.size] / counts, seconds


def _at(steps: np.ndarray, values: np.ndarray, step: float) -> float:
    """values at the last logged step <= `step` (NaN before the first)."""
    k = np.searchsorted(steps, step, side="right") - 1
    return float(values[k]) if k >= 0 and steps.size else float("nan")


def transfer_report(out: Path, steps: int) -> str:
    import json

    from hpcwf.analysis.report import geometry_results

    times = json.loads((out / TIMES_FILE).read_text()) if (out / TIMES_FILE).exists() else {}
    lines = []
    zero = {}
    if (out / "zeroshot").is_dir():
        zero = {r["name"]: r for r in geometry_results(out / "zeroshot")}
        lines.append("zero-shot (evaluation only), E - reference in mHa:")
        for name, r in zero.items():
            err = "-" if r["error_mha"] is None else f"{r['error_mha']:+8.1f} +- {r['error'] * 1e3:.1f}"
            hf = "" if r["hf_energy"] is None else f"   E - E_HF {1e3 * (r['energy'] - r['hf_energy']):+8.1f}"
            lines.append(f"  {name:<10} {err}{hf}")
    header = (
        f"{'compound':<8} {'zero-shot':>10} {'ft@' + str(EARLY_STEP):>9} {'ft@' + str(steps):>9} "
        f"{'scr@' + str(EARLY_STEP):>9} {'scr@' + str(steps):>9} {'ft eval':>12} {'scratch eval':>13} "
        f"{'ft@scratch wall':>16} {'walls ft/scr (s)':>17}"
    )
    lines += ["", "fine-tuned (ft) vs from scratch (scr), running energy - reference (mHa):", header]
    figures = {}
    for g in _geometries("foundation_small_new"):
        compound, ref = g["group"], g.get("reference_energy", float("nan"))
        ft_dir, scr_dir = out / f"ft-{compound}", out / f"scratch-{compound}"
        if not (ft_dir.is_dir() and scr_dir.is_dir()):
            lines.append(f"{compound:<8} missing")
            continue
        ft, scr = _running(ft_dir), _running(scr_dir)
        figures[compound] = (ft, scr, ref)
        evals = [geometry_results(d)[0] for d in (ft_dir, scr_dir)]
        walls = [
            times.get(n, {}).get("wall_s", float("nan")) for n in (f"ft-{compound}", f"scratch-{compound}")
        ]
        # fine-tune's overhead before its first step (HF, burn-in, compilation): its launch-to-exit
        # wall minus its logged optimization time; the fine-tune had used scratch's whole wall
        # time at optimization time walls[1] - overhead.
        overhead = walls[0] - float(ft[2][-1]) if ft[2].size else float("nan")
        at_equal_wall = _at(ft[2], ft[1], walls[1] - overhead)

        def mha(x: float, ref: float = ref) -> str:
            return f"{(x - ref) * 1e3:+.1f}" if np.isfinite(x) else "-"

        def ev(r: dict) -> str:
            return "-" if r["error_mha"] is None else f"{r['error_mha']:+.1f}+-{r['error'] * 1e3:.1f}"

        z = zero.get(g["name"], {}).get("error_mha")
        zero_shot = "-" if z is None else f"{z:+.1f}"
        lines.append(
            f"{compound:<8} {zero_shot:>10} {mha(_at(ft[0], ft[1], EARLY_STEP)):>9} "
            f"{mha(_at(ft[0], ft[1], steps)):>9} {mha(_at(scr[0], scr[1], EARLY_STEP)):>9} "
            f"{mha(_at(scr[0], scr[1], steps)):>9} {ev(evals[0]):>12} {ev(evals[1]):>13} "
            f"{mha(at_equal_wall):>16} {walls[0]:>8.0f}/{walls[1]:<8.0f}"
        )
    if figures:
        _plot(figures, REPO / "docs" / "foundation_transfer.png")
        lines.append("plot: docs/foundation_transfer.png")
    return "\n".join(lines)


def _plot(figures: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(figures), figsize=(4 * len(figures), 3.4), squeeze=False)
    for ax, (compound, (ft, scr, ref)) in zip(axes[0], figures.items(), strict=True):
        ax.plot(scr[0], (scr[1] - ref) * 1e3, label="from scratch", color="tab:gray")
        ax.plot(ft[0], (ft[1] - ref) * 1e3, label="fine-tuned", color="tab:blue")
        ax.axhline(1.6, color="k", lw=0.5, ls=":")
        ax.set_yscale("symlog", linthresh=10)
        ax.set_title(compound)
        ax.set_xlabel("VMC step")
    axes[0][0].set_ylabel(f"E - reference (mHa), mean of last {RUNNING_WINDOW} steps")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_ship = sub.add_parser("ship", help="package the run's newest checkpoint as hpcwf/models/NAME")
    p_ship.add_argument("run_dir", type=Path)
    p_ship.add_argument("--name", default="hcno-s")
    p_ship.add_argument("--hardware", default=_hardware(), help="what the run ran on (model card)")
    p_tf = sub.add_parser("transfer", help="zero-shot, fine-tuned and scratch runs on unseen molecules")
    p_tf.add_argument("--model", default="hcno-s")
    p_tf.add_argument("--out", type=Path, default=Path("runs/foundation-transfer"))
    p_tf.add_argument("--steps", type=int, default=1000)
    p_tf.add_argument("--walkers", type=int, default=256)
    p_tf.add_argument("--mpi", type=int, default=1, help="ranks per job (mpiexec -n)")
    p_tf.add_argument("--only", nargs="+", help="job names (zeroshot, ft-C2H4, scratch-C2H4, ...)")
    p_tf.add_argument("--report-only", action="store_true")
    p_tr = sub.add_parser("training", help="energies on the model's own training geometries")
    p_tr.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "ship":
        ship(args.run_dir, args.name, args.hardware)
    elif args.command == "transfer":
        out = args.out.resolve()
        if not args.report_only:
            jobs = transfer_jobs(args.model, args.steps, args.walkers)
            run_transfer({k: v for k, v in jobs.items() if not args.only or k in args.only}, out, args.mpi)
        print(transfer_report(out, args.steps))
    else:
        print(training_energies(args.run_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
