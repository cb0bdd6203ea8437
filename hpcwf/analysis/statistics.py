"""Error bars for correlated Monte Carlo data (numpy only: importable on login nodes).

Three estimators of the standard error of a mean:

- `multi_chain_statistics` (the evaluation): many independent Markov chains (VMC walkers) of
  equal length. The error comes from the spread of the per-chain means, which are independent
  whatever the autocorrelation time, so it is right at any chain length (NetKet's
  `netket.stats.statistics`, https://github.com/netket/netket, netket/stats/mc_stats.py).
- `single_series_statistics` (live training windows, and evaluations with few walkers): one
  series, autocorrelation time by Sokal's automatic windowing of the autocorrelation function.
- `blocking_analysis`: Flyvbjerg-Petersen blocking of one series, kept as a cross-check.

Conventions: the autocorrelation time tau is the statistical inefficiency,
tau = 1 + 2 sum_{t>=1} rho(t) = N var(mean) / var(x) for N -> infinity (1 for uncorrelated
data; twice Sokal's tau_int; emcee's and ArviZ's N / ESS). A series that cannot resolve tau
reports tau = NaN and `autocorrelation_time_lower_bound` instead, and its error is made
conservative rather than trusting an underestimated tau.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# Sokal's window constant: sum rho(t) up to the first lag M >= WINDOW_C * tau(M). Sokal suggests
# 4-10 for near-exponential autocorrelations; 5 as in emcee.
WINDOW_C = 5.0
# tau counts as resolved when the data are at least RESOLVE_FACTOR * tau long: the window's
# truncation and the finite-length bias (~tau / (2 N) for an exponential autocorrelation) are
# then a few per cent.
RESOLVE_FACTOR = 20.0
# Below this many samples one series never resolves tau: the autocorrelation function's
# statistical noise (~1/sqrt(N) per lag) cannot tell tau = 1 from tau of a few.
MIN_RESOLVE_LENGTH = 50
# An unresolved single series is assumed to hold at most this many independent samples
# (tau >= N / UNRESOLVED_MAX_INDEPENDENT), so that its error is conservative unless tau
# exceeds N / 4, which no estimator can detect from the series alone.
UNRESOLVED_MAX_INDEPENDENT = 4
# Fewer chains than this: the spread of the chain means is too uncertain (relative error
# sqrt(2 / (n_chains - 1)) > 0.37) and the per-step chain averages are analysed as one series.
MIN_CHAINS = 16


@dataclasses.dataclass(frozen=True)
class MonteCarloEstimate:
    """mean +- error of correlated Monte Carlo data, in the data's units (Ha for energies).

    mean: the average of all finite samples.
    error: standard error of `mean`.
    variance: variance of the samples (units^2; ddof=1).
    autocorrelation_time: statistical inefficiency tau in samples (steps of a chain), NaN when
        the data cannot resolve it.
    autocorrelation_time_lower_bound: when tau is unresolved, what the data show of it (tau
        at the available length, which the true tau exceeds for positively correlated data);
        NaN when tau is resolved.
    n_samples: number of finite samples averaged (n_steps x n_chains).
    n_chains: number of chains (1 for a single series).
    r_hat: split-R-hat of the chains (Gelman et al., Bayesian Data Analysis, 3rd ed. 2013,
        sec. 11.4; Vehtari et al., Bayesian Analysis 16, 667 (2021)); ~1 + tau / n_steps for
        stationary chains, larger when the chains have not equilibrated. NaN for one series.
    error_blocking: cross-check: the Flyvbjerg-Petersen blocking error of the series (for
        chains: of the per-step average over chains).
    """

    mean: float
    error: float
    variance: float
    autocorrelation_time: float
    autocorrelation_time_lower_bound: float
    n_samples: int
    n_chains: int
    r_hat: float
    error_blocking: float

    @property
    def tau_resolved(self) -> bool:
        """True when `autocorrelation_time` is a resolved estimate."""
        return math.isfinite(self.autocorrelation_time)


_NAN = float("nan")


def _empty(n_chains: int = 0) -> MonteCarloEstimate:
    return MonteCarloEstimate(_NAN, _NAN, _NAN, _NAN, _NAN, 0, n_chains, _NAN, _NAN)


def multi_chain_statistics(samples: np.ndarray) -> MonteCarloEstimate:
    """mean +- error from independent Markov chains, e.g. the local energies of VMC walkers.

    samples: [n_steps, n_chains], chain c's successive values in column c (the chains must be
    independent and equilibrated). Chains with a non-finite value are left out.

    The error is sqrt(var(chain means) / n_chains) (ddof=1), NetKet's estimator
    (`netket.stats.statistics`, netket/stats/mc_stats.py): the chain means are independent, so
    this is unbiased at any chain length, also when n_steps is below the autocorrelation time.
    tau = n_steps var(chain means) / var(samples) is the between/within-chain variance ratio
    (the "tau_batch" of NetKet's blocked estimator, in the statistical-inefficiency convention);
    it is reported as resolved when n_steps >= RESOLVE_FACTOR tau, else as a lower bound.
    Split-R-hat as in Gelman et al. (BDA3, sec. 11.4) / Vehtari et al. (2021), without rank
    normalization. With fewer than MIN_CHAINS chains the per-step averages over the chains are
    analysed as one series (`single_series_statistics`, whose tau is the chains' tau).

    Raises ValueError when `samples` is not 2-D.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"samples must be [n_steps, n_chains], got shape {x.shape}")
    x = x[:, np.all(np.isfinite(x), axis=0)]
    n_steps, n_chains = x.shape
    if n_steps == 0 or n_chains == 0:
        return _empty(n_chains)
    step_means = x.mean(axis=1)
    blocking = blocking_analysis(step_means)
    variance = float(x.var(ddof=1)) if x.size > 1 else _NAN
    r_hat = split_r_hat(x)
    if n_chains < MIN_CHAINS:
        single = single_series_statistics(step_means)
        return dataclasses.replace(
            single, variance=variance, n_samples=x.size, n_chains=n_chains, r_hat=r_hat
        )
    chain_means = x.mean(axis=0)
    between = float(chain_means.var(ddof=1))  # var of one chain's mean
    error = math.sqrt(between / n_chains)
    tau = n_steps * between / variance if variance > 0 else _NAN
    resolved = math.isfinite(tau) and n_steps >= RESOLVE_FACTOR * tau
    return MonteCarloEstimate(
        mean=float(x.mean()),
        error=error,
        variance=variance,
        autocorrelation_time=tau if resolved else _NAN,
        autocorrelation_time_lower_bound=_NAN if resolved else tau,
        n_samples=x.size,
        n_chains=n_chains,
        r_hat=r_hat,
        error_blocking=blocking.error,
    )


def split_r_hat(samples: np.ndarray) -> float:
    """Split-R-hat of chains [n_steps, n_chains] (all finite): every chain is cut into halves
    (the middle sample dropped for odd n_steps), W = mean within-half variance, B/n = variance
    of the half means, R-hat = sqrt(((n - 1) / n W + B / n) / W) with n = n_steps // 2
    (Gelman et al., Bayesian Data Analysis, 3rd ed., sec. 11.4; Vehtari et al., Bayesian
    Analysis 16, 667 (2021), without their rank normalization). NaN for n_steps < 4."""
    x = np.asarray(samples, dtype=np.float64)
    n = x.shape[0] // 2
    if n < 2 or x.shape[1] < 1:
        return _NAN
    halves = np.concatenate([x[:n], x[x.shape[0] - n :]], axis=1)  # [n, 2 n_chains]
    within = float(halves.var(axis=0, ddof=1).mean())
    between_over_n = float(halves.mean(axis=0).var(ddof=1))
    if not within > 0:
        return _NAN
    return math.sqrt(((n - 1) / n * within + between_over_n) / within)


def autocorrelation_function(series: np.ndarray) -> np.ndarray:
    """Normalized autocorrelation rho(t), t = 0..N-1, of a 1-D series [N] (the sample mean
    subtracted; the biased 1/N estimator, by FFT with zero padding). All zeros for a constant
    series."""
    x = np.asarray(series, dtype=np.float64)
    n = x.size
    y = x - x.mean()
    f = np.fft.rfft(y, 2 * n)
    acov = np.fft.irfft(f * np.conj(f), 2 * n)[:n]
    return acov / acov[0] if acov[0] > 0 else np.zeros(n)


def _windowed_tau(rho: np.ndarray) -> float:
    """Sokal's automatic windowing with the mean-subtraction bias removed; inf if no window.

    With the sample mean subtracted, rho_hat(t) ~ (rho(t) - tau/N) / (1 - tau/N) for t << N
    (the O(tau/N) bias of the autocovariance, e.g. Priestley, Spectral Analysis and Time
    Series (1981), sec. 5.3). Summing over the window 1..M, S = sum rho_hat, and solving
    tau = 1 + 2 sum rho for tau gives tau(M) = (1 + 2 S) / (1 - 2 (M - S) / N). The window is
    the first M with M >= WINDOW_C tau(M) (Sokal, "Monte Carlo Methods in Statistical
    Mechanics: Foundations and New Algorithms" (1997), sec. 3; Madras & Sokal, J. Stat. Phys.
    50, 109 (1988)).
    """
    n = rho.size
    lags = np.arange(1, n)
    partial = np.cumsum(rho[1:])
    denominator = 1.0 - 2.0 * (lags - partial) / n
    tau = np.full(lags.shape, np.inf)
    ok = denominator > 0
    tau[ok] = (1.0 + 2.0 * partial[ok]) / denominator[ok]
    window = lags >= WINDOW_C * tau
    return float(tau[np.argmax(window)]) if window.any() else math.inf


def single_series_statistics(series: np.ndarray) -> MonteCarloEstimate:
    """mean +- error of one correlated series [N] (non-finite values are dropped).

    tau by Sokal's automatic windowing with the mean-subtraction bias removed
    (`_windowed_tau`; Sokal 1997, sec. 3), floored at 1, and the error
    sqrt(tau s^2 / (N - tau)) with s^2 the variance about the sample mean (1/N), whose own
    bias (a factor 1 - tau/N) this undoes. tau counts as resolved when N >= MIN_RESOLVE_LENGTH
    and N >= RESOLVE_FACTOR tau. Otherwise tau is reported as a lower bound only and the error
    assumes tau >= N / UNRESOLVED_MAX_INDEPENDENT: conservative unless tau exceeds a quarter of
    the series, which a single series cannot reveal.
    """
    x = np.asarray(series, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return _empty(1)
    mean = float(x.mean())
    if n < 2:
        return MonteCarloEstimate(mean, _NAN, _NAN, _NAN, _NAN, n, 1, _NAN, _NAN)
    s2 = float(x.var())
    tau = max(_windowed_tau(autocorrelation_function(x)), 1.0)
    resolved = n >= MIN_RESOLVE_LENGTH and n >= RESOLVE_FACTOR * tau
    tau_used = tau if resolved else max(tau, n / UNRESOLVED_MAX_INDEPENDENT)
    tau_used = min(tau_used, n - 1.0)  # at least one independent sample beyond the mean
    return MonteCarloEstimate(
        mean=mean,
        error=math.sqrt(tau_used * s2 / (n - tau_used)),
        variance=float(x.var(ddof=1)),
        autocorrelation_time=tau if resolved else _NAN,
        autocorrelation_time_lower_bound=_NAN if resolved else min(tau, float(n)),
        n_samples=n,
        n_chains=1,
        r_hat=_NAN,
        error_blocking=blocking_analysis(x).error,
    )


@dataclasses.dataclass(frozen=True)
class BlockingResult:
    """mean +- error of a correlated series by blocking.

    `autocorrelation_time` is the statistical inefficiency tau = N var(mean) / var(x), in
    samples; NaN when the series shows no plateau (too short to resolve tau).
    """

    mean: float
    error: float
    autocorrelation_time: float
    n_samples: int


def blocking_analysis(series: np.ndarray, min_blocks: int = 16) -> BlockingResult:
    """Blocking analysis of a 1-D series [N] (Flyvbjerg & Petersen, J. Chem. Phys. 91, 461
    (1989)); non-finite values are dropped.

    The series is repeatedly halved by averaging neighbours; the naive standard error of the
    blocked series grows until blocks are longer than the correlation time, then plateaus.
    We take the first level whose error is within its own statistical uncertainty
    (err / sqrt(2 (m - 1)), Flyvbjerg & Petersen eq. 28) of every later level's error, among
    levels with at least `min_blocks` blocks, and with at least one later level to compare
    with. Without such a plateau (a short series) tau is NaN and the error is the largest
    seen, still too small when blocks never exceed the correlation time: prefer
    `single_series_statistics` or `multi_chain_statistics`.
    """
    x = np.asarray(series, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return BlockingResult(_NAN, _NAN, _NAN, 0)
    mean = float(x.mean())
    if n < 2:
        return BlockingResult(mean, _NAN, _NAN, n)
    errors, uncertainties = [], []
    blocks = x
    while blocks.size >= max(min_blocks, 2) or not errors:
        m = blocks.size
        err = float(np.std(blocks, ddof=1) / np.sqrt(m))
        errors.append(err)
        uncertainties.append(err / np.sqrt(2.0 * (m - 1)))
        m2 = m // 2 * 2
        blocks = 0.5 * (blocks[0:m2:2] + blocks[1:m2:2])
    naive = errors[0]
    for k in range(len(errors) - 1):
        later = range(k + 1, len(errors))
        if all(errors[j] - errors[k] <= uncertainties[j] + uncertainties[k] for j in later):
            tau = (errors[k] / naive) ** 2 if naive > 0 else _NAN
            return BlockingResult(mean, errors[k], float(tau), n)
    return BlockingResult(mean, max(errors), _NAN, n)
