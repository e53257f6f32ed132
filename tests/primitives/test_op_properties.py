"""Every algebraic property an op record declares, checked numerically (generated from the
registry): the canonicaliser rewrites formulas with these flags, and the evaluator skips work
with them, so a wrong flag changes what a formula computes and must fail here."""

from __future__ import annotations

import pytest
import torch

import primitives
from primitives import Kind, Ragged

from ..conftest import FAMILIES, make_value
from ..primitives.test_primitives_generated import _args, _call, _flat

OPS = [op for op in primitives.ops() if op.family != "input"]
#: the value families plus mixed signs around zero, where piecewise ops differ most
VALUE_FAMILIES = (*FAMILIES, "mixed")


def _values(kind: Kind, family: str, seed: int = 0, archs: int = 3) -> torch.Tensor | Ragged:
    if family != "mixed":
        return make_value(kind, family, seed, archs)
    v = make_value(kind, "random", seed, archs)
    flat = _flat(v)
    flat.copy_(torch.where(flat.abs() < 0.5, -flat * 3, flat))  # dense negative entries too
    return v


def _with(op: primitives.Op, prop: str) -> list[tuple[primitives.Op, primitives.Signature]]:
    return [(op, sig) for op in OPS if getattr(op, prop) for sig in op.signatures]


def _ids(cases: list[tuple[primitives.Op, primitives.Signature]]) -> list[str]:
    return [f"{op.name}:{sig}" for op, sig in cases]


def _same(a: torch.Tensor | Ragged, b: torch.Tensor | Ragged) -> bool:
    """Equal up to float32 rounding (1e-5 of the largest magnitude): a property that holds in
    exact arithmetic may differ in the last bits (znorm re-standardises an already standard
    layer), while a wrong flag differs by orders more (leaky_relu: a factor 100)."""
    x, y = _flat(a).double(), _flat(b).double()
    if x.shape != y.shape:
        return False
    scale = float(torch.nan_to_num(x, posinf=0, neginf=0).abs().max()) if x.numel() else 0.0
    return torch.allclose(x, y, rtol=1e-5, atol=1e-5 * scale + 1e-30, equal_nan=True)


def _unary_cases(prop: str) -> list[tuple[primitives.Op, primitives.Signature, str]]:
    return [(op, sig, fam) for op, sig in _with(None, prop)  # type: ignore[arg-type]
            for fam in VALUE_FAMILIES]


IDEMPOTENT = _unary_cases("idempotent")
INVOLUTION = _unary_cases("involution")
IDENTITY = _unary_cases("identity")


@pytest.mark.parametrize(("op", "sig", "family"), IDEMPOTENT,
                         ids=[f"{o.name}:{s}:{f}" for o, s, f in IDEMPOTENT])
def test_declared_idempotent_ops_are(op: primitives.Op, sig: primitives.Signature,
                                     family: str) -> None:
    x = _values(sig.inputs[0], family)
    once = _call(op, [x])
    assert _same(_call(op, [once]), once), f"{op.name}({op.name}(x)) != {op.name}(x)"


@pytest.mark.parametrize(("op", "sig", "family"), INVOLUTION,
                         ids=[f"{o.name}:{s}:{f}" for o, s, f in INVOLUTION])
def test_declared_involutions_are(op: primitives.Op, sig: primitives.Signature,
                                  family: str) -> None:
    x = _values(sig.inputs[0], family)
    assert _same(_call(op, [_call(op, [x])]), x), f"{op.name}({op.name}(x)) != x"


@pytest.mark.parametrize(("op", "sig", "family"), IDENTITY,
                         ids=[f"{o.name}:{s}:{f}" for o, s, f in IDENTITY])
def test_declared_identities_are(op: primitives.Op, sig: primitives.Signature,
                                 family: str) -> None:
    x = _values(sig.inputs[0], family)
    assert _same(_call(op, [x]), x), f"{op.name}(x) != x"


COMMUTATIVE = _with(None, "commutative")  # type: ignore[arg-type]


@pytest.mark.parametrize("family", VALUE_FAMILIES)
@pytest.mark.parametrize(("op", "sig"), COMMUTATIVE, ids=_ids(COMMUTATIVE))
def test_declared_commutative_ops_are(op: primitives.Op, sig: primitives.Signature,
                                      family: str) -> None:
    if op.pairwise:  # (student values, teacher values) of one shape: swap the two sides
        x, y = _values(sig.inputs[0], family, 0, 1), _values(sig.inputs[0], family, 1, 1)
    else:
        x, y = _values(sig.inputs[0], family, 0), _values(sig.inputs[1], family, 1)
    assert _same(_call(op, [x, y]), _call(op, [y, x])), f"{op.name}(x,y) != {op.name}(y,x)"


ZERO_ON_EQUAL = _with(None, "zero_on_equal")  # type: ignore[arg-type]


@pytest.mark.parametrize("family", VALUE_FAMILIES)
@pytest.mark.parametrize(("op", "sig"), ZERO_ON_EQUAL, ids=_ids(ZERO_ON_EQUAL))
def test_declared_zero_on_equal_ops_are(op: primitives.Op, sig: primitives.Signature,
                                        family: str) -> None:
    x = _values(sig.inputs[0], family)
    out = _flat(_call(op, [x, x]))
    assert torch.equal(out, torch.zeros_like(out)) and not torch.signbit(out).any()


STOCHASTIC = [(op, sig) for op in OPS if op.stochastic for sig in op.signatures]


@pytest.mark.parametrize(("op", "sig"), STOCHASTIC, ids=_ids(STOCHASTIC))
def test_declared_stochastic_ops_depend_on_their_generator(op: primitives.Op,
                                                           sig: primitives.Signature) -> None:
    args = _args(op, sig)
    assert not torch.equal(_flat(_call(op, args, seed=1)), _flat(_call(op, args, seed=2)))


DIFFERENTIABLE = [(op, sig) for op in OPS if op.differentiable and not op.cross_arch
                  for sig in op.signatures if sig.output is not Kind.SCORE
                  and all(k not in (Kind.WSET, Kind.ASET, Kind.LVAL) for k in sig.inputs)]


@pytest.mark.parametrize(("op", "sig"), DIFFERENTIABLE, ids=_ids(DIFFERENTIABLE))
def test_declared_differentiable_ops_carry_a_gradient(op: primitives.Op,
                                                      sig: primitives.Signature) -> None:
    args = [a.clone().requires_grad_(True) for a in _args(op, sig)]  # type: ignore[union-attr]
    out = _flat(_call(op, args))
    grads = torch.autograd.grad(out.double().sum(), args[0], allow_unused=True)
    assert grads[0] is not None and torch.isfinite(grads[0]).all(), op.name


def test_a_wrong_flag_fails_these_checks() -> None:
    """leaky_relu is not idempotent (0.01·0.01·x ≠ 0.01·x for x < 0): the check that guards
    the flag catches it, so the canonicaliser may not collapse leaky_relu(leaky_relu(x))."""
    op = primitives.get("leaky_relu")
    assert not op.idempotent
    x = _values(op.signatures[0].inputs[0], "mixed")
    once = _call(op, [x])
    assert not _same(_call(op, [once]), once)
    canon = primitives.canonicalize(primitives.parse("mse(leaky_relu(leaky_relu(k1)))"))
    assert str(canon) == "mse(leaky_relu(leaky_relu(k1)))"


@pytest.mark.parametrize("name", [op.name for op in primitives.ops("input")])
def test_every_input_declares_its_side_and_the_parser_obeys_it(name: str) -> None:
    """An input is read on both sides of a distance ("both") or is a student-only statistic
    ("student"); the type checker accepts the first inside a teacher-student distance and
    rejects the second there, from the property, not the name."""
    from primitives.formula import parse

    op = primitives.get(name)
    assert op.side in ("both", "student")
    kinds = dict(primitives.DEFAULT_INPUT_KINDS)
    if op.side == "both":
        parse(f"mse({name})", kinds)
        assert name in primitives.paired_inputs()
    else:
        with pytest.raises(primitives.FormulaError, match="student-only"):
            parse(f"mse(mm({name}))", kinds)
        assert name not in primitives.paired_inputs()
