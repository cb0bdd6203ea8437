"""A real single-node SLURM cluster on localhost for the sbatch tests.

Installs the Debian packages (slurmctld, slurmd, slurm-client, munge) when they are missing and
this process may (root with apt-get), starts munged if no munge daemon answers, and runs its
own slurmctld and slurmd from a private config and state directory on free ports, so it never
touches a system SLURM. `LocalSlurm.unavailable()` gives the reason when it cannot be done.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch")

CONF = """\
ClusterName=hpcwftest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobRequeue=1
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _have_binaries() -> bool:
    return all(shutil.which(name) or Path("/usr/sbin", name).exists() for name in DAEMONS)


class LocalSlurm:
    """Start with `start(root)`; `env` then holds SLURM_CONF for sbatch/squeue/scontrol."""

    def __init__(self) -> None:
        self.root: Path | None = None
        self.env: dict[str, str] = {}

    @staticmethod
    def unavailable() -> str | None:
        """None if a local SLURM can be had here, else the one-line reason."""
        if _have_binaries():
            return None
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            return "SLURM is not installed and cannot be (needs root and apt-get)"
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *PACKAGES]):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            if proc.returncode != 0:
                return f"installing SLURM failed: {' '.join(cmd)}: {proc.stderr.strip()[-200:]}"
        return None if _have_binaries() else "SLURM packages installed but daemons not found"

    def start(self, root: Path) -> None:
        self.root = root
        for sub in ("state", "spool"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        conf = root / "slurm.conf"
        conf.write_text(
            CONF.format(root=root, ctld_port=_free_port(), slurmd_port=_free_port(), cpus=os.cpu_count() or 1)
        )
        self.env = dict(os.environ, SLURM_CONF=str(conf))
        self._ensure_munge()
        subprocess.run(["slurmctld", "-f", str(conf)], check=True, env=self.env)
        subprocess.run(["slurmd", "-f", str(conf), "-N", "localhost"], check=True, env=self.env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip()
            if out == "idle":
                # The first job step on a fresh slurmd fails MPI_Init under srun --mpi=pmi2
                # (UCX "failed to unpack address", or a hang), every later one works: a plain
                # step first, so that the tests' jobs are not that first one.
                self.run("srun", "--ntasks=1", "--time=1", "true")
                return
            time.sleep(0.5)
        raise RuntimeError(f"local SLURM node not idle after 60 s (sinfo: {out!r}); logs in {root}")

    def _ensure_munge(self) -> None:
        if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
            return
        for d in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
            Path(d).mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True)
        time.sleep(0.5)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), capture_output=True, text=True, env=self.env, check=check)

    def sbatch(self, *args: str, env: dict | None = None) -> str:
        """Submits; returns the job id."""
        proc = subprocess.run(
            ["sbatch", "--parsable", *args], capture_output=True, text=True, env={**self.env, **(env or {})}
        )
        if proc.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout.strip().split(";")[0]

    def job_field(self, job_id: str, field: str) -> str:
        """A field of `scontrol show job` (e.g. JobState, Restarts); "" when unknown."""
        out = self.run("scontrol", "-o", "show", "job", job_id, check=False).stdout
        for token in out.split():
            if token.startswith(f"{field}="):
                return token.split("=", 1)[1]
        return ""

    def in_queue(self, job_id: str) -> bool:
        return bool(self.run("squeue", "-h", "-j", job_id, check=False).stdout.strip())

    def stop(self) -> None:
        """Stops this cluster's daemons: SIGTERM, then SIGKILL after 10 s."""
        if self.root is None:
            return
        pids = []
        for pid_file in ("slurmd.pid", "slurmctld.pid"):
            with contextlib.suppress(OSError, ValueError):
                pids.append(int((self.root / pid_file).read_text().strip()))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
                time.sleep(0.2)
