"""The one registry of ops. Everything else (parser, printer, canonical forms, DEAP set,
CLI listing, tests) is derived from these records; no code branches on an op's name."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import GpProxyError, KindError
from .values import Kind, Value, kind_of

__all__ = ["REGISTRY", "Family", "Op", "Signature", "apply", "get", "ops", "paired_inputs",
           "register"]

Family = str  # one of FAMILIES
FAMILIES: tuple[Family, ...] = (
    "input", "elementwise", "transform", "distance", "instinct", "reduce", "combine",
)


@dataclass(frozen=True)
class Signature:
    """One typed overload of an op.

    ``contract`` is the per-architecture shape contract in einops-like notation
    (``"n c h w -> n (h w)"``); ragged kinds use ``[layer]``-style descriptions.
    For a pairwise op (a teacher-student distance) ``inputs`` lists the kind of its single
    formula argument, and ``fn`` receives ``(student, teacher)``.
    Stochastic ops receive a ``torch.Generator`` as their last argument.
    """

    inputs: tuple[Kind, ...]
    output: Kind
    fn: Callable[..., Value] | None
    contract: str

    def __str__(self) -> str:
        ins = ", ".join(str(k) for k in self.inputs)
        return f"({ins}) -> {self.output}"


@dataclass(frozen=True)
class Op:
    """One primitive: identity, typing, properties and rendering."""

    name: str
    family: Family
    signatures: tuple[Signature, ...]
    doc: str
    source: str = ""
    complexity: int = 1
    commutative: bool = False
    stochastic: bool = False
    needs_grad: bool = False
    pairwise: bool = False
    identity: bool = False
    idempotent: bool = False
    involution: bool = False
    differentiable: bool = True
    cross_arch: bool = False
    #: a pairwise op comparing per-sample relations: teacher and student may differ in every
    #: axis but the sample axis (their widths and map sizes need not match)
    relation: bool = False
    #: op(x, x) is exactly +0 for every layer when x is finite (a distance of a value with
    #: itself): evaluators may skip computing it
    zero_on_equal: bool = False
    #: the smallest map side (height and width) the op's input must have (a patch size):
    #: generators leave the op out for features smaller than that
    min_map: int = 0
    #: a distance over softmax distributions at this temperature (KL, CWD): what a distiller
    #: search reads to offer one distance family at the temperatures it chooses
    temperature: float = 0.0
    #: a cross-architecture combiner: the name of the normaliser it applies to each part over
    #: the architectures (a key of ``primitives.instinct.NORMALISERS``) and each part's sign;
    #: what lets a combined formula score one model against a stored reference population
    normaliser: str = ""
    part_signs: tuple[float, ...] = ()
    #: an input's side: "both" (read on the teacher and on the student: the features a
    #: distance compares) or "student" (a student-only statistic); empty for other ops
    side: str = ""
    #: an input's source: the key of its value in a model's features (side "both") or in
    #: the per-model collection of student-only statistics (side "student")
    key: str = ""
    #: an input's value for one model in an exported, torch-only proxy (a Python expression
    #: over ``student_layers``); empty for features, read from the features dicts
    per_model: str = ""
    latex: str = ""
    sympy: Callable[..., Any] | None = field(default=None, compare=False)

    @property
    def arity(self) -> int:
        return len(self.signatures[0].inputs)

    def signature_for(self, kinds: tuple[Kind, ...]) -> Signature | None:
        for sig in self.signatures:
            if sig.inputs == kinds:
                return sig
        return None

    def properties(self) -> list[str]:
        names = ("commutative", "stochastic", "needs_grad", "pairwise", "identity",
                 "idempotent", "involution", "cross_arch", "relation", "zero_on_equal")
        props = [n for n in names if getattr(self, n)]
        if not self.differentiable:
            props.append("non_differentiable")
        return props

    def latex_template(self) -> str:
        if self.latex:
            return self.latex
        body = self.name.replace("_", r"\_")
        args = ", ".join("{%d}" % i for i in range(max(self.arity, 2 if self.pairwise else 0)))
        return "\\operatorname{{" + body + "}}\\left(" + args + "\\right)" if args else body


REGISTRY: dict[str, Op] = {}


def register(op: Op) -> Op:
    """Add ``op`` to the registry; a duplicate name or an inconsistent record is an error."""
    if op.name in REGISTRY:
        raise GpProxyError(f"op {op.name!r} is registered twice")
    if op.family not in FAMILIES:
        raise GpProxyError(f"op {op.name!r}: unknown family {op.family!r}")
    if not op.signatures:
        raise GpProxyError(f"op {op.name!r} has no signature")
    arities = {len(s.inputs) for s in op.signatures}
    if len(arities) != 1:
        raise GpProxyError(f"op {op.name!r}: all signatures must have the same arity")
    seen = [s.inputs for s in op.signatures]
    if len(seen) != len(set(seen)):
        raise GpProxyError(f"op {op.name!r}: two signatures take the same input kinds")
    if op.commutative and (op.arity != 2 or any(s.inputs[0] != s.inputs[1] for s in op.signatures)):
        raise GpProxyError(f"op {op.name!r}: commutative ops take two arguments of one kind")
    if (op.identity or op.idempotent or op.involution) and any(
        s.inputs != (s.output,) for s in op.signatures
    ):
        raise GpProxyError(f"op {op.name!r}: rewrite properties need kind-preserving unary ops")
    REGISTRY[op.name] = op
    return op


def get(name: str) -> Op:
    from . import _load  # noqa: F401  (populates the registry on first use)

    try:
        return REGISTRY[name]
    except KeyError:
        raise KindError(f"unknown op {name!r}") from None


def paired_inputs() -> tuple[str, ...]:
    """The inputs read on both sides of a teacher-student distance, in registry order."""
    return tuple(op.name for op in ops("input") if op.side == "both")


def ops(family: Family | None = None) -> Iterator[Op]:
    """All registered ops (of one family), in registration order."""
    from . import _load  # noqa: F401

    order = {f: i for i, f in enumerate(FAMILIES)}
    for op in sorted(REGISTRY.values(), key=lambda o: order[o.family]):  # stable within family
        if family is None or op.family == family:
            yield op


def apply(name: str, *args: Any, generator: Any = None) -> Value:
    """Apply op ``name`` to runtime values, dispatching on their kinds.

    Pairwise ops take ``(student, teacher)``; stochastic ops need ``generator``.
    Raises :class:`KindError` when no signature accepts the given kinds: ops never pass
    values of the wrong kind through unchanged.
    """
    op = get(name)
    if op.pairwise:
        if len(args) != 2:
            raise KindError(f"{name}: a pairwise op takes (student, teacher)")
        kinds: tuple[Kind, ...] = (kind_of(args[0]),)
        if kind_of(args[1]) != kinds[0]:
            raise KindError(f"{name}: student is {kinds[0]}, teacher is {kind_of(args[1])}")
    else:
        kinds = tuple(kind_of(a) for a in args)
    sig = op.signature_for(kinds)
    if sig is None or sig.fn is None:
        accepted = "; ".join(str(s) for s in op.signatures)
        got = ", ".join(str(k) for k in kinds)
        raise KindError(f"{name} does not accept ({got}); it accepts {accepted}")
    if op.stochastic:
        if generator is None:
            raise KindError(f"{name} is stochastic: pass an explicit torch.Generator")
        return sig.fn(*args, generator)
    return sig.fn(*args)
