"""Error bars for correlated Monte Carlo series (numpy only: importable on login nodes)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class BlockingResult:
    """mean +- error of a correlated series.

    `autocorrelation_time` is the statistical inefficiency tau = N var(mean) / var(x), in
    samples (1 for uncorrelated data; 2 x the integrated autocorrelation time).
    """

    mean: float
    error: float
    autocorrelation_time: float
    n_samples: int


def blocking_analysis(series: np.ndarray, min_blocks: int = 16) -> BlockingResult:
    """Flyvbjerg-Petersen blocking of a 1-D series.

    The series is repeatedly halved by averaging neighbours; the naive standard error of the
    blocked series grows until blocks are longer than the correlation time, then plateaus.
    We take the first level whose error is within its own statistical uncertainty of every
    later level's error (the plateau), among levels with at least `min_blocks` blocks; if no
    level qualifies (short series), the largest error seen is returned (conservative).
    """
    x = np.asarray(series, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return BlockingResult(float("nan"), float("nan"), float("nan"), 0)
    mean = float(x.mean())
    if n < 2:
        return BlockingResult(mean, float("nan"), float("nan"), n)
    errors, uncertainties = [], []
    blocks = x
    while blocks.size >= min_blocks or not errors:
        m = blocks.size
        err = float(np.std(blocks, ddof=1) / np.sqrt(m)) if m > 1 else float("nan")
        errors.append(err)
        uncertainties.append(err / np.sqrt(2.0 * max(m - 1, 1)))
        if m < 2:
            break
        m2 = m // 2 * 2
        blocks = 0.5 * (blocks[0:m2:2] + blocks[1:m2:2])
    error = max(errors)
    for k in range(len(errors)):
        if all(
            errors[j] - errors[k] <= uncertainties[j] + uncertainties[k] for j in range(k + 1, len(errors))
        ):
            error = errors[k]
            break
    naive = errors[0]
    tau = (error / naive) ** 2 if naive > 0 else 1.0
    return BlockingResult(mean, error, float(tau), n)
