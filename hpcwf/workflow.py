"""The job: HF descriptors -> HF pre-training -> VMC optimization -> evaluation.

This module is the edge where files, clocks, printing and MPI live; everything it calls is a
pure function of (params, geometry, state, key). Random keys are derived from (seed, stage,
step, geometry index) alone, so a run is reproducible, a restart needs no RNG stream to be
carried, and a geometry draws the same numbers whichever rank holds it.

Parallel picture (hpcwf.parallel): the dataset is sharded over ranks; every step each rank
picks ONE geometry of its shard, samples it and computes its gradient and curvature
statistics locally, then all ranks meet in one global update. Rank 0 gathers log rows and
checkpoint state and is the only writer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tomli_w
from flax import traverse_util

from hpcwf.analysis.statistics import MonteCarloEstimate, multi_chain_statistics
from hpcwf.errors import RunDivergedError, RunInterruptedError, StorageError
from hpcwf.hamiltonian import make_local_energy
from hpcwf.io import log_schema
from hpcwf.io.checkpoint import (
    CheckpointError,
    apply_retention,
    checkpoint_has_optimizer_state,
    checkpoint_path,
    latest_valid_checkpoint,
    list_checkpoints,
    load_params,
    read_checkpoint_config,
    remove_stale_temporaries,
    resolve_init_checkpoint,
    save_params,
    verify_checkpoint,
)
from hpcwf.io.config import ConfigError, JobConfig, config_to_dict, write_resolved_config
from hpcwf.io.energy_log import EnergyLog, damage_reason
from hpcwf.io.h5files import forced_locking_problem
from hpcwf.io.hf_cache import HartreeFockCache
from hpcwf.mcmc import init_walkers, initial_electrons, make_mcmc_sweep
from hpcwf.model.geometry import GeometryData, geometry_data
from hpcwf.model.registry import molecule_shape
from hpcwf.model.wavefunction import (
    Wavefunction,
    build_wavefunction,
    count_parameters,
    init_params,
    log_abs_psi_fn,
)
from hpcwf.parallel import ParallelContext, geometry_cost, init_parallel, shard_geometries
from hpcwf.signals import StopFlag
from hpcwf.systems.hartree_fock import HartreeFockResult, descriptor_size
from hpcwf.training.optimizer import ScheduleSettings, all_finite, make_optimizer
from hpcwf.training.pretrain import (
    HartreeFockOrbitals,
    PretrainBatch,
    hf_log_abs_psi,
    make_hf_sweep,
    make_pretrain_optimizer,
)
from hpcwf.training.schedule import GeometryScheduler
from hpcwf.training.state import TrainState, read_train_state, write_train_state
from hpcwf.training.vmc import (
    VMCBatch,
    make_burn_in,
    make_energy_loss,
    make_sample_and_measure,
    new_geometry_state,
)

# Stage tags folded into the root key so stages never share random numbers.
STAGE_INIT, STAGE_PRETRAIN, STAGE_BURN_IN, STAGE_VMC, STAGE_EVAL = range(5)
BURN_IN_CHUNK = 10  # MCMC steps between step-size adaptations during burn-in
# Rejected (non-finite) steps in a row before the run stops; each retry samples with a new key.
MAX_CONSECUTIVE_REJECTED = 20
# The optimizer's log columns of a step without an update (NaN).
_NO_UPDATE = log_schema.missing_values("train", "update")

DTYPE = jnp.float32


@dataclasses.dataclass(frozen=True)
class FaultInjection:
    """Faults that tests inject, read once from the environment here at the edge (TEST ONLY;
    leave these variables unset in production):

    HPCWF_TEST_POISON_STEPS   comma-separated steps or inclusive ranges ("3,4", "0-99") whose
                              update comes out non-finite: the last parameter leaf is set to NaN
                              on the highest rank after the global update. A "pretrain:" prefix
                              ("pretrain:2") means an HF pre-training step.
    HPCWF_TEST_CHECKPOINT_SIGNAL  "SIGTERM@6": rank 0 sends itself that signal while writing the
                              checkpoint of step 6, after its bytes and before the rename (as a
                              scancel or a kill would hit a write in progress).
    """

    poison: tuple[tuple[str, int, int], ...] = ()  # (stage, first step, last step)
    checkpoint_signal: tuple[int, int] | None = None  # (signal number, step)

    @classmethod
    def from_environment(cls) -> FaultInjection:
        poison = []
        for item in filter(None, os.environ.get("HPCWF_TEST_POISON_STEPS", "").replace(" ", "").split(",")):
            stage, _, steps = item.rpartition(":")
            first, _, last = steps.partition("-")
            poison.append((stage or "vmc", int(first), int(last or first)))
        sig = None
        if spec := os.environ.get("HPCWF_TEST_CHECKPOINT_SIGNAL", ""):
            name, _, step = spec.partition("@")
            sig = (int(signal.Signals[name]), int(step))
        return cls(tuple(poison), sig)

    def poisons(self, stage: str, step: int, ctx: ParallelContext) -> bool:
        return ctx.rank == ctx.size - 1 and any(
            s == stage and first <= step <= last for s, first, last in self.poison
        )

    def checkpoint_hook(self, step: int) -> Callable[[Path], None] | None:
        if self.checkpoint_signal is None or self.checkpoint_signal[1] != step:
            return None
        return lambda tmp: os.kill(os.getpid(), self.checkpoint_signal[0])


def _poisoned(params):
    """`params` with its last leaf set to NaN (FaultInjection)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    leaves[-1] = leaves[-1] * jnp.nan
    return jax.tree_util.tree_unflatten(treedef, leaves)


@dataclasses.dataclass
class System:
    """One geometry of the dataset, ready for the network."""

    index: int
    name: str
    hf: HartreeFockResult
    data: GeometryData
    hf_orbitals: HartreeFockOrbitals
    reference: float | None


def _device_orbitals(hf: HartreeFockResult) -> HartreeFockOrbitals:
    return HartreeFockOrbitals(
        basis=jax.tree_util.tree_map(
            lambda x: jnp.asarray(x, DTYPE) if x.dtype.kind == "f" else x, hf.basis()
        ),
        mo_coeff_up=jnp.asarray(hf.mo_coeff_up, DTYPE),
        mo_coeff_dn=jnp.asarray(hf.mo_coeff_dn, DTYPE),
    )


def prepare_systems(
    cfg: JobConfig, indices: list[int], cache_path: Path, log: Callable, ctx: ParallelContext
) -> list[System]:
    """HF and device arrays for the geometries `indices` (this rank's shard).

    Every rank reads the cache for its shard and runs the missing HF calculations itself (in
    parallel over ranks); rank 0 then stores all new results, so the cache has one writer.
    """
    cache = HartreeFockCache(cache_path)
    basis, elements = cfg.hartree_fock.basis, cfg.hartree_fock.elements
    results, computed, lines = {}, {}, {}
    for i in indices:
        mol = cfg.geometries[i]
        t0 = time.perf_counter()
        hf = cache.lookup(mol, basis, elements)
        source = "cached"
        if hf is None:
            hf = computed[i] = cache.compute(mol, basis, elements)
            source = "computed"
        results[i] = hf
        lines[i] = (
            f"HF  {mol.name:<16} E_HF = {hf.energy:.6f} Ha  (n_up={mol.n_up}, n_dn={mol.n_dn}, "
            f"{source} on rank {ctx.rank}, {time.perf_counter() - t0:.1f} s)"
        )
    gathered = ctx.gather((computed, lines))
    if ctx.is_root:
        cache.store_many(
            [(cfg.geometries[i], basis, elements, hf) for part, _ in gathered for i, hf in part.items()]
        )
        for _, part_lines in gathered:
            for i in sorted(part_lines):
                log(part_lines[i])
    systems = []
    for i in indices:
        mol, hf = cfg.geometries[i], results[i]
        data = geometry_data(mol, hf.descriptors_up, hf.descriptors_dn, DTYPE)
        systems.append(System(i, mol.name, hf, data, _device_orbitals(hf), mol.reference_energy))
    return systems


def make_model(cfg: JobConfig) -> Wavefunction:
    try:
        shape = molecule_shape(cfg.model.orbitals, cfg.geometries)
    except ValueError as err:
        raise ConfigError(cfg.job_file, "model.orbitals", str(err)) from None
    return build_wavefunction(cfg.model.size, cfg.model.orbitals, cfg.model.n_determinants, shape)


def params_metadata(cfg: JobConfig) -> dict:
    return {
        "model_size": cfg.model.size,
        "orbitals": cfg.model.orbitals,
        "n_determinants": cfg.model.n_determinants,
        "basis": cfg.hartree_fock.basis,
        "elements": ",".join(cfg.hartree_fock.elements),
    }


def read_init_params(path: str | Path, cfg: JobConfig) -> dict:
    """The parameters stored in `path` (nested dicts of numpy arrays); CheckpointError if the
    file is unreadable or was written for another model size, orbital type, number of
    determinants, basis or element list (no jax work: a quick check before anything runs)."""
    loaded, meta = load_params(path)
    expected = params_metadata(cfg)
    for key in ("model_size", "orbitals", "n_determinants", "basis", "elements"):
        if key in meta and str(meta[key]) != str(expected[key]):
            raise CheckpointError(f"{path}: {key} is {meta[key]!r} but this job has {expected[key]!r}")
    return loaded


def restore_params(path: str, template, cfg: JobConfig):
    """Loads parameters from `path` into the structure of `template`; CheckpointError if they
    do not fit (other model size, orbitals or descriptor layout)."""
    loaded = read_init_params(path, cfg)
    flat_template = traverse_util.flatten_dict(template)
    flat_loaded = traverse_util.flatten_dict(loaded)
    if set(flat_template) != set(flat_loaded):
        raise CheckpointError(f"{path}: parameter tree does not match this model")
    for k, v in flat_template.items():
        if flat_loaded[k].shape != v.shape:
            raise CheckpointError(
                f"{path}: parameter {'/'.join(k)} has shape {flat_loaded[k].shape}, model needs {v.shape}"
            )
    return traverse_util.unflatten_dict(
        {k: jnp.asarray(flat_loaded[k], v.dtype) for k, v in flat_template.items()}
    )


def stage_key(root: jax.Array, stage: int, step: int) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(root, stage), step)


# Settings a resumed run must share with the run in its dir: job key -> (why, whether the run's
# parameters can seed a new run of this job via [init] mode = "finetune"). Everything else may
# change on resume (README "Restarting"): steps, schedules, [mcmc], [scheduler], [checkpoint],
# [evaluation], [pretraining] (over once a checkpoint exists), the HF cache path, the rank count.
_FIXED_ON_RESUME: dict[str, tuple[str, bool]] = {
    "seed": ("a resumed run continues the random numbers of its seed", True),
    "hartree_fock.basis": ("the descriptors, and so the parameter shapes, depend on it", False),
    "hartree_fock.elements": ("the descriptor layout, and so the parameter shapes, depend on it", False),
    "model.size": ("its parameters have the shapes of that model", False),
    "model.orbitals": ("its parameters have the shapes of that model", False),
    "model.n_determinants": ("its parameters have the shapes of that model", False),
    "optimization.batch_size": ("its checkpoints hold that many walkers per geometry", True),
    "optimization.optimizer": ("its checkpoints hold that optimizer's state", True),
    "init.mode": ("the learning-rate schedule depends on it", False),
}
_GEOMETRY_IDENTITY = ("name", "atoms", "charge", "spin")  # annotations (reference, group) may change


def _toml_repr(value) -> str:
    return tomli_w.dumps({"v": value}).strip()[len("v = ") :]


def _setting(path: list[str], value) -> str:
    """How the setting reads in a job file: `[section] key = value` or `key = value`."""
    text = f"{path[-1]} = {_toml_repr(value)}"
    return f"[{path[0]}] {text}" if len(path) > 1 else text


def _way_out(cfg: JobConfig, run: Path, keep: str, finetune: bool) -> str:
    text = f"keep {keep} to resume it, or set another [output] dir for a new run"
    if finetune and not cfg.init.checkpoint:
        text += f' (with [init] checkpoint = "{run}" and mode = "finetune" it starts from its parameters)'
    return text


def _compare_with_run(cfg: JobConfig, old: dict, where: str, out: Path) -> None:
    """ConfigError naming the first setting in which `cfg` differs from the run described by
    `where` whose resolved config is `old`, and the way out (`out`: what [init] checkpoint
    would name). Keys that `old` lacks (written by an older hpcwf) are not compared."""
    new = config_to_dict(cfg)
    if "geometry" in old:
        olds, news = old["geometry"], new["geometry"]
        if len(olds) != len(news):
            raise ConfigError(
                cfg.job_file,
                "geometry",
                f"this job has {len(news)} geometries, {where} {len(olds)}; "
                + _way_out(cfg, out, "its geometries", True),
            )
        for i, (a, b) in enumerate(zip(olds, news, strict=True)):
            differ = [k for k in _GEOMETRY_IDENTITY if a.get(k) != b.get(k)]
            if differ:
                raise ConfigError(
                    cfg.job_file,
                    f"geometry[{i}]",
                    f"{b['name']!r} differs in {', '.join(differ)} from geometry {i} {a.get('name')!r} "
                    f"of {where}; " + _way_out(cfg, out, "its geometries", True),
                )
    started_from = old.get("init", {}).get("checkpoint")
    if started_from is not None and bool(started_from) != bool(cfg.init.checkpoint):
        was = f"started from [init] checkpoint {started_from!r}" if started_from else "started from scratch"
        raise ConfigError(
            cfg.job_file,
            "init.checkpoint",
            f"{where} {was} (its learning-rate schedule depends on that); "
            + _way_out(cfg, out, _setting(["init", "checkpoint"], started_from), False),
        )
    for key, (why, finetune) in _FIXED_ON_RESUME.items():
        path = key.split(".")
        a, b = old, new
        for part in path:
            a = a.get(part) if isinstance(a, dict) else None
            b = b[part]
        if a is not None and a != b:
            raise ConfigError(
                cfg.job_file,
                key,
                f"{_toml_repr(b)} here, but {where} has {_toml_repr(a)}: {why}; "
                + _way_out(cfg, out, _setting(path, a), finetune),
            )


def _holds_checkpoints(out: Path) -> bool:
    """True once a run dir holds state worth protecting: a checkpoint or final parameters.
    Before that (HF, pre-training) a rerun starts over anyway, so any job may take the dir."""
    return bool(list_checkpoints(out / "checkpoints")) or (out / "checkpoints" / "params.h5").exists()


def _check_run_dir(cfg: JobConfig, out: Path, log: Callable) -> None:
    """Refuses, before anything is written, a run dir whose checkpoints belong to a run that
    this job cannot continue (see _FIXED_ON_RESUME), or that holds an energies.h5 of unknown
    origin. A dir without checkpoints (a run that failed in HF or pre-training) is taken over."""
    if out.exists() and not out.is_dir():
        raise ConfigError(cfg.job_file, "output.dir", f"{out} is a file, not a directory; set another one")
    previous = out / "config.toml"
    if not previous.exists():
        if (out / "energies.h5").exists() and not _holds_checkpoints(out):
            raise ConfigError(
                cfg.job_file,
                "output.dir",
                f"{out} holds energies.h5 but no config.toml (not a run of hpcwf's, or its config "
                "was removed); set another [output] dir, or remove that energies.h5",
            )
        return  # a checkpoint's own config is compared by _resume_point
    if not _holds_checkpoints(out):
        log(f"note: {out} holds no checkpoint yet; this job starts over in it")
        return
    import tomllib

    try:
        old = tomllib.loads(previous.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(
            cfg.job_file,
            "output.dir",
            f"{previous} is unreadable ({err}); restore it, remove it (the job stored in the "
            "newest checkpoint is then compared instead), or set another [output] dir",
        ) from err
    _compare_with_run(cfg, old, f"the run in {out} (config.toml)", out)


def geometry_key(root: jax.Array, stage: int, step: int, index: int) -> jax.Array:
    """Key of geometry `index` at `step` of `stage`: independent of which rank holds it."""
    return jax.random.fold_in(stage_key(root, stage, step), index)


def _resume_point(cfg: JobConfig, out: Path, restart: str | None, log: Callable) -> Path | None:
    """Checks the run dir and returns the checkpoint to resume from (None: fresh start).
    Everything a resume needs to agree with is compared here, before anything is written."""
    locking = forced_locking_problem(out)
    if locking is not None:
        raise ConfigError(cfg.job_file, "output.dir", locking)
    _check_run_dir(cfg, out, log)
    if restart:
        resume_path = Path(restart)
        try:
            verify_checkpoint(resume_path)
        except CheckpointError as err:
            raise ConfigError(
                cfg.job_file,
                "--restart",
                f"{err}; name a valid checkpoint, or leave --restart out to resume from the newest "
                f"valid one in {out / 'checkpoints'}",
            ) from err
    else:
        resume_path = latest_valid_checkpoint(out / "checkpoints", log)
        if resume_path is None and _holds_checkpoints(out) and not (out / "config.toml").exists():
            raise ConfigError(
                cfg.job_file,
                "output.dir",
                f"{out} holds checkpoints/params.h5 but no config.toml, so its job is unknown; "
                "set another [output] dir",
            )
    if resume_path is not None:
        import tomllib

        source = "--restart" if restart else "output.dir"
        try:
            old = tomllib.loads(read_checkpoint_config(resume_path))
        except (CheckpointError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(
                cfg.job_file,
                source,
                f"{resume_path}: no readable job config ({err}); set another [output] dir",
            ) from err
        where = f"the checkpoint {resume_path}" if restart else f"the run in {out} ({resume_path.name})"
        _compare_with_run(cfg, old, where, resume_path if restart else out)
        damage = damage_reason(out / "energies.h5")  # a fresh start replaces the file anyway
        if damage is not None:
            raise ConfigError(
                cfg.job_file,
                "output.dir",
                f"{out / 'energies.h5'} is damaged ({damage}); restore it, or move it aside to "
                "continue without the rows logged so far, or set another [output] dir",
            )
    return resume_path


def _shard(cfg: JobConfig, ctx: ParallelContext) -> list[list[int]]:
    try:
        return shard_geometries([geometry_cost(m.n_electrons) for m in cfg.geometries], ctx.size)
    except ValueError as err:
        raise ConfigError(cfg.job_file, "geometry", f"{err}; start fewer ranks") from err


def run_job(
    cfg: JobConfig, log: Callable = print, restart: str | None = None, ctx: ParallelContext | None = None
) -> Path:
    """Runs a whole job on every rank of `ctx` (default: this process's MPI launch); returns
    the run directory.

    A run dir that already holds checkpoints of the same job is resumed from the newest valid
    one (or from `restart`); `energies.h5` is truncated to that step and appended to. Raises
    ConfigError/CheckpointError on every rank, before anything is written, when the input is
    unusable. Only rank 0 writes files and prints.
    """
    ctx = ctx or init_parallel()
    if not ctx.is_root:
        log = _quiet
    jax.config.update("jax_default_matmul_precision", "highest")  # no TF32 (METHOD pitfall 4)
    out = Path(cfg.output.dir)
    ckpt_dir = out / "checkpoints"
    resume_path = ctx.root_decides(lambda: _resume_point(cfg, out, restart, log))
    shards = _shard(cfg, ctx)
    my_indices = shards[ctx.rank]
    for key, n in (
        ("optimization.batch_size", cfg.optimization.batch_size),
        ("pretraining.batch_size", cfg.pretraining.batch_size),
    ):
        if n % ctx.n_local_devices:  # each rank splits its walkers evenly over its devices
            raise ConfigError(
                cfg.job_file,
                key,
                f"{n} walkers cannot be split evenly over the {ctx.n_local_devices} devices of a "
                f"rank: use a multiple of {ctx.n_local_devices}",
            )

    model = make_model(cfg)
    root = jax.random.PRNGKey(cfg.seed)
    # A run dir names its newest valid checkpoint, chosen once, by rank 0, for every rank.
    init_file = ctx.root_decides(
        lambda: _init_checkpoint_of(
            cfg,
            lambda: _checked_init_checkpoint(cfg, log) if cfg.init.checkpoint else None,
        )
    )
    # Parameters (and an [init] checkpoint's fit to this model) are settled on rank 0 before
    # anything is written, then broadcast, so every rank starts from the same numbers.
    params = ctx.root_decides(
        lambda: _init_checkpoint_of(
            cfg,
            lambda: jax.device_get(
                _initial_params(cfg, model, root, init_file if resume_path is None else None)
            ),
        )
    )
    params = ctx.local_replicated(params)

    if ctx.is_root:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for tmp in remove_stale_temporaries(ckpt_dir):
            log(f"removed {tmp}: a checkpoint write cut short by a kill")
        write_resolved_config(cfg, out / "config.toml")
    if ctx.size > 1:
        log(f"parallel: {ctx.size} ranks x {ctx.n_local_devices} devices; geometries per rank:")
        for rank, shard in enumerate(shards):
            log(f"  rank {rank:>3}: {', '.join(cfg.geometries[i].name for i in shard)}")
    systems = prepare_systems(cfg, my_indices, Path(cfg.hartree_fock.cache or out / "hf_cache.h5"), log, ctx)
    log(
        f"model: size {cfg.model.size}, {cfg.model.orbitals} orbitals, "
        f"{cfg.model.n_determinants} determinants, {count_parameters(params)} parameters"
    )
    energy_log = None
    if ctx.is_root:
        energy_log = EnergyLog(out / "energies.h5", cfg.geometries)
    stop = StopFlag().install()
    faults = FaultInjection.from_environment()
    trainer = VMCTrainer(
        cfg, model, systems, root, log, finetune=bool(init_file), stop=stop, ctx=ctx, faults=faults
    )

    if resume_path is not None:
        trainer.load(resume_path, params)
        if energy_log is not None:
            energy_log.truncate(trainer.state.step)
        log(f"resumed from {resume_path} at step {trainer.state.step}")
    else:
        if energy_log is not None:
            # A run that died before its first checkpoint (or another job's) starts over: no
            # row of that attempt may remain, pre-training rows included.
            energy_log.truncate(0)
            energy_log.start_pretrain()
        if init_file:
            log(f"init: parameters from {init_file} (mode = {cfg.init.mode})")
        walkers = {
            s.index: initial_electrons(
                np.random.default_rng([cfg.seed, s.index]),
                np.asarray(s.data.nuclei),
                np.asarray(s.data.charges),
                s.data.n_up,
                s.data.n_dn,
                cfg.optimization.batch_size,
            )
            for s in systems
        }
        if not init_file and cfg.pretraining.steps > 0:
            params, walkers = pretrain(
                cfg, model, params, systems, walkers, root, log, stop, ctx, energy_log, faults
            )
        trainer.init_states(params, walkers)

    if not (init_file and cfg.init.mode == "evaluate"):
        trainer.optimize(energy_log, ckpt_dir)
    params = trainer.state.params
    if ctx.is_root:
        save_params(ckpt_dir / "params.h5", jax.device_get(params), params_metadata(cfg))
        energy_log.flush()

    if cfg.evaluation.steps > 0:
        results = evaluate(cfg, params, systems, trainer, root, log, stop, ctx)
        if energy_log is not None:
            energy_log.write_evaluation(results, len(cfg.geometries), cfg.evaluation.steps)
    ctx.barrier()  # no rank reports success before rank 0 has written everything
    return out


def _checked_init_checkpoint(cfg: JobConfig, log: Callable) -> Path:
    """The [init] checkpoint file, read once to refuse a bad one before any compilation."""
    path = resolve_init_checkpoint(cfg.init.checkpoint, log)
    read_init_params(path, cfg)
    return path


def _init_checkpoint_of(cfg: JobConfig, fn: Callable):
    """fn(), its CheckpointError (from reading the [init] checkpoint) reported as a ConfigError
    that names init.checkpoint and the way out."""
    try:
        result = fn()
    except CheckpointError as err:
        raise ConfigError(
            cfg.job_file,
            "init.checkpoint",
            f"{err}; name a valid checkpoint (or run dir) of a run with this job's [model] and "
            "[hartree_fock] basis and elements, or leave it empty to start from scratch",
        ) from err
    return str(result) if isinstance(result, Path) else result


def _quiet(*args, **kwargs) -> None:
    """Log function of ranks other than 0."""


def _initial_params(cfg: JobConfig, model: Wavefunction, root, init_file: str | None):
    """Fresh parameters, or those of `init_file` (CheckpointError if they do not fit)."""
    # TAO parameter shapes depend only on the descriptor size, not on the molecule.
    mol = cfg.geometries[0]
    d_desc = descriptor_size(cfg.hartree_fock.basis, cfg.hartree_fock.elements)
    template = geometry_data(
        mol, np.zeros((mol.n_atoms, mol.n_up, d_desc)), np.zeros((mol.n_atoms, mol.n_dn, d_desc)), DTYPE
    )
    params = init_params(model, stage_key(root, STAGE_INIT, 0), template)
    if init_file:
        params = restore_params(init_file, params, cfg)
    return params


def params_digest(params) -> str:
    """sha256 of the parameter values (checkpoints compare it across ranks)."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(params):
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()


def place_walkers(ctx: ParallelContext, state):
    """A walker-state pytree (`WalkerState`, `GeometryState`) on this rank's devices: arrays
    with a walker axis (leading) split over the devices, scalars (step size, clipping
    statistics) replicated."""
    return jax.tree_util.tree_map(
        lambda x: ctx.local_split(jnp.asarray(x)) if np.ndim(x) else ctx.local_replicated(jnp.asarray(x)),
        state,
    )


def pretrain(
    cfg,
    model,
    params,
    systems,
    electrons,
    root,
    log,
    stop: StopFlag,
    ctx: ParallelContext,
    energy_log: EnergyLog | None = None,
    faults: FaultInjection = FaultInjection(),
):
    """HF pre-training; each rank goes round-robin through its shard, one global Adam update
    per step. Every rank's loss on its own geometry goes to `energy_log` (rank 0's; None on
    the other ranks) under /pretrain. Returns (params, walkers sampled from HF).

    An update whose new parameters or Adam state are not finite on some rank is rejected on
    every rank (parameters, Adam state and that geometry's walkers stay as before the step);
    MAX_CONSECUTIVE_REJECTED in a row raise RunDivergedError (pre-training has no checkpoint)."""
    optimizer = make_pretrain_optimizer(model, cfg.pretraining.learning_rate)
    update = ctx.make_global_update(optimizer.apply)
    sweep = make_hf_sweep(cfg.mcmc.steps_per_update)
    opt_state = ctx.local_replicated(optimizer.init(params, None, None))
    n = cfg.pretraining.batch_size or cfg.optimization.batch_size
    hf_batched = jax.vmap(hf_log_abs_psi, (None, 0, None))
    walkers = {
        s.index: place_walkers(
            ctx,
            init_walkers(
                hf_batched, s.hf_orbitals, s.data, electrons[s.index][:n], cfg.mcmc.initial_step_size
            ),
        )
        for s in systems
    }
    if energy_log is not None:
        energy_log.start_pretrain()  # not resumable: a rerun starts over, so drop stale rows
    t0 = time.perf_counter()
    rejected_in_a_row = 0
    for t in range(cfg.pretraining.steps):
        s = systems[t % len(systems)]
        key = geometry_key(root, STAGE_PRETRAIN, t, s.index)
        before = walkers[s.index]
        walkers[s.index], pmove = sweep(s.hf_orbitals, s.data, before, key)
        batch = PretrainBatch(walkers[s.index].electrons, s.data, s.hf_orbitals)
        stats = optimizer.local_statistics(params, opt_state, key, batch)
        # info["loss"] is averaged over ranks; the per-geometry curve needs each rank's own.
        row = dict(step=t, geometry=s.index, loss=float(jax.device_get(stats.loss)[0]))
        new_params, new_state, info = update(params, opt_state, stats, t)
        if faults.poisons("pretrain", t, ctx):
            new_params = _poisoned(new_params)
        # One agreement per step: reject the update if it is not finite on any rank; stop if
        # any rank got a signal.
        finite = bool(all_finite((new_params, new_state)))
        rejected, stopping = ctx.any([not finite, stop.requested is not None])
        if rejected:
            walkers[s.index] = before
            rejected_in_a_row += 1
            log(f"pretrain step {t}: non-finite update rejected, rolled back ({rejected_in_a_row} in a row)")
        else:
            params, opt_state = new_params, new_state
            rejected_in_a_row = 0
        rows = ctx.gather({**row, "rolled_back": int(rejected)})
        if energy_log is not None:
            for r in rows:
                energy_log.append_pretrain(**r)
        if rejected_in_a_row >= MAX_CONSECUTIVE_REJECTED:
            if energy_log is not None:
                energy_log.flush()
            raise RunDivergedError(
                f"HF pre-training: {rejected_in_a_row} consecutive non-finite updates up to step {t}; "
                "nothing was saved (pre-training has no checkpoints, a rerun starts over)"
            )
        if stopping:
            raise RunInterruptedError(
                f"stopped by {stop.describe()} during HF pre-training at step {t + 1} (no checkpoint yet: "
                "a rerun starts over)"
            )
        if (t + 1) % cfg.output.print_every == 0 or t + 1 == cfg.pretraining.steps:
            log(
                f"pretrain {t + 1:>6}/{cfg.pretraining.steps}  {s.name:<12} loss {float(info['loss']):.3e}  "
                f"pmove {float(pmove):.2f}  {(time.perf_counter() - t0) / (t + 1):.3f} s/step"
            )
            if energy_log is not None:
                energy_log.maybe_flush()  # readable by h5py while pre-training runs
    # Pre-trained walkers (HF distribution) replace the first n starting positions.
    sampled = {i: electrons[i].copy() for i in electrons}
    for i, w in walkers.items():
        sampled[i][:n] = np.asarray(w.electrons)[: sampled[i].shape[0]]
    return params, sampled


class VMCTrainer:
    """Variational optimization of this rank's shard, one geometry per step and rank, chosen
    by the scheduler; one global update per step over all ranks.

    Its `state` (`TrainState`: parameters, optimizer state, step, this rank's geometry states
    and scheduler statistics) is everything a checkpoint holds; `save` gathers it from all
    ranks, `load` takes this rank's part of any checkpoint (also one written by a different
    number of ranks) into a template made by `jax.eval_shape` of `initial_state`.
    """

    def __init__(
        self,
        cfg: JobConfig,
        model: Wavefunction,
        systems: list[System],
        root,
        log,
        finetune: bool,
        stop: StopFlag,
        ctx: ParallelContext,
        faults: FaultInjection = FaultInjection(),
    ):
        self.cfg, self.systems, self.root, self.log, self.stop, self.ctx = cfg, systems, root, log, stop, ctx
        self.faults = faults
        o = cfg.optimization
        # Fine-tuning: fresh optimizer, lower lr, schedule offset, constant damping (METHOD 2.3).
        schedule = ScheduleSettings.from_config(o, cfg.init if finetune else None)
        self.log_abs_psi = log_abs_psi_fn(model)
        self.local_energy = make_local_energy(self.log_abs_psi, "forward")
        self.optimizer = make_optimizer(
            o.optimizer, make_energy_loss(self.log_abs_psi), schedule, o.batch_size * ctx.size
        )
        self.update = ctx.make_global_update(self.optimizer.apply)
        self.sample_and_measure = make_sample_and_measure(
            self.log_abs_psi,
            self.local_energy,
            cfg.mcmc.steps_per_update,
            cfg.mcmc.target_acceptance,
            cfg.mcmc.max_age,
            o.clip_width,
        )
        self._burn_in = make_burn_in(
            self.log_abs_psi, BURN_IN_CHUNK, cfg.mcmc.target_acceptance, cfg.mcmc.max_age
        )
        self.scheduler = GeometryScheduler(len(systems), cfg.scheduler.warmup_rounds, cfg.scheduler.max_age)
        self.state: TrainState | None = None

    def _set_state(self, state: TrainState) -> None:
        """Places `state` on this rank's devices and makes it the trainer's state; the
        scheduler then works on the state's scheduler arrays in place."""
        self.scheduler.load_state_dict(state.scheduler)
        self.state = state.replace(
            params=self.ctx.local_replicated(state.params),
            opt_state=self.ctx.local_replicated(state.opt_state),
            geometries={i: place_walkers(self.ctx, g) for i, g in state.geometries.items()},
            scheduler=self.scheduler.state_dict(),
        )

    def _template_batch(self) -> VMCBatch:
        """A batch of the right structure (this rank's first geometry) for optimizer.init."""
        s, n = self.systems[0], self.cfg.optimization.batch_size
        return VMCBatch(jnp.zeros((n, s.data.n_electrons, 3), DTYPE), jnp.zeros(n, DTYPE), s.data)

    def _init_optimizer(self, params):
        # The same key and parameters on every rank: the state starts identical everywhere.
        return self.optimizer.init(params, stage_key(self.root, STAGE_INIT, 1), self._template_batch())

    def initial_state(self, params, electrons: dict[int, np.ndarray]) -> TrainState:
        """The state at step 0 (not placed on devices): `params`, a fresh optimizer state and
        walkers at `electrons` [n_walkers, n_el, 3] per geometry index. Also the template of
        every checkpoint load (`jax.eval_shape` of it)."""
        batched = jax.vmap(self.log_abs_psi, (None, 0, None))
        geometries = {
            s.index: new_geometry_state(
                init_walkers(batched, params, s.data, electrons[s.index], self.cfg.mcmc.initial_step_size)
            )
            for s in self.systems
        }
        sched = self.cfg.scheduler
        fresh = GeometryScheduler(len(self.systems), sched.warmup_rounds, sched.max_age)
        return TrainState(
            params=params,
            opt_state=self._init_optimizer(params),
            geometries=geometries,
            scheduler=fresh.state_dict(),
            step=0,
        )

    def init_states(self, params, electrons: dict[int, np.ndarray]) -> None:
        self._set_state(self.initial_state(params, electrons))

    def state_template(self, params) -> TrainState:
        """Shapes and dtypes (jax.ShapeDtypeStruct leaves) of this rank's state, from
        `initial_state` itself."""
        n = self.cfg.optimization.batch_size
        electrons = {s.index: jax.ShapeDtypeStruct((n, s.data.n_electrons, 3), DTYPE) for s in self.systems}
        return jax.eval_shape(self.initial_state, params, electrons)

    def burn(self, params, s: System, steps: int, stage: int) -> None:
        geometries = self.state.geometries
        walkers = geometries[s.index].walkers
        for chunk in range(steps // BURN_IN_CHUNK):
            walkers = self._burn_in(params, s.data, walkers, geometry_key(self.root, stage, chunk, s.index))
        geometries[s.index] = geometries[s.index].replace(walkers=walkers)

    def save(self, ckpt_dir: Path) -> Path:
        """Gathers every rank's geometry states and scheduler entries; rank 0 writes the whole
        train state. Collective."""
        state = self.state
        mine = (
            {i: jax.device_get(g) for i, g in state.geometries.items()},
            {i: {k: v[j] for k, v in state.scheduler.items()} for j, i in enumerate(state.geometries)},
        )
        params = jax.device_get(state.params)
        parts = self.ctx.gather((*mine, params_digest(params)))
        path = checkpoint_path(ckpt_dir, state.step)
        failure = None
        if self.ctx.is_root:
            digests = [part[2] for part in parts]
            if len(set(digests)) > 1:  # must never happen: the update is the same on all ranks
                raise RuntimeError(f"parameters differ between ranks at step {state.step}: {digests}")
            geometries, per_geometry = {}, {}
            for part_states, part_sched, _ in parts:
                geometries.update(part_states)
                per_geometry.update(part_sched)
            order = range(len(self.cfg.geometries))
            whole = state.replace(
                params=params,
                opt_state=jax.device_get(state.opt_state),
                geometries={i: geometries[i] for i in order},
                scheduler={
                    k: np.array([per_geometry[i][k] for i in order], dtype=np.asarray(v).dtype)
                    for k, v in state.scheduler.items()
                },
            )
            try:
                write_train_state(
                    path,
                    whole,
                    config_toml=tomli_w.dumps(config_to_dict(self.cfg)),
                    geometries=[m.to_dict() for m in self.cfg.geometries],
                    metadata={
                        **params_metadata(self.cfg),
                        "n_ranks": self.ctx.size,
                        "params_sha256": digests[0],
                    },
                    on_written=self.faults.checkpoint_hook(state.step),
                )
            except OSError as err:  # disk full, quota: nothing was written, older files stand
                previous = latest_valid_checkpoint(ckpt_dir, self.log)
                failure = (
                    f"{path}: cannot write checkpoint ({err.strerror or err}); stopped at step {state.step}, "
                    f"the newest valid checkpoint is {previous or 'none'}: free space, then rerun to resume"
                )
            else:
                apply_retention(ckpt_dir, self.cfg.checkpoint.keep_last, self.cfg.checkpoint.keep_every)
        # Every rank waits for rank 0's file (or its failure) before going on or exiting.
        failure = self.ctx.bcast(failure)
        if failure is not None:
            raise StorageError(failure)
        return path

    def load(self, path: Path, params_template) -> None:
        """Restores the train state (this rank's geometries) from `path`, whatever number of
        ranks wrote it."""
        template = self.state_template(params_template)
        if not checkpoint_has_optimizer_state(path):
            template = template.replace(opt_state=None)
        state, _ = read_train_state(path, template, len(self.cfg.geometries))
        if state.opt_state is None:
            state = state.replace(opt_state=self._init_optimizer(self.ctx.local_replicated(state.params)))
        self._set_state(state)

    def _update(self, params, batch: VMCBatch, key, t: int):
        """The global update of step `t` from this rank's `batch`, kept only if the new
        parameters and optimizer state are finite on every rank. Returns (params, info,
        sync_time, accepted); on rejection `params` and the state's optimizer state are the old
        ones. Collective."""
        opt_state = self.state.opt_state
        local = jax.block_until_ready(self.optimizer.local_statistics(params, opt_state, key, batch))
        t_sync = time.perf_counter()
        new_params, new_state, info = self.update(params, opt_state, local, t)
        if self.faults.poisons("vmc", t, self.ctx):
            new_params = _poisoned(new_params)
        finite = bool(all_finite((new_params, new_state)))
        info = jax.device_get(info)
        sync_time = time.perf_counter() - t_sync
        # Every rank checks its own copy and all follow the verdict, so the parameters stay
        # identical on all ranks even if only one of them went bad.
        (rejected,) = self.ctx.any([not finite])
        if rejected:
            return params, info, sync_time, False
        self.state = self.state.replace(opt_state=new_state)
        return new_params, info, sync_time, True

    def optimize(self, energy_log: EnergyLog | None, ckpt_dir: Path) -> None:
        """Runs steps until `optimization.steps`; checkpoints as configured, on a stop signal
        (then raises RunInterruptedError) and at the end. `energy_log` is rank 0's (None on
        the other ranks).

        A step is rejected when a walker's local energy (on any rank) or the updated
        parameters / optimizer state (on any rank) are not finite: parameters, optimizer
        state and that geometry's walkers stay as they were before the step (FermiNet's
        reset-if-NaN, DeepQMC's rewind), and the next step samples with its own new key.
        MAX_CONSECUTIVE_REJECTED rejections in a row raise RunDivergedError after a
        checkpoint, which therefore always holds finite parameters."""
        cfg, o, ctx = self.cfg, self.cfg.optimization, self.ctx
        every_steps, every_seconds = cfg.checkpoint.every_steps, 60.0 * cfg.checkpoint.every_minutes
        t_start = last_ckpt = time.perf_counter()
        window: list[float] = []
        rejected_in_a_row = 0
        params = self.state.params
        while self.state.step < o.steps:
            t, t_step = self.state.step, time.perf_counter()
            j = self.scheduler.next_geometry(t)  # position in this rank's shard
            s = self.systems[j]
            if self.scheduler.n_updates[j] == 0:  # first visit: equilibrate its walkers
                self.burn(params, s, cfg.mcmc.burn_in_steps, STAGE_BURN_IN)
            geometries = self.state.geometries
            before = geometries[s.index]  # what a rejected step rolls this geometry back to
            k_sample, k_opt = jax.random.split(geometry_key(self.root, STAGE_VMC, t, s.index))
            geometries[s.index], batch, stats = self.sample_and_measure(params, s.data, before, k_sample)
            stats = jax.device_get(stats)
            time_due = bool(every_seconds) and time.perf_counter() - last_ckpt >= every_seconds
            # One agreement before the update: skip it if any rank has non-finite energies,
            # stop if any rank got a signal, checkpoint if rank 0's clock says so.
            skip, stopping, time_due = ctx.any(
                [stats["n_nonfinite"] > 0, self.stop.requested is not None, time_due and ctx.is_root]
            )
            info, sync_time, accepted = _NO_UPDATE, np.nan, False
            if not skip:
                params, info, sync_time, accepted = self._update(params, batch, k_opt, t)
            if accepted:
                rejected_in_a_row = 0
            else:
                geometries[s.index] = before
                rejected_in_a_row += 1
            step_time = time.perf_counter() - t_step
            self.scheduler.record(j, t, float(stats["variance"]))  # in the state's arrays
            self.state = self.state.replace(params=params, step=t + 1)
            # The surrogate loss (about 0 by construction) means nothing; the energy is logged.
            update_metrics = {k: v for k, v in info.items() if k != "loss"}
            row = {
                "step": t,
                "geometry": s.index,
                **stats,
                **update_metrics,
                "time": time.perf_counter() - t_start,
                "step_time": step_time,
                "sync_time": sync_time,
                "rolled_back": int(not accepted),
            }
            rows = ctx.gather(row)
            if energy_log is not None:
                self._log_rows(rows, energy_log, rejected_in_a_row)
            window.append(step_time)
            if self.state.step % cfg.output.print_every == 0 or self.state.step == o.steps:
                self._progress(stats, s, batch.electrons.shape[0], window, rows)
                window.clear()
                if energy_log is not None:
                    energy_log.maybe_flush()  # readable by h5py while the run is live
            due = (every_steps and self.state.step % every_steps == 0) or time_due
            diverged = rejected_in_a_row >= MAX_CONSECUTIVE_REJECTED
            if due or self.state.step == o.steps or stopping or diverged:
                if energy_log is not None:
                    energy_log.flush()  # the log never lags behind the newest checkpoint
                path = self.save(ckpt_dir)
                last_ckpt = time.perf_counter()
                self.log(f"checkpoint {path}")
                if not stopping:
                    # A signal that arrived during the write stops the run at this checkpoint,
                    # not one step and one more write later (SLURM's KillWait may not allow it).
                    (stopping,) = ctx.any([self.stop.requested is not None])
            if diverged:
                raise RunDivergedError(
                    f"{rejected_in_a_row} consecutive steps rejected as non-finite; "
                    f"checkpoint of the last finite state: {path}"
                )
            if stopping:
                raise RunInterruptedError(
                    f"stopped by {self.stop.describe()} at step {self.state.step}; checkpoint {path}"
                )

    def _log_rows(self, rows: list[dict], energy_log: EnergyLog, rejected_in_a_row: int) -> None:
        """Rank 0: appends the step's rows (one per rank) and reports a rejected step."""
        for r in rows:
            energy_log.append(**r)
        if not rows[0]["rolled_back"]:
            return
        bad = [f"{r['n_nonfinite']} on {self.cfg.geometries[r['geometry']].name}" for r in rows]
        bad = [b for b, r in zip(bad, rows, strict=True) if r["n_nonfinite"]]
        why = f"non-finite E_L ({', '.join(bad)})" if bad else "non-finite update"
        self.log(f"step {rows[0]['step']}: {why}; rejected, rolled back ({rejected_in_a_row} in a row)")

    def _progress(self, stats, s: System, n_walkers: int, window: list[float], rows) -> None:
        """Rank 0's progress line: its own geometry, plus throughput and sync share over ranks."""
        if rows is None:
            return
        err = float(np.sqrt(stats["variance"] / n_walkers))
        line = (
            f"step {self.state.step:>7}/{self.cfg.optimization.steps}  {s.name:<12}"
            f" E = {float(stats['energy']):.5f} +- {err:.5f} Ha"
            f"  var {float(stats['variance']):.4f}  pmove {float(stats['pmove']):.2f}"
            f"  {np.median(window):.3f} s/step"
        )
        if self.ctx.size > 1:
            # The rank that arrived last in the global update waited least: its time there is
            # the update itself (all-reduce + K-FAC inverses); the rest is lock-step waiting.
            sync = np.array([r["sync_time"] for r in rows])
            step = max(float(np.median(window)), 1e-9)
            if np.isfinite(sync).all():
                line += (
                    f"  [{len(rows)} geometries/step, update {sync.min() / step:.0%},"
                    f" wait {(sync.max() - sync.min()) / step:.0%}]"
                )
        self.log(line)


def evaluate(cfg, params, systems, trainer: VMCTrainer, root, log, stop: StopFlag, ctx: ParallelContext):
    """Unclipped E_L over `evaluation.steps` MCMC steps of every walker per geometry with fixed
    parameters. Each walker is an independent Markov chain, so the error bar is the spread of
    the per-walker means (`multi_chain_statistics`: right at any number of steps, also below
    the autocorrelation time), with tau, split-R-hat and a blocking cross-check. Each rank
    evaluates its shard (no collectives) starting from the trainer's walkers; rank 0 gets
    {index: {key: value for every key of energy_log.EVALUATION_FIELDS}} of all geometries,
    the other ranks None."""
    states = trainer.state.geometries
    sweep = make_mcmc_sweep(
        jax.vmap(trainer.log_abs_psi, (None, 0, None)),
        cfg.mcmc.steps_per_update,
        cfg.mcmc.target_acceptance,
        cfg.mcmc.max_age,
    )
    energies_fn = jax.vmap(trainer.local_energy, (None, 0, None))

    @jax.jit
    def eval_step(params, geometry, walkers, key):
        walkers, pmove = sweep(params, geometry, walkers, key)
        return walkers, energies_fn(params, walkers.electrons, geometry)

    results, lines = {}, {}
    log(f"evaluation: {cfg.evaluation.steps} steps per geometry")
    for s in systems:
        trainer.burn(params, s, cfg.evaluation.burn_in_steps, STAGE_EVAL)
        w = states[s.index].walkers
        local_energies = np.empty((cfg.evaluation.steps, w.electrons.shape[0]))  # [steps, walkers]
        for t in range(cfg.evaluation.steps):
            w, e = eval_step(params, s.data, w, geometry_key(root, STAGE_EVAL, t, s.index))
            local_energies[t] = np.asarray(e)
            stop.check("during evaluation (training is checkpointed: a rerun re-evaluates)")
        states[s.index] = states[s.index].replace(walkers=w)
        b = multi_chain_statistics(local_energies)
        results[s.index] = {
            "energy": b.mean,
            "error": b.error,
            "variance": b.variance,
            "autocorrelation_time": b.autocorrelation_time,
            "n_samples": b.n_samples,
            "autocorrelation_time_lower_bound": b.autocorrelation_time_lower_bound,
            "r_hat": b.r_hat,
            "n_chains": b.n_chains,
            "error_blocking": b.error_blocking,
        }
        lines[s.index] = _evaluation_line(s, b)
    parts = ctx.gather((results, lines))
    if not ctx.is_root:
        return None
    merged, all_lines = {}, {}
    for part_results, part_lines in parts:
        merged.update(part_results)
        all_lines.update(part_lines)
    for i in sorted(all_lines):
        log(all_lines[i])
    return merged


R_HAT_WARNING = 1.1  # split-R-hat above this: walkers not equilibrated (Gelman et al., BDA3 11.4)


def _evaluation_line(s: System, b: MonteCarloEstimate) -> str:
    """`eval NAME E = ... +- ... Ha  tau ...  R-hat ...  [ref ... diff ... mHa]`; tau is shown
    as '>x' when the evaluation was too short to resolve it."""
    tau = (
        f"{b.autocorrelation_time:.1f}"
        if b.tau_resolved
        else f">{b.autocorrelation_time_lower_bound:.1f} (unresolved)"
    )
    line = f"eval {s.name:<16} E = {b.mean:.6f} +- {b.error:.6f} Ha  tau {tau}  R-hat {b.r_hat:.3f}"
    if s.reference is not None:
        line += f"  ref {s.reference:.5f}  diff {1000 * (b.mean - s.reference):+.2f} mHa"
    if b.r_hat > R_HAT_WARNING:
        line += "  (R-hat > 1.1: more evaluation.burn_in_steps / steps advised)"
    return line
