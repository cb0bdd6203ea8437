"""K-FAC norm-constraint modes (hpcwf.training.optimizer) on one real update of an H2 model.

"fisher" (DeepErwin's mode, used by the foundation preset) bounds g.F^-1 g by c and applies
the learning rate afterwards; kfac-jax's own ("fisher_scaled") bounds lr^2 g.F^-1 g. So for one
step at learning rate lr, "fisher" with c must give exactly the update of "fisher_scaled" with
c * lr^2. About 15 s (three K-FAC compilations of model S).
"""

import jax
import jax.numpy as jnp
import numpy as np

from hpcwf.model.geometry import geometry_data
from hpcwf.model.wavefunction import build_wavefunction, init_params, log_abs_psi_fn
from hpcwf.parallel import init_parallel
from hpcwf.systems.hartree_fock import run_hartree_fock
from hpcwf.systems.molecule import Molecule
from hpcwf.training.optimizer import KFACOptimizer, ScheduleSettings
from hpcwf.training.vmc import VMCBatch, make_energy_loss

LR, N_WALKERS = 0.1, 32


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


def test_fisher_mode_is_the_scaled_constraint_with_lr_squared():
    ctx = init_parallel()
    mol = Molecule.create("H2", [["H", 0, 0, 0], ["H", 1.4, 0, 0]])
    hf = run_hartree_fock(mol, "STO-6G")
    data = geometry_data(mol, hf.descriptors_up, hf.descriptors_dn, jnp.float32)
    model = build_wavefunction("S", "tao", 1)
    params = jax.device_get(init_params(model, jax.random.PRNGKey(0), data))
    rng = np.random.default_rng(0)
    electrons = jnp.asarray(rng.normal(size=(N_WALKERS, 2, 3)), jnp.float32)
    energies = rng.normal(size=N_WALKERS).astype(np.float32)
    batch = VMCBatch(electrons, jnp.asarray(energies - energies.mean()), data)
    loss = make_energy_loss(log_abs_psi_fn(model))
    key = jax.random.PRNGKey(1)

    def step(mode: str, c: float) -> np.ndarray:
        # Constant lr and damping: lr(0) = LR either way.
        schedule = ScheduleSettings(LR, 1e9, 0.0, 1e-3, 1e-3, 1.0, c, mode, 0.95)
        opt = KFACOptimizer(loss, schedule, N_WALKERS)
        update = ctx.make_global_update(opt.apply)
        p = ctx.local_replicated(params)
        state = ctx.local_replicated(opt.init(p, key, batch))
        stats = opt.local_statistics(p, state, key, batch)
        new, _, _ = update(p, state, stats, 0)
        return _flat(jax.device_get(new)) - _flat(params)

    fisher = step("fisher", 1e-4)
    scaled = step("fisher_scaled", 1e-4 * LR**2)
    free = step("fisher", 1e12)
    # float32: entries far below the largest carry rounding of ~1e-4 of the largest
    np.testing.assert_allclose(fisher, scaled, rtol=1e-4, atol=1e-4 * np.abs(scaled).max())
    assert np.linalg.norm(fisher) < 0.5 * np.linalg.norm(free)  # the constraint was active


def _block_types(orbitals: str, mol: Molecule, n_det: int) -> dict[str, str]:
    hf = run_hartree_fock(mol, "STO-6G")
    data = geometry_data(mol, hf.descriptors_up, hf.descriptors_dn, jnp.float32)
    shape = (mol.n_electrons, mol.n_atoms) if orbitals == "backflow" else None
    model = build_wavefunction("S", orbitals, n_det, shape)
    params = init_params(model, jax.random.PRNGKey(0), data)
    electrons = jnp.asarray(np.random.default_rng(0).normal(size=(8, mol.n_electrons, 3)), jnp.float32)
    batch = VMCBatch(electrons, jnp.zeros(8, jnp.float32), data)
    schedule = ScheduleSettings(LR, 1e9, 0.0, 1e-3, 1e-3, 1.0, 1.0, "fisher", 0.95)
    opt = KFACOptimizer(make_energy_loss(log_abs_psi_fn(model)), schedule, 8)
    opt.init(params, jax.random.PRNGKey(1), batch)
    return opt.curvature_block_types()


def test_every_network_layer_has_a_kronecker_factored_block():
    """kfac-jax falls back to a NaiveDiagonal block, whose curvature is the square of the
    walker-SUMMED score, for any parameter its graph matcher does not see in a dense layer
    (hpcwf.model.layers). Every weight, bias and element embedding of the TAO model (both spin
    maps, context GNN, f and g) and of backflow must be in a dense block; only the Jastrow's
    two scales are diagonal. Before hpcwf.model.layers, 42 of TAO's 60 arrays were diagonal:
    every flax bias and the layers used twice by the odd functions G(c) - G(-c). About 10 s."""
    lih = Molecule.create("LiH", [["Li", 0, 0, 0], ["H", 3.015, 0, 0]])
    tao = _block_types("tao", lih, 2)
    assert len(tao) == 64 and "orbital_map/maps_dn/gnn/input_layer/bias" in tao
    assert sorted(name for name, kind in tao.items() if kind != "RepeatedDenseBlock") == ["jastrow_scale"]
    # Backflow's per-orbital envelope exponents and weights are plain arrays, not layers.
    backflow = _block_types("backflow", lih, 2)
    diagonal = sorted(name for name, kind in backflow.items() if kind != "RepeatedDenseBlock")
    assert diagonal == ["jastrow_scale", "orbital_map/pi", "orbital_map/sigma"]
