"""The parallel layer: MPI ranks (control plane) and JAX devices of all ranks (data plane).

Roles:
    mpi4py   rank/size, broadcasts of decisions made on rank 0, gathers of log rows and
             checkpoint state to rank 0, the per-step agreement on flags, abort; within a
             group of ranks that share a geometry (`[parallel] ranks_per_geometry`), the
             exchange of local energies, acceptance and walkers (`walker_group`).
    JAX      one global mesh over every device of every rank, axis `AXIS`; the parameter
             update (gradients and K-FAC statistics) is reduced in-graph over it.

Each rank runs its own *local* programs (MCMC, local energies, gradients and curvature
statistics of one geometry) on its local devices; these have no cross-rank collectives, so
ranks may hold molecules of different sizes and compile different local programs. The
*global* program (`make_global_update`) sees only parameter-shaped inputs, so it is the same
program on every rank and its collectives match. Ranks meet in it once per step.

Launch: `mpiexec -n N hpcwf run JOB.toml` or `srun hpcwf run JOB.toml`; without a launcher
there is one rank and `jax.distributed` is not used.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from hpcwf.parallel.collectives import AXIS, LOCAL_AXIS
from hpcwf.types import GlobalUpdate


def visible_gpus() -> tuple[str, ...]:
    """The GPUs this process may use, as CUDA names them (ordinals, `GPU-<uuid>`, `MIG-<uuid>`),
    without initializing a JAX backend: CUDA_VISIBLE_DEVICES where set (SLURM sets it for its
    GPU allocations), else one per /dev/nvidia<N>. Empty without GPUs, without a JAX GPU plugin
    (jax-cuda12-plugin), or when JAX_PLATFORMS names no GPU platform."""
    platforms = os.environ.get("JAX_PLATFORMS", "").lower()
    if platforms and not any(p in platforms for p in ("cuda", "gpu", "rocm")):
        return ()
    if not _gpu_backend_installed():
        return ()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return parse_cuda_visible_devices(visible)
    if not os.path.isdir("/dev"):
        return ()
    return tuple(
        sorted((d[6:] for d in os.listdir("/dev") if d.startswith("nvidia") and d[6:].isdigit()), key=int)
    )


def parse_cuda_visible_devices(value: str) -> tuple[str, ...]:
    """The devices a CUDA_VISIBLE_DEVICES value names, in order: ordinals, `GPU-<uuid>`,
    `MIG-<uuid>`; like CUDA, the list ends at the first entry that is none of these ("-1",
    "NoDevFiles", an empty entry)."""
    names = []
    for entry in (e.strip() for e in value.split(",")):
        if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            break
        names.append(entry)
    return tuple(names)


def local_gpu_ids(visible_by_local_rank: list[tuple[str, ...]], local_rank: int) -> list[int] | None:
    """Which of its visible GPUs (CUDA ordinals within CUDA_VISIBLE_DEVICES) this rank takes,
    given what every rank on this node sees (`visible_gpus()` of each, by local rank).

    - no GPU visible here: None (CPU; nothing to choose).
    - every rank of the node sees the same GPUs (mpiexec, or srun without GPU binding): the
      node's ranks split them in equal consecutive shares, rank k taking share k; leftover
      GPUs (count not a multiple of the ranks) stay unused.
    - the ranks see different GPUs (srun --gpus-per-task / --gpu-bind, or a wrapper that sets
      CUDA_VISIBLE_DEVICES per rank): each rank takes all of its own.

    The choice is always explicit: left unset, `jax.distributed.initialize` would take device
    [SLURM_LOCALID] under srun, which does not exist when SLURM binds one GPU per task.

    Raises:
        LaunchError: the ranks share GPUs but are more than the GPUs (a GPU per rank at least).
    """
    mine = visible_by_local_rank[local_rank]
    if not mine:
        return None
    n_ranks = len(visible_by_local_rank)
    if any(v != mine for v in visible_by_local_rank):
        return list(range(len(mine)))
    if len(mine) < n_ranks:
        from hpcwf.errors import LaunchError

        raise LaunchError(
            f"{n_ranks} ranks on this node share {len(mine)} GPU(s) ({','.join(mine)}): start at "
            f"most {len(mine)} rank(s) per node, or bind GPUs per task (srun --gpus-per-task)"
        )
    per_rank = len(mine) // n_ranks
    return list(range(local_rank * per_rank, (local_rank + 1) * per_rank))


CPU_DEVICES_VARIABLE = "HPCWF_CPU_DEVICES"


def cpu_devices_per_rank(
    value: str | None, cores_by_local_rank: list[frozenset[int]], local_rank: int
) -> int:
    """How many JAX CPU devices one rank runs on (its walkers are split over them).

    `value` is HPCWF_CPU_DEVICES: unset or "1" -> 1 (XLA's own threads only); "auto" -> the
    rank's share of the cores it may run on (its CPU affinity mask; ranks of one node that
    share a mask, as unbound `mpiexec` ranks do, split it evenly); N -> N. One device per
    core runs the walker-parallel parts (sampling, local energies, gradients) on every core
    at once, where XLA's intra-op threads leave cores idle for these small matrices.
    `cores_by_local_rank`: the affinity mask of every rank on this node.

    Raises LaunchError for anything else.
    """
    from hpcwf.errors import LaunchError

    if value is None or value.strip() == "":
        return 1
    value = value.strip().lower()
    if value == "auto":
        mine = cores_by_local_rank[local_rank]
        sharing = sum(1 for mask in cores_by_local_rank if mask == mine)
        return max(1, len(mine) // sharing)
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise LaunchError(f"{CPU_DEVICES_VARIABLE}={value!r}: use 'auto' or a whole number >= 1")


def _gpu_backend_installed() -> bool:
    import importlib.util

    return any(
        importlib.util.find_spec(name) is not None
        for name in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin")
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class ParallelContext:
    """Where this process stands: MPI rank/size, local rank, devices and meshes.

    Attributes:
        rank, size: MPI rank and number of ranks (1 without a launcher).
        local_rank, local_size: rank and number of ranks on this node.
        comm: mpi4py communicator, None for one rank.
        exit_comm: duplicate of comm for the exit agreement (None for one rank).
        local_mesh: this rank's devices, axis LOCAL_AXIS (walkers are split over it).
        global_mesh: every device of every rank, axis AXIS.
        group_size: ranks that share one geometry's walkers (`[parallel] ranks_per_geometry`,
            `with_ranks_per_geometry`): ranks g*group_size ... (g+1)*group_size - 1 form
            group g, which holds one shard of the dataset; 1: every rank its own shard.
        group_comm: mpi4py communicator of this rank's group (None when group_size is 1).
    """

    rank: int
    size: int
    local_rank: int
    local_size: int
    comm: Any
    local_mesh: Any
    global_mesh: Any
    exit_comm: Any = None  # a duplicate of comm, so the exit agreement never meets a pending collective
    group_size: int = 1
    group_comm: Any = None
    # contexts of each group size made from this one (a communicator split once per k)
    _rank_groups: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def rank_group(self) -> int:
        """Index of this rank's group (= its shard of the dataset)."""
        return self.rank // self.group_size

    @property
    def group_rank(self) -> int:
        """Place of this rank in its group: it holds that share of the group's walkers."""
        return self.rank % self.group_size

    @property
    def n_rank_groups(self) -> int:
        return self.size // self.group_size

    def with_ranks_per_geometry(self, k: int) -> ParallelContext:
        """This context with its ranks in groups of `k` consecutive ranks that share each
        geometry's walkers (collective the first time for a k: every rank calls it with the
        same k; later calls reuse the group's communicator). ValueError when k does not divide
        the number of ranks."""
        if k == self.group_size:
            return self
        if k < 1 or self.size % k:
            raise ValueError(f"{k} does not divide the {self.size} rank(s) of this launch")
        if k not in self._rank_groups:
            group_comm = None if k == 1 else self.comm.Split(color=self.rank // k, key=self.rank)
            self._rank_groups[k] = dataclasses.replace(self, group_size=k, group_comm=group_comm)
        return self._rank_groups[k]

    def walker_group(self, n_local: int):
        """The `hpcwf.mcmc.WalkerGroup` of this rank when it holds `n_local` walkers of each
        geometry of its group's shard: its first walker, and the exchange of per-walker arrays
        and scalars with the other ranks of its group (host allgathers)."""
        from hpcwf.mcmc import ONE_RANK, WalkerGroup

        if self.group_size == 1:
            return ONE_RANK
        import numpy as np

        def gather(values):
            return self.local_replicated(np.concatenate(self.group_comm.allgather(np.asarray(values))))

        def mean(value):
            value = np.asarray(value)
            return value.dtype.type(np.mean(self.group_comm.allgather(value)))

        return WalkerGroup(first_walker=self.group_rank * n_local, gather=gather, mean=mean)

    def group_allgather(self, obj) -> list:
        """Every rank's `obj` of this rank's group, in group-rank order."""
        return [obj] if self.group_comm is None else self.group_comm.allgather(obj)

    def group_bcast(self, obj):
        """The `obj` of the first rank of this rank's group, on every rank of the group."""
        return obj if self.group_comm is None else self.group_comm.bcast(obj, root=0)

    @property
    def n_local_devices(self) -> int:
        return self.local_mesh.devices.size

    # ---- control plane (host objects) ----------------------------------------------------
    def bcast(self, obj, root: int = 0):
        return obj if self.comm is None else self.comm.bcast(obj, root=root)

    def gather(self, obj) -> list | None:
        """List of every rank's `obj` on rank 0, None elsewhere."""
        if self.comm is None:
            return [obj]
        return self.comm.gather(obj, root=0)

    def gather_per_rank_group(self, obj) -> list | None:
        """List of every group's `obj` (its first rank's) on rank 0, None elsewhere: for what
        the ranks of a group hold alike (its geometry's statistics), logged once per group."""
        parts = self.gather(obj)
        return None if parts is None else parts[:: self.group_size]

    def any(self, flags: list[bool]) -> list[bool]:
        """Element-wise OR over ranks (one small allreduce)."""
        return [bool(f) for f in self.max([float(bool(f)) for f in flags])]

    def max(self, values):
        """Element-wise maximum over ranks of a float array (one small allreduce)."""
        import numpy as np

        local = np.ascontiguousarray(values, np.float64)
        if self.comm is None:
            return local
        from mpi4py import MPI

        total = np.empty_like(local)
        self.comm.Allreduce(local, total, op=MPI.MAX)
        return total

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()

    def root_decides(self, fn: Callable[[], Any]):
        """Runs `fn` on rank 0 only and gives every rank its result, or raises on every rank
        the InputError it raised (so all ranks fail alike, none waits in a collective)."""
        from hpcwf.errors import InputError

        outcome = None
        if self.is_root:
            try:
                outcome = ("ok", fn())
            except InputError as err:
                outcome = ("error", err)
        kind, value = self.bcast(outcome)
        if kind == "error":
            raise value
        return value

    def agree_to_stop(self, timeout: float = 60.0) -> bool:
        """After a failure that every rank should meet (bad input, signal): True if all ranks
        reached this point within `timeout` s, so each may exit normally with the same code."""
        if self.comm is None:
            return True
        request = self.exit_comm.Ibarrier()
        deadline = time.monotonic() + timeout
        while not request.Test():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def abort(self, code: int) -> None:
        """Ends every rank of the job now (MPI_Abort); used when one rank fails alone."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.comm is not None:
            self.comm.Abort(code)
        os._exit(code)

    # ---- data plane (device arrays) ------------------------------------------------------
    def local_replicated(self, tree):
        """Places a pytree on every local device (replicated)."""
        import jax
        from jax.sharding import NamedSharding, PartitionSpec

        return jax.device_put(tree, NamedSharding(self.local_mesh, PartitionSpec()))

    def local_split(self, tree):
        """Splits a pytree's leading (walker) axis over the local devices."""
        import jax
        from jax.sharding import NamedSharding, PartitionSpec

        return jax.device_put(tree, NamedSharding(self.local_mesh, PartitionSpec(LOCAL_AXIS)))

    def _to_global(self, tree, stacked: bool):
        import jax
        from jax.sharding import NamedSharding, PartitionSpec

        spec = PartitionSpec(AXIS) if stacked else PartitionSpec()
        sharding = NamedSharding(self.global_mesh, spec)
        n_global = self.global_mesh.devices.size

        def convert(x):
            shards = [s.data for s in x.addressable_shards]
            shape = (n_global * x.shape[0], *x.shape[1:]) if stacked else x.shape
            return jax.make_array_from_single_device_arrays(shape, sharding, shards)

        return jax.tree_util.tree_map(convert, tree)

    def _to_local(self, tree):
        import jax
        from jax.sharding import NamedSharding, PartitionSpec

        sharding = NamedSharding(self.local_mesh, PartitionSpec())

        def convert(x):
            return jax.make_array_from_single_device_arrays(
                x.shape, sharding, [s.data for s in x.addressable_shards]
            )

        return jax.tree_util.tree_map(convert, tree)

    def make_global_update(self, apply: Callable) -> GlobalUpdate:
        """Wraps `apply(params, state, stats, step) -> (params, state, info)` into the global
        program: `stats` are this rank's parameter-shaped statistics with a leading axis of
        length 1 (as `local_statistics` returns them); inside `apply` that axis is gone and
        `jax.lax.pmean(..., AXIS)` averages over every device of every rank. Inputs and
        outputs are local arrays replicated over this rank's devices."""
        import jax
        import jax.numpy as jnp
        from jax.sharding import PartitionSpec as P

        def body(params, state, stats, step):
            stats = jax.tree_util.tree_map(lambda x: x[0], stats)
            return apply(params, state, stats, step)

        program = jax.jit(
            jax.shard_map(
                body,
                mesh=self.global_mesh,
                in_specs=(P(), P(), P(AXIS), P()),
                out_specs=P(),
                check_vma=False,
            )
        )

        first_call = [True]

        def update(params, state, stats, step: int):
            step = self.local_replicated(jnp.asarray(step, jnp.int32))
            args = (
                self._to_global(params, False),
                self._to_global(state, False),
                self._to_global(stats, True),
                self._to_global(step, False),
            )
            if first_call[0] and self.comm is not None:
                # Compile first (jit reuses it), then meet, then run: the first collective
                # starts gloo's rendezvous, which gives up after 30 s. Ranks reach it at very
                # different times when some load their programs from the persistent
                # compilation cache (JAX writes entries from rank 0 only) while others compile.
                program.lower(*args).compile()
                self.barrier()
                first_call[0] = False
            return self._to_local(program(*args))

        return update


_CONTEXT: ParallelContext | None = None


def init_parallel() -> ParallelContext:
    """Sets up MPI and JAX for this process (once); later calls return the same context.

    With more than one rank: rank 0 picks a coordinator address and broadcasts it, every rank
    calls `jax.distributed.initialize`; on GPUs each rank takes the GPUs `local_gpu_ids` gives
    it (its share of the node's GPUs, or all of its own where SLURM binds GPUs per task), on
    CPU the collectives go through gloo. One rank uses every GPU it sees.
    """
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    comm, rank, size, local_rank, local_size = None, 0, 1, 0, 1
    gpu_ids: list[int] | None = None  # this rank's GPUs among those it sees; None: CPU or one rank
    cores_by_local_rank = [frozenset(os.sched_getaffinity(0))]
    if _launched_by_mpi():
        from mpi4py import MPI

        world = MPI.COMM_WORLD
        slurm_tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1") or 1)
        if world.Get_size() == 1 and slurm_tasks > 1:
            from hpcwf.errors import LaunchError

            raise LaunchError(
                f"srun started {slurm_tasks} tasks but MPI sees 1 rank in each (no PMI): "
                "use `srun --mpi=pmi2` or `mpiexec`"
            )
        if world.Get_size() > 1:
            comm = world
            rank, size = world.Get_rank(), world.Get_size()
            node = world.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
            local_rank, local_size = node.Get_rank(), node.Get_size()
            visible_by_local_rank = node.allgather(visible_gpus())
            cores_by_local_rank = node.allgather(frozenset(os.sched_getaffinity(0)))
            node.Free()
            # Decided on every rank, failed on every rank (no rank waits alone in a collective).
            from hpcwf.errors import LaunchError

            try:
                gpu_ids, problem = local_gpu_ids(visible_by_local_rank, local_rank), None
            except LaunchError as err:
                gpu_ids, problem = None, str(err)
            problems = [p for p in world.allgather(problem) if p]
            if problems:
                raise LaunchError(problems[0])

    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if not _gpu_backend_installed():
        # Every rank evaluates the variable (a bad value fails on every rank alike).
        n_cpu = cpu_devices_per_rank(os.environ.get(CPU_DEVICES_VARIABLE), cores_by_local_rank, local_rank)
        if n_cpu > 1:
            jax.config.update("jax_num_cpu_devices", n_cpu)
    if size > 1:
        address = None
        if rank == 0:
            host = os.environ.get("HPCWF_COORDINATOR_HOST") or socket.gethostname()
            address = f"{host}:{_free_port()}"
        address = comm.bcast(address, root=0)
        kwargs = {}
        if gpu_ids is not None and not os.environ.get("JAX_LOCAL_DEVICE_IDS"):  # the user's choice wins
            kwargs["local_device_ids"] = gpu_ids
        # jax.distributed installs its own SIGTERM handler (the coordination service's
        # preemption notifier), which would replace hpcwf's graceful stop (hpcwf.signals)
        # and leave a signalled job running: the handlers from before are put back.
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
        jax.distributed.initialize(address, num_processes=size, process_id=rank, **kwargs)
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)

    import numpy as np
    from jax.sharding import Mesh

    if comm is not None:
        counts = comm.allgather(jax.local_device_count())
        if len(set(counts)) > 1:  # the global pmean over devices would weight ranks unequally
            from hpcwf.errors import LaunchError

            raise LaunchError(
                f"ranks have different numbers of devices {counts}: give every rank as many GPUs"
            )
    local_mesh = Mesh(np.array(jax.local_devices()), (LOCAL_AXIS,))
    global_mesh = Mesh(np.array(jax.devices()), (AXIS,))
    exit_comm = None if comm is None else comm.Dup()
    _CONTEXT = ParallelContext(rank, size, local_rank, local_size, comm, local_mesh, global_mesh, exit_comm)
    return _CONTEXT


def _launched_by_mpi() -> bool:
    """True under mpiexec/mpirun/srun (their environment variables), so that a plain `hpcwf
    run` on a workstation never initializes MPI."""
    markers = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")
    if any(m in os.environ for m in markers):
        return True
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1")) or 1) > 1 and (
        "SLURM_STEP_ID" in os.environ
    )
