"""Process-wide settings that numpy and JAX read from the environment once, when they start.

`apply()` runs when `hpcwf` is imported (`hpcwf/__init__.py`), so `hpcwf run`, the MPI ranks,
SLURM jobs, the benchmarks and a script that imports hpcwf all get them before numpy or a JAX
backend starts. A value the user set in the environment always wins.

- `OPENBLAS_NUM_THREADS=1`: OpenBLAS threads fight XLA's for the cores (1.5-6x slower steps
  on small CPUs).
- `XLA_FLAGS` gets `--xla_cpu_enable_concurrency_optimized_scheduler=false`. With XLA:CPU's
  concurrency-optimized HLO scheduler (the default), jaxlib 0.10.2 deadlocks in N2's K-FAC
  statistics program (14 electrons, 256 walkers, model S, on 2 threads): the first VMC step
  never returns, with every XLA thread idle. Neither `--xla_cpu_multi_thread_eigen=false`,
  nor turning off YNNPACK/XNNPACK/oneDNN fusions or the fusion emitters, nor synchronous
  dispatch avoided it; one core (`taskset -c 0`) or this flag did. The flag only changes the
  order of the CPU program's operations, never a result, and is ignored on GPUs.
  `tests/test_process_defaults.py` runs that N2 step. (hpcwf session 8, issue 11.)
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import MutableMapping

OPENBLAS_THREADS_VARIABLE = "OPENBLAS_NUM_THREADS"
XLA_FLAGS_VARIABLE = "XLA_FLAGS"
# flag name -> value; appended to XLA_FLAGS unless the flag is already there.
XLA_FLAG_DEFAULTS: dict[str, str] = {"xla_cpu_enable_concurrency_optimized_scheduler": "false"}


def missing_xla_flags(current: str | None, defaults: dict[str, str] = XLA_FLAG_DEFAULTS) -> list[str]:
    """The flags of `defaults`, as `--name=value`, that `current` (an XLA_FLAGS value, or None)
    does not set (the user's value wins). Flags are whitespace-separated, as XLA parses them."""
    present = {f.lstrip("-").split("=", 1)[0] for f in (current or "").split()}
    return [f"--{name}={value}" for name, value in defaults.items() if name not in present]


def xla_flags_with_defaults(current: str | None, defaults: dict[str, str] = XLA_FLAG_DEFAULTS) -> str:
    """`current` (an XLA_FLAGS value, or None) with `missing_xla_flags` appended."""
    return " ".join((current or "").split() + missing_xla_flags(current, defaults))


def _jax_backend_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return False


def apply(environ: MutableMapping[str, str] = os.environ) -> None:
    """Put hpcwf's defaults into `environ` (the process environment). Warns (RuntimeWarning)
    when the XLA flags come too late: a JAX backend started before hpcwf was imported has
    already read XLA_FLAGS."""
    environ.setdefault(OPENBLAS_THREADS_VARIABLE, "1")
    current = environ.get(XLA_FLAGS_VARIABLE)
    missing = missing_xla_flags(current)
    if not missing:
        return  # the user's XLA_FLAGS is left exactly as written
    if _jax_backend_started():
        warnings.warn(
            f"hpcwf was imported after a JAX backend had started, so XLA_FLAGS lacks {' '.join(missing)} "
            "(see hpcwf/process_defaults.py); import hpcwf first or set it in the environment",
            RuntimeWarning,
            stacklevel=3,
        )
    environ[XLA_FLAGS_VARIABLE] = xla_flags_with_defaults(current)
