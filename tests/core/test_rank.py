"""numba rank correlations against scipy, including ties, NaN and constants."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from gp_proxy.core.rank import (
    average_ranks,
    kendall_tau,
    kendall_tau_batch,
    seed_reliability,
    spearman_rho,
    spearman_rho_batch,
)

vectors = st.integers(2, 60).flatmap(lambda n: st.tuples(
    st.lists(st.integers(-5, 5) | st.floats(-1e3, 1e3, allow_nan=False), min_size=n, max_size=n),
    st.lists(st.integers(-3, 3) | st.floats(-1e3, 1e3, allow_nan=False), min_size=n, max_size=n)))


def _same(a: float, b: float) -> bool:
    return (np.isnan(a) and np.isnan(b)) or abs(a - b) <= 1e-12


@settings(max_examples=400, deadline=None)
@given(vectors)
def test_matches_scipy_with_ties(pair: tuple[list[float], list[float]]) -> None:
    x, y = np.array(pair[0], dtype=float), np.array(pair[1], dtype=float)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want_tau = stats.kendalltau(x, y).statistic
        want_rho = stats.spearmanr(x, y).statistic
    assert _same(kendall_tau(x, y), want_tau)
    assert _same(spearman_rho(x, y), want_rho)


def test_batched_equals_single() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 20, 150).astype(float)
    xs = rng.normal(size=(40, 150))
    xs[3] = np.round(xs[3])
    xs[5, 7] = np.nan
    taus, rhos = kendall_tau_batch(xs, y), spearman_rho_batch(xs, y)
    for i in range(40):
        assert _same(taus[i], kendall_tau(xs[i], y))
        assert _same(rhos[i], spearman_rho(xs[i], y))
    assert np.isnan(taus[5]) and np.isnan(rhos[5])


def test_nan_and_constant_give_nan() -> None:
    x = np.array([1.0, 2.0, np.nan, 4.0])
    y = np.arange(4.0)
    assert np.isnan(kendall_tau(x, y)) and np.isnan(spearman_rho(x, y))
    assert np.isnan(kendall_tau(np.ones(4), y)) and np.isnan(spearman_rho(np.ones(4), y))


def test_average_ranks_match_scipy() -> None:
    x = np.array([3.0, 1.0, 3.0, 2.0, 1.0, 3.0])
    np.testing.assert_array_equal(average_ranks(x), stats.rankdata(x))


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="lengths differ"):
        kendall_tau(np.ones(3), np.ones(4))


def test_ranks_never_place_a_nan() -> None:
    """The audit's reproducer: [3, nan, 1, 2] was ranked [2.5, 3.5, 0, 1] (NaN put last)."""
    import primitives.instinct as inst

    got = average_ranks(np.array([3.0, np.nan, 1.0, 2.0]))
    want = stats.rankdata([3.0, np.nan, 1.0, 2.0], nan_policy="propagate")
    assert np.isnan(got).all() and np.isnan(want).all()
    import torch

    assert torch.isnan(inst.average_ranks(torch.tensor([3.0, float("nan"), 1.0, 2.0]))).all()
    assert inst.average_ranks(torch.tensor([3.0, 1.0, 1.0])).tolist() == [2.0, 0.5, 0.5]


def test_seed_reliability_by_hand_and_everywhere_the_same() -> None:
    """Spearman-Brown from scipy's ρ; and the noise ceiling, the agreement analysis and each
    committed benchmark summary all take their reliability from this one helper."""
    import csv
    import json
    from pathlib import Path

    from gp_proxy.bench.agreement import reliability
    from gp_proxy.evaluate.fitness import noise_ceiling

    rng = np.random.default_rng(3)
    truth = rng.normal(size=40)
    m = np.stack([truth + rng.normal(0, 0.7, 40) for _ in range(4)], axis=1)
    rhos = [stats.spearmanr(m[:, i], m[:, j]).statistic for i in range(4) for j in range(i + 1, 4)]
    r1 = float(np.mean(rhos))
    got_r1, got_rel = seed_reliability(m)
    assert got_r1 == pytest.approx(r1, abs=1e-12)
    assert got_rel == pytest.approx(4 * r1 / (1 + 3 * r1), abs=1e-12)
    assert noise_ceiling(m)["reliability"] == got_rel == reliability(list(m.T))
    # a constant seed column has no ρ: its pairs are left out, not counted as zero
    m2 = np.column_stack([m[:, :2], np.ones(40)])
    r12 = stats.spearmanr(m[:, 0], m[:, 1]).statistic
    assert seed_reliability(m2)[0] == pytest.approx(r12, abs=1e-12)
    assert all(np.isnan(seed_reliability(m[:, :1])))  # one seed: nothing to compare
    assert all(np.isnan(seed_reliability(m[:2])))  # two architectures: no ranking to speak of
    root = Path(__file__).resolve().parents[2] / "benchmarks"
    for bench in ("fmnist", "fmnist-wide", "fmnist-resnet"):
        noise = json.loads((root / bench / "noise.json").read_text())
        rows = list(csv.DictReader((root / bench / "ground_truth.csv").open()))
        kd = np.array([[float(r[f"kd_s{s}"]) for s in noise["seeds"]] for r in rows])
        assert seed_reliability(kd)[1] == pytest.approx(
            noise["reliability_of_mean_spearman_brown"], abs=1e-12), bench
