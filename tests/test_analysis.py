"""Login-node analysis (`hpcwf analyze | plot | compare`) on synthetic energies.h5 files written
with h5py in the documented layout (hpcwf.io.energy_log): no training run needed."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcwf.analysis import report
from hpcwf.analysis.run_data import WINDOW_MAX_STEPS
from hpcwf.cli import main
from hpcwf.io.energy_log import EVALUATION_FIELDS, TRAIN_FIELDS

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(
    run_dir: Path,
    names: list[str],
    energy: np.ndarray,
    *,
    reference: list[float | None] | None = None,
    group: list[str] | None = None,
    scan: list[float] | None = None,
    evaluation: dict[int, tuple[float, float]] | None = None,
    pretrain_loss: np.ndarray | None = None,
    old_format: bool = False,
    hf_energy: list[float] | None = None,
    outside_training_set: list[int] | None = None,
) -> Path:
    """A run dir with energies.h5: energy[step, geometry, rank] (NaN = geometry not trained at that
    step by that rank); evaluation: geometry -> (energy, error); pretrain_loss[step, geometry, rank];
    hf_energy (Ha) and outside_training_set (1/0/-1) per geometry, absent when None."""
    run_dir.mkdir(parents=True)
    n = len(names)
    with h5py.File(run_dir / "energies.h5", "w") as f:
        if not old_format:
            f.attrs["format"] = "hpcwf-energies"
            f.attrs["version"] = 1
        g = f.create_group("geometries")
        g["names"] = np.array(names, dtype=h5py.string_dtype())
        refs = reference or [None] * n
        g["reference_energy"] = np.array([np.nan if r is None else r for r in refs])
        if not old_format:
            g["group"] = np.array(group or names, dtype=h5py.string_dtype())
            g["scan_coordinate"] = np.array(scan if scan is not None else [np.nan] * n)
        if hf_energy is not None:
            g["hf_energy"] = np.array(hf_energy, np.float64)
        if outside_training_set is not None:
            g["outside_training_set"] = np.array(outside_training_set, np.int8)
        step, geometry, rank = np.nonzero(np.isfinite(energy))
        values = energy[step, geometry, rank]
        columns = {"step": step, "geometry": geometry, "energy": values, "variance": 0.1 + 0 * values}
        train = f.create_group("train")
        for key, dtype in TRAIN_FIELDS.items():
            if old_format and key in ("sync_time", "n_nonfinite"):
                continue
            data = columns.get(key, np.zeros(len(step)))
            train.create_dataset(key, data=np.asarray(data, dtype), maxshape=(None,), chunks=(1024,))
        if evaluation is not None:
            ev = f.create_group("evaluation")
            ev.attrs["steps"] = 100
            for key in EVALUATION_FIELDS:
                data = np.full(n, 0 if key == "n_samples" else np.nan)
                for i, (e, err) in evaluation.items():
                    data[i] = {"energy": e, "error": err, "variance": 0.05}.get(
                        key, 1000 if key == "n_samples" else 2.0
                    )
                ev[key] = data.astype(np.int64 if key == "n_samples" else np.float64)
        if pretrain_loss is not None:
            p = f.create_group("pretrain")
            step, geometry, rank = np.nonzero(np.isfinite(pretrain_loss))
            p["step"], p["geometry"] = step.astype(np.int64), geometry.astype(np.int32)
            p["loss"] = pretrain_loss[step, geometry, rank]
    return run_dir


def round_robin(n_steps: int, n_geometries: int, n_ranks: int, value, seed: int = 0) -> np.ndarray:
    """[step, geometry, rank] with rank r training geometry (step + r) % n_geometries at each step;
    value(step, geometry, rng) gives the number."""
    rng = np.random.default_rng(seed)
    out = np.full((n_steps, n_geometries, n_ranks), np.nan)
    for t in range(n_steps):
        for r in range(n_ranks):
            i = (t + r) % n_geometries
            out[t, i, r] = value(t, i, rng)
    return out


H2_REF = -1.1744757
LIH_REF = -8.070548


@pytest.fixture
def evaluated_run(tmp_path: Path) -> Path:
    """Three geometries; H2_a and LiH evaluated, H2_b (no reference) not evaluated."""
    base = {0: H2_REF, 1: -1.1, 2: LIH_REF}
    energy = round_robin(60, 3, 1, lambda t, i, rng: base[i] + 0.01 + 0.001 * rng.standard_normal())
    return write_run(
        tmp_path / "evaluated",
        ["H2_a", "H2_b", "LiH"],
        energy,
        reference=[H2_REF, None, LIH_REF],
        evaluation={0: (H2_REF + 0.0005, 0.0001), 2: (LIH_REF + 0.002, 0.0003)},
    )


@pytest.fixture
def live_run(tmp_path: Path) -> Path:
    """Training in progress (no /evaluation), 3 ranks on 2 geometries (so a geometry has one or two
    rows per step); energies relax from -0.9 - i to -1.0 - i Ha at step 500."""
    energy = round_robin(
        1000,
        2,
        3,
        lambda t, i, rng: (-1.0 if t >= 500 else -0.9) - i + 0.01 * rng.standard_normal(),
    )
    return write_run(tmp_path / "live", ["A", "B"], energy, reference=[-1.0, None])


@pytest.fixture
def scan_run(tmp_path: Path) -> Path:
    """H2O bent through 5 angles (two groups), with references, evaluation and pre-training."""
    angles = [100.0, 104.5, 110.0, 115.0, 120.0]
    names = [f"H2O_{a:g}" for a in angles] + [f"H2O_b_{a:g}" for a in angles]
    refs = [-76.4 + 1e-4 * (a - 104.5) ** 2 for a in angles] * 2
    energy = round_robin(40, 10, 2, lambda t, i, rng: refs[i] + 0.05 + 0.01 * rng.standard_normal())
    loss = round_robin(30, 10, 2, lambda t, i, rng: (1 + i) * np.exp(-t / 10) * (1 + 0.1 * rng.random()))
    return write_run(
        tmp_path / "scan",
        names,
        energy,
        reference=refs,
        group=["H2O"] * 5 + ["H2O_b"] * 5,
        scan=angles * 2,
        evaluation={i: (refs[i] + 0.001 * i, 0.0002) for i in range(10)},
        pretrain_loss=loss,
    )


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def analyze_json(capsys, run: Path) -> list[dict]:
    code, out, _ = run_cli(capsys, "analyze", str(run), "--json")
    assert code == 0
    return json.loads(out)


def parse_cell(text: str):
    if text == "":
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def test_analyze_json_has_documented_keys(capsys, evaluated_run):
    rows = analyze_json(capsys, evaluated_run)
    docs = (REPO / "docs" / "analysis.md").read_text()
    for key in report.KEYS:
        assert f"`{key}`" in docs, key
        assert f"\n    {key} " in report.__doc__, key
    assert [list(r) for r in rows] == [list(report.KEYS)] * 3
    a, b, lih = rows
    assert a["name"] == "H2_a" and a["source"] == "evaluation"
    assert a["energy"] == pytest.approx(H2_REF + 0.0005) and a["error"] == pytest.approx(0.0001)
    assert a["error_mha"] == pytest.approx(0.5) and a["reference"] == pytest.approx(H2_REF)
    assert a["steps_trained"] == 20 and a["n_samples"] == 1000 and a["group"] == "H2_a"
    assert a["scan_coordinate"] is None and a["pretrain_loss"] is None
    # not evaluated: falls back to the training window, no reference
    assert b["source"] == "train" and b["reference"] is None and b["error_mha"] is None
    assert b["energy"] == pytest.approx(-1.09, abs=0.002)
    assert lih["error_mha"] == pytest.approx(2.0)


def test_csv_matches_json(capsys, evaluated_run, live_run, scan_run):
    for run in (evaluated_run, live_run, scan_run):
        rows = analyze_json(capsys, run)
        code, out, _ = run_cli(capsys, "analyze", str(run), "--csv")
        assert code == 0
        records = list(csv.DictReader(io.StringIO(out)))
        assert records and list(records[0]) == list(report.KEYS)
        assert [{k: parse_cell(v) for k, v in rec.items()} for rec in records] == rows


def test_live_run_reports_training_window(capsys, live_run):
    rows = analyze_json(capsys, live_run)
    assert [r["source"] for r in rows] == ["train", "train"]
    window = min(WINDOW_MAX_STEPS, 1000 // 5)  # last 20 % of the steps, at most 200
    with h5py.File(live_run / "energies.h5", "r") as f:
        step, geometry, energy = (f["train"][k][:] for k in ("step", "geometry", "energy"))
    for i, row in enumerate(rows):
        mine = geometry == i
        assert row["steps_trained"] == 1000  # steps, not rows (1 or 2 ranks per step)
        assert row["n_samples"] == window
        per_step = [energy[mine & (step == t)].mean() for t in range(1000 - window, 1000)]
        assert row["energy"] == pytest.approx(np.mean(per_step), abs=1e-12)
        assert row["energy"] == pytest.approx(-1.0 - i, abs=max(4 * row["error"], 1e-3))
        assert 0 < row["error"] < 0.01
    assert rows[0]["error_mha"] == pytest.approx(1000 * (rows[0]["energy"] + 1.0))
    code, out, _ = run_cli(capsys, "analyze", str(live_run))
    assert code == 0
    header, first = out.splitlines()[:2]
    assert header.split()[-1] == "source" and first.split()[-1] == "train"
    assert "not evaluated yet" in out


def test_live_run_torn_flush_and_old_format(capsys, live_run, tmp_path):
    """A flush caught half-way (some columns already longer) and a file of an older version."""
    rows = analyze_json(capsys, live_run)
    with h5py.File(live_run / "energies.h5", "a") as f:
        for key in ("step", "geometry", "energy"):
            f["train"][key].resize((f["train"][key].shape[0] + 5,))  # grown, not yet filled: zeros
    assert analyze_json(capsys, live_run) == rows
    old = write_run(tmp_path / "old", ["H2"], round_robin(10, 1, 1, lambda *_: -1.1), old_format=True)
    (row,) = analyze_json(capsys, old)
    assert row["group"] == "H2" and row["scan_coordinate"] is None and row["energy"] == pytest.approx(-1.1)


def assert_pngs(paths: list[str], names: set[str], run: Path) -> None:
    assert {Path(p).name for p in paths} == names
    for p in paths:
        assert Path(p).parent == run
        data = Path(p).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    assert {p.name for p in run.glob("*.png")} == names


def test_plot_scan_with_pretraining(capsys, scan_run):
    code, out, _ = run_cli(capsys, "plot", str(scan_run))
    assert code == 0
    names = {"training_energy.png", "error_vs_reference.png", "scan.png", "pretrain_loss.png"}
    assert_pngs(out.split(), names, scan_run)
    rows = analyze_json(capsys, scan_run)
    assert [r["scan_coordinate"] for r in rows[:5]] == [100.0, 104.5, 110.0, 115.0, 120.0]
    assert rows[0]["pretrain_loss"] is not None and rows[-1]["pretrain_loss"] > rows[0]["pretrain_loss"]


def test_plot_without_scan_or_references(capsys, evaluated_run, live_run, tmp_path):
    code, out, _ = run_cli(capsys, "plot", str(evaluated_run))
    assert code == 0
    assert_pngs(out.split(), {"training_energy.png", "error_vs_reference.png"}, evaluated_run)
    no_refs = write_run(tmp_path / "norefs", ["X", "Y"], round_robin(30, 2, 1, lambda t, i, rng: -1.0 - t))
    code, out, _ = run_cli(capsys, "plot", str(no_refs))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "skipped error_vs_reference.png: no reference energies (nothing to compare)"
    assert_pngs(lines[1:], {"training_energy.png"}, no_refs)


def test_plot_many_geometries(capsys, tmp_path):
    """More geometries than legend entries: colour bar instead of a legend."""
    run = write_run(
        tmp_path / "many",
        [f"H4_{k}" for k in range(15)],
        round_robin(60, 15, 3, lambda t, i, rng: -2.0 - 0.01 * i + rng.standard_normal() * 0.01),
        reference=[-2.0 - 0.01 * i for i in range(15)],
    )
    code, out, _ = run_cli(capsys, "plot", str(run))
    assert code == 0
    assert_pngs(out.split(), {"training_energy.png", "error_vs_reference.png"}, run)


def test_compare_aligns_by_name(capsys, tmp_path):
    energy = round_robin(20, 3, 1, lambda *_: -1.0)
    first = write_run(
        tmp_path / "scratch" / "run",
        ["A", "B", "C"],
        energy,
        reference=[-1.0, -2.0, None],
        evaluation={0: (-0.998, 1e-4), 1: (-1.996, 1e-4), 2: (-3.0, 1e-4)},
    )
    second = write_run(
        tmp_path / "pretrained" / "run",
        ["C", "B", "D"],
        energy,
        reference=[None, -2.0, -4.0],
        evaluation={0: (-3.001, 1e-4), 1: (-1.999, 1e-4), 2: (-3.99, 1e-4)},
    )
    code, out, _ = run_cli(capsys, "compare", str(first), str(second), "--json")
    assert code == 0
    cmp = json.loads(out)
    labels = ["scratch/run", "pretrained/run"]
    assert [r["label"] for r in cmp["runs"]] == labels
    by_name = {g["name"]: g for g in cmp["geometries"]}
    assert list(by_name) == ["A", "B", "C", "D"]
    assert by_name["A"]["results"]["pretrained/run"] is None
    assert by_name["B"]["results"]["scratch/run"]["error_mha"] == pytest.approx(4.0)
    assert by_name["B"]["results"]["pretrained/run"]["error_mha"] == pytest.approx(1.0)
    assert by_name["C"]["results"]["pretrained/run"]["energy"] == pytest.approx(-3.001)
    assert by_name["D"]["reference"] == pytest.approx(-4.0)
    summary = cmp["summary"]
    assert summary["mean_abs_error_mha"]["scratch/run"] == pytest.approx((2.0 + 4.0) / 2)
    assert summary["mean_abs_error_mha"]["pretrained/run"] == pytest.approx((1.0 + 10.0) / 2)
    assert summary["common_geometries"] == ["B"]
    assert summary["mean_abs_error_mha_common"] == pytest.approx({"scratch/run": 4.0, "pretrained/run": 1.0})

    code, out, _ = run_cli(capsys, "compare", str(first), str(second), "--csv")
    assert code == 0
    records = list(csv.DictReader(io.StringIO(out)))
    assert [r["name"] for r in records] == ["A", "B", "C", "D", "mean |E-ref| (mHa)"]
    assert float(records[1]["pretrained/run error_mha"]) == pytest.approx(1.0)
    assert records[0]["pretrained/run energy"] == ""
    assert float(records[-1]["scratch/run error_mha"]) == pytest.approx(3.0)

    code, out, _ = run_cli(capsys, "compare", str(first), str(second))
    assert code == 0
    lines = out.splitlines()
    assert "scratch/run" in lines[0] and "pretrained/run" in lines[0]
    mean_line = next(line for line in lines if line.startswith("mean |E-ref| (mHa) "))
    assert "3.00" in mean_line and "5.50" in mean_line


def test_compare_labels_are_basenames_when_distinct(capsys, evaluated_run, live_run):
    code, out, _ = run_cli(capsys, "compare", str(evaluated_run), str(live_run), "--json")
    assert code == 0
    assert [r["label"] for r in json.loads(out)["runs"]] == ["evaluated", "live"]


@pytest.mark.parametrize("case", ["missing", "not_a_run_dir", "not_hdf5", "foreign_hdf5"])
@pytest.mark.parametrize("command", ["analyze", "plot", "compare"])
def test_bad_run_dir_exits_2_with_one_line(capsys, tmp_path, evaluated_run, case, command):
    run = tmp_path / "bad"
    bad_path = run
    if case != "missing":
        run.mkdir()
    if case in ("not_hdf5", "foreign_hdf5"):
        bad_path = run / "energies.h5"
        if case == "not_hdf5":
            bad_path.write_bytes(b"not an hdf5 file\n")
        else:
            with h5py.File(bad_path, "w") as f:
                f["x"] = np.zeros(3)
    argv = [command, str(evaluated_run), str(run)] if command == "compare" else [command, str(run)]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {bad_path}: "), lines[0]
    assert not list(run.glob("*.png")) if run.exists() else True


def test_login_node_commands_need_no_jax_or_mpi4py(tmp_path, evaluated_run, scan_run):
    """analyze, plot and compare with jax and mpi4py unimportable (as on a login node)."""
    code = f"""
import sys
sys.modules["jax"] = None
sys.modules["mpi4py"] = None
from hpcwf.cli import main
for argv in (["analyze", {str(scan_run)!r}, "--json"], ["analyze", {str(evaluated_run)!r}, "--csv"],
             ["plot", {str(scan_run)!r}], ["compare", {str(evaluated_run)!r}, {str(scan_run)!r}]):
    code = main(argv)
    if code:
        sys.exit(code)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "mpi4py") and sys.modules[m])
print("heavy modules:", loaded)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "heavy modules: []" in proc.stdout
    assert (scan_run / "scan.png").stat().st_size > 0


def test_unresolved_tau_and_evaluation_columns_of_older_files(capsys, evaluated_run):
    """An evaluation too short to resolve tau shows '>bound' in the table (never a bare tau);
    /evaluation of older files lacks the columns added with the multi-chain error bars."""
    with h5py.File(evaluated_run / "energies.h5", "a") as f:
        ev = f["evaluation"]
        ev["autocorrelation_time"][0] = np.nan
        ev["autocorrelation_time_lower_bound"][0] = 7.25
    a = analyze_json(capsys, evaluated_run)[0]
    assert a["autocorrelation_time"] is None and a["autocorrelation_time_lower_bound"] == 7.25
    code, out, _ = run_cli(capsys, "analyze", str(evaluated_run))
    assert code == 0 and " >7.2 " in out.splitlines()[1] and "too short to resolve" in out
    with h5py.File(evaluated_run / "energies.h5", "a") as f:
        for key in ("autocorrelation_time_lower_bound", "r_hat", "n_chains", "error_blocking"):
            del f["evaluation"][key]
    a, b, lih = analyze_json(capsys, evaluated_run)
    assert a["energy"] == pytest.approx(H2_REF + 0.0005) and a["error"] == pytest.approx(0.0001)
    assert a["r_hat"] is None and a["autocorrelation_time_lower_bound"] is None


def _train_row(step: int, energy: float) -> dict:
    from hpcwf.io import log_schema

    row = {name: 0.5 for name in log_schema.names("train")}
    return {**row, "step": step, "geometry": 0, "energy": energy, "n_nonfinite": 0, "rolled_back": 0}


def _h2():
    from hpcwf.systems.molecule import Molecule

    return Molecule.create("H2", [["H", 0.0, 0.0, 0.0], ["H", 1.4, 0.0, 0.0]])


def test_a_live_extension_shows_the_training_window_not_the_old_evaluation(capsys, tmp_path):
    """Issue 21.1, live: an evaluated 3-step run is resumed and extended (the run's own writer,
    EnergyLog, as the stage runner drives it). Up to the resume the step-3 evaluation is the
    result; the first published row past step 3 marks it stale in the same version of the
    file, so a reader of the live run sees the training window, flagged, never the old
    evaluation labelled with the new step count."""
    from hpcwf.io import log_schema
    from hpcwf.io.energy_log import EnergyLog

    path = tmp_path / "run" / "energies.h5"
    path.parent.mkdir()
    log = EnergyLog(path, [_h2()], hf_energy=[-1.12])
    for t in range(3):
        log.append(**_train_row(t, -1.10))
    log.flush()
    result = {c.name: 1.0 for c in log_schema.EVALUATION} | {"energy": -1.16, "n_samples": 10, "n_chains": 5}
    log.write_evaluation({0: result}, 1, 10, 3)
    (row,) = analyze_json(capsys, path.parent)
    assert (row["source"], row["flags"], row["energy"], row["evaluation_step"]) == (
        "evaluation",
        None,
        -1.16,
        3,
    )

    resumed = EnergyLog(path, [_h2()], hf_energy=[-1.12])  # the extension resumes at step 3
    resumed.truncate(3)
    assert analyze_json(capsys, path.parent)[0]["source"] == "evaluation"  # not trained past yet
    resumed.append(**_train_row(3, -1.13))
    assert analyze_json(capsys, path.parent)[0]["source"] == "evaluation"  # not published yet
    resumed.flush()  # a progress line or a checkpoint of the live run
    (row,) = analyze_json(capsys, path.parent)
    assert row["source"] == "train" and row["flags"] == "stale_evaluation" and row["evaluation_step"] == 3
    assert row["energy"] == pytest.approx(-1.13) and row["steps_trained"] == 4
    with h5py.File(path, "r") as f:
        assert f["evaluation"].attrs["stale"] == 1 and f["evaluation/energy"][0] == -1.16  # kept
    code, out, _ = run_cli(capsys, "analyze", str(path.parent))
    assert code == 0 and out.splitlines()[1].split()[-2:] == ["train", "[stale_evaluation]"]
    assert "stale_evaluation: the evaluation in energies.h5 is of the parameters of step 3" in out
    code, out, _ = run_cli(capsys, "compare", str(path.parent), "--json")
    result = json.loads(out)["geometries"][0]["results"]["run"]
    assert result["source"] == "train" and result["flags"] == "stale_evaluation"


def test_an_evaluation_of_an_older_hpcwf_goes_stale_when_its_run_is_extended(capsys, evaluated_run):
    """An /evaluation without params_step (written by an older hpcwf) reads as current; a run
    that resumes the file takes it to be of the step the log ends at, so training on marks it
    stale as well."""
    from hpcwf.io.energy_log import EnergyLog
    from hpcwf.systems.molecule import Molecule

    rows = analyze_json(capsys, evaluated_run)
    assert [r["source"] for r in rows] == ["evaluation", "train", "evaluation"]
    assert {r["evaluation_step"] for r in rows} == {None}
    mols = [Molecule.create(n, [["H", 0.0, 0.0, 0.0], ["H", 1.4, 0.0, 0.0]]) for n in ("H2_a", "H2_b", "LiH")]
    log = EnergyLog(evaluated_run / "energies.h5", mols)
    assert [r["source"] for r in analyze_json(capsys, evaluated_run)] == ["evaluation", "train", "evaluation"]
    log.append(**_train_row(60, -1.0))
    log.flush()
    rows = analyze_json(capsys, evaluated_run)
    assert [r["source"] for r in rows] == ["train"] * 3
    assert [r["flags"] for r in rows] == ["stale_evaluation", None, "stale_evaluation"]
    assert {r["evaluation_step"] for r in rows} == {60}


def test_evaluations_far_above_hf_and_outside_the_training_set_are_flagged(capsys, tmp_path):
    """Issue 21.2: an evaluated energy more than 0.1 Ha above the geometry's own HF energy is
    flagged above_hf (not one 0.05 Ha above, nor a training window); an evaluation, without
    training in this run, of a geometry outside the [init] checkpoint's training set is flagged
    extrapolated (not one inside it, nor one this run trained)."""
    names = ["H2", "HeH+", "LiH", "H2_trained"]
    hf = [-1.12, -2.85, -7.86, -1.12]
    energy = np.full((4, 4, 1), np.nan)
    energy[:, 3, 0] = -1.0  # only H2_trained was trained here
    run = write_run(
        tmp_path / "zs",
        names,
        energy,
        evaluation={0: (-1.07, 1e-3), 1: (-2.80, 1e-3), 2: (-4.51, 1e-2), 3: (-1.0, 1e-3)},
        hf_energy=hf,
        outside_training_set=[0, 1, 1, 1],
    )
    rows = analyze_json(capsys, run)
    assert [r["flags"] for r in rows] == [None, "extrapolated", "extrapolated,above_hf", "above_hf"]
    assert [r["hf_energy"] for r in rows] == hf
    code, out, _ = run_cli(capsys, "analyze", str(run))
    assert code == 0
    lines = out.splitlines()
    assert lines[3].split()[-2:] == ["evaluation", "[extrapolated,above_hf]"]
    assert any(line.startswith("extrapolated: ") for line in lines)
    assert any(line.startswith("above_hf: E is more than 0.1 Ha above") for line in lines)
    # A training window above HF (an early or live run) is not flagged: only evaluations are.
    live = write_run(tmp_path / "live", ["H2"], np.full((5, 1, 1), -0.5), hf_energy=[-1.12])
    assert analyze_json(capsys, live)[0]["flags"] is None
    code, out, _ = run_cli(capsys, "compare", str(run))
    assert code == 0 and "-4.510000 +- 0.010000!" in out and "! above_hf: " in out
    code, out, _ = run_cli(capsys, "plot", str(run))
    assert code == 0 and "note: extrapolated (HeH+, LiH): " in out


def test_accuracy_verdict_counts_the_error_bar():
    from hpcwf.analysis.report import accuracy_verdict

    row = {"name": "LiH", "source": "evaluation", "flags": "", "error": 0.0004}
    assert "within chemical accuracy" in accuracy_verdict({**row, "error_mha": -0.9})
    assert "within two error bars" in accuracy_verdict({**row, "error_mha": 2.2})
    assert "NOT within" in accuracy_verdict({**row, "error_mha": 12.2})
    assert accuracy_verdict({**row, "error_mha": None}) is None
    assert accuracy_verdict({**row, "error_mha": 0.1, "source": "train"}) is None
