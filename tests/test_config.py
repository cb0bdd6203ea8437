"""Tests for hpcwf.io.config: job-file parsing, validation errors and the resolved config."""

from __future__ import annotations

import dataclasses
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tomllib

from hpcwf.io import config as config_module
from hpcwf.io.config import ConfigError, JobConfig, config_to_dict, load_job, write_resolved_config
from hpcwf.systems.molecule import ANGSTROM_TO_BOHR

REPO = Path(__file__).resolve().parents[1]

LIH = """
[[geometry]]
name = "LiH"
atoms = [["Li", 0.0, 0.0, 0.0], ["H", 3.015, 0.0, 0.0]]
"""

MINIMAL = (
    LIH
    + """
[output]
dir = "runs/lih"
"""
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load_text(tmp_path: Path, text: str, name: str = "job.toml") -> JobConfig:
    return load_job(write(tmp_path / name, text))


def error_of(tmp_path: Path, text: str, name: str = "job.toml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, name)
    return info.value


def section_names() -> list[str]:
    return [f.name for f in dataclasses.fields(JobConfig) if dataclasses.is_dataclass(f.default_factory)]


# ------------------------------------------------------------------------------- happy paths


def test_minimal_example_loads_with_defaults(tmp_path):
    cfg = load_text(tmp_path, MINIMAL)
    assert cfg.seed == 0
    assert cfg.dataset == ""
    assert cfg.job_file == str(tmp_path / "job.toml")
    assert cfg.output.dir == "runs/lih"
    for name in section_names():
        section = getattr(cfg, name)
        if name != "output":
            assert section == type(section)(), name
    assert cfg.optimization.schedule == "molecule"
    assert cfg.optimization.damping == cfg.optimization.damping_initial  # constant damping
    assert cfg.hartree_fock.elements[:3] == ("H", "He", "Li")
    (mol,) = cfg.geometries
    assert mol.name == "LiH" and mol.symbols == ("Li", "H")
    np.testing.assert_array_equal(mol.coords, [[0, 0, 0], [3.015, 0, 0]])


def test_output_dir_defaults_to_job_stem(tmp_path):
    cfg = load_text(tmp_path, LIH, name="my_job.toml")
    assert cfg.output.dir == "runs/my_job"


def test_int_accepted_for_float_and_converted(tmp_path):
    cfg = load_text(tmp_path, LIH + "[optimization]\nlr_decay_steps = 100\n")
    assert cfg.optimization.lr_decay_steps == 100.0
    assert isinstance(cfg.optimization.lr_decay_steps, float)


def test_angstrom_conversion(tmp_path):
    cfg = load_text(
        tmp_path,
        """
        [[geometry]]
        name = "H2"
        units = "angstrom"
        atoms = [["H", 0.0, 0.0, 0.0], ["H", 0.74, 0.0, 0.0]]
        """,
    )
    np.testing.assert_allclose(cfg.geometries[0].coords[1, 0], 0.74 * ANGSTROM_TO_BOHR)
    # The resolved config holds bohr, so nothing is converted twice on reload.
    geo = config_to_dict(cfg)["geometry"][0]
    assert geo["units"] == "bohr"
    assert geo["atoms"][1][1] == pytest.approx(0.74 * ANGSTROM_TO_BOHR)


def test_default_spin(tmp_path):
    cfg = load_text(
        tmp_path,
        LIH
        + """
        [[geometry]]
        name = "H"
        atoms = [["H", 0.0, 0.0, 0.0]]
        """,
    )
    assert [m.spin for m in cfg.geometries] == [0, 1]


def test_dataset_inclusion_relative_to_job_file(tmp_path, monkeypatch):
    write(
        tmp_path / "jobs" / "data" / "h2.toml",
        """
        [[geometry]]
        name = "H2_a"
        atoms = [["H", 0.0, 0.0, 0.0], ["H", 1.4, 0.0, 0.0]]
        [[geometry]]
        name = "H2_b"
        atoms = [["H", 0.0, 0.0, 0.0], ["H", 1.6, 0.0, 0.0]]
        """,
    )
    job = write(tmp_path / "jobs" / "job.toml", 'dataset = "data/h2.toml"\n' + LIH)
    # Resolution must not depend on the working directory.
    monkeypatch.chdir(tmp_path)
    cfg = load_job(job)
    assert [m.name for m in cfg.geometries] == ["LiH", "H2_a", "H2_b"]
    assert Path(cfg.dataset) == tmp_path / "jobs" / "data" / "h2.toml"


def test_example_commented_covers_every_key_with_defaults():
    path = REPO / "inputs" / "example_commented.toml"
    cfg = load_job(path)
    raw = tomllib.loads(path.read_text())
    for name in section_names():
        section = getattr(cfg, name)
        fields = [f.name for f in dataclasses.fields(section)]
        assert sorted(raw[name]) == sorted(fields), name
        if name == "output":
            assert section.dir == "runs/example_commented"
        else:
            assert section == type(section)(), name
    assert {"seed", "dataset"} <= set(raw)
    assert set(raw["geometry"][0]) == set(config_module._GEOMETRY_KEYS)


def test_docs_mention_every_key():
    text = (REPO / "docs" / "config.md").read_text()
    for name in section_names():
        assert f"[{name}]" in text, name
        for f in dataclasses.fields(getattr(JobConfig(geometries=()), name)):
            assert f"`{f.name}`" in text, f"{name}.{f.name}"


# ----------------------------------------------------------------------------- error cases


def test_missing_job_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_job(tmp_path / "nope.toml")
    assert info.value.file == str(tmp_path / "nope.toml")


def test_malformed_toml(tmp_path):
    err = error_of(tmp_path, LIH + "[model\nsize = 'S'\n")
    assert err.file == str(tmp_path / "job.toml")
    assert err.key == "<toml>"
    assert "line" in err.message
    assert str(err) == f"{err.file}: <toml>: {err.message}"


def test_unknown_top_level_key(tmp_path):
    err = error_of(tmp_path, "sead = 1\n" + LIH)
    assert err.key == "sead"
    assert "'seed'" in err.message


def test_unknown_section_key_with_suggestion(tmp_path):
    err = error_of(tmp_path, LIH + "[optimization]\nstesp = 10\n")
    assert err.key == "optimization.stesp"
    assert "did you mean 'steps'" in err.message


def test_unknown_geometry_key(tmp_path):
    err = error_of(tmp_path, LIH + "chrage = 1\n")
    assert err.key == "geometry[0].chrage"
    assert "'charge'" in err.message


def test_section_not_a_table(tmp_path):
    err = error_of(tmp_path, 'model = "S"\n' + LIH)
    assert err.key == "model"


@pytest.mark.parametrize(
    ("section", "text", "key"),
    [
        ("optimization", 'steps = "many"', "optimization.steps"),
        ("optimization", "steps = 10.0", "optimization.steps"),
        ("mcmc", "steps_per_update = true", "mcmc.steps_per_update"),  # bool is not an int
        ("optimization", "learning_rate = false", "optimization.learning_rate"),
        ("hartree_fock", "basis = 3", "hartree_fock.basis"),
        ("hartree_fock", 'elements = "H"', "hartree_fock.elements"),
        ("optimization", "damping = nan", "optimization.damping"),
        ("scheduler", 'cost_classes = "yes"', "scheduler.cost_classes"),
        ("scheduler", "cost_classes = 1", "scheduler.cost_classes"),  # an int is not a bool
    ],
)
def test_wrong_type(tmp_path, section, text, key):
    err = error_of(tmp_path, f"[{section}]\n{text}\n" + LIH)
    assert err.key == key


def test_bool_seed_rejected(tmp_path):
    err = error_of(tmp_path, "seed = true\n" + LIH)
    assert err.key == "seed"
    assert "integer" in err.message


@pytest.mark.parametrize(
    ("section", "text", "key"),
    [
        ("optimization", "batch_size = 0", "optimization.batch_size"),
        ("optimization", "steps = -1", "optimization.steps"),
        ("optimization", "learning_rate = 0.0", "optimization.learning_rate"),
        ("mcmc", "target_acceptance = 1.0", "mcmc.target_acceptance"),
        ("mcmc", "initial_step_size = 0", "mcmc.initial_step_size"),
        ("model", "n_determinants = 0", "model.n_determinants"),
        ("checkpoint", "keep_last = 0", "checkpoint.keep_last"),
        ("output", "print_every = 0", "output.print_every"),
    ],
)
def test_out_of_range(tmp_path, section, text, key):
    err = error_of(tmp_path, f"[{section}]\n{text}\n" + LIH)
    assert err.key == key


@pytest.mark.parametrize(
    ("section", "text", "key"),
    [
        ("model", 'size = "XL"', "model.size"),
        ("model", 'orbitals = "gaussian"', "model.orbitals"),
        ("optimization", 'optimizer = "sgd"', "optimization.optimizer"),
        ("optimization", 'schedule = "paper"', "optimization.schedule"),
        ("optimization", 'norm_constraint_mode = "l2"', "optimization.norm_constraint_mode"),
        ("init", 'mode = "resume"', "init.mode"),
    ],
)
def test_bad_choice(tmp_path, section, text, key):
    err = error_of(tmp_path, f"[{section}]\n{text}\n" + LIH)
    assert err.key == key
    assert "must be one of" in err.message


def test_bad_hf_element_list(tmp_path):
    err = error_of(tmp_path, '[hartree_fock]\nelements = ["H", "Li", "Xx"]\n' + LIH)
    assert err.key == "hartree_fock.elements[2]"


def test_impossible_spin(tmp_path):
    err = error_of(
        tmp_path,
        LIH
        + """
        [[geometry]]
        name = "H2"
        spin = 1
        atoms = [["H", 0.0, 0.0, 0.0], ["H", 1.4, 0.0, 0.0]]
        """,
    )
    assert err.key == "geometry[1].spin"


def test_impossible_charge(tmp_path):
    err = error_of(tmp_path, LIH.replace('name = "LiH"', 'name = "LiH"\ncharge = 4'))
    assert err.key == "geometry[0].charge"


def test_overlapping_atoms(tmp_path):
    err = error_of(tmp_path, LIH.replace("3.015", "0.01"))
    assert err.key == "geometry[0].atoms[1]"
    assert "overlaps" in err.message


def test_unknown_element(tmp_path):
    err = error_of(tmp_path, LIH.replace('"H", 3.015', '"Xx", 3.015'))
    assert err.key == "geometry[0].atoms[1]"
    assert "unknown element" in err.message


def test_element_not_in_hf_elements(tmp_path):
    err = error_of(tmp_path, '[hartree_fock]\nelements = ["H", "He"]\n' + LIH)
    assert err.key == "geometry[0].atoms[0]"
    assert "hartree_fock.elements" in err.message


def test_missing_required_geometry_key(tmp_path):
    err = error_of(tmp_path, '[[geometry]]\natoms = [["H", 0.0, 0.0, 0.0]]\n')
    assert err.key == "geometry[0].name"


def test_missing_dataset_file(tmp_path):
    err = error_of(tmp_path, 'dataset = "missing.toml"\n' + LIH)
    assert err.file == str(tmp_path / "job.toml")
    assert err.key == "dataset"


def test_malformed_dataset_file(tmp_path):
    write(tmp_path / "data.toml", "[[geometry]\n")
    err = error_of(tmp_path, 'dataset = "data.toml"\n' + LIH)
    assert err.file == str(tmp_path / "data.toml")
    assert err.key == "dataset:<toml>"


def test_error_inside_dataset_geometry(tmp_path):
    write(
        tmp_path / "data.toml",
        """
        [[geometry]]
        name = "ok"
        atoms = [["H", 0.0, 0.0, 0.0]]
        [[geometry]]
        name = "bad"
        atoms = [["H", 0.0, 0.0, 0.0], "H"]
        """,
    )
    err = error_of(tmp_path, 'dataset = "data.toml"\n' + LIH)
    assert err.file == str(tmp_path / "data.toml")
    assert err.key == "dataset:geometry[1].atoms[1]"


def test_missing_init_checkpoint(tmp_path):
    err = error_of(tmp_path, LIH + f'[init]\ncheckpoint = "{tmp_path / "no.h5"}"\n')
    assert err.key == "init.checkpoint"


def test_missing_init_checkpoint_is_fine_where_the_run_dir_can_resume(tmp_path, capsys):
    """Issue 21.7: a fine-tune whose [init] checkpoint is gone (deleted by its run's retention,
    or archived) but whose own run dir holds a checkpoint resumes from that one and never reads
    the [init] parameters: load_job, `hpcwf check` and `check --group-index K --run-dir` (what
    slurm/finetune.sbatch runs before a requeued task) accept it, for a file and for a run dir
    as the source; a fresh run (a group without a checkpoint of its own) is still refused."""
    from hpcwf.cli import main

    h2 = '[[geometry]]\nname = "{n}"\ngroup = "{n}"\natoms = [["H", 0, 0, 0], ["H", 1.4, 0, 0]]\n'
    for source in (tmp_path / "pre" / "checkpoints" / "ckpt_000000010.h5", tmp_path / "pre"):
        out = tmp_path / f"ft-{source.name}"
        job = write(
            tmp_path / f"{source.name}.toml",
            h2.format(n="a")
            + h2.format(n="b")
            + f'[init]\ncheckpoint = "{source}"\n[output]\ndir = "{out}"\n',
        )
        (out / "a" / "checkpoints").mkdir(parents=True)
        (out / "a" / "checkpoints" / "ckpt_000000002.h5").write_bytes(b"")  # the run validates it
        assert load_job(job, group_index=0).output.dir == str(out / "a")
        assert main(["check", str(job), "--group-index", "0", "--run-dir"]) == 0
        assert capsys.readouterr() == (f"{out / 'a'}\n", "")
        for argv in (["check", str(job), "--group-index", "1"], ["check", str(job)]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert err == f"error: {job}: init.checkpoint: checkpoint not found: {source}\n"
        with pytest.raises(ConfigError, match="checkpoint not found"):
            load_job(job, output_dir=str(tmp_path / "elsewhere"))


def test_evaluate_needs_checkpoint(tmp_path):
    err = error_of(tmp_path, LIH + '[init]\nmode = "evaluate"\n')
    assert err.key == "init.checkpoint"


def test_existing_init_checkpoint(tmp_path):
    ckpt = tmp_path / "params.h5"
    ckpt.write_bytes(b"")
    cfg = load_text(tmp_path, LIH + f'[init]\ncheckpoint = "{ckpt}"\n')
    assert cfg.init.checkpoint == str(ckpt)


def test_no_geometries(tmp_path):
    err = error_of(tmp_path, "seed = 1\n")
    assert err.key == "geometry"


def test_duplicate_names(tmp_path):
    write(tmp_path / "data.toml", LIH)
    err = error_of(tmp_path, 'dataset = "data.toml"\n' + LIH)
    assert err.file == str(tmp_path / "data.toml")
    assert err.key == "dataset:geometry[0].name"
    assert "duplicate" in err.message


# ---------------------------------------------------------------------------- resolved config


def test_round_trip(tmp_path):
    write(
        tmp_path / "data.toml",
        """
        [[geometry]]
        name = "H2"
        units = "angstrom"
        reference_energy = -1.1744
        atoms = [["H", 0.0, 0.0, 0.0], ["H", 0.7414, 0.0, 0.0]]
        """,
    )
    job = write(
        tmp_path / "job.toml",
        'seed = 7\ndataset = "data.toml"\n'
        + LIH
        + """
        [model]
        size = "M"
        orbitals = "backflow"
        [optimization]
        lr_decay_steps = 1000
        [hartree_fock]
        elements = ["H", "Li"]
        """,
    )
    cfg = load_job(job)
    out = tmp_path / "run" / "config.toml"
    write_resolved_config(cfg, out)
    text = out.read_text()
    assert text.startswith("# Generated by hpcwf ")
    import hpcwf

    assert hpcwf.__version__ in text.splitlines()[0]
    assert "dataset" not in tomllib.loads(text)
    again = load_job(out)
    assert again == cfg
    assert config_to_dict(again) == config_to_dict(cfg)
    assert again.output.dir == "runs/job"  # the default was resolved, not re-derived
    assert sorted(os.listdir(out.parent)) == ["config.toml"]  # no temp file left behind
    # Sanity: equality really looks at content.
    assert dataclasses.replace(cfg, seed=8) != cfg


def test_foundation_preset_resolves_to_concrete_numbers_and_explicit_keys_win(tmp_path):
    """`schedule = "foundation"` is the paper's long-run schedule (METHOD 2.3): its keys take
    the preset's values unless the job sets them; the rest keep their defaults."""
    preset = config_module.SCHEDULE_PRESETS["foundation"]
    cfg = load_text(tmp_path, LIH + '[optimization]\nschedule = "foundation"\nlearning_rate = 0.02\n')
    o = cfg.optimization
    assert (o.lr_decay_steps, o.damping, o.damping_initial) == (20000.0, 2e-3, 1.0)
    assert o.norm_constraint_mode == "fisher" and o.damping_initial > o.damping  # decaying damping
    for key, value in preset.items():
        assert getattr(o, key) == (0.02 if key == "learning_rate" else value), key
    default = config_module.OptimizationConfig()
    assert (o.steps, o.batch_size, o.clip_width) == (default.steps, default.batch_size, default.clip_width)
    # The molecule preset (the default) is the field defaults: an explicit key beats it too.
    mol = load_text(tmp_path, LIH + "[optimization]\ndamping_initial = 1.0\n").optimization
    assert mol == dataclasses.replace(default, damping_initial=1.0)


def test_resolved_config_holds_the_preset_numbers(tmp_path):
    """config.toml lists every preset key with its number, and reloads to the same job."""
    cfg = load_text(tmp_path, LIH + '[optimization]\nschedule = "foundation"\ndamping = 5e-3\n')
    out = tmp_path / "run" / "config.toml"
    write_resolved_config(cfg, out)
    written = tomllib.loads(out.read_text())["optimization"]
    for key, value in config_module.SCHEDULE_PRESETS["foundation"].items():
        assert written[key] == (5e-3 if key == "damping" else value), key
    assert written["schedule"] == "foundation"
    assert load_job(out) == cfg


def test_load_writes_nothing(tmp_path, monkeypatch):
    write(tmp_path / "data.toml", LIH.replace("LiH", "LiH2"))
    job = write(tmp_path / "job.toml", 'dataset = "data.toml"\n' + MINIMAL)
    monkeypatch.chdir(tmp_path)

    def listing() -> list[str]:
        return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))

    before = listing()
    load_job(job)
    assert listing() == before


# ------------------------------------------------------------------------- groups and scans


def test_groups_select_one_task_of_an_array(tmp_path):
    def table(name, group, x):
        group_line = f'group = "{group}"\n' if group else ""
        return (
            f'[[geometry]]\nname = "{name}"\n{group_line}scan_coordinate = {x}\n'
            f'atoms = [["H", 0.0, 0.0, 0.0], ["H", {x}, 0.0, 0.0]]\n'
        )

    text = table("a1", "A", 1.4) + table("b1", "B", 1.5) + table("a2", "A", 1.6) + table("c", "", 1.7)
    cfg = load_text(tmp_path, text + '[output]\ndir = "runs/scan"\n')
    assert config_module.geometry_groups(cfg) == ["A", "B", "c"]
    task = config_module.select_group(cfg, 0)
    assert [m.name for m in task.geometries] == ["a1", "a2"]
    assert [m.scan_coordinate for m in task.geometries] == [1.4, 1.6]
    assert task.output.dir == str(Path("runs/scan") / "A")
    assert config_module.select_group(cfg, 2).geometries[0].name == "c"
    with pytest.raises(ConfigError, match="--group-index: 3 is out of range: the job has 3 groups"):
        config_module.select_group(cfg, 3)
    # group and scan_coordinate survive the resolved config
    write_resolved_config(task, tmp_path / "resolved.toml")
    assert load_job(tmp_path / "resolved.toml") == task


def test_bad_scan_coordinate_names_the_key(tmp_path):
    err = error_of(tmp_path, LIH + 'scan_coordinate = "far"\n')
    assert err.key == "geometry[0].scan_coordinate"


# ------------------------------------------------- what pyscf would reject at HF time


def atom_job(atoms: str, spin: str = "", charge: str = "", hf: str = "") -> str:
    return f'{hf}\n[[geometry]]\nname = "m"\natoms = {atoms}\n{spin}\n{charge}\n'


HE = '[["He", 0.0, 0.0, 0.0]]'
H2 = '[["H", 0.0, 0.0, 0.0], ["H", 1.4, 0.0, 0.0]]'
HE2 = '[["He", 0.0, 0.0, 0.0], ["He", 3.0, 0.0, 0.0]]'

# (atoms, spin, charge, basis) -> the key refused, or None. Cartesian functions: STO-6G has 1 on
# H/He and 5 (1s 2s 2p) on Li-Ne, 6-31G has 2 on He; n_up <= functions is what pyscf can occupy.
OCCUPATIONS = {
    "He spin 2 STO-6G": (HE, 2, 0, "STO-6G", "geometry[0].spin"),
    "He spin 2 6-31G": (HE, 2, 0, "6-31G", None),
    "H2 spin 2 STO-6G (n_up = functions)": (H2, 2, 0, "STO-6G", None),
    "He2 spin 4 STO-6G": (HE2, 4, 0, "STO-6G", "geometry[0].spin"),
    "He2 spin 2 STO-6G": (HE2, 2, 0, "STO-6G", "geometry[0].spin"),
    "He2 spin 0 STO-6G (all functions filled)": (HE2, 0, 0, "STO-6G", None),
    "Li spin 3 STO-6G": ('[["Li", 0.0, 0.0, 0.0]]', 3, 0, "STO-6G", None),
    "N spin 3 STO-6G": ('[["N", 0.0, 0.0, 0.0]]', 3, 0, "STO-6G", None),
    "N spin 5 STO-6G": ('[["N", 0.0, 0.0, 0.0]]', 5, 0, "STO-6G", "geometry[0].spin"),
    "H charge -2 STO-6G (no spin fits)": ('[["H", 0.0, 0.0, 0.0]]', 1, -2, "STO-6G", "geometry[0].charge"),
    "H charge -1 STO-6G": ('[["H", 0.0, 0.0, 0.0]]', 0, -1, "STO-6G", None),
}


def occupation_job(case: str) -> str:
    atoms, spin, charge, basis, _ = OCCUPATIONS[case]
    return atom_job(atoms, f"spin = {spin}", f"charge = {charge}", f'[hartree_fock]\nbasis = "{basis}"')


@pytest.mark.parametrize("case", sorted(OCCUPATIONS))
def test_occupations_the_basis_cannot_hold(tmp_path, case):
    key = OCCUPATIONS[case][-1]
    if key is None:
        load_text(tmp_path, occupation_job(case))
    else:
        err = error_of(tmp_path, occupation_job(case))
        assert err.key == key
        assert f"basis set {OCCUPATIONS[case][3]!r}" in err.message


def test_occupation_rule_agrees_with_pyscf(tmp_path):
    """What validation accepts, pyscf's HF runs; what it refuses, pyscf refuses too (~2 s)."""
    from hpcwf.systems.hartree_fock import run_hartree_fock
    from hpcwf.systems.molecule import Molecule

    for case, (atoms, spin, charge, basis, key) in OCCUPATIONS.items():
        mol = Molecule.create(case, tomllib.loads(f"a = {atoms}")["a"], charge=charge, spin=spin)
        if key is None:
            assert run_hartree_fock(mol, basis).mo_coeff_up.shape[1] == mol.n_up, case
        else:
            with pytest.raises(RuntimeError, match="mo_occ"):
                run_hartree_fock(mol, basis)


def test_occupation_error_in_a_dataset_names_its_file(tmp_path):
    write(tmp_path / "data.toml", atom_job(HE, "spin = 2"))
    err = error_of(tmp_path, 'dataset = "data.toml"\n' + LIH)
    assert (err.file, err.key) == (str(tmp_path / "data.toml"), "dataset:geometry[0].spin")


@pytest.mark.parametrize(
    "basis, element, n",
    [("STO-6G", "H", 1), ("STO-6G", "He", 1), ("STO-6G", "Li", 5), ("STO-6G", "Ne", 5),
     ("6-31G", "Li", 9), ("cc-pVDZ", "H", 5), ("cc-pVDZ", "C", 15)],
)  # fmt: skip
def test_cartesian_function_counts(basis, element, n):
    """Cartesian shells: p has 3 functions, d 6 (cc-pVDZ C: 3s 2p 1d = 3 + 6 + 6, not 14)."""
    from hpcwf.systems import basis_sets

    assert basis_sets.element_basis(basis, element).n_functions == n


@pytest.mark.parametrize(
    "basis, elements, atoms, key, words",
    [
        ("STO-7G", None, HE, "hartree_fock.basis", ["unknown basis set 'STO-7G'", "sto6g"]),
        ("sto-6g@x", None, HE, "hartree_fock.basis", ["unknown basis set"]),
        # lanl2dz has H and Li-Ne but no He
        ("lanl2dz", None, HE, "hartree_fock.basis", ["lacks He", "geometry[0] 'm'"]),
        ("lanl2dz", None, H2, "hartree_fock.elements[1]", ["lacks He", "descriptor layout"]),
        ("lanl2dz", '["H", "Li"]', H2, None, []),
        # cc-pV5Z: g functions on H (fine), h functions on Li (beyond what hpcwf evaluates)
        ("cc-pV5Z", '["H", "Li"]', '[["Li", 0.0, 0.0, 0.0], ["H", 3.0, 0.0, 0.0]]', "hartree_fock.basis",
         ["h functions (l = 5) on Li"]),
        ("cc-pV5Z", '["H", "Li"]', H2, None, []),
    ],
)  # fmt: skip
def test_basis_sets_pyscf_would_reject(tmp_path, basis, elements, atoms, key, words):
    hf = f'[hartree_fock]\nbasis = "{basis}"\n' + (f"elements = {elements}\n" if elements else "")
    if key is None:
        load_text(tmp_path, atom_job(atoms, hf=hf))
        return
    err = error_of(tmp_path, atom_job(atoms, hf=hf))
    assert err.key == key
    for word in words:
        assert word in err.message


def test_pretraining_batch_beyond_the_walkers(tmp_path):
    text = LIH + "[optimization]\nbatch_size = 64\n[pretraining]\nbatch_size = "
    assert load_text(tmp_path, text + "64\n").pretraining.batch_size == 64
    assert error_of(tmp_path, text + "65\n").key == "pretraining.batch_size"
