"""MPI: `mpiexec -n 2` runs of real jobs (the mpich wheel's mpiexec), and the sharding rules.

One 2-rank run (H2 on one rank, LiH on the other: different n_up, n_dn, n_atoms in lock-step)
is shared by the tests; each test that resumes or extends it works on a copy of its run dir.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest

from hpcwf.errors import LaunchError
from hpcwf.io.checkpoint import load_params
from hpcwf.parallel.context import cpu_devices_per_rank, local_gpu_ids, parse_cuda_visible_devices
from hpcwf.parallel.sharding import cost_classes, geometry_cost, shard_geometries, warmup_slots
from hpcwf.training.schedule import GeometryScheduler

MPIEXEC = Path(sys.executable).with_name("mpiexec")
needs_mpi = pytest.mark.skipif(not MPIEXEC.exists(), reason=f"no mpiexec next to {sys.executable}")
HERE = Path(__file__).resolve().parent

JOB = """
seed = 3
[[geometry]]
name = "H2"
atoms = [["H", 0.0, 0.0, 0.0], ["H", 1.4, 0.0, 0.0]]
[[geometry]]
name = "LiH"
atoms = [["Li", 0.0, 0.0, 0.0], ["H", 3.015, 0.0, 0.0]]
[model]
size = "S"
n_determinants = 2
[pretraining]
steps = 2
[optimization]
steps = {steps}
batch_size = 32
damping = 1e-3
damping_initial = 1e-3
learning_rate = 0.05
[mcmc]
steps_per_update = 2
burn_in_steps = 10
[evaluation]
steps = {eval_steps}
burn_in_steps = 10
[output]
dir = "{dir}"
print_every = 2
[checkpoint]
every_steps = 4
keep_last = 10
"""


def _job(path: Path, run_dir: Path, steps: int, eval_steps: int = 0) -> Path:
    path.write_text(JOB.format(dir=run_dir, steps=steps, eval_steps=eval_steps))
    return path


def _cmd(n_ranks: int, job: Path) -> list[str]:
    hpcwf = [sys.executable, "-m", "hpcwf", "run", str(job)]
    return hpcwf if n_ranks == 1 else [str(MPIEXEC), "-n", str(n_ranks), *hpcwf]


def _run(n_ranks: int, job: Path, timeout: float = 400, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(n_ranks, job), capture_output=True, text=True, timeout=timeout, env=env)


def _train(run: Path) -> dict[str, np.ndarray]:
    with h5py.File(run / "energies.h5", "r") as f:
        return {k: f["train"][k][:] for k in ("step", "geometry", "energy", "variance")}


def _rows_by_step(train) -> dict[int, list[int]]:
    rows: dict[int, list[int]] = {}
    for step, geometry in zip(train["step"], train["geometry"], strict=True):
        rows.setdefault(int(step), []).append(int(geometry))
    return rows


def _newest_checkpoint(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("ckpt_*.h5"))[-1]


def _start(n_ranks: int, job: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        _cmd(n_ranks, job), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _wait_for_line(proc: subprocess.Popen, prefix: str) -> str:
    for line in proc.stdout:
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line starting with {prefix!r}; stderr: {proc.stderr.read()[-2000:]}")


def _rank_pids(job: Path) -> list[int]:
    """PIDs of the python processes (the ranks) running `job`, not mpiexec or its proxies."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].decode(errors="ignore") == sys.executable and str(job).encode() in argv:
            pids.append(int(entry.name))
    return pids


# ---- GPUs of a rank ----------------------------------------------------------------------------


def test_cuda_visible_devices_parse_like_cuda():
    assert parse_cuda_visible_devices("0,1") == ("0", "1")
    assert parse_cuda_visible_devices(" 3 , GPU-8a1f,MIG-77c2") == ("3", "GPU-8a1f", "MIG-77c2")
    # CUDA ends the list at the first entry it cannot read; SLURM writes NoDevFiles for none.
    assert parse_cuda_visible_devices("0,-1,2") == ("0",)
    assert parse_cuda_visible_devices("") == parse_cuda_visible_devices("NoDevFiles") == ()


def test_each_rank_gets_its_own_gpus():
    """Ranks of a node that see the same GPUs split them; ranks bound to their own GPUs (srun
    --gpus-per-task) keep theirs: never two ranks on one GPU, never a device index that the
    rank does not have (jax's default under srun, [SLURM_LOCALID], is one when bound)."""
    shared4, shared2, shared3 = [("0", "1", "2", "3")] * 2, [("0", "1")] * 2, [("0", "1", "2")] * 2
    assert [local_gpu_ids(shared4, r) for r in (0, 1)] == [[0, 1], [2, 3]]
    assert [local_gpu_ids(shared2, r) for r in (0, 1)] == [[0], [1]]
    assert [local_gpu_ids(shared3, r) for r in (0, 1)] == [[0], [1]]  # GPU 2 stays idle
    bound = [("2",), ("3",), ("0",), ("1",)]  # CUDA_VISIBLE_DEVICES per task
    assert [local_gpu_ids(bound, r) for r in range(4)] == [[0]] * 4
    bound2 = [("0", "1"), ("2", "3")]
    assert [local_gpu_ids(bound2, r) for r in (0, 1)] == [[0, 1], [0, 1]]
    assert local_gpu_ids([(), ()], 1) is None  # CPU
    assert local_gpu_ids([("0", "1")], 0) == [0, 1]  # one rank: all of them
    with pytest.raises(LaunchError, match="3 ranks on this node share 2 GPU"):
        local_gpu_ids([("0", "1")] * 3, 2)


# ---- sharding ----------------------------------------------------------------------------------


def test_cpu_devices_per_rank_splits_each_mask_over_the_ranks_sharing_it():
    two_cores, four = frozenset({0, 1}), frozenset({0, 1, 2, 3})
    assert cpu_devices_per_rank(None, [two_cores], 0) == 1  # unset: XLA's threads only
    assert cpu_devices_per_rank("auto", [two_cores], 0) == 2
    assert cpu_devices_per_rank("auto", [two_cores, two_cores], 1) == 1  # unbound mpiexec ranks
    assert cpu_devices_per_rank("auto", [frozenset({0, 1}), frozenset({2, 3})], 1) == 2  # bound
    assert cpu_devices_per_rank("auto", [four, four, four], 2) == 1
    assert cpu_devices_per_rank(" 3 ", [two_cores], 0) == 3
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(LaunchError, match="HPCWF_CPU_DEVICES"):
            cpu_devices_per_rank(bad, [two_cores], 0)


def test_one_process_splits_walkers_over_cpu_devices(tmp_path):
    """HPCWF_CPU_DEVICES=2: one process, walkers split over 2 CPU devices (steps finite); a bad
    value is one error line, exit 2, nothing written (~40 s)."""
    job = _job(tmp_path / "job.toml", tmp_path / "run", steps=2)
    proc = _run(1, job, env=dict(os.environ, HPCWF_CPU_DEVICES="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 rank x 2 devices" in proc.stdout, proc.stdout
    assert np.all(np.isfinite(_train(tmp_path / "run")["energy"]))
    bad = _job(tmp_path / "bad.toml", tmp_path / "bad_run", steps=2)
    proc = _run(1, bad, env=dict(os.environ, HPCWF_CPU_DEVICES="many"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: HPCWF_CPU_DEVICES='many': use 'auto' or a whole number >= 1"
    ]
    assert not (tmp_path / "bad_run").exists()


def test_shards_are_deterministic_balanced_and_cover_the_dataset():
    n_electrons = [2, 4, 10, 10, 2, 6, 4, 18, 2]
    costs = [geometry_cost(n, 2) for n in n_electrons]
    for classes in (None, cost_classes(costs, 3)):
        shards = shard_geometries(costs, 3, classes)
        assert shards == shard_geometries(costs, 3, classes)
        assert sorted(i for s in shards for i in s) == list(range(len(costs)))
        assert [len(s) for s in shards] == [3, 3, 3]
        # Dealt from the most expensive down: no rank gets two of the top 3.
        top3 = sorted(range(len(costs)), key=lambda i: -costs[i])[:3]
        assert all(len(set(top3) & set(s)) == 1 for s in shards)
    # One class: the snake pairs the largest with the smallest, so the totals balance.
    loads = [sum(costs[i] for i in s) for s in shard_geometries(costs, 3)]
    assert max(loads) - min(loads) <= max(costs)
    assert shard_geometries(costs, 1) == [list(range(len(costs)))]
    with pytest.raises(ValueError, match="cannot be shared"):
        shard_geometries(costs[:2], 3)
    with pytest.raises(ValueError, match="cannot be shared"):
        cost_classes(costs[:2], 3)


# The paper's foundation set: 18 compounds (electrons, atoms), 20 geometries each (METHOD.md):
# CH4 NH3 H2O, C2H2 N2 HCN, C2H4 N2H2 CH2NH O2 HNO CH2O, C2H6 N2H4 CH3NH2 H2O2 NH2OH CH3OH.
FOUNDATION_SHAPES = [(10, 5), (10, 4), (10, 3), (14, 4), (14, 2), (14, 3)]
FOUNDATION_SHAPES += [(16, 6), (16, 4), (16, 5), (16, 2), (16, 3), (16, 4)]
FOUNDATION_SHAPES += [(18, 8), (18, 6), (18, 7), (18, 4), (18, 5), (18, 6)]


def test_step_cost_model_separates_what_the_measurement_separates():
    """geometry_cost follows the measured step times (benchmarks/results/step_costs_cpu.csv):
    C2H6 costs more than H2O2 at equal electron count, CH4 more than H2O."""
    assert geometry_cost(18, 8) > 1.2 * geometry_cost(18, 4)
    assert geometry_cost(10, 5) > geometry_cost(10, 3)
    assert geometry_cost(16, 2) > geometry_cost(14, 4)  # electrons weigh more than atoms


@pytest.mark.parametrize("n_ranks", [1, 2, 7, 64, 120])
def test_cost_classes_hold_equal_costs_and_every_rank_holds_every_class(n_ranks):
    costs = [geometry_cost(*shape) for shape in sorted(FOUNDATION_SHAPES, key=lambda s: geometry_cost(*s))]
    costs = [c for c in costs for _ in range(20)]
    classes = cost_classes(costs, n_ranks)
    # Equal cost, equal class; classes ordered by cost; every class big enough for every rank.
    for c1, c2, k1, k2 in zip(classes, classes[1:], costs, costs[1:], strict=False):
        assert (k1 == k2) <= (c1 == c2) and (k1 <= k2) == (c1 <= c2)
    sizes = np.bincount(classes)
    assert (sizes >= n_ranks).all()
    if n_ranks <= 20:
        assert len(sizes) == 16  # one class per cost: N2H2 and CH2O, N2H4 and CH3OH share theirs
    shards = shard_geometries(costs, n_ranks, classes)
    lengths = [len(s) for s in shards]
    assert max(lengths) - min(lengths) <= 1
    for shard in shards:
        assert {classes[i] for i in shard} == set(range(len(sizes)))


def _simulate_lockstep(n_electrons: list[int], n_ranks: int, n_steps: int, seed: int = 0):
    """Every rank's GeometryScheduler driven as VMCStage drives it (class priorities reduced by
    maximum over ranks), with random variances that grow with the electron count (molecules
    of 2 atoms). Returns the dataset indices picked [n_steps, n_ranks], the dataset's classes
    and the warm-up length."""
    costs = [geometry_cost(n, 2) for n in n_electrons]
    classes = cost_classes(costs, n_ranks)
    shards = shard_geometries(costs, n_ranks, classes)
    slots = warmup_slots(shards, classes)
    schedulers = [
        GeometryScheduler(len(s), warmup_rounds=1, classes=np.array([classes[i] for i in s]), slots=slots)
        for s in shards
    ]
    rng = np.random.default_rng(seed)
    picks = np.zeros((n_steps, n_ranks), np.int64)
    for t in range(n_steps):
        if schedulers[0].in_warmup(t):
            local = [s.next_geometry(t) for s in schedulers]
        else:
            priority = np.max([s.class_priority(t) for s in schedulers], axis=0)
            local = [s.next_geometry(t, GeometryScheduler.pick_class(priority)) for s in schedulers]
        for rank, (s, j) in enumerate(zip(schedulers, local, strict=True)):
            index = shards[rank][j]
            picks[t, rank] = index
            s.record(j, t, float(rng.gamma(2.0, n_electrons[index] ** 2 / 50)))
    return picks, classes, len(slots)


def test_with_cost_classes_all_ranks_step_through_the_same_class_and_nothing_starves():
    n_electrons = [n for n in (10, 10, 14, 18) for _ in range(6)]
    n_ranks, n_steps = 4, 300
    picks, classes, n_warmup = _simulate_lockstep(n_electrons, n_ranks, n_steps)
    step_classes = np.asarray(classes)[picks]
    assert (step_classes == step_classes[:, :1]).all(), "a step mixed cost classes"
    # The warm-up visits every geometry; afterwards none waits longer than max_age (2 x shard).
    assert n_warmup == 3 + 2 + 2  # per class the longest share: 12/4, 6/4 rounded up, 6/4 up
    assert set(picks[:n_warmup].ravel()) == set(range(len(n_electrons)))
    for index in range(len(n_electrons)):
        steps = np.flatnonzero((picks == index).any(axis=1))
        assert np.diff(steps).max() <= 2 * len(n_electrons) // n_ranks + 1


def test_one_rank_with_cost_classes_picks_the_largest_std_of_the_whole_dataset():
    """The two-stage choice (class, then geometry) is the paper's argmax over all geometries."""
    s = GeometryScheduler(4, warmup_rounds=1, max_age=100, classes=np.array([0, 1, 1, 0]))
    for t, var in enumerate([1.0, 9.0, 4.0, 16.0]):
        s.record(t, t, var)
    assert s.next_geometry(4, s.pick_class(s.class_priority(4))) == 3
    s.record(3, 4, 0.5)
    assert s.next_geometry(5, s.pick_class(s.class_priority(5))) == 1


# ---- the update itself ---------------------------------------------------------------------------


@needs_mpi
def test_distributed_kfac_equals_kfac_jax_multi_device_step(tmp_path):
    """2 ranks x half a batch through hpcwf's local/global split == kfac-jax's own pmap step
    with the same halves on 2 devices of one process."""
    script = HERE / "mpi_kfac_check.py"
    dist, ref = tmp_path / "distributed.npz", tmp_path / "reference.npz"
    proc = subprocess.run(
        [str(MPIEXEC), "-n", "2", sys.executable, str(script), "distributed", str(dist)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    proc = subprocess.run(
        [sys.executable, str(script), "reference", str(ref)],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    d, r = np.load(dist), np.load(ref)
    np.testing.assert_array_equal(d["initial"], r["initial"])
    change = np.max(np.abs(r["final"] - r["initial"]))
    assert change > 1e-2  # the updates did move the parameters
    # float64 rounding-level agreement (2.5e-12 of the change measured on jax 0.9.0); averaging
    # wrongly (sum, one rank only, no factors) is O(change).
    assert np.max(np.abs(d["final"] - r["final"])) < 1e-8 * change


# ---- whole jobs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mpi_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mpi")
    job = _job(tmp / "job.toml", tmp / "run", steps=8, eval_steps=4)
    proc = _run(2, job)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run", proc


@needs_mpi
def test_two_ranks_train_different_molecules_in_lock_step(mpi_run):
    run, proc = mpi_run
    assert "rank   0: LiH" in proc.stdout and "rank   1: H2" in proc.stdout
    assert "computed on rank 0" in proc.stdout and "computed on rank 1" in proc.stdout  # parallel HF
    rows = _rows_by_step(_train(run))
    assert sorted(rows) == list(range(8))
    assert all(sorted(g) == [0, 1] for g in rows.values())  # both molecules in every step
    with h5py.File(run / "energies.h5", "r") as f:
        ev = f["evaluation"]["energy"][:]
    # Each geometry evaluated as itself: LiH (-8.07 Ha exact) far below H2 (-1.17). After 2
    # pre-training and 8 VMC steps the network is nearly its initialisation, so no absolute
    # bar (H2 was +0.12 Ha with the Jastrow range starting at 0.3 bohr, -4.46 for LiH).
    assert np.all(np.isfinite(ev)) and ev[1] < ev[0] - 1.0
    for path in (run / "checkpoints").glob("ckpt_*.h5"):
        with h5py.File(path, "r") as f:
            assert int(f.attrs["n_ranks"]) == 2
            # Written only after rank 0 compared the parameter digests of both ranks.
            assert len(str(f.attrs["params_sha256"])) == 64
    assert proc.stderr.count("Traceback") == 0


@needs_mpi
def test_two_ranks_step_through_cost_classes_together(tmp_path):
    """Two H2 and two LiH geometries on 2 ranks: two cost classes, each rank holds one of each,
    and in every step both ranks work on the same molecule type (nobody waits for a LiH)."""
    text = _job(tmp_path / "job.toml", tmp_path / "run", steps=10).read_text()
    text = text.replace('name = "H2"', 'name = "H2_a"').replace('name = "LiH"', 'name = "LiH_a"')
    text += """
[[geometry]]
name = "H2_b"
atoms = [["H", 0.0, 0.0, 0.0], ["H", 1.5, 0.0, 0.0]]
[[geometry]]
name = "LiH_b"
atoms = [["Li", 0.0, 0.0, 0.0], ["H", 3.2, 0.0, 0.0]]
"""
    job = tmp_path / "job.toml"
    job.write_text(text)
    proc = _run(2, job)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank   0: H2_a, LiH_a" in proc.stdout and "rank   1: H2_b, LiH_b" in proc.stdout, proc.stdout
    is_lih = {0: False, 1: True, 2: False, 3: True}  # dataset order: H2_a, LiH_a, H2_b, LiH_b
    rows = _rows_by_step(_train(tmp_path / "run"))
    assert sorted(rows) == list(range(10))
    kinds = [{is_lih[g] for g in geometries} for geometries in rows.values()]
    assert all(len(k) == 1 for k in kinds), rows  # one class per step
    assert {True} in kinds and {False} in kinds


def _evaluation(run: Path) -> np.ndarray:
    with h5py.File(run / "energies.h5", "r") as f:
        return f["evaluation"]["energy"][:]


@needs_mpi
def test_two_ranks_sharing_each_geometry_equal_one_rank_with_all_walkers(tmp_path):
    """[parallel] ranks_per_geometry = 2: 2 ranks x 16 walkers of each geometry sample, measure
    and differentiate as 1 rank x 32 (pre-training on 16 of them, the start check, burn-in,
    two steps, to float32 rounding); its checkpoint resumes alike on 1 rank and on 2 sharing
    ranks with 2 devices each; a batch that cannot be shared is refused in one line (~5 min).

    Compared are the quantities of each step before the update diverges: MCMC amplifies
    rounding-level differences of the parameters into different accept/reject decisions within
    a few steps. Had a rank used its own 16 walkers for the statistics, the energies would
    differ by about sqrt(variance / 16), thousands of times the tolerance."""
    sharing = "[parallel]\nranks_per_geometry = 2\n"

    def job(name: str, run: str, steps: int, eval_steps: int = 0, extra: str = "") -> Path:
        path = _job(tmp_path / name, tmp_path / run, steps, eval_steps)
        # Pre-training on the front half of each batch: the first 16 walkers, 8 per rank.
        text = path.read_text().replace(
            "steps = 2\n[optimization]", "steps = 2\nbatch_size = 16\n[optimization]"
        )
        # Adam: its step is a function of the batch's gradient alone. K-FAC's is not quite:
        # kfac-jax estimates the curvature of the Jastrow's two scales (a NaiveDiagonal block;
        # every network layer is Kronecker-factored) from the squared batch-summed gradient,
        # which is not additive over parts of a batch (as in kfac-jax's own multi-device step).
        text = text.replace("learning_rate = 0.05", 'learning_rate = 0.003\noptimizer = "adam"')
        path.write_text(text + extra)
        return path

    def rows(run: str, table: str) -> dict[str, np.ndarray]:
        with h5py.File(tmp_path / run / "energies.h5", "r") as f:
            return {k: f[table][k][:] for k in f[table]}

    def same_steps(a: dict, b: dict, steps) -> None:
        for t in steps:
            i, j = np.flatnonzero(a["step"] == t), np.flatnonzero(b["step"] == t)
            np.testing.assert_array_equal(a["geometry"][i], b["geometry"][j])  # the same choice
            # float32 rounding, amplified by LiH's start variance (~15 Ha^2); a rank using only
            # its own walkers would be off by ~sqrt(var / 16), hundreds of times these.
            for key, rtol in (("energy", 3e-4), ("variance", 3e-3), ("grad_norm", 3e-3), ("step_size", 1e-5)):
                np.testing.assert_allclose(a[key][i], b[key][j], rtol=rtol, err_msg=f"{key}, step {t}")

    proc = _run(1, job("one.toml", "one", steps=2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _run(2, job("two.toml", "two", steps=2, eval_steps=3, extra=sharing))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 ranks per geometry (16 walkers each)" in proc.stdout, proc.stdout
    assert "ranks     0-1: H2, LiH" in proc.stdout, proc.stdout
    a, b = rows("one", "train"), rows("two", "train")
    np.testing.assert_array_equal(a["step"], b["step"])  # one row per step and group
    same_steps(a, b, (0, 1))
    pa, pb = rows("one", "pretrain"), rows("two", "pretrain")
    np.testing.assert_array_equal(pa["geometry"], pb["geometry"])
    np.testing.assert_allclose(pa["loss"], pb["loss"], rtol=1e-5)  # NaN in the start-check rows
    np.testing.assert_allclose(pa["energy"], pb["energy"], rtol=1e-4)  # the start check
    evaluation = _evaluation(tmp_path / "two")
    assert np.all(np.isfinite(evaluation)) and evaluation[1] < evaluation[0]  # LiH below H2
    # The checkpoint holds whole batches: it goes on with 1 rank, or with 2 sharing ranks.
    shutil.copytree(tmp_path / "two", tmp_path / "two_on_one")
    proc = _run(1, job("on_one.toml", "two_on_one", steps=3))
    assert proc.returncode == 0 and "at step 2" in proc.stdout, proc.stderr[-3000:]
    # ... and on 2 ranks with 2 CPU devices each (8 walkers per device).
    proc = _run(
        2, job("two.toml", "two", steps=3, extra=sharing), env=dict(os.environ, HPCWF_CPU_DEVICES="2")
    )
    assert proc.returncode == 0 and "at step 2" in proc.stdout, proc.stderr[-3000:]
    same_steps(rows("two_on_one", "train"), rows("two", "train"), (2,))
    # 16 walkers per rank cannot be split over 3 devices each: refused on every rank alike.
    bad = job("bad.toml", "bad", steps=2, extra=sharing)
    proc = _run(2, bad, env=dict(os.environ, HPCWF_CPU_DEVICES="3"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {bad}: optimization.batch_size: 32 walkers cannot be split evenly over the 3 "
        "device(s) of each of 2 ranks: use a multiple of 6"
    ], proc.stderr
    assert not (tmp_path / "bad").exists()


@needs_mpi
def test_mpi_resume_is_exact_and_skips_a_corrupt_checkpoint(mpi_run, tmp_path):
    """Resuming at step 4 on 2 ranks redoes steps 4..7 bitwise as the straight run did."""
    run, _ = mpi_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    newest = copy / "checkpoints" / "ckpt_000000008.h5"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    newest.write_bytes(bytes(data))
    job = _job(tmp_path / "job.toml", copy, steps=8)
    proc = _run(2, job)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ckpt_000000008.h5" in proc.stdout and "using previous checkpoint" in proc.stdout
    assert "at step 4" in proc.stdout
    straight, resumed = _train(run), _train(copy)
    for key in straight:
        np.testing.assert_array_equal(straight[key], resumed[key])
    a, _ = load_params(run / "checkpoints" / "params.h5")
    b, _ = load_params(copy / "checkpoints" / "params.h5")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


@needs_mpi
def test_elastic_resume_2_to_1_to_2_ranks_and_sigterm(mpi_run, tmp_path):
    run, _ = mpi_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    job = tmp_path / "job.toml"
    # 2 -> 1: the checkpoint of two ranks continues on one.
    proc = _run(1, _job(job, copy, steps=12))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at step 8" in proc.stdout
    # 1 -> 2, stopped by SIGTERM (as SLURM does before the time limit) ...
    _job(job, copy, steps=100000)
    running = _start(2, job)
    _wait_for_line(running, "step      14/")
    running.send_signal(signal.SIGTERM)  # mpiexec forwards it to both ranks
    out, err = running.communicate(timeout=120)
    assert running.returncode == 75, err[-3000:]
    assert "interrupted: stopped by SIGTERM" in err
    stopped_at = int(_newest_checkpoint(copy).stem.split("_")[1])
    assert stopped_at >= 14
    # ... and resumed to completion; its first update comes out NaN on rank 1 alone (test-only
    # fault injection): both ranks reject it, so the parameters stay identical on both (the
    # final checkpoint compares their digests before it is written).
    env = dict(os.environ, HPCWF_TEST_POISON_STEPS=str(stopped_at))
    proc = _run(2, _job(job, copy, steps=stopped_at + 2), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with h5py.File(copy / "energies.h5", "r") as f:
        step, rolled_back = f["train/step"][:], f["train/rolled_back"][:]
    assert rolled_back[step == stopped_at].tolist() == [1, 1]
    assert not rolled_back[step == stopped_at + 1].any()
    rows = _rows_by_step(_train(copy))
    assert sorted(rows) == list(range(stopped_at + 2))  # no step missing, none twice
    for step, geometries in rows.items():
        expected = 1 if 8 <= step < 12 else 2  # rows per step = ranks that ran it
        assert len(geometries) == expected and len(set(geometries)) == expected, (step, geometries)


@needs_mpi
def test_a_killed_rank_ends_the_job(mpi_run, tmp_path):
    run, _ = mpi_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    job = _job(tmp_path / "job.toml", copy, steps=100000)
    running = _start(2, job)
    _wait_for_line(running, "step      10/")
    pids = _rank_pids(job)
    assert len(pids) == 2, pids
    os.kill(pids[-1], signal.SIGKILL)
    t0 = time.monotonic()
    running.communicate(timeout=120)  # must not hang in the collective the dead rank left
    assert running.returncode != 0
    assert time.monotonic() - t0 < 60
