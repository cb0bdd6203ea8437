import os
import tempfile

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# The suite runs many tiny jobs in subprocesses; JAX's persistent compilation cache lets the
# later ones skip most of their ~20 s of compilation (inherited by every subprocess).
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "hpcwf-test-jax-cache")
)

# jaxlib 0.9's CPU AOT loader logs an E-level "Target machine feature +prefer-no-scatter is not
# supported" line for every cache hit (a tuning flag it mistakes for a CPU feature); silence the
# C++ log so the CLI tests' one-line `error:` contract sees only hpcwf's own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

import hpcwf  # noqa: E402, F401  (sets XLA_FLAGS before the JAX backend starts: hpcwf/process_defaults.py)

jax.config.update("jax_default_matmul_precision", "highest")
