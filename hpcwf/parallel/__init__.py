"""MPI control plane and JAX data plane: see hpcwf.parallel.context."""

from hpcwf.parallel.context import AXIS, ParallelContext, init_parallel
from hpcwf.parallel.sharding import geometry_cost, shard_geometries

__all__ = ["AXIS", "ParallelContext", "geometry_cost", "init_parallel", "shard_geometries"]
