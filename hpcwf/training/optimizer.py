"""Optimizers behind one interface (hpcwf.types.Optimizer), split into a local and a global part.

    opt = make_optimizer(kind, loss, schedule, total_walkers)
    state = opt.init(params, key, batch)                       # identical on every rank
    stats = opt.local_statistics(params, state, key, batch)    # this rank's geometry
    params, state, info = update(params, state, stats, step)   # update = ctx.make_global_update(opt.apply)

`local_statistics` is jitted per molecule shape and has no collectives: loss, gradients and
(for K-FAC) the curvature estimate updated with this rank's batch, all parameter-shaped, with
a leading axis of length 1. `apply` runs inside the global program on every device of every
rank: it averages those statistics with `lax.pmean` over AXIS and updates the parameters, so
parameters stay identical everywhere. This split is what lets ranks hold molecules of
different sizes in lock-step (see hpcwf.parallel.context).

The loss is `energy_loss` (hpcwf.training.vmc): its value is a surrogate whose gradient is
2 <(E_clip - <E_clip>) d log|psi|>, and it registers log|psi| as the mean of a normal
predictive distribution, so K-FAC's Fisher is that of |psi|^2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from hpcwf.io.config import InitConfig, OptimizationConfig
from hpcwf.parallel.collectives import AXIS, pmean_coalesced
from hpcwf.training import kfac_adapter
from hpcwf.training.kfac_adapter import kfac_jax  # kfac-jax made to work with this jax
from hpcwf.training.schedule import damping, learning_rate
from hpcwf.types import Loss, Optimizer


@dataclasses.dataclass(frozen=True)
class ScheduleSettings:
    """The optimizer's schedules and K-FAC settings for one run (no defaults of its own: they
    are the `[optimization]` keys of hpcwf.io.config, see `from_config`).

    lr(t) = learning_rate / (1 + (t + lr_offset) / lr_decay_steps)
    damping(t) = max(damping, damping_initial * exp(-t / damping_decay_steps))
    norm constraint, with g the gradient and F^-1 g the preconditioned gradient (kfac-jax
    Optimizer, norm_constraint; DeepErwin's kfac-jax fork, norm_constraint_mode):
      "fisher_scaled": the step d = -lr F^-1 g is scaled down until  d.F.d  = lr^2 g.F^-1 g <= c
      "fisher":        F^-1 g is scaled down until g.F^-1 g <= c, then d = -lr F^-1 g
    curvature_ema: weight of the old curvature estimate in its moving average.
    """

    learning_rate: float
    lr_decay_steps: float
    lr_offset: float
    damping: float
    damping_initial: float
    damping_decay_steps: float
    norm_constraint: float
    norm_constraint_mode: str
    curvature_ema: float

    @classmethod
    def from_config(cls, o: OptimizationConfig, init: InitConfig | None = None) -> ScheduleSettings:
        """The settings of `[optimization]` `o`; with `init` (fine-tuning from a checkpoint,
        METHOD 2.3) the schedule offset is init.lr_offset (the paper's one lr reduction:
        32000 steps into a 6000-step decay, 6.3x), the lr is multiplied by init.lr_factor
        (1 by default) and the damping is constant init.damping
        (hpcwf.io.config.finetune_schedule prints the result)."""
        fields = {f.name: getattr(o, f.name) for f in dataclasses.fields(cls)}
        if init is not None:
            fields.update(
                learning_rate=o.learning_rate * init.lr_factor,
                lr_offset=init.lr_offset,
                damping=init.damping,
                damping_initial=init.damping,
            )
        return cls(**fields)

    def lr(self, t):
        return learning_rate(t, self.learning_rate, self.lr_decay_steps, self.lr_offset)

    def damping_at(self, t):
        return damping(t, self.damping, self.damping_initial, self.damping_decay_steps)


@struct.dataclass
class LocalStatistics:
    """One rank's contribution to an update; every leaf has a leading axis of length 1.

    loss: [1]; grads: parameter tree; curvature: K-FAC estimator state after this rank's
    batch entered its moving average (not yet averaged over ranks), None for first-order
    optimizers.
    """

    loss: jnp.ndarray
    grads: Any
    curvature: Any = None


@jax.jit
def all_finite(tree) -> jax.Array:
    """True (bool scalar) if no floating leaf of `tree` holds a NaN or an infinity; integer,
    boolean and key leaves are not checked. A training step is accepted only if its new
    parameters and optimizer state pass (the VMC stage rolls the step back otherwise)."""
    checks = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


def _leading_axis(tree):
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], tree)


def pmean_statistics(stats: LocalStatistics) -> LocalStatistics:
    """All statistics averaged over every device of every rank, in one all-reduce (inside
    the global program)."""
    return pmean_coalesced(stats)


class RepeatedDenseBlock(kfac_jax.RepeatedDenseKroneckerFactored):
    """kfac-jax's block for dense layers applied along extra axes, safe when a layer sees no data.

    kfac-jax scales this block's curvature by 1 / (average number of non-masked repeats per
    walker), masking a repeat when its output gradient is exactly zero. Some of our layers have
    no unmasked repeat on some molecules: the context GNN's edge MLP on a single atom (its only
    edge is the self-edge, multiplied by 0), the electron-electron stream of a one-electron
    system, and every layer of the spin-down orbital maps when n_dn = 0 (applied to
    [n_walkers, n_atoms, 0, d] arrays). There the average is 0 and kfac-jax's scale is 1/0 =
    inf, which turns the preconditioned gradient, and through the norm constraint every
    parameter, into NaN. Those layers' factors are then exactly zero, so any finite scale gives
    the same (damping-only) block; we use 1.

    Checkpoints are unaffected: the block state is kfac-jax's own.
    """

    def state_dependent_scale(self, state: kfac_jax.RepeatedDenseKroneckerFactored.State):
        repeats = state.average_repeats.value
        seen = repeats > 0  # also False for NaN (0/0 before the first update)
        return jnp.where(seen, 1.0 / jnp.where(seen, repeats, 1.0), 1.0)


class KFACOptimizer:
    """kfac-jax's K-FAC with its step split in two (kfac-jax's own internals, reached through
    hpcwf.training.kfac_adapter, so the curvature blocks, inverses, damping and norm constraint
    are exactly kfac-jax's):

    local:  curvature-estimate update with this rank's batch, loss and gradients
    global: average of all of it over AXIS in one all-reduce (what kfac-jax's `sync` and
            pmean do leaf by leaf), inverse cache update, preconditioning, norm constraint,
            parameter update. Inverses are computed redundantly on every device rather than
            distributed (kfac-jax's default), which would cost one more collective per block.

    No momentum, no adaptive damping: the fixed schedules of METHOD 2.3.
    """

    def __init__(self, loss: Loss, schedule: ScheduleSettings, total_walkers: int):
        self.schedule = schedule
        self.total_walkers = total_walkers
        # multi_device=True makes kfac-jax reduce over AXIS wherever it is bound (the global
        # program); in the local program it is unbound and every reduction is a no-op.
        self._opt = kfac_jax.Optimizer(
            value_and_grad_func=jax.value_and_grad(loss, has_aux=True),
            l2_reg=0.0,
            value_func_has_aux=True,
            learning_rate_schedule=schedule.lr,
            damping_schedule=schedule.damping_at,
            norm_constraint=schedule.norm_constraint,
            estimation_mode="fisher_exact",
            curvature_ema=schedule.curvature_ema,
            inverse_update_period=1,
            min_damping=1e-8,
            num_burnin_steps=0,
            multi_device=True,
            pmap_axis_name=AXIS,
            distributed_inverses=False,
            distributed_precon_apply=False,
            include_norms_in_stats=True,
            layer_tag_to_block_ctor={"repeated_dense": RepeatedDenseBlock},
        )
        self._init = jax.jit(self._init_fn)
        self._local = jax.jit(self._local_fn)

    def _init_fn(self, params, key, batch):
        with self._opt.staging_context():
            return kfac_adapter.init_state(self._opt, params, key, batch)

    def init(self, params, key, batch):
        if not self._opt.finalized:
            self._opt.finalize(params, key, batch)
        return self._init(params, key, batch)

    def _local_fn(self, params, state, key, batch):
        opt = self._opt
        with opt.staging_context():
            _, _, _, precon_damping = kfac_adapter.schedules(opt, state)
            loss, grads, curvature = kfac_adapter.local_curvature_loss_and_grads(
                opt, params, state, key, batch, precon_damping, ema_old=self.schedule.curvature_ema
            )
        return LocalStatistics(*_leading_axis((loss, grads, curvature)))

    def local_statistics(self, params, state, key, batch) -> LocalStatistics:
        return self._local(params, state, key, batch)

    def curvature_block_types(self) -> dict[str, str]:
        """{parameter path: curvature block class} after `init` (kfac_adapter.curvature_block_types)."""
        return kfac_adapter.curvature_block_types(self._opt)

    def apply(self, params, state, stats: LocalStatistics, step):
        """Inside the global program. Mirrors kfac_jax.Optimizer._step for momentum 0 and
        fixed schedules."""
        opt = self._opt
        with opt.staging_context():
            lr, momentum, damp, precon_damping = kfac_adapter.schedules(opt, state)
            stats = pmean_statistics(stats)
            loss, grads = stats.loss, stats.grads
            # The factors are now averaged over ranks (the cache was identical already).
            state = kfac_adapter.with_synced_curvature(state, stats.curvature)
            state = kfac_adapter.update_inverses(opt, state, precon_damping)
            precon = kfac_adapter.precondition(opt, state, grads, precon_damping)
            # kfac-jax bounds lr^2 g.F^-1 g; "fisher" bounds g.F^-1 g (lr applied afterwards).
            scale = lr if self.schedule.norm_constraint_mode == "fisher_scaled" else jnp.ones_like(lr)
            precon = kfac_adapter.apply_norm_constraint(opt, grads, precon, scale)
            delta, coefficients = kfac_adapter.momentum_step(opt, state, precon, grads, lr, momentum, damp)
            params = jax.tree_util.tree_map(jnp.add, params, delta)
            state = kfac_adapter.advance(state, delta, self.total_walkers)
        info = {
            "loss": loss,
            "learning_rate": -coefficients[0],
            "damping": damp,
            "grad_norm": kfac_jax.utils.norm(grads),
            "update_norm": kfac_jax.utils.norm(delta),
        }
        return params, state, info


class OptaxOptimizer:
    """A first-order optax transform with the same local/global split (gradients only)."""

    def __init__(self, loss: Loss, tx: optax.GradientTransformation, lr: Callable[[Any], Any]):
        self._tx, self._lr = tx, lr
        grad_fn = jax.value_and_grad(loss, has_aux=True)

        @jax.jit
        def _local(params, state, key, batch):
            (loss_value, _), grads = grad_fn(params, batch)
            return LocalStatistics(*_leading_axis((loss_value, grads)))

        self._local = _local

    def init(self, params, key, batch):
        return self._tx.init(params)

    def local_statistics(self, params, state, key, batch) -> LocalStatistics:
        return self._local(params, state, key, batch)

    def apply(self, params, state, stats: LocalStatistics, step):
        stats = pmean_statistics(stats)
        loss, grads = stats.loss, stats.grads
        updates, state = self._tx.update(grads, state, params)
        info = {
            "loss": loss,
            "learning_rate": jnp.asarray(self._lr(step), jnp.float32),
            "damping": jnp.asarray(jnp.nan, jnp.float32),
            "grad_norm": optax.global_norm(grads),
            "update_norm": optax.global_norm(updates),
        }
        return optax.apply_updates(params, updates), state, info


def adam_optimizer(loss: Loss, schedule: ScheduleSettings) -> OptaxOptimizer:
    """Adam with global-norm clipping at 1 and the lr schedule (the `optimizer = "adam"` option)."""
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.scale_by_adam(),
        optax.scale_by_schedule(lambda t: -schedule.lr(t)),
    )
    return OptaxOptimizer(loss, tx, schedule.lr)


def make_optimizer(kind: str, loss: Loss, schedule: ScheduleSettings, total_walkers: int) -> Optimizer:
    """`kind` is "kfac" or "adam"; `total_walkers` = walkers per step over all ranks."""
    if kind == "kfac":
        return KFACOptimizer(loss, schedule, total_walkers)
    if kind == "adam":
        return adam_optimizer(loss, schedule)
    raise ValueError(f"unknown optimizer {kind!r}")
