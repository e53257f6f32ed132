"""Rank correlations in numba: Kendall τ-b and Spearman ρ with ties, single and batched.

They match ``scipy.stats.kendalltau`` (variant b) and ``scipy.stats.spearmanr`` within 1e-12
(tested). Kendall is the exact O(n²) pair count: concordant minus discordant pairs over
sqrt(pairs untied in x · pairs untied in y); for the few hundred architectures of a proxy
benchmark that is faster than scipy's O(n log n) path, which pays Python overhead per call.
A vector with NaN, or a constant one, gives NaN (as scipy does).

Sign convention: a positive correlation means a higher proxy score predicts a higher
accuracy. Fitness uses the training-split sign; see :mod:`gp_proxy.evaluate.fitness`.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["average_ranks", "kendall_tau", "kendall_tau_batch", "seed_reliability",
           "spearman_rho", "spearman_rho_batch"]


@numba.njit(cache=True)
def _has_nan(x: np.ndarray) -> bool:
    for v in x:
        if np.isnan(v):
            return True
    return False


@numba.njit(cache=True)
def _kendall(x: np.ndarray, y: np.ndarray) -> float:
    n = x.shape[0]
    if n < 2 or _has_nan(x) or _has_nan(y):
        return np.nan
    s = 0
    nx = 0
    ny = 0
    for i in range(n - 1):
        xi = x[i]
        yi = y[i]
        for j in range(i + 1, n):
            dx = (xi > x[j]) - (xi < x[j])
            dy = (yi > y[j]) - (yi < y[j])
            s += dx * dy
            nx += dx != 0
            ny += dy != 0
    if nx == 0 or ny == 0:
        return np.nan
    return s / np.sqrt(float(nx) * float(ny))


@numba.njit(cache=True, parallel=True)
def _kendall_batch(xs: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = np.empty(xs.shape[0])
    for f in numba.prange(xs.shape[0]):
        out[f] = _kendall(xs[f], y)
    return out


@numba.njit(cache=True)
def _average_ranks(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(n)
    i = 0
    while i < n:
        j = i
        while j + 1 < n and x[order[j + 1]] == x[order[i]]:
            j += 1
        r = 0.5 * (i + j) + 1.0
        for k in range(i, j + 1):
            ranks[order[k]] = r
        i = j + 1
    return ranks


@numba.njit(cache=True)
def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ma = a.mean()
    mb = b.mean()
    sab = 0.0
    saa = 0.0
    sbb = 0.0
    for i in range(a.shape[0]):
        da = a[i] - ma
        db = b[i] - mb
        sab += da * db
        saa += da * da
        sbb += db * db
    if saa == 0.0 or sbb == 0.0:
        return np.nan
    return sab / np.sqrt(saa * sbb)


@numba.njit(cache=True)
def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if x.shape[0] < 2 or _has_nan(x) or _has_nan(y):
        return np.nan
    return _pearson(_average_ranks(x), _average_ranks(y))


@numba.njit(cache=True, parallel=True)
def _spearman_batch(xs: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = np.empty(xs.shape[0])
    if _has_nan(y):
        out[:] = np.nan
        return out
    ry = _average_ranks(y)
    for f in numba.prange(xs.shape[0]):
        if _has_nan(xs[f]):
            out[f] = np.nan
        else:
            out[f] = _pearson(_average_ranks(xs[f]), ry)
    return out


def _vec(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float64).reshape(-1))


def _check(x: np.ndarray, y: np.ndarray) -> None:
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"lengths differ: {x.shape[-1]} vs {y.shape[-1]}")


def _rows(xs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``xs`` (formulas × architectures) as contiguous float64 rows, ``y`` as a vector."""
    m = np.ascontiguousarray(np.asarray(xs, dtype=np.float64))
    b = _vec(y)
    _check(m, b)
    return m, b


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall τ-b of two vectors (NaN if either has NaN or is constant)."""
    a, b = _vec(x), _vec(y)
    _check(a, b)
    return float(_kendall(a, b))


def kendall_tau_batch(xs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """τ-b of every row of ``xs`` (formulas × architectures) against ``y``."""
    return np.asarray(_kendall_batch(*_rows(xs, y)))


def spearman_rho(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman ρ with average ranks for ties."""
    a, b = _vec(x), _vec(y)
    _check(a, b)
    return float(_spearman(a, b))


def spearman_rho_batch(xs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ρ of every row of ``xs`` against ``y``."""
    return np.asarray(_spearman_batch(*_rows(xs, y)))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average (as ``scipy.stats.rankdata``); any NaN makes
    every rank NaN (scipy's ``nan_policy="propagate"``), never a silent place in the order."""
    v = _vec(x)
    if _has_nan(v):
        return np.full(v.shape, np.nan)
    return np.asarray(_average_ranks(v))


def seed_reliability(per_seed: np.ndarray) -> tuple[float, float]:
    """(mean seed-pair Spearman ρ, Spearman-Brown reliability of the seed mean) of a target
    measured on several seeds (``per_seed``: architectures × seeds). The one place every
    noise ceiling and benchmark summary takes its reliability from; NaN below two seeds or
    three architectures, pairs with a NaN ρ (a constant column) left out of the mean."""
    m = np.asarray(per_seed, dtype=np.float64)
    k = m.shape[1] if m.ndim == 2 else 0
    if k < 2 or m.shape[0] < 3:
        return float("nan"), float("nan")
    rhos = [spearman_rho(m[:, i], m[:, j]) for i in range(k) for j in range(i + 1, k)]
    r1 = float(np.nanmean(rhos)) if not np.isnan(rhos).all() else float("nan")
    return r1, float(k * r1 / (1 + (k - 1) * r1))
