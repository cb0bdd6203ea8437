"""How hpcwf opens and writes HDF5 files: never in place, never relying on file locks.

HDF5 (>= 1.10) locks every file it opens (flock: shared for reading, exclusive for writing).
Two things break on that:

- a reader that opens a file with default locking (h5py, h5dump, a notebook holding it open)
  makes a writer's later open of the same file fail (`BlockingIOError: [Errno 11] unable to
  lock file`);
- on file systems without locks (NFS without lockd, Lustre mounted without flock) every open
  fails (`[Errno 37] No locks available`, or errno 38).

So hpcwf never writes into a file that someone may be reading. Every new version of a file is
built in memory (from a byte copy of the current version when the change is an edit), written
to a private temporary file `.<name>.tmp<pid>` next to it in one write, fsynced and renamed over
it (`write_atomically`, the one atomic writer of hpcwf: HDF5 files through `replace_h5`, other
files, such as the resolved config.toml, given as bytes). rename(2) is
atomic: a reader opening the file gets either the old or the new version, complete, and a
reader holding the file open keeps the version it opened (the replaced inode lives until it is
closed). No file is ever written by two processes at once, so locks protect nothing, and every
open passes `locking=False` (`open_h5`): hpcwf runs on lock-less file systems as it is.

The price is a full copy per version: callers batch their changes (`EnergyLog`, the HF cache).
An `HDF5_USE_FILE_LOCKING` variable set to anything but FALSE overrides `locking=False` inside
HDF5; `forced_locking_problem` tells whether that will fail on a given file system.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py

LOCKING_ENV = "HDF5_USE_FILE_LOCKING"


def open_h5(path: str | os.PathLike, mode: str = "r") -> h5py.File:
    """`h5py.File(path, mode)` without HDF5 file locking (see the module docstring)."""
    return h5py.File(path, mode, locking=False)


def fsync_dir(directory: Path) -> None:
    """Makes a rename in `directory` durable; a no-op where directories cannot be fsynced."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_path(path: Path) -> Path:
    """`.<name>.tmp<pid>` next to `path`: where a new version of `path` is written."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


# Growth step of the in-memory HDF5 image: few reallocations for files of any size.
_CORE_BLOCK_SIZE = 1 << 22


@contextlib.contextmanager
def replace_h5(
    path: str | os.PathLike, *, edit: bool = False, on_written: Callable[[Path], None] | None = None
) -> Iterator[h5py.File]:
    """Yields an h5py.File held in memory: an empty file, or with `edit=True` a copy of the
    current `path` (empty if there is none). When the block ends without an exception the
    finished image is written to the temporary file `.<name>.tmp<pid>` next to `path` in one
    write, fsynced, renamed over `path` (atomically) and the directory fsynced
    (`write_atomically`); on any exception the temporary file is removed and `path` is
    untouched. This is hpcwf's one way to write an HDF5 file (checkpoints, parameter files,
    energies.h5, the HF cache).

    HDF5 writing straight to disk meets ENOSPC in the middle of its metadata flush, raises from
    destructors and can crash the process; building the image in memory leaves the disk to one
    plain write whose failure is an ordinary OSError naming `path` (ENOSPC, EDQUOT, EFBIG).
    `on_written`: see `write_atomically` (tests only).
    """
    path = Path(path)
    if edit and path.exists():
        # A plain read of the bytes: a reader's HDF5 lock does not matter.
        buffer = io.BytesIO(path.read_bytes())
        with h5py.File(buffer, "r+", locking=False) as f:
            yield f
        image = buffer.getvalue()
    else:
        with h5py.File(
            f"{path.name}-in-memory", "w", driver="core", backing_store=False, block_size=_CORE_BLOCK_SIZE
        ) as f:
            yield f
            f.flush()
            image = f.id.get_file_image()
    write_atomically(path, image, on_written)


def write_atomically(
    path: str | os.PathLike, data: bytes, on_written: Callable[[Path], None] | None = None
) -> None:
    """Writes `data` as the new version of `path` the way every hpcwf file is written: to
    `.<name>.tmp<pid>` next to it, fsynced, renamed over `path` (atomically) and the directory
    fsynced, so that a reader or a crash sees the old or the new version, complete. The parent
    directory is created if needed. On any exception the temporary file is removed and `path`
    is untouched; an OSError (a full disk, a quota) names `path` when the OS named no file.
    `on_written(tmp)` (tests only) is called once the temporary file holds every byte, before
    fsync and rename: the moment at which a kill leaves a partial file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            if on_written is not None:
                on_written(tmp)
            # fsync pushes the bytes to disk before the rename makes the file visible.
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and err.filename is None:  # a failed write names no file
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    fsync_dir(path.parent)


def forced_locking_problem(directory: str | os.PathLike) -> str | None:
    """Why HDF5 will fail to open files in `directory`, or None.

    Only `HDF5_USE_FILE_LOCKING` set to TRUE, 1 or BEST_EFFORT makes HDF5 lock despite
    `locking=False`; then this tries the lock HDF5 takes (a shared flock) on the nearest
    existing directory of `directory` and returns a one-line reason with the remedy when the
    file system refuses it (BEST_EFFORT tolerates only "not implemented", ENOSYS)."""
    value = os.environ.get(LOCKING_ENV)
    if value is None or value.strip().upper() in ("FALSE", "0"):
        return None
    existing = Path(directory).absolute()
    while not existing.is_dir() and existing != existing.parent:
        existing = existing.parent
    try:
        fd = os.open(existing, os.O_RDONLY)
    except OSError:
        return None  # nothing to probe; HDF5 will report its own error
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError as err:
        if err.errno == errno.ENOSYS and value.strip().upper() == "BEST_EFFORT":
            return None
        if err.errno in (errno.EWOULDBLOCK, errno.EINTR):
            return None  # locks work; someone holds an exclusive one on the directory
        return (
            f"{LOCKING_ENV}={value} makes HDF5 lock every file it opens, but the file system of "
            f"{existing} has no locks ({os.strerror(err.errno or 0)}); unset {LOCKING_ENV} (or "
            f"set it to FALSE): hpcwf needs no locks, it replaces its files atomically"
        )
    finally:
        os.close(fd)
    return None
