"""Error bars of correlated Monte Carlo data cover the true mean (hpcwf.analysis.statistics).

Synthetic AR(1) series x_t = phi x_{t-1} + sqrt(1 - phi^2) e_t (unit variance, mean 0) with
phi = 0.8, i.e. autocorrelation time tau = (1 + phi) / (1 - phi) = 9 samples, as in the
evaluation of a VMC run with strongly correlated steps. numpy only, fixed seeds; ~3 s.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hpcwf.analysis.statistics import (
    MIN_CHAINS,
    multi_chain_statistics,
    single_series_statistics,
)

PHI = 0.8
TAU = (1 + PHI) / (1 - PHI)  # 9
ONE_SIGMA = math.erf(1 / math.sqrt(2))  # 0.6827


def ar1(rng: np.random.Generator, n_steps: int, n_series: int, phi: float = PHI) -> np.ndarray:
    """[n_steps, n_series] independent stationary AR(1) series with unit variance."""
    x = np.empty((n_steps, n_series))
    x[0] = rng.standard_normal(n_series)
    c = math.sqrt(1 - phi**2)
    for t in range(1, n_steps):
        x[t] = phi * x[t - 1] + c * rng.standard_normal(n_series)
    return x


def exact_var_of_mean(n_steps: int, phi: float = PHI) -> float:
    """Variance of the mean of n_steps consecutive AR(1) values (unit variance):
    (1 + 2 sum_{k<n} (1 - k/n) phi^k) / n."""
    k = np.arange(1, n_steps)
    return (1 + 2 * np.sum((1 - k / n_steps) * phi**k)) / n_steps


@pytest.mark.parametrize(
    ("n_steps", "n_chains", "n_repeats"), [(20, 256, 300), (200, 64, 300), (4096, 32, 60)]
)
def test_multi_chain_error_covers_at_any_length(n_steps, n_chains, n_repeats):
    """1-sigma coverage 68 +- 5 %, also for chains shorter than tau. Each repeat's coverage is
    the exact probability that the mean falls within +- its error bar, from the exact
    sampling distribution of the mean (the chain means are Gaussian and independent of their
    spread), which takes the coin-flip noise out of the count; the error bars' calibration
    sum(error^2) / exact variance is checked too."""
    rng = np.random.default_rng(n_steps)
    x = ar1(rng, n_steps, n_chains * n_repeats).reshape(n_steps, n_repeats, n_chains)
    true_sd = math.sqrt(exact_var_of_mean(n_steps) / n_chains)
    results = [multi_chain_statistics(x[:, r]) for r in range(n_repeats)]
    errors = np.array([r.error for r in results])
    means = np.array([r.mean for r in results])
    coverage = np.mean([math.erf(e / (true_sd * math.sqrt(2))) for e in errors])
    assert abs(coverage - ONE_SIGMA) < 0.05, coverage
    assert abs(np.mean(np.abs(means) < errors) - ONE_SIGMA) < 0.1  # the plain count agrees
    assert abs(np.mean(errors**2) / true_sd**2 - 1) < 0.1
    r = results[0]
    assert r.n_chains == n_chains and r.n_samples == n_steps * n_chains
    assert abs(r.variance - 1) < 0.2
    shown = [
        r.autocorrelation_time if r.tau_resolved else r.autocorrelation_time_lower_bound for r in results
    ]
    if n_steps >= 100 * TAU:  # long chains resolve tau
        assert all(r.tau_resolved for r in results)
        assert abs(np.median(shown) - TAU) < 0.1 * TAU
        assert 1 < r.r_hat < 1.01
    elif n_steps < 10 * TAU:  # short chains: never a confident tau, only a lower bound below it
        assert all(not r.tau_resolved for r in results)
        assert 1.5 < np.median(shown) < TAU
        assert r.r_hat > 1.1  # the between-chain spread shows that the chains are short
    else:  # in between: tau or its bound, within the finite-length bias
        assert abs(np.median(shown) - TAU) < 0.2 * TAU


def test_multi_chain_with_few_chains_falls_back_to_the_series_of_step_means():
    rng = np.random.default_rng(1)
    n_chains, n_steps, n_repeats = MIN_CHAINS // 2, 400, 500
    x = ar1(rng, n_steps, n_chains * n_repeats).reshape(n_steps, n_repeats, n_chains)
    results = [multi_chain_statistics(x[:, r]) for r in range(n_repeats)]
    coverage = np.mean([abs(r.mean) < r.error for r in results])
    assert abs(coverage - ONE_SIGMA) < 0.05, coverage


@pytest.mark.parametrize(("n_steps", "n_repeats"), [(200, 1500), (4096, 400)])
def test_single_series_error_covers(n_steps, n_repeats):
    rng = np.random.default_rng(n_steps + 1)
    x = ar1(rng, n_steps, n_repeats)
    results = [single_series_statistics(x[:, r]) for r in range(n_repeats)]
    coverage = np.mean([abs(r.mean) < r.error for r in results])
    assert abs(coverage - ONE_SIGMA) < 0.05, coverage
    if n_steps == 4096:
        taus = [r.autocorrelation_time for r in results]
        assert abs(np.median(taus) - TAU) < 0.1 * TAU


def test_single_series_too_short_to_resolve_tau_is_conservative():
    """20 samples of a tau = 9 series hold ~2 independent ones: tau is reported unresolved
    (NaN, with a lower bound), never a confident 1, and the error bar over-covers."""
    rng = np.random.default_rng(20)
    x = ar1(rng, 20, 2000)
    results = [single_series_statistics(x[:, r]) for r in range(x.shape[1])]
    assert all(not r.tau_resolved and r.autocorrelation_time_lower_bound >= 1 for r in results)
    coverage = np.mean([abs(r.mean) < r.error for r in results])
    assert ONE_SIGMA < coverage < 0.95, coverage


def test_single_series_of_white_noise_is_not_inflated():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 1000))
    results = [single_series_statistics(x[:, r]) for r in range(x.shape[1])]
    coverage = np.mean([abs(r.mean) < r.error for r in results])
    assert abs(coverage - ONE_SIGMA) < 0.05, coverage
    assert abs(np.median([r.autocorrelation_time for r in results]) - 1) < 0.1


def test_non_finite_chains_are_left_out_and_shapes_are_checked():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 32))
    x[7, 3] = np.nan
    r = multi_chain_statistics(x)
    assert r.n_chains == 31 and r.n_samples == 50 * 31
    assert r.mean == pytest.approx(np.delete(x, 3, axis=1).mean())
    with pytest.raises(ValueError, match="n_steps, n_chains"):
        multi_chain_statistics(x[:, 0])
