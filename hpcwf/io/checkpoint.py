"""Checkpoints in HDF5, without pickle: parameter files and full training checkpoints.

Parameter files (`save_params`, format "hpcwf-params"):

    /params  pytree group (see `write_pytree`; version 1 files, still read, had one dataset
             per leaf at its flax path /params/<module>/.../<leaf>)
    /geometries  JSON list of the geometries the parameters were trained on (Molecule.to_dict()),
             UTF-8 bytes, as in full checkpoints; absent in files of older hpcwf versions
    /        attrs: format ("hpcwf-params"), version (2), model_size, orbitals, n_determinants, ...

Full training checkpoints (`save_checkpoint`, format "hpcwf-checkpoint"), everything needed to
continue a run bit for bit:

    /params                       pytree group (see `write_pytree`)
    /optimizer                    pytree group; absent when the optimizer state is None
    /geometry_states/<index>      one pytree group per geometry, keyed by global geometry index
    /scheduler/<name>             numpy arrays (GeometryScheduler.state_dict())
    /config_toml                  resolved job config, UTF-8 bytes (fixed-length string dataset)
    /geometries                   JSON list of geometry dicts (Molecule.to_dict()), UTF-8 bytes
    /        attrs: format, version (1), step, created (ISO 8601), hpcwf_version,
                    package_versions (JSON {package: version}), metadata_keys (JSON list),
                    the metadata attrs themselves (model_size, orbitals, n_determinants, basis,
                    elements, ...), checksum (sha256 hex, see `_checksum`)

A pytree group holds datasets "000000", "000001", ... (leaf i of
`jax.tree_util.tree_flatten_with_path`, zero-padded to `_index_width(n_leaves)` digits), each with
attrs `path` (jax.tree_util.keystr of its key path) and `keys` (JSON list of the key entries, so a
dict-of-dicts can be rebuilt without a template); the group has attr `n_leaves`.

Both kinds are built in memory and written atomically by `hpcwf.io.h5files.replace_h5` (one
write of the finished file to a temporary file `.<name>.tmp<pid>` in the same directory, fsync,
os.replace, fsync of the directory) so a crash never leaves a half-written file under the final
name, a file under its final name is never modified (a reader: another job's `[init]
checkpoint`, `hpcwf inspect`, h5py with default locking, cannot disturb the writer), and a full
disk or quota is one clean OSError (ENOSPC, EDQUOT, EFBIG) from that write, after which the
temporary file is removed and every earlier file is untouched. A temporary file left by a
killed process is removed by `remove_stale_temporaries`. All files are opened without HDF5 file
locking (`hpcwf.io.h5files`), so lock-less file systems work. Checkpoint directories hold
`ckpt_<step:09d>.h5` files (`latest_valid_checkpoint` here; naming, listing, retention and
setting an abandoned branch aside by name alone, without jax: `hpcwf.io.checkpoint_files`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import importlib.metadata
import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import jax
import numpy as np

import hpcwf
from hpcwf.errors import InputError
from hpcwf.io.checkpoint_files import (  # noqa: F401  (re-exported: the checkpoint API)
    apply_retention,
    checkpoint_path,
    list_checkpoints,
    set_aside_newer,
)
from hpcwf.io.h5files import open_h5, replace_h5

FORMAT_PARAMS = "hpcwf-params"
FORMAT_CHECKPOINT = "hpcwf-checkpoint"
CHECKPOINT_VERSION = 1
# Parameter files: version 1 had one HDF5 group per dict level (still read), version 2 has the
# pytree layout of full checkpoints.
PARAMS_VERSION = 2

# Packages whose versions decide whether a checkpoint's optimizer state / numerics can be reused.
_VERSIONED_PACKAGES = ("jax", "jaxlib", "flax", "kfac_jax", "optax", "numpy", "h5py", "pyscf")
# Root attrs written by save_checkpoint itself; metadata may not overwrite them.
_RESERVED_ATTRS = frozenset(
    {
        "format",
        "version",
        "step",
        "created",
        "hpcwf_version",
        "package_versions",
        "metadata_keys",
        "checksum",
    }
)


class CheckpointError(InputError):
    """Unreadable or incompatible checkpoint; str() names the file and the problem."""


# ---------------------------------------------------------------------------------------------
# Parameter files.


def _read_tree(group: h5py.Group) -> dict:
    """Parameters of a version-1 parameter file (one HDF5 group per dict level), written by
    hpcwf before parameter files used the pytree layout of `write_pytree`; read only."""
    return {
        key: _read_tree(item) if isinstance(item, h5py.Group) else np.asarray(item[()])
        for key, item in group.items()
    }


_TMP_NAME = re.compile(r"^\.(ckpt_\d+|params)\.h5\.tmp\d+$")


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Deletes the temporary files (`.ckpt_<step>.h5.tmp<pid>`, `.params.h5.tmp<pid>`) that a
    process killed while writing left in `directory`; returns them. Call it only where no other
    process writes checkpoints into `directory` (rank 0 of the run that owns it, at start)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for p in directory.iterdir():
        if _TMP_NAME.match(p.name) and p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            removed.append(p)
    return sorted(removed)


def save_params(path: str | Path, params, metadata: dict, geometries: list[dict] | None = None) -> None:
    """Writes `params` (nested dict of arrays, pytree layout of `write_pytree`, version 2),
    scalar/string `metadata` and, if given, the training set `geometries` (JSON-serializable
    dicts, Molecule.to_dict()) atomically."""
    with replace_h5(Path(path)) as f:
        f.attrs["format"] = FORMAT_PARAMS
        f.attrs["version"] = PARAMS_VERSION
        for key, value in metadata.items():
            f.attrs[key] = value
        write_pytree(f.create_group("params"), params)
        if geometries is not None:
            _string_dataset(f, "geometries", json.dumps(list(geometries), default=_json_default))


def read_training_set(path: str | Path) -> list[dict] | None:
    """The geometries (Molecule.to_dict() dicts) that the parameters in `path` were trained on:
    the run's dataset, stored in full checkpoints and in parameter files of this hpcwf
    version; None when the file stores none (a parameter file of an older hpcwf). Only what
    the file itself tells: a run that started from another checkpoint also learnt that one's
    training set, which is not followed here. Raises CheckpointError if unreadable."""
    path = Path(path)
    try:
        with open_h5(path) as f:
            if "geometries" not in f:
                return None
            data = json.loads(_read_string(f["geometries"]))
    except (OSError, KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({err})") from err
    return [g for g in data if isinstance(g, dict)]


def checkpoint_step(path: str | Path) -> int:
    """The optimization step stored in a full checkpoint (its `step` attr); CheckpointError if
    the file has none."""
    path = Path(path)
    try:
        with open_h5(path) as f:
            return int(f.attrs["step"])
    except (OSError, KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read the checkpoint's step ({err})") from err


def load_params(path: str | Path, *, verify: bool = True) -> tuple[dict, dict]:
    """(params as nested dict of numpy arrays, root attrs of the file). Raises CheckpointError.

    Accepts a parameter file (`save_params`) or a full checkpoint (`save_checkpoint`); for the
    latter the params pytree is rebuilt as nested dicts from its stored key paths, and the
    checksum is verified first unless `verify=False` (it reads the whole file once).
    """
    path = Path(path)
    if verify and _file_format(path) == FORMAT_CHECKPOINT:
        verify_checkpoint(path)
    try:
        with open_h5(path) as f:
            if "params" not in f:
                raise CheckpointError(f"{path}: no 'params' group (not an hpcwf checkpoint)")
            attrs = dict(f.attrs)
            if attrs.get("format") == FORMAT_PARAMS and int(attrs.get("version", 1)) < 2:
                return _read_tree(f["params"]), attrs  # written by an earlier hpcwf
            return _read_pytree_as_dict(f["params"], path), attrs
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({err})") from err


def _file_format(path: Path) -> str | None:
    try:
        with open_h5(path) as f:
            fmt = f.attrs.get("format")
    except (OSError, KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({err})") from err
    return str(fmt) if fmt is not None else None


# ---------------------------------------------------------------------------------------------
# Pytrees.


def _index_width(n_leaves: int) -> int:
    # Fixed from n_leaves alone so that the reader finds the names without listing the group,
    # and lexicographic order of names equals leaf order (h5dump, h5ls).
    return max(6, len(str(max(n_leaves - 1, 0))))


def _key_entry(key) -> list:
    """JSON form [kind, value] of one key-path entry."""
    if isinstance(key, jax.tree_util.DictKey):
        value = key.key
        return [
            "dict",
            value if isinstance(value, (str, int)) and not isinstance(value, bool) else str(value),
        ]
    if isinstance(key, jax.tree_util.GetAttrKey):
        return ["attr", key.name]
    if isinstance(key, jax.tree_util.SequenceKey):
        return ["seq", key.idx]
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return ["flat", key.key]
    return ["other", str(key)]


def _is_prng_key(leaf) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def write_pytree(group: h5py.Group, tree) -> None:
    """Stores every leaf of `tree` (any pytree: dicts, flax struct dataclasses, NamedTuples,
    kfac-jax / optax states) in `group`.

    Layout: dataset `f"{i:0{w}d}"` for leaf i of `jax.tree_util.tree_flatten_with_path(tree)`
    (w = `_index_width(n_leaves)`), with attrs `path` (keystr of its key path) and `keys`
    (JSON [[kind, value], ...]); group attr `n_leaves`. Leaves keep their dtype and shape
    (0-d included); Python scalars become 0-d arrays (int64 / float64 / bool). Typed PRNG key
    arrays are stored as their uint32 key data plus attr `prng_impl`. None is not a leaf in
    jax, so it needs no storage: the template restores it.
    """
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    width = _index_width(len(leaves))
    group.attrs["n_leaves"] = len(leaves)
    for i, (key_path, leaf) in enumerate(leaves):
        impl = None
        if _is_prng_key(leaf):
            impl = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        # device_get copies a (possibly sharded) jax array to host memory in one piece.
        data = np.asarray(jax.device_get(leaf))
        ds = group.create_dataset(f"{i:0{width}d}", data=data)
        ds.attrs["path"] = jax.tree_util.keystr(key_path)
        ds.attrs["keys"] = json.dumps([_key_entry(k) for k in key_path])
        if impl is not None:
            ds.attrs["prng_impl"] = impl


def _template_shape(leaf) -> tuple[int, ...]:
    if _is_prng_key(leaf):
        return tuple(leaf.shape)  # key data has a trailing implementation axis; compare batch shape
    shape = getattr(leaf, "shape", None)  # also jax.ShapeDtypeStruct templates
    return tuple(shape) if shape is not None else np.shape(leaf)


def read_pytree(group: h5py.Group, template) -> Any:
    """The pytree stored by `write_pytree` in `group`, with the structure of `template`.

    `template` may hold arrays, jax.ShapeDtypeStruct or Python scalars as leaves; only its
    structure, key paths and leaf shapes are used. Returned leaves are numpy arrays with the
    stored dtype (typed PRNG keys come back as jax key arrays). Raises CheckpointError if the
    leaf count, a key path or a shape differs (the message names the first mismatching path).
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    where = f"{group.file.filename}:{group.name}"
    n_stored = int(group.attrs.get("n_leaves", -1))
    if n_stored != len(leaves):
        # Name the first path that differs, which usually explains the count mismatch.
        expected_paths = [jax.tree_util.keystr(p) for p, _ in leaves]
        pairs = itertools.zip_longest(_stored_paths(group, n_stored), expected_paths, fillvalue=None)
        first = next(((i, a, b) for i, (a, b) in enumerate(pairs) if a != b), None)
        detail = ""
        if first is not None:
            detail = f"; first difference at leaf {first[0]}: stored {first[1]!r}, template {first[2]!r}"
        raise CheckpointError(f"{where}: {n_stored} leaves stored but the template has {len(leaves)}{detail}")
    width = _index_width(n_stored)
    out = []
    for i, (key_path, leaf) in enumerate(leaves):
        name = f"{i:0{width}d}"
        if name not in group:
            raise CheckpointError(f"{where}: leaf dataset {name} is missing")
        ds = group[name]
        expected_path = jax.tree_util.keystr(key_path)
        stored_path = str(ds.attrs.get("path", ""))
        if stored_path != expected_path:
            raise CheckpointError(
                f"{where}: leaf {i} is {stored_path!r} in the file but {expected_path!r} in the template"
            )
        value = np.asarray(ds[()])
        impl = ds.attrs.get("prng_impl")
        stored_shape = value.shape
        if impl is not None:
            stored_shape = value.shape[: value.ndim - len(_key_data_shape(str(impl)))]
        if tuple(stored_shape) != _template_shape(leaf):
            raise CheckpointError(
                f"{where}: {expected_path} has shape {tuple(stored_shape)} in the file, "
                f"template needs {_template_shape(leaf)}"
            )
        if impl is not None:
            value = jax.random.wrap_key_data(value, impl=str(impl))
        out.append(value)
    return jax.tree_util.tree_unflatten(treedef, out)


def _key_data_shape(impl: str) -> tuple[int, ...]:
    return tuple(jax.random.key_data(jax.random.key(0, impl=impl)).shape)


def _stored_paths(group: h5py.Group, n_stored: int) -> list[str]:
    if n_stored < 0:
        return []
    width = _index_width(n_stored)
    names = (f"{i:0{width}d}" for i in range(n_stored))
    return [str(group[n].attrs.get("path", "")) if n in group else "" for n in names]


def _read_pytree_as_dict(group: h5py.Group, path: Path) -> dict:
    """Nested dicts rebuilt from each leaf's stored `keys` (every entry becomes a dict key);
    used where no template exists, e.g. `load_params` on a full checkpoint."""
    out: dict = {}
    n = int(group.attrs.get("n_leaves", 0))
    width = _index_width(n)
    for i in range(n):
        ds = group[f"{i:0{width}d}"]
        keys = [value for _, value in json.loads(ds.attrs["keys"])]
        if not keys:
            raise CheckpointError(f"{path}:{group.name} holds a single leaf, not a dict of parameters")
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise CheckpointError(f"{path}:{group.name}: {ds.attrs['path']} clashes with a leaf")
        node[keys[-1]] = np.asarray(ds[()])
    return out


# ---------------------------------------------------------------------------------------------
# Full checkpoints.


@dataclasses.dataclass
class Checkpoint:
    """Contents of a full checkpoint (see the module docstring for the file layout).

    Attributes:
        step: optimization steps completed when it was written.
        params: model parameters, structure of templates["params"], numpy leaves.
        optimizer_state: optimizer state (structure of templates["optimizer"]) or None.
        geometry_states: {global geometry index: GeometryState-like pytree}.
        scheduler_state: {name: array} for GeometryScheduler.load_state_dict.
        config_toml: resolved configuration of the run that wrote it.
        geometries: geometry dicts (Molecule.to_dict()) in global index order.
        metadata: the metadata passed to save_checkpoint (model_size, orbitals, ...).
        versions: {"hpcwf": ..., package: version} of the writing environment.
        created: ISO 8601 time of writing.
    """

    step: int
    params: Any
    optimizer_state: Any
    geometry_states: dict[int, Any]
    scheduler_state: dict[str, np.ndarray]
    config_toml: str
    geometries: list[dict]
    metadata: dict
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    created: str = ""


def package_versions() -> dict[str, str]:
    """{package: installed version or "unknown"} for the packages that shape numerics."""
    out = {}
    for name in _VERSIONED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            try:
                out[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                out[name] = "unknown"
    return out


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _string_dataset(group: h5py.Group, name: str, text: str) -> None:
    # Fixed-length bytes rather than an h5py variable-length string: raw bytes are then defined
    # for the checksum, and h5dump still shows the text. An empty string is stored as one NUL
    # (HDF5 has no zero-length fixed strings), which reads back as b"".
    raw = text.encode("utf-8")
    group.create_dataset(name, data=np.array(raw, dtype=f"S{max(len(raw), 1)}"))


def _read_string(ds: h5py.Dataset) -> str:
    value = ds[()]
    if isinstance(value, np.ndarray):
        value = value.item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _attr_value(value):
    """h5py attr -> plain Python (numpy scalars to int/float/bool, bytes to str)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def _checksum(f: h5py.File, step: int) -> str:
    """sha256 hex over all datasets of `f` in sorted path order (per dataset: path, dtype.str,
    shape, byte count, raw bytes, separated so no two layouts hash the same input) and the step.

    Attributes other than the step are not covered: they are metadata a reader validates by
    value (format, metadata keys), and the key paths of pytree leaves are checked against the
    template on load.
    """
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    h = hashlib.sha256()
    for name in sorted(names):
        data = np.ascontiguousarray(f[name][()])
        raw = data.tobytes()
        h.update(f"{name}\0{data.dtype.str}\0{data.shape}\0{len(raw)}\0".encode())
        h.update(raw)
    h.update(f"step\0{int(step)}".encode())
    return h.hexdigest()


def save_checkpoint(
    path: str | Path,
    *,
    step: int,
    params,
    optimizer_state,
    geometry_states: dict[int, Any],
    scheduler_state: dict[str, np.ndarray],
    config_toml: str,
    geometries: list[dict],
    metadata: dict,
    on_written: Callable[[Path], None] | None = None,
) -> None:
    """Writes a full training checkpoint atomically (layout in the module docstring).

    Args:
        path: final file name, normally `checkpoint_path(dir, step)`.
        step: optimization steps completed.
        params: model parameters (any pytree of arrays).
        optimizer_state: optimizer state pytree, or None (no /optimizer group).
        geometry_states: {global geometry index: pytree} (e.g. training.vmc.GeometryState).
        scheduler_state: GeometryScheduler.state_dict(), {name: array}.
        config_toml: resolved configuration text.
        geometries: JSON-serializable geometry dicts (numpy values are converted).
        metadata: scalar/string attrs (model_size, orbitals, n_determinants, basis, elements...);
            names in `_RESERVED_ATTRS` are refused.
        on_written: fault-injection hook for tests (see `hpcwf.io.h5files.replace_h5`).

    Raises OSError when the file cannot be written (disk full, quota, permissions); then no
    file is left behind and existing checkpoints are untouched.
    """
    clash = _RESERVED_ATTRS.intersection(metadata)
    if clash:
        raise ValueError(f"metadata keys {sorted(clash)} are reserved checkpoint attributes")
    path = Path(path)
    with replace_h5(path, on_written=on_written) as f:
        f.attrs["format"] = FORMAT_CHECKPOINT
        f.attrs["version"] = CHECKPOINT_VERSION
        f.attrs["step"] = int(step)
        f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        f.attrs["hpcwf_version"] = hpcwf.__version__
        f.attrs["package_versions"] = json.dumps(package_versions())
        f.attrs["metadata_keys"] = json.dumps(list(metadata))
        for key, value in metadata.items():
            f.attrs[key] = value
        write_pytree(f.create_group("params"), params)
        if optimizer_state is not None:
            write_pytree(f.create_group("optimizer"), optimizer_state)
        states = f.create_group("geometry_states")
        for index, state in geometry_states.items():
            write_pytree(states.create_group(str(int(index))), state)
        sched = f.create_group("scheduler")
        for name, value in scheduler_state.items():
            sched.create_dataset(name, data=np.asarray(value))
        _string_dataset(f, "config_toml", config_toml)
        _string_dataset(f, "geometries", json.dumps(list(geometries), default=_json_default))
        # Read back from the open file so the checksum is exactly what verify_checkpoint sees.
        f.attrs["checksum"] = _checksum(f, int(step))


def _verify_reason(path: Path) -> str | None:
    """None if `path` is a full checkpoint whose checksum matches, else the reason (no path)."""
    if not path.is_file():
        return "file not found"
    try:
        with open_h5(path) as f:
            fmt = f.attrs.get("format")
            if fmt != FORMAT_CHECKPOINT:
                return f"not a full hpcwf checkpoint (format {fmt!r})"
            if "checksum" not in f.attrs or "step" not in f.attrs:
                return "no checksum (incomplete file)"
            stored = str(f.attrs["checksum"])
            actual = _checksum(f, int(f.attrs["step"]))
    except Exception as err:
        # h5py raises OSError for truncated files and unreadable chunks, but a damaged file can
        # surface as almost any error; a resume must skip it rather than crash.
        return f"unreadable or truncated ({err})"
    if stored != actual:
        return "checksum mismatch (file corrupted)"
    return None


def checkpoint_has_optimizer_state(path: str | Path) -> bool:
    """True if the full checkpoint at `path` stores an optimizer state."""
    with open_h5(path) as f:
        return "optimizer" in f


def verify_checkpoint(path: str | Path) -> None:
    """Recomputes the checksum of a full checkpoint; CheckpointError if it differs or the file
    is missing, unreadable, truncated or not a full checkpoint."""
    path = Path(path)
    reason = _verify_reason(path)
    if reason is not None:
        raise CheckpointError(f"{path}: {reason}")


def _geometry_template(source, index: int, path: Path):
    if callable(source):
        return source(index)
    if index not in source:
        raise CheckpointError(f"{path}: no template for geometry state {index}")
    return source[index]


def load_checkpoint(path: str | Path, templates: dict) -> Checkpoint:
    """Verifies the checksum, then reads a full checkpoint into the structures of `templates`.

    `templates` keys:
        "params": pytree template of the parameters, or None for nested dicts rebuilt from the
            stored key paths (as `load_params` returns).
        "optimizer" (optional): optimizer state template; None or absent -> not read
            (optimizer_state None). A template for a file without /optimizer is an error.
        "geometry_state" (optional): callable `index -> template` (None: skip that geometry)
            or dict {index: template}; None or absent -> geometry_states is {}.
    Raises CheckpointError (file named) on any mismatch.
    """
    path = Path(path)
    verify_checkpoint(path)
    try:
        with open_h5(path) as f:
            params_template = templates.get("params")
            if params_template is None:
                params = _read_pytree_as_dict(f["params"], path)
            else:
                params = read_pytree(f["params"], params_template)
            opt_template = templates.get("optimizer")
            optimizer_state = None
            if opt_template is not None:
                if "optimizer" not in f:
                    raise CheckpointError(f"{path}: no optimizer state stored")
                optimizer_state = read_pytree(f["optimizer"], opt_template)
            geometry_states = {}
            source = templates.get("geometry_state")
            if source is not None:
                for name in sorted(f["geometry_states"], key=int):
                    index = int(name)
                    template = _geometry_template(source, index, path)
                    if template is not None:  # None: not wanted here (another rank's geometry)
                        geometry_states[index] = read_pytree(f["geometry_states"][name], template)
            scheduler_state = {name: np.asarray(ds[()]) for name, ds in f["scheduler"].items()}
            attrs = f.attrs
            metadata = {k: _attr_value(attrs[k]) for k in json.loads(attrs["metadata_keys"])}
            versions = {"hpcwf": str(attrs["hpcwf_version"]), **json.loads(attrs["package_versions"])}
            return Checkpoint(
                step=int(attrs["step"]),
                params=params,
                optimizer_state=optimizer_state,
                geometry_states=geometry_states,
                scheduler_state=scheduler_state,
                config_toml=_read_string(f["config_toml"]),
                geometries=json.loads(_read_string(f["geometries"])),
                metadata=metadata,
                versions=versions,
                created=str(attrs["created"]),
            )
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({err})") from err


def read_checkpoint_config(path: str | Path) -> str:
    """The resolved job configuration (TOML text) stored in a full checkpoint, read without
    templates or checksum verification (call `verify_checkpoint` first where it matters).
    Raises CheckpointError if the file cannot be read or holds none."""
    path = Path(path)
    try:
        with open_h5(path) as f:
            if "config_toml" not in f:
                raise CheckpointError(f"{path}: no config_toml (not a full hpcwf checkpoint)")
            return _read_string(f["config_toml"])
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({err})") from err


def _group_nbytes(obj) -> int:
    if isinstance(obj, h5py.Dataset):
        return int(obj.id.get_storage_size())
    total = 0

    def add(_, item):
        nonlocal total
        if isinstance(item, h5py.Dataset):
            total += int(item.id.get_storage_size())

    obj.visititems(add)
    return total


def read_checkpoint_summary(path: str | Path) -> dict:
    """Summary for `hpcwf inspect`, without templates.

    Keys: path, format, step (None for parameter files), n_geometries, names (geometry names),
    metadata, versions ({"hpcwf": ..., package: ...}), created, sizes ({top-level group or
    dataset: stored bytes}), file_size, checksum_ok (bool; False for parameter files, which
    have none), checksum_error (reason or None). Raises CheckpointError if the file cannot be
    opened at all.
    """
    path = Path(path)
    try:
        with open_h5(path) as f:
            attrs = {k: _attr_value(v) for k, v in f.attrs.items()}
            fmt = attrs.get("format")
            sizes = {name: _group_nbytes(item) for name, item in f.items()}
            geometries = json.loads(_read_string(f["geometries"])) if "geometries" in f else []
            n_geometries = len(f["geometry_states"]) if "geometry_states" in f else 0
    except (OSError, KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({err})") from err
    if fmt == FORMAT_CHECKPOINT:
        metadata = {k: attrs[k] for k in json.loads(attrs.get("metadata_keys", "[]")) if k in attrs}
        versions = {
            "hpcwf": attrs.get("hpcwf_version", "unknown"),
            **json.loads(attrs.get("package_versions", "{}")),
        }
        reason = _verify_reason(path)
    else:
        metadata = {k: v for k, v in attrs.items() if k not in ("format", "version")}
        versions = {}
        reason = "parameter file (no checksum)"
    return {
        "path": str(path),
        "format": fmt,
        "step": attrs.get("step"),
        "n_geometries": max(n_geometries, len(geometries)),
        "names": [g.get("name", "") for g in geometries if isinstance(g, dict)],
        "metadata": metadata,
        "versions": versions,
        "created": attrs.get("created"),
        "sizes": sizes,
        "file_size": path.stat().st_size,
        "checksum_ok": reason is None,
        "checksum_error": reason,
    }


# ---------------------------------------------------------------------------------------------
# Checkpoint directories.


def latest_valid_checkpoint(directory: str | Path, log: Callable[[str], Any] = print) -> Path | None:
    """The newest checkpoint in `directory` whose checksum verifies, or None.

    Each newer one that fails is reported as
    `log("warning: <path>: <reason>; using previous checkpoint")` (or "; no earlier
    checkpoint" when it was the oldest) and skipped.
    """
    candidates = list_checkpoints(directory)
    for i in range(len(candidates) - 1, -1, -1):
        path = candidates[i]
        reason = _verify_reason(path)
        if reason is None:
            return path
        tail = "using previous checkpoint" if i > 0 else "no earlier checkpoint"
        log(f"warning: {path}: {reason}; {tail}")
    return None


def resolve_init_checkpoint(path: str | Path, log: Callable[[str], Any] = print) -> Path:
    """The checkpoint an `[init] checkpoint` entry names: a file as it is, or for a run
    directory (or its `checkpoints/` directory) the newest valid checkpoint in it.
    Raises CheckpointError when a directory holds none."""
    path = Path(path)
    if path.is_file():
        return path
    directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = latest_valid_checkpoint(directory, log)
    if found is None:
        raise CheckpointError(f"{path}: no valid checkpoint in {directory}")
    return found
