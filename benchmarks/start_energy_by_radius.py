#!/usr/bin/env python3
"""Where a pre-trained network's energy differs from Hartree-Fock's (issue 18, "VMC starts at
Hartree-Fock"): per-electron local kinetic energy t_i = -1/2 (lap_i + |grad_i|^2) log|psi| and
electron-nucleus potential, binned by each electron's distance to the nearest nucleus, for the
network on samples of |psi_net|^2 and for the HF determinant on samples of |psi_HF|^2. Bins are
summed per walker (Ha) with the mean number of electrons in each, so the totals are <T> and
<V_eN>; -V/T far from HF's (virial ratio 2 for an optimally scaled psi) says the network's
density is too diffuse (> 2) or too compact (< 2).

    python benchmarks/start_energy_by_radius.py RUN_JOB.toml [--sweeps 12] [--walkers 256]

RUN_JOB.toml is a job whose run dir holds `checkpoints/params.h5` (e.g. a run with
`[optimization] steps = 0`, which saves the pre-trained parameters) and the HF cache; the first
geometry is analysed. A benchmark (slow on a CPU: one Hessian-vector product per coordinate).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from hpcwf.io.config import load_job
from hpcwf.io.hf_cache import HartreeFockCache
from hpcwf.mcmc import init_walkers, initial_electrons, make_mcmc_sweep
from hpcwf.model.geometry import geometry_data
from hpcwf.model.wavefunction import init_params, log_abs_psi_fn
from hpcwf.training.pretrain import hf_log_abs_psi
from hpcwf.workflow import _device_orbitals as device_orbitals
from hpcwf.workflow import make_model, restore_params

EDGES = np.array([0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.5, 3, np.inf])  # bohr


def per_electron_kinetic(log_abs, electrons: jnp.ndarray) -> jnp.ndarray:
    """t_i (Ha) for one walker [n_el, 3] -> [n_el]."""
    flat = electrons.reshape(-1)
    grad_fn = jax.grad(lambda x: log_abs(x.reshape(electrons.shape)))
    grad, hvp = jax.linearize(grad_fn, flat)
    diagonal = jax.vmap(lambda v: jnp.vdot(v, hvp(v)))(jnp.eye(flat.size, dtype=flat.dtype))
    return (-0.5 * (diagonal + grad**2)).reshape(electrons.shape).sum(-1)


def sample_and_bin(log_abs_psi, params, geometry, mol, sweeps: int, walkers: int, seed: int = 1):
    """[n_bins, 3]: electrons per walker, kinetic and e-N potential (Ha per walker) per bin."""
    batched = jax.vmap(log_abs_psi, (None, 0, None))
    sweep = jax.jit(make_mcmc_sweep(batched, 20, 0.5, 20, "nuclear-distance"))
    electrons = initial_electrons(
        np.random.default_rng(seed),
        np.asarray(geometry.nuclei),
        np.asarray(geometry.charges),
        mol.n_up,
        mol.n_dn,
        walkers,
    )
    state = init_walkers(batched, params, geometry, electrons, 0.1)
    key = jax.random.PRNGKey(seed)
    kinetic = jax.jit(jax.vmap(lambda r: per_electron_kinetic(lambda x: log_abs_psi(params, x, geometry), r)))
    t_all, r_all, v_all = [], [], []
    for k in range(20 + sweeps):
        key, sub = jax.random.split(key)
        state, _ = sweep(params, geometry, state, sub)
        if k < 20:  # burn-in
            continue
        r = state.electrons
        dist = jnp.linalg.norm(r[:, :, None] - geometry.nuclei[None, None], axis=-1)
        t_all.append(np.asarray(kinetic(r)))
        r_all.append(np.asarray(dist.min(-1)))
        v_all.append(np.asarray(-(geometry.charges / dist).sum(-1)))
    t, r, v = (np.concatenate(x) for x in (t_all, r_all, v_all))
    n = t.shape[0]
    rows = []
    for lo, hi in zip(EDGES[:-1], EDGES[1:], strict=True):
        m = (r >= lo) & (r < hi)
        rows.append((m.sum() / n, t[m].sum() / n, v[m].sum() / n))
    return np.array(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", type=Path)
    p.add_argument("--sweeps", type=int, default=12)
    p.add_argument("--walkers", type=int, default=256)
    args = p.parse_args()
    cfg = load_job(args.job)
    run = Path(cfg.output.dir)
    mol = cfg.geometries[0]
    basis, elements = cfg.hartree_fock.basis, cfg.hartree_fock.elements
    hf = HartreeFockCache(run / "hf_cache.h5").lookup(mol, basis, elements)
    if hf is None:
        raise SystemExit(f"{run / 'hf_cache.h5'}: no HF result for {mol.name}")
    geometry = geometry_data(mol, hf.descriptors_up, hf.descriptors_dn, jnp.float32, basis, elements)
    model = make_model(cfg)
    params = restore_params(
        str(run / "checkpoints" / "params.h5"), init_params(model, jax.random.PRNGKey(0), geometry), cfg
    )
    orbitals = device_orbitals(hf)  # as pre-training evaluates them
    net = sample_and_bin(log_abs_psi_fn(model), params, geometry, mol, args.sweeps, args.walkers)
    ref = sample_and_bin(hf_log_abs_psi, orbitals, geometry, mol, args.sweeps, args.walkers)
    print(f"{mol.name}: network <T> {net[:, 1].sum():.3f}  <V_eN> {net[:, 2].sum():.3f} Ha;")
    print(f"{'':>{len(mol.name) + 1}} HF      <T> {ref[:, 1].sum():.3f}  <V_eN> {ref[:, 2].sum():.3f} Ha")
    head = ("r bin (bohr)", "el net", "el HF", "T net", "T HF", "dT", "V net", "V HF", "dV")
    print(f"{head[0]:>14} " + " ".join(f"{h:>8}" for h in head[1:]))
    for i, (lo, hi) in enumerate(zip(EDGES[:-1], EDGES[1:], strict=True)):
        a, b = net[i], ref[i]
        print(
            f"{lo:6.2f}-{hi:6.2f}  {a[0]:8.3f} {b[0]:8.3f} {a[1]:8.3f} {b[1]:8.3f} {a[1] - b[1]:+8.3f}"
            f" {a[2]:8.3f} {b[2]:8.3f} {a[2] - b[2]:+8.3f}"
        )


if __name__ == "__main__":
    main()
