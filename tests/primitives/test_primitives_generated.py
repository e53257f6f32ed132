"""Per-op tests generated from the registry: a newly registered op is tested at once."""

from __future__ import annotations

import pytest
import torch

import primitives
from primitives import Kind, KindError, Ragged, ShapeError, apply
from primitives.contract import expected_shape, is_tensor_contract
from primitives.values import RAGGED_KINDS

from ..conftest import FAMILIES, LAYERS, SHAPES, A, make_layers, make_value

OPS = [op for op in primitives.ops() if op.family != "input"]
CASES = [(op, sig) for op in OPS for sig in op.signatures]
IDS = [f"{op.name}:{sig}" for op, sig in CASES]


def _args(op: primitives.Op, sig: primitives.Signature, family: str = "random", seed: int = 0
          ) -> list[torch.Tensor | Ragged]:
    if op.pairwise:  # (student with A archs, teacher with 1)
        return [make_value(sig.inputs[0], family, seed),
                make_value(sig.inputs[0], family, seed + 1, archs=1)]
    return [make_value(k, family, seed + i) for i, k in enumerate(sig.inputs)]


def _call(op: primitives.Op, args: list, seed: int = 7, device: str = "cpu"
          ) -> torch.Tensor | Ragged:
    g = torch.Generator(device=device).manual_seed(seed) if op.stochastic else None
    return apply(op.name, *args, generator=g)


def _flat(v: torch.Tensor | Ragged) -> torch.Tensor:
    return v.values if isinstance(v, Ragged) else v


@pytest.mark.parametrize(("op", "sig"), CASES, ids=IDS)
def test_shape_contract(op: primitives.Op, sig: primitives.Signature) -> None:
    out = _call(op, _args(op, sig))
    assert primitives.kind_of(out) == sig.output
    if sig.output is Kind.SCORE:
        assert out.shape == (A,)
    elif is_tensor_contract(sig.contract) and sig.output not in RAGGED_KINDS:
        ins = [SHAPES[k] for k in sig.inputs]
        if op.pairwise:
            ins = ins * 2
        assert tuple(out.shape) == (A, *expected_shape(sig.contract, ins)), sig.contract


_RANKS = {Kind.VEC: "2d", Kind.SEQ: "3d", Kind.FMAP: "4d"}
UNDEFINED = [(op, kind) for op in OPS for kind in _RANKS
             if op.arity == 1 and not any(s.inputs == (kind,) for s in op.signatures)]


@pytest.mark.parametrize(("op", "kind"), UNDEFINED,
                         ids=[f"{o.name}:{_RANKS[k]}" for o, k in UNDEFINED])
def test_rank_without_signature_is_rejected(op: primitives.Op, kind: Kind) -> None:
    """No silent pass-through: a rank an op is not defined on raises KindError."""
    args = [make_value(kind), make_value(kind, archs=1)] if op.pairwise else [make_value(kind)]
    with pytest.raises(KindError, match=op.name):
        _call(op, args)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("op", "sig"), CASES, ids=IDS)
def test_finite_outputs(op: primitives.Op, sig: primitives.Signature, family: str) -> None:
    out = _flat(_call(op, _args(op, sig, family)))
    assert torch.isfinite(out).all(), f"{op.name} gave non-finite values on {family} input"


@pytest.mark.parametrize(("op", "sig"), CASES, ids=IDS)
def test_pure_and_deterministic(op: primitives.Op, sig: primitives.Signature) -> None:
    args = _args(op, sig)
    before = [_flat(a).clone() for a in args]
    first = _flat(_call(op, args, seed=3))
    second = _flat(_call(op, args, seed=3))
    for a, b in zip(args, before, strict=True):
        assert torch.equal(_flat(a), b), f"{op.name} modified its input in place"
    assert torch.equal(first, second)


@pytest.mark.parametrize(("op", "sig"), CASES, ids=IDS)
def test_in_place_and_autograd_paths_agree(op: primitives.Op, sig: primitives.Signature) -> None:
    """Kernels finish in place on their own temporaries unless autograd records (then they
    stay out of place): both paths must give the same bits."""
    args = _args(op, sig)
    with torch.no_grad():
        fast = _flat(_call(op, args))
    tracked = []
    for a in args:
        if isinstance(a, Ragged):
            tracked.append(a.with_values(a.values.clone().requires_grad_()))
        else:
            tracked.append(a.clone().requires_grad_() if a.is_floating_point() else a)
    slow = _flat(_call(op, tracked))
    assert torch.equal(fast, slow.detach()), op.name


_SMALL = {Kind.FMAP: (3, 4, 4, 4), Kind.SEQ: (3, 4, 5), Kind.VEC: (3, 5)}
GRADIENT = [(op, sig) for op, sig in CASES
            if op.differentiable and not op.stochastic and sig.inputs[0] in _SMALL]


@pytest.mark.parametrize(("op", "sig"), GRADIENT, ids=[f"{o.name}:{s}" for o, s in GRADIENT])
def test_differentiable_ops_pass_gradcheck(op: primitives.Op, sig: primitives.Signature) -> None:
    """Distillation uses formulas as training losses: every op marked differentiable must
    give correct gradients (float64, finite differences), in-place steps included."""
    g = torch.Generator().manual_seed(5)
    shape = (2, *_SMALL[sig.inputs[0]])
    x = torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_()
    if op.pairwise:
        t = torch.randn((1, *shape[1:]), generator=g, dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda s: apply(op.name, s, t), (x,))
    else:
        assert torch.autograd.gradcheck(lambda s: apply(op.name, s), (x,))


STOCHASTIC = [(op, sig) for op, sig in CASES if op.stochastic]


@pytest.mark.parametrize(("op", "sig"), STOCHASTIC, ids=[f"{o.name}:{s}" for o, s in STOCHASTIC])
def test_stochastic_ops_depend_on_the_generator_only(op: primitives.Op,
                                                     sig: primitives.Signature) -> None:
    args = _args(op, sig)
    a = _flat(_call(op, args, seed=1))
    b = _flat(_call(op, args, seed=2))
    assert not torch.equal(a, b), "different seeds should give different draws"
    with pytest.raises(KindError, match="Generator"):
        apply(op.name, *args)


def _split_tensor_case(op: primitives.Op, sig: primitives.Signature) -> None:
    args = _args(op, sig)
    batched = _call(op, args)
    students = [args[0]] if op.pairwise else args
    for i in range(A):
        single = [x[i:i + 1] for x in students] + ([args[1]] if op.pairwise else [])
        one = _call(op, single)
        torch.testing.assert_close(one, batched[i:i + 1], rtol=1e-5, atol=1e-6)


def _split_ragged_case(op: primitives.Op, sig: primitives.Signature) -> None:
    layer_lists = [make_layers(k, "random", seed=i) for i, k in enumerate(sig.inputs)]
    packed = [Ragged.from_layers(k, ll) for k, ll in zip(sig.inputs, layer_lists, strict=True)]
    batched = _call(op, packed)
    for i in range(len(LAYERS[sig.inputs[0]])):
        single = [Ragged.from_layers(k, [ll[i]])
                  for k, ll in zip(sig.inputs, layer_lists, strict=True)]
        one = _call(op, single)
        if isinstance(batched, Ragged):
            arch = (batched.segment if batched.kind is Kind.LVAL
                    else batched.segment_arch[batched.segment])
            torch.testing.assert_close(one.values, batched.values[arch == i],
                                       rtol=1e-5, atol=1e-6)
        else:
            torch.testing.assert_close(one, batched[i:i + 1], rtol=1e-5, atol=1e-6)


BATCHABLE = [(op, sig) for op, sig in CASES if not op.cross_arch]


@pytest.mark.parametrize(("op", "sig"), BATCHABLE, ids=[f"{o.name}:{s}" for o, s in BATCHABLE])
def test_batched_equals_per_architecture_loop(op: primitives.Op, sig: primitives.Signature
                                              ) -> None:
    if sig.inputs[0] in RAGGED_KINDS:
        _split_ragged_case(op, sig)
    else:
        _split_tensor_case(op, sig)


@pytest.mark.parametrize("op", OPS, ids=[o.name for o in OPS])
def test_record_is_complete(op: primitives.Op) -> None:
    assert op.doc, f"{op.name} has no docstring"
    n = 2 if op.pairwise else op.arity
    markers = [f"ARG{i}Z" for i in range(n)]
    rendered = op.latex_template().format(*markers)
    assert all(m in rendered for m in markers), f"{op.name}: LaTeX drops an argument"
    assert op.complexity >= 1


def test_pairwise_shape_mismatch_is_a_shape_error() -> None:
    s = torch.randn(2, 4, 6, 8, 8)
    t = torch.randn(1, 4, 5, 8, 8)
    with pytest.raises(ShapeError, match="differ"):
        apply("l1", s, t)


def test_too_small_map_is_a_shape_error() -> None:
    with pytest.raises(ShapeError, match="smaller than"):
        apply("local_s4", torch.randn(1, 2, 3, 2, 2))


def test_ragged_layout_mismatch_is_a_shape_error() -> None:
    w = make_value(Kind.WSET)
    other = Ragged.from_layers(Kind.WSET, [[torch.randn(3)], [torch.randn(2)], [torch.randn(4)]])
    with pytest.raises(ShapeError, match="layouts"):
        apply("add", w, other)


@pytest.mark.parametrize("threads", [1, 2])
def test_fast_vector_norm_equals_torch_bit_for_bit(threads: int) -> None:
    # norm_c / norm_n replace torch's per-element reduction over a non-innermost axis with one
    # pass per slice; committed campaigns only reproduce if the bits are torch's
    from primitives.transforms import vector_norm_keepdim

    g = torch.Generator().manual_seed(2)
    special = torch.tensor([0.0, -0.0, 1e20, -3e19, 1e-30, 1e-45, -1e-40, float("inf"),
                            float("-inf"), float("nan"), 2**-126, 3.0])
    shapes = [((2, 64, 16, 32, 32), 2), ((2, 64, 16, 32, 32), 1), ((3, 64, 32, 8, 8), 2),
              ((3, 64, 64, 8, 8), 1), ((2, 64, 16, 1024), 2), ((2, 64, 16, 1024), 1),
              ((2, 64, 300), 1), ((1, 5, 7, 3), 2), ((2, 40, 8, 1, 1), 2), ((2, 40, 8, 1, 1), 1),
              ((0, 64, 16, 32, 32), 2), ((2, 64, 16, 0, 4), 2)]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for shape, dim in shapes:
            x = torch.randn(shape, generator=g) * 3
            x.view(-1)[::97] = 0.0
            x.view(-1)[5::1031] = special.repeat(x.numel() // 1031 // 12 + 1)[
                : x.view(-1)[5::1031].numel()]
            want = torch.linalg.vector_norm(x, dim=dim, keepdim=True)
            got = vector_norm_keepdim(x, (dim,))
            assert got.shape == want.shape
            assert torch.equal(got.view(torch.int32), want.view(torch.int32)), (shape, dim)
            for name in ("norm_c", "norm_n"):
                if x.dim() >= 3 + (name == "norm_c"):
                    ref = x / torch.linalg.vector_norm(
                        x, dim=2 if name == "norm_c" else 1, keepdim=True).clamp_min(1e-12)
                    out = apply(name, x)
                    assert torch.equal(out.nan_to_num(7.0), ref.nan_to_num(7.0)), name
    finally:
        torch.set_num_threads(before)
