"""The paper's experiments as job files (jobs/) and their datasets (inputs/): every job loads,
full-scale and -cpu variants come in pairs, fine-tuning jobs match the model they start from,
and inputs/make_datasets.py reproduces the committed datasets byte for byte. Fast: no jax."""

from __future__ import annotations

import csv
import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcwf.io.config import JobConfig, load_job

REPO = Path(__file__).resolve().parents[1]
JOBS = sorted((REPO / "jobs").glob("*.toml"))
INPUTS = REPO / "inputs"
ENERGIES_CSV = REPO.parent / "shared" / "reference" / "energies.csv"


def _make_datasets():
    spec = importlib.util.spec_from_file_location("make_datasets", INPUTS / "make_datasets.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> dict[str, JobConfig]:
    """Every job file loaded from a scratch working directory in which the run dirs named by
    [init] checkpoint exist (empty), since load_job requires them; datasets resolve against
    the job files, which stay in the repo."""
    cwd = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        for path in JOBS:
            for line in path.read_text().splitlines():
                if line.startswith("checkpoint = "):
                    (cwd / line.split('"')[1]).mkdir(parents=True, exist_ok=True)
        return {path.stem: load_job(path) for path in JOBS}


def test_every_experiment_has_jobs():
    stems = {p.stem for p in JOBS}
    for prefix in ("hchain-", "h2o-rotation-tao", "h2o-rotation-backflow", "transfer-h6-h10-",
                   "transfer-ch4-c2h4-", "foundation-pretrain", "foundation-finetune"):  # fmt: skip
        assert any(s.startswith(prefix) for s in stems), prefix
    assert (REPO / "jobs" / "README.md").is_file()


# Jobs that train a model hpcwf ships (hpcwf/models/<name>): sized for 2 CPU cores and hours,
# one variant only.
SHIPPED_MODEL_JOBS = {"foundation-small-pretrain": "hcno-s"}


def test_all_jobs_load_and_cpu_and_full_variants_pair_up(jobs):
    paper = {s: cfg for s, cfg in jobs.items() if s not in SHIPPED_MODEL_JOBS}
    cpu = {s.removesuffix("-cpu") for s in paper if s.endswith("-cpu")}
    full = {s for s in paper if not s.endswith("-cpu")}
    assert cpu == full
    for stem, cfg in paper.items():
        assert cfg.output.dir == f"runs/{stem}", stem  # set explicitly, = the job's name
        text = (REPO / "jobs" / f"{stem}.toml").read_text()
        assert text.startswith("# ") and "Paper:" in text and "Wall time:" in text, stem
        assert "WALLTIME_PLACEHOLDER" not in text, stem
        if stem.endswith("-cpu"):  # small enough for 2 CPU cores in well under 30 minutes
            assert cfg.model.size == "S" and cfg.optimization.batch_size <= 128, stem
            optimizes = cfg.init.mode != "evaluate"  # an evaluate job ignores optimization.steps
            assert (cfg.optimization.steps <= 1500 or not optimizes) and cfg.pretraining.steps <= 8000, stem
        else:
            assert cfg.model.size == "L" and cfg.optimization.batch_size == 2048, stem


def test_shipped_model_jobs_are_the_models_recipe(jobs):
    """The job that trains a shipped model has its settings (the model card's `jobs/` recipe)."""
    from hpcwf.models import shipped_models

    shipped = {m.name: m for m in shipped_models([REPO / "hpcwf" / "models"])}
    for stem, name in SHIPPED_MODEL_JOBS.items():
        cfg = jobs[stem]
        assert cfg.output.dir == f"runs/{stem}" and cfg.model.size == "S", stem
        if name in shipped:  # not yet while its first training runs
            model = shipped[name]
            assert model.setting("basis") == cfg.hartree_fock.basis
            assert model.setting("elements") == ",".join(cfg.hartree_fock.elements)
            assert model.setting("model_size") == cfg.model.size
            assert model.setting("n_determinants") == str(cfg.model.n_determinants)
            assert f"jobs/{stem}.toml" in model.card_path.read_text()


def test_finetuning_jobs_match_the_run_they_start_from(jobs):
    """Descriptor layout (basis, elements) and architecture must equal the checkpoint's."""
    by_dir = {cfg.output.dir: cfg for cfg in jobs.values()}
    n = 0
    for stem, cfg in jobs.items():
        if not cfg.init.checkpoint:
            continue
        source = by_dir[cfg.init.checkpoint]
        assert cfg.hartree_fock.basis == source.hartree_fock.basis, stem
        assert cfg.hartree_fock.elements == source.hartree_fock.elements, stem
        assert cfg.model == source.model, stem
        assert stem.endswith("-cpu") == source.output.dir.endswith("-cpu"), stem
        n += 1
    assert n >= 10


def test_full_scale_jobs_use_the_foundation_preset(jobs):
    """Every full-scale job that optimizes takes the paper's schedule from the one preset
    rather than from copied numbers: pre-training and scratch runs the foundation preset,
    fine-tunes the single-molecule preset with the [init] offset (the paper's fine-tuning,
    lr 0.0158 at step 0, one lr reduction); the -cpu ones use the single-molecule preset."""
    n = 0
    for stem, cfg in jobs.items():
        if cfg.optimization.steps == 0 or cfg.init.mode == "evaluate" or stem in SHIPPED_MODEL_JOBS:
            continue
        text = (REPO / "jobs" / f"{stem}.toml").read_text()
        if cfg.init.checkpoint:
            assert cfg.optimization.schedule == "molecule" and cfg.init.lr_factor == 1.0, stem
            assert cfg.init.lr_offset == 32000 and cfg.init.damping == 1e-3, stem
        elif stem.endswith("-cpu"):
            assert cfg.optimization.schedule == "molecule", stem
        else:
            assert cfg.optimization.schedule == "foundation", stem
        if not stem.endswith("-cpu"):
            assert "\nlearning_rate = " not in text.split("[optimization]")[1].split("\n[")[0], stem
            n += 1
    assert n >= 10


def test_foundation_pretraining_uses_the_paper_schedule(jobs):
    cfg = jobs["foundation-pretrain"]
    o = cfg.optimization
    assert (o.steps, o.batch_size, o.optimizer) == (500_000, 2048, "kfac")
    assert (o.learning_rate, o.lr_decay_steps) == (0.1, 20000)
    assert (o.damping, o.damping_initial, o.damping_decay_steps) == (2e-3, 1.0, 5000)
    assert cfg.checkpoint.every_minutes > 0 and cfg.checkpoint.keep_every > 0
    groups: dict[str, int] = {}
    for m in cfg.geometries:
        groups[m.group] = groups.get(m.group, 0) + 1
    assert len(groups) == 18 and set(groups.values()) == {20}
    for m in cfg.geometries:  # O2 is a triplet; every other compound a closed-shell singlet
        assert m.spin == (2 if m.group == "O2" else 0), m.name


def test_h2o_rotation_jobs_pretrain_only(jobs):
    for stem in ("h2o-rotation-tao", "h2o-rotation-backflow"):
        for variant in (stem, stem + "-cpu"):
            cfg = jobs[variant]
            assert cfg.optimization.steps == 0 and cfg.evaluation.steps == 0 and cfg.pretraining.steps > 0
            assert cfg.model.orbitals == stem.rsplit("-", 1)[1]


def test_h2o_scan_geometries_are_rotations_of_one_another(jobs):
    geoms = jobs["h2o-rotation-tao"].geometries
    assert len(geoms) == 20
    angles = [m.scan_coordinate for m in geoms]
    assert angles == sorted(angles) and angles[0] < 133.0 < 135.0 < angles[-1]  # the flip is inside

    def distances(m):
        return np.linalg.norm(m.coords[:, None] - m.coords[None], axis=-1)

    for m in geoms[1:]:
        assert m.symbols == geoms[0].symbols
        np.testing.assert_allclose(distances(m), distances(geoms[0]), atol=1e-5)
        assert not np.allclose(m.coords, geoms[0].coords)


def test_dataset_generator_reproduces_the_committed_files(tmp_path):
    written = _make_datasets().write_all(tmp_path)
    committed = sorted((INPUTS / "datasets").glob("*.toml")) + [INPUTS / "references.md"]
    assert sorted(p.relative_to(tmp_path) for p in written) == sorted(
        p.relative_to(INPUTS) for p in committed
    )
    for path in written:
        assert path.read_bytes() == (INPUTS / path.relative_to(tmp_path)).read_bytes(), path.name
    assert sum(p.stat().st_size for p in committed) < 400_000  # commit-sized


def test_cpu_datasets_are_subsets_of_the_full_ones():
    import tomllib

    def load(stem):
        data = tomllib.loads((INPUTS / "datasets" / f"{stem}.toml").read_text())
        return {g["name"]: g for g in data["geometry"]}

    for path in (INPUTS / "datasets").glob("*_cpu.toml"):
        full = load(path.stem.removesuffix("_cpu"))
        for name, g in load(path.stem).items():
            assert full[name] == g, (path.name, name)


@pytest.mark.skipif(not ENERGIES_CSV.is_file(), reason="shared/reference/energies.csv not available")
def test_reference_energies_come_from_energies_csv(jobs):
    """... or from the CCSD(T)/CBS values computed here (inputs/references_ccsdt.csv), each
    attached with its method and source in the dataset file."""
    with ENERGIES_CSV.open() as fh:
        known = {float(row["energy_Ha"]) for row in csv.DictReader(fh)}
    with (INPUTS / "references_ccsdt.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    computed = {float(row["energy"]) for row in rows if row["method"].startswith("CCSD(T)/CBS")}
    known |= computed
    for dataset in (INPUTS / "datasets").glob("*.toml"):
        for line in dataset.read_text().splitlines():
            if line.startswith("reference_energy = ") and float(line.split()[2]) in computed:
                assert "computed with pyscf for this project (inputs/ccsdt_references.py)" in line
    geoms = itertools.chain.from_iterable(cfg.geometries for cfg in jobs.values())
    used = {m.reference_energy for m in geoms if m.reference_energy is not None}
    assert used and used <= known
