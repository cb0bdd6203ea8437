"""Parameter files in HDF5 (no pickle): one dataset per leaf at its flax path.

    /params/<module>/<submodule>/.../<leaf>   arrays
    /        attrs: format ("hpcwf-params"), version, model_size, orbitals, n_determinants, ...

Written atomically (temporary file in the same directory, fsync, rename) so a crash never
leaves a half-written file under the final name.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np


class CheckpointError(Exception):
    """Unreadable or incompatible checkpoint; str() names the file and the problem."""


def _write_tree(group: h5py.Group, tree) -> None:
    for key, value in tree.items():
        if isinstance(value, dict) or hasattr(value, "items"):
            _write_tree(group.create_group(str(key)), value)
        else:
            group.create_dataset(str(key), data=np.asarray(value))


def _read_tree(group: h5py.Group) -> dict:
    return {
        key: _read_tree(item) if isinstance(item, h5py.Group) else np.asarray(item[()])
        for key, item in group.items()
    }


def save_params(path: str | Path, params, metadata: dict) -> None:
    """Writes `params` (nested dict of arrays) and scalar/string `metadata` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = "hpcwf-params"
        f.attrs["version"] = 1
        for key, value in metadata.items():
            f.attrs[key] = value
        _write_tree(f.create_group("params"), params)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_params(path: str | Path) -> tuple[dict, dict]:
    """(params as nested dict of numpy arrays, metadata attrs). Raises CheckpointError."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if "params" not in f:
                raise CheckpointError(f"{path}: no 'params' group (not an hpcwf checkpoint)")
            return _read_tree(f["params"]), dict(f.attrs)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({err})") from err
