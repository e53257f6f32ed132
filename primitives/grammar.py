"""Type-safe random formula generation over the registry.

DEAP's ``genFull``/``genGrow`` raise on typed sets whenever a kind cannot be closed at the
requested depth. Here the minimum height that closes each (kind, context) is computed once
by a fixed point over the registry, and a generator never picks an op whose arguments cannot
be closed in the depth that is left, so generation cannot fail.
A context is ``inside_pair``: below a teacher-student distance only ``k1``/``k2``/``k3`` exist
and no further distance may appear.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

from .formula import Node
from .inputs import DEFAULT_INPUT_KINDS
from .registry import Op, Signature, ops
from .values import Kind

__all__ = ["Grammar", "Production"]

PAIR_INPUTS = ("k1", "k2", "k3")


@dataclass(frozen=True)
class Production:
    """One way to build a value of ``output``: an op with one of its signatures."""

    op: Op
    signature: Signature

    @property
    def output(self) -> Kind:
        return self.signature.output


class Grammar:
    """Productions by (kind, context), with the minimum closing height of each."""

    def __init__(self, input_kinds: Mapping[str, Kind] | None = None,
                 exclude: frozenset[str] = frozenset(), allow_identity: bool = False) -> None:
        self.input_kinds = {**DEFAULT_INPUT_KINDS, **(input_kinds or {})}
        self.productions: list[Production] = [
            Production(op, sig)
            for op in ops()
            if op.name not in exclude and (allow_identity or not op.identity)
            for sig in op.signatures
        ]
        self.min_height: dict[tuple[Kind, bool], float] = self._fixed_point()

    def _allowed(self, p: Production, inside_pair: bool) -> bool:
        if p.op.family == "input":
            return (p.op.name in PAIR_INPUTS) if inside_pair else True
        return not (inside_pair and (p.op.pairwise or p.op.family in ("reduce", "combine")))

    def _output(self, p: Production) -> Kind:
        return self.input_kinds[p.op.name] if p.op.family == "input" else p.output

    def _fixed_point(self) -> dict[tuple[Kind, bool], float]:
        h: dict[tuple[Kind, bool], float] = {(k, c): math.inf for k in Kind for c in (False, True)}
        changed = True
        while changed:
            changed = False
            for ctx in (False, True):
                for p in self.productions:
                    if not self._allowed(p, ctx):
                        continue
                    child_ctx = ctx or p.op.pairwise
                    need = 1 + max((h[(k, child_ctx)] for k in p.signature.inputs), default=0)
                    key = (self._output(p), ctx)
                    if need < h[key]:
                        h[key] = need
                        changed = True
        return h

    def choices(self, kind: Kind, inside_pair: bool, max_height: int,
                terminal: bool | None = None) -> list[Production]:
        """Productions of ``kind`` that close within ``max_height`` (1 = a terminal)."""
        out = []
        for p in self.productions:
            if not self._allowed(p, inside_pair) or self._output(p) != kind:
                continue
            is_term = p.op.family == "input"
            if terminal is not None and is_term != terminal:
                continue
            child_ctx = inside_pair or p.op.pairwise
            need = 1 + max((self.min_height[(k, child_ctx)] for k in p.signature.inputs),
                           default=0)
            if need <= max_height:
                out.append(p)
        return out

    def random_tree(self, rng: random.Random, kind: Kind = Kind.SCORE, max_height: int = 6,
                    method: str = "grow", inside_pair: bool = False) -> Node:
        """A random, well-typed tree of ``kind`` of height at most ``max_height``.

        ``grow`` picks any production that still closes; ``full`` prefers ops over
        terminals until the depth runs out.
        """
        if self.min_height[(kind, inside_pair)] > max_height:
            raise ValueError(f"no {kind} tree closes within height {max_height}")
        options = self.choices(kind, inside_pair, max_height)
        if method == "full":
            inner = [p for p in options if p.op.family != "input" and max_height > 1]
            options = inner or options
        p = rng.choice(options)
        child_ctx = inside_pair or p.op.pairwise
        args = tuple(self.random_tree(rng, k, max_height - 1, method, child_ctx)
                     for k in p.signature.inputs)
        return Node(p.op.name, args)


@cache
def default_grammar() -> Grammar:
    return Grammar()
