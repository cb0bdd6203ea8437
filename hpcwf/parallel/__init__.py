"""MPI control plane (hpcwf.parallel.context) and JAX data plane (its global program, whose
collectives are in hpcwf.parallel.collectives)."""

from hpcwf.parallel.collectives import AXIS
from hpcwf.parallel.context import ParallelContext, init_parallel
from hpcwf.parallel.sharding import geometry_cost, shard_geometries

__all__ = ["AXIS", "ParallelContext", "geometry_cost", "init_parallel", "shard_geometries"]
