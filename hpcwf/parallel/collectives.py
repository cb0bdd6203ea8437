"""The collectives of the global program: JAX only (no MPI), usable wherever AXIS is bound.

`hpcwf.parallel.context` builds the global program (a shard_map over every device of every
rank, axis AXIS) and owns everything MPI; the code that runs inside that program (the
optimizers' `apply`) reduces over AXIS with the functions here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

AXIS = "kfac_axis"  # kfac-jax's default pmap axis name: the optimizer reduces over it
LOCAL_AXIS = "walkers"  # a rank's local devices share its walkers along this axis


def pmean_coalesced(tree):
    """`lax.pmean(tree, AXIS)` as ONE all-reduce per floating dtype (inside the global
    program): the leaves are concatenated into a buffer, averaged and split again. Per-leaf
    collectives would cost one latency each (hundreds per K-FAC step); integer and boolean
    leaves are left as they are (they must already agree across ranks)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    leaves = [jnp.asarray(x) for x in leaves]
    groups: dict = {}
    for i, x in enumerate(leaves):
        if jnp.issubdtype(x.dtype, jnp.floating):
            groups.setdefault(x.dtype, []).append(i)
    out = list(leaves)
    for indices in groups.values():
        flat = jax.lax.pmean(jnp.concatenate([leaves[i].ravel() for i in indices]), AXIS)
        offset = 0
        for i in indices:
            size = leaves[i].size
            out[i] = flat[offset : offset + size].reshape(leaves[i].shape)
            offset += size
    return jax.tree_util.tree_unflatten(treedef, out)
