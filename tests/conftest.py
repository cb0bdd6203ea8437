import os
import tempfile

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# The suite runs many tiny jobs in subprocesses; JAX's persistent compilation cache lets the
# later ones skip most of their ~20 s of compilation (inherited by every subprocess).
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "hpcwf-test-jax-cache")
)

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
