"""Deterministic, cost-balanced assignment of the geometry dataset to ranks."""

from __future__ import annotations

from collections.abc import Sequence


def geometry_cost(n_electrons: int) -> float:
    """Relative cost of one optimization step on a geometry: the determinants and the
    electron-electron stream grow about as n_el^2 to n_el^3 at these sizes; n_el^2 is used."""
    return float(n_electrons) ** 2


def shard_geometries(costs: Sequence[float], n_ranks: int) -> list[list[int]]:
    """Splits geometry indices 0..len(costs)-1 over `n_ranks` ranks.

    Ranks advance in lock-step, one geometry each per step, so a step costs as much as the
    most expensive geometry picked on any rank. Geometries are therefore dealt in "snake"
    order of decreasing cost (rank 0, 1, ..., N-1, N-1, ..., 0, ...): every shard gets the
    same number of geometries (+-1) and a similar mix of sizes, and the totals are balanced.
    Ties keep dataset order, so the result depends only on (costs, n_ranks).

    Returns one sorted list of dataset indices per rank; raises ValueError if there are fewer
    geometries than ranks (a rank without a geometry could not take part in the updates).
    """
    if n_ranks < 1:
        raise ValueError("n_ranks must be >= 1")
    if len(costs) < n_ranks:
        raise ValueError(f"{len(costs)} geometries cannot be shared by {n_ranks} ranks (need >= 1 each)")
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    shards: list[list[int]] = [[] for _ in range(n_ranks)]
    for position, index in enumerate(order):
        lap, offset = divmod(position, n_ranks)
        rank = offset if lap % 2 == 0 else n_ranks - 1 - offset
        shards[rank].append(index)
    return [sorted(s) for s in shards]
