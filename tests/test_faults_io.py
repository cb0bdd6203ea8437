"""File-level faults: readers of a live run, file systems without locks, damaged files.

Real runs of a tiny H2 job in subprocesses (like a user's), real HDF5 and a real lock-less file
system, simulated by an LD_PRELOAD shim (tests/nolocks.c) that makes every flock/fcntl lock fail
with ENOLCK, as NFS without lockd does. Cost: three short H2 runs (~30 s CPU each on one core
with a warm JAX compilation cache) plus a few runs that stop at input checking.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcwf.io.checkpoint import list_checkpoints, verify_checkpoint
from hpcwf.io.energy_log import TRAIN_FIELDS, EnergyLog
from hpcwf.io.hf_cache import HartreeFockCache
from hpcwf.systems.molecule import Molecule

JOB = """
[[geometry]]
name = "H2"
atoms = [["H", 0.0, 0.0, 0.0], ["H", 1.4, 0.0, 0.0]]
[model]
n_determinants = 1
[pretraining]
steps = 4
[optimization]
steps = {steps}
batch_size = 16
[mcmc]
steps_per_update = 2
burn_in_steps = 5
[evaluation]
steps = 0
[output]
dir = "{run}"
print_every = 1
"""


def _job(path: Path, run: Path, steps: int) -> Path:
    path.write_text(JOB.format(run=run, steps=steps))
    return path


def _hpcwf(*args, env=None, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "hpcwf", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


def _run(*args, env=None) -> subprocess.CompletedProcess:
    proc = _hpcwf(*args, env=env)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _output_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """stdout and stderr lines, without XLA's own log lines ("E1130 17:25:36.09 ...": a JAX
    compilation cache filled on another CPU warns when loaded)."""
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return [line for line in lines if not re.match(r"[IWEF]\d{4} \d\d:\d\d:\d\d", line)]


def _train_steps(path: Path) -> np.ndarray:
    with h5py.File(path, "r", locking=False) as f:
        return f["train/step"][:]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A finished 3-step run (checkpoint at step 3); tests resume copies of it."""
    tmp = tmp_path_factory.mktemp("base")
    proc = _run("run", _job(tmp / "job.toml", tmp / "run", steps=3))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run"


@pytest.fixture(scope="module")
def nolocks(tmp_path_factory) -> str:
    """Path of the compiled lock-less shim (tests/nolocks.c)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the lock-less file system shim")
    lib = tmp_path_factory.mktemp("shim") / "nolocks.so"
    source = Path(__file__).with_name("nolocks.c")
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(lib), str(source), "-ldl"], check=True)
    return str(lib)


def _lockless_env(shim: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "HDF5_USE_FILE_LOCKING"}
    return {**env, "LD_PRELOAD": shim, **extra}


def _copy_run(base: Path, tmp: Path) -> Path:
    run = tmp / "run"
    shutil.copytree(base, run)
    return run


def test_reader_holding_the_log_open_never_hurts_the_run(base_run, tmp_path):
    """A notebook holds energies.h5 open with h5py's default locking while the run is resumed,
    and another reader reopens it in a loop (default locking too): the run finishes (exit 0)
    with every step logged exactly once; every read sees a complete log (equal-length
    columns, steps 0..n-1); the held handle keeps the version it opened."""
    run = _copy_run(base_run, tmp_path)
    log = run / "energies.h5"
    job = _job(tmp_path / "job.toml", run, steps=8)
    seen = []
    with h5py.File(log, "r") as held:  # default locking: holds a shared lock the whole time
        before = held["train/step"][:]
        assert before.tolist() == [0, 1, 2]
        proc = _hpcwf("run", job)
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            with h5py.File(log, "r") as f:  # default locking, opened while the run writes
                columns = {name: f["train"][name][:] for name in TRAIN_FIELDS}
            lengths = {c.shape[0] for c in columns.values()}
            assert len(lengths) == 1, f"a reader saw columns of lengths {lengths}"
            np.testing.assert_array_equal(columns["step"], np.arange(lengths.pop()))
            seen.append(columns["step"].size)
            time.sleep(0.1)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-3000:]
        np.testing.assert_array_equal(held["train/step"][:], before)
    assert "step       8/8" in out
    np.testing.assert_array_equal(_train_steps(log), np.arange(8))
    assert seen and min(seen) >= 3  # the reader only ever saw the resumed log, never less


def test_runs_on_a_file_system_without_locks(base_run, nolocks, tmp_path):
    """With every lock refused (ENOLCK) hpcwf resumes a run whose HF cache is gone: pyscf's SCF,
    HF cache, checkpoint read and write, energies.h5 and params.h5 all work; inspect and analyze
    too. The shim is checked first: plain h5py cannot even open a file under it."""
    env = _lockless_env(nolocks)
    run = _copy_run(base_run, tmp_path)
    probe = subprocess.run(
        [sys.executable, "-c", f"import h5py; h5py.File({str(run / 'energies.h5')!r}, 'r')"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert probe.returncode != 0 and "No locks available" in probe.stderr
    (run / "hf_cache.h5").unlink()  # HF is computed (and stored) again

    proc = _run("run", _job(tmp_path / "job.toml", run, steps=5), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "computed on rank 0" in proc.stdout
    np.testing.assert_array_equal(_train_steps(run / "energies.h5"), np.arange(5))
    newest = list_checkpoints(run / "checkpoints")[-1]
    assert newest.name == "ckpt_000000005.h5"
    verify_checkpoint(newest)
    assert (run / "checkpoints" / "params.h5").is_file()
    with h5py.File(run / "hf_cache.h5", "r", locking=False) as f:
        assert [bool(g.attrs["complete"]) for g in f.values()] == [True]
    assert not list(run.rglob(".*.tmp*"))  # no temporary file left behind

    for args in (("inspect", newest), ("analyze", run)):
        proc = _run(*args, env=env)
        assert proc.returncode == 0, (args, proc.stderr[-3000:])


def test_forced_locking_on_a_file_system_without_locks_is_refused_up_front(nolocks, tmp_path):
    """HDF5_USE_FILE_LOCKING=TRUE overrides hpcwf's lock-free opens inside HDF5; where locks are
    unavailable the run stops before writing anything, with one error line naming the cause
    and the remedy."""
    run = tmp_path / "run"
    job = _job(tmp_path / "job.toml", run, steps=3)
    proc = _run("run", job, env=_lockless_env(nolocks, HDF5_USE_FILE_LOCKING="TRUE"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = _output_lines(proc)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {job}: output.dir: HDF5_USE_FILE_LOCKING=TRUE")
    assert "No locks available" in lines[0] and "unset HDF5_USE_FILE_LOCKING" in lines[0]
    assert not run.exists()


def test_truncated_log_is_refused_before_anything_is_written(base_run, tmp_path):
    """A run dir whose energies.h5 was cut short (disk trouble, a partial copy) is not resumed
    into a log with missing rows: one error line, exit 2, the dir left as it was."""
    run = _copy_run(base_run, tmp_path)
    log = run / "energies.h5"
    data = log.read_bytes()
    log.write_bytes(data[: len(data) // 2])
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    job = _job(tmp_path / "job.toml", run, steps=6)
    proc = _run("run", job)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = _output_lines(proc)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {job}: output.dir: {log} is damaged (unreadable")
    assert "move it aside" in lines[0]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_run_starting_over_replaces_a_damaged_log(tmp_path):
    """A run dir without checkpoints is started over; a damaged energies.h5 there is replaced by
    a fresh log instead of crashing the run (the resume case is refused above)."""
    path = tmp_path / "energies.h5"
    log = EnergyLog(path, [_h2()])
    log.append(**{name: 0 for name in TRAIN_FIELDS})
    log.flush()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    EnergyLog(path, [_h2()]).truncate(0)
    with h5py.File(path, "r") as f:
        assert [str(n, "utf-8") for n in f["geometries/names"][:]] == ["H2"]
        assert all(f["train"][name].shape == (0,) for name in TRAIN_FIELDS)


def _h2() -> Molecule:
    return Molecule.create("H2", [["H", 0.0, 0.0, 0.0], ["H", 1.4, 0.0, 0.0]])


def test_truncated_hf_cache_is_recomputed(tmp_path):
    """A truncated HF cache (a crash of an older hpcwf that wrote it in place, a full disk):
    the result is computed again (identical), a fresh cache written and the old file moved
    aside with a warning."""
    path = tmp_path / "hf_cache.h5"
    first = HartreeFockCache(path).get_or_compute(_h2())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    cache = HartreeFockCache(path)
    with pytest.warns(UserWarning, match="hf_cache.h5 is unreadable .*truncated.*; moved to"):
        again = cache.get_or_compute(_h2())
    assert cache.n_computed == 1
    np.testing.assert_array_equal(again.descriptors_up, first.descriptors_up)
    assert HartreeFockCache(path).lookup(_h2()) is not None
    assert len(list(tmp_path.glob("hf_cache.h5.corrupt-*"))) == 1
