"""A minimal stage (no jax programs) through the real stage runner, as one process or as
`mpiexec -n 2 python tests/runner_check.py`: rank 1 (or the only rank) receives a real SIGTERM
during step 2 of a 10-step stage. Every rank writes `<message>` of the error that ended its
loop, or `finished at step N`, to OUT_DIR/rank<R>.txt (one file per rank: the ranks' stdout
streams interleave under mpiexec); tests/test_runner.py reads them."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path

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


def main(out_dir: Path) -> None:
    ctx = init_parallel()
    runner = Runner(ctx, jax.random.PRNGKey(0), lambda line: None, StopFlag().install(), None, 100)
    try:
        final = runner.run(SignalledStage(ctx.rank, ctx.size), Count())
        outcome = f"finished at step {final.step}"
    except RunInterruptedError as err:
        outcome = str(err)
    (out_dir / f"rank{ctx.rank}.txt").write_text(outcome)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
