"""Every distance against a plain numpy reference, written from the papers' formulas.

A distance registered without a reference here fails ``test_every_distance_has_a_reference``.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

import primitives
from primitives import Kind, Ragged, apply

from ..conftest import make_layers


def _rows(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], -1)


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def _kl_rows(s: np.ndarray, t: np.ndarray, temp: float) -> float:
    lt, ls = _log_softmax(_rows(t) / temp, 1), _log_softmax(_rows(s) / temp, 1)
    return float(temp**2 * np.mean(np.sum(np.exp(lt) * (lt - ls), axis=1)))


def _cos_rows(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    a, b = _rows(s), _rows(t)
    return np.array([np.dot(x, y) / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-8)
                     for x, y in zip(a, b, strict=True)])


def _pearson_rows(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    a, b = _rows(s), _rows(t)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return np.array([np.dot(x, y) / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-8)
                     for x, y in zip(a, b, strict=True)])


def _sp(s: np.ndarray, t: np.ndarray) -> float:
    def g(x: np.ndarray) -> np.ndarray:
        m = _rows(x) @ _rows(x).T
        return m / np.linalg.norm(m)
    return float(np.linalg.norm(g(t) - g(s)))


def _ickd(s: np.ndarray, t: np.ndarray) -> float:
    out = []
    for a, b in zip(s, t, strict=True):
        fa, fb = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        ga, gb = fa @ fa.T, fb @ fb.T
        out.append(np.linalg.norm(gb / np.linalg.norm(gb) - ga / np.linalg.norm(ga)))
    return float(np.mean(out))


def _cwd(s: np.ndarray, t: np.ndarray, temp: float) -> float:
    total = []
    for a, b in zip(s, t, strict=True):
        for ca, cb in zip(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1), strict=True):
            lt, ls = _log_softmax(cb / temp, 0), _log_softmax(ca / temp, 0)
            total.append(np.sum(np.exp(lt) * (lt - ls)))
    return float(temp**2 * np.mean(total))


def _huber(d: np.ndarray) -> np.ndarray:
    d = np.abs(d)
    return np.where(d < 1, 0.5 * d * d, d - 0.5)


REFERENCES = {
    "l1": lambda s, t: float(np.mean(np.abs(s - t))),
    "mse": lambda s, t: float(np.mean((s - t) ** 2)),
    "l2": lambda s, t: float(np.mean(np.linalg.norm(_rows(s) - _rows(t), axis=1))),
    "smooth_l1": lambda s, t: float(np.mean(_huber(s - t))),
    **{f"kl_t{T}": partial(_kl_rows, temp=float(T)) for T in (1, 4, 8, 16)},
    "cosine": lambda s, t: float(1 - np.mean(_cos_rows(s, t))),
    "pearson": lambda s, t: float(1 - np.mean(_pearson_rows(s, t))),
    "hard": lambda s, t: float(1 - np.mean(_rows(s).argmax(1) == _rows(t).argmax(1))),
    "sp_dist": _sp,
    "ickd_dist": _ickd,
    **{f"cwd_t{T}": partial(_cwd, temp=float(T)) for T in (1, 4, 8, 16)},
}

LAYER_REFERENCES = {
    "dist_l1": lambda x, y: float(np.mean(np.abs(x - y))),
    "dist_l2": lambda x, y: float(np.mean((x - y) ** 2)),
    "dist_smooth_l1": lambda x, y: float(np.mean(_huber(x - y))),
    "dist_kl": lambda x, y: float(np.sum(np.exp(_log_softmax(x, 0))
                                         * (_log_softmax(x, 0) - _log_softmax(y, 0)))),
}

DISTANCES = list(primitives.ops("distance"))
LAYER_DISTANCES = [op for op in primitives.ops("instinct") if op.name.startswith("dist_")]


def test_every_distance_has_a_reference() -> None:
    assert {op.name for op in DISTANCES} == set(REFERENCES)
    assert {op.name for op in LAYER_DISTANCES} == set(LAYER_REFERENCES)


CASES = [(op, sig) for op in DISTANCES for sig in op.signatures]


@pytest.mark.parametrize(("op", "sig"), CASES, ids=[f"{o.name}:{s}" for o, s in CASES])
def test_distance_matches_numpy(op: primitives.Op, sig: primitives.Signature) -> None:
    shape = {Kind.FMAP: (5, 3, 4, 4), Kind.SEQ: (5, 3, 6), Kind.VEC: (5, 6)}[sig.inputs[0]]
    g = torch.Generator().manual_seed(11)
    s = torch.randn((2, *shape), generator=g, dtype=torch.float64)
    t = torch.randn((1, *shape), generator=g, dtype=torch.float64)
    got = apply(op.name, s, t)
    for a in range(2):
        want = REFERENCES[op.name](s[a].numpy(), t[0].numpy())
        assert got[a].item() == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_huber_equals_the_step_by_step_form_bit_for_bit(dtype: torch.dtype) -> None:
    # the fused smooth-L1 kernel replaced |d|, 0.5|d|·|d|, |d| − 0.5 and a select: committed
    # campaigns only reproduce if it gives the same bits, at the boundary and on non-finite
    # values too, and the same gradient
    g = torch.Generator().manual_seed(3)
    special = torch.tensor([0.0, -0.0, 1.0, -1.0, 0.5, 1 - 2**-20, 1 + 2**-20, 1e-40, 3e38,
                            -3e38, float("inf"), float("-inf"), float("nan")], dtype=dtype)
    a = torch.cat([torch.randn(20_000, generator=g, dtype=dtype) * 3, special, special])
    b = torch.cat([torch.randn(20_000, generator=g, dtype=dtype) * 3,
                   torch.zeros_like(special), special.flip(0)])
    d = (a - b).abs()
    steps = torch.where(d < 1.0, 0.5 * d * d, d - 0.5)
    assert torch.equal(primitives.distances.huber(a, b).nan_to_num(7.0), steps.nan_to_num(7.0))
    x = a[:20_000].clone().requires_grad_(True)
    y = b[:20_000]
    primitives.distances.huber(x, y).sum().backward()
    dd = (x.detach() - y)
    want = torch.where(dd.abs() < 1.0, dd, dd.sign())
    assert torch.equal(x.grad, want)


def test_hard_equals_the_argmax_form_on_ties_and_non_finite_values() -> None:
    # hard() takes max(dim).indices, faster than argmax on CPU: both must pick the first
    # maximum, and a NaN as the maximum, or committed campaigns would not reproduce
    nan, inf = float("nan"), float("inf")
    rows = [[1.0, 3.0, 3.0, 2.0], [nan, 1.0, nan, 0.0], [1.0, nan, 3.0, 3.0],
            [-inf, -inf, -inf, -inf], [0.0, -0.0, 0.0, -0.0], [-0.0, 0.0, 0.0, 0.0],
            [inf, nan, inf, 1.0], [2.0, inf, inf, 1.0]]
    g = torch.Generator().manual_seed(5)
    for reps in (1, 40):  # short rows and rows long enough for the vectorised path
        base = torch.tensor(rows).repeat(1, reps)
        s = torch.stack([base, base.roll(1, 0)]).unsqueeze(2)  # 2 archs x 8 samples x 1 x 4r
        t = base.flip(0).unsqueeze(0).unsqueeze(2)
        want = 1.0 - (s.flatten(2).argmax(2) == t.flatten(2).argmax(2)).float().mean(1)
        assert torch.equal(apply("hard", s, t), want)
    s = torch.randint(0, 3, (3, 16, 4, 8, 8), generator=g).float()
    t = torch.randint(0, 3, (1, 16, 4, 8, 8), generator=g).float()
    want = 1.0 - (s.flatten(2).argmax(2) == t.flatten(2).argmax(2)).float().mean(1)
    assert torch.equal(apply("hard", s, t), want)


def test_identical_inputs_are_at_distance_zero() -> None:
    x = torch.randn(1, 4, 3, 5, 5, dtype=torch.float64)
    for op in DISTANCES:
        assert apply(op.name, x, x).item() == pytest.approx(0.0, abs=1e-9), op.name


@pytest.mark.parametrize("op", LAYER_DISTANCES, ids=[o.name for o in LAYER_DISTANCES])
def test_layer_distance_matches_numpy(op: primitives.Op) -> None:
    xs = make_layers(Kind.WSET, seed=1)
    ys = make_layers(Kind.WSET, seed=2)
    got = apply(op.name, Ragged.from_layers(Kind.WSET, xs), Ragged.from_layers(Kind.WSET, ys))
    want = [LAYER_REFERENCES[op.name](x.double().numpy().ravel(), y.double().numpy().ravel())
            for xa, ya in zip(xs, ys, strict=True) for x, y in zip(xa, ya, strict=True)]
    np.testing.assert_allclose(got.values.double().numpy(), want, rtol=1e-4, atol=1e-6)


def test_layer_reductions_and_norms_match_numpy() -> None:
    layers = make_layers(Kind.ASET, seed=3)
    r = Ragged.from_layers(Kind.ASET, layers)
    fro = apply("fro_norm", r)
    want = [np.linalg.norm(t.double().numpy()) for arch in layers for t in arch]
    np.testing.assert_allclose(fro.values.double().numpy(), want, rtol=1e-5)
    summed = apply("sum_layers", fro)
    means = apply("mean_layers", fro)
    per_arch = [[np.linalg.norm(t.double().numpy()) for t in arch] for arch in layers]
    np.testing.assert_allclose(summed.double().numpy(), [sum(p) for p in per_arch], rtol=1e-5)
    np.testing.assert_allclose(means.double().numpy(), [np.mean(p) for p in per_arch], rtol=1e-5)


def test_znorm_and_softmax_are_per_layer() -> None:
    layers = make_layers(Kind.WSET, seed=4)
    r = Ragged.from_layers(Kind.WSET, layers)
    z = apply("znorm", r)
    sm = apply("softmax", r)
    start = 0
    for arch in layers:
        for t in arch:
            n = t.numel()
            zz = z.values[start:start + n].double()
            assert zz.mean().item() == pytest.approx(0.0, abs=1e-5)
            assert zz.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
            assert sm.values[start:start + n].sum().item() == pytest.approx(1.0, abs=1e-5)
            start += n


def test_rank_and_z_combiners() -> None:
    x = torch.tensor([3.0, 1.0, 2.0, 2.0])
    y = torch.tensor([0.0, 10.0, 20.0, 30.0])
    got = apply("rank_add", x, y)
    np.testing.assert_allclose(got.numpy(), np.array([3, 0, 1.5, 1.5]) / 3 + np.arange(4) / 3)
    const = apply("z_add", torch.ones(4), y)
    np.testing.assert_allclose(const.numpy(), (y - y.mean()).numpy() / y.std(unbiased=False).item(),
                               rtol=1e-6)


def test_long_and_short_segment_paths_agree() -> None:
    """Per-layer reductions take a slice loop for long layers and segment_reduce for short
    ones; both must give the numpy answer."""
    from primitives import instinct

    for sizes in ([5000, 3000, 7000], [3, 5, 2, 7]):
        layers = [[torch.randn(n, generator=torch.Generator().manual_seed(n)) for n in sizes]]
        r = Ragged.from_layers(Kind.WSET, layers)
        assert instinct._long(r) == (sizes[0] > 10)
        want = [float(t.double().sum()) for t in layers[0]]
        np.testing.assert_allclose(instinct.segment_sum(r, r.values).double().numpy(), want,
                                   rtol=1e-5, atol=1e-4)
        z = apply("znorm", r)
        sm = apply("logsoftmax", r)
        start = 0
        for t in layers[0]:
            zz = z.values[start:start + t.numel()].double()
            assert abs(zz.mean().item()) < 1e-4
            lse = torch.logsumexp(t.double(), 0)
            np.testing.assert_allclose(sm.values[start:start + t.numel()].double().numpy(),
                                       (t.double() - lse).numpy(), rtol=1e-4, atol=1e-5)
            start += t.numel()


def test_every_instinct_op_gives_the_same_on_the_long_and_short_paths(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated from the registry: each per-layer op on long layers (slice loops) equals the
    same op forced onto the segment_reduce path."""
    from primitives import instinct
    from primitives.registry import ops

    g = torch.Generator().manual_seed(3)
    layers = [[torch.randn(n, generator=g) for n in (3000, 1500, 4100)],
              [torch.randn(n, generator=g) for n in (2000, 1200)]]
    r = Ragged.from_layers(Kind.WSET, layers)
    r2 = r.with_values(torch.randn(r.values.shape, generator=g))
    assert instinct._long(r)
    checked = 0
    for op in ops("instinct"):
        for sig in op.signatures:
            if sig.inputs[0] is not Kind.WSET:
                continue
            args = (r,) if len(sig.inputs) == 1 else (r, r2)
            before = [a.values.clone() for a in args]
            long_out = apply(op.name, *args)
            with monkeypatch.context() as m:
                m.setattr(instinct, "_LONG_SEGMENTS", 1 << 40)
                assert not instinct._long(r)
                short_out = apply(op.name, *args)
            for a, b in zip(args, before, strict=True):  # kernels finish in place on their
                assert torch.equal(a.values, b), op.name  # own temporaries, never on inputs
            np.testing.assert_allclose(long_out.values.double().numpy(),
                                       short_out.values.double().numpy(), rtol=2e-4, atol=2e-4,
                                       err_msg=op.name)
            checked += 1
    assert checked >= 14


def test_teacher_terms_are_reused_per_tensor_and_never_stale() -> None:
    import gc

    import torch

    from primitives import apply
    from primitives import distances as d

    g = torch.Generator().manual_seed(0)
    t = torch.randn(1, 4, 3, 5, 5, generator=g)
    s = torch.randn(2, 4, 3, 5, 5, generator=g)
    fresh = {n: apply(n, s, t.clone()) for n in ("kl_t4", "cwd_t1", "sp_dist", "ickd_dist",
                                                  "pearson", "hard")}
    for n, v in fresh.items():
        torch.testing.assert_close(apply(n, s, t), v)  # computes and keeps t's terms
        torch.testing.assert_close(apply(n, s, t), v)  # reuses them
    assert any(k[1] == id(t) for k in d._TEACHER_TERMS)
    t.mul_(2)  # an in-place change bumps the version: the kept terms are not used
    torch.testing.assert_close(apply("kl_t4", s, t), apply("kl_t4", s, t.clone()))
    tid = id(t)
    del t
    gc.collect()
    assert not any(k[1] == tid for k in d._TEACHER_TERMS)
    tg = torch.randn(1, 4, 3, 5, 5, generator=g, requires_grad=True)
    apply("kl_t4", s, tg).sum().backward()
    assert tg.grad is not None and not any(k[1] == id(tg) for k in d._TEACHER_TERMS)
