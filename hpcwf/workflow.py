"""The job: HF descriptors -> HF pre-training -> VMC optimization -> evaluation.

This module is the edge where files and the run directory live: it checks the input and the
run dir before anything is written, prepares the geometries (HF), chooses between a fresh
start and a resume, writes and reads the train state (`save_train_state`, `load_train_state`)
and hands the stages (`hpcwf.training.stages`) to the stage runner (`hpcwf.runner`), which
owns the step loop. Random keys are derived from (seed, stage, step, geometry index) alone
(`hpcwf.runner.stage_key`), so a run is reproducible, a restart needs no RNG stream to be
carried, and a geometry draws the same numbers whichever rank holds it.

Parallel picture (hpcwf.parallel): the dataset is sharded over ranks; every step each rank
picks ONE geometry of its shard, samples it and computes its gradient and curvature
statistics locally, then all ranks meet in one global update. Rank 0 gathers log rows and
checkpoint state and is the only writer.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tomli_w
from flax import traverse_util

from hpcwf.errors import StorageError
from hpcwf.faults import FaultInjection
from hpcwf.io.checkpoint import (
    CheckpointError,
    apply_retention,
    checkpoint_has_optimizer_state,
    checkpoint_path,
    checkpoint_step,
    latest_valid_checkpoint,
    list_checkpoints,
    load_params,
    read_checkpoint_config,
    read_checkpoint_summary,
    read_training_set,
    remove_stale_temporaries,
    resolve_init_checkpoint,
    save_params,
    set_aside_newer,
    verify_checkpoint,
)
from hpcwf.io.config import (
    ConfigError,
    JobConfig,
    config_to_dict,
    finetune_schedule,
    write_resolved_config,
)
from hpcwf.io.energy_log import EnergyLog, damage_reason
from hpcwf.io.h5files import forced_locking_problem
from hpcwf.io.hf_cache import HartreeFockCache
from hpcwf.io.progress import PROGRESS_FILE, RunProgress
from hpcwf.mcmc import initial_electrons
from hpcwf.model.geometry import geometry_data
from hpcwf.model.registry import ANSATZ_VERSION, molecule_shape
from hpcwf.model.wavefunction import (
    Wavefunction,
    build_wavefunction,
    count_parameters,
    init_params,
)
from hpcwf.models import checkpoint_source, is_model_reference
from hpcwf.parallel import ParallelContext, geometry_cost, init_parallel, shard_geometries
from hpcwf.parallel.sharding import cost_classes, warmup_slots
from hpcwf.runner import Runner, stage_key
from hpcwf.signals import StopFlag
from hpcwf.systems.hartree_fock import HartreeFockResult, descriptor_size
from hpcwf.systems.molecule import ELEMENTS
from hpcwf.training.pretrain import HartreeFockOrbitals
from hpcwf.training.stages import (
    DTYPE,
    STAGE_INIT,
    EvaluationStage,
    PretrainStage,
    System,
    VMCStage,
    hf_density_electrons,
)
from hpcwf.training.state import TrainState, read_train_state, write_train_state
from hpcwf.training.vmc import join_walker_shares, walker_share


def _device_orbitals(hf: HartreeFockResult) -> HartreeFockOrbitals:
    return HartreeFockOrbitals(
        basis=jax.tree_util.tree_map(
            lambda x: jnp.asarray(x, DTYPE) if x.dtype.kind == "f" else x, hf.basis()
        ),
        mo_coeff_up=jnp.asarray(hf.mo_coeff_up, DTYPE),
        mo_coeff_dn=jnp.asarray(hf.mo_coeff_dn, DTYPE),
    )


def prepare_systems(
    cfg: JobConfig,
    indices: list[int],
    cache_path: Path,
    log: Callable,
    ctx: ParallelContext,
    faults: FaultInjection | None = None,
    progress: RunProgress | None = None,
) -> tuple[list[System], dict[int, float]]:
    """HF and device arrays for the geometries `indices` (this rank's shard), and on rank 0
    {global index: E_HF (Ha)} of every geometry ({} on the other ranks).

    Every rank reads the cache for its part of its shard (the ranks of a group sharing a
    geometry split their shard between them and exchange the results) and runs the missing HF
    calculations itself (in parallel over ranks), storing each result in the cache as it
    completes (a stop or a crash in the middle of HF keeps the finished ones:
    `IncrementalStore`). Ranks storing at the same moment can drop each other's new entries
    (the later rename wins), so rank 0 finally stores whatever of the gathered results the
    cache lacks.
    """
    cache = HartreeFockCache(cache_path)
    basis, elements = cfg.hartree_fock.basis, cfg.hartree_fock.elements
    results, computed, lines = {}, {}, {}
    faults = faults or FaultInjection()
    on_stored = None if progress is None else (lambda n: progress.update(hf_stored=n))
    with cache.incremental(on_stored=on_stored) as store:
        faults.hf_progress(0)
        for i in indices[ctx.group_rank :: ctx.group_size]:
            mol = cfg.geometries[i]
            t0 = time.perf_counter()
            hf = cache.lookup(mol, basis, elements)
            source = "cached"
            if hf is None:
                hf = computed[i] = cache.compute(mol, basis, elements)
                store.add(mol, basis, elements, hf, time.perf_counter() - t0)
                source = "computed"
            results[i] = hf
            lines[i] = (
                f"HF  {mol.name:<16} E_HF = {hf.energy:.6f} Ha  (n_up={mol.n_up}, n_dn={mol.n_dn}, "
                f"{source} on rank {ctx.rank}, {time.perf_counter() - t0:.1f} s)"
            )
            faults.hf_progress(len(results))
    gathered = ctx.gather((computed, lines, {i: float(hf.energy) for i, hf in results.items()}))
    for part in ctx.group_allgather(results):  # the rest of the group's shard
        results.update(part)
    hf_energies: dict[int, float] = {}
    if ctx.is_root:
        entries = [
            (cfg.geometries[i], basis, elements, hf) for part, _, _ in gathered for i, hf in part.items()
        ]
        cache.store_many([e for e in entries if cache.lookup(*e[:3]) is None])
        for _, part_lines, part_energies in gathered:
            hf_energies.update(part_energies)
            for i in sorted(part_lines):
                log(part_lines[i])
    systems = []
    for i in indices:
        mol, hf = cfg.geometries[i], results[i]
        data = geometry_data(mol, hf.descriptors_up, hf.descriptors_dn, DTYPE, basis, elements)
        systems.append(System(i, mol.name, hf, data, _device_orbitals(hf), mol.reference_energy))
    return systems, hf_energies


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
        "ansatz_version": ANSATZ_VERSION,
    }


def read_init_params(path: str | Path, cfg: JobConfig) -> dict:
    """The parameters stored in `path` (nested dicts of numpy arrays); CheckpointError if the
    file is unreadable or was written for another model size, orbital type, number of
    determinants, basis or element list, or for another version of the ansatz
    (`hpcwf.model.wavefunction.ANSATZ_VERSION`; a file without it is version 1). No jax work: a
    quick check before anything runs."""
    loaded, meta = load_params(path)
    expected = params_metadata(cfg)
    for key in ("model_size", "orbitals", "n_determinants", "basis", "elements"):
        if key in meta and str(meta[key]) != str(expected[key]):
            raise CheckpointError(f"{path}: {key} is {meta[key]!r} but this job has {expected[key]!r}")
    version = int(meta.get("ansatz_version", 1))
    if version != ANSATZ_VERSION:
        raise CheckpointError(
            f"{path}: written for ansatz version {version}, this hpcwf computes version "
            f"{ANSATZ_VERSION} (the same parameters would give another wavefunction)"
        )
    return loaded


def restore_params(path: str, template, cfg: JobConfig):
    """Loads parameters from `path` into the structure of `template`; CheckpointError if they
    do not fit (other model size, orbitals or descriptor layout)."""
    loaded = read_init_params(path, cfg)
    flat_template = traverse_util.flatten_dict(template)
    flat_loaded = traverse_util.flatten_dict(loaded)
    if set(flat_template) != set(flat_loaded):
        missing = sorted("/".join(k) for k in set(flat_template) - set(flat_loaded))
        extra = sorted("/".join(k) for k in set(flat_loaded) - set(flat_template))
        detail = f"lacks {', '.join(missing[:3])}" if missing else f"has no place for {', '.join(extra[:3])}"
        raise CheckpointError(f"{path}: parameter tree does not match this model (the file {detail})")
    for k, v in flat_template.items():
        if flat_loaded[k].shape != v.shape:
            raise CheckpointError(
                f"{path}: parameter {'/'.join(k)} has shape {flat_loaded[k].shape}, model needs {v.shape}"
            )
    return traverse_util.unflatten_dict(
        {k: jnp.asarray(flat_loaded[k], v.dtype) for k, v in flat_template.items()}
    )


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


def _shard(cfg: JobConfig, ctx: ParallelContext) -> tuple[list[list[int]], list[int] | None]:
    """(geometry indices of each group of ranks sharing a geometry, i.e. of each rank when
    ranks_per_geometry is 1; cost class of each geometry or None for one class)."""
    costs = [geometry_cost(m.n_electrons, m.n_atoms) for m in cfg.geometries]
    n = ctx.n_rank_groups
    try:
        # One group never waits for another: its schedule stays the paper's (one class).
        classes = cost_classes(costs, n) if cfg.scheduler.cost_classes and n > 1 else None
        return shard_geometries(costs, n, classes), classes
    except ValueError as err:
        fewer = "start fewer ranks" if ctx.group_size == 1 else "start fewer ranks or share geometries more"
        raise ConfigError(cfg.job_file, "geometry", f"{err}; {fewer}") from err


def _with_walker_groups(cfg: JobConfig, ctx: ParallelContext) -> ParallelContext:
    """`ctx` with its ranks in groups of [parallel] ranks_per_geometry; ConfigError (on every
    rank) for a group size that does not divide the ranks or the walkers."""
    k = cfg.parallel.ranks_per_geometry
    if ctx.size % k:
        raise ConfigError(
            cfg.job_file,
            "parallel.ranks_per_geometry",
            f"{k} does not divide the {ctx.size} rank(s) of this launch: start a multiple of {k} ranks",
        )
    for key, n in (
        ("optimization.batch_size", cfg.optimization.batch_size),
        ("pretraining.batch_size", cfg.pretraining.batch_size),
    ):
        share = k * ctx.n_local_devices  # each rank splits its walkers evenly over its devices
        if n % share:
            where = (
                f"the {ctx.n_local_devices} device(s) of each of {k} ranks"
                if k > 1
                else (f"the {ctx.n_local_devices} devices of a rank")
            )
            why = f"{n} walkers cannot be split evenly over {where}: use a multiple of {share}"
            raise ConfigError(cfg.job_file, key, why)
    return ctx.with_ranks_per_geometry(k)


def run_job(
    cfg: JobConfig,
    log: Callable = print,
    restart: str | None = None,
    ctx: ParallelContext | None = None,
    stop: StopFlag | None = None,
) -> Path:
    """Runs a whole job on every rank of `ctx` (default: this process's MPI launch); returns
    the run directory.

    A run dir that already holds checkpoints of the same job is resumed from the newest valid
    one (or from `restart`); `energies.h5` is truncated to that step and appended to. Raises
    ConfigError/CheckpointError on every rank, before anything is written, when the input is
    unusable. Only rank 0 writes files and prints. `stop`: the process's installed stop
    handler (`hpcwf run` installs it at start-up); without one, one is installed for the
    job and the previous handlers are restored afterwards. A stop signal raises
    RunInterruptedError (hpcwf.signals).
    """
    if stop is not None:
        return _run_job(cfg, log, restart, ctx, stop)
    stop = StopFlag().install()
    try:
        return _run_job(cfg, log, restart, ctx, stop)
    finally:
        stop.uninstall()


def _run_job(
    cfg: JobConfig, log: Callable, restart: str | None, ctx: ParallelContext | None, stop: StopFlag
) -> Path:
    ctx = ctx or init_parallel()
    if not ctx.is_root:
        log = _quiet
    jax.config.update("jax_default_matmul_precision", "highest")  # no TF32 (METHOD pitfall 4)
    out = Path(cfg.output.dir)
    ckpt_dir = out / "checkpoints"
    resume_path = ctx.root_decides(lambda: _resume_point(cfg, out, restart, log))
    ctx = _with_walker_groups(cfg, ctx)
    shards, classes = _shard(cfg, ctx)
    my_indices = shards[ctx.rank_group]

    model = make_model(cfg)
    root = jax.random.PRNGKey(cfg.seed)
    # Whether the run started from an [init] checkpoint decides its schedule and stages; the
    # file itself is read only by a fresh start: a resume continues from the run's own
    # checkpoint, so a source deleted by its run's retention, or archived, does not matter.
    from_init = bool(cfg.init.checkpoint)
    init_file = None
    outside = None  # per geometry: outside the [init] checkpoint's training set (EnergyLog)
    if resume_path is None:
        # A run dir names its newest valid checkpoint, chosen once, by rank 0, for every rank.
        init_file = ctx.root_decides(
            lambda: _init_checkpoint_of(
                cfg, lambda: _checked_init_checkpoint(cfg, log) if from_init else None
            )
        )
        outside = ctx.root_decides(lambda: _init_checkpoint_of(cfg, lambda: _coverage(cfg, init_file, log)))
    elif from_init and not is_model_reference(cfg.init.checkpoint) and not Path(cfg.init.checkpoint).exists():
        log(
            f"warning: {cfg.job_file}: init.checkpoint: {cfg.init.checkpoint} no longer exists; "
            f"this run resumes from its own checkpoint {resume_path}, which does not need it"
        )
    # Parameters (and an [init] checkpoint's fit to this model) are settled on rank 0 before
    # anything is written, then broadcast, so every rank starts from the same numbers.
    params = ctx.root_decides(
        lambda: _init_checkpoint_of(
            cfg,
            lambda: jax.device_get(_initial_params(cfg, model, root, init_file)),
        )
    )
    params = ctx.local_replicated(params)

    if ctx.is_root:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for tmp in remove_stale_temporaries(ckpt_dir):
            log(f"removed {tmp}: a checkpoint write cut short by a kill")
        if restart:
            _abandon_newer_branch(ckpt_dir, resume_path, log)
        write_resolved_config(cfg, out / "config.toml")
        progress = RunProgress(out / PROGRESS_FILE)
        if resume_path is not None:
            step = read_checkpoint_summary(resume_path)["step"]
            progress.update(resumed_from=int(step), checkpoint=str(resume_path.absolute()))
        else:
            progress.update()
    else:
        progress = None
    if ctx.size > 1 and ctx.group_size > 1:
        k = ctx.group_size
        log(
            f"parallel: {ctx.size} ranks x {ctx.n_local_devices} devices, {k} ranks per geometry "
            f"({cfg.optimization.batch_size // k} walkers each); geometries per group of ranks:"
        )
        for group, shard in enumerate(shards):
            ranks = f"{group * k}-{group * k + k - 1}"
            log(f"  ranks {ranks:>7}: {', '.join(cfg.geometries[i].name for i in shard)}")
    elif ctx.size > 1:
        log(f"parallel: {ctx.size} ranks x {ctx.n_local_devices} devices; geometries per rank:")
        for rank, shard in enumerate(shards):
            log(f"  rank {rank:>3}: {', '.join(cfg.geometries[i].name for i in shard)}")
    elif ctx.n_local_devices > 1:
        log(f"parallel: 1 rank x {ctx.n_local_devices} devices")
    faults = FaultInjection.from_environment()
    stop.phase = "Hartree-Fock (the geometries finished so far are stored in the HF cache and reused)"
    systems, hf_energies = prepare_systems(
        cfg, my_indices, Path(cfg.hartree_fock.cache or out / "hf_cache.h5"), log, ctx, faults, progress
    )
    stop.phase = "start-up"
    log(
        f"model: size {cfg.model.size}, {cfg.model.orbitals} orbitals, "
        f"{cfg.model.n_determinants} determinants, {count_parameters(params)} parameters"
    )
    energy_log = None
    if ctx.is_root:
        energy_log = EnergyLog(
            out / "energies.h5",
            cfg.geometries,
            hf_energy=[hf_energies[i] for i in range(len(cfg.geometries))],
            outside_training_set=outside,
        )
    runner = Runner(ctx, root, log, stop, energy_log, cfg.output.print_every)
    slots = None if classes is None else warmup_slots(shards, classes)
    vmc = VMCStage(
        cfg, model, systems, root, finetune=from_init, ctx=ctx, faults=faults, classes=classes, slots=slots
    )

    if resume_path is not None:
        state = load_train_state(resume_path, vmc, params, len(cfg.geometries))
        if energy_log is not None:
            energy_log.truncate(state.step)
        log(f"resumed from {resume_path} at step {state.step}")
    else:
        if energy_log is not None:
            # A run that died before its first checkpoint (or another job's) starts over: no
            # row or evaluation of that attempt may remain, pre-training rows included.
            energy_log.start_over()
        if init_file:
            log(f"init: parameters from {init_file} (mode = {cfg.init.mode})")
            if finetune_schedule(cfg):
                log(finetune_schedule(cfg))
        # The whole batch of each geometry is drawn alike on every rank (pre-training takes its
        # share of its front); each rank keeps its share for VMC, so the walkers do not depend
        # on the rank layout.
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
        pretrains = not init_file and cfg.pretraining.steps > 0
        if pretrains:
            pre = PretrainStage(cfg, model, systems, ctx, faults)
            pretrained = runner.run(pre, pre.initial_state(params, walkers))
            params, walkers = pretrained.params, pre.sampled_electrons(pretrained, walkers)
        first, n_local = vmc.group.first_walker, vmc.n_walkers
        walkers = {i: w[first : first + n_local] for i, w in walkers.items()}
        if pretrains:
            walkers = _start_check(vmc, params, walkers, pre.n_steps, "pretrained", ctx, energy_log, log)
        elif init_file:
            # A fine-tune (or evaluation) starts its walkers in the HF density, then equilibrates
            # them under the loaded parameters and measures where it starts (step 0).
            walkers = hf_density_electrons(cfg, systems, walkers, root, ctx)
            walkers = _start_check(vmc, params, walkers, 0, "start", ctx, energy_log, log)
        state = vmc.place(vmc.initial_state(params, walkers))

    if not (from_init and cfg.init.mode == "evaluate"):
        state = runner.run(
            vmc,
            state,
            checkpoint=lambda st: _saved(save_train_state(st, cfg, ctx, ckpt_dir, log, faults), st, progress),
            every_steps=cfg.checkpoint.every_steps,
            every_minutes=cfg.checkpoint.every_minutes,
        )
    if ctx.is_root:
        save_params(
            ckpt_dir / "params.h5",
            jax.device_get(state.params),
            params_metadata(cfg),
            geometries=[m.to_dict() for m in cfg.geometries],
        )
        energy_log.flush()

    if cfg.evaluation.steps > 0:
        results = evaluate(runner, EvaluationStage(cfg, vmc, systems, root), state, ctx, log)
        if energy_log is not None:
            # Tied to the step of the parameters evaluated: training on past it (an extension)
            # or rolling back before it (--restart) marks it stale (EnergyLog).
            energy_log.write_evaluation(results, len(cfg.geometries), cfg.evaluation.steps, state.step)
    ctx.barrier()  # no rank reports success before rank 0 has written everything
    return out


def _start_check(
    vmc: VMCStage,
    params,
    walkers: dict[int, np.ndarray],
    step: int,
    label: str,
    ctx: ParallelContext,
    energy_log: EnergyLog | None,
    log: Callable,
) -> dict[int, np.ndarray]:
    """The energy VMC starts from, per geometry (`VMCStage.start_energies`): logged as
    /pretrain check rows at `step`, printed next to E_HF as `label`; returns `walkers` with
    the network-equilibrated walkers in place (VMC starts from them). Collective (gather)."""
    walkers = {i: w.copy() for i, w in walkers.items()}
    equilibrated, rows = vmc.start_energies(params, walkers, step)
    for i, electrons in equilibrated.items():
        walkers[i][: electrons.shape[0]] = electrons
    hf_energy = {s.index: s.hf.energy for s in vmc.systems}
    gathered = ctx.gather_per_rank_group((rows, hf_energy))
    if ctx.is_root:
        all_rows = sorted((r for part, _ in gathered for r in part), key=lambda r: r["geometry"])
        e_hf = {i: e for _, part in gathered for i, e in part.items()}
        for r in all_rows:
            error = r.pop("error")
            energy_log.append_pretrain(**r)
            i = r["geometry"]
            log(
                f"{label} {vmc.cfg.geometries[i].name:<16} E = {r['energy']:.4f} +- {error:.4f} Ha  "
                f"var {r['variance']:.3g} Ha^2  (E_HF {e_hf[i]:.4f} Ha, "
                f"{1e3 * (r['energy'] - e_hf[i]):+.0f} mHa)"
            )
    return walkers


def _saved(path: Path, state: TrainState, progress: RunProgress | None) -> Path:
    """Records a checkpoint just written in the progress file (rank 0); returns its path."""
    if progress is not None:
        progress.update(checkpoint_step=int(state.step), checkpoint=str(path.absolute()))
    return path


def _abandon_newer_branch(ckpt_dir: Path, resume_path: Path, log: Callable) -> None:
    """`--restart` to a checkpoint older than the run's newest: the newer checkpoints (and the
    final parameters) belong to the trajectory abandoned here; they are moved aside, so that
    every later plain resume (a SLURM requeue) continues the branch started now, and the
    retention cannot delete the new branch to keep them. `energies.h5` is cut at the step as
    in every resume."""
    step = checkpoint_step(resume_path)
    target, moved = set_aside_newer(ckpt_dir, step)
    if moved:
        names = ", ".join(p.name for p in moved)
        log(f"note: --restart at step {step}: moved the abandoned run's newer files ({names}) to {target}")


def _coverage(cfg: JobConfig, init_file: str | None, log: Callable) -> list[int]:
    """Per geometry of the job: 1 when it has an element or an electron count that the training
    set stored in `init_file` never contained, 0 when both occurred, -1 when unknown (no
    [init] checkpoint, or a file that stores no training set). Logs one warning line naming
    what is new and where; results there are extrapolations of the transferable model."""
    n = len(cfg.geometries)
    if not init_file:
        return [-1] * n
    training = read_training_set(init_file)
    if training is None:
        log(f"note: {init_file} stores no training set; which geometries lie outside it is unknown")
        return [-1] * n
    seen_elements, seen_sizes = set(), set()
    for g in training:
        symbols = [str(atom[0]) for atom in g.get("atoms", [])]
        seen_elements.update(symbols)
        seen_sizes.add(sum(ELEMENTS.get(s, 0) for s in symbols) - int(g.get("charge", 0)))
    flags, where = [], []
    new_elements, new_sizes = set(), set()
    for mol in cfg.geometries:
        elements = sorted(set(mol.symbols) - seen_elements, key=lambda e: ELEMENTS[e])
        size_is_new = mol.n_electrons not in seen_sizes
        flags.append(int(bool(elements) or size_is_new))
        if flags[-1]:
            new_elements.update(elements)
            what = [*elements, *([f"{mol.n_electrons} electrons"] if size_is_new else [])]
            where.append(f"{mol.name} ({', '.join(what)})")
            if size_is_new:
                new_sizes.add(mol.n_electrons)
    if where:
        parts = []
        if new_elements:
            parts.append(f"element(s) {', '.join(sorted(new_elements, key=lambda e: ELEMENTS[e]))}")
        if new_sizes:
            parts.append(f"molecule size(s) of {', '.join(map(str, sorted(new_sizes)))} electrons")
        log(
            f"warning: {init_file} was trained on {len(training)} "
            f"{'geometry' if len(training) == 1 else 'geometries'} with "
            f"{', '.join(sorted(seen_elements, key=lambda e: ELEMENTS.get(e, 0)))} and "
            f"{', '.join(map(str, sorted(seen_sizes)))} electrons, never on {' or '.join(parts)}: "
            f"{'; '.join(where)}; results there are extrapolations (hpcwf analyze marks "
            "evaluations of them that were not trained here as extrapolated)"
        )
    return flags


def _checked_init_checkpoint(cfg: JobConfig, log: Callable) -> Path:
    """The [init] checkpoint file, read once to refuse a bad one before any compilation."""
    path = resolve_init_checkpoint(checkpoint_source(cfg.init.checkpoint), log)
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
        mol,
        np.zeros((mol.n_atoms, mol.n_up, d_desc)),
        np.zeros((mol.n_atoms, mol.n_dn, d_desc)),
        DTYPE,
        cfg.hartree_fock.basis,
        cfg.hartree_fock.elements,
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


def save_train_state(
    state: TrainState,
    cfg: JobConfig,
    ctx: ParallelContext,
    ckpt_dir: Path,
    log: Callable,
    faults: FaultInjection,
) -> Path:
    """Gathers every rank's geometry states and scheduler entries; rank 0 writes the whole
    train state to `checkpoint_path(ckpt_dir, state.step)` (each geometry's walkers joined from
    the ranks of its group, in walker order) and applies the retention. Raises StorageError on
    every rank when the file cannot be written. Collective."""
    mine = (
        {i: jax.device_get(g) for i, g in state.geometries.items()},
        {i: {k: v[j] for k, v in state.scheduler.items()} for j, i in enumerate(state.geometries)},
    )
    params = jax.device_get(state.params)
    parts = ctx.gather((*mine, params_digest(params)))
    path = checkpoint_path(ckpt_dir, state.step)
    failure = None
    if ctx.is_root:
        digests = [part[2] for part in parts]
        if len(set(digests)) > 1:  # must never happen: the update is the same on all ranks
            raise RuntimeError(f"parameters differ between ranks at step {state.step}: {digests}")
        shares, per_geometry = {}, {}
        for part_states, part_sched, _ in parts:  # in rank order: walker order within a group
            for i, g in part_states.items():
                shares.setdefault(i, []).append(g)
            per_geometry.update(part_sched)  # equal on the ranks of a group
        geometries = {i: join_walker_shares(g) for i, g in shares.items()}
        order = range(len(cfg.geometries))
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
                config_toml=tomli_w.dumps(config_to_dict(cfg)),
                geometries=[m.to_dict() for m in cfg.geometries],
                metadata={**params_metadata(cfg), "n_ranks": ctx.size, "params_sha256": digests[0]},
                on_written=faults.checkpoint_hook(state.step),
            )
        except OSError as err:  # disk full, quota: nothing was written, older files stand
            previous = latest_valid_checkpoint(ckpt_dir, log)
            failure = (
                f"{path}: cannot write checkpoint ({err.strerror or err}); stopped at step {state.step}, "
                f"the newest valid checkpoint is {previous or 'none'}: free space, then rerun to resume"
            )
        else:
            apply_retention(ckpt_dir, cfg.checkpoint.keep_last, cfg.checkpoint.keep_every)
    # Every rank waits for rank 0's file (or its failure) before going on or exiting.
    failure = ctx.bcast(failure)
    if failure is not None:
        raise StorageError(failure)
    return path


def load_train_state(path: Path, vmc: VMCStage, params_template, n_geometries: int) -> TrainState:
    """This rank's part of the train state in `path` (written by any number of ranks, with any
    ranks_per_geometry): its group's geometries, of each its share of the walkers, placed on
    its devices; a checkpoint without optimizer state gets a fresh one."""
    template = vmc.state_template(params_template, vmc.cfg.optimization.batch_size)
    if not checkpoint_has_optimizer_state(path):
        template = template.replace(opt_state=None)
    state, _ = read_train_state(path, template, n_geometries)
    state = state.replace(
        geometries={
            i: walker_share(g, vmc.group.first_walker, vmc.n_walkers) for i, g in state.geometries.items()
        }
    )
    if state.opt_state is None:
        state = state.replace(opt_state=vmc.init_optimizer(vmc.ctx.local_replicated(state.params)))
    return vmc.place(state)


def evaluate(runner: Runner, stage: EvaluationStage, state: TrainState, ctx: ParallelContext, log: Callable):
    """Runs the evaluation stage from the training's walkers; rank 0 gets {index: {column of
    log_schema.EVALUATION: value}} of all geometries (and logs one `eval` line each), the
    other ranks None."""
    log(f"evaluation: {stage.n_steps} steps per geometry")
    final = runner.run(stage, stage.initial_state(state.params, state.geometries))
    parts = ctx.gather(stage.results(final))
    if not ctx.is_root:
        return None
    merged, all_lines = {}, {}
    for part_results, part_lines in parts:
        merged.update(part_results)
        all_lines.update(part_lines)
    for i in sorted(all_lines):
        log(all_lines[i])
    return merged
