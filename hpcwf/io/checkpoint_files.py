"""The files of a checkpoint directory, by name alone: `ckpt_<step:09d>.h5`, which of them a
resume sees, retention, and setting aside the checkpoints of an abandoned branch.

No jax, no h5py: `hpcwf check` (login nodes) uses it to see whether a run dir holds a
checkpoint to resume from. Reading and verifying the files is `hpcwf.io.checkpoint`.
"""

from __future__ import annotations

import contextlib
import datetime
import re
from pathlib import Path

_CKPT_NAME = re.compile(r"^ckpt_(\d+)\.h5$")
# Subdirectory of `checkpoints/` that receives the checkpoints a `--restart` abandoned; a
# resume and the retention look only at the files directly in `checkpoints/`.
ABANDONED_PREFIX = "abandoned-"
PARAMS_FILE = "params.h5"


def checkpoint_path(directory: str | Path, step: int) -> Path:
    """`<directory>/ckpt_<step:09d>.h5`."""
    return Path(directory) / f"ckpt_{int(step):09d}.h5"


def step_of(path: Path) -> int:
    """The step in a `ckpt_<step>.h5` file name."""
    m = _CKPT_NAME.match(path.name)
    assert m is not None
    return int(m.group(1))


def list_checkpoints(directory: str | Path) -> list[Path]:
    """`ckpt_<step>.h5` files in `directory`, oldest step first; temporary files (".ckpt_...
    .tmp<pid>"), other names and subdirectories (`abandoned-*/`) are ignored; a missing
    directory gives []."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _CKPT_NAME.match(p.name) and p.is_file()]
    return sorted(found, key=step_of)


def apply_retention(directory: str | Path, keep_last: int, keep_every: int) -> list[Path]:
    """Deletes checkpoints in `directory` except the newest `keep_last` (at least 1: the newest
    is never deleted) and, when keep_every > 0, those whose step is a multiple of keep_every.
    Checksums are not checked (call it right after a successful save). Returns deleted paths.
    Only the live branch is in `directory` itself: `set_aside_newer` moved an abandoned one
    into a subdirectory, which this never touches."""
    paths = list_checkpoints(directory)
    keep = set(paths[-max(int(keep_last), 1) :])
    if keep_every > 0:
        keep.update(p for p in paths if step_of(p) % keep_every == 0)
    deleted = []
    for p in paths:
        if p not in keep:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            deleted.append(p)
    return deleted


def set_aside_newer(directory: str | Path, step: int) -> tuple[Path | None, list[Path]]:
    """Moves every checkpoint of `directory` newer than `step`, and the final parameters
    (`params.h5`) they ended in, into a new subdirectory `abandoned-step<step>-<UTC time>/`
    (renamed, never deleted): a run rolled back to `step` (`hpcwf run --restart`) then
    continues its new branch on every later resume, and the retention cannot delete the new
    branch's checkpoints to keep the old ones. Returns (that subdirectory, the files moved
    there, by their old paths); (None, []) when nothing is newer."""
    directory = Path(directory)
    newer = [p for p in list_checkpoints(directory) if step_of(p) > step]
    if not newer:
        return None, []
    params = directory / PARAMS_FILE
    if params.is_file():
        newer.append(params)  # written at the end of the abandoned branch's optimization
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = directory / f"{ABANDONED_PREFIX}step{int(step)}-{stamp}"
    n = 1
    while target.exists():  # two rollbacks within one second
        n += 1
        target = directory / f"{ABANDONED_PREFIX}step{int(step)}-{stamp}-{n}"
    target.mkdir()
    for p in newer:
        p.rename(target / p.name)
    return target, newer
