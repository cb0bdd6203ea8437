"""Every phase stoppable and resumable (issue 21, item 11): stop signals and Ctrl-C are
handled from start-up on; a stop in start-up or HF exits 75 with one line and keeps the HF
results finished so far; Ctrl-C in VMC checkpoints like SIGTERM and a second one exits at
once. Tiny H2 jobs in subprocesses; the signals come from the test-only HPCWF_TEST_* hooks
(hpcwf.faults), so they arrive at a known point and nothing depends on timing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from hpcwf.io.checkpoint import list_checkpoints, verify_checkpoint
from hpcwf.io.config import load_job
from hpcwf.io.hf_cache import HartreeFockCache

GEOMETRY = """
[[geometry]]
name = "H2_{tag}"
atoms = [["H", 0.0, 0.0, 0.0], ["H", {bond}, 0.0, 0.0]]
"""
H2_JOB = """
seed = 3
{geometries}
[model]
size = "S"
n_determinants = 1
[pretraining]
steps = 0
[optimization]
optimizer = "adam"
steps = 6
batch_size = 16
[mcmc]
steps_per_update = 2
burn_in_steps = 10
[evaluation]
steps = 0
[checkpoint]
every_steps = 3
[output]
dir = "{dir}"
print_every = 1
"""


def _job(tmp: Path, n_geometries: int = 3) -> Path:
    """Geometries H2_a, H2_b, ... (bonds 1.4, 1.5, ... bohr) into tmp/run."""
    geometries = "".join(GEOMETRY.format(tag="abc"[i], bond=1.4 + 0.1 * i) for i in range(n_geometries))
    job = tmp / "job.toml"
    job.write_text(H2_JOB.format(geometries=geometries, dir=tmp / "run"))
    return job


def _hpcwf(*args: str, **faults: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCWF_TEST_")}
    env.update({f"HPCWF_TEST_{k.upper()}": v for k, v in faults.items()})
    return subprocess.run(
        [sys.executable, "-m", "hpcwf", *args], capture_output=True, text=True, env=env, timeout=600
    )


def _cached(cfg, path: Path) -> list[bool]:
    """Per geometry of `cfg`: whether the HF cache at `path` holds its result."""
    cache, hf = HartreeFockCache(path), cfg.hartree_fock
    return [cache.lookup(m, hf.basis, hf.elements) is not None for m in cfg.geometries]


@pytest.mark.parametrize(("signal_name", "done"), [("SIGUSR1", 1), ("SIGINT", 0)])
def test_a_stop_during_hf_exits_75_with_one_line_and_keeps_finished_geometries(tmp_path, signal_name, done):
    """SIGUSR1 after the first of three geometries' HF (SLURM's warning signal in a long HF),
    Ctrl-C as HF starts: exit 75, one `interrupted:` line, no traceback; the finished
    geometry is in the HF cache for the rerun (before: SIGUSR1 killed the process silently,
    exit 138, Ctrl-C gave a KeyboardInterrupt traceback, and the cache was written only after
    the last geometry). `hpcwf analyze` calls the dir a run without results, not "not an hpcwf
    run directory"."""
    job = _job(tmp_path)
    proc = _hpcwf("run", str(job), hf_signal=f"{signal_name}@{done}")
    assert proc.returncode == 75, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"interrupted: stopped by {signal_name} during Hartree-Fock"), lines[0]
    assert _cached(load_job(job), tmp_path / "run" / "hf_cache.h5") == [i < done for i in range(3)]

    analyzed = _hpcwf("analyze", str(tmp_path / "run"))
    assert analyzed.returncode == 2
    assert analyzed.stderr.startswith(f"error: {tmp_path / 'run'}: no results yet"), analyzed.stderr


def test_a_failing_scf_keeps_the_geometries_finished_before_it(tmp_path, monkeypatch):
    """HF of the second geometry raises (an SCF that fails, an OOM in pyscf): the first one's
    result is in the cache already, so the rerun does not compute it again."""
    from hpcwf.parallel import init_parallel
    from hpcwf.workflow import prepare_systems

    cfg = load_job(_job(tmp_path))
    original = HartreeFockCache.compute

    def compute(self, molecule, basis, elements):
        if molecule.name == "H2_b":
            raise RuntimeError("SCF not converged")
        return original(self, molecule, basis, elements)

    monkeypatch.setattr(HartreeFockCache, "compute", compute)
    path = tmp_path / "hf_cache.h5"
    with pytest.raises(RuntimeError, match="SCF not converged"):
        prepare_systems(cfg, [0, 1, 2], path, lambda line: None, init_parallel())
    assert _cached(cfg, path) == [True, False, False]


def test_ctrl_c_in_vmc_checkpoints_and_exits_75_with_one_line(tmp_path):
    """SIGINT while the step-3 checkpoint is written: like SIGTERM, the run stops at that
    checkpoint (valid), one `interrupted:` line, exit 75 (before: a KeyboardInterrupt
    traceback, exit 1, and the write in progress discarded)."""
    job = _job(tmp_path, n_geometries=1)
    proc = _hpcwf("run", str(job), checkpoint_signal="SIGINT@3")
    assert proc.returncode == 75, proc.stderr[-3000:]
    ckpt = tmp_path / "run" / "checkpoints" / "ckpt_000000003.h5"
    expected = f"interrupted: stopped by SIGINT at step 3; checkpoint {ckpt}"
    assert proc.stderr.strip().splitlines() == [expected]
    assert list_checkpoints(ckpt.parent) == [ckpt]
    verify_checkpoint(ckpt)
    # What slurm/run-hpcwf.sh reads to decide the requeue (issue 21, item 6).
    progress = tomllib.loads((tmp_path / "run" / "progress.toml").read_text())
    assert progress == {"resumed_from": 0, "checkpoint_step": 3, "checkpoint": str(ckpt), "hf_stored": 1}


def test_a_second_ctrl_c_exits_at_once():
    """Once the runner polls the flag (cooperative), the first Ctrl-C only asks for a stop;
    a second one leaves at once with 128 + SIGINT, nothing printed."""
    code = """
import os, signal, time
from hpcwf.signals import StopFlag
flag = StopFlag().install()
flag.cooperate()
os.kill(os.getpid(), signal.SIGINT)
assert flag.requested == signal.SIGINT
print("first", flush=True)
os.kill(os.getpid(), signal.SIGINT)
time.sleep(30)
print("survived")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130, proc.stderr
    assert proc.stdout == "first\n" and proc.stderr == ""


def test_a_stop_during_start_up_exits_75_with_one_line(tmp_path):
    """SIGUSR1 as `hpcwf run` begins, before jax is imported: one `interrupted:` line naming
    start-up, exit 75, nothing written (before: killed by SIGUSR1's default action, exit 138,
    which the sbatch scripts logged as a failure)."""
    job = _job(tmp_path, n_geometries=1)
    code = f"""
import os, signal, sys
from hpcwf import cli
run = cli._run
def signalled_run(args):
    os.kill(os.getpid(), signal.SIGUSR1)
    return run(args)
cli._run = signalled_run
sys.exit(cli.main(["run", {str(job)!r}]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 75, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [
        "interrupted: stopped by SIGUSR1 during start-up, before any new training step: nothing new "
        "to checkpoint; run the same job again to continue"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.toml"]
