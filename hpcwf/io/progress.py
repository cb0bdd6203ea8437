"""`<run dir>/progress.toml`: where the latest `hpcwf run` in a run dir started and how far it
got. slurm/run-hpcwf.sh reads it to decide whether a stopped job made progress and is worth
requeueing, and which checkpoint a requeued job continues from.

Why not the checkpoint file names: after `--restart` from an older checkpoint the dir still
holds the newer checkpoints of the abandoned branch (restart from step 10, reach 18, while
ckpt_30 exists): the highest name says nothing about what this run did.

    resumed_from = 10       # VMC step this run started from (0: a fresh start)
    checkpoint_step = 18    # step of the newest checkpoint this run wrote; -1: none yet
    checkpoint = "runs/x/checkpoints/ckpt_000000018.h5"   # what a continuation resumes from:
                            # the newest checkpoint this run wrote, else the one it resumed
                            # from ("" after a fresh start without checkpoint)
    hf_stored = 2           # HF results this run computed and stored in the HF cache (rank 0's)

Written by rank 0 only, atomically (`write_atomically`), when the run dir is set up, after HF
results are stored and after every checkpoint. Flat `key = value` lines, so that a shell
script reads it with sed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import tomli_w

from hpcwf.io.h5files import write_atomically

PROGRESS_FILE = "progress.toml"


@dataclasses.dataclass
class RunProgress:
    """The content of progress.toml; `update` rewrites the file."""

    path: Path
    resumed_from: int = 0
    checkpoint_step: int = -1
    checkpoint: str = ""
    hf_stored: int = 0

    def update(self, **changes) -> None:
        for key, value in changes.items():
            if not hasattr(self, key) or key == "path":
                raise AttributeError(key)
            setattr(self, key, value)
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "path"}
        header = "# hpcwf run: where the latest run in this dir started and how far it got\n"
        write_atomically(self.path, (header + tomli_w.dumps(values)).encode("utf-8"))
