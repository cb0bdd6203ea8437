"""The slurm/ scripts on a real single-node SLURM (tests/local_slurm.py), with tiny jobs.

1. `sbatch --ntasks=2 slurm/pretrain.sbatch JOB` is signalled as SLURM does before a time limit
   (SIGUSR1 to the job's tasks; `#SBATCH --signal` makes slurmctld send exactly this), checkpoints,
   requeues itself, resumes and reaches the total step count with one unbroken energy log.
2. `sbatch --array=0-1 slurm/finetune.sbatch JOB` runs one task per geometry group, each
   initialised from the pre-trained run of test 1.

And the scripts' own logic without SLURM (the `fake_slurm` tests, a few seconds each): a
stand-in `scontrol` and a stand-in `hpcwf run` that writes progress.toml as hpcwf does and
exits as told, the real `hpcwf check`; each script runs as SLURM runs it, from a copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
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


def _wait(predicate, timeout: float, what: str | Callable[[], str], poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    what = what() if callable(what) else what  # a callable: the message as it is at the timeout
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
    tail = lambda: _text(out)[-2000:]  # noqa: E731
    _wait(lambda: "\nstep " in _text(out), 300, lambda: f"the first progress line (output: {tail()})")
    slurm.run("scancel", "--signal=USR1", job_id)  # what slurmctld sends at --signal=USR1@T
    _wait(lambda: "requeueing job" in _text(out), 120, lambda: f"the requeue (output: {tail()})")
    # A requeued job becomes eligible only after a delay (BeginTime) that lets the node finish
    # cleaning up the killed incarnation; once the node is idle again that is done, and the
    # rest of the delay need not be waited out.
    _wait(lambda: slurm.job_field(job_id, "JobState") == "PENDING", 60, "the requeued job to be pending")
    _wait(lambda: slurm.run("sinfo", "-h", "-o", "%t").stdout.strip() == "idle", 120, "the node to be idle")
    time.sleep(2)
    slurm.run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)
    _wait(lambda: not slurm.in_queue(job_id), 400, lambda: f"job {job_id} to finish (output: {tail()})")
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


# ---------------------------------------------------------------------------------------------
# The scripts' logic with a stand-in SLURM and hpcwf run (issue 21, items 6 and 8).

FAKE_SCONTROL = """#!/bin/bash
# scontrol show job ID: the Command= line (the path given to sbatch, then the arguments);
# scontrol requeue ID: recorded.
case $1 in
    show) echo "JobId=$3 JobName=hpcwf"; echo "   Command=$FAKE_COMMAND"; echo "   WorkDir=$PWD" ;;
    requeue) echo "$2" >> "$FAKE_DIR/requeued" ;;
esac
"""

FAKE_HPCWF = """#!/bin/bash
# `hpcwf check` is the real one. `hpcwf run` records its arguments and its run dir, then acts
# out FAKE_RUN: "RC RESUMED REACHED" writes progress.toml as hpcwf does (REACHED -1: no
# checkpoint written) and exits RC; "USR1" dies of SIGUSR1, as hpcwf would before its handler.
[ "$1" = check ] && exec "$FAKE_PYTHON" -m hpcwf "$@"
shift
printf '%s\\n' "$@" > "$FAKE_DIR/run-args"
run_dir=$("$FAKE_PYTHON" -m hpcwf check "$@" --run-dir) || exit 2
echo "$run_dir" > "$FAKE_DIR/run-dir"
read -r rc resumed reached <<< "$FAKE_RUN"
[ "$rc" = USR1 ] && kill -USR1 $$
mkdir -p "$run_dir/checkpoints"
ckpt=""
if [ "$reached" -ge 0 ]; then
    ckpt="$(cd "$run_dir" && pwd)/checkpoints/ckpt_$(printf %09d "$reached").h5"
    touch "$ckpt"
fi
printf 'resumed_from = %s\\ncheckpoint_step = %s\\ncheckpoint = "%s"\\nhf_stored = 0\\n' \\
    "$resumed" "$reached" "$ckpt" > "$run_dir/progress.toml"
exit "$rc"
"""

FAKE_JOB = """
[[geometry]]
name = "H2_a"
group = "a"
atoms = [["H", 0.0, 0.0, 0.0], ["H", 1.4, 0.0, 0.0]]
[[geometry]]
name = "H2_b"
group = "b"
atoms = [["H", 0.0, 0.0, 0.0], ["H", 1.6, 0.0, 0.0]]
[output]
dir = "run"
"""


@pytest.fixture
def fake_slurm(tmp_path):
    """Returns allocate(script, *args, restart=0, run="0 0 1", task=None, checkout="checkout")
    -> (exit code, output text, run args): one allocation of `sbatch slurm/<script>.sbatch
    args` from a copy of the slurm/ dir at tmp/<checkout>, submitted from tmp/work."""
    bin_dir, fake_dir, work = tmp_path / "bin", tmp_path / "fake", tmp_path / "work"
    for d in (bin_dir, fake_dir, work):
        d.mkdir()
    for name, text in (("scontrol", FAKE_SCONTROL), ("hpcwf", FAKE_HPCWF)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (work / "job.toml").write_text(FAKE_JOB)

    def allocate(script, *args, restart=0, run="0 0 1", task=None, checkout="checkout"):
        home = tmp_path / checkout
        if not home.exists():
            shutil.copytree(REPO / "slurm", home / "slurm")
        spool = tmp_path / "spool" / f"job{restart}"  # SLURM runs a copy of the script
        spool.mkdir(parents=True)
        shutil.copy(home / "slurm" / f"{script}.sbatch", spool / "slurm_script")
        (fake_dir / "run-args").unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HPCWF_", "SLURM_"))}
        env.update(
            PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
            PYTHONPATH=str(REPO),
            FAKE_PYTHON=sys.executable,
            FAKE_DIR=str(fake_dir),
            FAKE_RUN=run,
            FAKE_COMMAND=" ".join([str(home / "slurm" / f"{script}.sbatch"), *args]),
            HPCWF_LAUNCHER="env",
            HPCWF_VENV=str(tmp_path / "no-venv"),
            SLURM_JOB_ID="42",
            SLURM_RESTART_COUNT=str(restart),
            SLURM_JOB_NUM_NODES="1",
            SLURM_NTASKS="1",
        )
        if task is not None:
            env.update(SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_JOB_ID="41")
        proc = subprocess.run(
            ["bash", str(spool / "slurm_script"), *args], cwd=work, env=env, capture_output=True, text=True
        )
        run_args = _text(fake_dir / "run-args").splitlines()
        return proc.returncode, proc.stdout + proc.stderr, run_args

    allocate.work, allocate.requeued = work, fake_dir / "requeued"
    return allocate


def test_requeue_judges_progress_from_the_step_resumed_from_and_never_replays_restart(fake_slurm):
    """A job submitted with --restart ckpt_10 while ckpt_30 of an abandoned branch exists:
    allocation 0 reaches step 18 and is stopped: progress (18 > 10), requeued (before: the
    newest file name, 30, stayed 30: "without progress"). Allocation 1 continues from ckpt_18,
    the previous run's newest checkpoint, not from ckpt_10 again; allocation 2 is stopped
    before its first checkpoint: not requeued."""
    checkpoints = fake_slurm.work / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for step in (10, 30):
        (checkpoints / f"ckpt_{step:09d}.h5").touch()
    restart = str(checkpoints / "ckpt_000000010.h5")

    rc, out, args = fake_slurm("pretrain", "job.toml", "--restart", restart, run="75 10 18")
    assert rc == 0, out
    assert args == ["job.toml", "--restart", restart]
    assert "requeueing job 42" in out and _text(fake_slurm.requeued).split() == ["42"]

    rc, out, args = fake_slurm("pretrain", "job.toml", f"--restart={restart}", restart=1, run="75 18 26")
    assert rc == 0, out
    assert args == ["job.toml", "--restart", str(checkpoints / "ckpt_000000018.h5")], out
    assert _text(fake_slurm.requeued).split() == ["42", "42"]

    rc, out, args = fake_slurm("pretrain", "job.toml", "--rest", restart, restart=2, run="75 26 -1")
    assert args == ["job.toml", "--restart", str(checkpoints / "ckpt_000000026.h5")], out
    assert rc == 75 and "stopped without progress" in out, out
    assert _text(fake_slurm.requeued).split() == ["42", "42"]


@pytest.mark.parametrize(("script", "task", "run_dir"), [("pretrain", None, "D"), ("finetune", 1, "D/b")])
def test_output_dir_is_where_the_scripts_look_for_progress(fake_slurm, script, task, run_dir):
    """`sbatch slurm/pretrain.sbatch job.toml --output-dir D` reads the progress of D (before:
    of the job's [output] dir, "checkpoint step 0", never requeued); an array task K of
    finetune.sbatch with --output-dir D runs in D/<group K> (before: every task in D)."""
    rc, out, args = fake_slurm(script, "job.toml", "--output-dir", "D", run="75 0 4", task=task)
    assert rc == 0, out
    assert f"run dir {run_dir}," in out and "requeueing job" in out, out
    assert _text(fake_slurm.requeued.parent / "run-dir").strip() == run_dir
    assert (fake_slurm.work / run_dir / "progress.toml").exists()


@pytest.mark.parametrize("script", ["pretrain", "finetune", "evaluate"])
def test_scripts_run_from_a_checkout_whose_path_has_a_space(fake_slurm, script):
    """scontrol's Command= is the script path, then the arguments, separated by spaces: the
    path "my checkout/slurm/..." was cut at the space ("No such file or directory")."""
    rc, out, args = fake_slurm(script, "job.toml", run="0 0 5", task=0, checkout="my checkout")
    assert rc == 0, out
    assert args[0] == "job.toml" and "hpcwf exited with code 0" in out, out


def test_a_stop_signal_before_hpcwf_handles_it_is_reported_as_such(fake_slurm):
    """hpcwf killed by SIGUSR1 before its handler is installed (interpreter start-up): exit
    138, logged as a stop in start-up with nothing to checkpoint (before: an ordinary
    failure), not requeued."""
    rc, out, _ = fake_slurm("pretrain", "job.toml", run="USR1")
    assert rc == 138, out
    assert "stopped by SIGUSR1 during its start-up" in out and "not requeueing" in out, out
    assert not fake_slurm.requeued.exists()
