"""The train state: everything a run carries from one step to the next, in one pytree.

`TrainState` holds the parameters, the optimizer state, the step, every geometry's
`GeometryState` (walkers, step size, ages, clipping statistics) and the geometry scheduler's
statistics. The checkpoint writes and reads it as a whole (`write_train_state`,
`read_train_state`), each field at its place of CHECKPOINT_LAYOUT (a field without one fails
at import); the template a checkpoint is read into is `jax.eval_shape` of the same
function that builds a fresh state (`hpcwf.training.stages.VMCStage.initial_state`), so no field
list is written out anywhere else: a new field of `WalkerState` or `GeometryState` reaches the
checkpoint by itself.

File layout (`hpcwf.io.checkpoint`, format "hpcwf-checkpoint" version 1, unchanged, so
checkpoints of earlier hpcwf versions load): params -> /params, opt_state -> /optimizer,
geometries[i] -> /geometry_states/<i>, scheduler -> /scheduler/<name>, step -> attr step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flax import struct

from hpcwf.io.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from hpcwf.training.vmc import GeometryState


@struct.dataclass
class TrainState:
    """Everything an optimization step reads and writes.

    Attributes:
        params: model parameters (flax variables).
        opt_state: optimizer state (kfac-jax or optax), or None before the optimizer exists.
        step: optimization steps completed (static: not a leaf).
        geometries: {global geometry index: GeometryState} of the geometries held here (this
            rank's shard; all geometries in the copy rank 0 writes).
        scheduler: `GeometryScheduler.state_dict()`: arrays with one entry per geometry of
            `geometries`, in the order of its keys.
    """

    params: Any
    opt_state: Any
    geometries: dict[int, GeometryState]
    scheduler: dict[str, np.ndarray]
    step: int = struct.field(pytree_node=False, default=0)


# Where each TrainState field lives in a checkpoint file (the module docstring's layout). A
# field added to TrainState without an entry here fails at import: it would otherwise be
# silently left out of every checkpoint.
CHECKPOINT_LAYOUT = {
    "params": "/params",
    "opt_state": "/optimizer",
    "geometries": "/geometry_states/<index>",
    "scheduler": "/scheduler/<name>",
    "step": "attribute step",
}
_unplaced = {f.name for f in dataclasses.fields(TrainState)} ^ set(CHECKPOINT_LAYOUT)
if _unplaced:
    raise TypeError(f"TrainState fields without a checkpoint place (or stale places): {sorted(_unplaced)}")


def write_train_state(
    path: str | Path,
    state: TrainState,
    *,
    config_toml: str,
    geometries: list[dict],
    metadata: dict,
    on_written: Callable[[Path], None] | None = None,
) -> None:
    """Writes `state` (holding every geometry, global index order in `scheduler`) as a full
    checkpoint atomically (`hpcwf.io.checkpoint.save_checkpoint`; OSError when the disk is
    full, then nothing is left behind)."""
    save_checkpoint(
        path,
        step=state.step,
        params=state.params,
        optimizer_state=state.opt_state,
        geometry_states=state.geometries,
        scheduler_state=state.scheduler,
        config_toml=config_toml,
        geometries=geometries,
        metadata=metadata,
        on_written=on_written,
    )


def read_train_state(
    path: str | Path, template: TrainState, n_geometries: int | None = None
) -> tuple[TrainState, Checkpoint]:
    """Reads the checkpoint at `path` into the structure of `template` (leaves may be
    jax.ShapeDtypeStruct): params, the optimizer state (not read when template.opt_state is
    None), the geometries that `template.geometries` names and their scheduler entries (so a
    rank reads its shard of a checkpoint written by any number of ranks). Returns the state
    (numpy leaves) and the checkpoint's other contents. CheckpointError (file named) when the
    file does not fit the template, or does not hold `n_geometries` geometries (if given)."""
    wanted = list(template.geometries)
    ckpt = load_checkpoint(
        path,
        {
            "params": template.params,
            "optimizer": template.opt_state,
            "geometry_state": lambda index: template.geometries.get(index),
        },
    )
    n_stored = len(ckpt.geometries)
    if (n_geometries is not None and n_stored != n_geometries) or sorted(ckpt.geometry_states) != sorted(
        wanted
    ):
        raise CheckpointError(f"{path}: holds {n_stored} geometries, job has {n_geometries or len(wanted)}")
    scheduler = {k: np.asarray(v)[wanted] for k, v in ckpt.scheduler_state.items()}
    state = TrainState(
        params=ckpt.params,
        opt_state=ckpt.optimizer_state,
        geometries={i: ckpt.geometry_states[i] for i in wanted},
        scheduler=scheduler,
        step=ckpt.step,
    )
    return state, ckpt
