"""Every element H-Ne and the degenerate shapes train without NaN.

Degenerate shapes: one atom (the context GNN has no edge but the masked self-edge), one
electron (no electron pair), n_dn = 0 (the spin-down orbital maps see zero orbitals). On these,
kfac-jax's repeated-dense curvature blocks saw no data and scaled by 1/0 (see
hpcwf.training.optimizer.RepeatedDenseBlock).

Each case runs a few VMC steps through the library in-process: MCMC + local energies
(`make_sample_and_measure`), this rank's statistics and the global update, exactly as
`hpcwf.training.stages.VMCStage.step` calls them, with a fresh optimizer state per molecule (a state that has
seen other molecules can hide the problem). Model size, orbitals and optimizer are spread over
the cases rather than multiplied; compiled programs are shared per model configuration. One
`mpiexec -n 2` job puts the H atom and He on different ranks.

Cost: about 3-4 min on 2 CPU cores (one compile of sampling + statistics per molecule).
"""

import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpcwf.hamiltonian import make_local_energy
from hpcwf.io.checkpoint import load_params
from hpcwf.io.config import OptimizationConfig
from hpcwf.mcmc import init_walkers, initial_electrons
from hpcwf.model.geometry import geometry_data
from hpcwf.model.registry import molecule_shape
from hpcwf.model.wavefunction import build_wavefunction, init_params, log_abs_psi_fn
from hpcwf.parallel import init_parallel
from hpcwf.systems.hartree_fock import run_hartree_fock
from hpcwf.systems.molecule import Molecule
from hpcwf.training.kfac_adapter import kfac_jax
from hpcwf.training.optimizer import KFACOptimizer, ScheduleSettings, make_optimizer
from hpcwf.training.stages import place_walkers
from hpcwf.training.vmc import (
    GeometryState,
    VMCBatch,
    make_energy_loss,
    make_sample_and_measure,
    new_geometry_state,
)

N_WALKERS, N_STEPS, N_DET = 8, 3, 2
MPIEXEC = Path(sys.executable).with_name("mpiexec")

# The job defaults ("molecule" preset). The 1/0 curvature scale does not depend on the schedule.
_D = OptimizationConfig()
SCHEDULE = ScheduleSettings.from_config(_D)

# (name, atoms, charge, spin = n_up - n_dn, model size, orbitals, optimizer). Atoms in their
# ground-state spins (Hund), then the one-electron / n_dn = 0 / ion cases.
ATOM = [[0.0, 0.0, 0.0]]
CASES = [
    # H (n_dn = 0, one electron, one atom) is the MPI test's job below.
    ("He", "He", 0, 0, "M", "tao", "kfac"),
    ("Li", "Li", 0, 1, "L", "tao", "kfac"),
    ("Be", "Be", 0, 0, "S", "tao", "adam"),
    ("B", "B", 0, 1, "S", "tao", "kfac"),
    ("C", "C", 0, 2, "S", "tao", "kfac"),
    ("N", "N", 0, 3, "S", "tao", "kfac"),
    ("O", "O", 0, 2, "S", "tao", "kfac"),
    ("F", "F", 0, 1, "S", "tao", "kfac"),
    ("Ne", "Ne", 0, 0, "S", "tao", "kfac"),
    ("H2 triplet", [["H", 0.0, 0.0, 0.0], ["H", 1.4, 0.0, 0.0]], 0, 2, "S", "backflow", "kfac"),
    ("He+", "He", 1, 1, "S", "backflow", "kfac"),
    ("H-", "H", -1, 0, "S", "tao", "kfac"),
]


def _atoms(spec):
    return [[spec, *ATOM[0]]] if isinstance(spec, str) else spec


class Runner:
    """The compiled programs of one model configuration (shared by the molecules using it)."""

    def __init__(self, size: str, orbitals: str, optimizer: str, shape=None):
        self.model = build_wavefunction(size, orbitals, N_DET, shape)
        self.log_abs = log_abs_psi_fn(self.model)
        self.sample = make_sample_and_measure(
            self.log_abs, make_local_energy(self.log_abs), 1, 0.5, 20, _D.clip_width
        )
        self.optimizer = make_optimizer(optimizer, make_energy_loss(self.log_abs), SCHEDULE, N_WALKERS)
        self.ctx = init_parallel()
        self.update = self.ctx.make_global_update(self.optimizer.apply)
        self.batched = jax.jit(jax.vmap(self.log_abs, (None, 0, None)))
        self.init = jax.jit(lambda key, data: init_params(self.model, key, data))


_RUNNERS: dict = {}
_PARAMS: dict = {}


def runner(size, orbitals, optimizer, mol: Molecule) -> Runner:
    # Backflow parameters depend on the molecule's shape, TAO parameters do not.
    shape = molecule_shape(orbitals, [mol])
    key = (size, orbitals, optimizer, shape)
    if key not in _RUNNERS:
        _RUNNERS[key] = Runner(size, orbitals, optimizer, shape)
    return _RUNNERS[key]


def initial_params(r: Runner, size, orbitals, mol: Molecule, data):
    """TAO parameters fit every molecule: made once per model size (and shared by optimizers)."""
    key = (size, orbitals, molecule_shape(orbitals, [mol]))
    if key not in _PARAMS:
        _PARAMS[key] = r.ctx.local_replicated(r.init(jax.random.PRNGKey(0), data))
    return _PARAMS[key]


def _finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_vmc_steps_stay_finite(case):
    name, atoms, charge, spin, size, orbitals, optimizer = case
    mol = Molecule.create(name, _atoms(atoms), charge=charge, spin=spin)
    hf = run_hartree_fock(mol, "STO-6G")
    data = geometry_data(mol, hf.descriptors_up, hf.descriptors_dn, jnp.float32)
    r = runner(size, orbitals, optimizer, mol)
    ctx = r.ctx
    params = initial_params(r, size, orbitals, mol, data)
    electrons = initial_electrons(
        np.random.default_rng(0), mol.coords, mol.charges, mol.n_up, mol.n_dn, N_WALKERS
    )
    walkers = init_walkers(r.batched, params, data, electrons, 0.2)
    fresh = new_geometry_state(walkers)
    state = GeometryState(
        walkers=place_walkers(ctx, walkers),
        clip_center=ctx.local_replicated(fresh.clip_center),
        clip_width=ctx.local_replicated(fresh.clip_width),
    )
    batch_template = VMCBatch(jnp.zeros((N_WALKERS, mol.n_electrons, 3)), jnp.zeros(N_WALKERS), data)
    opt_state = ctx.local_replicated(r.optimizer.init(params, jax.random.PRNGKey(2), batch_template))
    for t in range(N_STEPS):
        state, batch, stats = r.sample(params, data, state, jax.random.PRNGKey(10 + t))
        assert int(stats["n_nonfinite"]) == 0 and np.isfinite(float(stats["energy"])), (t, stats)
        local = r.optimizer.local_statistics(params, opt_state, jax.random.PRNGKey(20 + t), batch)
        params, opt_state, info = r.update(params, opt_state, local, t)
        assert np.isfinite(float(info["update_norm"])) and float(info["update_norm"]) > 0, (t, info)
        assert _finite(params), f"non-finite parameters after update {t}"
    assert _finite(opt_state)
    # Trained parameters still give a finite energy.
    _, _, stats = r.sample(params, data, state, jax.random.PRNGKey(99))
    assert int(stats["n_nonfinite"]) == 0


class _Toy(nn.Module):
    """Dense layers applied along a repeated axis: with data, with zero repeats (like the
    spin-down maps at n_dn = 0) and with every output multiplied by 0 (like the one-atom edge MLP,
    whose repeats kfac-jax therefore masks)."""

    @nn.compact
    def __call__(self, x):  # x [batch, repeats, d]
        used = nn.Dense(4, name="used")(x).sum(axis=1)
        empty = nn.Dense(4, name="empty")(x[:, :0]).sum(axis=1)
        masked = (nn.Dense(4, name="masked")(x) * 0.0).sum(axis=1)
        return nn.Dense(1, name="out")(jnp.tanh(used + empty + masked))[:, 0]


def test_kfac_layers_without_data_get_a_damping_only_block():
    model = _Toy()
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 3, 5))
    y = jax.random.normal(jax.random.PRNGKey(1), (16,))
    params = model.init(jax.random.PRNGKey(2), x)

    def loss(params, batch):
        x, y = batch
        pred = model.apply(params, x)
        kfac_jax.register_squared_error_loss(pred[:, None], y[:, None])
        return jnp.mean((pred - y) ** 2), {}

    opt = KFACOptimizer(loss, ScheduleSettings(0.1, 1e4, 0, 1e-3, 1e-3, 1e4, 1e-2, "fisher_scaled", 0.95), 16)
    ctx = init_parallel()
    update = ctx.make_global_update(opt.apply)
    p = ctx.local_replicated(params)
    state = ctx.local_replicated(opt.init(p, jax.random.PRNGKey(3), (x, y)))
    for t in range(2):
        stats = opt.local_statistics(p, state, jax.random.PRNGKey(4 + t), (x, y))
        p, state, _ = update(p, state, stats, t)
        assert _finite(p), f"non-finite parameters after update {t}"
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), p, params)["params"]
    assert moved["used"]["kernel"] > 0 and moved["out"]["kernel"] > 0
    # No data, no gradient: those layers stay where they were.
    assert moved["empty"]["kernel"] == 0 and moved["masked"]["kernel"] == 0


MPI_JOB = """
seed = 0
[[geometry]]
name = "H"
atoms = [["H", 0.0, 0.0, 0.0]]
spin = 1
[[geometry]]
name = "He"
atoms = [["He", 0.0, 0.0, 0.0]]
[model]
size = "S"
n_determinants = 2
[pretraining]
steps = 0
[optimization]
steps = 4
batch_size = 8
[mcmc]
steps_per_update = 1
burn_in_steps = 0
[evaluation]
steps = 0
[output]
dir = "{dir}"
print_every = 1
"""


@pytest.mark.skipif(not MPIEXEC.exists(), reason=f"no mpiexec next to {sys.executable}")
def test_two_ranks_h_atom_and_he(tmp_path):
    """The default K-FAC job on 2 ranks, one single atom each (n_dn = 0 on one of them)."""
    job = tmp_path / "job.toml"
    job.write_text(MPI_JOB.format(dir=tmp_path / "run"))
    proc = subprocess.run(
        [str(MPIEXEC), "-n", "2", sys.executable, "-m", "hpcwf", "run", str(job)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    shards = sorted(line.split(":")[1].strip() for line in proc.stdout.splitlines() if "  rank " in line)
    assert shards == ["H", "He"]  # one atom per rank
    run = tmp_path / "run"
    with h5py.File(run / "energies.h5", "r") as f:
        train = f["train"]
        assert np.all(train["n_nonfinite"][:] == 0)
        assert np.all(np.isfinite(train["energy"][:])) and np.all(np.isfinite(train["grad_norm"][:]))
        assert sorted(set(train["geometry"][:].tolist())) == [0, 1]
    params, _ = load_params(run / "checkpoints" / "params.h5")
    assert _finite(params)
