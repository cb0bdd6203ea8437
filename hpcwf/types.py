"""The functional interfaces of hpcwf, each named once with its arguments, shapes and units.

Factories return these (`log_abs_psi_fn` a `LogAbsPsi`, `make_local_energy` a `LocalEnergy`,
`make_mcmc_sweep` an `MCMCSweep`, ...) and take them as arguments, so a function's type says
what it computes. Everything acts on ONE geometry; functions of one walker are vmapped over
walkers by their callers. Units: lengths bohr, energies Hartree.

Shared vocabulary:
    params    the network parameters, a flax variables pytree ({"params": {...}}); for the
              HF reference (training.pretrain.hf_log_abs_psi) the HartreeFockOrbitals.
    electrons [n_el, 3] (one walker) or [n_walkers, n_el, 3], bohr; the first n_up are spin up.
    geometry  model.geometry.GeometryData: nuclei [n_atoms, 3] bohr, charges [n_atoms], HF
              descriptors [n_atoms, n_up|n_dn, d_desc]; n_up, n_dn, n_atoms from its shapes.
    key       a jax.random key.

Jax-free at import (the annotations are strings), like the modules that read it at import:
hpcwf.model.registry and, through it, the job-file validation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pathlib import Path

    import jax

    from hpcwf.mcmc import WalkerState
    from hpcwf.model.geometry import GeometryData
    from hpcwf.model.wavefunction import ModelHyperparameters
    from hpcwf.training.optimizer import LocalStatistics

Params = Any  # a parameter pytree
OptState = Any  # an optimizer's state pytree (kfac_jax.Optimizer.State, an optax state)
Batch = Any  # the data pytree a loss takes (training.vmc.VMCBatch, training.pretrain.PretrainBatch)
Metrics = Mapping[str, Any]  # named scalars of one step (jax or numpy), e.g. energy (Ha), pmove


class SignedLogPsi(Protocol):
    """(sign, log|psi|) of one walker: the network itself (`Wavefunction.apply`)."""

    def __call__(
        self, params: Params, electrons: jax.Array, geometry: GeometryData
    ) -> tuple[jax.Array, jax.Array]:
        """electrons [n_el, 3] bohr -> (sign of psi, +-1 or 0; log|psi|), two scalars."""
        ...


class LogAbsPsi(Protocol):
    """log|psi| of one walker (model.wavefunction.log_abs_psi_fn): what the local energy, the
    sampler and the energy loss differentiate or vmap."""

    def __call__(self, params: Params, electrons: jax.Array, geometry: GeometryData) -> jax.Array:
        """electrons [n_el, 3] bohr -> log|psi|, a scalar."""
        ...


class BatchedLogAbsPsi(Protocol):
    """log|psi| of a batch of walkers: a LogAbsPsi vmapped over electrons (the sampler's input)."""

    def __call__(self, params: Params, electrons: jax.Array, geometry: GeometryData) -> jax.Array:
        """electrons [n_walkers, n_el, 3] bohr -> log|psi| [n_walkers]."""
        ...


class LocalEnergy(Protocol):
    """E_L = (H psi) / psi of one walker (hamiltonian.make_local_energy)."""

    def __call__(self, params: Params, electrons: jax.Array, geometry: GeometryData) -> jax.Array:
        """electrons [n_el, 3] bohr -> E_L in Hartree, a scalar (V_NN included)."""
        ...


@runtime_checkable
class OrbitalMap(Protocol):
    """The orbitals of the Slater determinants, a flax module (model.orbitals: TAOOrbitals,
    BackflowOrbitals; chosen by name in model.registry.ORBITAL_TYPES)."""

    def __call__(self, h: jax.Array, electrons: jax.Array, geometry: GeometryData) -> jax.Array:
        """Electron embeddings h [n_el, d_emb] and electrons [n_el, 3] (bohr, up first) ->
        Slater matrices Phi [n_det, n_el, n_el]: rows electrons, columns orbitals (the n_up
        up orbitals first); every electron fills every column (full determinants)."""
        ...


@runtime_checkable
class OrbitalMapType(Protocol):
    """An OrbitalMap class as the registry names it: builds its module for a model size."""

    def create(
        self, size: ModelHyperparameters, n_det: int, molecule_shape: tuple[int, int] | None
    ) -> OrbitalMap:
        """The orbital map for architecture `size` and `n_det` determinants. `molecule_shape`
        (n_electrons, n_atoms) is the one shape a non-transferable map is built for (None for
        transferable ones, which take any molecule); ValueError if one is needed and missing."""
        ...


class MCMCSweep(Protocol):
    """Metropolis-Hastings steps of one geometry's walkers (mcmc.make_mcmc_sweep)."""

    def __call__(
        self, params: Params, geometry: GeometryData, state: WalkerState, key: jax.Array
    ) -> tuple[WalkerState, jax.Array]:
        """-> (walkers after the sweep, fraction of proposals accepted, a scalar in [0, 1])."""
        ...


class Loss(Protocol):
    """A training objective (training.vmc.make_energy_loss, training.pretrain.make_pretrain_loss)."""

    def __call__(self, params: Params, batch: Batch) -> tuple[jax.Array, Mapping[str, jax.Array]]:
        """-> (scalar whose gradient is the update direction, auxiliary scalars by name)."""
        ...


@runtime_checkable
class Optimizer(Protocol):
    """An optimizer split into a local and a global part (training.optimizer: KFACOptimizer,
    OptaxOptimizer), so that ranks holding different molecules meet in one update."""

    def init(self, params: Params, key: jax.Array, batch: Batch) -> OptState:
        """The initial state, identical on every rank."""
        ...

    def local_statistics(
        self, params: Params, state: OptState, key: jax.Array, batch: Batch
    ) -> LocalStatistics:
        """This rank's loss, gradients (and curvature estimate), each with a leading axis of
        length 1; no collectives."""
        ...

    def apply(
        self, params: Params, state: OptState, stats: LocalStatistics, step: jax.Array
    ) -> tuple[Params, OptState, Metrics]:
        """Inside the global program (parallel.context.make_global_update): averages `stats`
        over every device of every rank and returns (params, state, info), info holding loss,
        learning_rate, damping, grad_norm and update_norm."""
        ...


class GlobalUpdate(Protocol):
    """An Optimizer's `apply` compiled into the program all ranks run together
    (parallel.context.ParallelContext.make_global_update)."""

    def __call__(
        self, params: Params, state: OptState, stats: LocalStatistics, step: int
    ) -> tuple[Params, OptState, Metrics]:
        """Local arrays in, local arrays out; parameters and state stay identical on all ranks."""
        ...


class Stage(Protocol):
    """A stage (HF pre-training, VMC optimization, evaluation: hpcwf.training.stages) as the
    stage runner (hpcwf.runner) drives it; its metrics go to the energy log by name.

    `state` is any object with an int `step` (steps completed) and `replace`. `step` raises
    nothing on non-finite numbers: it rolls back and reports `rolled_back` = 1 in its metrics.
    """

    tag: int  # folded into the root key (stage_key)
    n_steps: int  # the loop runs while state.step < n_steps
    table: str | None  # energies.h5 table of the metrics rows (log_schema), None: no rows

    def step(self, state: Any, key: jax.Array) -> tuple[Any, Metrics]:
        """One step (collective): -> (the new state, this rank's row of `table` without the
        columns the runner adds: step, time, step_time; energies in Ha, lengths in bohr)."""

    def progress_line(
        self, state: Any, rows: list[dict] | None, window: list[float], elapsed: float
    ) -> str | None:
        """Rank 0's progress line after the step that made `state`; rows: the step's rows of
        all ranks; window: step times (s) since the last line; elapsed: s since the start."""

    def rejection_line(self, step: int, rows: list[dict] | None, in_a_row: int) -> str:
        """Rank 0's line for a rolled-back step."""

    def diverged_message(self, step: int, in_a_row: int, checkpoint: Path | None) -> str:
        """Why the run stops after MAX_CONSECUTIVE_REJECTED rejections in a row."""

    def stopped_message(self, signal: str, state: Any, checkpoint: Path | None) -> str:
        """Why the run stops on a signal (`signal`: e.g. "SIGTERM")."""
