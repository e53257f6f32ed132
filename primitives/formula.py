"""Formulas as typed trees: parse, print, type-check, canonicalise.

The printed form ``name(arg,arg)`` (no spaces) is a formula's identity everywhere: logs,
hall of fame, checkpoints, command line. ``parse`` reads it against the registry (never
``eval``) and reports the offending token and its character position; ``str(node)`` prints
it back exactly, so ``str(parse(s)) == s`` for every printed formula.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property

from .errors import FormulaError, GpProxyError
from .inputs import DEFAULT_INPUT_KINDS
from .registry import REGISTRY, Op, get
from .values import Kind

__all__ = ["Node", "canonicalize", "check", "complexity", "infer_kind", "parse"]

_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[(),])|(?P<bad>\S))")


@dataclass(frozen=True)
class Node:
    """An op applied to argument nodes; a terminal has no arguments."""

    name: str
    args: tuple[Node, ...] = ()

    def __str__(self) -> str:
        return self.text

    @cached_property
    def text(self) -> str:
        if not self.args:
            return self.name
        return f"{self.name}({','.join(a.text for a in self.args)})"

    @property
    def op(self) -> Op:
        return get(self.name)

    def self_distance_arg(self) -> Node | None:
        """The value a ``zero_on_equal`` op compares with itself (``act`` in
        ``dist_l2(act,act)``: +0 per layer whenever that value is finite), else None."""
        if self.args and self.op.zero_on_equal and self.args[0].text == self.args[1].text:
            return self.args[0]
        return None

    def walk(self) -> Iterator[Node]:
        """Pre-order traversal."""
        yield self
        for a in self.args:
            yield from a.walk()

    def paths(self, prefix: str = "") -> Iterator[tuple[str, Node]]:
        """(path, node) in pre-order; a path like ``"0.1"`` names a node's position."""
        yield prefix, self
        for i, a in enumerate(self.args):
            yield from a.paths(f"{prefix}.{i}" if prefix else str(i))

    @property
    def size(self) -> int:
        return sum(1 for _ in self.walk())

    @property
    def height(self) -> int:
        return 1 + max((a.height for a in self.args), default=0)


#: the deepest nesting a formula may have: far above any evolved tree (campaigns cap the
#: height at ``max_height``, at most this), and far below what the recursive walks over a
#: tree (typing, canonical form, evaluation) can take on Python's default stack
MAX_DEPTH = 100


def parse(text: str, input_kinds: Mapping[str, Kind] | None = None) -> Node:
    """Parse and type-check a formula string; raise :class:`FormulaError` naming the token."""
    get("k1")  # make sure the registry is populated
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:  # only trailing whitespace left
            break
        if m.group("bad") is not None:
            raise FormulaError(f"unexpected character {m.group('bad')!r}", text, m.start("bad"))
        kind = "name" if m.group("name") is not None else "punct"
        tokens.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    if not tokens:
        raise FormulaError("empty formula", text, 0)

    i = 0
    positions: dict[int, int] = {}

    def expect(value: str) -> None:
        nonlocal i
        if i >= len(tokens):
            raise FormulaError(f"expected {value!r} but the formula ended", text, len(text))
        _, tok, at = tokens[i]
        if tok != value:
            raise FormulaError(f"expected {value!r}, found {tok!r}", text, at)
        i += 1

    def node(depth: int = 1) -> tuple[Node, int]:
        nonlocal i
        if i >= len(tokens):
            raise FormulaError("expected an op or input but the formula ended", text, len(text))
        kind, tok, at = tokens[i]
        if depth > MAX_DEPTH:
            raise FormulaError(f"the formula nests deeper than {MAX_DEPTH} levels", text, at)
        if kind != "name":
            raise FormulaError(f"expected an op or input, found {tok!r}", text, at)
        if tok not in REGISTRY:
            close = _close_names(tok)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise FormulaError(f"unknown op {tok!r}{hint}", text, at)
        i += 1
        args: list[Node] = []
        if i < len(tokens) and tokens[i][1] == "(":
            i += 1
            while True:
                child, _ = node(depth + 1)
                args.append(child)
                if i < len(tokens) and tokens[i][1] == ",":
                    i += 1
                    continue
                expect(")")
                break
        made = Node(tok, tuple(args))
        positions[id(made)] = at
        return made, at

    root, _ = node()
    if i != len(tokens):
        raise FormulaError(f"unexpected {tokens[i][1]!r} after the formula", text, tokens[i][2])
    try:
        infer_kind(root, input_kinds)
    except _TypeFailure as failure:
        raise FormulaError(failure.message, text, positions.get(id(failure.node))) from None
    return root


def _close_names(name: str) -> list[str]:
    import difflib

    return difflib.get_close_matches(name, list(REGISTRY), n=3, cutoff=0.6)


class _TypeFailure(GpProxyError):
    def __init__(self, message: str, node: Node) -> None:
        super().__init__(message)
        self.message = message
        self.node = node


def infer_kind(node: Node, input_kinds: Mapping[str, Kind] | None = None) -> Kind:
    """The kind a formula evaluates to; raises on an arity or kind mismatch."""
    kinds = dict(DEFAULT_INPUT_KINDS) if input_kinds is None else {**DEFAULT_INPUT_KINDS,
                                                                   **input_kinds}
    return _infer(node, kinds, inside_pair=False)


def _infer(node: Node, kinds: Mapping[str, Kind], inside_pair: bool) -> Kind:
    op = get(node.name)
    if op.family == "input":
        if node.args:
            raise _TypeFailure(f"input {node.name!r} takes no arguments", node)
        if inside_pair and op.side != "both":
            raise _TypeFailure(
                f"{node.name!r} is a student-only input and cannot appear inside a "
                "teacher-student distance", node)
        return kinds[node.name]
    if len(node.args) != op.arity:
        raise _TypeFailure(f"{node.name} takes {op.arity} argument(s), got {len(node.args)}",
                           node)
    if op.pairwise and inside_pair:
        raise _TypeFailure(f"distance {node.name} cannot be nested inside another distance",
                           node)
    arg_kinds = tuple(_infer(a, kinds, inside_pair or op.pairwise) for a in node.args)
    sig = op.signature_for(arg_kinds)
    if sig is None:
        accepted = "; ".join(str(s) for s in op.signatures)
        got = ", ".join(str(k) for k in arg_kinds)
        raise _TypeFailure(f"{node.name} does not accept ({got}); it accepts {accepted}", node)
    return sig.output


def check(text: str, input_kinds: Mapping[str, Kind] | None = None) -> Node:
    """Parse a complete proxy formula: it must evaluate to one score per architecture."""
    node = parse(text, input_kinds)
    kind = infer_kind(node, input_kinds)
    if kind is not Kind.SCORE:
        raise FormulaError(f"a proxy must end in a score, this formula gives {kind}", text, 0)
    return node


def canonicalize(node: Node) -> Node:
    """Rewrite to the canonical form, driven by the ops' recorded properties only.

    Identity ops are removed, ``f(f(x))`` collapses for idempotent ``f`` and ``f(f(x)) = x``
    for involutions, and commutative arguments are sorted by their printed form.
    """
    args = tuple(canonicalize(a) for a in node.args)
    op = get(node.name)
    if op.identity:
        return args[0]
    if op.idempotent and args[0].name == node.name:
        return args[0]
    if op.involution and args[0].name == node.name:
        return args[0].args[0]
    if op.commutative:
        args = tuple(sorted(args, key=str))
    return Node(node.name, args)


def complexity(node: Node) -> int:
    """Sum of the ops' complexities (inputs count 0)."""
    return sum(get(n.name).complexity for n in node.walk())
