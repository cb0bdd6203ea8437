"""Checkpoint files: pytree round trips, full checkpoints, checksums, directories, retention."""

from __future__ import annotations

from typing import NamedTuple

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from hpcwf.io.checkpoint import (
    CheckpointError,
    apply_retention,
    checkpoint_path,
    latest_valid_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_params,
    read_checkpoint_summary,
    read_pytree,
    resolve_init_checkpoint,
    save_checkpoint,
    save_params,
    verify_checkpoint,
    write_pytree,
)
from hpcwf.mcmc import WalkerState


@struct.dataclass
class WalkersWithoutAge:
    electrons: jnp.ndarray
    log_prob: jnp.ndarray
    step_size: jnp.ndarray


class OptState(NamedTuple):
    count: jnp.ndarray
    momentum: dict
    nothing: None


def _walkers(seed: int = 0) -> WalkerState:
    rng = np.random.default_rng(seed)
    return WalkerState(
        electrons=jnp.asarray(rng.normal(size=(4, 3, 3)), jnp.float32),
        log_prob=jnp.asarray(rng.normal(size=4), jnp.float32),
        age=jnp.arange(4, dtype=jnp.int32),
        step_size=jnp.asarray(0.3, jnp.float32),
    )


def _params() -> dict:
    rng = np.random.default_rng(1)
    return {
        "dense": {"kernel": rng.normal(size=(3, 2)).astype(np.float32), "bias": np.zeros(2, np.float32)},
        "envelope": {"sigma": np.float32(1.5) * np.ones((2,), np.float32)},
    }


def _assert_bitwise(a, b) -> None:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def _roundtrip(tmp_path, tree, template=None):
    with h5py.File(tmp_path / "t.h5", "w") as f:
        write_pytree(f.create_group("t"), tree)
    with h5py.File(tmp_path / "t.h5", "r") as f:
        return read_pytree(f["t"], tree if template is None else template)


def test_pytree_roundtrip_dtypes_bitwise(tmp_path):
    tree = {
        "f32": np.array([1.0, np.nan, -0.0, 1e-38], np.float32),
        "f64": np.float64(np.pi),
        "i32": np.arange(6, dtype=np.int32).reshape(2, 3),
        "key": np.asarray(jax.random.PRNGKey(7)),  # uint32 [2]
        "flag": np.array([True, False]),
        "nested": {"scalar": np.float32(2.5), "py_int": 3, "py_float": 0.25, "none": None},
        "empty": np.zeros((0, 3), np.float32),
    }
    out = _roundtrip(tmp_path, tree)
    assert out["key"].dtype == np.uint32 and out["flag"].dtype == np.bool_
    assert out["nested"]["none"] is None and out["nested"]["py_int"] == 3
    _assert_bitwise(tree, out)


def test_pytree_roundtrip_struct_dataclass_and_namedtuple(tmp_path):
    walkers = _walkers()
    out = _roundtrip(tmp_path, walkers)
    assert isinstance(out, WalkerState) and out.age.dtype == np.int32
    _assert_bitwise(walkers, out)

    state = OptState(count=jnp.asarray(5, jnp.int32), momentum={"w": jnp.ones((2, 2))}, nothing=None)
    out = _roundtrip(tmp_path, state)
    assert isinstance(out, OptState) and out.nothing is None
    _assert_bitwise(state, out)

    # Templates may be abstract (jax.eval_shape) and typed PRNG keys survive.
    typed = {"key": jax.random.key(3), "x": jnp.ones(2)}
    out = _roundtrip(tmp_path, typed, jax.eval_shape(lambda: typed))
    assert jnp.array_equal(jax.random.key_data(out["key"]), jax.random.key_data(typed["key"]))


def test_pytree_mismatch_names_path(tmp_path):
    walkers = _walkers()
    with h5py.File(tmp_path / "t.h5", "w") as f:
        write_pytree(f.create_group("t"), walkers)
    bad_shape = walkers.replace(log_prob=jnp.zeros(5, jnp.float32))
    with h5py.File(tmp_path / "t.h5", "r") as f:
        with pytest.raises(CheckpointError, match=r"\.log_prob has shape \(4,\)"):
            read_pytree(f["t"], bad_shape)
        with pytest.raises(CheckpointError, match=r"4 leaves stored but the template has 3.*leaf 2.*\.age"):
            read_pytree(f["t"], WalkersWithoutAge(walkers.electrons, walkers.log_prob, walkers.step_size))
        renamed = {"a": 0, "b": 0, "c": 0, "d": 0}
        with pytest.raises(CheckpointError, match=r"\.electrons.*\['a'\]"):
            read_pytree(f["t"], renamed)


def _save(path, step: int, **overrides) -> dict:
    kwargs = dict(
        step=step,
        params=_params(),
        optimizer_state=OptState(jnp.asarray(step, jnp.int32), {"w": jnp.full((3,), 0.5)}, None),
        geometry_states={0: _walkers(0), 7: _walkers(7)},
        scheduler_state={
            "last_step": np.array([3, -1], np.int64),
            "std": np.array([0.1, np.nan]),
            "n_updates": np.array([1, 0], np.int64),
        },
        config_toml='[model]\nsize = "small"  # ünïcode\n',
        geometries=[{"name": "H2", "atoms": [["H", 0.0, 0.0, np.float64(0.7)]]}, {"name": "LiH"}],
        metadata={"model_size": "small", "orbitals": "tao", "n_determinants": 4, "elements": "H,Li"},
    )
    kwargs.update(overrides)
    save_checkpoint(path, **kwargs)
    return kwargs


def _templates(kwargs: dict) -> dict:
    return {
        "params": kwargs["params"],
        "optimizer": kwargs["optimizer_state"],
        "geometry_state": lambda index: _walkers(),
    }


def test_full_roundtrip_and_summary(tmp_path):
    path = checkpoint_path(tmp_path, 120)
    assert path.name == "ckpt_000000120.h5"
    kwargs = _save(path, 120)
    verify_checkpoint(path)
    ckpt = load_checkpoint(path, _templates(kwargs))
    assert ckpt.step == 120
    _assert_bitwise(kwargs["params"], ckpt.params)
    _assert_bitwise(kwargs["optimizer_state"], ckpt.optimizer_state)
    assert sorted(ckpt.geometry_states) == [0, 7]
    for index, state in kwargs["geometry_states"].items():
        _assert_bitwise(state, ckpt.geometry_states[index])
    _assert_bitwise(kwargs["scheduler_state"], ckpt.scheduler_state)
    assert ckpt.config_toml == kwargs["config_toml"]
    assert ckpt.geometries[0]["atoms"][0][3] == 0.7 and ckpt.geometries[1] == {"name": "LiH"}
    assert ckpt.metadata == kwargs["metadata"]
    assert set(ckpt.versions) >= {"hpcwf", "jax", "numpy", "pyscf"}

    # Dict templates, skipped optimizer, no optimizer stored.
    ckpt = load_checkpoint(path, {"params": None, "geometry_state": {0: _walkers(), 7: _walkers()}})
    assert ckpt.optimizer_state is None and ckpt.params["dense"]["kernel"].shape == (3, 2)
    bare = tmp_path / "bare.h5"
    _save(bare, 1, optimizer_state=None, geometry_states={}, config_toml="")
    ckpt = load_checkpoint(bare, {"params": _params()})
    assert ckpt.optimizer_state is None and ckpt.geometry_states == {} and ckpt.config_toml == ""
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(bare, {"params": _params(), "optimizer": kwargs["optimizer_state"]})

    summary = read_checkpoint_summary(path)
    assert summary["step"] == 120 and summary["n_geometries"] == 2 and summary["names"] == ["H2", "LiH"]
    assert summary["checksum_ok"] and summary["metadata"]["n_determinants"] == 4
    assert summary["versions"]["hpcwf"] and summary["sizes"]["params"] > 0
    assert {"params", "optimizer", "geometry_states", "scheduler"} <= set(summary["sizes"])


def test_load_params_accepts_both_formats(tmp_path):
    params = _params()
    save_params(tmp_path / "params.h5", params, {"model_size": "small"})
    loaded, meta = load_params(tmp_path / "params.h5")
    _assert_bitwise(params, loaded)
    assert meta["format"] == "hpcwf-params"

    _save(tmp_path / "full.h5", 3)
    loaded, meta = load_params(tmp_path / "full.h5")
    _assert_bitwise(params, loaded)
    assert meta["model_size"] == "small" and int(meta["step"]) == 3
    assert read_checkpoint_summary(tmp_path / "params.h5")["checksum_ok"] is False


def test_checksum_detects_flipped_value_and_truncation(tmp_path):
    path = tmp_path / "ckpt.h5"
    _save(path, 5)
    with h5py.File(path, "r+") as f:
        ds = f["geometry_states/7/000001"]  # log_prob
        values = ds[()]
        values.view(np.uint32)[2] ^= 1  # one bit of one float
        ds[...] = values
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        verify_checkpoint(path)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path, {"params": _params()})
    assert read_checkpoint_summary(path)["checksum_ok"] is False

    truncated = tmp_path / "truncated.h5"
    _save(truncated, 5)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        verify_checkpoint(truncated)
    with pytest.raises(CheckpointError):
        load_params(truncated)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    _save(checkpoint_path(tmp_path, 1), 1)
    save_params(tmp_path / "params.h5", _params(), {})
    # A failing write (unserializable geometry) leaves neither the final file nor a temp file.
    with pytest.raises(TypeError):
        _save(checkpoint_path(tmp_path, 2), 2, geometries=[{"bad": object()}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_000000001.h5", "params.h5"]


def test_directory_latest_valid_and_retention(tmp_path):
    for step in (10, 20, 30, 40, 50, 60):
        _save(checkpoint_path(tmp_path, step), step, geometry_states={})
    (tmp_path / ".ckpt_000000070.h5.tmp123").write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        f"ckpt_{s:09d}.h5" for s in (10, 20, 30, 40, 50, 60)
    ]
    assert list_checkpoints(tmp_path / "missing") == []

    newest = checkpoint_path(tmp_path, 60)
    data = bytearray(newest.read_bytes())
    newest.write_bytes(bytes(data[:1000]))
    messages = []
    assert latest_valid_checkpoint(tmp_path, log=messages.append) == checkpoint_path(tmp_path, 50)
    assert len(messages) == 1 and messages[0].startswith(f"warning: {newest}: ")
    assert messages[0].endswith("; using previous checkpoint")
    assert latest_valid_checkpoint(tmp_path / "missing", log=messages.append) is None

    deleted = apply_retention(tmp_path, keep_last=2, keep_every=20)
    assert sorted(p.name for p in deleted) == ["ckpt_000000010.h5", "ckpt_000000030.h5"]
    remaining = [p.name for p in list_checkpoints(tmp_path)]
    assert remaining == [f"ckpt_{s:09d}.h5" for s in (20, 40, 50, 60)]
    apply_retention(tmp_path, keep_last=0, keep_every=0)  # the newest always stays
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_000000060.h5"]
    assert (tmp_path / ".ckpt_000000070.h5.tmp123").exists()


def test_init_checkpoint_names_a_file_or_a_run_dir(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    for step in (10, 20):
        _save(checkpoint_path(ckpts, step), step, geometry_states={})
    newest = checkpoint_path(ckpts, 20)
    older = checkpoint_path(ckpts, 10)
    assert resolve_init_checkpoint(older) == older
    assert resolve_init_checkpoint(tmp_path / "run") == newest
    assert resolve_init_checkpoint(ckpts) == newest
    newest.write_bytes(newest.read_bytes()[:1000])  # corrupt: the previous one is taken
    assert resolve_init_checkpoint(tmp_path / "run", log=lambda _: None) == older
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        resolve_init_checkpoint(tmp_path / "empty")


def test_metadata_cannot_shadow_reserved_attrs(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        _save(tmp_path / "x.h5", 1, metadata={"step": 3})


def test_train_state_template_from_its_constructor_roundtrips(tmp_path):
    """The whole train state goes through a checkpoint, read into `jax.eval_shape` of the
    function that builds it (no field list written out); a reader holding a subset of the
    geometries (one rank's shard) gets those and their scheduler entries. <2 s."""
    import optax

    from hpcwf.mcmc import init_walkers
    from hpcwf.training.schedule import GeometryScheduler
    from hpcwf.training.state import TrainState, read_train_state, write_train_state
    from hpcwf.training.vmc import new_geometry_state

    geometry = struct.dataclass(type("Geometry", (), {"__annotations__": {"nuclei": jnp.ndarray}}))(
        jnp.zeros((2, 3), jnp.float32)
    )

    def log_abs(params, electrons, _):  # [n_walkers, n_el, 3] -> [n_walkers]
        return -params["w"] * jnp.sum(electrons**2, axis=(1, 2))

    def build(params, electrons: dict) -> TrainState:
        return TrainState(
            params=params,
            opt_state=optax.adam(0.1).init(params),
            geometries={
                i: new_geometry_state(init_walkers(log_abs, params, geometry, e, 0.2))
                for i, e in electrons.items()
            },
            scheduler=GeometryScheduler(len(electrons)).state_dict(),
        )

    params = {"w": jnp.asarray(0.5, jnp.float32)}
    rng = np.random.default_rng(0)
    state = build(params, {i: rng.normal(size=(4, 3, 3)) for i in range(3)})
    state = state.replace(step=7, scheduler={**state.scheduler, "last_step": np.array([3, 5, 6], np.int64)})
    path = checkpoint_path(tmp_path, 7)
    write_train_state(path, state, config_toml="", geometries=[{"name": n} for n in "abc"], metadata={})

    electrons = jax.ShapeDtypeStruct((4, 3, 3), jnp.float32)
    template = jax.eval_shape(build, params, {0: electrons, 2: electrons})
    loaded, _ = read_train_state(path, template, 3)
    assert loaded.step == 7 and sorted(loaded.geometries) == [0, 2]
    _assert_bitwise(state.params, loaded.params)
    _assert_bitwise(state.opt_state, loaded.opt_state)
    for i in (0, 2):
        _assert_bitwise(state.geometries[i], loaded.geometries[i])
    np.testing.assert_array_equal(loaded.scheduler["last_step"], [3, 6])
    with pytest.raises(CheckpointError, match="holds 3 geometries, job has 4"):
        read_train_state(path, template, 4)


def test_parameter_files_use_the_pytree_layout_and_version_1_still_loads(tmp_path):
    """One pytree format: parameter files are written like full checkpoints' /params (version 2);
    those written before (one group per dict level, version 1) still load."""
    save_params(tmp_path / "new.h5", _params(), {})
    with h5py.File(tmp_path / "new.h5", "r") as f:
        assert int(f.attrs["version"]) == 2 and int(f["params"].attrs["n_leaves"]) == 3
    path = tmp_path / "params.h5"
    with h5py.File(path, "w") as f:
        f.attrs["format"], f.attrs["version"] = "hpcwf-params", 1
        f.create_dataset("params/dense/kernel", data=np.ones((3, 2), np.float32))
    loaded, meta = load_params(path)
    assert loaded["dense"]["kernel"].shape == (3, 2) and int(meta["version"]) == 1
