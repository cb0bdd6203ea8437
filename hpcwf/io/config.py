"""Job files: parsing, validation and the fully resolved configuration.

A job file is TOML (see docs/config.md). `load_job` turns it into a frozen `JobConfig`,
reporting every mistake as a `ConfigError` that names the file and the offending key, so
that a typo is caught before any expensive Hartree-Fock or compilation work starts.

Defaults live in exactly one place: the field defaults of the section dataclasses below.
The parser walks those fields (type hints give the expected type, field metadata gives the
allowed range or choices), so adding a key means adding one dataclass field.

This module must stay light: no jax import, nothing written to disk while loading.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import tomli_w
import tomllib

from hpcwf.errors import InputError
from hpcwf.model.registry import ORBITAL_TYPES
from hpcwf.systems import basis_sets
from hpcwf.systems.molecule import ELEMENTS, Molecule, MoleculeError

__all__ = [
    "ConfigError",
    "HartreeFockConfig",
    "ModelConfig",
    "PretrainingConfig",
    "OptimizationConfig",
    "SCHEDULE_PRESETS",
    "McmcConfig",
    "ParallelConfig",
    "SchedulerConfig",
    "EvaluationConfig",
    "InitConfig",
    "CheckpointConfig",
    "OutputConfig",
    "JobConfig",
    "load_job",
    "config_to_dict",
    "write_resolved_config",
]


class ConfigError(InputError):
    """Invalid job file. `str(err)` is ``"<file>: <key>: <message>"``.

    Attributes:
        file: path of the file holding the mistake (the job file or its dataset file).
        key: dotted key of the offending entry, e.g. ``optimization.steps``,
            ``geometry[1].spin``, ``dataset:geometry[3].atoms``; ``<toml>`` for syntax errors
            and ``<file>`` when the file cannot be read at all.
        message: what is wrong and, where possible, how to fix it.
    """

    def __init__(self, file: str | os.PathLike, key: str, message: str):
        self.file = str(file)
        self.key = key
        self.message = message
        super().__init__(f"{self.file}: {key}: {message}")


# --------------------------------------------------------------------------------------------
# Field declarations. Metadata keys understood by the parser:
#   choices: allowed values;  gt / ge / lt: numeric bounds;
#   check: callable(value) -> (key_suffix, message) | None for anything more specific.
# --------------------------------------------------------------------------------------------


def _opt(default: Any, **meta: Any) -> Any:
    """A dataclass field with a default and validation metadata."""
    # Mutable defaults would be shared between instances of a "frozen" config.
    if isinstance(default, (list, dict, set)):
        raise TypeError("config defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata=meta)


def _check_elements(value: tuple[str, ...]) -> tuple[str, str] | None:
    """The descriptor element list: non-empty, known elements, no repeats."""
    if not value:
        return "", "must list at least one element"
    seen: set[str] = set()
    for j, sym in enumerate(value):
        if sym not in ELEMENTS:
            return f"[{j}]", f"unknown element {sym!r} (supported: {', '.join(ELEMENTS)})"
        if sym in seen:
            return f"[{j}]", f"element {sym!r} listed twice"
        seen.add(sym)
    return None


def _check_nonempty(value: str) -> tuple[str, str] | None:
    return ("", "must not be empty") if not value.strip() else None


@dataclasses.dataclass(frozen=True)
class HartreeFockConfig:
    """[hartree_fock]: the reference calculation whose orbitals feed the descriptors."""

    basis: str = _opt("STO-6G", check=_check_nonempty)
    # The element list fixes the descriptor layout, so pre-training and fine-tuning must agree.
    elements: tuple[str, ...] = _opt(
        ("H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne"), check=_check_elements
    )
    # HF results are cached per geometry; pointing several runs at one file reuses them.
    cache: str = _opt("")  # "" = <output.dir>/hf_cache.h5


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """[model]: wavefunction architecture."""

    size: str = _opt("S", choices=("S", "M", "L"))
    orbitals: str = _opt("tao", choices=tuple(ORBITAL_TYPES))  # hpcwf.model.registry
    n_determinants: int = _opt(4, ge=1)


@dataclasses.dataclass(frozen=True)
class PretrainingConfig:
    """[pretraining]: supervised fit of the orbitals to Hartree-Fock."""

    # 1000 steps at 1e-3 (DeepErwin and FermiNet pre-train 1000-2000): with the exact cusp and
    # Slater-rule envelopes, VMC starts (benchmarks/pretraining_start.py) at Li +37 mHa from
    # E_HF, variance 1.25 Ha^2, against +343 mHa / 2.89 after 300 steps; H2O +1.25 Ha / 26.5
    # against +3.8 Ha / 216 after 300. lr 3e-3 was not better overall (H2O +0.93 Ha, but Ne
    # +1.27 Ha and O +0.23 Ha after 1000 steps). The paper's jobs set their own values.
    steps: int = _opt(1000, ge=0)
    learning_rate: float = _opt(1e-3, gt=0.0)
    batch_size: int = _opt(0, ge=0)  # 0 = optimization.batch_size


# Optimizer presets of `[optimization] schedule`: the values of the schedule and K-FAC keys
# that a job does not set itself. "molecule" is the field defaults below, "foundation"
# differs only in the keys listed. load_job resolves the preset, so a loaded JobConfig (and
# the config.toml written from it) always holds the concrete numbers.
SCHEDULE_PRESETS: dict[str, dict[str, Any]] = {
    # One molecule (or a few geometries) for a few thousand steps: DeepErwin's single-molecule
    # K-FAC defaults (deeperwin/configuration.py OptimizerConfigKFAC: lr 0.1/(1 + t/6000),
    # constant damping 1e-3, kfac-jax's constraint 3e-3), measured against alternatives on LiH
    # (docs/config.md, Presets).
    "molecule": {},
    # The paper's long multi-geometry pre-training (METHOD 2.3; DeepErwin's
    # sample_configs/pre_training_basemodel/config_bm_hfcoeff.yml): lr 0.1/(1 + t/20000),
    # damping max(2e-3, exp(-t/5000)), Fisher-norm constraint 4 on the unscaled update,
    # slower curvature average.
    "foundation": {
        "learning_rate": 0.1,
        "lr_decay_steps": 20000.0,
        "damping": 2e-3,
        "damping_initial": 1.0,
        "damping_decay_steps": 5000.0,
        "norm_constraint": 4.0,
        "norm_constraint_mode": "fisher",
        "curvature_ema": 0.99,
    },
}


@dataclasses.dataclass(frozen=True)
class OptimizationConfig:
    """[optimization]: variational Monte Carlo energy minimization.

    The defaults of the keys named in SCHEDULE_PRESETS come from the `schedule` preset; the
    field defaults below are the "molecule" preset.
    """

    steps: int = _opt(2000, ge=0)
    batch_size: int = _opt(256, ge=1)
    optimizer: str = _opt("kfac", choices=("kfac", "adam"))
    schedule: str = _opt("molecule", choices=tuple(SCHEDULE_PRESETS))
    learning_rate: float = _opt(0.1, gt=0.0)
    lr_decay_steps: float = _opt(6000.0, gt=0.0)
    lr_offset: int = _opt(0, ge=0)
    damping: float = _opt(1e-3, gt=0.0)
    damping_initial: float = _opt(1e-3, gt=0.0)
    damping_decay_steps: float = _opt(5000.0, gt=0.0)
    norm_constraint: float = _opt(3e-3, gt=0.0)
    norm_constraint_mode: str = _opt("fisher_scaled", choices=("fisher_scaled", "fisher"))
    curvature_ema: float = _opt(0.95, gt=0.0, lt=1.0)
    clip_width: float = _opt(5.0, gt=0.0)


@dataclasses.dataclass(frozen=True)
class McmcConfig:
    """[mcmc]: Metropolis-Hastings sampling of electron positions."""

    steps_per_update: int = _opt(20, ge=1)
    burn_in_steps: int = _opt(200, ge=0)
    initial_step_size: float = _opt(0.2, gt=0.0)
    target_acceptance: float = _opt(0.5, gt=0.0, lt=1.0)
    max_age: int = _opt(20, ge=1)
    # hpcwf.mcmc.PROPOSALS (config stays jax-free; tests/test_config.py checks they agree).
    proposal: str = _opt("nuclear-distance", choices=("gaussian", "nuclear-distance"))


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    """[scheduler]: which geometry gets the next optimization step."""

    warmup_rounds: int = _opt(1, ge=0)
    max_age: int = _opt(0, ge=0)  # 0 = 2 * n_geometries
    # true: at each step every rank picks from the same cost class (equal modelled step cost), so
    # no rank waits for another's bigger molecule (hpcwf.parallel.sharding); false: each rank
    # picks from its whole shard.
    cost_classes: bool = _opt(True)


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    """[parallel]: how MPI ranks share the work."""

    # k consecutive ranks share one geometry's walkers (optimization.batch_size / k each) and
    # hold one shard of the dataset together: for a molecule too big for one device, or a
    # fine-tune on several GPUs. 1: each rank samples its own geometry.
    ranks_per_geometry: int = _opt(1, ge=1)


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """[evaluation]: final energy estimate per geometry."""

    steps: int = _opt(200, ge=0)
    burn_in_steps: int = _opt(100, ge=0)


@dataclasses.dataclass(frozen=True)
class InitConfig:
    """[init]: start from another run's parameters."""

    checkpoint: str = _opt("")
    mode: str = _opt("finetune", choices=("finetune", "evaluate"))
    # The paper's fine-tuning (METHOD 2.3; DeepErwin's fine-tune template): the schedule offset
    # alone lowers the lr, 0.1 / (1 + 32000 / 6000) = 0.0158 at step 0, 6.3x below scratch.
    # lr_factor is an extra factor on top (1 = none: one reduction, not two).
    lr_offset: int = _opt(32000, ge=0)
    lr_factor: float = _opt(1.0, gt=0.0)
    damping: float = _opt(1e-3, gt=0.0)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """[checkpoint]: when parameters are saved and which files are kept."""

    every_steps: int = _opt(0, ge=0)
    # On by default: a node failure, OOM kill or scancel without a warning signal then loses at
    # most this much wall time (FermiNet and JaQMC save every 10 minutes by default).
    every_minutes: float = _opt(30.0, ge=0.0)
    keep_last: int = _opt(3, ge=1)
    keep_every: int = _opt(0, ge=0)


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """[output]: where results go and how chatty the run is."""

    # "" is resolved by load_job to "runs/<job file stem>", so a loaded JobConfig never holds "".
    dir: str = _opt("")
    print_every: int = _opt(10, ge=1)


@dataclasses.dataclass(frozen=True, eq=False)
class JobConfig:
    """A validated job: geometries plus one frozen config object per TOML section.

    Equality compares the content that determines a run: `job_file` and `dataset` are
    provenance only (a resolved config inlines the dataset), and geometries are compared via
    `Molecule.to_dict()` because `Molecule` holds a numpy array.
    """

    geometries: tuple[Molecule, ...]
    seed: int = _opt(0, ge=0)
    hartree_fock: HartreeFockConfig = dataclasses.field(default_factory=HartreeFockConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    pretraining: PretrainingConfig = dataclasses.field(default_factory=PretrainingConfig)
    optimization: OptimizationConfig = dataclasses.field(default_factory=OptimizationConfig)
    mcmc: McmcConfig = dataclasses.field(default_factory=McmcConfig)
    scheduler: SchedulerConfig = dataclasses.field(default_factory=SchedulerConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    init: InitConfig = dataclasses.field(default_factory=InitConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    job_file: str = dataclasses.field(default="", compare=False)
    dataset: str = dataclasses.field(default="", compare=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JobConfig):
            return NotImplemented
        for f in dataclasses.fields(self):
            if not f.compare:
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "geometries":
                if [m.to_dict() for m in a] != [m.to_dict() for m in b]:
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]  # holds numpy arrays: not hashable


def _section_fields() -> dict[str, type]:
    """TOML section name -> section dataclass, read off JobConfig's fields."""
    hints = typing.get_type_hints(JobConfig)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(JobConfig)
        if dataclasses.is_dataclass(hints[f.name])
    }


# Top-level keys that are not sections. `geometry` is the TOML name of JobConfig.geometries.
_TOP_SCALARS = ("seed", "dataset", "geometry")
_GEOMETRY_KEYS = ("name", "atoms", "charge", "spin", "units", "reference_energy", "group", "scan_coordinate")
_DATASET_PREFIX = "dataset:"


# --------------------------------------------------------------------------------------------
# Parsing helpers
# --------------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    """Short type-and-value description for error messages."""
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


def _check_unknown(table: Mapping[str, Any], valid: typing.Iterable[str], prefix: str, file: str) -> None:
    """Rejects keys not in `valid`, suggesting the closest valid one (typos are common)."""
    valid = list(valid)
    for key in table:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(file, f"{prefix}{key}", f"unknown key{hint}; valid keys: {', '.join(valid)}")


def _convert(value: Any, typ: Any, key: str, file: str) -> Any:
    """Type-checks one TOML value against a field type hint and normalizes it."""
    # bool is a subclass of int in Python; TOML true/false is never meant as a number.
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(file, key, f"expected an integer, got {_describe(value)}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(file, key, f"expected a number, got {_describe(value)}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(file, key, f"must be finite, got {value}")
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(file, key, f"expected true or false, got {_describe(value)}")
        return value
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(file, key, f"expected a string, got {_describe(value)}")
        return value
    if typing.get_origin(typ) is tuple:
        (item_type, _ellipsis) = typing.get_args(typ)
        if not isinstance(value, list):
            raise ConfigError(file, key, f"expected a list, got {_describe(value)}")
        return tuple(_convert(v, item_type, f"{key}[{j}]", file) for j, v in enumerate(value))
    raise TypeError(f"unsupported config field type {typ!r} for {key}")  # programming error


def _check_value(value: Any, meta: Mapping[str, Any], key: str, file: str) -> None:
    """Applies the choices / bounds / custom check declared in the field metadata."""
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(file, key, f"must be one of {allowed}, got {value!r}")
    if "ge" in meta and value < meta["ge"]:
        raise ConfigError(file, key, f"must be >= {meta['ge']}, got {value}")
    if "gt" in meta and value <= meta["gt"]:
        raise ConfigError(file, key, f"must be > {meta['gt']}, got {value}")
    if "lt" in meta and value >= meta["lt"]:
        raise ConfigError(file, key, f"must be < {meta['lt']}, got {value}")
    check: Callable[[Any], tuple[str, str] | None] | None = meta.get("check")
    if check is not None:
        problem = check(value)
        if problem is not None:
            raise ConfigError(file, key + problem[0], problem[1])


def _parse_field(value: Any, f: dataclasses.Field, typ: Any, key: str, file: str) -> Any:
    value = _convert(value, typ, key, file)
    _check_value(value, f.metadata, key, file)
    return value


def _parse_section(cls: type, table: Any, section: str, file: str) -> Any:
    """Builds one section dataclass from its TOML table; absent keys keep their defaults."""
    if not isinstance(table, dict):
        raise ConfigError(file, section, f"expected a table [{section}], got {_describe(table)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _check_unknown(table, fields, f"{section}.", file)
    values = {
        name: _parse_field(table[name], f, hints[name], f"{section}.{name}", file)
        for name, f in fields.items()
        if name in table
    }
    if cls is OptimizationConfig:  # keys the job does not set come from its preset
        values = {**SCHEDULE_PRESETS[values.get("schedule", fields["schedule"].default)], **values}
    return cls(**values)


def _read_toml(path: Path, key_prefix: str = "") -> dict[str, Any]:
    """Reads a TOML file, mapping I/O and syntax errors to ConfigError."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(path, f"{key_prefix}<file>", "file not found") from None
    except OSError as err:
        raise ConfigError(path, f"{key_prefix}<file>", f"cannot read: {err}") from None
    except tomllib.TOMLDecodeError as err:
        # The parser message carries "(at line L, column C)".
        raise ConfigError(path, f"{key_prefix}<toml>", f"malformed TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(path, f"{key_prefix}<toml>", f"not UTF-8 text: {err}") from None


def _parse_geometries(
    tables: Any, elements: tuple[str, ...], file: str, prefix: str
) -> list[tuple[Molecule, str, str]]:
    """Validates `[[geometry]]` tables; returns (molecule, file, key) for later checks."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(file, f"{prefix}geometry", "expected an array of tables ([[geometry]] entries)")
    out = []
    for i, table in enumerate(tables):
        gkey = f"{prefix}geometry[{i}]"
        _check_unknown(table, _GEOMETRY_KEYS, f"{gkey}.", file)
        for required in ("name", "atoms"):
            if required not in table:
                raise ConfigError(file, f"{gkey}.{required}", "required key is missing")
        name = table["name"]
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(file, f"{gkey}.name", f"expected a non-empty string, got {name!r}")
        try:
            mol = Molecule.create(
                name=name,
                atoms=table["atoms"],
                charge=table.get("charge", 0),
                spin=table.get("spin"),
                units=table.get("units", "bohr"),
                reference_energy=table.get("reference_energy"),
                group=table.get("group", ""),
                scan_coordinate=table.get("scan_coordinate"),
            )
        except MoleculeError as err:
            raise ConfigError(file, f"{gkey}.{err.key}", err.message) from None
        if mol.reference_energy is not None and not math.isfinite(mol.reference_energy):
            raise ConfigError(file, f"{gkey}.reference_energy", "must be finite (Hartree)")
        # The descriptor layout covers only hartree_fock.elements; anything else cannot be
        # represented by the model, so reject it here rather than deep inside model setup.
        for j, sym in enumerate(mol.symbols):
            if sym not in elements:
                raise ConfigError(
                    file,
                    f"{gkey}.atoms[{j}]",
                    f"element {sym!r} is not in hartree_fock.elements ({', '.join(elements)})",
                )
        out.append((mol, file, gkey))
    return out


def _basis_name_hint(basis: str) -> str:
    """ " (did you mean ...?)" from pyscf's table of basis names, or ""."""
    from pyscf.gto import basis as pyscf_basis

    # pyscf looks names up lower-cased without "-", "_" and spaces; compare in that form.
    close = difflib.get_close_matches(
        basis.lower().replace("-", "").replace("_", "").replace(" ", ""), list(pyscf_basis.ALIAS), n=3
    )
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _check_basis(hf: HartreeFockConfig, entries: list[tuple[Molecule, str, str]], file: str) -> None:
    """What pyscf and the descriptor layout would reject at HF time, caught before anything
    runs: an unknown basis name, a basis lacking one of the listed elements, shells beyond the
    highest angular momentum hpcwf evaluates, and more electrons of one spin than the molecule
    has basis functions (pyscf: "Failed to assign mo_occ")."""
    basis, elements = hf.basis, hf.elements
    missing = basis_sets.missing_elements(basis, elements)
    if missing and not basis_sets.is_known_basis(basis):
        raise ConfigError(
            file,
            "hartree_fock.basis",
            f"unknown basis set {basis!r}: pyscf has it for none of {', '.join(ELEMENTS)}"
            f"{_basis_name_hint(basis)}",
        )
    used: dict[str, str] = {}  # element -> first geometry holding it
    for mol, _, gkey in entries:
        for sym in mol.symbols:
            used.setdefault(sym, f"{gkey} {mol.name!r}")
    for el, reason in missing.items():
        if el in used:
            raise ConfigError(
                file,
                "hartree_fock.basis",
                f"basis set {basis!r} lacks {el}, which {used[el]} holds ({reason}); "
                "choose a basis set that covers every element of hartree_fock.elements",
            )
    if missing:  # only elements no geometry holds are left
        el, reason = next(iter(missing.items()))
        raise ConfigError(
            file,
            f"hartree_fock.elements[{elements.index(el)}]",
            f"basis set {basis!r} (hartree_fock.basis) lacks {el} ({reason}), and the descriptor "
            f"layout needs functions for every listed element: remove {el!r} from the list "
            "(parameters of runs with another list do not fit) or choose another basis set",
        )
    for el, where in used.items():
        l_max = basis_sets.element_basis(basis, el).max_angular_momentum
        if l_max > basis_sets.MAX_ANGULAR_MOMENTUM:
            limit = basis_sets.MAX_ANGULAR_MOMENTUM
            raise ConfigError(
                file,
                "hartree_fock.basis",
                f"basis set {basis!r} has {basis_sets.shell_letter(l_max)} functions (l = {l_max}) on {el}, "
                f"which {where} holds; hpcwf evaluates Gaussians up to l = {limit} "
                f"({basis_sets.shell_letter(limit)}): choose a smaller basis set",
            )
    for mol, gfile, gkey in entries:
        _check_occupations(mol, basis, gfile, gkey)


def _check_occupations(mol: Molecule, basis: str, file: str, gkey: str) -> None:
    """n_up and n_dn must each fit into the molecule's basis functions (one orbital per
    electron of a spin); the key is `spin` when a lower spin would fit, else `charge`."""
    n_functions = basis_sets.molecule_function_count(basis, mol.symbols)
    if mol.n_up <= n_functions:  # n_dn <= n_up always (spin >= 0)
        return
    lowest_n_up = (mol.n_electrons + mol.n_electrons % 2) // 2
    key = "spin" if lowest_n_up <= n_functions else "charge"
    fix = "lower spin" if key == "spin" else "raise charge (fewer electrons)"
    raise ConfigError(
        file,
        f"{gkey}.{key}",
        f"{mol.name!r} has n_up = {mol.n_up} electrons of spin up (spin {mol.spin}, "
        f"{mol.n_electrons} electrons), but basis set {basis!r} has {n_functions} Cartesian "
        f"functions on it, so at most {n_functions} electrons per spin fit; {fix} or use a "
        "larger hartree_fock.basis",
    )


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def geometry_groups(cfg: JobConfig) -> list[str]:
    """Group names of the job's geometries (`Molecule.group_name`), in order of first appearance."""
    return list(dict.fromkeys(m.group_name for m in cfg.geometries))


def select_group(cfg: JobConfig, index: int) -> JobConfig:
    """The job restricted to its `index`-th group (see `geometry_groups`), written to
    `<output.dir>/<group>`: one task of a job array. ConfigError when out of range."""
    groups = geometry_groups(cfg)
    if not 0 <= index < len(groups):
        raise ConfigError(
            cfg.job_file,
            "--group-index",
            f"{index} is out of range: the job has {len(groups)} groups (0..{len(groups) - 1})",
        )
    group = groups[index]
    return dataclasses.replace(
        cfg,
        geometries=tuple(m for m in cfg.geometries if m.group_name == group),
        output=dataclasses.replace(cfg.output, dir=str(Path(cfg.output.dir) / group)),
    )


def load_job(
    path: str | os.PathLike, *, group_index: int | None = None, output_dir: str | None = None
) -> JobConfig:
    """Reads and validates a job file; raises ConfigError naming the file and key.

    The job as it will run: restricted to its `group_index`-th group (`select_group`, run
    dir `<output.dir>/<group>`) and written to `output_dir` instead of `[output] dir` when
    given (`hpcwf run --group-index/--output-dir`).
    Relative paths: `dataset` is resolved against the job file's directory (datasets travel
    with job files); `init.checkpoint` and `output.dir` are relative to the current working
    directory (checkpoints are produced under output directories, which live there).
    Everything pyscf would reject at HF time is rejected here (`_check_basis`: unknown basis
    name, basis lacking an element, shells beyond g, more electrons of one spin than basis
    functions), using pyscf's basis library (no jax). A missing `[init] checkpoint` is
    refused unless the run dir holds a checkpoint of its own (`_check_init_checkpoint`).
    Nothing is written to disk.
    """
    path = Path(path)
    file = str(path)
    data = _read_toml(path)

    sections = _section_fields()
    _check_unknown(data, (*_TOP_SCALARS, *sections), "", file)

    top = {f.name: f for f in dataclasses.fields(JobConfig)}
    seed = _parse_field(data.get("seed", top["seed"].default), top["seed"], int, "seed", file)
    parsed = {name: _parse_section(cls, data.get(name, {}), name, file) for name, cls in sections.items()}
    elements = parsed["hartree_fock"].elements

    entries = _parse_geometries(data.get("geometry", []), elements, file, "")

    dataset = _convert(data.get("dataset", ""), str, "dataset", file)
    dataset_path = ""
    if dataset:
        dpath = path.parent / dataset
        dataset_path = str(dpath)
        if not dpath.is_file():
            raise ConfigError(file, "dataset", f"dataset file not found: {dpath}")
        ddata = _read_toml(dpath, _DATASET_PREFIX)
        _check_unknown(ddata, ("geometry",), _DATASET_PREFIX, dataset_path)
        if not ddata.get("geometry"):
            raise ConfigError(
                dataset_path, f"{_DATASET_PREFIX}geometry", "dataset has no [[geometry]] tables"
            )
        entries += _parse_geometries(ddata["geometry"], elements, dataset_path, _DATASET_PREFIX)

    if not entries:
        raise ConfigError(file, "geometry", "no geometries: add [[geometry]] tables or a dataset file")
    first_seen: dict[str, str] = {}
    for mol, gfile, gkey in entries:
        if mol.name in first_seen:
            raise ConfigError(
                gfile,
                f"{gkey}.name",
                f"duplicate geometry name {mol.name!r} (first used by {first_seen[mol.name]})",
            )
        first_seen[mol.name] = gkey
    _check_basis(parsed["hartree_fock"], entries, file)
    pretraining, optimization = parsed["pretraining"], parsed["optimization"]
    if pretraining.batch_size > optimization.batch_size:
        raise ConfigError(
            file,
            "pretraining.batch_size",
            f"{pretraining.batch_size} walkers, but pre-training samples from the "
            f"{optimization.batch_size} walkers of optimization.batch_size: use at most that (0 = all)",
        )
    k = parsed["parallel"].ranks_per_geometry
    for key, n in (
        ("optimization.batch_size", optimization.batch_size),
        ("pretraining.batch_size", pretraining.batch_size),
    ):
        if n % k:
            raise ConfigError(
                file,
                key,
                f"{n} walkers cannot be shared by parallel.ranks_per_geometry = {k} ranks: "
                f"use a multiple of {k}",
            )

    init = parsed["init"]
    if init.mode == "evaluate" and not init.checkpoint:
        raise ConfigError(file, "init.checkpoint", "init.mode = 'evaluate' needs a checkpoint")

    if not parsed["output"].dir:
        parsed["output"] = dataclasses.replace(parsed["output"], dir=f"runs/{path.stem}")

    cfg = JobConfig(
        geometries=tuple(mol for mol, _, _ in entries),
        seed=seed,
        job_file=file,
        dataset=dataset_path,
        **parsed,
    )
    # --output-dir D first, then the group: array task K writes D/<group K> (not all into D).
    if output_dir:
        cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, dir=output_dir))
    if group_index is not None:
        cfg = select_group(cfg, group_index)
    _check_init_checkpoint(cfg)
    return cfg


def _check_init_checkpoint(cfg: JobConfig) -> None:
    """ConfigError when `[init] checkpoint` names nothing that exists, unless the job's run dir
    holds a checkpoint of its own: such a run resumes from it and never reads the [init]
    parameters again (a fine-tune requeued after the pre-training's retention deleted its
    source, or after the pre-training run was archived). Whether that checkpoint is valid is
    checked when the run starts (it needs h5py); by name alone here, so `hpcwf check` and
    `hpcwf run` decide alike."""
    from hpcwf.io.checkpoint_files import list_checkpoints
    from hpcwf.models import is_model_reference

    source = cfg.init.checkpoint
    if is_model_reference(source):
        _check_shipped_model(cfg)
        return
    if source and not Path(source).exists() and not list_checkpoints(Path(cfg.output.dir) / "checkpoints"):
        raise ConfigError(cfg.job_file, "init.checkpoint", f"checkpoint not found: {source}")


def _check_shipped_model(cfg: JobConfig) -> None:
    """ConfigError when `[init] checkpoint = "model:NAME"` names no shipped model (hpcwf.models)
    or one whose basis, element layout, model size, orbitals, determinants or ansatz version
    differ from this job's: its parameters would not fit, or would mean another function."""
    from hpcwf.models import shipped_model

    try:
        model = shipped_model(cfg.init.checkpoint)
        problem = model.mismatch(
            {
                "basis": cfg.hartree_fock.basis,
                "elements": list(cfg.hartree_fock.elements),
                "model_size": cfg.model.size,
                "orbitals": cfg.model.orbitals,
                "n_determinants": cfg.model.n_determinants,
            }
        )
    except KeyError as err:
        problem = err.args[0]
    except OSError as err:
        problem = f"cannot read the shipped model ({err})"
    if problem:
        raise ConfigError(cfg.job_file, "init.checkpoint", problem)


def _to_toml_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def config_to_dict(cfg: JobConfig) -> dict[str, Any]:
    """The fully resolved configuration as plain TOML-ready data.

    Every section with every key; geometries inlined in bohr (the dataset key is dropped).
    Writing this to a file and loading it with `load_job` gives a JobConfig equal to `cfg`.
    """
    out: dict[str, Any] = {"seed": cfg.seed}
    for name in _section_fields():
        section = getattr(cfg, name)
        out[name] = {f.name: _to_toml_value(getattr(section, f.name)) for f in dataclasses.fields(section)}
    out["geometry"] = [mol.to_dict() for mol in cfg.geometries]
    return out


def finetune_schedule(cfg: JobConfig) -> str | None:
    """One line with the learning rate and damping that fine-tuning from `[init] checkpoint`
    actually runs with (resolved numbers), or None when the job does not fine-tune.

    lr(t) = learning_rate * init.lr_factor / (1 + (t + init.lr_offset) / lr_decay_steps),
    damping constant init.damping (hpcwf.training.optimizer.ScheduleSettings.from_config)."""
    if not cfg.init.checkpoint or cfg.init.mode != "finetune":
        return None
    o, i = cfg.optimization, cfg.init
    lr0 = o.learning_rate * i.lr_factor / (1.0 + i.lr_offset / o.lr_decay_steps)
    factor = f" * {i.lr_factor:g}" if i.lr_factor != 1.0 else ""
    return (
        f"fine-tuning: lr(t) = {o.learning_rate:g}{factor} / (1 + (t + {i.lr_offset}) / "
        f"{o.lr_decay_steps:g}), lr(0) = {lr0:.4g} ({o.learning_rate / lr0:.1f}x below "
        f"optimization.learning_rate); damping {i.damping:g} (constant); norm constraint "
        f"{o.norm_constraint:g} ({o.norm_constraint_mode})"
    )


def write_resolved_config(cfg: JobConfig, path: str | os.PathLike) -> None:
    """Writes `config_to_dict(cfg)` as TOML, atomically (`hpcwf.io.h5files.write_atomically`).

    Atomic so that a run killed mid-write never leaves a truncated config next to its
    checkpoints. The parent directory is created if needed.
    """
    from hpcwf import __version__
    from hpcwf.io.h5files import write_atomically

    header = (
        f"# Generated by hpcwf {__version__}: fully resolved job configuration.\n"
        f"# Source: {cfg.job_file or '<unknown>'}. Lengths in bohr, energies in Hartree.\n"
    )
    finetune = finetune_schedule(cfg)
    if finetune:
        header += f"# {finetune}\n"
    header += "\n"
    write_atomically(path, (header + tomli_w.dumps(config_to_dict(cfg))).encode("utf-8"))
