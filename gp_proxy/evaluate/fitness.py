"""Fitness and honest reporting: Kendall τ on training architectures, held-out metrics.

Sign convention: a proxy score is oriented by the sign of its Kendall τ on the *training*
architectures (many distances are lower-is-better); fitness is the oriented τ, i.e. |τ_train|,
and every held-out number is computed on the oriented score, so the sign is never peeked at
from held-out data. ``tau_in_params_bins`` is the pair-weighted mean τ within quantile bins of
#params: it removes the coarse size differences between bins, so a proxy that only separates
small from large networks loses most of its τ there.

Beyond size, two more held-out numbers sit beside every τ: the partial Kendall τ of the oriented
score with the target given #params (fit-free: what the proxy orders that #params does not), and
the τ with the size residual (the target minus a least-squares fit on log #params and its
square, fitted on the training architectures only). :func:`noise_ceiling` gives each target's
ceiling from the seed-to-seed agreement of its per-seed columns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..core.rank import kendall_tau, seed_reliability, spearman_rho

__all__ = ["FITNESS_METRICS", "Assessment", "Splits", "assess", "descriptor_regression",
           "make_splits", "noise_ceiling", "partial_kendall", "size_residual",
           "tau_in_params_bins", "training_metric"]


@dataclass(frozen=True)
class Splits:
    """A fixed train/held-out split and k folds over ``n`` architectures (seeded)."""

    train: np.ndarray
    test: np.ndarray
    folds: tuple[np.ndarray, ...]

    def to_json(self) -> dict[str, Any]:
        return {"train": self.train.tolist(), "test": self.test.tolist(),
                "folds": [f.tolist() for f in self.folds]}


def make_splits(n: int, test_fraction: float = 0.3, k: int = 5, seed: int = 0) -> Splits:
    if n < 6:
        raise ValueError(f"{n} architectures are too few to split")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(3, round(n * test_fraction))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    folds = tuple(np.sort(f) for f in np.array_split(np.random.default_rng(seed + 1)
                                                     .permutation(n), k))
    return Splits(train, test, folds)


def tau_in_params_bins(scores: np.ndarray, y: np.ndarray, params: np.ndarray, bins: int = 4
                       ) -> float:
    """Pair-weighted mean Kendall τ within ``bins`` quantile bins of #params."""
    edges = np.quantile(params, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, params, side="right") - 1, 0, bins - 1)
    total, weight = 0.0, 0.0
    for b in range(bins):
        m = which == b
        n = int(m.sum())
        if n < 3:
            continue
        t = kendall_tau(scores[m], y[m])
        if np.isnan(t):
            continue
        pairs = n * (n - 1) / 2
        total += t * pairs
        weight += pairs
    return total / weight if weight else float("nan")


def partial_kendall(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
    """Kendall's partial τ of ``x`` and ``y`` given ``z`` (Kendall 1942):
    (τ_xy − τ_xz τ_yz) / √((1 − τ_xz²)(1 − τ_yz²)); NaN where undefined."""
    txy, txz, tyz = kendall_tau(x, y), kendall_tau(x, z), kendall_tau(y, z)
    denom = (1 - txz * txz) * (1 - tyz * tyz)
    if not np.isfinite(denom) or denom <= 0:
        return float("nan")
    return float((txy - txz * tyz) / np.sqrt(denom))


def _size_design(params: np.ndarray) -> np.ndarray:
    lp = np.log(np.asarray(params, dtype=np.float64))
    return np.stack([np.ones_like(lp), lp, lp * lp], axis=1)


def size_residual(y: np.ndarray, params: np.ndarray, fit_on: np.ndarray) -> np.ndarray:
    """``y`` minus its least-squares fit on [1, log #params, (log #params)²], the fit made on
    the architectures ``fit_on`` only (held-out ones never enter it)."""
    x = _size_design(params)
    beta, *_ = np.linalg.lstsq(x[fit_on], np.asarray(y, dtype=np.float64)[fit_on], rcond=None)
    return np.asarray(y, dtype=np.float64) - x @ beta


def descriptor_regression(descriptors: np.ndarray, params: np.ndarray, y: np.ndarray,
                          fit_on: np.ndarray) -> np.ndarray:
    """The architecture-descriptor baseline: least squares of ``y`` on [1, descriptors, log
    #params, (log #params)²] fitted on the architectures ``fit_on`` only; its predictions for
    every architecture (held-out ones never enter the fit). It needs ground truth, as a
    campaign does; a discovered proxy's edge over it is that it transfers to spaces whose
    descriptors differ."""
    x = np.concatenate([_size_design(params), np.asarray(descriptors, dtype=np.float64)], axis=1)
    beta, *_ = np.linalg.lstsq(x[fit_on], np.asarray(y, dtype=np.float64)[fit_on], rcond=None)
    return x @ beta


def noise_ceiling(per_seed: np.ndarray, idx: np.ndarray | None = None) -> dict[str, float]:
    """How well any proxy can rank the seed mean of a target measured with noise: the
    Spearman-Brown reliability of the mean of the seed columns (``per_seed``: architectures ×
    seeds) from their mean pairwise Spearman ρ, and the Kendall ceiling (2/π)·arcsin(√rel)
    (the τ of a perfect predictor of the noise-free target with the k-seed mean, for
    bivariate-normal noise)."""
    m = np.asarray(per_seed, dtype=np.float64)
    if idx is not None:
        m = m[idx]
    k = m.shape[1]
    if k < 2 or m.shape[0] < 3:
        return {"seeds": k, "reliability": float("nan"), "kendall_ceiling": float("nan")}
    r1, rel = seed_reliability(m)
    ceiling = float(2 / np.pi * np.arcsin(np.sqrt(rel))) if rel > 0 else float("nan")
    return {"seeds": k, "seed_pair_spearman": r1, "reliability": float(rel),
            "kendall_ceiling": ceiling}


@dataclass(frozen=True)
class Assessment:
    sign: int
    fitness: float  # oriented Kendall τ on training architectures
    train_tau: float
    test_tau: float
    test_rho: float
    kfold_tau: float  # mean over folds of held-out τ with the sign from the other folds
    test_tau_in_params_bins: float
    train_tau_in_params_bins: float = float("nan")
    test_partial_tau_params: float = float("nan")  # held-out partial τ given #params
    test_tau_size_residual: float = float("nan")  # held-out τ with the size residual
    train_partial_tau_params: float = float("nan")  # training partial τ given #params

    def to_json(self) -> dict[str, float]:
        return {k: (None if isinstance(v, float) and np.isnan(v) else v)  # type: ignore[misc]
                for k, v in asdict(self).items()}


def training_metric(s: np.ndarray, y: np.ndarray, params: np.ndarray, train: np.ndarray,
                    metric: str) -> float:
    """What a campaign selects on, over the training architectures only (signed)."""
    if metric not in FITNESS_METRICS:
        raise ValueError(f"unknown fitness metric {metric!r}; choose from "
                         f"{', '.join(FITNESS_METRICS)}")
    return FITNESS_METRICS[metric](s[train], y[train], params[train])


def _residual_tau(s: np.ndarray, y: np.ndarray, params: np.ndarray) -> float:
    return kendall_tau(s, size_residual(y, params, np.arange(len(y))))


#: fitness metric name -> signed statistic over the training architectures: plain τ, τ
#: within #params bins, partial τ given #params (fit-free), τ with the size residual (the size
#: fit made on these same training architectures); the last three cannot be won by size alone
FITNESS_METRICS: dict[str, Any] = {
    "tau": lambda s, y, p: kendall_tau(s, y),
    "tau_params_bins": tau_in_params_bins,
    "partial_tau_params": lambda s, y, p: partial_kendall(s, y, p),
    "tau_size_residual": _residual_tau,
}


def assess(scores: np.ndarray, y: np.ndarray, params: np.ndarray, splits: Splits,
           metric: str = "tau") -> Assessment:
    """Orient by the training sign and report; ``metric`` (a key of
    :data:`FITNESS_METRICS`) picks what ``fitness`` is; every other number is reported as
    well."""
    s = np.asarray(scores, dtype=np.float64)
    tr, te = splits.train, splits.test
    tau_tr = training_metric(s, y, params, tr, metric)
    sign = -1 if tau_tr < 0 else 1
    o = sign * s
    fold_taus = []
    for f in splits.folds:
        rest = np.setdiff1d(np.arange(len(s)), f)
        t_rest = kendall_tau(s[rest], y[rest])
        fs = -1 if t_rest < 0 else 1
        fold_taus.append(kendall_tau(fs * s[f], y[f]))
    resid = size_residual(y, params, tr)
    return Assessment(sign, sign * tau_tr, kendall_tau(s[tr], y[tr]), kendall_tau(o[te], y[te]),
                      spearman_rho(o[te], y[te]), float(np.nanmean(fold_taus)),
                      tau_in_params_bins(o[te], y[te], params[te]),
                      tau_in_params_bins(o[tr], y[tr], params[tr]),
                      partial_kendall(o[te], y[te], params[te]),
                      kendall_tau(o[te], resid[te]),
                      partial_kendall(o[tr], y[tr], params[tr]))
