"""All-electron CCSD(T)/CBS reference energies for dataset geometries that no published reference
covers (distorted geometries, compounds without a row in ../shared/reference/energies.csv).

    python inputs/ccsdt_references.py DATASET.toml [NAME ...]   # computes, appends to the CSV
    python inputs/ccsdt_references.py --validate                  # against energies.csv

Method (computed with pyscf for this project; each row of `inputs/references_ccsdt.csv` says
which): restricted HF and CCSD(T) with all electrons correlated, in the core-valence basis
sets cc-pCVTZ and cc-pCVQZ (Woon & Dunning 1995; cc-pVTZ / cc-pVQZ on H), extrapolated to the
complete basis set:
  - HF: E(X) = E_CBS + A (X + 1) exp(-9 sqrt(X)), X = 3, 4 (Karton & Martin, Theor. Chem. Acc.
    115, 330 (2006));
  - correlation: E(X) = E_CBS + B X^-3, X = 3, 4 (Helgaker et al., J. Chem. Phys. 106, 9639
    (1997)).
Against the exact energies this misses mostly the connected triples and quadruples beyond (T)
and the rest of the basis-set error: a few mHa for these 10-16-electron closed-shell
molecules. `--validate` measures it on the four equilibrium molecules of energies.csv (CH4,
NH3, H2O, N2) and prints the differences; inputs/references.md quotes them.

Every geometry is read from a dataset file (bohr) by name; results are appended to
`inputs/references_ccsdt.csv` (name, atoms as a fingerprint, energies in Ha), which
`inputs/make_datasets.py` attaches as `reference_energy` to the geometries of that name and
those exact coordinates. Needs pyscf; a QZ calculation of a 16-electron molecule takes minutes.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Sequence
from pathlib import Path

import tomllib

HERE = Path(__file__).resolve().parent
CSV_PATH = HERE / "references_ccsdt.csv"
FIELDS = ("name", "atoms", "e_hf_cbs", "e_corr_cbs", "energy", "e_tz", "e_qz", "method", "wall_s")
METHOD = "CCSD(T)/CBS(cc-pCVTZ,cc-pCVQZ) all-electron"
ENERGIES_CSV = HERE.parent.parent / "shared" / "reference" / "energies.csv"
# energies.csv rows whose geometry is one of ours (inputs/datasets/foundation_finetune.toml).
VALIDATION = {"CH4_eq": "CH4", "NH3_eq": "NH3", "H2O_eq": "H2O", "N2_eq": "N2"}


def atoms_key(atoms: Sequence) -> str:
    """The geometry as written in the dataset (symbol and bohr to 1e-6): the CSV's fingerprint."""
    return "; ".join(f"{s} {x:.6f} {y:.6f} {z:.6f}" for s, x, y, z in atoms)


def ccsdt(atoms: Sequence, cardinal: int, charge: int = 0, spin: int = 0) -> tuple[float, float]:
    """(E_HF, E_corr) in Ha of RHF + all-electron CCSD(T) in cc-pCV{T,Q}Z (cc-pV{T,Q}Z on H)."""
    from pyscf import cc, gto, scf

    letter = {3: "t", 4: "q"}[cardinal]
    mol = gto.M(
        atom=[(s, (x, y, z)) for s, x, y, z in atoms],
        unit="Bohr",
        basis={"H": f"cc-pv{letter}z", "default": f"cc-pcv{letter}z"},
        charge=charge,
        spin=spin,
        verbose=0,
        max_memory=16000,
    )
    mf = scf.RHF(mol).run(conv_tol=1e-10)
    if not mf.converged:
        raise RuntimeError("HF did not converge")
    mycc = cc.CCSD(mf).run(conv_tol=1e-8)
    if not mycc.converged:
        raise RuntimeError("CCSD did not converge")
    return float(mf.e_tot), float(mycc.e_corr + mycc.ccsd_t())


def cbs(hf: tuple[float, float], corr: tuple[float, float]) -> tuple[float, float]:
    """(E_HF_CBS, E_corr_CBS) from the X = 3, 4 values (formulas in the module docstring)."""
    a3, a4 = ((x + 1) * math.exp(-9 * math.sqrt(x)) for x in (3, 4))
    amplitude = (hf[0] - hf[1]) / (a3 - a4)
    hf_cbs = hf[1] - amplitude * a4
    corr_cbs = (4**3 * corr[1] - 3**3 * corr[0]) / (4**3 - 3**3)
    return hf_cbs, corr_cbs


def reference_row(name: str, atoms: Sequence) -> dict:
    t0 = time.time()
    hf3, c3 = ccsdt(atoms, 3)
    hf4, c4 = ccsdt(atoms, 4)
    hf_cbs, corr_cbs = cbs((hf3, hf4), (c3, c4))
    return {
        "name": name,
        "atoms": atoms_key(atoms),
        "e_hf_cbs": f"{hf_cbs:.6f}",
        "e_corr_cbs": f"{corr_cbs:.6f}",
        "energy": f"{hf_cbs + corr_cbs:.6f}",
        "e_tz": f"{hf3 + c3:.6f}",
        "e_qz": f"{hf4 + c4:.6f}",
        "method": METHOD,
        "wall_s": f"{time.time() - t0:.0f}",
    }


def read_rows(path: Path = CSV_PATH) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(rows: list[dict], path: Path = CSV_PATH) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def dataset_geometries(path: Path) -> dict[str, list]:
    """name -> [(symbol, x, y, z), ...] (bohr) of a dataset file."""
    data = tomllib.loads(path.read_text())
    return {g["name"]: [tuple(a) for a in g["atoms"]] for g in data["geometry"]}


def compute(dataset: Path, names: Sequence[str]) -> None:
    geometries = dataset_geometries(dataset)
    rows = read_rows()
    done = {(r["name"], r["atoms"]) for r in rows}
    for name in names or list(geometries):
        atoms = geometries[name]
        if (name, atoms_key(atoms)) in done:
            print(f"{name}: already in {CSV_PATH.name}")
            continue
        row = reference_row(name, atoms)
        rows.append(row)
        write_rows(rows)  # after each geometry: an interrupted batch keeps what it computed
        energies = f"E = {row['energy']} Ha (TZ {row['e_tz']}, QZ {row['e_qz']})"
        print(f"{name}: {energies}, {row['wall_s']} s", flush=True)


def validate() -> None:
    """CBS values of the equilibrium molecules against energies.csv (mHa)."""
    with open(ENERGIES_CSV, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["system"] in VALIDATION.values()]
    # H2O has a second row, at the seed paper's rotation-scan geometry: not ours.
    literature = {r["system"]: r for r in rows if "rotation" not in r["geometry"]}
    geometries = dataset_geometries(HERE / "datasets" / "foundation_finetune.toml")
    compute(HERE / "datasets" / "foundation_finetune.toml", list(VALIDATION))
    rows = {r["name"]: r for r in read_rows()}
    for name, system in VALIDATION.items():
        row, lit = rows[name], literature[system]
        assert row["atoms"] == atoms_key(geometries[name])
        diff = (float(row["energy"]) - float(lit["energy_Ha"])) * 1e3
        print(
            f"{system:<4} CBS {float(row['energy']):.4f}  {lit['method']} ({lit['source']}) "
            f"{float(lit['energy_Ha']):.4f}  CBS - it = {diff:+.1f} mHa"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", nargs="?", type=Path)
    parser.add_argument("names", nargs="*")
    parser.add_argument("--validate", action="store_true")
    args = parser.parse_args(argv)
    if args.validate:
        validate()
    else:
        compute(args.dataset, args.names)


if __name__ == "__main__":
    main()
