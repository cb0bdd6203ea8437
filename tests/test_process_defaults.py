"""Environment defaults set when hpcwf is imported (hpcwf/process_defaults.py), and the N2
step they exist for.

The N2 job is the one that hung on jaxlib 0.10.2 with XLA:CPU's concurrency-optimized
scheduler: its first VMC step (K-FAC statistics of 256 walkers, 14 electrons) never returned,
every thread idle. It runs in a subprocess that is killed after a deadline, so a deadlock fails
the test instead of stalling the suite. Cost: about 25-30 s on 2 CPU cores.
"""

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from hpcwf import process_defaults
from hpcwf.process_defaults import XLA_FLAG_DEFAULTS, xla_flags_with_defaults

REPO = Path(__file__).resolve().parents[1]
FLAG = "xla_cpu_enable_concurrency_optimized_scheduler"


def test_defaults_are_appended_and_the_users_flags_kept():
    assert xla_flags_with_defaults(None) == f"--{FLAG}=false"
    assert xla_flags_with_defaults("") == f"--{FLAG}=false"
    user = "--xla_force_host_platform_device_count=2  --xla_cpu_multi_thread_eigen=false"
    assert xla_flags_with_defaults(user).split() == user.split() + [f"--{FLAG}=false"]


def test_a_flag_the_user_set_wins_and_is_not_repeated():
    for value in (f"--{FLAG}=true", f"-{FLAG}=true", f"--xla_dump_to=/tmp/x --{FLAG}=true"):
        assert xla_flags_with_defaults(value) == value
    once = xla_flags_with_defaults(None)
    assert xla_flags_with_defaults(once) == once


def test_apply_fills_only_what_is_unset():
    env: dict[str, str] = {}
    process_defaults.apply(env)
    assert env == {"OPENBLAS_NUM_THREADS": "1", "XLA_FLAGS": f"--{FLAG}=false"}
    env = {"OPENBLAS_NUM_THREADS": "4", "XLA_FLAGS": f"  --{FLAG}=true "}
    process_defaults.apply(env)
    assert env == {"OPENBLAS_NUM_THREADS": "4", "XLA_FLAGS": f"  --{FLAG}=true "}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "OPENBLAS_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env | extra


def test_importing_hpcwf_sets_the_flags_before_jax_starts():
    """In a fresh interpreter: `import hpcwf` puts the flags into the environment, and the JAX
    backend started afterwards has read them (XLA rejects an unknown flag, so a misspelt one
    would fail here too)."""
    code = (
        "import os, hpcwf, jax, jax.numpy as jnp; float(jnp.ones(3).sum()); "
        "print(os.environ['XLA_FLAGS']); print(os.environ['OPENBLAS_NUM_THREADS'])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(XLA_FLAGS="--xla_cpu_multi_thread_eigen=true"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    flags, threads = proc.stdout.split("\n")[:2]
    assert flags.split() == ["--xla_cpu_multi_thread_eigen=true"] + [
        f"--{name}={value}" for name, value in XLA_FLAG_DEFAULTS.items()
    ]
    assert threads == "1"


def test_a_late_import_warns_that_the_flags_came_too_late():
    code = (
        "import warnings, jax.numpy as jnp; float(jnp.ones(3).sum()); "
        "warnings.simplefilter('error'); import hpcwf"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0 and "RuntimeWarning" in proc.stderr and FLAG in proc.stderr


N2_JOB = """\
[[geometry]]
name = "N2"
atoms = [["N", 0.0, 0.0, 0.0], ["N", 2.068, 0.0, 0.0]]
[pretraining]
steps = 0
[optimization]
steps = 2
batch_size = 256
[evaluation]
steps = 0
[output]
dir = "{dir}"
print_every = 1
"""


def test_n2_vmc_steps_complete_with_256_walkers(tmp_path):
    """Two K-FAC steps of N2 (14 electrons) at the default walker count finish within the
    deadline and log finite energies (jaxlib 0.10.2 deadlocked here without the XLA flag)."""
    job = tmp_path / "job.toml"
    job.write_text(N2_JOB.format(dir=tmp_path / "run"))
    proc = subprocess.run(
        [sys.executable, "-m", "hpcwf", "run", str(job)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=400,  # a deadlock is killed here (TimeoutExpired fails the test)
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with h5py.File(tmp_path / "run" / "energies.h5", "r") as f:
        energy = f["train"]["energy"][:]
    assert energy.shape == (2,) and np.all(np.isfinite(energy))
