"""Learning-rate and damping schedules, and the choice of geometry for each step."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def learning_rate(step, lr0: float, decay_steps: float, offset: float = 0.0):
    """lr(t) = lr0 / (1 + (t + offset) / decay_steps); works on ints and traced arrays."""
    return lr0 / (1.0 + (step + offset) / decay_steps)


def damping(step, minimum: float, initial: float, decay_steps: float):
    """damping(t) = max(minimum, initial * exp(-t / decay_steps)); constant if initial <= minimum."""
    return jnp.maximum(minimum, initial * jnp.exp(-jnp.asarray(step, jnp.float32) / decay_steps))


class GeometryScheduler:
    """Picks ONE geometry per optimization step.

    Round-robin for `warmup_rounds` passes over the dataset, then the geometry with the
    largest standard deviation of the energy (sqrt of the last E_L variance), except that a
    geometry not optimized for `max_age` steps is picked first so none starves.

    State (numpy, checkpointable): `last_step` [n_geometries] (-1 = never), `std` [n_geometries],
    `n_updates` [n_geometries].
    """

    def __init__(self, n_geometries: int, warmup_rounds: int = 1, max_age: int = 0):
        self.n_geometries = n_geometries
        self.warmup_rounds = warmup_rounds
        self.max_age = max_age if max_age > 0 else 2 * n_geometries
        self.last_step = np.full(n_geometries, -1, dtype=np.int64)
        self.std = np.full(n_geometries, np.inf)
        self.n_updates = np.zeros(n_geometries, dtype=np.int64)

    def next_geometry(self, step: int) -> int:
        if step < self.warmup_rounds * self.n_geometries:
            return step % self.n_geometries
        age = step - self.last_step
        starving = np.flatnonzero(age >= self.max_age)
        if starving.size:
            return int(starving[np.argmax(age[starving])])
        return int(np.argmax(self.std))

    def record(self, index: int, step: int, variance: float) -> None:
        self.last_step[index] = step
        self.n_updates[index] += 1
        if np.isfinite(variance):
            self.std[index] = float(np.sqrt(variance))

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"last_step": self.last_step, "std": self.std, "n_updates": self.n_updates}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.last_step = np.asarray(state["last_step"], np.int64).copy()
        self.std = np.asarray(state["std"], np.float64).copy()
        self.n_updates = np.asarray(state["n_updates"], np.int64).copy()
