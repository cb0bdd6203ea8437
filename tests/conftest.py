import os
import tempfile

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# The suite runs many tiny jobs in subprocesses; JAX's persistent compilation cache lets the
# later ones skip most of their ~20 s of compilation (inherited by every subprocess).
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "hpcwf-test-jax-cache")
)
# Every program, not only those that took over 1 s to compile (JAX's default): a tiny job
# compiles ~400 programs, most under 0.1 s, together ~15 s of its ~50 s of compilation
# (measured on the H2 job of test_training.py: 77 s cold, 44 s warm with the default, 29 s
# warm with every program cached).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# jaxlib 0.9's CPU AOT loader logs an E-level "Target machine feature +prefer-no-scatter is not
# supported" line for every cache hit (a tuning flag it mistakes for a CPU feature); silence the
# C++ log so the CLI tests' one-line `error:` contract sees only hpcwf's own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

import hpcwf  # noqa: E402, F401  (sets XLA_FLAGS before the JAX backend starts: hpcwf/process_defaults.py)

jax.config.update("jax_default_matmul_precision", "highest")
