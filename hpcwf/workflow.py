"""The job: HF descriptors -> HF pre-training -> VMC optimization -> evaluation.

This module is the edge where files, clocks and printing live; everything it calls is a pure
function of (params, geometry, state, key). Random keys are derived from (seed, stage, step)
alone, so a run is reproducible and a later restart needs no RNG stream to be carried.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tomli_w
from flax import traverse_util

from hpcwf.analysis.statistics import blocking_analysis
from hpcwf.errors import RunDivergedError
from hpcwf.hamiltonian import make_local_energy
from hpcwf.io.checkpoint import (
    CheckpointError,
    apply_retention,
    checkpoint_has_optimizer_state,
    checkpoint_path,
    latest_valid_checkpoint,
    load_checkpoint,
    load_params,
    save_checkpoint,
    save_params,
    verify_checkpoint,
)
from hpcwf.io.config import ConfigError, JobConfig, config_to_dict, write_resolved_config
from hpcwf.io.energy_log import EnergyLog
from hpcwf.mcmc import WalkerState, init_walkers, initial_electrons, make_mcmc_sweep
from hpcwf.model.geometry import GeometryData, geometry_data
from hpcwf.model.wavefunction import (
    Wavefunction,
    build_wavefunction,
    count_parameters,
    init_params,
    log_abs_psi_fn,
)
from hpcwf.signals import StopFlag
from hpcwf.systems.hartree_fock import HartreeFockCache, HartreeFockResult, descriptor_size
from hpcwf.training.optimizer import ScheduleSettings, make_optimizer
from hpcwf.training.pretrain import HartreeFockOrbitals, hf_log_abs_psi, make_pretrain_step
from hpcwf.training.schedule import GeometryScheduler
from hpcwf.training.vmc import (
    GeometryState,
    VMCBatch,
    make_burn_in,
    make_energy_loss,
    make_sample_and_measure,
    new_geometry_state,
)

# Stage tags folded into the root key so stages never share random numbers.
STAGE_INIT, STAGE_PRETRAIN, STAGE_BURN_IN, STAGE_VMC, STAGE_EVAL = range(5)
BURN_IN_CHUNK = 10  # MCMC steps between step-size adaptations during burn-in
MAX_CONSECUTIVE_SKIPS = 20  # non-finite updates in a row before the run is stopped

DTYPE = jnp.float32


@dataclasses.dataclass
class System:
    """One geometry of the dataset, ready for the network."""

    index: int
    name: str
    hf: HartreeFockResult
    data: GeometryData
    hf_orbitals: HartreeFockOrbitals
    reference: float | None


def prepare_systems(cfg: JobConfig, cache_path: Path, log: Callable) -> list[System]:
    """HF (cached in `cache_path`) and device arrays for every geometry."""
    cache = HartreeFockCache(cache_path)
    systems = []
    for i, mol in enumerate(cfg.geometries):
        t0 = time.perf_counter()
        n_computed = cache.n_computed
        hf = cache.get_or_compute(mol, cfg.hartree_fock.basis, cfg.hartree_fock.elements)
        source = "computed" if cache.n_computed > n_computed else "cached"
        data = geometry_data(mol, hf.descriptors_up, hf.descriptors_dn, DTYPE)
        orbitals = HartreeFockOrbitals(
            basis=jax.tree_util.tree_map(
                lambda x: jnp.asarray(x, DTYPE) if x.dtype.kind == "f" else x, hf.basis()
            ),
            mo_coeff_up=jnp.asarray(hf.mo_coeff_up, DTYPE),
            mo_coeff_dn=jnp.asarray(hf.mo_coeff_dn, DTYPE),
        )
        log(
            f"HF  {mol.name:<16} E_HF = {hf.energy:.6f} Ha  (n_up={mol.n_up}, n_dn={mol.n_dn}, "
            f"{source}, {time.perf_counter() - t0:.1f} s)"
        )
        systems.append(System(i, mol.name, hf, data, orbitals, mol.reference_energy))
    return systems


def make_model(cfg: JobConfig) -> Wavefunction:
    backflow_shape = None
    if cfg.model.orbitals == "backflow":
        shapes = {(m.n_up, m.n_dn, m.n_atoms) for m in cfg.geometries}
        if len(shapes) > 1:
            raise ConfigError(
                cfg.job_file,
                "model.orbitals",
                "'backflow' needs all geometries to have the same n_up, n_dn, n_atoms",
            )
        m = cfg.geometries[0]
        backflow_shape = (m.n_electrons, m.n_atoms)
    return build_wavefunction(cfg.model.size, cfg.model.orbitals, cfg.model.n_determinants, backflow_shape)


def params_metadata(cfg: JobConfig) -> dict:
    return {
        "model_size": cfg.model.size,
        "orbitals": cfg.model.orbitals,
        "n_determinants": cfg.model.n_determinants,
        "basis": cfg.hartree_fock.basis,
        "elements": ",".join(cfg.hartree_fock.elements),
    }


def restore_params(path: str, template, cfg: JobConfig):
    """Loads parameters from `path` into the structure of `template`; CheckpointError if they
    do not fit (other model size, orbitals or descriptor layout)."""
    loaded, meta = load_params(path)
    expected = params_metadata(cfg)
    for key in ("model_size", "orbitals", "n_determinants", "basis", "elements"):
        if key in meta and str(meta[key]) != str(expected[key]):
            raise CheckpointError(f"{path}: {key} is {meta[key]!r} but this job has {expected[key]!r}")
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


def _check_run_dir(cfg: JobConfig, out: Path) -> None:
    """Refuses an output dir holding a run of a DIFFERENT job (other geometries, HF settings or
    model); a run of the same job is resumed instead. Step counts may differ (extending a run)."""
    previous = out / "config.toml"
    if not previous.exists():
        if (out / "energies.h5").exists():
            raise ConfigError(cfg.job_file, "output.dir", f"{out} holds energies.h5 but no config.toml")
        return
    import tomllib

    try:
        old = tomllib.loads(previous.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(str(previous), "<toml>", f"unreadable resolved config ({err})") from err
    new = config_to_dict(cfg)
    for section in ("geometry", "hartree_fock", "model"):
        if old.get(section) != new.get(section):
            raise ConfigError(
                cfg.job_file,
                "output.dir",
                f"{out} holds a run of a different job ([{section}] differs); choose another dir",
            )


def run_job(cfg: JobConfig, log: Callable = print, restart: str | None = None) -> Path:
    """Runs a whole job; returns the run directory.

    A run dir that already holds checkpoints of the same job is resumed from the newest valid
    one (or from `restart`); `energies.h5` is truncated to that step and appended to. Raises
    ConfigError/CheckpointError before anything is written when the input is unusable.
    """
    jax.config.update("jax_default_matmul_precision", "highest")  # no TF32 (METHOD pitfall 4)
    out = Path(cfg.output.dir)
    ckpt_dir = out / "checkpoints"
    _check_run_dir(cfg, out)
    resume_path = Path(restart) if restart else latest_valid_checkpoint(ckpt_dir, log)
    if resume_path is not None:
        verify_checkpoint(resume_path)

    model = make_model(cfg)
    root = jax.random.PRNGKey(cfg.seed)
    # Parameters (and an [init] checkpoint's fit to this model) are settled before anything is
    # written. TAO parameter shapes depend only on the descriptor size, not on the molecule.
    mol = cfg.geometries[0]
    d_desc = descriptor_size(cfg.hartree_fock.basis, cfg.hartree_fock.elements)
    template = geometry_data(
        mol, np.zeros((mol.n_atoms, mol.n_up, d_desc)), np.zeros((mol.n_atoms, mol.n_dn, d_desc)), DTYPE
    )
    params = init_params(model, stage_key(root, STAGE_INIT, 0), template)
    init_file = cfg.init.checkpoint or None
    if init_file and resume_path is None:
        params = restore_params(init_file, params, cfg)

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    write_resolved_config(cfg, out / "config.toml")
    systems = prepare_systems(cfg, Path(cfg.hartree_fock.cache or out / "hf_cache.h5"), log)
    log(
        f"model: size {cfg.model.size}, {cfg.model.orbitals} orbitals, "
        f"{cfg.model.n_determinants} determinants, {count_parameters(params)} parameters"
    )
    energy_log = EnergyLog(out / "energies.h5", [s.name for s in systems], [s.reference for s in systems])
    stop = StopFlag().install()
    trainer = VMCTrainer(cfg, model, systems, root, log, finetune=bool(init_file), stop=stop)

    if resume_path is not None:
        params = trainer.load(resume_path, params)
        energy_log.truncate(trainer.step)
        log(f"resumed from {resume_path} at step {trainer.step}")
    else:
        energy_log.truncate(0)  # a run that died before its first checkpoint starts over
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
            params, walkers = pretrain(cfg, model, params, systems, walkers, root, log, stop)
        trainer.init_states(params, walkers)

    if not (init_file and cfg.init.mode == "evaluate"):
        params = trainer.optimize(params, energy_log, ckpt_dir)
    save_params(ckpt_dir / "params.h5", jax.device_get(params), params_metadata(cfg))
    energy_log.flush()

    if cfg.evaluation.steps > 0:
        results = evaluate(cfg, params, systems, trainer, root, log, stop)
        energy_log.write_evaluation(results, len(systems), cfg.evaluation.steps)
    return out


def pretrain(cfg, model, params, systems, electrons, root, log, stop: StopFlag):
    """HF pre-training, geometries round-robin. Returns (params, walkers sampled from HF)."""
    tx, step_fn = make_pretrain_step(model, cfg.pretraining.learning_rate, cfg.mcmc.steps_per_update)
    opt_state = tx.init(params)
    n = cfg.pretraining.batch_size or cfg.optimization.batch_size
    hf_batched = jax.vmap(hf_log_abs_psi, (None, 0, None))
    walkers = {
        s.index: init_walkers(
            hf_batched, s.hf_orbitals, s.data, electrons[s.index][:n], cfg.mcmc.initial_step_size
        )
        for s in systems
    }
    t0 = time.perf_counter()
    for t in range(cfg.pretraining.steps):
        s = systems[t % len(systems)]
        params, opt_state, walkers[s.index], loss, pmove = step_fn(
            params,
            opt_state,
            s.data,
            s.hf_orbitals,
            walkers[s.index],
            stage_key(root, STAGE_PRETRAIN, t),
        )
        stop.check("during HF pre-training (no checkpoint yet: a rerun starts over)")
        if (t + 1) % cfg.output.print_every == 0 or t + 1 == cfg.pretraining.steps:
            log(
                f"pretrain {t + 1:>6}/{cfg.pretraining.steps}  {s.name:<12} loss {float(loss):.3e}  "
                f"pmove {float(pmove):.2f}  {(time.perf_counter() - t0) / (t + 1):.3f} s/step"
            )
    # Pre-trained walkers (HF distribution) replace the first n starting positions.
    sampled = {i: electrons[i].copy() for i in electrons}
    for i, w in walkers.items():
        sampled[i][:n] = np.asarray(w.electrons)[: sampled[i].shape[0]]
    return params, sampled


class VMCTrainer:
    """Variational optimization, one geometry per step chosen by the scheduler.

    Owns everything a checkpoint must hold: the step, optimizer state, scheduler statistics and
    every geometry's `GeometryState` (walkers, step size, ages, clipping statistics).
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
    ):
        self.cfg, self.systems, self.root, self.log, self.stop = cfg, systems, root, log, stop
        o = cfg.optimization
        if finetune:  # fresh optimizer, lower lr, schedule offset, constant damping (METHOD 2.3)
            schedule = ScheduleSettings(
                o.learning_rate * cfg.init.lr_factor,
                o.lr_decay_steps,
                cfg.init.lr_offset,
                cfg.init.damping,
                cfg.init.damping,
                o.damping_decay_steps,
                o.norm_constraint,
            )
        else:
            schedule = ScheduleSettings(
                o.learning_rate,
                o.lr_decay_steps,
                o.lr_offset,
                o.damping,
                o.damping_initial,
                o.damping_decay_steps,
                o.norm_constraint,
            )
        self.log_abs_psi = log_abs_psi_fn(model)
        self.local_energy = make_local_energy(self.log_abs_psi, "forward")
        self.optimizer = make_optimizer(o.optimizer, make_energy_loss(self.log_abs_psi), schedule)
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
        self.states: dict[int, GeometryState] = {}
        self.opt_state = None
        self.step = 0

    def init_states(self, params, electrons: dict[int, np.ndarray]) -> None:
        batched = jax.vmap(self.log_abs_psi, (None, 0, None))
        for s in self.systems:
            walkers = init_walkers(
                batched, params, s.data, electrons[s.index], self.cfg.mcmc.initial_step_size
            )
            self.states[s.index] = new_geometry_state(walkers)

    def burn(self, params, s: System, steps: int, stage: int) -> None:
        walkers = self.states[s.index].walkers
        for chunk in range(steps // BURN_IN_CHUNK):
            walkers = self._burn_in(
                params, s.data, walkers, stage_key(self.root, stage, s.index * 100003 + chunk)
            )
        self.states[s.index] = self.states[s.index].replace(walkers=walkers)

    def save(self, params, ckpt_dir: Path) -> Path:
        path = checkpoint_path(ckpt_dir, self.step)
        save_checkpoint(
            path,
            step=self.step,
            params=jax.device_get(params),
            optimizer_state=jax.device_get(self.opt_state),
            geometry_states={i: jax.device_get(st) for i, st in self.states.items()},
            scheduler_state=self.scheduler.state_dict(),
            config_toml=tomli_w.dumps(config_to_dict(self.cfg)),
            geometries=[m.to_dict() for m in self.cfg.geometries],
            metadata=params_metadata(self.cfg),
        )
        apply_retention(ckpt_dir, self.cfg.checkpoint.keep_last, self.cfg.checkpoint.keep_every)
        return path

    def load(self, path: Path, params_template):
        """Restores step, params, optimizer, scheduler and all geometry states from `path`."""
        n_walkers = self.cfg.optimization.batch_size
        shapes = {
            s.index: GeometryState(
                walkers=WalkerState(
                    electrons=np.zeros((n_walkers, s.data.n_electrons, 3), np.float32),
                    log_prob=np.zeros(n_walkers, np.float32),
                    age=np.zeros(n_walkers, np.int32),
                    step_size=np.zeros((), np.float32),
                ),
                clip_center=np.zeros((), np.float32),
                clip_width=np.zeros((), np.float32),
            )
            for s in self.systems
        }
        # The optimizer state's structure comes from the optimizer itself (shapes only).
        s = self.systems[0]
        batch = VMCBatch(
            jnp.zeros((n_walkers, s.data.n_electrons, 3), DTYPE), jnp.zeros(n_walkers, DTYPE), s.data
        )
        opt_template = jax.eval_shape(self.optimizer.init, params_template, self.root, batch)
        templates = {"params": params_template, "geometry_state": shapes, "optimizer": opt_template}
        if not checkpoint_has_optimizer_state(path):
            templates["optimizer"] = None
        ckpt = load_checkpoint(path, templates)
        if sorted(ckpt.geometry_states) != sorted(shapes):
            raise CheckpointError(
                f"{path}: holds {len(ckpt.geometry_states)} geometries, job has {len(shapes)}"
            )
        to_device = lambda tree: jax.tree_util.tree_map(jnp.asarray, tree)  # noqa: E731
        self.states = {i: to_device(st) for i, st in ckpt.geometry_states.items()}
        self.scheduler.load_state_dict(ckpt.scheduler_state)
        self.step = ckpt.step
        self.opt_state = None if ckpt.optimizer_state is None else to_device(ckpt.optimizer_state)
        params = to_device(ckpt.params)
        return params

    def optimize(self, params, energy_log: EnergyLog, ckpt_dir: Path):
        cfg, o = self.cfg, self.cfg.optimization
        every_steps, every_seconds = cfg.checkpoint.every_steps, 60.0 * cfg.checkpoint.every_minutes
        t_start = last_ckpt = time.perf_counter()
        window: list[float] = []
        consecutive_skips = 0
        while self.step < o.steps:
            t, t_step = self.step, time.perf_counter()
            s = self.systems[self.scheduler.next_geometry(t)]
            if self.scheduler.n_updates[s.index] == 0:  # first visit: equilibrate its walkers
                self.burn(params, s, cfg.mcmc.burn_in_steps, STAGE_BURN_IN)
            k_sample, k_opt = jax.random.split(stage_key(self.root, STAGE_VMC, t))
            self.states[s.index], batch, stats = self.sample_and_measure(
                params, s.data, self.states[s.index], k_sample
            )
            if self.opt_state is None:
                self.opt_state = self.optimizer.init(params, k_opt, batch)
            stats = jax.device_get(stats)
            if stats["n_nonfinite"] == 0:
                params, self.opt_state, opt_stats = self.optimizer.step(
                    params, self.opt_state, k_opt, batch, t
                )
                opt_stats = jax.device_get(opt_stats)
            else:  # never step on a batch with non-finite local energies
                self.log(
                    f"step {t}: {int(stats['n_nonfinite'])} non-finite local energies on {s.name}; skipped"
                )
                opt_stats = {"learning_rate": np.nan, "damping": np.nan, "grad_norm": np.nan}
            jax.block_until_ready(params)
            step_time = time.perf_counter() - t_step
            self.scheduler.record(s.index, t, float(stats["variance"]))
            self.step = t + 1
            energy_log.append(
                step=t,
                geometry=s.index,
                energy=stats["energy"],
                variance=stats["variance"],
                clipped_energy=stats["clipped_energy"],
                pmove=stats["pmove"],
                step_size=stats["step_size"],
                learning_rate=opt_stats["learning_rate"],
                damping=opt_stats["damping"],
                grad_norm=opt_stats["grad_norm"],
                time=time.perf_counter() - t_start,
                step_time=step_time,
            )
            window.append(step_time)
            if self.step % cfg.output.print_every == 0 or self.step == o.steps:
                err = float(np.sqrt(stats["variance"] / batch.electrons.shape[0]))
                self.log(
                    f"step {self.step:>7}/{o.steps}  {s.name:<12}"
                    f" E = {float(stats['energy']):.5f} +- {err:.5f} Ha"
                    f"  var {float(stats['variance']):.4f}  pmove {float(stats['pmove']):.2f}"
                    f"  {np.median(window):.3f} s/step"
                )
                window.clear()
                energy_log.flush()  # readable by h5py while the run is live
            due = (every_steps and self.step % every_steps == 0) or (
                every_seconds and time.perf_counter() - last_ckpt >= every_seconds
            )
            diverged = consecutive_skips >= MAX_CONSECUTIVE_SKIPS
            if due or self.step == o.steps or self.stop.requested is not None or diverged:
                energy_log.flush()  # the log never lags behind the newest checkpoint
                path = self.save(params, ckpt_dir)
                last_ckpt = time.perf_counter()
                self.log(f"checkpoint {path}")
            if diverged:
                raise RunDivergedError(
                    f"{consecutive_skips} consecutive updates skipped; last good state in {path}"
                )
            if self.stop.requested is not None:
                self.stop.check(f"at step {self.step}; checkpoint {path}")
        return params


def evaluate(cfg, params, systems, trainer: VMCTrainer, root, log, stop: StopFlag) -> dict:
    """Unclipped E_L over `evaluation.steps` samples per geometry with fixed parameters;
    blocking error bars on the series of per-step walker means. Starts from the trainer's
    walkers of each geometry."""
    states = trainer.states
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
        e = energies_fn(params, walkers.electrons, geometry)
        return walkers, jnp.mean(e), jnp.var(e)

    results = {}
    log(f"evaluation: {cfg.evaluation.steps} steps per geometry")
    for s in systems:
        trainer.burn(params, s, cfg.evaluation.burn_in_steps, STAGE_EVAL)
        w = states[s.index].walkers
        means, variances = [], []
        for t in range(cfg.evaluation.steps):
            w, m, v = eval_step(params, s.data, w, stage_key(root, STAGE_EVAL, 1_000_000 * (s.index + 1) + t))
            means.append(float(m))
            variances.append(float(v))
            stop.check("during evaluation (training is checkpointed: a rerun re-evaluates)")
        states[s.index] = states[s.index].replace(walkers=w)
        b = blocking_analysis(np.array(means))
        results[s.index] = {
            "energy": b.mean,
            "error": b.error,
            "variance": float(np.mean(variances)),
            "autocorrelation_time": b.autocorrelation_time,
            "n_samples": b.n_samples * w.electrons.shape[0],
        }
        ref = (
            ""
            if s.reference is None
            else f"  ref {s.reference:.5f}  diff {1000 * (b.mean - s.reference):+.2f} mHa"
        )
        log(f"eval {s.name:<16} E = {b.mean:.6f} +- {b.error:.6f} Ha  tau {b.autocorrelation_time:.1f}{ref}")
    return results
