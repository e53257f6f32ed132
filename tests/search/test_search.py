"""Training-free student search under budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gp_proxy.plugin.proxy import Proxy
from gp_proxy.search.students import baseline_scorer, formula_scorer, search
from gp_proxy.spaces import get_space
from primitives import GpProxyError

SPACE = get_space("fmnist-cnn")
X = torch.randn(6, 1, 14, 14, generator=torch.Generator().manual_seed(0))
Y = torch.arange(6) % 10


def test_exhaustive_params_search_respects_the_budget() -> None:
    budget = 60_000
    top = search(SPACE, baseline_scorer("params", SPACE, None, X, Y), "exhaustive",
                 max_params=budget, top_k=3)
    fitting = sorted((SPACE.params(s), s) for s in SPACE.enumerate() if SPACE.params(s) <= budget)
    assert [c.spec for c in top] == [s for _, s in fitting[::-1][:3]]
    assert all(c.params <= budget for c in top)


def test_exhaustive_search_among_given_candidates_only() -> None:
    among = [s for s in SPACE.enumerate() if s.startswith("w8-")][:10]
    top = search(SPACE, baseline_scorer("params", SPACE, None, X, Y), "exhaustive",
                 max_params=60_000, top_k=20, candidates=among)
    fitting = sorted((SPACE.params(s), s) for s in among if SPACE.params(s) <= 60_000)
    assert [c.spec for c in top] == [s for _, s in fitting[::-1]]
    with pytest.raises(GpProxyError, match="exhaustive"):
        search(SPACE, baseline_scorer("params", SPACE, None, X, Y), "random", candidates=among)


def test_evolution_is_seeded_and_finds_good_students_under_a_flops_budget() -> None:
    scorer = baseline_scorer("params", SPACE, None, X, Y)
    kw = {"iterations": 60, "population": 10, "sample": 3, "max_flops": 2_000_000, "top_k": 3}
    a = search(SPACE, scorer, "evolution", seed=1, **kw)
    b = search(SPACE, scorer, "evolution", seed=1, **kw)
    assert a == b and all(c.flops <= 2_000_000 for c in a)
    best = max(SPACE.params(s) for s in SPACE.enumerate() if SPACE.flops(s) <= 2_000_000)
    assert a[0].params >= 0.8 * best
    r = search(SPACE, scorer, "random", iterations=20, max_flops=2_000_000, seed=1, top_k=1)
    assert r[0].flops <= 2_000_000


def test_rank_combined_formula_scores_do_not_depend_on_batch_companions() -> None:
    teacher = SPACE.build_teacher(seed=0)
    proxy = Proxy.from_string("rank_add(sp_dist(k2),mean_layers(fro_norm(weight)))")
    scorer = formula_scorer(proxy, SPACE, teacher, X, Y, reference=12)
    alone = scorer(["w8-d111-k3"])[0]
    together = scorer(["w8-d111-k3", "w16-d333-k5"])[0]
    assert alone == pytest.approx(together, abs=1 / 12 + 1e-9)  # one rank step at most


def test_impossible_budget_is_a_clear_error() -> None:
    with pytest.raises(GpProxyError, match="fits the budget"):
        search(SPACE, baseline_scorer("params", SPACE, None, X, Y), "evolution",
               max_params=10, iterations=1, population=2)


def test_search_cli_writes_top_k(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gp_proxy.cli import main

    from ..tiny_benchmark import make_tiny_benchmark

    bench = make_tiny_benchmark(tmp_path / "b")
    out = tmp_path / "search.json"
    code = main(["search", "--proxy", "sp_dist(k2)", "--benchmark", str(bench),
                 "--strategy", "evolution", "--iterations", "8", "--population", "6",
                 "--max-params", "100000", "--top-k", "3", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert len(data["top"]) == 3 and all(c["params"] <= 100_000 for c in data["top"])
    assert data["proxy"] == "sp_dist(k2)" and data["seconds"] > 0


def test_a_user_strategy_registers_like_the_built_ins() -> None:
    """Strategies are a registry: a user's runs through the same state (budget, memoised
    scorer, RNG) and is found by name; an unknown name is one error naming the choices."""
    from gp_proxy.search.students import STRATEGIES, SearchState, Strategy

    def smallest_first(st: SearchState) -> None:  # ranks the st.iterations smallest fitting
        pool = sorted((s for s in st.space.enumerate() if st.fits(s)), key=st.space.params)
        st.scored(pool[:st.iterations])

    STRATEGIES.register("smallest-first", Strategy(smallest_first, steps=lambda n: 1),
                        replace=True)
    top = search(SPACE, baseline_scorer("params", SPACE, None, X, Y), "smallest-first",
                 iterations=5, top_k=2)
    five = sorted(SPACE.enumerate(), key=SPACE.params)[:5]
    assert [c.spec for c in top] == sorted(five, key=lambda s: -SPACE.params(s))[:2]
    with pytest.raises(GpProxyError, match=r"unknown search strategy 'evolve'.*evolution"):
        search(SPACE, baseline_scorer("params", SPACE, None, X, Y), "evolve")
