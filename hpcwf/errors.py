"""Exceptions that end a run, and the exit codes `hpcwf` maps them to (README: exit codes).

Light on purpose (no numpy, no jax): the command line imports it before anything else.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # an unexpected error (traceback printed); under MPI the whole job is aborted
EXIT_BAD_INPUT = 2  # one line `error: <file>: <key>: <what is wrong>`, nothing written
EXIT_DIVERGED = 3  # repeated non-finite updates: stopped with a checkpoint of the last good state
EXIT_STORAGE = 74  # sysexits EX_IOERR: a checkpoint or log could not be written (disk full, quota)
EXIT_INTERRUPTED = 75  # sysexits EX_TEMPFAIL: stopped by a signal after a checkpoint; rerun resumes


class InputError(Exception):
    """Unusable user input (job file, dataset, checkpoint, run dir); str() names file and key."""


class RunInterruptedError(Exception):
    """Raised by the training loop after it has saved state in response to a stop signal."""


class RunDivergedError(Exception):
    """Raised when updates failed repeatedly; the last good state has been checkpointed."""


class LaunchError(InputError):
    """The parallel launch is unusable (e.g. srun without PMI): every rank would run alone."""


class StorageError(Exception):
    """A file of the run could not be written (disk full, quota, file size limit); str() names
    the file, the reason and the newest valid checkpoint, which a rerun resumes from."""
