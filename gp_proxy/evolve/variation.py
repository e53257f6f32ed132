"""Variation with DEAP's typed operators, driven by the campaign's own RNG.

DEAP's operators draw from the global ``random`` module; :func:`using` swaps the campaign's
``random.Random`` state in for the duration of a call and back out, so runs are reproducible
and resumable without anyone seeding the global module.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from deap import gp

import primitives

from .pset import ProxySet

__all__ = ["crossover", "mutate", "normalise", "using"]

#: mutation -> (tree, primitive set, random subtree generator) -> mutant; one is drawn
#: uniformly (in this order: the draw is part of a campaign's random stream)
MUTATIONS: dict[str, Callable[[gp.PrimitiveTree, ProxySet, Callable[..., list[object]]],
                              gp.PrimitiveTree]] = {
    "subtree": lambda t, ps, expr: gp.mutUniform(t, expr=expr, pset=ps.pset)[0],
    "point": lambda t, ps, expr: gp.mutNodeReplacement(t, pset=ps.pset)[0],
    "shrink": lambda t, ps, expr: gp.mutShrink(t)[0],
}


@contextmanager
def using(rng: random.Random) -> Iterator[None]:
    saved = random.getstate()
    random.setstate(rng.getstate())
    try:
        yield
    finally:
        rng.setstate(random.getstate())
        random.setstate(saved)


def normalise(ps: ProxySet, tree: gp.PrimitiveTree) -> gp.PrimitiveTree:
    """Canonical form as a tree: no identity ops, no nested idempotent/involutive repeats."""
    return ps.to_tree(primitives.canonicalize(ps.to_node(tree)))


def _within(tree: gp.PrimitiveTree, max_height: int, max_size: int) -> bool:
    return tree.height + 1 <= max_height and len(tree) <= max_size


def _one_point(a: gp.PrimitiveTree, b: gp.PrimitiveTree, rng: random.Random
               ) -> gp.PrimitiveTree:
    """Typed one-point crossover: ``a`` with one subtree replaced by a same-typed one of ``b``.

    Same operator as ``deap.gp.cxOnePoint``, but DEAP picks the type from a ``set`` of type
    classes, whose order follows object ids and so differs between runs; here types are
    ordered by name, which keeps campaigns reproducible.
    """
    def by_type(t: gp.PrimitiveTree) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, node in enumerate(t[1:], start=1):
            out.setdefault(node.ret.__name__, []).append(i)
        return out

    ta, tb = by_type(a), by_type(b)
    common = sorted(set(ta) & set(tb))
    if not common:
        return gp.PrimitiveTree(list(a))
    kind = rng.choice(common)
    i, j = rng.choice(ta[kind]), rng.choice(tb[kind])
    sa, sb = a.searchSubtree(i), b.searchSubtree(j)
    return gp.PrimitiveTree(list(a[: sa.start]) + list(b[sb]) + list(a[sa.stop:]))


def crossover(ps: ProxySet, a: gp.PrimitiveTree, b: gp.PrimitiveTree, rng: random.Random,
              max_height: int, max_size: int) -> gp.PrimitiveTree:
    """Typed one-point subtree crossover; a child over the bloat limits falls back to ``a``."""
    child = normalise(ps, _one_point(a, b, rng))
    return child if _within(child, max_height, max_size) else gp.PrimitiveTree(list(a))


def mutate(ps: ProxySet, a: gp.PrimitiveTree, rng: random.Random, max_height: int,
           max_size: int) -> gp.PrimitiveTree:
    """Subtree, point (node replacement) or shrink mutation, chosen uniformly."""
    kind = rng.choice(tuple(MUTATIONS))
    t = gp.PrimitiveTree(list(a))

    def expr(pset: gp.PrimitiveSetTyped, type_: type) -> list[object]:
        # called inside using(): the live stream is the global one; hand it over and back
        rng.setstate(random.getstate())
        out = ps.random_list(rng, rng.randint(max(1, int(ps.min_height[type_])), 4),
                             "grow", type_)
        random.setstate(rng.getstate())
        return out

    with using(rng):
        t = MUTATIONS[kind](t, ps, expr)
    child = normalise(ps, t)
    return child if _within(child, max_height, max_size) else gp.PrimitiveTree(list(a))
