"""Pre-trained models (hpcwf.models): `hpcwf models` lists them, `[init] checkpoint =
"model:NAME"` starts a job from one, and a job whose basis, element layout, model or ansatz
version does not fit the model is refused in one line before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcwf.io.checkpoint import CheckpointError, save_params
from hpcwf.model.registry import ANSATZ_VERSION

FIT = {
    "model_size": "S",
    "orbitals": "tao",
    "n_determinants": 4,
    "basis": "STO-6G",
    "elements": "H,C,N,O",
    "ansatz_version": ANSATZ_VERSION,
    "optimization_steps": 1234,
    "training_set": "2 geometries of H2O",
}
JOB = """seed = 0
[[geometry]]
name = "H2O"
atoms = [["O", 0.0, 0.0, 0.0], ["H", 1.8, 0.0, 0.0], ["H", -0.45, 1.74, 0.0]]
[hartree_fock]
basis = "{basis}"
elements = {elements}
[model]
size = "{size}"
orbitals = "{orbitals}"
n_determinants = {n_det}
[init]
checkpoint = "model:{name}"
[output]
dir = "{run}"
"""
SETTINGS = {"basis": "STO-6G", "elements": '["H", "C", "N", "O"]', "size": "S", "orbitals": "tao", "n_det": 4}


def _model(folder: Path, name: str, **metadata) -> Path:
    path = folder / name / "params.h5"
    path.parent.mkdir(parents=True)
    save_params(path, {"layer": {"w": np.ones((2, 3), np.float32)}}, {**FIT, **metadata})
    return path


def _hpcwf(*args: str, models: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HPCWF_MODELS_PATH": str(models)}
    return subprocess.run([sys.executable, "-m", "hpcwf", *args], capture_output=True, text=True, env=env)


def test_models_lists_every_model_with_what_a_job_must_match(tmp_path):
    """`hpcwf models` is a login-node command: no jax imported."""
    _model(tmp_path, "water-s")
    _model(tmp_path, "other-m", model_size="M", optimization_steps=7)
    code = "import sys; from hpcwf.cli import main; main(['models']); assert 'jax' not in sys.modules"
    env = {**os.environ, "HPCWF_MODELS_PATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.strip()}
    assert rows["water-s"][:7] == ["water-s", "H,C,N,O", "STO-6G", "S", "tao", "4", "1234"]
    assert rows["other-m"][3] == "M" and rows["other-m"][6] == "7"


# (job setting changed, model's value quoted in the message)
MISMATCHES = {
    "basis": ({"basis": "6-31G"}, 'hartree_fock.basis = "STO-6G", this job has "6-31G"'),
    "elements": ({"elements": '["H", "O"]'}, 'hartree_fock.elements = ["H", "C", "N", "O"]'),
    "element_order": ({"elements": '["H", "O", "N", "C"]'}, 'this job has ["H", "O", "N", "C"]'),
    "size": ({"size": "M"}, 'model.size = "S", this job has "M"'),
    "determinants": ({"n_det": 2}, "model.n_determinants = 4, this job has 2"),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_a_job_that_does_not_fit_the_model_is_refused_in_one_line(tmp_path, case):
    _model(tmp_path / "models", "water-s")
    change, message = MISMATCHES[case]
    job = tmp_path / "job.toml"
    job.write_text(JOB.format(**{**SETTINGS, **change}, name="water-s", run=tmp_path / "run"))
    for command in ("check", "run"):
        proc = _hpcwf(command, str(job), models=tmp_path / "models")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"error: {job}: init.checkpoint: model 'water-s' was trained with ")
        assert message in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "run").exists()


def test_an_unknown_model_or_another_ansatz_version_is_refused(tmp_path):
    _model(tmp_path / "models", "water-s")
    _model(tmp_path / "models", "old-s", ansatz_version=ANSATZ_VERSION - 1)
    job = tmp_path / "job.toml"
    job.write_text(JOB.format(**SETTINGS, name="nope", run=tmp_path / "run"))
    proc = _hpcwf("check", str(job), models=tmp_path / "models")
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {job}: init.checkpoint: no shipped model named 'nope' (shipped: ")
    assert "old-s, water-s" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    job.write_text(JOB.format(**SETTINGS, name="old-s", run=tmp_path / "run"))
    proc = _hpcwf("run", str(job), models=tmp_path / "models")
    assert proc.returncode == 2
    assert f"was trained for ansatz version {ANSATZ_VERSION - 1}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    job.write_text(JOB.format(**SETTINGS, name="water-s", run=tmp_path / "run"))
    proc = _hpcwf("check", str(job), models=tmp_path / "models")
    assert proc.returncode == 0
    assert "init: model water-s (finetune): 1234 VMC steps on 2 geometries of H2O" in proc.stdout


def test_a_parameter_file_of_another_ansatz_version_is_refused(tmp_path):
    """An [init] checkpoint file whose parameters mean another function (ansatz_version, or
    none: written before versions were recorded) is refused, not loaded silently."""
    from hpcwf.io.config import load_job
    from hpcwf.workflow import read_init_params

    job = tmp_path / "job.toml"
    job.write_text(
        '[[geometry]]\nname = "H2"\natoms = [["H", 0, 0, 0], ["H", 1.4, 0, 0]]\n'
        f'[output]\ndir = "{tmp_path / "run"}"\n'
    )
    cfg = load_job(job)
    fit = {"model_size": "S", "orbitals": "tao", "n_determinants": 4, "ansatz_version": ANSATZ_VERSION}
    params = {"layer": {"w": np.ones((2, 3), np.float32)}}
    save_params(tmp_path / "ok.h5", params, fit)
    assert read_init_params(tmp_path / "ok.h5", cfg)["layer"]["w"].shape == (2, 3)
    save_params(tmp_path / "old.h5", params, {**fit, "ansatz_version": 1})
    without = {k: v for k, v in fit.items() if k != "ansatz_version"}
    save_params(tmp_path / "older.h5", params, without)
    for name in ("old.h5", "older.h5"):
        with pytest.raises(CheckpointError, match="written for ansatz version 1"):
            read_init_params(tmp_path / name, cfg)


@pytest.mark.slow
def test_the_shipped_model_loads_by_name_and_gives_its_training_energy(tmp_path):
    """The model that ships with hpcwf (hpcwf/models/, listed by `hpcwf models`) loads into a
    job by name and, evaluated zero-shot on the training geometry its file names
    (check_geometry: the one its own training measured best, check_energy +- check_error, the
    mean of its last training steps), is at least as good as there: a wrong descriptor layout,
    parameter order or ansatz gives energies Hartrees higher. Tiny: 64 walkers, 40 steps."""
    import math

    import tomllib

    from hpcwf.analysis.report import geometry_results
    from hpcwf.models import MODELS_DIR, shipped_models

    repo = Path(__file__).resolve().parents[1]
    models = shipped_models([MODELS_DIR])  # where `hpcwf run` finds them (installed or editable)
    assert models, "hpcwf ships at least one model"
    model = models[0]
    listed = subprocess.run([sys.executable, "-m", "hpcwf", "models"], capture_output=True, text=True)
    assert listed.returncode == 0
    assert any(line.split()[:1] == [model.name] for line in listed.stdout.splitlines())

    md = model.metadata
    training = tomllib.loads((repo / "inputs" / "datasets" / "foundation_small.toml").read_text())["geometry"]
    geometry = next(g for g in training if g["name"] == md["check_geometry"])
    atoms = ", ".join(f'["{s}", {x}, {y}, {z}]' for s, x, y, z in geometry["atoms"])
    elements = "[" + ", ".join(f'"{e}"' for e in model.setting("elements").split(",")) + "]"
    job = tmp_path / "job.toml"
    job.write_text(
        f'seed = 0\n[[geometry]]\nname = "{geometry["name"]}"\natoms = [{atoms}]\n'
        f'[hartree_fock]\nbasis = "{model.setting("basis")}"\nelements = {elements}\n'
        f'[model]\nsize = "{model.setting("model_size")}"\n'
        f"n_determinants = {model.setting('n_determinants')}\n"
        f'[init]\ncheckpoint = "model:{model.name}"\nmode = "evaluate"\n'
        "[optimization]\nbatch_size = 64\n[mcmc]\nburn_in_steps = 100\n"
        f'[evaluation]\nsteps = 40\nburn_in_steps = 50\n[output]\ndir = "{tmp_path / "run"}"\n'
    )
    proc = subprocess.run([sys.executable, "-m", "hpcwf", "run", str(job)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"init: parameters from {model.params_path}" in proc.stdout
    (row,) = geometry_results(tmp_path / "run")
    assert row["source"] == "evaluation"
    energy, error = row["energy"], row["error"]
    bound = md["check_energy"] + 4 * math.hypot(error, md["check_error"]) + 0.05
    assert energy < bound, (energy, error, md["check_energy"], md["check_error"])
