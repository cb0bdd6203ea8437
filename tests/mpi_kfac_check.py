"""The distributed K-FAC update against kfac-jax's own multi-device step.

    mpiexec -n 2 python tests/mpi_kfac_check.py distributed OUT.npz
        two ranks, one device each; rank r holds half r of every batch; hpcwf's local
        statistics + global update (hpcwf.training.optimizer, hpcwf.parallel)
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python tests/mpi_kfac_check.py reference OUT.npz
        one process, two devices: kfac_jax.Optimizer(multi_device=True).step under pmap with
        the same halves on the two devices

Both run in float64 (jax_enable_x64): the comparison is then about the algorithm, not about how
a given jax version rounds float32 K-FAC statistics (the float32 versions differed by 2e-3 of
the update after 3 steps on jax 0.10.2, 1e-3 on 0.9.0).

Both write the initial and final parameters (after N_STEPS updates) to OUT.npz (rank 0);
tests/test_parallel.py compares them. They must agree: it is the same algorithm, reduced over
ranks instead of local devices. After one step they agree bitwise; later the two programs
round the curvature moving average differently (1 ulp), which K-FAC's inverse amplifies.
(It is NOT kfac-jax's single-device step on the whole batch: kfac-jax's diagonal blocks square
the batch-summed gradient, so their statistics are not additive over halves.)
"""

import sys

import jax
import jax.numpy as jnp
import kfac_jax
import numpy as np

from hpcwf.model.geometry import geometry_data
from hpcwf.model.wavefunction import build_wavefunction, init_params, log_abs_psi_fn
from hpcwf.systems.hartree_fock import run_hartree_fock
from hpcwf.systems.molecule import Molecule
from hpcwf.training.optimizer import KFACOptimizer, ScheduleSettings
from hpcwf.training.vmc import VMCBatch, make_energy_loss

N_WALKERS, N_STEPS = 64, 3
jax.config.update("jax_enable_x64", True)


def problem():
    jax.config.update("jax_default_matmul_precision", "highest")
    mol = Molecule.create("LiH", [["Li", 0, 0, 0], ["H", 3.015, 0, 0]])
    hf = run_hartree_fock(mol, "STO-6G")
    data = geometry_data(mol, hf.descriptors_up, hf.descriptors_dn, jnp.float64)
    model = build_wavefunction("S", "tao", 2)
    params = jax.device_get(init_params(model, jax.random.PRNGKey(0), data))
    params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    rng = np.random.default_rng(1)
    electrons = rng.normal(size=(N_STEPS, N_WALKERS, mol.n_electrons, 3)) * 1.5
    energies = rng.normal(size=(N_STEPS, N_WALKERS))
    centered = energies - energies.mean(axis=1, keepdims=True)
    loss = make_energy_loss(log_abs_psi_fn(model))
    schedule = ScheduleSettings(0.05, 1000.0, 0.0, 1e-3, 1e-3, 1000.0, 1e-3, "fisher_scaled", 0.95)
    return data, params, electrons, centered, loss, schedule


def flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


def halves(x, i):
    n = N_WALKERS // 2
    return x[:, i * n : (i + 1) * n]


def distributed(out: str) -> None:
    from hpcwf.parallel import init_parallel

    ctx = init_parallel()
    assert ctx.size == 2, "run with mpiexec -n 2"
    data, params, electrons, centered, loss, schedule = problem()
    electrons, centered = halves(electrons, ctx.rank), halves(centered, ctx.rank)
    key = jax.random.PRNGKey(2)
    opt = KFACOptimizer(loss, schedule, N_WALKERS)
    update = ctx.make_global_update(opt.apply)
    p = ctx.local_replicated(params)
    state = ctx.local_replicated(opt.init(p, key, VMCBatch(electrons[0], centered[0], data)))
    for t in range(N_STEPS):
        stats = opt.local_statistics(p, state, key, VMCBatch(electrons[t], centered[t], data))
        p, state, _ = update(p, state, stats, t)
    if ctx.rank == 0:
        np.savez(out, final=flat(jax.device_get(p)), initial=flat(params))


def reference(out: str) -> None:
    assert jax.local_device_count() == 2, "set XLA_FLAGS=--xla_force_host_platform_device_count=2"
    data, params, electrons, centered, loss, schedule = problem()
    opt = kfac_jax.Optimizer(
        value_and_grad_func=jax.value_and_grad(loss, has_aux=True),
        l2_reg=0.0,
        value_func_has_aux=True,
        learning_rate_schedule=schedule.lr,
        damping_schedule=schedule.damping_at,
        norm_constraint=schedule.norm_constraint,
        estimation_mode="fisher_exact",
        curvature_ema=schedule.curvature_ema,
        inverse_update_period=1,
        min_damping=1e-8,
        num_burnin_steps=0,
        multi_device=True,
        distributed_inverses=False,  # as hpcwf's (mathematically the same, other float rounding)
        distributed_precon_apply=False,
    )
    replicate = kfac_jax.utils.replicate_all_local_devices
    stacked_data = jax.tree.map(lambda x: jnp.stack([x, x]), data)

    def batch(t):
        e = jnp.stack([halves(electrons, 0)[t], halves(electrons, 1)[t]])
        c = jnp.stack([halves(centered, 0)[t], halves(centered, 1)[t]])
        return VMCBatch(e, c, stacked_data)

    key = replicate(jax.random.PRNGKey(2))
    p = replicate(jax.tree.map(jnp.asarray, params))
    state = opt.init(p, key, batch(0))
    for t in range(N_STEPS):
        p, state, _ = opt.step(p, state, key, batch=batch(t), momentum=0.0)
    np.savez(out, final=flat(jax.tree.map(lambda x: x[0], p)), initial=flat(params))


if __name__ == "__main__":
    {"distributed": distributed, "reference": reference}[sys.argv[1]](sys.argv[2])
