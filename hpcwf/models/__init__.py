"""Pre-trained models shipped with hpcwf: `hpcwf models` lists them, a job starts from one with
`[init] checkpoint = "model:NAME"`.

Each model is a folder `hpcwf/models/<NAME>/` installed with the package:

    params.h5   a parameter file (`hpcwf.io.checkpoint.save_params`: format "hpcwf-params"),
                whose attrs hold what a job must match - model_size, orbitals, n_determinants,
                basis, elements (comma-separated, the descriptor layout), ansatz_version - and
                what the card summarizes: optimization_steps, pretraining_steps, wall_time_h,
                hardware, training_set; its /geometries dataset is the training set
    MODEL.md    the model card: training set and geometries, basis, size, steps, wall time and
                hardware, energies on its own training geometries and after fine-tuning, limits,
                how to reproduce it

Folders named in the environment variable HPCWF_MODELS_PATH (separated by ":") are searched
too, before the shipped models: a group's own models, shared on a cluster file system, are
used the same way. Jax-free (h5py only), so `hpcwf models` and `hpcwf check` run on a login node. The idea of
shipping the checkpoint beside its card inside the repository follows Orbformer
(microsoft/oneqmc), which fine-tunes a new molecule from its shipped checkpoint in one command.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

MODEL_PREFIX = "model:"
MODELS_DIR = Path(__file__).resolve().parent
MODELS_PATH_ENV = "HPCWF_MODELS_PATH"
PARAMS_FILE = "params.h5"
CARD_FILE = "MODEL.md"
# Job settings a model's parameters only fit with: metadata attr -> job key.
MATCHED_SETTINGS = {
    "basis": "hartree_fock.basis",
    "elements": "hartree_fock.elements",
    "model_size": "model.size",
    "orbitals": "model.orbitals",
    "n_determinants": "model.n_determinants",
}


@dataclasses.dataclass(frozen=True)
class ShippedModel:
    """One shipped model: its name, files and the metadata of its parameter file.

    Attributes:
        name: folder name under hpcwf/models/, used as `model:NAME`.
        params_path: its parameter file.
        card_path: its model card (Markdown).
        metadata: the parameter file's attrs (str, int or float values).
    """

    name: str
    params_path: Path
    card_path: Path
    metadata: dict

    def setting(self, key: str) -> str:
        """The model's value of a MATCHED_SETTINGS key as a job would write it, as a string."""
        return str(self.metadata.get(key, "?"))

    def mismatch(self, job_settings: dict[str, object]) -> str | None:
        """The first job setting (MATCHED_SETTINGS key -> the job's value; elements as a list)
        that the model's parameters do not fit, as one sentence; None when all fit. The ansatz
        version (hpcwf.model.registry.ANSATZ_VERSION) is compared too."""
        from hpcwf.model.registry import ANSATZ_VERSION

        for key, job_key in MATCHED_SETTINGS.items():
            value = job_settings[key]
            job_value = ",".join(value) if isinstance(value, list | tuple) else str(value)
            if job_value != self.setting(key):
                return (
                    f"model '{self.name}' was trained with {job_key} = {_as_toml(key, self.setting(key))}, "
                    f"this job has {_as_toml(key, job_value)}; set it to the model's value "
                    "(`hpcwf models` lists them)"
                )
        version = int(self.metadata.get("ansatz_version", 1))
        if version != ANSATZ_VERSION:
            return (
                f"model '{self.name}' was trained for ansatz version {version}, this hpcwf computes "
                f"version {ANSATZ_VERSION}; use the hpcwf release it shipped with"
            )
        return None


def _as_toml(key: str, value: str) -> str:
    """A MATCHED_SETTINGS value as a job file writes it (elements as a list)."""
    if key == "elements":
        return "[" + ", ".join(f'"{e}"' for e in value.split(",")) + "]"
    return f'"{value}"' if key != "n_determinants" else value


def _read_metadata(params_path: Path) -> dict:
    from hpcwf.io.h5files import open_h5

    with open_h5(params_path) as f:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}


def model_folders() -> list[Path]:
    """Where models are looked up, in order: HPCWF_MODELS_PATH's folders, then the shipped ones."""
    extra = [Path(p) for p in os.environ.get(MODELS_PATH_ENV, "").split(os.pathsep) if p]
    return [*extra, MODELS_DIR]


def shipped_models(folders: list[Path] | None = None) -> list[ShippedModel]:
    """Every model (a subfolder holding params.h5) of `folders` (default `model_folders()`),
    sorted by name; of two with the same name the one in the earlier folder. OSError if a
    parameter file cannot be read."""
    found: dict[str, ShippedModel] = {}
    for directory in folders if folders is not None else model_folders():
        if not directory.is_dir():
            continue
        for folder in sorted(p for p in directory.iterdir() if (p / PARAMS_FILE).is_file()):
            if folder.name not in found:
                params = folder / PARAMS_FILE
                found[folder.name] = ShippedModel(
                    folder.name, params, folder / CARD_FILE, _read_metadata(params)
                )
    return [found[name] for name in sorted(found)]


def is_model_reference(source: str) -> bool:
    """True for an `[init] checkpoint` value of the form "model:NAME"."""
    return source.startswith(MODEL_PREFIX)


def shipped_model(source: str, folders: list[Path] | None = None) -> ShippedModel:
    """The model that `source` ("model:NAME") names. KeyError with a one-line message that
    lists the shipped names when there is none of that name."""
    name = source[len(MODEL_PREFIX) :] if is_model_reference(source) else source
    models = {m.name: m for m in shipped_models(folders)}
    if name not in models:
        names = ", ".join(models) or "none"
        raise KeyError(f"no shipped model named '{name}' (shipped: {names}; `hpcwf models` lists them)")
    return models[name]


def checkpoint_source(source: str) -> Path:
    """The file or run directory an `[init] checkpoint` value names: "model:NAME" resolved to
    that model's parameter file (KeyError if there is none), anything else as a path."""
    return shipped_model(source).params_path if is_model_reference(source) else Path(source)


def models_table(models: list[ShippedModel]) -> str:
    """`hpcwf models`: one row per model with what a job must match and how long it trained."""
    header = ("name", "elements", "basis", "size", "orbitals", "dets", "steps", "geometries", "card")
    rows = [header]
    for m in models:
        md = m.metadata
        card = str(m.card_path) if m.card_path.is_file() else "-"
        rows.append(
            (
                m.name,
                m.setting("elements"),
                m.setting("basis"),
                m.setting("model_size"),
                m.setting("orbitals"),
                m.setting("n_determinants"),
                str(md.get("optimization_steps", "?")),
                str(md.get("training_set", "?")),
                card,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = ("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows)
    return "\n".join(lines)
