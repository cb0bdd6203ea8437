"""Faults during training: non-finite updates, kills and signals during checkpoint writes, a
full disk. Tiny H2 jobs in subprocesses (real JAX, kfac-jax, HDF5, signals and file limits);
faults are injected with the test-only HPCWF_TEST_* variables of hpcwf.workflow.FaultInjection.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcwf.io.checkpoint import list_checkpoints, load_params, verify_checkpoint
from hpcwf.io.config import load_job

JOB = """
seed = 3
[[geometry]]
name = "H2"
atoms = [["H", 0.0, 0.0, 0.0], ["H", 1.4, 0.0, 0.0]]
[model]
size = "S"
n_determinants = 1
[pretraining]
steps = {pretrain}
[optimization]
optimizer = "kfac"
steps = {steps}
batch_size = 16
[mcmc]
steps_per_update = 2
burn_in_steps = 10
[evaluation]
steps = {evaluation}
burn_in_steps = 2
[checkpoint]
every_steps = {every}
keep_last = {keep_last}
keep_every = {keep_every}
[output]
dir = "{dir}"
print_every = 1
"""


def _job(
    tmp: Path,
    steps: int,
    every: int = 3,
    pretrain: int = 0,
    evaluation: int = 0,
    keep_last: int = 3,
    keep_every: int | None = None,
) -> Path:
    job = tmp / "job.toml"
    keep_every = every if keep_every is None else keep_every
    job.write_text(
        JOB.format(
            steps=steps,
            every=every,
            pretrain=pretrain,
            evaluation=evaluation,
            keep_last=keep_last,
            keep_every=keep_every,
            dir=tmp / "run",
        )
    )
    return job


def _run(job: Path, *args: str, preexec_fn=None, **faults: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCWF_TEST_")}
    env.update({f"HPCWF_TEST_{k.upper()}": v for k, v in faults.items()})
    return subprocess.run(
        [sys.executable, "-m", "hpcwf", "run", str(job), *args],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=preexec_fn,
        timeout=600,
    )


def _train_log(run: Path) -> dict[str, np.ndarray]:
    with h5py.File(run / "energies.h5", "r") as f:
        return {k: v[:] for k, v in f["train"].items()}


def _all_finite(path: Path) -> bool:
    params, _ = load_params(path)
    leaves = []

    def collect(tree):
        for v in tree.values():
            collect(v) if isinstance(v, dict) else leaves.append(v)

    collect(params)
    return len(leaves) > 0 and all(np.isfinite(x).all() for x in leaves)


def _group_bytes(path: Path, group: str) -> dict[str, bytes]:
    out = {}

    def add(name, obj):
        if isinstance(obj, h5py.Dataset):
            out[name] = np.asarray(obj[()]).tobytes()

    with h5py.File(path, "r") as f:
        f[group].visititems(add)
    return out


def _temporaries(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if ".tmp" in p.name)


def test_periodic_checkpoints_are_on_by_default(tmp_path):
    """A job that says nothing about checkpoints still saves every 30 min of wall time, so a
    kill without a warning signal (node failure, OOM, scancel) loses at most that."""
    job = tmp_path / "minimal.toml"
    job.write_text('[[geometry]]\nname = "H2"\natoms = [["H", 0, 0, 0], ["H", 1.4, 0, 0]]\n')
    assert load_job(job).checkpoint.every_minutes == 30.0


def test_a_non_finite_update_is_rolled_back_and_the_run_finishes(tmp_path):
    """Updates 3 and 4 (and HF pre-training update 1) come out NaN: each is rejected and rolled
    back, the run goes on, and every saved parameter is finite."""
    job = _job(tmp_path, steps=8, pretrain=3)
    proc = _run(job, poison_steps="pretrain:1,3,4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 3: non-finite update; rejected, rolled back (1 in a row)" in proc.stdout
    assert "step 4: non-finite update; rejected, rolled back (2 in a row)" in proc.stdout
    assert "pretrain step 1: non-finite update rejected" in proc.stdout
    log = _train_log(tmp_path / "run")
    np.testing.assert_array_equal(log["step"], np.arange(8))
    np.testing.assert_array_equal(log["rolled_back"], [0, 0, 0, 1, 1, 0, 0, 0])
    assert np.isfinite(log["energy"]).all() and (log["n_nonfinite"] == 0).all()
    with h5py.File(tmp_path / "run" / "energies.h5", "r") as f:
        # Three pre-training steps, then the start check's row (step 3, E_L of the network).
        np.testing.assert_array_equal(f["pretrain/rolled_back"][:], [0, 1, 0, 0])
        np.testing.assert_array_equal(f["pretrain/step"][:], [0, 1, 2, 3])
        assert np.isfinite(f["pretrain/energy"][3]) and np.isnan(f["pretrain/energy"][:3]).all()
    run = tmp_path / "run" / "checkpoints"
    assert _all_finite(run / "params.h5")
    for ckpt in list_checkpoints(run):
        assert _all_finite(ckpt), ckpt


def test_repeated_non_finite_updates_stop_with_a_finite_checkpoint(tmp_path):
    """Every update from step 2 on is NaN: after 20 rejections in a row the run stops with exit
    3 and a checkpoint whose parameters, optimizer state and walkers are exactly the last
    finite ones (those of the checkpoint after step 2), not the NaN update."""
    job = _job(tmp_path, steps=100, every=2)
    proc = _run(job, poison_steps="2-100")
    assert proc.returncode == 3, proc.stderr[-3000:]
    last = tmp_path / "run" / "checkpoints" / "ckpt_000000022.h5"
    assert (
        f"20 consecutive steps rejected as non-finite; checkpoint of the last finite state: {last}"
        in proc.stderr
    )
    assert "Traceback" not in proc.stderr
    verify_checkpoint(last)
    assert _all_finite(last)
    good = tmp_path / "run" / "checkpoints" / "ckpt_000000002.h5"
    for group in ("params", "optimizer", "geometry_states"):
        assert _group_bytes(last, group) == _group_bytes(good, group), group
    log = _train_log(tmp_path / "run")
    np.testing.assert_array_equal(log["step"], np.arange(22))
    np.testing.assert_array_equal(log["rolled_back"], [0, 0] + [1] * 20)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A 12-step run that receives SIGTERM while it writes its step-6 checkpoint."""
    tmp = tmp_path_factory.mktemp("sigterm")
    job = _job(tmp, steps=12)
    return tmp / "run", _run(job, checkpoint_signal="SIGTERM@6")


def test_sigterm_during_a_checkpoint_write_stops_at_that_checkpoint(interrupted):
    """The write in progress completes (and the one before stays valid); the run stops right
    there, not one step and one more write later, with exit 75 and no temporary file."""
    run, proc = interrupted
    assert proc.returncode == 75, proc.stderr[-3000:]
    ckpt = run / "checkpoints" / "ckpt_000000006.h5"
    assert f"interrupted: stopped by SIGTERM at step 6; checkpoint {ckpt}" in proc.stderr
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["ckpt_000000003.h5", ckpt.name]
    for p in list_checkpoints(run / "checkpoints"):
        verify_checkpoint(p)
    assert _temporaries(run) == []
    np.testing.assert_array_equal(_train_log(run)["step"], np.arange(6))


def test_sigkill_during_a_checkpoint_write_resumes_from_the_periodic_one(interrupted, tmp_path):
    """SIGKILL (no handler runs) while the step-12 checkpoint is written, after the periodic
    one of step 9: the rerun removes the partial file, resumes from step 9 and the log holds
    every step exactly once."""
    run = tmp_path / "run"
    shutil.copytree(interrupted[0], run)
    job = _job(tmp_path, steps=15)
    killed = _run(job, checkpoint_signal="SIGKILL@12")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert _temporaries(run) and _temporaries(run)[0].startswith(".ckpt_000000012.h5.tmp")
    assert list_checkpoints(run / "checkpoints")[-1].name == "ckpt_000000009.h5"

    resumed = _run(job)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "removed " in resumed.stdout and "at step 9" in resumed.stdout
    assert _temporaries(run) == []
    log = _train_log(run)
    np.testing.assert_array_equal(log["step"], np.arange(15))
    assert np.isfinite(log["energy"]).all()
    assert _all_finite(run / "checkpoints" / "ckpt_000000015.h5")


def test_disk_full_during_a_checkpoint_write_is_a_clean_error(interrupted, tmp_path):
    """The resumed run may not write files larger than half a checkpoint (RLIMIT_FSIZE: the
    kernel fails the write with EFBIG, as a full disk does with ENOSPC): the step-9 write
    fails, the run exits 74 with one `error:` line naming the newest valid checkpoint, no
    traceback, no partial file, and the checkpoints before stay valid."""
    run = tmp_path / "run"
    shutil.copytree(interrupted[0], run)
    newest = run / "checkpoints" / "ckpt_000000006.h5"
    limit = newest.stat().st_size // 2
    assert (run / "energies.h5").stat().st_size < limit  # only the checkpoint hits the limit
    job = _job(tmp_path, steps=12)
    proc = _run(job, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode == 74, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert errors[0].startswith(
        f"error: {run / 'checkpoints' / 'ckpt_000000009.h5'}: cannot write checkpoint"
    )
    assert f"the newest valid checkpoint is {newest}" in errors[0]
    assert _temporaries(run) == []
    assert list_checkpoints(run / "checkpoints")[-1] == newest
    verify_checkpoint(newest)


def test_progress_lines_reach_a_redirected_stdout_as_they_are_printed(tmp_path):
    """stdout redirected to a file (SLURM's .out), PYTHONUNBUFFERED unset: the progress lines
    of steps 1-4 are in the file when a SIGKILL (an OOM kill, no handler, no flush) hits the
    step-4 checkpoint write. Before, stdout was block-buffered and the file stayed empty."""
    job = _job(tmp_path, steps=8, every=4)
    job.write_text(job.read_text().replace('"kfac"', '"adam"'))  # compiles faster; same runner
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCWF_TEST_") and k != "PYTHONUNBUFFERED"}
    env["HPCWF_TEST_CHECKPOINT_SIGNAL"] = "SIGKILL@4"
    out = tmp_path / "hpcwf.out"
    with open(out, "w") as fh:
        proc = subprocess.run(
            [sys.executable, "-m", "hpcwf", "run", str(job)], stdout=fh, stderr=subprocess.PIPE, env=env
        )
    assert proc.returncode == -9, proc.stderr[-3000:]
    text = out.read_text()
    for step in range(1, 5):
        assert f"step {step:>7}/8" in text, text


def _analyze(run: Path) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "hpcwf", "analyze", str(run), "--json"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _evaluation_attrs(run: Path) -> dict:
    with h5py.File(run / "energies.h5", "r") as f:
        return {k: int(v) for k, v in f["evaluation"].attrs.items()}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A finished 6-step run with a checkpoint every step (retention: the newest 2 and every
    3rd: steps 3, 5, 6 remain) and a 2-step evaluation of the step-6 parameters (one run)."""
    tmp = tmp_path_factory.mktemp("evaluated")
    proc = _run(_job(tmp, steps=6, every=1, evaluation=2, keep_last=2, keep_every=3))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in list_checkpoints(tmp / "run" / "checkpoints")] == [
        f"ckpt_00000000{k}.h5" for k in (3, 5, 6)
    ]
    assert [r["source"] for r in _analyze(tmp / "run")] == ["evaluation"]
    return tmp / "run"


def test_an_extension_never_shows_the_old_evaluation_as_its_result(evaluated, tmp_path):
    """The evaluated 6-step run extended to 8 steps with [evaluation] steps = 0 (issue 21.1):
    stopped by SIGUSR1 at step 7, and then finished, the step-6 evaluation stays in energies.h5
    marked stale, and analyze and the final table of `hpcwf run` show the training window of
    the extended run, flagged stale_evaluation, never the step-6 evaluation (two short runs:
    50-72 s measured on 2 busy cores, load ~4)."""
    run = tmp_path / "run"
    shutil.copytree(evaluated, run)
    with h5py.File(run / "energies.h5", "r") as f:
        old = float(f["evaluation/energy"][0])
    job = _job(tmp_path, steps=8, every=1, keep_last=2, keep_every=3)
    stopped = _run(job, checkpoint_signal="SIGUSR1@7")
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    (row,) = _analyze(run)
    assert row["source"] == "train" and row["flags"] == "stale_evaluation", row
    assert row["steps_trained"] == 7 and row["evaluation_step"] == 6 and row["energy"] != old
    assert _evaluation_attrs(run) == {"steps": 2, "params_step": 6, "stale": 1}

    finished = _run(job)
    assert finished.returncode == 0, finished.stderr[-3000:]
    table = finished.stdout[finished.stdout.index("geometry ") :].splitlines()
    assert table[1].split()[-3:] == ["8", "train", "[stale_evaluation]"], table
    assert any(line.startswith("stale_evaluation: ") and "step 6" in line for line in table)
    (row,) = _analyze(run)
    assert row["source"] == "train" and row["steps_trained"] == 8 and row["energy"] != old
    np.testing.assert_array_equal(_train_log(run)["step"], np.arange(8))


def test_restart_to_an_older_checkpoint_stays_rolled_back(evaluated, tmp_path):
    """--restart from the step-3 checkpoint of the finished 6-step run, stopped by SIGUSR1 at
    step 4 (issue 21.5): the abandoned run's newer checkpoints (5, 6) and its params.h5 move to
    checkpoints/abandoned-step3-<time>/ (one line), the log is cut at step 3 and its evaluation
    marked stale, the retention keeps the new branch's step-4 checkpoint (it deleted it while
    5 and 6 were the newest), and the next plain resume, as a requeue does it, continues the
    new branch from step 4: one unbroken log, steps 0..5 once each (two short runs: 51-85 s
    measured on 2 busy cores, load ~4)."""
    run = tmp_path / "run"
    shutil.copytree(evaluated, run)
    ckpts = run / "checkpoints"
    job = _job(tmp_path, steps=6, every=1, keep_last=2, keep_every=3)
    stopped = _run(job, "--restart", str(ckpts / "ckpt_000000003.h5"), checkpoint_signal="SIGUSR1@4")
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    assert [p.name for p in list_checkpoints(ckpts)] == ["ckpt_000000003.h5", "ckpt_000000004.h5"]
    (aside,) = [p for p in ckpts.iterdir() if p.is_dir()]
    assert aside.name.startswith("abandoned-step3-")
    assert sorted(p.name for p in aside.iterdir()) == ["ckpt_000000005.h5", "ckpt_000000006.h5", "params.h5"]
    notes = [line for line in stopped.stdout.splitlines() if "abandoned" in line]
    assert (
        len(notes) == 1
        and notes[0].startswith("note: --restart at step 3: moved ")
        and str(aside) in notes[0]
    )
    np.testing.assert_array_equal(_train_log(run)["step"], np.arange(4))
    assert _evaluation_attrs(run)["stale"] == 1

    resumed = _run(job)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 4" in resumed.stdout
    log = _train_log(run)
    np.testing.assert_array_equal(log["step"], np.arange(6))
    assert np.isfinite(log["energy"]).all()
    assert [p.name for p in list_checkpoints(ckpts)][-1] == "ckpt_000000006.h5"
    assert sorted(p.name for p in aside.iterdir()) == ["ckpt_000000005.h5", "ckpt_000000006.h5", "params.h5"]
    (row,) = _analyze(run)
    assert row["source"] == "train" and row["flags"] == "stale_evaluation" and row["steps_trained"] == 6
