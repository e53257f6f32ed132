"""A DEAP ``PrimitiveSetTyped`` generated from the registry, and tree conversions.

DEAP types are (kind, context) classes: ``pair`` for values below a teacher-student distance
(only ``k1``/``k2``/``k3`` there), ``free`` for the student-only instinct part. Distances return
``IScore`` (interaction), layer reductions ``SScore`` (instinct). The root type depends on the
grammar: ``interaction`` (a distance), ``instinct`` (a reduction) or ``both`` (a rank/z
combiner of one of each: a raw sum would let one part swamp the other).
Identity ops are left out: canonicalisation would remove them anyway.

A type-safe generator replaces DEAP's ``genFull``/``genGrow``, which raise when a type cannot be
closed at the requested depth: the minimum closing height of every type is precomputed, and
the generator never picks a primitive whose arguments cannot close in the height left.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deap import gp

import primitives
import primitives.contract
from primitives import Kind, Node, Op
from primitives.errors import GpProxyError

__all__ = ["GRAMMARS", "ProxySet", "build_pset", "undefined_on"]

GRAMMARS = ("both", "interaction", "instinct")


def _type(name: str, cache: dict[str, type]) -> type:
    if name not in cache:
        cache[name] = type(name, (), {"__module__": __name__})
    return cache[name]


@dataclass
class ProxySet:
    """The primitive set plus what the generator and converters need."""

    pset: gp.PrimitiveSetTyped
    grammar: str
    combiner: str
    op_of: dict[str, str]  # DEAP primitive/terminal name -> op name
    min_height: dict[type, float]
    types: dict[str, type]
    input_kinds: dict[str, Kind]

    # ------------------------------------------------------------------ generation -------
    def _closes(self, prim: Any, height: int) -> bool:
        if isinstance(prim, gp.Terminal):
            return height >= 1
        return 1 + max(self.min_height[t] for t in prim.args) <= height

    def random_list(self, rng: random.Random, height: int, method: str = "grow",
                    ret: type | None = None) -> list[Any]:
        """A pre-order primitive list of type ``ret`` and height <= ``height``; never fails."""
        ret = ret or self.pset.ret
        if self.min_height[ret] > height:
            raise GpProxyError(f"no tree of type {ret.__name__} closes within height {height}")
        options = [p for p in self.pset.primitives[ret] + self.pset.terminals[ret]
                   if self._closes(p, height)]
        if method == "full":
            inner = [p for p in options if isinstance(p, gp.Primitive)]
            options = inner or options
        prim = rng.choice(options)
        out: list[Any] = [prim]
        if isinstance(prim, gp.Primitive):
            for t in prim.args:
                out += self.random_list(rng, height - 1, method, t)
        return out

    def random_tree(self, rng: random.Random, min_height: int, max_height: int,
                    method: str | None = None) -> gp.PrimitiveTree:
        """Ramped half-and-half: a height in [min, max] and grow or full."""
        lo = max(min_height, int(self.min_height[self.pset.ret]))
        h = rng.randint(lo, max(lo, max_height))
        return gp.PrimitiveTree(self.random_list(rng, h, method or rng.choice(["grow", "full"])))

    # ------------------------------------------------------------------ conversion -------
    def to_node(self, tree: gp.PrimitiveTree) -> Node:
        pos = 0

        def build() -> Node:
            nonlocal pos
            p = tree[pos]
            pos += 1
            args = tuple(build() for _ in range(p.arity))
            return Node(self.op_of[p.name], args)

        return build()

    def to_tree(self, node: Node) -> gp.PrimitiveTree:
        """The primitive list of ``node``; raises if it does not fit this grammar."""
        out: list[Any] = []
        if not self._fill(node, self.pset.ret, False, out):
            raise GpProxyError(f"formula {node} does not fit the {self.grammar!r} grammar "
                               f"(root type {self.pset.ret.__name__})")
        return gp.PrimitiveTree(out)

    def _fill(self, node: Node, want: type, inside_pair: bool, out: list[Any]) -> bool:
        op = primitives.get(node.name)
        inside = inside_pair or op.pairwise
        if op.family == "input":
            for t in self.pset.terminals.get(want, []):
                if self.op_of.get(t.name) == node.name:
                    out.append(t)
                    return True
            return False
        orders = [node.args]
        if op.commutative:
            orders.append(tuple(reversed(node.args)))
        for p in self.pset.primitives.get(want, []):
            if self.op_of[p.name] != node.name or p.arity != len(node.args):
                continue
            for args in orders:
                trial: list[Any] = [p]
                if all(self._fill(a, t, inside, trial) for a, t in zip(args, p.args, strict=True)):
                    out += trial
                    return True
        return False


def _fixed_point(pset: gp.PrimitiveSetTyped) -> dict[type, float]:
    types = set(pset.primitives) | set(pset.terminals)
    h: dict[type, float] = {t: math.inf for t in types}
    for t, terms in pset.terminals.items():
        if terms:
            h[t] = 1
    changed = True
    while changed:
        changed = False
        for t, prims in pset.primitives.items():
            for p in prims:
                need = 1 + max(h.get(a, math.inf) for a in p.args)
                if need < h[t]:
                    h[t] = need
                    changed = True
    return h


def _mask_name(mask: frozenset[int]) -> str:
    return "m" + "".join(str(i) for i in sorted(mask)) if mask else "aligned"


#: campaign combiner setting -> the combiners' ``normaliser`` property it selects
_NORMALISER_OF = {"rank": "rank01", "z": "z"}


def _fits(op: Op, smallest_map: int | None) -> bool:
    """Whether ``op`` can run on maps whose smallest side is ``smallest_map`` (None: no maps)."""
    return smallest_map is None or op.min_map <= smallest_map


def _compares(op: Op, mask: frozenset[int]) -> bool:
    """Whether distance ``op`` accepts teacher and student values whose axes ``mask`` may
    differ in size: aligned values always, a relation distance any but the sample axis."""
    return not mask or (op.relation and 0 not in mask)


def build_pset(grammar: str = "both", combiner: str = "rank",
               input_kinds: Mapping[str, Kind] | None = None,
               misaligned: Mapping[str, frozenset[int]] | None = None,
               exclude: frozenset[str] = frozenset(),
               smallest_map: int | None = None) -> ProxySet:
    """Generate the typed primitive set from the registry.

    ``misaligned`` gives, per teacher-student input, the axis positions whose size differs
    between the teacher and some student (``{"k2": {1}}``: students are narrower). Types below
    a distance carry that set, transforms propagate it through their shape contracts, and a
    distance only accepts aligned values (a relation distance only needs the sample axis),
    so formulas that could only fail with a shape error are never built. ``smallest_map``
    (the smallest feature-map side of the cache) leaves out ops whose input must be larger
    (a 4x4 patch on a 2x2 map).
    """
    if grammar not in GRAMMARS:
        raise GpProxyError(f"unknown grammar {grammar!r}; choose from {', '.join(GRAMMARS)}")
    if combiner not in _NORMALISER_OF:
        raise GpProxyError(f"unknown combiner {combiner!r}; choose rank or z")
    kinds = {**primitives.DEFAULT_INPUT_KINDS, **(input_kinds or {})}
    masks = {k: frozenset(v) for k, v in (misaligned or {}).items()}
    cache: dict[str, type] = {}
    iscore, sscore = _type("IScore", cache), _type("SScore", cache)
    root = {"both": _type("Root", cache), "interaction": iscore, "instinct": sscore}[grammar]
    pset = gp.PrimitiveSetTyped("proxy", [], root)
    op_of: dict[str, str] = {}
    use_pair, use_free = grammar != "instinct", grammar != "interaction"

    def free(kind: Kind) -> type:
        return _type(f"{kind.value}_free", cache)

    def pair(kind: Kind, mask: frozenset[int]) -> type:
        return _type(f"{kind.value}_pair_{_mask_name(mask)}", cache)

    def add(op_name: str, args: list[type], ret: type, tag: str) -> None:
        name = f"{op_name}__{tag}"
        pset.addPrimitive(lambda *a: None, args, ret, name=name)
        op_of[name] = op_name

    ops = [op for op in primitives.ops() if op.name not in exclude and not op.identity
           and _fits(op, smallest_map)]
    # inputs
    frontier: list[tuple[Kind, frozenset[int]]] = []
    for op in ops:
        if op.family != "input":
            continue
        if op.side == "both":
            if not use_pair:
                continue
            km = (kinds[op.name], masks.get(op.name, frozenset()))
            pset.addTerminal(op.name, pair(*km), name=op.name)
            if km not in frontier:
                frontier.append(km)
        else:
            if not use_free:
                continue
            # a score-valued input (the size prior) is a student part by itself
            kind = kinds[op.name]
            pset.addTerminal(op.name, sscore if kind is Kind.SCORE else free(kind), name=op.name)
        op_of[op.name] = op.name
    # below a distance: every (kind, mask) reachable from the inputs through the transforms
    seen = set(frontier)
    while frontier:
        kind, mask = frontier.pop(0)
        for op in ops:
            if op.pairwise or op.family in ("input", "reduce", "combine"):
                continue
            for sig in op.signatures:
                if sig.inputs != (kind,):
                    continue
                out = (sig.output, primitives.contract.propagate_misaligned(sig.contract, mask))
                add(op.name, [pair(kind, mask)], pair(*out),
                    f"{kind.value}_{_mask_name(mask)}__pair")
                if out not in seen:
                    seen.add(out)
                    frontier.append(out)
        for op in ops:
            if not op.pairwise:
                continue
            if not _compares(op, mask):
                continue
            for sig in op.signatures:
                if sig.inputs == (kind,):
                    add(op.name, [pair(kind, mask)], iscore,
                        f"{kind.value}_{_mask_name(mask)}__pair")
    # the student-only part, and the root
    for op in ops:
        if op.family in ("input",) or op.pairwise:
            continue
        for sig in op.signatures:
            ins = sig.inputs
            if op.family == "reduce":
                if use_free:
                    add(op.name, [free(ins[0])], sscore, f"{ins[0].value}__free")
            elif op.family == "combine":
                if grammar == "both" and op.normaliser == _NORMALISER_OF[combiner]:
                    add(op.name, [iscore, sscore], root, "root")
            elif use_free and ins[0] in primitives.values.RAGGED_KINDS:
                add(op.name, [free(k) for k in ins], free(sig.output),
                    f"{'_'.join(k.value for k in ins)}__free")
    h = _fixed_point(pset)
    if h.get(root, math.inf) == math.inf:
        raise GpProxyError(f"grammar {grammar!r} cannot build any formula for these inputs")
    return ProxySet(pset, grammar, combiner, op_of, h, cache, kinds)


def undefined_on(node: Node, input_kinds: Mapping[str, Kind],
                 misaligned: Mapping[str, frozenset[int]] | None = None,
                 smallest_map: int | None = None) -> str | None:
    """Why ``node`` cannot be evaluated on features of these kinds, teacher-student shape
    differences (``misaligned``, as :meth:`FeatureCache.misaligned` gives them) and smallest
    map side, by the rules :func:`build_pset` builds with; None when it can. Checking a formula
    against another benchmark's shapes needs only its feature shapes, never its accuracies,
    so a campaign may demand it of benchmarks it must not see (``defined_on_transfer``)."""
    kinds = {**primitives.DEFAULT_INPUT_KINDS, **input_kinds}
    try:
        primitives.infer_kind(node, kinds)
    except GpProxyError as exc:
        return str(exc).splitlines()[0]
    masks = {k: frozenset(v) for k, v in (misaligned or {}).items()}

    def below(n: Node) -> tuple[Kind, frozenset[int]]:
        """(kind, axes that may differ) of a value below a distance, for teacher and student."""
        op = primitives.get(n.name)
        if op.family == "input":
            return kinds[n.name], masks.get(n.name, frozenset())
        got = [below(a) for a in n.args]
        sig = op.signature_for(tuple(k for k, _ in got))
        assert sig is not None  # infer_kind passed
        mask = frozenset().union(*(m for _, m in got))
        return sig.output, primitives.contract.propagate_misaligned(sig.contract, mask)

    def walk(n: Node) -> str | None:
        op = primitives.get(n.name)
        if not _fits(op, smallest_map):
            return f"{n.name} needs feature maps of side {op.min_map} or more, the smallest " \
                   f"here is {smallest_map}"
        if op.pairwise:
            for a in n.args:
                _, mask = below(a)
                if not _compares(op, mask):
                    return f"{n.name}({a}) compares teacher and student values whose axes " \
                           f"{sorted(mask)} differ in size"
        return next((why for a in n.args if (why := walk(a)) is not None), None)

    return walk(node)
