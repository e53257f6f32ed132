"""How differently two conditions rank the same students, measured against seed noise.

A condition is an architectures × seeds table of test accuracies: KD under one teacher or
another (benchmark 2 against benchmark 1), or KD against CE within one benchmark. The builder
seeds a student's initialisation and data order by (architecture, seed) alone, so seed i of
one condition is paired with seed i of the other. Rankings are compared like with like: the
Kendall τ between one run of each condition, on *different* seeds (cross), against the τ
between two runs of the same condition on different seeds (within). Cross below within beyond
its bootstrap interval, a significant architecture × condition interaction, and a reliable
per-architecture difference are the three ways a reordering beyond noise shows. Such a
difference is what a distillation-aware proxy must explain and a size statistic cannot.
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from primitives.errors import GpProxyError

from ..core.rank import kendall_tau, seed_reliability, spearman_rho


def reliability(per_seed: list[np.ndarray]) -> float:
    """Spearman-Brown reliability of the seed mean from the mean seed-pair Spearman ρ."""
    return seed_reliability(np.stack(per_seed, axis=1))[1]


def interaction_test(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Two-way ANOVA with replication (architecture × condition, seeds as replicates): does
    the condition move architectures differently, beyond the seed-to-seed spread?
    ``a``/``b``: architectures × seeds."""
    y = np.stack([a, b], axis=1)  # arch, condition, seed
    n_arch, n_cond, n_rep = y.shape
    cell = y.mean(axis=2)
    grand = y.mean()
    arch_m, cond_m = cell.mean(axis=1), cell.mean(axis=0)
    ss_int = n_rep * float(((cell - arch_m[:, None] - cond_m[None, :] + grand) ** 2).sum())
    ss_err = float(((y - cell[:, :, None]) ** 2).sum())
    df_int, df_err = (n_arch - 1) * (n_cond - 1), n_arch * n_cond * (n_rep - 1)
    f = (ss_int / df_int) / (ss_err / df_err)
    return {"F": f, "df": [df_int, df_err], "p": float(stats.f.sf(f, df_int, df_err))}


def single_run_taus(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(within a, within b, cross): mean Kendall τ over pairs of runs on different seeds."""
    k = a.shape[1]
    pairs = list(itertools.combinations(range(k), 2))
    cross = [(i, j) for i in range(k) for j in range(k) if i != j]
    return (statistics.fmean(kendall_tau(a[:, i], a[:, j]) for i, j in pairs),
            statistics.fmean(kendall_tau(b[:, i], b[:, j]) for i, j in pairs),
            statistics.fmean(kendall_tau(a[:, i], b[:, j]) for i, j in cross))


def ranking_difference(a: np.ndarray, b: np.ndarray, params: np.ndarray, boot: int = 2000,
                       seed: int = 0) -> dict[str, Any]:
    """How differently conditions ``a`` and ``b`` (architectures × paired seeds) rank the
    same students: the single-run agreement within and across with a bootstrap interval
    (resampling architectures) of within − cross, the agreement of the seed means (also
    disattenuated by their reliabilities), the interaction test, and the per-architecture
    difference b − a (seed by seed): its mean, spread, seed reliability and τ with #params."""
    if a.shape != b.shape or a.shape[1] < 2:
        raise ValueError(f"two architectures x seeds tables of one shape with 2+ seeds, "
                         f"got {a.shape} and {b.shape}")
    wa, wb, cr = single_run_taus(a, b)
    rng = np.random.default_rng(seed)
    n = len(a)
    gaps = []
    for _ in range(boot):
        idx = rng.integers(0, n, n)
        x, y, c = single_run_taus(a[idx], b[idx])
        gaps.append((x + y) / 2 - c)
    diff = b - a
    ma, mb = a.mean(axis=1), b.mean(axis=1)
    rel_a, rel_b = reliability(list(a.T)), reliability(list(b.T))
    rho = spearman_rho(ma, mb)
    return {
        "architectures": n,
        "single_run_kendall": {"within_a": wa, "within_b": wb, "cross": cr,
                               "within_minus_cross": (wa + wb) / 2 - cr,
                               "within_minus_cross_ci95": [float(np.percentile(gaps, 2.5)),
                                                           float(np.percentile(gaps, 97.5))]},
        "mean_kendall": kendall_tau(ma, mb),
        "mean_spearman": rho,
        # the correlation the two seed means would have without seed noise (can pass 1)
        "spearman_disattenuated": rho / float(np.sqrt(rel_a * rel_b)),
        "reliability_of_mean": {"a": rel_a, "b": rel_b},
        "interaction": interaction_test(a, b),
        "difference_b_minus_a": {
            "mean": float(diff.mean()), "std_over_archs": float(diff.mean(axis=1).std()),
            "seed_reliability": reliability(list(diff.T)),
            "kendall_with_params": kendall_tau(diff.mean(axis=1), params)},
    }


def parse_condition(text: str) -> tuple[str, str]:
    """``FOLDER[:TARGET]`` (target default ``kd_mean``) -> (folder, target)."""
    folder, sep, target = text.rpartition(":")
    if not sep or not target or "/" in target or "\\" in target:
        return text, "kd_mean"
    return folder, target


def compare_conditions(a: str, b: str, boot: int = 2000) -> dict[str, Any]:
    """:func:`ranking_difference` of two conditions, each ``FOLDER[:TARGET]`` (a benchmark
    folder and a ground-truth target with per-seed columns: ``kd_mean``, ``ce_mean``,
    ``kd_gain``...) on the architectures both hold, in the first one's order. For example
    KD against CE on one benchmark, or KD under two teachers of the same students."""
    from .benchmark import load_benchmark  # benchmark.py imports the builder, which imports us

    tables, benches = [], []
    for text in (a, b):
        folder, target = parse_condition(text)
        bench = load_benchmark(folder, target)
        seeds = bench.seed_columns(target)
        if seeds is None:
            raise GpProxyError(f"{Path(folder) / 'ground_truth.csv'}: {target!r} has no "
                               f"per-seed columns ({target.removesuffix('_mean')}_s0, ...)")
        benches.append(bench)
        tables.append(dict(zip(bench.truth.archs, seeds, strict=True)))
    first, second = benches
    if first.space != second.space:
        raise GpProxyError(f"{a} and {b} rank different student spaces ({first.space}, "
                           f"{second.space}): their rankings cannot be compared")
    archs = [x for x in first.truth.archs if x in tables[1]]
    if len(archs) < 3:
        raise GpProxyError(f"{a} and {b} share {len(archs)} architectures; need 3 or more")
    ta, tb = (np.array([t[x] for x in archs]) for t in tables)
    if ta.shape != tb.shape:
        raise GpProxyError(f"{a} has {ta.shape[1]} seeds, {b} {tb.shape[1]}: the runs must be "
                           "paired seed by seed")
    params = dict(zip(first.truth.archs, first.params, strict=True))
    return {"a": a, "b": b, **ranking_difference(ta, tb, np.array([params[x] for x in archs]),
                                                 boot)}
