#!/usr/bin/env python3
"""Which MCMC proposal serves core and valence electrons: autocorrelation of their radii.

Samples the Hartree-Fock density |psi_HF|^2 (pyscf, the job's default STO-6G basis, the
exact density HF pre-training samples) of atoms with hpcwf's sampler, once per proposal of
`hpcwf.mcmc.PROPOSALS`, with the step size adapted to the default target acceptance. After
burn-in it records, every move, per walker:

    core radius     the smallest electron-nucleus distance (a 1s electron),
    valence radius  the mean distance of the electrons other than the two nearest,

and prints their autocorrelation at lags of 1, 20 (one VMC sweep) and 100 moves, and the
integrated autocorrelation time in moves (Sokal's window, c = 5), averaged over walkers.
Lower is better: fewer moves per independent sample.

    python benchmarks/mcmc_autocorrelation.py [--atoms O Ne] [--walkers 256] [--moves 2000]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import hpcwf  # noqa: F401  (process defaults before the JAX backend starts)
from hpcwf.mcmc import PROPOSALS, init_walkers, initial_electrons, make_mcmc_sweep
from hpcwf.model.geometry import geometry_data
from hpcwf.systems.hartree_fock import run_hartree_fock
from hpcwf.systems.molecule import Molecule
from hpcwf.training.pretrain import HartreeFockOrbitals, hf_log_abs_psi

SPINS = {"H": 1, "He": 0, "Li": 1, "Be": 0, "B": 1, "C": 2, "N": 3, "O": 2, "F": 1, "Ne": 0}


def autocorrelation(series: np.ndarray, lag: int) -> float:
    """Mean over walkers of the lag-`lag` autocorrelation; series [n_moves, n_walkers]."""
    x = series - series.mean(axis=0)
    return float(np.mean(np.sum(x[lag:] * x[:-lag], axis=0) / np.sum(x * x, axis=0)))


def integrated_time(series: np.ndarray, c: float = 5.0) -> float:
    """tau = 1 + 2 sum_k rho(k), summed up to the first window M >= c tau (Sokal 1997)."""
    x = series - series.mean(axis=0)
    n = x.shape[0]
    f = np.fft.rfft(x, n=2 * n, axis=0)
    acf = np.fft.irfft(f * np.conj(f), axis=0)[:n].mean(axis=1)
    rho = acf / acf[0]
    tau = 1.0
    for m in range(1, n):
        tau = 1.0 + 2.0 * rho[1 : m + 1].sum()
        if m >= c * tau:
            break
    return float(tau)


def measure(symbol: str, proposal: str, n_walkers: int, n_moves: int, seed: int = 0) -> dict:
    mol = Molecule.create(symbol, [[symbol, 0.0, 0.0, 0.0]], spin=SPINS[symbol])
    hf = run_hartree_fock(mol, "STO-6G")
    data = geometry_data(mol, hf.descriptors_up, hf.descriptors_dn, jnp.float32)
    orbitals = HartreeFockOrbitals(
        basis=jax.tree_util.tree_map(
            lambda x: jnp.asarray(x, jnp.float32) if x.dtype.kind == "f" else x, hf.basis()
        ),
        mo_coeff_up=jnp.asarray(hf.mo_coeff_up, jnp.float32),
        mo_coeff_dn=jnp.asarray(hf.mo_coeff_dn, jnp.float32),
    )
    batched = jax.vmap(hf_log_abs_psi, (None, 0, None))
    electrons = initial_electrons(
        np.random.default_rng(seed), mol.coords, mol.charges, mol.n_up, mol.n_dn, n_walkers
    )
    walkers = init_walkers(batched, orbitals, data, electrons, 0.2)
    adapt = jax.jit(make_mcmc_sweep(batched, 10, proposal=proposal))
    one_move = jax.jit(make_mcmc_sweep(batched, 1, proposal=proposal))
    key = jax.random.PRNGKey(seed)
    for i in range(100):  # 1000 moves of burn-in, adapting the step size every 10
        walkers, _ = adapt(orbitals, data, walkers, jax.random.fold_in(key, i))
    step_size = walkers.step_size
    core, valence, accepted = [], [], []
    for i in range(n_moves):
        walkers, acc = one_move(orbitals, data, walkers, jax.random.fold_in(key, 10_000 + i))
        walkers = walkers.replace(step_size=step_size)  # fixed step size while measuring
        r = np.sort(np.linalg.norm(np.asarray(walkers.electrons), axis=-1), axis=1)
        core.append(r[:, 0])
        valence.append(r[:, 2:].mean(axis=1) if r.shape[1] > 2 else r[:, -1])
        accepted.append(float(acc))
    core, valence = np.asarray(core), np.asarray(valence)
    row = {
        "atom": symbol,
        "proposal": proposal,
        "step_size": float(step_size),
        "acceptance": np.mean(accepted),
    }
    for name, series in (("core", core), ("valence", valence)):
        for lag in (1, 20, 100):
            row[f"{name}_rho{lag}"] = autocorrelation(series, lag)
        row[f"{name}_tau"] = integrated_time(series)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--atoms", nargs="*", default=["O", "Ne"])
    p.add_argument("--walkers", type=int, default=256)
    p.add_argument("--moves", type=int, default=2000)
    args = p.parse_args()
    print(
        f"{'atom':<4} {'proposal':<17} {'step':>6} {'acc':>5} | {'core rho1':>9} {'rho20':>6} {'rho100':>6}"
        f" {'tau':>7} | {'val rho1':>8} {'rho20':>6} {'rho100':>6} {'tau':>7}"
    )
    for atom in args.atoms:
        for proposal in PROPOSALS:
            r = measure(atom, proposal, args.walkers, args.moves)
            print(
                f"{atom:<4} {proposal:<17} {r['step_size']:6.3f} {r['acceptance']:5.2f} |"
                f" {r['core_rho1']:9.3f} {r['core_rho20']:6.3f} {r['core_rho100']:6.3f}"
                f" {r['core_tau']:7.1f} |"
                f" {r['valence_rho1']:8.3f} {r['valence_rho20']:6.3f} {r['valence_rho100']:6.3f}"
                f" {r['valence_tau']:7.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
