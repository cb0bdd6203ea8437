"""Bad input through the real CLI: one line `error: <file>: <key>: ...`, exit 2, nothing written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

LIH = '[[geometry]]\nname = "LiH"\natoms = [["Li", 0.0, 0.0, 0.0], ["H", 3.015, 0.0, 0.0]]\n'

CASES = {
    "malformed": ("[[geometry]\nname=", "<toml>"),
    "unknown_key": (LIH + "[model]\nsise = 'S'\n", "model.sise"),
    "impossible_spin": (
        '[[geometry]]\nname = "H2"\natoms = [["H", 0, 0, 0], ["H", 1.4, 0, 0]]\nspin = 1\n',
        "geometry[0].spin",
    ),
    "unknown_element": (
        '[[geometry]]\nname = "X"\natoms = [["Xx", 0, 0, 0]]\n',
        "geometry[0].atoms[0]",
    ),
    "overlap": (
        '[[geometry]]\nname = "H2"\natoms = [["H", 0, 0, 0], ["H", 0, 0, 0.01]]\n',
        "geometry[0].atoms[1]",
    ),
    "missing_checkpoint": (LIH + '[init]\ncheckpoint = "nope.h5"\n', "init.checkpoint"),
    # Rejected by pyscf at HF time before: a traceback after config.toml was written.
    "occupation_beyond_basis": (
        '[[geometry]]\nname = "He"\natoms = [["He", 0, 0, 0]]\nspin = 2\n',
        "geometry[0].spin",
    ),
    "unknown_basis": (LIH + '[hartree_fock]\nbasis = "STO-7G"\n', "hartree_fock.basis"),
    # One rank cannot share a geometry with another (hpcwf.workflow._with_walker_groups).
    "ranks_per_geometry_beyond_the_ranks": (
        LIH + "[parallel]\nranks_per_geometry = 2\n",
        "parallel.ranks_per_geometry",
    ),
    "batch_not_shareable": (
        LIH + "[optimization]\nbatch_size = 33\n[parallel]\nranks_per_geometry = 2\n",
        "optimization.batch_size",
    ),
    "basis_lacks_element": (
        '[[geometry]]\nname = "He"\natoms = [["He", 0, 0, 0]]\n[hartree_fock]\nbasis = "lanl2dz"\n',
        "hartree_fock.basis",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, case):
    text, key = CASES[case]
    job = tmp_path / "job.toml"
    job.write_text(text + f'\n[output]\ndir = "{tmp_path / "run"}"\n' if case != "malformed" else text)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = subprocess.run(
        [sys.executable, "-m", "hpcwf", "run", str(job)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {job}: {key}"), lines[0]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_check_catches_what_pyscf_would_reject_without_jax(tmp_path):
    """`hpcwf check` (jax unimportable, as on a login node) refuses what `run` used to die on
    in pyscf: one line naming the key, exit 2 (~2 s)."""
    jobs = {case: tmp_path / f"{case}.toml" for case in ("occupation_beyond_basis", "unknown_basis")}
    for case, job in jobs.items():
        job.write_text(CASES[case][0])
    (tmp_path / "ok.toml").write_text(LIH.replace("3.015", "3.0") + '[hartree_fock]\nbasis = "6-31G"\n')
    code = f"""
import contextlib, io, json, sys
sys.modules["jax"] = None
from hpcwf.cli import main
results = {{}}
for case, job in {[(c, str(j)) for c, j in jobs.items()]!r} + [("ok", {str(tmp_path / "ok.toml")!r})]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        results[case] = [main(["check", job]), err.getvalue()]
print(json.dumps(results))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.splitlines()[-1])
    for case, job in jobs.items():
        code, err = results[case]
        assert code == 2
        assert err.startswith(f"error: {job}: {CASES[case][1]}: ") and err.count("\n") == 1, err
    assert results["ok"] == [0, ""]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*(f"{c}.toml" for c in jobs), "ok.toml"])


def test_corrupt_init_checkpoint(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file")
    job = tmp_path / "job.toml"
    job.write_text(LIH + f'[init]\ncheckpoint = "{bad}"\n[output]\ndir = "{tmp_path / "run"}"\n')
    proc = subprocess.run([sys.executable, "-m", "hpcwf", "run", str(job)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {job}: init.checkpoint: {bad}")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_init_checkpoint_of_an_older_model_layout_is_refused(tmp_path):
    """A parameter file written before the embedding's iterated electron-nucleus stream (same
    size, orbitals and determinants, but no embedding/nuc_* layers) is refused in one line
    naming what it lacks, exit 2, nothing written (about 20 s: one model initialisation)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import traverse_util

    from hpcwf.io.checkpoint import save_params
    from hpcwf.model.geometry import geometry_data
    from hpcwf.model.registry import ANSATZ_VERSION
    from hpcwf.model.wavefunction import build_wavefunction, init_params
    from hpcwf.systems.hartree_fock import run_hartree_fock
    from hpcwf.systems.molecule import Molecule

    mol = Molecule.create("LiH", [["Li", 0, 0, 0], ["H", 3.015, 0, 0]])
    hf = run_hartree_fock(mol, "STO-6G")
    data = geometry_data(mol, hf.descriptors_up, hf.descriptors_dn, jnp.float32)
    params = jax.device_get(init_params(build_wavefunction("S", "tao", 4), jax.random.PRNGKey(0), data))
    flat = traverse_util.flatten_dict(params)
    older = {k: np.asarray(v) for k, v in flat.items() if not any(part.startswith("nuc_") for part in k)}
    assert len(older) < len(flat)
    old = tmp_path / "old.h5"
    save_params(
        old,
        traverse_util.unflatten_dict(older),
        {"model_size": "S", "orbitals": "tao", "n_determinants": 4, "ansatz_version": ANSATZ_VERSION},
    )
    job = tmp_path / "job.toml"
    job.write_text(LIH + f'[init]\ncheckpoint = "{old}"\n[output]\ndir = "{tmp_path / "run"}"\n')
    proc = subprocess.run([sys.executable, "-m", "hpcwf", "run", str(job)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {job}: init.checkpoint: {old}: parameter tree does not match")
    assert "lacks params/embedding/nuc_0/bias" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_existing_run_is_not_overwritten(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "energies.h5").write_bytes(b"precious")
    job = tmp_path / "job.toml"
    job.write_text(LIH + f'[output]\ndir = "{run}"\n')
    proc = subprocess.run([sys.executable, "-m", "hpcwf", "run", str(job)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert (run / "energies.h5").read_bytes() == b"precious"
    assert sorted(p.name for p in run.iterdir()) == ["energies.h5"]


def _geometry(name: str, atoms: str, extra: str = "") -> str:
    return f'[[geometry]]\nname = "{name}"\natoms = {atoms}\n{extra}'


H2_AT = '[["H", 0.0, 0.0, 0.0], ["H", {x}, 0.0, 0.0]]'
# Inputs that used to pass `check` and then write outside the run dir, crash after HF or hand
# the float32 network an inf (issue 21, items 4 and 9). Each: (job text, offending key).
UNSAFE_CASES = {
    "coordinate_beyond_float32": (_geometry("He", '[["He", 1e39, 0.0, 0.0]]'), "geometry[0].atoms[0]"),
    "coordinate_far_from_origin": (_geometry("He", '[["He", 0.0, 2e4, 0.0]]'), "geometry[0].atoms[0]"),
    "bond_typo": (_geometry("H2", H2_AT.format(x="1.4e10")), "geometry[0].atoms[1]"),
    "isolated_atom": (_geometry("H2", H2_AT.format(x="60.0")), "geometry[0].atoms[1]"),
    "group_climbs_out": (_geometry("H2", H2_AT.format(x=1.4), 'group = "../../../X"\n'), "geometry[0].group"),
    "group_absolute": (_geometry("H2", H2_AT.format(x=1.4), 'group = "/tmp/hpcwf-X"\n'), "geometry[0].group"),
    "group_dotdot": (_geometry("H2", H2_AT.format(x=1.4), 'group = ".."\n'), "geometry[0].group"),
    "name_as_group_climbs_out": (_geometry("../X", H2_AT.format(x=1.4)), "geometry[0].name"),
    "nul_in_name": (_geometry("H2\\u0000b", H2_AT.format(x=1.4), 'group = "g"\n'), "geometry[0].name"),
    "newline_in_group": (_geometry("H2", H2_AT.format(x=1.4), 'group = "a\\nb"\n'), "geometry[0].group"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE_CASES))
def test_unrepresentable_geometries_and_unsafe_names_are_refused(tmp_path, case):
    """`check --group-index 0` and `run --group-index 0` (a fine-tune array task) refuse each
    variant in one line, exit 2, and write nothing (the run dir is deep inside tmp_path, so a
    group that climbs out of it would still show up there)."""
    text, key = UNSAFE_CASES[case]
    job = tmp_path / "job.toml"
    job.write_text(text + f'[output]\ndir = "{tmp_path / "a" / "b" / "c" / "run"}"\n')
    for command in ("check", "run"):
        proc = subprocess.run(
            [sys.executable, "-m", "hpcwf", command, str(job), "--group-index", "0"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {job}: {key}: "), (command, proc.stderr)
        assert sorted(p.name for p in tmp_path.rglob("*")) == ["job.toml"]
    assert not Path("/tmp/hpcwf-X").exists()


def test_output_dir_of_an_array_task_is_applied_per_group(tmp_path):
    """`--output-dir D --group-index K` runs group K in D/<group K> (before: every task in D),
    and `check` with run's options names that dir (what the sbatch scripts ask it)."""
    job = tmp_path / "job.toml"
    job.write_text(
        _geometry("H2_a", H2_AT.format(x=1.4), 'group = "a"\n')
        + _geometry("H2_b", H2_AT.format(x=1.6), 'group = "b"\n')
    )
    dirs = []
    for k in ("0", "1"):
        options = ["--output-dir", "D", "--group-index", k, "--run-dir"]
        proc = subprocess.run(
            [sys.executable, "-m", "hpcwf", "check", str(job), *options],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        dirs.append(proc.stdout.strip())
    assert dirs == [str(Path("D") / "a"), str(Path("D") / "b")]


def test_inspect_a_parameter_file_is_not_an_error(tmp_path):
    """checkpoints/params.h5 is a documented output without a checksum: `inspect` says so and
    exits 0 (before: `error: ... checksum`, exit 2)."""
    import numpy as np

    from hpcwf.io.checkpoint import save_params

    path = tmp_path / "params.h5"
    save_params(path, {"layer": {"w": np.ones((2, 3), np.float32)}}, {"model_size": "S"})
    command = [sys.executable, "-m", "hpcwf", "inspect", str(path)]
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "checksum         none (parameter file)" in proc.stdout.splitlines()


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """`hpcwf analyze RUN | head`: the reader is gone before hpcwf writes (its end of the pipe
    is closed at once), so every write fails with EPIPE: no BrokenPipeError traceback, exit
    128 + SIGPIPE as for any Unix tool."""
    from hpcwf.io.energy_log import EnergyLog
    from hpcwf.systems.molecule import Molecule

    h2 = Molecule.create("H2", [["H", 0.0, 0.0, 0.0], ["H", 1.4, 0.0, 0.0]])
    EnergyLog(tmp_path / "energies.h5", [h2]).flush()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpcwf", "analyze", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, stderr
    assert stderr == ""
