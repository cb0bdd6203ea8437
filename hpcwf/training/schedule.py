"""Learning-rate and damping schedules, and the choice of geometry for each step."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from hpcwf.parallel.sharding import warmup_slots


def learning_rate(step, lr0: float, decay_steps: float, offset: float = 0.0):
    """lr(t) = lr0 / (1 + (t + offset) / decay_steps); works on ints and traced arrays."""
    return lr0 / (1.0 + (step + offset) / decay_steps)


def damping(step, minimum: float, initial: float, decay_steps: float):
    """damping(t) = max(minimum, initial * exp(-t / decay_steps)); constant if initial <= minimum."""
    return jnp.maximum(minimum, initial * jnp.exp(-jnp.asarray(step, jnp.float32) / decay_steps))


class GeometryScheduler:
    """Picks ONE geometry per optimization step, on each rank from its shard.

    Warm-up (`warmup_rounds` rounds): every geometry in turn, class by class (`warmup_slots`),
    so that all ranks work on the same cost class. Then the paper's choice: the geometry with
    the largest standard deviation of the energy (sqrt of its last E_L variance), except that a
    geometry not optimized for `max_age` steps is picked first so none starves. With cost
    classes (hpcwf.parallel.sharding) the choice is made in two stages: the class first, from
    every rank's `class_priority` reduced by maximum (`pick_class`: the same class on all
    ranks), then the geometry within that class on each rank. With one class (or one rank and
    one geometry per class) it is the plain argmax over the shard.

    Args:
        n_geometries: geometries of this rank's shard.
        warmup_rounds, max_age: [scheduler] settings (max_age 0: 2 * n_geometries).
        classes: cost class of each geometry of the shard [n_geometries]; default all 0.
        slots: one warm-up round as (class, k) steps, the same on every rank
            (`hpcwf.parallel.sharding.warmup_slots`); default: the shard in order.

    State (numpy, checkpointable): `last_step` [n_geometries] (-1 = never), `std` [n_geometries],
    `n_updates` [n_geometries].
    """

    def __init__(
        self,
        n_geometries: int,
        warmup_rounds: int = 1,
        max_age: int = 0,
        classes: np.ndarray | None = None,
        slots: list[tuple[int, int]] | None = None,
    ):
        self.n_geometries = n_geometries
        self.warmup_rounds = warmup_rounds
        self.max_age = max_age if max_age > 0 else 2 * n_geometries
        self.classes = np.zeros(n_geometries, np.int64) if classes is None else np.asarray(classes, np.int64)
        self.n_classes = int(self.classes.max()) + 1 if n_geometries else 0
        # Default: this shard alone, class by class.
        self.slots = warmup_slots([range(n_geometries)], self.classes) if slots is None else list(slots)
        self.last_step = np.full(n_geometries, -1, dtype=np.int64)
        self.std = np.full(n_geometries, np.inf)
        self.n_updates = np.zeros(n_geometries, dtype=np.int64)

    def in_warmup(self, step: int) -> bool:
        return step < self.warmup_rounds * len(self.slots)

    def class_priority(self, step: int) -> np.ndarray:
        """[n_classes, 2] (largest age among this rank's starving members, -1 if none; largest
        std among its members, -inf if none): reduced by maximum over ranks, then `pick_class`."""
        age = step - self.last_step
        out = np.full((self.n_classes, 2), [-1.0, -np.inf])
        for c in range(self.n_classes):
            members = self.classes == c
            starving = members & (age >= self.max_age)
            if starving.any():
                out[c, 0] = age[starving].max()
            if members.any():
                out[c, 1] = self.std[members].max()
        return out

    @staticmethod
    def pick_class(priority: np.ndarray) -> int:
        """The class of the next step from the rank-reduced `class_priority`: the one holding
        the longest-starving geometry, else the one holding the largest std (ties: cheaper)."""
        if (priority[:, 0] >= 0).any():
            return int(np.argmax(priority[:, 0]))
        return int(np.argmax(priority[:, 1]))

    def next_geometry(self, step: int, cls: int | None = None) -> int:
        """Position in the shard of the geometry of `step`; after warm-up from class `cls`
        (None: any class)."""
        if self.in_warmup(step):
            c, k = self.slots[step % len(self.slots)]
            members = np.flatnonzero(self.classes == c)
            return int(members[k % members.size])
        members = np.arange(self.n_geometries) if cls is None else np.flatnonzero(self.classes == cls)
        age = step - self.last_step[members]
        starving = np.flatnonzero(age >= self.max_age)
        if starving.size:
            return int(members[starving[np.argmax(age[starving])]])
        return int(members[np.argmax(self.std[members])])

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
