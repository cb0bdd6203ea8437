"""Figures of a run directory (`hpcwf plot RUN_DIR`), written as PNGs into the run directory.
matplotlib (Agg backend, no display needed), h5py and numpy only: runs on login nodes, also
while the run is still training.

    training_energy.png     training energy per geometry vs step (running mean), dashed lines
                            at the reference energies; a second panel with E - E_ref (mHa,
                            symmetric-log axis) when references are known
    error_vs_reference.png  E - E_ref (mHa) per geometry with error bars (symmetric-log axis
                            beyond 20 mHa; skipped when no geometry has a reference)
    scan.png                energy vs scan coordinate, one line per group, with the reference
                            curve (only when geometries have a scan_coordinate)
    pretrain_loss.png       HF pre-training loss vs pre-training step per geometry, and for a
                            scan the loss of the last pre-training steps vs scan coordinate
                            (only when energies.h5 has /pretrain rows)

Energies as in `hpcwf analyze` (evaluation, else the last training steps: open markers; a
stale evaluation is not drawn). A flagged energy (`hpcwf analyze`'s `flags`: stale evaluation,
extrapolated, above HF) gets one `note:` line per flag through `log`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from hpcwf.analysis.report import FLAG_NOTES, SOURCE_EVALUATION, results_from_data  # noqa: E402
from hpcwf.analysis.run_data import RunData, RunDirError, read_run  # noqa: E402

CHEMICAL_ACCURACY_MHA = 1.6  # 1 kcal/mol
MAX_LEGEND = 10  # with more geometries: colour map and colour bar instead of a legend
SMOOTH_FRACTION = 0.05  # running-mean window: this fraction of a curve's steps (at least 1)
LINEAR_MAX_MHA = 20.0  # error_vs_reference.png: symmetric-log axis when errors exceed this
AUTOSCALE_SKIP = 0.1  # the energy axis ignores the first 10 % of each curve (initial transient)
DPI = 120

Log = Callable[[str], None]


def plot_run(run_dir: str | Path, log: Log | None = None) -> list[Path]:
    """Writes the figures of the module docstring into `run_dir` and returns their paths.
    `log` receives one line for each figure that is skipped and why, and one `note:` line per
    flag that some energy carries (`FLAG_NOTES`: e.g. a stale evaluation, replaced by the
    training window). Raises RunDirError when the run cannot be read or a figure cannot be
    written."""
    data = read_run(run_dir)
    rows = results_from_data(data)
    for flag, note in FLAG_NOTES.items():
        marked = [r for r in rows if flag in (r["flags"] or "").split(",")]
        if marked and log is not None:
            names = ", ".join(r["name"] for r in marked)
            log(f"note: {flag} ({names}): {note.format(**marked[0])}")
    written = []
    for make in (_training_energy, _error_vs_reference, _scan, _pretrain_loss):
        name, outcome = make(data, rows)
        if isinstance(outcome, Figure):
            written.append(_save(outcome, data.run_dir / name))
        elif outcome is not None and log is not None:
            log(f"skipped {name}: {outcome}")
    return written


def _save(fig: Figure, path: Path) -> Path:
    try:
        fig.savefig(path, dpi=DPI)
    except OSError as err:
        raise RunDirError(f"{path}: cannot write ({' '.join(str(err).split())})") from err
    finally:
        plt.close(fig)
    return path


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing running mean: element k is the mean of values[k - window + 1 : k + 1] (the
    first window - 1 elements are dropped)."""
    c = np.cumsum(np.concatenate([[0.0], values]))
    return (c[window:] - c[:-window]) / window


def _smoothed(data: RunData, table: str, field: str, geometry: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Steps, running mean of the per-step `field` (non-finite steps left out), window length."""
    steps, values = data.series(table, field, geometry)
    ok = np.isfinite(values)
    steps, values = steps[ok], values[ok]
    if values.size == 0:
        return steps, values, 0
    window = max(1, int(SMOOTH_FRACTION * values.size))
    return steps[window - 1 :], running_mean(values, window), window


class _Colours:
    """A colour per geometry: distinct colours with a legend for a few geometries, else a
    colour map over the scan coordinate (or the geometry index) with a colour bar."""

    def __init__(self, data: RunData, indices: list[int]):
        self.legend = len(indices) <= MAX_LEGEND
        cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        if self.legend:
            self._colour = {i: cycle[k % len(cycle)] for k, i in enumerate(indices)}
            return
        coords = data.scan_coordinate[indices]
        use_scan = bool(np.all(np.isfinite(coords)))
        values = coords if use_scan else np.arange(len(indices), dtype=float)
        self.label = "scan coordinate" if use_scan else "geometry (in file order)"
        self.norm = Normalize(float(values.min()), float(values.max()))
        self.cmap = matplotlib.colormaps["viridis"]
        self._colour = {i: self.cmap(self.norm(v)) for i, v in zip(indices, values, strict=True)}

    def __getitem__(self, geometry: int):
        return self._colour[geometry]

    def finish(self, fig: Figure, axes: list[Axes]) -> None:
        if self.legend:
            axes[0].legend(fontsize="small", loc="best")
        else:
            mappable = ScalarMappable(norm=self.norm, cmap=self.cmap)
            fig.colorbar(mappable, ax=axes, label=self.label)


def _training_energy(data: RunData, rows: list[dict]) -> tuple[str, Figure | str]:
    name = "training_energy.png"
    curves = {i: _smoothed(data, "train", "energy", i) for i in range(len(data.names))}
    curves = {i: c for i, c in curves.items() if c[1].size}
    if not curves:
        return name, "no training steps yet"
    with_ref = [i for i in curves if np.isfinite(data.reference[i])]
    fig, axes = plt.subplots(
        2 if with_ref else 1,
        1,
        sharex=True,
        squeeze=False,
        layout="constrained",
        figsize=(8, 7 if with_ref else 4),
    )
    axes = list(axes[:, 0])
    colours = _Colours(data, list(curves))
    windows = sorted({c[2] for c in curves.values()})
    if windows[-1] == 1:
        axes[0].set_title("training energy per step")
    else:
        window_text = f"{windows[0]}" if len(windows) == 1 else f"{windows[0]}-{windows[-1]}"
        axes[0].set_title(f"training energy (running mean over {window_text} steps)")
    lows, highs = [], []
    for i, (steps, energy, _) in curves.items():
        axes[0].plot(steps, energy, color=colours[i], lw=1, label=data.names[i] if colours.legend else None)
        tail = energy[int(AUTOSCALE_SKIP * energy.size) :]
        lows.append(tail.min())
        highs.append(tail.max())
        if i in with_ref:
            ref = data.reference[i]
            axes[0].axhline(ref, color=colours[i], ls="--", lw=0.8)
            lows.append(ref)
            highs.append(ref)
            axes[1].plot(steps, 1000.0 * (energy - ref), color=colours[i], lw=1)
    low, high = min(lows), max(highs)
    pad = 0.05 * (high - low) or 1e-3
    axes[0].set_ylim(low - pad, high + pad)
    axes[0].set_ylabel("E (Ha)")
    if with_ref:
        axes[0].plot([], [], color="grey", ls="--", lw=0.8, label="reference" if colours.legend else None)
        _error_axis(axes[1])
        axes[1].set_title("error vs reference (dashed lines in the upper panel)", fontsize="medium")
    axes[-1].set_xlabel("training step")
    colours.finish(fig, axes)
    return name, fig


def _error_axis(ax: Axes, symlog: bool = True) -> None:
    """E - E_ref axis in mHa: zero line, chemical-accuracy band, symmetric-log scale (linear
    within the band) unless `symlog` is False."""
    ax.axhline(0.0, color="k", ls="--", lw=0.8)
    band = f"+-{CHEMICAL_ACCURACY_MHA} mHa (chemical accuracy)"
    ax.axhspan(-CHEMICAL_ACCURACY_MHA, CHEMICAL_ACCURACY_MHA, color="tab:green", alpha=0.15, lw=0, label=band)
    if symlog:
        ax.set_yscale("symlog", linthresh=CHEMICAL_ACCURACY_MHA)
    ax.set_ylabel("E - E_ref (mHa)")


def _errorbar_by_source(
    ax: Axes, x: np.ndarray, y: np.ndarray, yerr: np.ndarray, evaluated: np.ndarray, **kw
):
    """Error bars with filled markers for evaluated energies, open ones for training windows."""
    for mask, label, face in ((evaluated, "evaluation", None), (~evaluated, "last training steps", "none")):
        if np.any(mask):
            ax.errorbar(x[mask], y[mask], yerr=yerr[mask], fmt="o", mfc=face, capsize=3, label=label, **kw)


def _error_vs_reference(data: RunData, rows: list[dict]) -> tuple[str, Figure | str]:
    name = "error_vs_reference.png"
    done = [r for r in rows if r["error_mha"] is not None]
    if not done:
        why = "no reference energies" if np.all(np.isnan(data.reference)) else "no energies yet"
        return name, f"{why} (nothing to compare)"
    x = np.arange(len(done))
    y = np.array([r["error_mha"] for r in done])
    yerr = np.array([1000.0 * (r["error"] or 0.0) for r in done])
    evaluated = np.array([r["source"] == SOURCE_EVALUATION for r in done])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(done) + 2), 4.5), layout="constrained")
    _errorbar_by_source(ax, x, y, yerr, evaluated)
    _error_axis(ax, symlog=bool(np.max(np.abs(y) + yerr) > LINEAR_MAX_MHA))
    ax.set_xlim(-0.5, len(done) - 0.5)
    every = max(1, len(done) // 60)
    ax.set_xticks(x[::every], [r["name"] for r in done][::every], rotation=90, fontsize="small")
    ax.set_xlabel("geometry")
    ax.set_title("error vs reference energy")
    ax.legend(fontsize="small")
    return name, fig


def _by_group(data: RunData, indices: list[int]) -> dict[str, list[int]]:
    """Geometry indices per group (first-appearance order), each sorted by scan coordinate."""
    groups: dict[str, list[int]] = {}
    for i in indices:
        groups.setdefault(data.group[i], []).append(i)
    return {g: sorted(ix, key=lambda i: data.scan_coordinate[i]) for g, ix in groups.items()}


def _scan(data: RunData, rows: list[dict]) -> tuple[str, Figure | str | None]:
    name = "scan.png"
    if not data.is_scan:
        return name, None  # not a scan: nothing to say
    scan = [
        i
        for i in range(len(rows))
        if rows[i]["scan_coordinate"] is not None and rows[i]["energy"] is not None
    ]
    if not scan:
        return name, "no energies yet"
    with_ref = any(rows[i]["error_mha"] is not None for i in scan)
    fig, axes = plt.subplots(
        2 if with_ref else 1,
        1,
        sharex=True,
        squeeze=False,
        layout="constrained",
        figsize=(7, 7 if with_ref else 4),
    )
    axes = list(axes[:, 0])
    groups = _by_group(data, scan)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (group, ix) in enumerate(groups.items()):
        colour = cycle[k % len(cycle)]
        label = group if k < MAX_LEGEND else None
        x = data.scan_coordinate[ix]
        energy = np.array([rows[i]["energy"] for i in ix])
        err = np.array([rows[i]["error"] or 0.0 for i in ix])
        evaluated = np.array([rows[i]["source"] == SOURCE_EVALUATION for i in ix])
        axes[0].plot(x, energy, color=colour, lw=1, label=label)
        _errorbar_by_source(axes[0], x, energy, err, evaluated, color=colour, ms=4)
        ref = data.reference[ix]
        if np.any(np.isfinite(ref)):
            axes[0].plot(x, ref, color=colour, ls="--", lw=1, marker="x", ms=4)
            diff = np.array([np.nan if rows[i]["error_mha"] is None else rows[i]["error_mha"] for i in ix])
            ok = np.isfinite(diff)
            axes[1].plot(x[ok], diff[ok], color=colour, lw=1)
            _errorbar_by_source(axes[1], x[ok], diff[ok], 1000.0 * err[ok], evaluated[ok], color=colour, ms=4)
    axes[0].set_ylabel("E (Ha)")
    axes[0].set_title("energy along the scan" + (" (dashed: reference)" if with_ref else ""))
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))  # one entry per label
    axes[0].legend(unique.values(), unique.keys(), fontsize="small")
    if with_ref:
        _error_axis(axes[1])
    axes[-1].set_xlabel("scan coordinate (units of the job file)")
    return name, fig


def _pretrain_loss(data: RunData, rows: list[dict]) -> tuple[str, Figure | None]:
    name = "pretrain_loss.png"
    if data.pretrain is None:
        return name, None
    curves = {i: _smoothed(data, "pretrain", "loss", i) for i in range(len(data.names))}
    curves = {i: c for i, c in curves.items() if c[1].size}
    scan = [
        i for i in curves if rows[i]["scan_coordinate"] is not None and rows[i]["pretrain_loss"] is not None
    ]
    fig, axes = plt.subplots(
        1, 2 if scan else 1, squeeze=False, layout="constrained", figsize=(12 if scan else 7, 4.5)
    )
    axes = list(axes[0])
    colours = _Colours(data, list(curves))
    positive = all(np.all(c[1] > 0) for c in curves.values())
    for i, (steps, loss, _) in curves.items():
        axes[0].plot(steps, loss, color=colours[i], lw=1, label=data.names[i] if colours.legend else None)
    axes[0].set_yscale("log" if positive else "linear")
    axes[0].set_xlabel("pre-training step")
    axes[0].set_ylabel("HF pre-training loss (bohr^-3)")
    axes[0].set_title("pre-training loss (running mean)")
    if scan:
        cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for k, (group, ix) in enumerate(_by_group(data, scan).items()):
            loss = [rows[i]["pretrain_loss"] for i in ix]
            axes[1].plot(data.scan_coordinate[ix], loss, "o-", color=cycle[k % len(cycle)], label=group)
        axes[1].set_yscale("log" if positive else "linear")
        axes[1].set_xlabel("scan coordinate (units of the job file)")
        axes[1].set_ylabel("final pre-training loss (bohr^-3)")
        axes[1].set_title("mean loss of the last pre-training steps")
        if len(_by_group(data, scan)) <= MAX_LEGEND:
            axes[1].legend(fontsize="small")
    colours.finish(fig, axes[:1])
    return name, fig
