"""The numbers every proxy report carries: held-out τ with bootstrap intervals, partial τ
given #params, paired differences with #params and the descriptor regression, and the
baselines beside a record (size statistics, descriptor regression, noise ceiling).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..bench.benchmark import Benchmark
from ..core.rank import kendall_tau, spearman_rho
from ..evaluate.fitness import (
    Assessment,
    Splits,
    assess,
    descriptor_regression,
    partial_kendall,
    size_residual,
    tau_in_params_bins,
)
from .zerocost import SIZE_STATISTICS

__all__ = ["baselines", "paired_verdicts", "proxy_metrics", "record_context"]


def _precision_top(s: np.ndarray, y: np.ndarray, frac: float = 0.1) -> float:
    k = max(1, round(frac * len(y)))
    return len(set(np.argsort(-s)[:k]) & set(np.argsort(-y)[:k])) / k


def _train_sign(s: np.ndarray, y: np.ndarray, tr: np.ndarray) -> float:
    """−1 where ``s`` ranks the training architectures against ``y``, else +1."""
    return -1.0 if kendall_tau(s[tr], y[tr]) < 0 else 1.0


def proxy_metrics(s: np.ndarray, y: np.ndarray, params: np.ndarray, splits: Splits,
                  bootstrap: int, seed: int, descriptors: np.ndarray | None = None,
                  sign: float | None = None, params_sign: float | None = None
                  ) -> dict[str, float]:
    """Train and held-out metrics of one proxy, with bootstrap intervals over the held-out
    architectures: its τ, its partial τ given #params, and its paired differences with
    #params and (``descriptors``: the regression's predictions) the descriptor regression.
    The proxy and #params are oriented by their τ on the training architectures, unless
    ``sign`` / ``params_sign`` fix them (a proxy carried as it is to another benchmark)."""
    tr, te = splits.train, splits.test
    if not np.isfinite(s).all():
        return {"sign": float("nan")}
    if sign is None:
        sign = _train_sign(s, y, tr)
    o = sign * s
    # how much of the proxy is model size: Kendall τ of the oriented scores with #params
    out = {"sign": sign, "tau_with_params": kendall_tau(o, params)}
    for part, idx in (("train", tr), ("test", te)):
        out[f"{part}_tau"] = kendall_tau(o[idx], y[idx])
        out[f"{part}_rho"] = spearman_rho(o[idx], y[idx])
        out[f"{part}_pearson"] = float(np.corrcoef(o[idx], y[idx])[0, 1])
        out[f"{part}_p_at_10"] = _precision_top(o[idx], y[idx])
        out[f"{part}_tau_params_bins"] = tau_in_params_bins(o[idx], y[idx], params[idx])
    # beyond size: what the proxy orders that #params does not (fit-free), and its τ with the
    # target's size residual (the size fit made on the training architectures only)
    out["test_partial_tau_params"] = partial_kendall(o[te], y[te], params[te])
    out["test_tau_size_residual"] = kendall_tau(o[te], size_residual(y, params, tr)[te])
    rng = np.random.default_rng(seed)
    # #params oriented like the proxy (on the training architectures, or fixed), for the
    # paired difference
    if params_sign is None:
        params_sign = _train_sign(params, y, tr)
    p = params_sign * params
    taus, diffs, partials, vs_desc = [], [], [], []
    for b in (rng.choice(te, len(te)) for _ in range(bootstrap)):
        t = kendall_tau(o[b], y[b])
        if math.isfinite(t):
            taus.append(t)
            d = t - kendall_tau(p[b], y[b])
            if math.isfinite(d):
                diffs.append(d)
            if descriptors is not None:
                d = t - kendall_tau(descriptors[b], y[b])
                if math.isfinite(d):
                    vs_desc.append(d)
        pt = partial_kendall(o[b], y[b], params[b])
        if math.isfinite(pt):
            partials.append(pt)

    def ci(v: list[float]) -> tuple[float, float]:
        return ((float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if v
                else (float("nan"), float("nan")))

    out["test_tau_lo"], out["test_tau_hi"] = ci(taus)
    # the paired bootstrap: the same resampled architectures for the proxy and #params
    out["test_tau_minus_params"] = out["test_tau"] - kendall_tau(p[te], y[te])
    out["test_tau_minus_params_lo"], out["test_tau_minus_params_hi"] = ci(diffs)
    out["test_partial_tau_params_lo"], out["test_partial_tau_params_hi"] = ci(partials)
    if descriptors is not None:
        out["test_tau_minus_descriptors"] = out["test_tau"] - kendall_tau(descriptors[te], y[te])
        out["test_tau_minus_descriptors_lo"], out["test_tau_minus_descriptors_hi"] = ci(vs_desc)
    return out


def baselines(bench: Benchmark, splits: Splits, metric: str = "tau") -> dict[str, Assessment]:
    """The size statistics and (for a space that declares descriptors; fitted on the training
    architectures only) the descriptor regression, assessed on ``splits`` like a proxy."""
    y, params = bench.truth.y, bench.params
    out = {name: assess(np.asarray(bench.truth.columns[stat.key], dtype=float), y, params,
                        splits, metric)
           for name, stat in SIZE_STATISTICS.items()}
    desc = bench.descriptors()
    if desc is not None:
        out["descriptors"] = assess(descriptor_regression(desc, params, y, splits.train), y,
                                    params, splits, metric)
    return out


def paired_verdicts(scores: np.ndarray, bench: Benchmark, splits: Splits,
                    resamples: int = 1000) -> dict[str, Any]:
    """A proxy's held-out τ minus #params' and minus the descriptor regression's, each with
    its paired bootstrap interval (the same resampled held-out architectures for both
    sides): what decides "beats #params", rather than the point estimates alone."""
    desc = bench.descriptors()
    pred = (None if desc is None else
            descriptor_regression(desc, bench.params, bench.truth.y, splits.train))
    m = proxy_metrics(scores, bench.truth.y, bench.params, splits, resamples, 0, pred)
    out = {}
    for name, key in (("paired_vs_params", "test_tau_minus_params"),
                      ("paired_vs_descriptors", "test_tau_minus_descriptors")):
        if key in m:
            out[name] = {"difference": _finite(m[key]), "lo": _finite(m[key + "_lo"]),
                         "hi": _finite(m[key + "_hi"]), "resamples": resamples}
    return out


def record_context(bench: Benchmark, splits: Splits, target: str,
                   found: dict[str, Assessment]) -> dict[str, Any]:
    """The fields every best-proxy record carries beside the proxy's own numbers: the
    baselines on the same split, the architectures, benchmark, target, noise ceiling."""
    return {"baselines": {k: v.to_json() for k, v in found.items()},
            "architectures": {"total": len(bench.truth.y), "train": len(splits.train),
                              "test": len(splits.test)},
            "benchmark": str(bench.folder), "target": target,
            "noise_ceiling": bench.noise_ceiling(splits.test)}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None

