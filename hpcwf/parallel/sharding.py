"""Deterministic assignment of the geometry dataset to ranks, in cost classes.

Ranks advance in lock-step, one geometry each per step, so a step lasts as long as the most
expensive geometry picked on any rank. Geometries are therefore grouped into cost classes
(equal modelled cost, `geometry_cost`; a class too small for every rank to hold one is merged
into its next more expensive neighbour) and every rank holds members of every class: at each
step all ranks then pick from the same class (`GeometryScheduler`, `[scheduler] cost_classes`)
and nobody waits for another rank's bigger molecule.
"""

from __future__ import annotations

from collections.abc import Sequence


def geometry_cost(n_electrons: int, n_atoms: int) -> float:
    """Relative cost of one optimization step on a geometry, n_el (n_el + 2 n_atoms): the
    electron-electron stream grows as n_el^2, the electron-nucleus features and the TAO
    orbitals (one per atom and electron) as n_el n_atoms. Fitted to the measured step times of
    the 18 foundation compounds (benchmarks/lockstep_model.py measure, model S, CPU,
    benchmarks/results/step_costs_cpu.csv): c (n_el^2 + 2.02 n_el n_atoms), 7 % rms, against
    13 % for n_el^2 alone, which misses that C2H6 (18 electrons, 8 atoms) costs 1.3x H2O2
    (18 electrons, 4 atoms). Equal for geometries of one molecule shape."""
    return float(n_electrons * (n_electrons + 2 * n_atoms))


def cost_classes(costs: Sequence[float], n_ranks: int) -> list[int]:
    """Cost class of each geometry (0 = cheapest): geometries of equal cost form a class, and
    a class with fewer than `n_ranks` members is merged into the next more expensive one (the
    most expensive into the one below it), so that every rank can hold a member of every class.
    One class when there are fewer than 2 * n_ranks geometries.

    Returns one label per geometry; raises ValueError if there are fewer geometries than ranks.
    """
    _check(costs, n_ranks)
    groups: list[list[int]] = []
    for cost in sorted(set(costs)):
        members = [i for i, c in enumerate(costs) if c == cost]
        if groups and len(groups[-1]) < n_ranks:
            groups[-1].extend(members)
        else:
            groups.append(members)
    if len(groups) > 1 and len(groups[-1]) < n_ranks:
        groups[-2].extend(groups.pop())
    labels = [0] * len(costs)
    for label, members in enumerate(groups):
        for i in members:
            labels[i] = label
    return labels


def shard_geometries(
    costs: Sequence[float], n_ranks: int, classes: Sequence[int] | None = None
) -> list[list[int]]:
    """Splits geometry indices 0..len(costs)-1 over `n_ranks` ranks.

    Classes (`cost_classes`; default: one class) are dealt from the most expensive down, each in
    order of decreasing cost (ties: dataset order), over the ranks ordered by how many
    geometries they hold so far (fewest first, ties by rank): full laps in "snake" order
    (forward, backward, ...: a rank's expensive members are paired with cheaper ones), the last,
    partial lap to the ranks holding fewest. So every rank holds a member of every class with at
    least `n_ranks` members, and shard sizes differ by at most one. With one class this is the
    snake from rank 0. The result depends only on (costs, n_ranks, classes).

    Returns one sorted list of dataset indices per rank; raises ValueError if there are fewer
    geometries than ranks (a rank without a geometry could not take part in the updates).
    """
    _check(costs, n_ranks)
    classes = [0] * len(costs) if classes is None else list(classes)
    shards: list[list[int]] = [[] for _ in range(n_ranks)]
    for c in sorted(set(classes), reverse=True):
        members = sorted((i for i in range(len(costs)) if classes[i] == c), key=lambda i: (-costs[i], i))
        order = sorted(range(n_ranks), key=lambda r: (len(shards[r]), r))
        full_laps = len(members) // n_ranks
        for position, index in enumerate(members):
            lap, offset = divmod(position, n_ranks)
            backward = lap % 2 == 1 and lap < full_laps
            shards[order[n_ranks - 1 - offset if backward else offset]].append(index)
    return [sorted(s) for s in shards]


def warmup_slots(shards: Sequence[Sequence[int]], classes: Sequence[int]) -> list[tuple[int, int]]:
    """The steps of one warm-up round as (class, k): every rank optimizes the k-th member of
    `class` in its shard (k modulo its count), so that the ranks stay within one class and every
    geometry is visited at least once per round. Classes in increasing cost."""
    n_classes = max(classes) + 1
    longest = [max(sum(1 for i in s if classes[i] == c) for s in shards) for c in range(n_classes)]
    return [(c, k) for c in range(n_classes) for k in range(longest[c])]


def _check(costs: Sequence[float], n_ranks: int) -> None:
    if n_ranks < 1:
        raise ValueError("n_ranks must be >= 1")
    if len(costs) < n_ranks:
        raise ValueError(f"{len(costs)} geometries cannot be shared by {n_ranks} ranks (need >= 1 each)")
