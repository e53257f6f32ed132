"""Campaign schemes: how one generation replaces the population. A scheme is a function of
the campaign, registered in :data:`SCHEMES` (a user's by ``SCHEMES.register`` or, in a config,
``scheme=module:attr``); it works through the campaign's population operations:
``offspring(parents)``, ``newcomer()``, ``evaluate(trees)`` (records, each formula scored
once), ``order(tree)`` and ``select_key(record)`` (what selection compares), ``key(tree)``
(the canonical formula), its ``population``, ``rng``, ``config``, ``generation`` and
``evaluations`` counter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from deap import gp

from ..core.registry import Registry

if TYPE_CHECKING:
    from .campaign import Campaign, Record

__all__ = ["SCHEMES", "generational", "nsga2", "steady"]

def steady(run: Campaign) -> None:
    """Auto-DAS steady state: ``population`` iterations of parents from the top fraction,
    offspring versus a random newcomer, the better replacing the worst.

    Iterations run in batches of ``steady_batch``: a batch's offspring are drawn from the
    same population and evaluated together (their shared subtrees computed once), then the
    replacements are applied in order. ``steady_batch=1`` is the strict one-at-a-time form.
    """
    c = run.config
    done = 0
    while done < c.population:
        b = min(c.steady_batch, c.population - done)
        ranked = sorted(run.population, key=run.order, reverse=True)
        top = ranked[: max(2, round(c.parents_top * len(ranked)))]
        pairs = []
        for _ in range(b):
            parents = [top[run.rng.randrange(len(top))] for _ in range(2)]
            pairs.append((run.offspring(parents), run.newcomer()))
        run.evaluations += 2 * b
        recs = run.evaluate([t for pair in pairs for t in pair])
        for k, (child, newcomer) in enumerate(pairs):
            rc, rn = recs[2 * k], recs[2 * k + 1]
            cand, rec = (child, rc) if run.select_key(rc) >= run.select_key(rn) else \
                (newcomer, rn)
            if rec.formula in {run.key(t) for t in run.population}:
                continue
            worst = min(range(len(run.population)),
                        key=lambda i: run.order(run.population[i]))
            if run.select_key(rec) >= run.order(run.population[worst]):
                run.population[worst] = cand
        done += b


def _tournament(run: Campaign) -> gp.PrimitiveTree:
    picks = [run.population[run.rng.randrange(len(run.population))]
             for _ in range(run.config.tournament)]
    return max(picks, key=run.order)


def elite_ratio(run: Campaign) -> float:
    c = run.config
    frac = run.generation / max(1, c.generations - 1)
    return c.elite_start + (c.elite_end - c.elite_start) * min(1.0, frac)


def generational(run: Campaign) -> None:
    """Elitism (ratio growing from elite_start to elite_end) plus tournament offspring."""
    c = run.config
    ranked = sorted(run.population, key=run.order, reverse=True)
    n_elite = max(1, round(elite_ratio(run) * c.population))
    nxt = ranked[:n_elite]
    _fill_distinct(run, nxt, c.population, {run.key(t) for t in nxt})
    run.evaluations += len(nxt) - n_elite
    run.evaluate(nxt)
    run.population = nxt


def _fill_distinct(run: Campaign, out: list[gp.PrimitiveTree], size: int, seen: set[str]
               ) -> None:
    """Append tournament offspring to ``out`` until it holds ``size`` formulas none of
    which is in ``seen`` or repeated (random newcomers once offspring keep repeating)."""
    c = run.config
    attempts = 0
    while len(out) < size:
        attempts += 1
        child = (run.offspring([_tournament(run), _tournament(run)])
                 if attempts < 20 * c.population else run.newcomer())
        k = run.key(child)
        if k in seen:
            continue
        seen.add(k)
        out.append(child)


def nsga2(run: Campaign) -> None:
    """NSGA-II survival (Deb et al. 2002, DEAP's selNSGA2): parents and offspring together,
    the population kept by non-dominated fronts over (fitness, training partial τ given
    #params), crowding distance within the last front. Parents are drawn by the
    campaign's fitness tournament; a failed formula is dominated by every working one."""
    from deap import base, tools

    from .campaign import FAILED

    class Objectives(base.Fitness):
        weights = (1.0, 1.0)

    class Wrapped:
        def __init__(self, tree: gp.PrimitiveTree, rec: Record) -> None:
            self.tree = tree
            a = rec.assessment
            beyond = a.sign * a.train_partial_tau_params if a is not None else math.nan
            self.fitness = Objectives((
                rec.fitness if rec.fitness > FAILED else -2.0,
                beyond if rec.fitness > FAILED and math.isfinite(beyond) else -2.0))

    c = run.config
    offspring: list[gp.PrimitiveTree] = []
    _fill_distinct(run, offspring, c.population, {run.key(t) for t in run.population})
    run.evaluations += len(offspring)
    run.evaluate(offspring)
    pool = sorted(run.population + offspring, key=run.order, reverse=True)
    chosen = tools.selNSGA2([Wrapped(t, run.record(t)) for t in pool], c.population)
    run.population = [w.tree for w in chosen]


def _builtins() -> None:
    SCHEMES.register("steady", steady)
    SCHEMES.register("generational", generational)
    SCHEMES.register("nsga2", nsga2)


#: campaign scheme name -> one generation of it
SCHEMES: Registry[Callable[[Campaign], None]] = Registry("campaign scheme", _builtins)
