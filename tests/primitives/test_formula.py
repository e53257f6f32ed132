"""Formula strings: parse/print round trip, errors, canonical forms, rendering, evaluation."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import primitives
from gp_proxy.evolve.pset import GRAMMARS, build_pset
from primitives import FormulaError, Kind, Node, Ragged, canonicalize, check, parse

from ..conftest import make_layers

# the campaign's own typed generator, over every grammar (it covers every non-identity op)
PSETS = [build_pset(g) for g in GRAMMARS] + [build_pset("both", "z")]


def random_formula(rng: random.Random, height: int, method: str | None = None) -> Node:
    ps = PSETS[rng.randrange(len(PSETS))]
    return ps.to_node(ps.random_tree(rng, 2, height, method))


@st.composite
def formulas(draw: st.DrawFn) -> Node:
    seed = draw(st.integers(0, 2**32 - 1))
    height = draw(st.integers(3, 8))
    method = draw(st.sampled_from(["grow", "full"]))
    return random_formula(random.Random(seed), height, method)


@settings(max_examples=300, deadline=None)
@given(formulas())
def test_parse_print_round_trip(node: Node) -> None:
    text = str(node)
    assert parse(text) == node
    assert str(parse(text)) == text
    assert primitives.infer_kind(node) is Kind.SCORE


@settings(max_examples=200, deadline=None)
@given(formulas())
def test_canonical_form_is_a_fixed_point_and_well_typed(node: Node) -> None:
    c = canonicalize(node)
    assert canonicalize(c) == c
    assert primitives.infer_kind(c) is Kind.SCORE
    assert primitives.complexity(c) <= primitives.complexity(node)


def test_whitespace_is_accepted_and_dropped_when_printing() -> None:
    assert str(parse(" l1 ( mm ( k2 ) ) ")) == "l1(mm(k2))"


@pytest.mark.parametrize(("text", "message", "position"), [
    ("l1(mm(k2)", "formula ended", 9),
    ("l1(mmm(k2))", "unknown op 'mmm'", 3),
    ("l1(mm(k2)))", "unexpected ')'", 10),
    ("l1(mm(k2);", "unexpected character ';'", 9),
    ("mask(k3)", "mask does not accept (vec)", 0),
    ("l1(k2,k3)", "l1 takes 1 argument", 0),
    ("l1(relu(grad))", "student-only input", 8),
    ("l1(kl_t4(k2))", "cannot be nested", 3),
    ("", "empty formula", 0),
    ("k2(k1)", "takes no arguments", 0),
    ("add(grad,act)", "add does not accept (wset, aset)", 0),
])
def test_malformed_formulas_name_the_token_and_position(text: str, message: str,
                                                        position: int) -> None:
    with pytest.raises(FormulaError) as info:
        parse(text)
    assert message in str(info.value)
    assert info.value.position == position
    assert "\n" not in str(info.value)


def test_unknown_op_suggests_close_names() -> None:
    with pytest.raises(FormulaError, match="did you mean softmax_c"):
        parse("kl_t4(sotfmax_c(k3))")


def test_check_requires_a_score() -> None:
    with pytest.raises(FormulaError, match="must end in a score"):
        check("mm(k2)")


def test_canonicalisation_uses_recorded_properties() -> None:
    assert str(canonicalize(parse("l1(nop(multi_scale_r1(k2)))"))) == "l1(k2)"
    assert str(canonicalize(parse("mse(abs(abs(relu(relu(k1)))))"))) == "mse(abs(relu(k1)))"
    assert str(canonicalize(parse("sum_layers(mean(negate(negate(act))))"))) == \
        "sum_layers(mean(act))"
    a = "rank_add(sum_layers(fro_norm(weight)),l1(k2))"
    assert str(canonicalize(parse(a))) == "rank_add(l1(k2),sum_layers(fro_norm(weight)))"
    assert str(canonicalize(parse("rank_sub(sum_layers(fro_norm(weight)),l1(k2))"))) == \
        "rank_sub(sum_layers(fro_norm(weight)),l1(k2))"


def test_custom_input_kinds_for_token_features() -> None:
    node = parse("kl_t4(softmax_c(k2))", {"k2": Kind.SEQ})
    assert primitives.infer_kind(node, {"k2": Kind.SEQ}) is Kind.SCORE
    with pytest.raises(FormulaError, match="satt does not accept"):
        parse("l1(satt(k2))", {"k2": Kind.SEQ})


def test_latex_and_sympy_render_every_random_formula() -> None:
    rng = random.Random(5)
    for _ in range(300):
        node = random_formula(rng, 6)
        tex = primitives.to_latex(node)
        assert tex.count("{") == tex.count("}")
        primitives.to_sympy(node)
    tex = primitives.to_latex(parse("kl_t4(softmax_c(k3))"))
    assert "k_3^{T}" in tex and "k_3^{S}" in tex
    expr = primitives.to_sympy(parse("sum_layers(fro_norm(mul(grad,weight)))"))
    assert "grad*weight" in str(expr)


def test_every_non_identity_op_is_reachable_by_the_generator() -> None:
    rng = random.Random(0)
    seen = {n.name for _ in range(3000) for n in random_formula(rng, 7).walk()}
    expected = {op.name for op in primitives.ops() if not op.identity}
    assert expected - seen == set()


def test_identity_ops_round_trip_and_vanish_in_canonical_form() -> None:
    for text in ("l1(nop(k2))", "mse(multi_scale_r1(relu(k1)))"):
        assert str(parse(text)) == text
        assert "nop" not in str(canonicalize(parse(text)))
        assert "multi_scale_r1" not in str(canonicalize(parse(text)))


# ------------------------------------------------------------------ evaluation ------------
def _envs() -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(0)
    student = {"k1": torch.randn(3, 4, 6, 8, 8, generator=g),
               "k2": torch.randn(3, 4, 6, 4, 4, generator=g),
               "k3": torch.randn(3, 4, 10, generator=g),
               "act": Ragged.from_layers(Kind.ASET, make_layers(Kind.ASET, seed=1)),
               "grad": Ragged.from_layers(Kind.WSET, make_layers(Kind.WSET, seed=2)),
               "weight": Ragged.from_layers(Kind.WSET, make_layers(Kind.WSET, seed=3))}
    teacher = {"k1": torch.randn(1, 4, 6, 8, 8, generator=g),
               "k2": torch.randn(1, 4, 6, 4, 4, generator=g),
               "k3": torch.randn(1, 4, 10, generator=g)}
    return student, teacher


def test_stochastic_nodes_draw_the_same_mask_for_teacher_and_student() -> None:
    student, _ = _envs()
    same = {"k1": student["k1"][:1]}
    node = check("l1(mask(k1))")
    # the teacher equals the first student: the same mask must make their distance 0
    got = primitives.evaluate(node, {"k1": student["k1"]}, same, seed=3)
    assert got[0].item() == 0.0
    assert got[1].item() > 0.0


def test_evaluation_is_deterministic_per_seed() -> None:
    student, teacher = _envs()
    node = check("rank_add(mse(drop(k2)),mean_layers(fro_norm(mul(grad,weight))))")
    a = primitives.evaluate(node, student, teacher, seed=1)
    b = primitives.evaluate(node, student, teacher, seed=1)
    assert torch.equal(a, b)
    c = primitives.evaluate(check("mse(drop(k2))"), student, teacher, seed=1)
    d = primitives.evaluate(check("mse(drop(k2))"), student, teacher, seed=2)
    assert not torch.equal(c, d)


def test_reference_values_of_a_few_formulas() -> None:
    """Known values checked by hand on tiny inputs."""
    s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]).reshape(1, 1, 1, 2, 2)
    t = torch.zeros(1, 1, 1, 2, 2)
    assert primitives.evaluate(check("l1(k1)"), {"k1": s}, {"k1": t}).item() == 2.5
    assert primitives.evaluate(check("mse(relu(k1))"), {"k1": -s}, {"k1": t}).item() == 0.0
    # batch gram of one sample is its squared norm; SP rows are normalised to 1
    assert primitives.evaluate(check("l1(sp(k1))"), {"k1": s}, {"k1": s * 3}).item() == 0.0
    # logsoftmax_n normalises over samples (the published code used channels)
    x = torch.randn(1, 5, 3)
    out = primitives.apply("logsoftmax_n", x)
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(1, 3))
    # parameter-free batchnorm: zero mean, unit variance per channel over the batch
    y = primitives.apply("batchnorm", torch.randn(2, 8, 3, 4, 4) * 5 + 2)
    torch.testing.assert_close(y.mean(dim=(1, 3, 4)), torch.zeros(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=(1, 3, 4), unbiased=False), torch.ones(2, 3),
                               atol=1e-3, rtol=0)


def test_instinct_formula_matches_a_loop() -> None:
    student, _ = _envs()
    node = check("mean_layers(fro_norm(mul(grad,weight)))")
    got = primitives.evaluate(node, student)
    grads, weights = make_layers(Kind.WSET, seed=2), make_layers(Kind.WSET, seed=3)
    for a, (ga, wa) in enumerate(zip(grads, weights, strict=True)):
        want = sum(torch.linalg.vector_norm(g * w).item() for g, w in zip(ga, wa, strict=True))
        assert got[a].item() == pytest.approx(want / len(ga), rel=1e-5)


def test_error_positions_point_into_the_text_as_typed() -> None:
    text = "  l1 (  mask( k3 ) )"
    with pytest.raises(FormulaError) as info:
        parse(text)
    assert info.value.position == text.index("mask")
