"""Optimizers behind one interface: K-FAC (kfac-jax) and Adam (optax).

    opt = make_optimizer(...); state = opt.init(params, key, batch)
    params, state, stats = opt.step(params, state, key, batch, step)

The loss is `energy_loss` (hpcwf.training.vmc): its value is a surrogate whose gradient is
2 <(E_clip - <E_clip>) d log|psi|>, and it registers log|psi| as the mean of a normal
predictive distribution, so K-FAC's Fisher is that of |psi|^2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import kfac_jax
import optax

from hpcwf.training.schedule import damping, learning_rate


@dataclasses.dataclass(frozen=True)
class ScheduleSettings:
    """lr(t) = lr0 / (1 + (t + offset)/decay); damping(t) = max(min, initial * exp(-t/decay))."""

    learning_rate: float
    lr_decay_steps: float
    lr_offset: float
    damping: float
    damping_initial: float
    damping_decay_steps: float
    norm_constraint: float

    def lr(self, t):
        return learning_rate(t, self.learning_rate, self.lr_decay_steps, self.lr_offset)

    def damping_at(self, t):
        return damping(t, self.damping, self.damping_initial, self.damping_decay_steps)


class KFACOptimizer:
    def __init__(self, loss: Callable, schedule: ScheduleSettings):
        self.schedule = schedule
        self._opt = kfac_jax.Optimizer(
            value_and_grad_func=jax.value_and_grad(loss, has_aux=True),
            l2_reg=0.0,
            value_func_has_aux=True,
            learning_rate_schedule=schedule.lr,
            damping_schedule=schedule.damping_at,
            norm_constraint=schedule.norm_constraint,
            estimation_mode="fisher_exact",
            curvature_ema=0.95,
            inverse_update_period=1,
            min_damping=1e-8,
            num_burnin_steps=0,
            multi_device=False,
            include_norms_in_stats=True,
        )

    def init(self, params, key, batch):
        return self._opt.init(params, key, batch)

    def step(self, params, state, key, batch, step: int):
        params, state, stats = self._opt.step(params, state, key, batch=batch, momentum=0.0)
        return (
            params,
            state,
            {
                "learning_rate": stats["learning_rate"],
                "damping": stats["damping"],
                "grad_norm": stats.get("grad_norm", jnp.nan),
                "update_norm": stats.get("update_norm", jnp.nan),
            },
        )


class AdamOptimizer:
    def __init__(self, loss: Callable, schedule: ScheduleSettings):
        self.schedule = schedule
        self._tx = optax.chain(
            optax.clip_by_global_norm(1.0),
            optax.scale_by_adam(),
            optax.scale_by_schedule(lambda t: -schedule.lr(t)),
        )
        grad_fn = jax.grad(loss, has_aux=True)

        @jax.jit
        def _step(params, opt_state, batch):
            grads, _ = grad_fn(params, batch)
            updates, opt_state = self._tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, optax.global_norm(grads)

        self._step = _step

    def init(self, params, key, batch):
        return self._tx.init(params)

    def step(self, params, state, key, batch, step: int):
        params, state, grad_norm = self._step(params, state, batch)
        return (
            params,
            state,
            {
                "learning_rate": self.schedule.lr(step),
                "damping": jnp.nan,
                "grad_norm": grad_norm,
                "update_norm": jnp.nan,
            },
        )


def make_optimizer(kind: str, loss: Callable, schedule: ScheduleSettings):
    """`kind` is "kfac" or "adam"."""
    return {"kfac": KFACOptimizer, "adam": AdamOptimizer}[kind](loss, schedule)
