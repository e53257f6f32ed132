"""The typed primitive set and variation: the generator never fails, children inherit genes."""

from __future__ import annotations

import random

import pytest

import primitives
from gp_proxy.evolve.pset import build_pset
from gp_proxy.evolve.variation import crossover, mutate


@pytest.mark.parametrize("grammar", ["both", "interaction", "instinct"])
def test_type_safe_generator_never_fails(grammar: str) -> None:
    ps = build_pset(grammar)
    rng = random.Random(0)
    for i in range(10_000 if grammar == "both" else 2_000):
        tree = ps.random_tree(rng, 1, 2 + i % 8)
        node = ps.to_node(tree)
        assert primitives.infer_kind(node) is primitives.Kind.SCORE


def test_variation_inherits_genes_and_respects_limits() -> None:
    ps = build_pset("both")
    rng = random.Random(1)
    shared = 0
    for _ in range(300):
        a, b = ps.random_tree(rng, 3, 6), ps.random_tree(rng, 3, 6)
        c = crossover(ps, a, b, rng, max_height=8, max_size=20)
        m = mutate(ps, a, rng, max_height=8, max_size=20)
        for t in (c, m):
            assert t.height + 1 <= 8 or t == a
            node = ps.to_node(t)
            # no nested useless ops: canonicalisation has nothing left to remove
            assert primitives.canonicalize(node).size == node.size
            primitives.check(str(node))
        parts = {str(n) for n in ps.to_node(c).walk()}
        if parts & ({str(n) for n in ps.to_node(a).walk()} | {str(n) for n in
                                                            ps.to_node(b).walk()}):
            shared += 1
    assert shared > 250  # children carry their parents' subtrees
