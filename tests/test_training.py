"""End-to-end physics: VMC of the HF determinant, MCMC, blocking, a 2-geometry H2 job."""

import hashlib
import json
import subprocess
import sys

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tomllib

from hpcwf.analysis.statistics import blocking_analysis
from hpcwf.hamiltonian import make_local_energy
from hpcwf.io.config import OptimizationConfig
from hpcwf.mcmc import init_walkers, initial_electrons, make_mcmc_sweep
from hpcwf.model.geometry import geometry_data
from hpcwf.systems.hartree_fock import run_hartree_fock
from hpcwf.systems.molecule import Molecule
from hpcwf.training.pretrain import HartreeFockOrbitals, hf_log_abs_psi
from hpcwf.training.schedule import GeometryScheduler


def test_vmc_of_hf_determinant_reproduces_pyscf_energy():
    """<E_L> sampled from |psi_HF|^2 equals the pyscf HF energy within error bars."""
    mol = Molecule.create("LiH", [["Li", 0, 0, 0], ["H", 3.015, 0, 0]])
    hf = run_hartree_fock(mol, "STO-6G")
    data = geometry_data(mol, hf.descriptors_up, hf.descriptors_dn, jnp.float32)
    orbitals = HartreeFockOrbitals(
        jax.tree_util.tree_map(
            lambda x: jnp.asarray(x, jnp.float32) if x.dtype.kind == "f" else x, hf.basis()
        ),
        jnp.asarray(hf.mo_coeff_up, jnp.float32),
        jnp.asarray(hf.mo_coeff_dn, jnp.float32),
    )
    batched = jax.vmap(hf_log_abs_psi, (None, 0, None))
    rng = np.random.default_rng(0)
    electrons = initial_electrons(rng, mol.coords, mol.charges, mol.n_up, mol.n_dn, 512)
    walkers = init_walkers(batched, orbitals, data, electrons, 0.2)
    sweep = jax.jit(make_mcmc_sweep(batched, 10))
    energy = jax.jit(jax.vmap(make_local_energy(hf_log_abs_psi, "forward"), (None, 0, None)))
    for i in range(30):
        walkers, _ = sweep(orbitals, data, walkers, jax.random.PRNGKey(i))
    means = []
    for i in range(60):
        walkers, pmove = sweep(orbitals, data, walkers, jax.random.PRNGKey(100 + i))
        means.append(float(jnp.mean(energy(orbitals, walkers.electrons, data))))
    result = blocking_analysis(np.array(means))
    assert 0.3 < float(pmove) < 0.8
    # 4 sigma plus float32 noise: fails for a wrong kinetic energy, potential or sampler.
    assert abs(result.mean - hf.energy) < 4 * result.error + 2e-3, (result, hf.energy)
    assert result.error < 0.05  # STO-6G has no cusps: E_L is noisy, the mean is exact


def test_blocking_detects_correlation():
    rng = np.random.default_rng(0)
    white = rng.normal(size=4096)
    correlated = np.convolve(white, np.ones(16) / 16, mode="valid")
    assert blocking_analysis(white).autocorrelation_time < 2.0
    b = blocking_analysis(correlated)
    assert b.autocorrelation_time > 8.0
    assert b.error > np.std(correlated) / np.sqrt(correlated.size) * 2


def test_scheduler_round_robin_then_largest_std_without_starvation():
    s = GeometryScheduler(3, warmup_rounds=1, max_age=4)
    picks = [s.next_geometry(t) for t in range(3)]
    assert picks == [0, 1, 2]
    for t, (g, var) in enumerate(zip(picks, [1.0, 9.0, 4.0], strict=False)):
        s.record(g, t, var)
    assert s.next_geometry(3) == 1
    s.record(1, 3, 9.0)
    # geometry 0 was last optimized at step 0: at step 4 its age reaches max_age.
    assert s.next_geometry(4) == 0


H2_JOB = """
seed = 1
[[geometry]]
name = "H2_a"
atoms = [["H", 0.0, 0.0, 0.0], ["H", 1.4, 0.0, 0.0]]
reference_energy = -1.1744757
[[geometry]]
name = "H2_b"
atoms = [["H", 0.0, 0.0, 0.0], ["H", 1.6, 0.0, 0.0]]
[model]
size = "S"
n_determinants = 2
[pretraining]
steps = 10
[optimization]
steps = 12
batch_size = 32
[mcmc]
steps_per_update = 3
burn_in_steps = 10
[evaluation]
steps = 8
burn_in_steps = 10
[output]
dir = "{dir}"
print_every = 4
"""


@pytest.fixture(scope="module")
def h2_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("h2")
    job = tmp / "h2.toml"
    job.write_text(H2_JOB.format(dir=tmp / "run"))
    proc = subprocess.run([sys.executable, "-m", "hpcwf", "run", str(job)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run", proc


def test_two_geometry_job_trains_and_evaluates(h2_run):
    run, proc = h2_run
    assert "step      12/12" in proc.stdout
    with h5py.File(run / "energies.h5", "r") as f:
        train = f["train"]
        n = train["step"].shape[0]
        assert n == 12
        assert all(train[k].shape == (n,) for k in ("geometry", "energy", "variance", "pmove", "time"))
        assert set(train["geometry"][:]) == {0, 1}
        assert np.all(np.isfinite(train["energy"][:]))
        # Both optimizers compute the update norm; it reaches the log (issue 12).
        assert np.all(np.isfinite(train["update_norm"][:])) and np.all(train["update_norm"][:] > 0)
        ev = f["evaluation"]
        assert np.all(np.isfinite(ev["energy"][:])) and np.all(ev["error"][:] > 0)
        # After 10 pre-training and 12 VMC steps of 32 walkers the network is nearly its
        # initialisation: its energy must be variational (above -1.3, exact -1.17 at 1.4 bohr)
        # and its electrons bound (below 0), no tighter (-0.57 / -0.71 with the Jastrow range
        # starting at 0.3 bohr, below -0.8 with 1).
        assert np.all((ev["energy"][:] > -1.3) & (ev["energy"][:] < 0.0))
        # Error bars from the 32 walkers' means; 8 steps cannot resolve tau: a lower bound only.
        np.testing.assert_array_equal(ev["n_chains"][:], [32, 32])
        np.testing.assert_array_equal(ev["n_samples"][:], [8 * 32, 8 * 32])
        assert np.all(ev["r_hat"][:] > 1) and np.all(np.isfinite(ev["error_blocking"][:]))
        assert np.all(np.isnan(ev["autocorrelation_time"][:]))
        assert np.all(ev["autocorrelation_time_lower_bound"][:] > 0)
        # HF pre-training: one row per step with its geometry's loss (round-robin 0, 1, 0, ...).
        pre = f["pretrain"]
        np.testing.assert_array_equal(pre["step"][:10], np.arange(10))
        np.testing.assert_array_equal(pre["geometry"][:10], np.arange(10) % 2)
        assert np.all(np.isfinite(pre["loss"][:10])) and np.all(pre["loss"][:10] > 0)
        assert np.all(np.isnan(pre["energy"][:10]))
        # Then the end-of-pre-training check: one row per geometry, the network's own E_L.
        np.testing.assert_array_equal(pre["step"][10:], [10, 10])
        np.testing.assert_array_equal(pre["geometry"][10:], [0, 1])
        assert np.all(np.isnan(pre["loss"][10:]))
        assert np.all(np.isfinite(pre["energy"][10:])) and np.all(pre["variance"][10:] > 0)
    assert "pretrained H2_a" in proc.stdout and "E_HF" in proc.stdout
    assert (run / "config.toml").exists()
    assert (run / "checkpoints" / "params.h5").exists()
    assert (run / "hf_cache.h5").exists()


def test_analyze_json(h2_run):
    run, _ = h2_run
    proc = subprocess.run(
        [sys.executable, "-m", "hpcwf", "analyze", str(run), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(proc.stdout)
    assert [r["name"] for r in rows] == ["H2_a", "H2_b"]
    assert rows[0]["reference"] == pytest.approx(-1.1744757)
    assert rows[1]["reference"] is None
    assert all(isinstance(r["energy"], float) and r["error"] > 0 for r in rows)
    assert all(r["autocorrelation_time"] is None and r["autocorrelation_time_lower_bound"] for r in rows)


def _write_h2_job(path, run_dir, extra=""):
    path.write_text(f"""
[[geometry]]
name = "H2_c"
atoms = [["H", 0.0, 0.0, 0.0], ["H", 1.5, 0.0, 0.0]]
[model]
n_determinants = 2
[pretraining]
steps = 20
[optimization]
steps = 3
batch_size = 32
[mcmc]
steps_per_update = 3
burn_in_steps = 10
[evaluation]
steps = 5
burn_in_steps = 10
[output]
dir = "{run_dir}"
print_every = 1
{extra}
""")


def test_evaluate_from_checkpoint_zero_shot(h2_run, tmp_path):
    """[init] mode = "evaluate" loads the parameters and only evaluates (on another geometry);
    naming the run dir picks its newest valid checkpoint."""
    run, _ = h2_run
    job = tmp_path / "zs.toml"
    _write_h2_job(job, tmp_path / "zs", f'[init]\ncheckpoint = "{run}"\nmode = "evaluate"\n')
    proc = subprocess.run([sys.executable, "-m", "hpcwf", "run", str(job)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    newest = sorted((run / "checkpoints").glob("ckpt_*.h5"))[-1]
    assert f"init: parameters from {newest} " in proc.stdout
    with h5py.File(tmp_path / "zs" / "energies.h5", "r") as f:
        assert f["train/step"].shape == (0,)
        assert np.isfinite(f["evaluation/energy"][0])


def test_finetune_from_checkpoint_and_shared_hf_cache(h2_run, tmp_path):
    """mode = "finetune": parameters loaded, no HF pre-training, fresh K-FAC with the lr offset;
    a second run pointed at the same HF cache reuses the stored HF results."""
    run, _ = h2_run
    ckpt = run / "checkpoints" / "params.h5"
    cache = tmp_path / "hf.h5"
    _write_h2_job(
        tmp_path / "a.toml",
        tmp_path / "a",
        f'[hartree_fock]\ncache = "{cache}"\n[init]\ncheckpoint = "{ckpt}"\nmode = "finetune"\n',
    )
    _write_h2_job(tmp_path / "b.toml", tmp_path / "b", f'[hartree_fock]\ncache = "{cache}"\n')
    first = subprocess.run(
        [sys.executable, "-m", "hpcwf", "run", str(tmp_path / "a.toml")], capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert "pretrain " not in first.stdout and "computed" in first.stdout
    with h5py.File(tmp_path / "a" / "energies.h5", "r") as f:
        lr = f["train/learning_rate"][:]
        start = f["pretrain"]
        # The step-0 energy of the loaded parameters, equilibrated from the HF density.
        np.testing.assert_array_equal(start["step"][:], [0])
        assert np.all(np.isfinite(start["energy"][:])) and np.all(np.isnan(start["loss"][:]))
    assert "start H2_c" in first.stdout
    # lr(t) = lr0 / (1 + (t + 32000) / t0): the schedule offset is the one reduction (METHOD
    # 2.3; [init] lr_factor 1 by default), on the default preset's lr0 and t0 - and the run
    # prints and writes that resolved schedule.
    o = OptimizationConfig()
    expected = [o.learning_rate / (1 + (t + 32000) / o.lr_decay_steps) for t in range(3)]
    np.testing.assert_allclose(lr, expected, rtol=1e-5)
    lr0 = f"lr(0) = {expected[0]:.4g}"
    assert lr0 in first.stdout
    assert lr0 in (tmp_path / "a" / "config.toml").read_text()
    second = subprocess.run(
        [sys.executable, "-m", "hpcwf", "run", str(tmp_path / "b.toml")], capture_output=True, text=True
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "cached" in second.stdout and "computed" not in second.stdout


def test_incompatible_checkpoint_is_refused_before_writing(h2_run, tmp_path):
    run, _ = h2_run
    _write_h2_job(
        tmp_path / "c.toml", tmp_path / "c", f'[init]\ncheckpoint = "{run / "checkpoints" / "params.h5"}"\n'
    )
    text = (tmp_path / "c.toml").read_text().replace("n_determinants = 2", "n_determinants = 4")
    (tmp_path / "c.toml").write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "hpcwf", "run", str(tmp_path / "c.toml")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "n_determinants" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


def test_resume_is_exact_and_skips_a_corrupt_newest_checkpoint(h2_run, tmp_path):
    """6 steps, then the same job extended to 12 in the same dir, resumed from a checkpoint:
    the training energies equal the straight 12-step run bitwise, with no duplicate rows, even
    when the newest checkpoint is corrupt and the one before it is used."""
    straight, _ = h2_run
    run = tmp_path / "run"
    job = tmp_path / "job.toml"
    text = H2_JOB.format(dir=run) + "[checkpoint]\nevery_steps = 3\n"
    job.write_text(text.replace("steps = 12", "steps = 6"))
    first = subprocess.run([sys.executable, "-m", "hpcwf", "run", str(job)], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    newest = run / "checkpoints" / "ckpt_000000006.h5"
    assert (run / "checkpoints" / "ckpt_000000003.h5").exists() and newest.exists()
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # as if killed mid-copy

    job.write_text(text)
    second = subprocess.run([sys.executable, "-m", "hpcwf", "run", str(job)], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "ckpt_000000006.h5" in second.stdout + second.stderr  # reported
    assert "at step 3" in second.stdout
    with h5py.File(straight / "energies.h5", "r") as a, h5py.File(run / "energies.h5", "r") as b:
        np.testing.assert_array_equal(b["train/step"][:], np.arange(12))
        np.testing.assert_array_equal(b["train/geometry"][:], a["train/geometry"][:])
        np.testing.assert_array_equal(b["train/energy"][:], a["train/energy"][:])


def _digests(root):
    """{relative path: sha256} of every file under root."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# Changes a run dir with checkpoints refuses: (edit of H2_JOB, key named, words of the message).
REFUSED_CHANGES = {
    "batch size": (
        ("batch_size = 32", "batch_size = 64"),
        "optimization.batch_size",
        ["64 here", "has 32", "[optimization] batch_size = 32", "[output] dir", 'mode = "finetune"'],
    ),
    "geometry": (("1.6, 0.0, 0.0", "1.7, 0.0, 0.0"), "geometry[1]", ["'H2_b'", "atoms", "[output] dir"]),
    "model": (
        ("n_determinants = 2", "n_determinants = 1"), "model.n_determinants", ["[model] n_determinants = 2"]
    ),
    "seed": (("seed = 1", "seed = 2"), "seed", ["keep seed = 1"]),
    "optimizer": (
        ("batch_size = 32", 'batch_size = 32\noptimizer = "adam"'), "optimization.optimizer", ['"kfac"']
    ),
    "basis": (("[model]", '[hartree_fock]\nbasis = "6-31G"\n[model]'), "hartree_fock.basis", ['"STO-6G"']),
    "init": (("[model]", '[init]\ncheckpoint = "{run}"\n[model]'), "init.checkpoint", ["from scratch"]),
}  # fmt: skip


@pytest.mark.parametrize("change", sorted(REFUSED_CHANGES))
def test_refused_change_writes_nothing_and_names_the_key(h2_run, capsys, change):
    """A job the run in its dir cannot continue: one `error:` line naming the key and the way
    out, the run dir byte for byte untouched (in-process CLI, < 1 s each)."""
    from hpcwf.cli import main

    run, _ = h2_run
    (old, new), key, words = REFUSED_CHANGES[change]
    job = run.parent / "changed.toml"
    text = H2_JOB.format(dir=run)
    assert old in text
    job.write_text(text.replace(old, new.format(run=run), 1))
    before = _digests(run)
    assert main(["run", str(job)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {job}: {key}: "), lines
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert _digests(run) == before


def test_restart_from_a_missing_checkpoint_names_the_option(h2_run, capsys):
    from hpcwf.cli import main

    run, _ = h2_run
    job = run.parent / "same.toml"
    job.write_text(H2_JOB.format(dir=run))
    before = _digests(run)
    assert main(["run", str(job), "--restart", str(run / "nope.h5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {job}: --restart: {run / 'nope.h5'}: file not found")
    assert err.count("\n") == 1
    assert _digests(run) == before


def test_changes_a_resume_accepts(h2_run, tmp_path):
    """Steps, schedules, sampling, pre-training, evaluation, checkpointing, the HF cache path
    and geometry annotations may change: the run dir's newest checkpoint is resumed."""
    from hpcwf.io.config import load_job
    from hpcwf.workflow import _resume_point

    run, _ = h2_run
    newest = sorted((run / "checkpoints").glob("ckpt_*.h5"))[-1]
    edits = [
        ("steps = 12", "steps = 20"),
        ("batch_size = 32", "batch_size = 32\nlearning_rate = 0.05"),
        ("steps_per_update = 3", "steps_per_update = 5"),
        ("[pretraining]\nsteps = 10", "[pretraining]\nsteps = 50\nbatch_size = 16"),
        ("[evaluation]\nsteps = 8", "[evaluation]\nsteps = 100"),
        ("reference_energy = -1.1744757", 'reference_energy = -1.17\ngroup = "H2"\nscan_coordinate = 1.4'),
        ("[model]", f'[hartree_fock]\ncache = "{tmp_path / "hf.h5"}"\n[model]'),
        ("[model]", "[checkpoint]\nevery_steps = 5\n[model]"),
    ]
    text = H2_JOB.format(dir=run)
    for old, new in edits:
        assert old in text
        text = text.replace(old, new, 1)
    job = tmp_path / "extended.toml"
    job.write_text(text)
    assert _resume_point(load_job(job), run, None, print) == newest


def test_run_killed_before_its_first_checkpoint_can_be_corrected(tmp_path):
    """A run that dies before its first checkpoint (here: SIGKILL right after HF, as a crash
    in HF or pre-training would) leaves config.toml and the HF cache, but nothing that blocks
    the corrected job: that one starts over in the same dir (~15 s)."""
    import os
    import signal

    run = tmp_path / "run"
    job = tmp_path / "job.toml"
    text = H2_JOB.format(dir=run)
    job.write_text(text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpcwf", "run", str(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    for line in proc.stdout:
        if line.startswith("HF "):
            proc.send_signal(signal.SIGKILL)
            break
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert (run / "config.toml").exists() and not list((run / "checkpoints").glob("*.h5"))

    # The corrected job: another model; no pre-training, steps or evaluation (cheap).
    corrected = (
        text.replace("n_determinants = 2", "n_determinants = 1")
        .replace("[pretraining]\nsteps = 10", "[pretraining]\nsteps = 0")
        .replace("steps = 12", "steps = 0")
        .replace("[evaluation]\nsteps = 8", "[evaluation]\nsteps = 0")
    )
    job.write_text(corrected)
    second = subprocess.run([sys.executable, "-m", "hpcwf", "run", str(job)], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "starts over" in second.stdout and "cached" in second.stdout  # the HF cache is reused
    assert tomllib.loads((run / "config.toml").read_text())["model"]["n_determinants"] == 1
    assert (run / "checkpoints" / "params.h5").exists()


def test_inspect_verifies_checksum(h2_run, tmp_path):
    run, _ = h2_run
    ckpt = run / "checkpoints" / "ckpt_000000012.h5"
    ok = subprocess.run([sys.executable, "-m", "hpcwf", "inspect", str(ckpt)], capture_output=True, text=True)
    assert ok.returncode == 0 and "checksum_ok      True" in ok.stdout and "H2_b" in ok.stdout
    bad = tmp_path / "bad.h5"
    bad.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    proc = subprocess.run(
        [sys.executable, "-m", "hpcwf", "inspect", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2


def test_sigterm_checkpoints_and_resume_continues_the_log(tmp_path):
    """SIGTERM mid-run: the step finishes, a checkpoint is written, exit code 75; a rerun resumes
    and the energy log is unbroken (every step exactly once)."""
    import os
    import signal

    run = tmp_path / "run"
    job = tmp_path / "job.toml"
    text = (
        H2_JOB.format(dir=run)
        .replace("steps = 10", "steps = 0")
        .replace("print_every = 4", "print_every = 1")
    )
    job.write_text(text.replace("steps = 12", "steps = 100000"))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpcwf", "run", str(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    for line in proc.stdout:
        if line.startswith("step       3/"):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    assert "interrupted: stopped by SIGTERM" in err
    checkpoints = sorted((run / "checkpoints").glob("ckpt_*.h5"))
    assert len(checkpoints) == 1
    stopped_at = int(checkpoints[0].stem.split("_")[1])
    assert stopped_at >= 3
    job.write_text(text.replace("steps = 12", f"steps = {stopped_at + 2}"))
    resumed = subprocess.run([sys.executable, "-m", "hpcwf", "run", str(job)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {stopped_at}" in resumed.stdout
    with h5py.File(run / "energies.h5", "r") as f:
        np.testing.assert_array_equal(f["train/step"][:], np.arange(stopped_at + 2))


def test_zero_shot_outside_the_training_set_is_warned_and_marked(h2_run, tmp_path):
    """Issue 21.2: the H2-only model of h2_run evaluated (mode = "evaluate") on H2, HeH+ and
    LiH: one warning line before any step names Li and He, which its training set never
    contained, and the 4 electrons of LiH; analyze marks the evaluations of HeH+ and LiH
    extrapolated, not H2's (one run, LiH compiles its own programs: 30-65 s measured on 2 busy
    cores, load ~4)."""
    run, _ = h2_run
    params = run / "checkpoints" / "params.h5"
    job = tmp_path / "zs.toml"
    job.write_text(f"""
[[geometry]]
name = "H2"
atoms = [["H", 0.0, 0.0, 0.0], ["H", 1.4, 0.0, 0.0]]
[[geometry]]
name = "HeH+"
atoms = [["He", 0.0, 0.0, 0.0], ["H", 1.46, 0.0, 0.0]]
charge = 1
[[geometry]]
name = "LiH"
atoms = [["Li", 0.0, 0.0, 0.0], ["H", 3.015, 0.0, 0.0]]
[model]
n_determinants = 2
[optimization]
batch_size = 32
[evaluation]
steps = 2
burn_in_steps = 2
[init]
checkpoint = "{params}"
mode = "evaluate"
[output]
dir = "{tmp_path / "zs"}"
""")
    proc = subprocess.run([sys.executable, "-m", "hpcwf", "run", str(job)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    warnings = [i for i, line in enumerate(lines) if line.startswith("warning: ")]
    assert len(warnings) == 1, lines
    warning = lines[warnings[0]]
    assert warning.startswith(f"warning: {params} was trained on 2 geometries with H and 2 electrons")
    assert "never on element(s) He, Li or molecule size(s) of 4 electrons" in warning
    assert "HeH+ (He); LiH (Li, 4 electrons)" in warning and "H2 (" not in warning
    assert warnings[0] < lines.index("evaluation: 2 steps per geometry")
    rows = json.loads(
        subprocess.run(
            [sys.executable, "-m", "hpcwf", "analyze", str(tmp_path / "zs"), "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    extrapolated = ["extrapolated" in (r["flags"] or "") for r in rows]
    assert [r["source"] for r in rows] == ["evaluation"] * 3 and extrapolated == [False, True, True]
    assert all(r["hf_energy"] < -1.0 for r in rows)
    table = proc.stdout[proc.stdout.index("geometry ") :]
    assert "extrapolated: " in table and "evaluation [extrapolated" in table


def _finetune_job(path, run_dir, source) -> None:
    _write_h2_job(path, run_dir, f'[init]\ncheckpoint = "{source}"\n[checkpoint]\nevery_steps = 2\n')
    path.write_text(path.read_text().replace("steps = 3", "steps = 4").replace("steps = 5", "steps = 0"))


def test_finetune_resumes_from_its_own_checkpoint_when_its_source_is_gone(h2_run, tmp_path):
    """Issue 21.7: a fine-tune of the step-12 checkpoint of a pre-training run, stopped by
    SIGUSR1 at its step-2 checkpoint; then the source disappears: the file (retention), or the
    whole pre-training run dir (archived). `hpcwf check` accepts the job and the requeued run
    resumes at step 2 with one warning line and completes its log, for a source named as a
    file and as a run dir (three short runs: 83-112 s measured on 2 busy cores, load ~4)."""
    import os
    import shutil

    from hpcwf.cli import main

    pre = tmp_path / "pre"
    shutil.copytree(
        h2_run[0] / "checkpoints", pre / "checkpoints", ignore=shutil.ignore_patterns("params.h5")
    )
    source_file = pre / "checkpoints" / "ckpt_000000012.h5"
    file_job, ft = tmp_path / "ft.toml", tmp_path / "ft"
    _finetune_job(file_job, ft, source_file)
    env = dict(os.environ, HPCWF_TEST_CHECKPOINT_SIGNAL="SIGUSR1@2")
    stopped = subprocess.run(
        [sys.executable, "-m", "hpcwf", "run", str(file_job)], capture_output=True, text=True, env=env
    )
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    assert f"init: parameters from {source_file}" in stopped.stdout
    shutil.copytree(ft, tmp_path / "ft_dir")
    source_file.unlink()  # the pre-training's retention deleted it
    dir_job = tmp_path / "ft_dir.toml"
    _finetune_job(dir_job, tmp_path / "ft_dir", pre)
    shutil.move(pre, tmp_path / "archived")  # the user archived the pre-training run

    for job, run, source in ((file_job, ft, source_file), (dir_job, tmp_path / "ft_dir", pre)):
        assert main(["check", str(job)]) == 0
        proc = subprocess.run(
            [sys.executable, "-m", "hpcwf", "run", str(job)], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"resumed from {run / 'checkpoints' / 'ckpt_000000002.h5'} at step 2" in proc.stdout
        warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning: ")]
        assert warnings == [
            f"warning: {job}: init.checkpoint: {source} no longer exists; this run resumes from its own "
            f"checkpoint {run / 'checkpoints' / 'ckpt_000000002.h5'}, which does not need it"
        ]
        with h5py.File(run / "energies.h5", "r") as f:
            np.testing.assert_array_equal(f["train/step"][:], np.arange(4))
    # A fresh run of the same job (a run dir without checkpoints) still needs its source.
    fresh = tmp_path / "fresh.toml"
    _finetune_job(fresh, tmp_path / "fresh", source_file)
    assert main(["check", str(fresh)]) == 2
