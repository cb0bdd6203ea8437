"""The slurm/ scripts on a real single-node SLURM (tests/local_slurm.py), with tiny jobs.

1. `sbatch --ntasks=2 slurm/pretrain.sbatch JOB` is signalled as SLURM does before a time limit
   (SIGUSR1 to the job's tasks; `#SBATCH --signal` makes slurmctld send exactly this), checkpoints,
   requeues itself, resumes and reaches the total step count with one unbroken energy log.
2. `sbatch --array=0-1 slurm/finetune.sbatch JOB` runs one task per geometry group, each
   initialised from the pre-trained run of test 1.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from local_slurm import LocalSlurm

REPO = Path(__file__).resolve().parents[1]
STEPS = 150

PRETRAIN_JOB = """
seed = 5
[[geometry]]
name = "H2_a"
atoms = [["H", 0.0, 0.0, 0.0], ["H", 1.4, 0.0, 0.0]]
[[geometry]]
name = "H2_b"
atoms = [["H", 0.0, 0.0, 0.0], ["H", 1.6, 0.0, 0.0]]
[model]
size = "S"
n_determinants = 2
[pretraining]
steps = 2
[optimization]
steps = {steps}
batch_size = 32
[mcmc]
steps_per_update = 2
burn_in_steps = 10
[evaluation]
steps = 0
[output]
dir = "{dir}"
print_every = 10
[checkpoint]
every_steps = 50
"""

FINETUNE_JOB = """
seed = 6
[[geometry]]
name = "H2_c"
group = "c"
atoms = [["H", 0.0, 0.0, 0.0], ["H", 1.5, 0.0, 0.0]]
[[geometry]]
name = "H2_d"
group = "d"
atoms = [["H", 0.0, 0.0, 0.0], ["H", 1.7, 0.0, 0.0]]
[model]
size = "S"
n_determinants = 2
[optimization]
steps = 4
batch_size = 32
[mcmc]
steps_per_update = 2
burn_in_steps = 10
[evaluation]
steps = 4
burn_in_steps = 10
[init]
checkpoint = "{init}"
[output]
dir = "{dir}"
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = LocalSlurm.unavailable()
    if reason:
        pytest.skip(reason)
    cluster = LocalSlurm()
    cluster.start(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.run("scancel", "--user", "root", check=False)
    cluster.stop()


def _wait(predicate, timeout: float, what: str, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="module")
def pretrained(slurm, tmp_path_factory):
    """The requeued pre-training job: (run dir, its SLURM output text, job id)."""
    work = tmp_path_factory.mktemp("pretrain")
    job = work / "job.toml"
    job.write_text(PRETRAIN_JOB.format(steps=STEPS, dir=work / "run"))
    job_id = slurm.sbatch(
        "--ntasks=2",
        "--time=10",
        "--signal=USR1@30",
        f"--chdir={work}",
        str(REPO / "slurm" / "pretrain.sbatch"),
        str(job),
    )
    out = work / f"hpcwf-hpcwf-pretrain-{job_id}.out"
    _wait(lambda: "\nstep " in _text(out), 300, "the first progress line")
    slurm.run("scancel", "--signal=USR1", job_id)  # what slurmctld sends at --signal=USR1@T
    _wait(lambda: "requeueing job" in _text(out), 120, f"the requeue (output: {_text(out)[-2000:]})")
    # A requeued job becomes eligible only after a delay (BeginTime) that lets the node finish
    # cleaning up the killed incarnation; once the node is idle again that is done, and the
    # rest of the delay need not be waited out.
    _wait(lambda: slurm.job_field(job_id, "JobState") == "PENDING", 60, "the requeued job to be pending")
    _wait(lambda: slurm.run("sinfo", "-h", "-o", "%t").stdout.strip() == "idle", 120, "the node to be idle")
    time.sleep(2)
    slurm.run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)
    _wait(lambda: not slurm.in_queue(job_id), 400, f"job {job_id} to finish (output: {_text(out)[-2000:]})")
    return work / "run", _text(out), job_id


def test_signalled_job_requeues_and_completes_with_unbroken_log(slurm, pretrained):
    run, output, job_id = pretrained
    assert slurm.job_field(job_id, "JobState") == "COMPLETED", output[-3000:]
    assert slurm.job_field(job_id, "Restarts") == "1"
    assert "interrupted: stopped by SIGUSR1" in output
    assert "(restart 1)" in output and "resumed from" in output
    assert "hpcwf exited with code 0" in output
    with h5py.File(run / "energies.h5", "r") as f:
        steps = f["train/step"][:]
        energy = f["train/energy"][:]
    # One unbroken log: every step 0..STEPS-1 exactly once per rank, in order.
    np.testing.assert_array_equal(steps, np.repeat(np.arange(STEPS), 2))
    assert np.isfinite(energy).all()
    assert (run / "checkpoints" / f"ckpt_{STEPS:09d}.h5").exists()


def test_finetune_array_runs_one_task_per_group_from_the_pretrained_run(slurm, pretrained, tmp_path):
    run, _, _ = pretrained
    job = tmp_path / "finetune.toml"
    job.write_text(FINETUNE_JOB.format(init=run, dir=tmp_path / "ft"))
    job_id = slurm.sbatch(
        "--array=0-1",
        "--ntasks=1",
        "--time=10",
        "--signal=USR1@30",
        f"--chdir={tmp_path}",
        str(REPO / "slurm" / "finetune.sbatch"),
        str(job),
    )
    _wait(lambda: not slurm.in_queue(job_id), 400, f"array {job_id} to finish")
    newest = sorted((run / "checkpoints").glob("ckpt_*.h5"))[-1]
    for task, group in enumerate(("c", "d")):
        output = _text(tmp_path / f"hpcwf-hpcwf-finetune-{job_id}_{task}.out")
        assert f"init: parameters from {newest} (mode = finetune)" in output, output[-3000:]
        assert "pretrain " not in output  # fine-tuning skips HF pre-training
        with h5py.File(tmp_path / "ft" / group / "energies.h5", "r") as f:
            names = [n.decode() for n in f["geometries/names"][:]]
            assert names == [f"H2_{group}"]
            assert f["train/step"].shape == (4,)
            assert np.isfinite(f["evaluation/energy"][:]).all()
    assert os.path.exists(tmp_path / "ft" / "c" / "config.toml")
