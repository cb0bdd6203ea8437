#!/usr/bin/env python3
"""Where the time of one VMC optimization step goes, part by part (a benchmark, not a test).

One step of `hpcwf.training.stages.VMCStage.step` (one rank, one geometry) is assembled from
hpcwf's own building blocks, and each jitted part is timed on its own after a warm-up call
(compilation excluded), with `jax.block_until_ready`, as the median of `--repeats` calls:

  sampling   the MCMC sweep of `mcmc.steps_per_update` Metropolis steps (hpcwf.mcmc)
  energy     local energies of all walkers, folx forward Laplacian (hpcwf.hamiltonian)
  kfac       `KFACOptimizer.local_statistics`: loss, gradients and the K-FAC curvature
             estimate (hpcwf.training.optimizer)
  update     the global update `apply` (inverses, preconditioning, parameter update) in
             the global program (`ParallelContext.make_global_update`)
  step       the whole step as the trainer runs it: `make_sample_and_measure` (sweep, local
             energies, clipping) + local_statistics + update; its difference to the sum of
             the parts is dispatch and the clipping statistics

Geometry-only layers (`--geometry-share`): in the K-FAC pass the loss broadcasts the
geometry to every walker (K-FAC needs each dense layer's inputs per example), so the context
GNN and the descriptor maps f, g of the TAO orbitals (hpcwf.model.orbitals.DescriptorMaps)
run once per walker. Their cost is measured two ways:
  maps xN / x1   forward + backward of both DescriptorMaps (up and down orbitals), vmapped
                 over the walkers as in the loss, and once
  grad / once    the loss + gradient pass alone (`local_statistics` of the first-order
                 optimizer) with the real loss, and with a loss that evaluates the maps once,
                 outside the walker vmap (flax method interception hands the per-walker model
                 the precomputed f, alpha; same value and gradient). kfac-jax refuses the
                 latter (a registered dense layer must have the walker axis first), and it
                 would have to: the K-FAC factor of a layer's output gradients needs them per
                 walker, which a layer evaluated once only has summed over walkers. The K-FAC
                 pass runs the maps forward and backward twice (curvature and gradient).

Second table: s/step against the electron count for hydrogen chains H2, H4, ..., H{chain-max}
(spacing 1.8 bohr) and the molecules, with the log-log slope fitted over the chains.

    python benchmarks/profile_step.py [--size S] [--walkers 256] [--chain-walkers 64]
        [--chain-max 16] [--mcmc-steps 20] [--repeats 5] [--molecule N2] [--no-chain]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from hpcwf.hamiltonian import make_local_energy
from hpcwf.mcmc import init_walkers, initial_electrons, make_mcmc_sweep
from hpcwf.model.geometry import geometry_data
from hpcwf.model.orbitals import DescriptorMaps
from hpcwf.model.wavefunction import build_wavefunction, count_parameters, init_params, log_abs_psi_fn
from hpcwf.parallel import init_parallel
from hpcwf.systems.hartree_fock import run_hartree_fock
from hpcwf.systems.molecule import Molecule
from hpcwf.training.optimizer import ScheduleSettings, make_optimizer
from hpcwf.training.vmc import VMCBatch, make_energy_loss, make_sample_and_measure, new_geometry_state

DTYPE = jnp.float32  # as hpcwf.workflow
CHAIN_SPACING = 1.8  # bohr

MOLECULES = {
    "H2": [["H", 0.0, 0.0, 0.0], ["H", 1.4, 0.0, 0.0]],
    "LiH": [["Li", 0.0, 0.0, 0.0], ["H", 3.015, 0.0, 0.0]],
    "N2": [["N", 0.0, 0.0, 0.0], ["N", 2.068, 0.0, 0.0]],
    # C2H4, planar, C=C 2.52 bohr, C-H 2.05 bohr, HCH 117.4 deg
    "C2H4": [
        ["C", 0.0, 0.0, 1.26],
        ["C", 0.0, 0.0, -1.26],
        ["H", 0.0, 1.746, 2.333],
        ["H", 0.0, -1.746, 2.333],
        ["H", 0.0, 1.746, -2.333],
        ["H", 0.0, -1.746, -2.333],
    ],
}
PARTS = ("sampling", "energy", "kfac", "update")


def h_chain(n_atoms: int) -> list:
    return [["H", i * CHAIN_SPACING, 0.0, 0.0] for i in range(n_atoms)]


def median_time(fn, *args, repeats: int) -> float:
    """Median wall time (s) of `fn(*args)` over `repeats` calls, after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def schedule() -> ScheduleSettings:
    # The defaults of [optimization] (hpcwf.io.config); the values do not change the cost.
    return ScheduleSettings(0.1, 20000.0, 0.0, 1e-3, 1.0, 5000.0, 1e-3, "fisher_scaled", 0.95)


def maps_apply(model, params, geometry):
    """(f, alpha) of the up and down orbitals: the geometry-only part of the TAO model."""

    def method(m, g):
        maps = m.orbital_map
        return maps.maps_up(g.descriptors_up, g.nuclei), maps.maps_dn(g.descriptors_dn, g.nuclei)

    return model.apply(params, geometry, method=method)


def maps_once_loss(model, log_abs_psi):
    """The energy loss with DescriptorMaps evaluated once per batch, not once per walker.
    Same value and gradient as `make_energy_loss`; kfac-jax cannot use it (see module
    docstring): for timing the gradient pass only."""
    import kfac_jax

    def loss(params, batch: VMCBatch):
        maps_up, maps_dn = maps_apply(model, params, batch.geometry)

        def interceptor(next_fun, args, kwargs, context):
            if isinstance(context.module, DescriptorMaps) and context.method_name == "__call__":
                return maps_up if context.module.name == "maps_up" else maps_dn
            return next_fun(*args, **kwargs)

        def per_walker(electrons):
            with nn.intercept_methods(interceptor):
                return log_abs_psi(params, electrons, batch.geometry)

        log_abs = jax.vmap(per_walker)(batch.electrons)
        kfac_jax.register_normal_predictive_distribution(log_abs[:, None])
        surrogate = 2.0 * jnp.mean(jax.lax.stop_gradient(batch.centered_energy) * log_abs)
        return surrogate, {"log_abs_mean": jnp.mean(log_abs)}

    return loss


def profile_system(name: str, atoms: list, args, n_walkers: int, geometry_share: bool) -> dict:
    """Times the parts of one VMC step for one molecule; returns {part: seconds, ...}."""
    mol = Molecule.create(name, atoms)
    hf = run_hartree_fock(mol)
    geometry = geometry_data(mol, hf.descriptors_up, hf.descriptors_dn, DTYPE)
    model = build_wavefunction(args.size, "tao", args.n_det)
    params = init_params(model, jax.random.PRNGKey(0), geometry)
    log_abs_psi = log_abs_psi_fn(model)
    local_energy = make_local_energy(log_abs_psi, "forward")
    batched = jax.vmap(log_abs_psi, (None, 0, None))

    electrons = initial_electrons(
        np.random.default_rng(0), np.asarray(geometry.nuclei), np.asarray(geometry.charges),
        mol.n_up, mol.n_dn, n_walkers,
    )  # fmt: skip
    walkers = init_walkers(batched, params, geometry, electrons, 0.2)
    state = new_geometry_state(walkers)
    key = jax.random.PRNGKey(1)

    # The VMC stage's pieces (hpcwf.training.stages.VMCStage.__init__), one rank.
    ctx = init_parallel()
    optimizer = make_optimizer("kfac", make_energy_loss(log_abs_psi), schedule(), n_walkers)
    update = ctx.make_global_update(optimizer.apply)
    sample_and_measure = make_sample_and_measure(log_abs_psi, local_energy, args.mcmc_steps, 0.5, 20, 5.0)
    # The same parts, each jitted on its own.
    sweep = jax.jit(make_mcmc_sweep(batched, args.mcmc_steps, 0.5, 20))
    energies = jax.jit(jax.vmap(local_energy, (None, 0, None)))

    # A few MCMC steps first so the walkers (and the clipping statistics) are not the initial
    # ones; the step size adapts on the way.
    for i in range(3):
        state, batch, _ = sample_and_measure(params, geometry, state, jax.random.fold_in(key, i))
    opt_state = optimizer.init(params, key, batch)
    stats = optimizer.local_statistics(params, opt_state, key, batch)

    r = args.repeats
    out = {"name": name, "n_el": mol.n_electrons, "n_atoms": mol.n_atoms, "walkers": n_walkers}
    out["sampling"] = median_time(sweep, params, geometry, state.walkers, key, repeats=r)
    out["energy"] = median_time(energies, params, batch.electrons, geometry, repeats=r)
    out["kfac"] = median_time(optimizer.local_statistics, params, opt_state, key, batch, repeats=r)
    out["update"] = median_time(update, params, opt_state, stats, 0, repeats=r)

    def whole_step(params, opt_state, state):
        new_state, b, _ = sample_and_measure(params, geometry, state, key)
        local = optimizer.local_statistics(params, opt_state, key, b)
        return update(params, opt_state, local, 0), new_state

    out["step"] = median_time(whole_step, params, opt_state, state, repeats=r)
    out["n_params"] = count_parameters(params)

    if geometry_share:

        def maps_grad(p, g):  # forward + backward of both maps (a scalar of their outputs)
            def scalar(q):
                return sum(jnp.sum(jnp.sin(x)) for x in jax.tree_util.tree_leaves(maps_apply(model, q, g)))

            return jax.grad(scalar)(p)

        per_walker = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n_walkers, *x.shape)), geometry)
        maps_grad_n = jax.jit(
            lambda p, g: jax.tree_util.tree_map(lambda x: x.sum(0), jax.vmap(maps_grad, (None, 0))(p, g))
        )
        maps_grad = jax.jit(maps_grad)
        out["maps_x1"] = median_time(maps_grad, params, geometry, repeats=r)
        out["maps_xN"] = median_time(maps_grad_n, params, per_walker, repeats=r)
        # kfac-jax refuses the once-evaluated maps (their dense layers have no walker axis:
        # kronecker_factored asserts it), so the loss + gradient pass alone is compared.
        losses = {"grad": make_energy_loss(log_abs_psi), "grad_once": maps_once_loss(model, log_abs_psi)}
        for tag, loss in losses.items():
            first_order = make_optimizer("adam", loss, schedule(), n_walkers)
            adam_state = first_order.init(params, key, batch)
            out[tag] = median_time(first_order.local_statistics, params, adam_state, key, batch, repeats=r)
    return out


def print_parts(rows: list[dict]) -> None:
    head = f"{'system':<8} {'n_el':>4} {'walkers':>7} {'s/step':>8} {'sum':>8}"
    head += "".join(f" {p + ' s':>11} {'%':>4}" for p in PARTS)
    print(head)
    for row in rows:
        total = sum(row[p] for p in PARTS)
        line = f"{row['name']:<8} {row['n_el']:>4} {row['walkers']:>7} {row['step']:>8.3f} {total:>8.3f}"
        line += "".join(f" {row[p]:>11.4f} {100 * row[p] / total:>4.0f}" for p in PARTS)
        print(line)


def print_geometry_share(rows: list[dict]) -> None:
    print(
        f"{'system':<8} {'n_el':>4} {'walkers':>7} {'maps x1 s':>10} {'maps xN s':>10} {'xN-x1 %':>8}"
        f" {'grad s':>8} {'grad once s':>11} {'diff %':>7}"
    )
    for row in rows:
        total = sum(row[p] for p in PARTS)
        excess = (row["maps_xN"] - row["maps_x1"]) / total
        saved = (row["grad"] - row["grad_once"]) / total
        print(
            f"{row['name']:<8} {row['n_el']:>4} {row['walkers']:>7} {row['maps_x1']:>10.4f}"
            f" {row['maps_xN']:>10.4f} {excess:>8.1%} {row['grad']:>8.4f} {row['grad_once']:>11.4f}"
            f" {saved:>7.1%}"
        )


def loglog_slope(n_el: list[int], seconds: list[float]) -> float:
    return float(np.polyfit(np.log(n_el), np.log(seconds), 1)[0])


def print_scaling(chain: list[dict], molecules: list[dict]) -> None:
    head = f"{'system':<8} {'n_el':>4} {'walkers':>7} {'s/step':>8}"
    print(head + "".join(f" {p + ' s':>11}" for p in PARTS))
    for row in chain + molecules:
        line = f"{row['name']:<8} {row['n_el']:>4} {row['walkers']:>7} {row['step']:>8.3f}"
        print(line + "".join(f" {row[p]:>11.4f}" for p in PARTS))
    fit = [r for r in chain if r["n_el"] >= 4]  # H2 is all overhead
    if len(fit) >= 2:
        n = [r["n_el"] for r in fit]
        slopes = {"step": loglog_slope(n, [r["step"] for r in fit])}
        slopes.update({p: loglog_slope(n, [r[p] for r in fit]) for p in PARTS})
        print(
            f"log-log slope over H{min(n)}..H{max(n)} (s/step ~ n_el^k, {fit[0]['walkers']} walkers): "
            + ", ".join(f"{k} {v:.2f}" for k, v in slopes.items())
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="S", choices=("S", "M", "L"), help="model size (default S)")
    parser.add_argument("--n-det", type=int, default=4, help="determinants (default 4)")
    parser.add_argument("--walkers", type=int, default=256, help="walkers, first table (default 256)")
    parser.add_argument("--chain-walkers", type=int, default=64, help="walkers, chain table (default 64)")
    parser.add_argument("--chain-max", type=int, default=16, help="longest H chain (default 16)")
    parser.add_argument("--mcmc-steps", type=int, default=20, help="MCMC steps per update (default 20)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per part (default 5)")
    parser.add_argument("--molecule", default="N2", choices=("N2", "C2H4"), help="the 14-16 electron system")
    parser.add_argument("--no-chain", action="store_true", help="first table only")
    parser.add_argument(
        "--no-geometry-share", action="store_true", help="skip the geometry-layer measurement"
    )
    args = parser.parse_args()
    jax.config.update("jax_default_matmul_precision", "highest")  # as hpcwf.workflow.run_job

    load = os.getloadavg()
    print(
        f"hpcwf VMC step profile: model {args.size}, {args.n_det} determinants, {args.mcmc_steps} MCMC"
        f" steps/update, median of {args.repeats}; jax {jax.__version__} on {jax.devices()[0].platform},"
        f" {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        flush=True,
    )
    systems = {"H2": MOLECULES["H2"], "LiH": MOLECULES["LiH"], "H10": h_chain(10)}
    systems[args.molecule] = MOLECULES[args.molecule]
    rows = []
    for name, atoms in systems.items():
        rows.append(profile_system(name, atoms, args, args.walkers, not args.no_geometry_share))
        print(f"  {name}: {rows[-1]['step']:.3f} s/step", file=sys.stderr, flush=True)
    print(f"\nparts of one step ({rows[0]['n_params']} parameters); % of the sum of the parts")
    print_parts(rows)
    if not args.no_geometry_share:
        print(
            "\ngeometry-only layers (context GNN, f, g): forward+backward of the maps per walker (xN) and"
            " once (x1); loss+gradient pass with the maps per walker (grad) and once (grad once);"
            " differences in % of the sum of the step's parts"
        )
        print_geometry_share(rows)
    if not args.no_chain:
        chain = []
        for n in range(2, args.chain_max + 1, 2):
            chain.append(profile_system(f"H{n}", h_chain(n), args, args.chain_walkers, False))
            print(f"  H{n}: {chain[-1]['step']:.3f} s/step", file=sys.stderr, flush=True)
        molecules = [
            profile_system(name, MOLECULES[name], args, args.chain_walkers, False)
            for name in ("LiH", args.molecule)
        ]
        print(f"\ns/step against electron count, {args.chain_walkers} walkers")
        print_scaling(chain, molecules)
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
