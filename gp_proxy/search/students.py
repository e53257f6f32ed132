"""Training-free student search: a proxy picks students under a params/FLOPs budget.

Strategies: regularised evolution (Real et al. 2019: tournament of ``sample`` from a
population of ``population``, mutate the winner, the oldest ages out), uniform random search,
and exhaustive ranking for spaces small enough to enumerate. Fitness is any scorer mapping a
list of specs to scores (higher = better): a formula (:func:`formula_scorer`), a zero-cost
proxy, DisWOT, #params or FLOPs (:func:`baseline_scorer`). Rank-combined formulas are scored
against a fixed, seeded reference sample of the space, so a candidate's score does not depend
on which other candidates happen to be scored with it.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from primitives.errors import GpProxyError

from ..baselines.zerocost import MEASURES, SIZE_STATISTICS, get_measure, zero_cost
from ..core.registry import Registry
from ..plugin.proxy import Calibration, Proxy
from ..spaces import SearchSpace, count_flops, count_params

__all__ = ["STRATEGIES", "Candidate", "Scorer", "SearchState", "Strategy", "baseline_scorer",
           "formula_scorer", "search"]

Scorer = Callable[[list[str]], list[float]]


@dataclass(frozen=True)
class Candidate:
    spec: str
    score: float
    params: int
    flops: int


def formula_scorer(proxy: Proxy, space: SearchSpace, teacher: nn.Module, x: Tensor,
                   y: Tensor | None, reference: int = 32, seed: int = 0,
                   init_seed: int = 0) -> Scorer:
    """Scores of specs, one model at a time. A rank/z-combined formula is placed against its
    calibration: the proxy's own (a run's calibration.json), else ``reference`` architectures
    sampled from ``space`` (seeded), so a candidate's score never depends on which other
    candidates are scored with it."""
    calibration = proxy.calibration
    if proxy.cross_arch and calibration is None:
        rng = random.Random(seed + 1)
        specs = list(dict.fromkeys(space.sample(rng) for _ in range(reference)))
        calibration = Calibration.from_parts(proxy.node, proxy.part_scores(
            teacher, [space.build(s, init_seed) for s in specs], x, y))

    def score(specs: list[str]) -> list[float]:
        parts = proxy.part_scores(teacher, [space.build(s, init_seed) for s in specs], x, y)
        if calibration is None:
            return proxy.combine(parts)
        return [proxy.sign * float(v) for v in calibration.place(proxy.node, parts)]

    return score


def baseline_scorer(name: str, space: SearchSpace, teacher: nn.Module | None, x: Tensor,
                    y: Tensor, init_seed: int = 0) -> Scorer:
    if name in SIZE_STATISTICS:
        count = getattr(space, SIZE_STATISTICS[name].key)
        return lambda specs: [float(count(s)) for s in specs]
    if name in MEASURES:
        if get_measure(name).needs_teacher and teacher is None:
            raise GpProxyError(f"{name} compares with a teacher: pass one")
        return lambda specs: [zero_cost(name, space.build(s, init_seed), x, y, teacher)
                              for s in specs]
    raise GpProxyError(f"unknown baseline {name!r}")


def _budget_ok(space: SearchSpace, spec: str, max_params: int | None, max_flops: int | None,
               memo: dict[str, tuple[int, int]]) -> bool:
    if spec not in memo:
        model = space.build(spec)
        memo[spec] = (count_params(model), count_flops(model, space.input_shape))
    p, f = memo[spec]
    return (max_params is None or p <= max_params) and (max_flops is None or f <= max_flops)


@dataclass
class SearchState:
    """What a strategy works with: the space, the seeded RNG, the budget test, the memoised
    scorer (each spec scored once) and the user's settings."""

    space: SearchSpace
    rng: random.Random
    fits: Callable[[str], bool]
    scored: Callable[[list[str]], list[float]]
    best: Callable[[], Candidate]
    iterations: int
    population: int
    sample: int
    candidates: Sequence[str] | None
    on_step: Callable[[int, Candidate], None] | None
    budget: str

    def sample_fitting(self, tries: int = 10_000) -> str:
        for _ in range(tries):
            s = self.space.sample(self.rng)
            if self.fits(s):
                return s
        raise GpProxyError(f"no architecture of {self.space.name} fits the budget "
                           f"({self.budget}) in {tries} samples")

    def step(self, i: int) -> None:
        if self.on_step:
            self.on_step(i, self.best())


@dataclass(frozen=True)
class Strategy:
    """A student search: ``run`` scores candidates through the state; ``steps`` is how many
    progress steps it reports for ``iterations``; ``takes_candidates``: it can rank a given
    candidate list instead of the whole space."""

    run: Callable[[SearchState], None]
    steps: Callable[[int], int]
    takes_candidates: bool = False


def _exhaustive(st: SearchState) -> None:
    pool = [s for s in (st.space.enumerate() if st.candidates is None else st.candidates)
            if st.fits(s)]
    if not pool:
        raise GpProxyError(f"no architecture of {st.space.name} fits the budget")
    st.scored(pool)


def _random(st: SearchState) -> None:
    for i in range(st.iterations):
        st.scored([st.sample_fitting()])
        st.step(i + 1)


def _evolution(st: SearchState) -> None:
    """Regularised evolution: the best of a tournament of ``sample`` is the parent, its
    mutant (the first of 100 tries that fits the budget, else a fresh sample) joins, the
    oldest leaves."""
    ages = deque(st.sample_fitting() for _ in range(st.population))
    st.scored(list(ages))
    for i in range(st.iterations):
        contenders = [ages[st.rng.randrange(len(ages))] for _ in range(st.sample)]
        score = dict(zip(contenders, st.scored(contenders), strict=True))
        parent = max(contenders, key=score.__getitem__)
        child = parent
        for _ in range(100):
            child = st.space.mutate(parent, st.rng)
            if st.fits(child):
                break
        if not st.fits(child):
            child = st.sample_fitting()
        st.scored([child])
        ages.append(child)
        ages.popleft()
        st.step(i + 1)


def _builtins() -> None:
    STRATEGIES.register("exhaustive", Strategy(_exhaustive, steps=lambda _: 1,
                                               takes_candidates=True))
    STRATEGIES.register("evolution", Strategy(_evolution, steps=lambda n: n))
    STRATEGIES.register("random", Strategy(_random, steps=lambda n: n))


#: the student search strategies :func:`search` runs (``STRATEGIES.register`` adds one)
STRATEGIES: Registry[Strategy] = Registry("search strategy", _builtins)


def search(space: SearchSpace, scorer: Scorer, strategy: str = "evolution",
           iterations: int = 200, population: int = 20, sample: int = 5,
           max_params: int | None = None, max_flops: int | None = None, seed: int = 0,
           top_k: int = 5, on_step: Callable[[int, Candidate], None] | None = None,
           candidates: Sequence[str] | None = None) -> list[Candidate]:
    """The ``top_k`` best distinct students found that fit the budget; with ``candidates``
    (a strategy that takes them) among those architectures instead of the whole space."""
    how = STRATEGIES.get(strategy)
    if top_k < 1:
        raise GpProxyError(f"top_k {top_k}: keep at least one student")
    if candidates is not None and not how.takes_candidates:
        ranking = [n for n in STRATEGIES if STRATEGIES.get(n).takes_candidates]
        raise GpProxyError(f"a candidate list needs a strategy that ranks one: "
                           f"{', '.join(ranking)}")
    sizes: dict[str, tuple[int, int]] = {}
    scores: dict[str, float] = {}

    def fits(spec: str) -> bool:
        return _budget_ok(space, spec, max_params, max_flops, sizes)

    def scored(specs: list[str]) -> list[float]:
        new = [s for s in dict.fromkeys(specs) if s not in scores]
        for s, v in zip(new, scorer(new) if new else [], strict=True):
            scores[s] = v
        return [scores[s] for s in specs]

    how.run(SearchState(
        space, random.Random(seed), fits, scored,
        lambda: _cand(max(scores, key=scores.__getitem__), scores, sizes),
        iterations, population, sample, candidates, on_step,
        f"params <= {max_params}, FLOPs <= {max_flops}"))
    best = sorted(scores, key=lambda s: (-scores[s], s))[:top_k]
    return [_cand(s, scores, sizes) for s in best]


def _cand(spec: str, scores: dict[str, float], sizes: dict[str, tuple[int, int]]) -> Candidate:
    return Candidate(spec, scores[spec], *sizes[spec])
