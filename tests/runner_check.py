"""A minimal stage (no jax programs) through the real stage runner, as one process or as
`mpiexec -n 2 python tests/runner_check.py`: rank 1 (or the only rank) receives a real SIGTERM
during step 2 of a 10-step stage. Every rank prints `rank R: <message>` of the error that
ended its loop, or `rank R: finished at step N`; tests/test_runner.py reads them."""

from __future__ import annotations

import dataclasses
import os
import signal

import jax

from hpcwf.errors import RunInterruptedError
from hpcwf.parallel import init_parallel
from hpcwf.runner import Runner
from hpcwf.signals import StopFlag


@dataclasses.dataclass(frozen=True)
class Count:
    step: int = 0


class SignalledStage:
    tag, n_steps, table = 4, 10, None

    def __init__(self, rank: int, size: int):
        self.signalled_rank = size - 1

    def step(self, state: Count, key):
        if state.step == 2 and init_parallel().rank == self.signalled_rank:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by StopFlag: sets the flag only
        return dataclasses.replace(state, step=state.step + 1), {}

    def progress_line(self, state, rows, window, elapsed):
        return None

    def stopped_message(self, sig: str, state: Count, checkpoint) -> str:
        return f"stopped by {sig} at step {state.step}"


def main() -> None:
    ctx = init_parallel()
    runner = Runner(ctx, jax.random.PRNGKey(0), lambda line: None, StopFlag().install(), None, 100)
    try:
        final = runner.run(SignalledStage(ctx.rank, ctx.size), Count())
        print(f"rank {ctx.rank}: finished at step {final.step}", flush=True)
    except RunInterruptedError as err:
        print(f"rank {ctx.rank}: {err}", flush=True)


if __name__ == "__main__":
    main()
