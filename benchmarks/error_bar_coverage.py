#!/usr/bin/env python3
"""One-sigma coverage of hpcwf's error bars on AR(1) series with autocorrelation time 9.

Prints, per length N, the fraction of repeats whose mean lies within +- its error bar of the
true mean (0.683 for calibrated error bars): Flyvbjerg-Petersen blocking of one series (the
estimator hpcwf used before), `single_series_statistics` (training windows) and
`multi_chain_statistics` (the evaluation: independent walkers). numpy only, ~30 s.

    python benchmarks/error_bar_coverage.py [--seed 0]
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from hpcwf.analysis.statistics import blocking_analysis, multi_chain_statistics, single_series_statistics

PHI = 0.8  # tau = (1 + phi) / (1 - phi) = 9 samples


def ar1(rng: np.random.Generator, n_steps: int, n_series: int) -> np.ndarray:
    """[n_steps, n_series] stationary AR(1) series, unit variance, mean 0."""
    x = np.empty((n_steps, n_series))
    x[0] = rng.standard_normal(n_series)
    for t in range(1, n_steps):
        x[t] = PHI * x[t - 1] + math.sqrt(1 - PHI**2) * rng.standard_normal(n_series)
    return x


def coverage(results) -> float:
    return float(np.mean([abs(r.mean) < r.error for r in results]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    rng = np.random.default_rng(parser.parse_args().seed)
    print(f"{'N':>5} {'blocking':>9} {'single':>7}   multi-chain")
    for n, repeats, chains, chain_repeats in (
        (20, 1000, 256, 400),
        (200, 1000, 256, 200),
        (4096, 300, 32, 100),
    ):
        x = ar1(rng, n, repeats)
        blocking = coverage(blocking_analysis(s) for s in x.T)
        single = coverage(single_series_statistics(s) for s in x.T)
        chains_x = ar1(rng, n, chains * chain_repeats).reshape(n, chain_repeats, chains)
        multi = coverage(multi_chain_statistics(chains_x[:, r]) for r in range(chain_repeats))
        print(f"{n:>5} {blocking:>9.3f} {single:>7.3f}   {multi:.3f} ({chains} chains)")


if __name__ == "__main__":
    main()
