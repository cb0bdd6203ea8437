"""The stage runner (hpcwf.runner) with minimal stages that compile no jax program: the stop
agreement across ranks (every stage, evaluation included, stops on every rank at the same
step when one rank gets a signal), the rollback count, and rows checked against the log
schema. Cost: about 1 s in-process plus one `mpiexec -n 2` launch (~10 s, mostly imports)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from hpcwf.errors import RunDivergedError
from hpcwf.io.energy_log import EnergyLog
from hpcwf.io.log_schema import LogFieldError
from hpcwf.parallel import init_parallel
from hpcwf.runner import MAX_CONSECUTIVE_REJECTED, Runner
from hpcwf.signals import StopFlag
from hpcwf.systems.molecule import Molecule

HERE = Path(__file__).resolve().parent
MPIEXEC = Path(sys.executable).with_name("mpiexec")


@pytest.mark.skipif(not MPIEXEC.exists(), reason=f"no mpiexec next to {sys.executable}")
def test_a_signal_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """Rank 1 alone gets SIGTERM during step 2: both ranks leave the loop after step 3 with
    the stage's message (rank 0 names the other rank), instead of rank 0 running on alone (as
    evaluation did with its rank-local check) and waiting forever in its next collective."""
    proc = subprocess.run(
        [str(MPIEXEC), "-n", "2", sys.executable, str(HERE / "runner_check.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcomes = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    assert outcomes == [
        "stopped by a signal on another rank at step 3",
        "stopped by SIGTERM at step 3",
    ]


@dataclasses.dataclass(frozen=True)
class Count:
    step: int = 0


class RejectingStage:
    """Pre-training-shaped rows; every update rejected."""

    tag, n_steps, table = 1, 100, "pretrain"

    def __init__(self, extra: dict | None = None):
        self.extra = extra or {}

    def step(self, state: Count, key):
        metrics = {
            "geometry": 0,
            "loss": 0.5,
            "rolled_back": 1,
            "energy": float("nan"),
            "variance": float("nan"),
            **self.extra,
        }
        return dataclasses.replace(state, step=state.step + 1), metrics

    def progress_line(self, state, rows, window, elapsed):
        return None

    def rejection_line(self, step, rows, in_a_row):
        return f"step {step} rejected ({in_a_row} in a row)"

    def diverged_message(self, step, in_a_row, checkpoint):
        return f"{in_a_row} rejections up to step {step}"


def _runner(tmp_path, lines: list[str]) -> tuple[Runner, EnergyLog]:
    h2 = Molecule.create("H2", [["H", 0.0, 0.0, 0.0], ["H", 1.4, 0.0, 0.0]])
    energy_log = EnergyLog(tmp_path / "energies.h5", [h2])
    return Runner(
        init_parallel(), jax.random.PRNGKey(0), lines.append, StopFlag(), energy_log, 1000
    ), energy_log


def test_rejections_in_a_row_stop_the_stage_with_every_row_logged(tmp_path):
    lines: list[str] = []
    runner, energy_log = _runner(tmp_path, lines)
    with pytest.raises(RunDivergedError, match=f"{MAX_CONSECUTIVE_REJECTED} rejections up to step 19"):
        runner.run(RejectingStage(), Count())
    assert lines[-1] == f"step 19 rejected ({MAX_CONSECUTIVE_REJECTED} in a row)"
    from hpcwf.analysis.run_data import read_run

    pretrain = read_run(tmp_path).pretrain
    np.testing.assert_array_equal(pretrain["step"], np.arange(MAX_CONSECUTIVE_REJECTED))
    assert (pretrain["rolled_back"] == 1).all()


def test_a_metric_the_schema_does_not_declare_stops_the_first_step(tmp_path):
    runner, _ = _runner(tmp_path, [])
    with pytest.raises(LogFieldError, match="unknown field.*grad_variance"):
        runner.run(RejectingStage({"grad_variance": 1.0}), Count())


def test_evaluation_burn_in_and_evaluation_steps_never_share_a_key():
    """The evaluation's burn-in chunk c and its step c once drew the same random key (both
    under the STAGE_EVAL tag), so the sampling repeated the burn-in's proposals. The keys of
    the real EvaluationStage (burn-in, then steps through the runner's key derivation) are
    recorded with stand-in sampling functions (no jax program): all distinct."""
    from types import SimpleNamespace

    from hpcwf.mcmc import WalkerState
    from hpcwf.runner import stage_key
    from hpcwf.training.stages import BURN_IN_CHUNK, EvaluationStage
    from hpcwf.training.vmc import new_geometry_state

    used: list[tuple] = []

    def burn_in(params, data, walkers, key):
        used.append(("burn-in", tuple(np.asarray(jax.random.key_data(key)).ravel())))
        return walkers

    def sample_and_measure(params, data, geometry, key):
        used.append(("step", tuple(np.asarray(jax.random.key_data(key)).ravel())))
        return geometry, np.zeros(2), {}

    n_steps = 6
    stage = object.__new__(EvaluationStage)
    stage.cfg = SimpleNamespace(evaluation=SimpleNamespace(burn_in_steps=n_steps * BURN_IN_CHUNK))
    stage.systems = [SimpleNamespace(index=i, data=None) for i in (0, 1)]
    stage.root, stage.n_steps = jax.random.PRNGKey(0), n_steps
    stage.vmc, stage.sample_and_measure = SimpleNamespace(burn_in=burn_in), sample_and_measure
    walkers = WalkerState(np.zeros((2, 1, 3)), np.zeros(2), np.zeros(2, np.int32), np.float64(0.1))
    state = stage.initial_state(None, {i: new_geometry_state(walkers) for i in (0, 1)})
    for t in range(n_steps):
        state, _ = stage.step(state, stage_key(stage.root, stage.tag, t))
    assert len(used) == 2 * 2 * n_steps
    assert len({key for _, key in used}) == len(used)
