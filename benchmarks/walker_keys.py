#!/usr/bin/env python3
"""Cost of drawing MCMC random numbers per walker (hpcwf.mcmc.walker_keys, which makes a batch
shared by several ranks sample as one): one sweep of 20 moves of hpcwf's sampler before the
change (commit f73f860's hpcwf/mcmc.py, one key per draw for the whole batch) and after, on N2,
model S, 256 walkers, "nuclear-distance" proposal, one process; median of 5 jitted sweeps after
a warm-up call, both versions twice, alternating. A benchmark, not a test.

    python benchmarks/walker_keys.py
"""

import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEFORE = "f73f860"


def main() -> None:
    sys.path.insert(0, str(REPO))
    import jax
    import jax.numpy as jnp
    import numpy as np

    from hpcwf import mcmc as after
    from hpcwf.model.geometry import geometry_data
    from hpcwf.model.wavefunction import build_wavefunction, init_params, log_abs_psi_fn
    from hpcwf.systems.hartree_fock import run_hartree_fock
    from hpcwf.systems.molecule import Molecule

    source = subprocess.run(
        ["git", "show", f"{BEFORE}:hpcwf/mcmc.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "mcmc_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("mcmc_before", path)
    before = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(before)

    jax.config.update("jax_default_matmul_precision", "highest")
    mol = Molecule.create("N2", [["N", 0, 0, 0], ["N", 2.068, 0, 0]])
    hf = run_hartree_fock(mol, "STO-6G")
    data = geometry_data(mol, hf.descriptors_up, hf.descriptors_dn, jnp.float32)
    model = build_wavefunction("S", "tao", 4)
    params = init_params(model, jax.random.PRNGKey(0), data)
    batched = jax.vmap(log_abs_psi_fn(model), (None, 0, None))
    walkers = after.start_walkers(data, np.random.default_rng(0).normal(size=(256, mol.n_electrons, 3)), 0.2)
    for name, module in (("before", before), ("after", after)) * 2:
        sweep = jax.jit(module.make_mcmc_sweep(batched, 20, 0.5, 20, "nuclear-distance"))
        jax.block_until_ready(sweep(params, data, walkers, jax.random.PRNGKey(100)))
        times = []
        for i in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready(sweep(params, data, walkers, jax.random.PRNGKey(i)))
            times.append(time.perf_counter() - t0)
        print(
            f"{name:>6} ({BEFORE if name == 'before' else 'this checkout'}): "
            f"{statistics.median(times):.3f} s per 20-move sweep (N2, model S, 256 walkers)",
            flush=True,
        )


if __name__ == "__main__":
    main()
