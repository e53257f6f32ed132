"""Fitness and honest reporting: Kendall τ on training architectures, held-out metrics.

Sign convention: a proxy score is oriented by the sign of its Kendall τ on the *training*
architectures (many distances are lower-is-better); fitness is the oriented τ, i.e. |τ_train|,
and every held-out number is computed on the oriented score, so the sign is never peeked at
from held-out data. ``tau_in_params_bins`` is the pair-weighted mean τ within quantile bins of
#params: it removes the coarse size differences between bins, so a proxy that only separates
small from large networks loses most of its τ there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .rank import kendall_tau, spearman_rho

__all__ = ["Assessment", "Splits", "assess", "make_splits", "tau_in_params_bins"]


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

    def to_json(self) -> dict[str, float]:
        return {k: (None if isinstance(v, float) and np.isnan(v) else v)  # type: ignore[misc]
                for k, v in asdict(self).items()}


def assess(scores: np.ndarray, y: np.ndarray, params: np.ndarray, splits: Splits,
           metric: str = "tau") -> Assessment:
    """Orient by the training sign and report; ``metric`` picks what ``fitness`` is:
    ``tau`` (Kendall on training architectures) or ``tau_params_bins`` (Kendall within #params
    bins on training architectures, which rewards ranking beyond network size)."""
    s = np.asarray(scores, dtype=np.float64)
    tr, te = splits.train, splits.test
    tau_tr = kendall_tau(s[tr], y[tr])
    if metric == "tau_params_bins":
        tau_tr = tau_in_params_bins(s[tr], y[tr], params[tr])
    sign = -1 if tau_tr < 0 else 1
    o = sign * s
    fold_taus = []
    for f in splits.folds:
        rest = np.setdiff1d(np.arange(len(s)), f)
        t_rest = kendall_tau(s[rest], y[rest])
        fs = -1 if t_rest < 0 else 1
        fold_taus.append(kendall_tau(fs * s[f], y[f]))
    return Assessment(sign, sign * tau_tr, kendall_tau(s[tr], y[tr]), kendall_tau(o[te], y[te]),
                      spearman_rho(o[te], y[te]), float(np.nanmean(fold_taus)),
                      tau_in_params_bins(o[te], y[te], params[te]),
                      tau_in_params_bins(o[tr], y[tr], params[tr]))
