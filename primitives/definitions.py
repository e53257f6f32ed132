"""The ops as mathematics: sympy definitions in index notation, for the sympy/LaTeX export.

A formula becomes a sympy expression in which element-wise ops are sympy functions (their
``Op.sympy``), a rank/z combination is arithmetic on ``rank``/``z`` of its parts (weights and
signs from the combiner's ``part_signs``), and every other op is a named function whose
definition this module gives as an ``Eq`` in index notation, the right-hand side a closed form
(sums, exponentials, roots, maxima) with no undefined function in it.

Index conventions (one model): a feature value is ``X[n, c, p]`` (sample n of N, channel c of
C, position p of P; a ``vec`` is ``X[n, c]``, one position); a teacher-student distance
compares ``S`` (student) with ``T`` (teacher), flattened per sample as ``[n, j]`` where the op
reads whole samples; a per-layer value is ``X[l, e]`` (element e of the E_l of layer l), one
number per layer ``X[l]``; a population of architectures is indexed by ``a`` (A of them). The
guards of the kernels (eps in roots, logs and divisions) are left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy as sp

from .formula import Node
from .registry import get
from .transforms import ATT_T, DROP_P

__all__ = ["DEFINITIONS", "definitions", "to_expression"]

n, m, c, d, p, q, j, k, e, l, a, b, h, w, r, s = sp.symbols(
    "n m c d p q j k e l a b h w r s", integer=True)
N, C, P, J, E, L, A, H, W = sp.symbols("N C P J E_l L A H W", positive=True, integer=True)
X, S, T, Y = (sp.IndexedBase(x) for x in ("X", "S", "T", "Y"))
_tau = sp.Rational(ATT_T).limit_denominator(100)


def _applied(name: str, *args: Any) -> sp.IndexedBase:
    return sp.IndexedBase(sp.Function(name)(*args))


def _sum(expr: Any, *ranges: tuple[Any, Any]) -> Any:
    return sp.Sum(expr, *((i, 1, top) for i, top in ranges))


def _softmax(x: Callable[[Any], Any], i: Any, top: Any) -> Any:
    """exp(x(i)) / Σ_k exp(x(k)): ``x`` maps an index to the entry"""
    return sp.exp(x(i)) / _sum(sp.exp(x(k)), (k, top))


def _log_softmax(x: Callable[[Any], Any], i: Any, top: Any) -> Any:
    return x(i) - sp.log(_sum(sp.exp(x(k)), (k, top)))


def _kl(t: Callable[[Any], Any], s_: Callable[[Any], Any], i: Any, top: Any) -> Any:
    """Σ_i pT(i) log(pT(i) / pS(i)) with p the softmax over i"""
    pt = _softmax(t, i, top)
    return _sum(pt * (_log_softmax(t, i, top) - _log_softmax(s_, i, top)), (i, top))


def _tempered(x: sp.IndexedBase, t: int, *fixed: Any) -> Callable[[Any], Any]:
    """i -> x[fixed..., i] / t"""
    return lambda i: x[(*fixed, i)] / t


def _unary(name: str, index: tuple[Any, ...], rhs: Any) -> sp.Eq:
    return sp.Eq(_applied(name, sp.Symbol("X"))[index], rhs)


def _binary(name: str, rhs: Any, left: str = "S", right: str = "T",
            index: tuple[Any, ...] = ()) -> sp.Eq:
    lhs = sp.Function(name)(sp.Symbol(left), sp.Symbol(right))
    return sp.Eq(sp.IndexedBase(lhs)[index] if index else lhs, rhs)


def _gram(x: sp.IndexedBase, u: Any, v: Any) -> Any:
    return _sum(x[u, j] * x[v, j], (j, J))


def _channel_gram(x: sp.IndexedBase, u: Any, v: Any) -> Any:
    return _sum(x[n, u, p] * x[n, v, p], (p, P))


def _fro(expr: Callable[[Any, Any], Any], top: Any) -> Any:
    return sp.sqrt(_sum(expr(r, s) ** 2, (r, top), (s, top)))


def _huber(x: Any) -> Any:
    return sp.Piecewise((x**2 / 2, sp.Abs(x) < 1), (sp.Abs(x) - sp.Rational(1, 2), True))


def _mean_c(x: sp.IndexedBase) -> Any:
    return _sum(x[m, c, q], (m, N), (q, P)) / (N * P)


def _defs() -> dict[str, sp.Eq]:
    out: dict[str, sp.Eq] = {}
    # -- transforms
    mean_abs_c = _sum(sp.Abs(X[n, k, p]), (k, C)) / C
    out["satt"] = _unary("satt", (n, p), P * sp.exp(mean_abs_c / _tau) / _sum(
        sp.exp(_sum(sp.Abs(X[n, k, q]), (k, C)) / C / _tau), (q, P)))
    out["catt"] = _unary("catt", (n, c), C * sp.exp(_sum(sp.Abs(X[n, c, p]), (p, P)) / P / _tau)
                         / _sum(sp.exp(_sum(sp.Abs(X[n, k, p]), (p, P)) / P / _tau), (k, C)))
    out["natt"] = _unary("natt", (n, c, p), N * sp.exp(X[n, c, p] / _tau)
                         / _sum(sp.exp(X[m, c, p] / _tau), (m, N)))
    B = sp.IndexedBase("B")
    out["mask"] = _unary("mask", (n, c, p), X[n, c, p] * B[n, p])
    out["drop"] = _unary("drop", (n, c, p), X[n, c, p] * B[n, c]
                         / (1 - sp.Rational(DROP_P).limit_denominator(100)))
    out["bmm"] = _unary("bmm", (n, c, d), _sum(X[n, c, p] * X[n, d, p], (p, P)))
    out["mm"] = _unary("mm", (n, m), _gram(X, n, m))
    out["sp"] = _unary("sp", (n, m), _gram(X, n, m) / sp.sqrt(_sum(_gram(X, n, k) ** 2, (k, N))))
    out["ickd"] = _unary("ickd", (n, c, d), _sum(X[n, c, p] * X[n, d, p], (p, P)) / _fro(
        lambda u, v: _channel_gram(X, u, v), C))
    out["batch"] = _unary("batch", (n, (c - 1) * P + p), X[n, c, p])
    out["channel"] = _unary("channel", (n, c, (h - 1) * W + w), X[n, c, h, w])
    out["local_s1"] = _unary("local_s1", (n, (c - 1) * P + p), X[n, c, p])
    for size in (1, 2, 4):
        out[f"multi_scale_r{size}"] = _unary(
            f"multi_scale_r{size}", (n, c, h, w),
            sp.Max(*(X[n, c, size * (h - 1) + 1 + i, size * (w - 1) + 1 + k_]
                     for i in range(size) for k_ in range(size))) if size > 1
            else X[n, c, h, w])
    for size in (2, 4):
        out[f"local_s{size}"] = _unary(
            f"local_s{size}", (n, sp.Tuple(c, h, w), r, s),
            X[n, c, size * (h - 1) + r, size * (w - 1) + s])
    out["norm_hw"] = _unary("norm_hw", (n, c, p),
                            X[n, c, p] / sp.sqrt(_sum(X[n, c, q] ** 2, (q, P))))
    out["norm_c"] = _unary("norm_c", (n, c, p), X[n, c, p] / sp.sqrt(_sum(X[n, k, p] ** 2, (k, C))))
    out["norm_n"] = _unary("norm_n", (n, c, p), X[n, c, p] / sp.sqrt(_sum(X[m, c, p] ** 2, (m, N))))
    axes = {"n": (lambda i: X[i, c, p], n, N), "c": (lambda i: X[n, i, p], c, C),
            "hw": (lambda i: X[n, c, i], p, P)}
    for axis, (entry, i, top) in axes.items():
        out[f"softmax_{axis}"] = _unary(f"softmax_{axis}", (n, c, p), _softmax(entry, i, top))
        out[f"logsoftmax_{axis}"] = _unary(f"logsoftmax_{axis}", (n, c, p),
                                           _log_softmax(entry, i, top))
    lo, hi = sp.symbols("X_min X_max")  # the smallest and largest entry of X
    out["min_max_normalize"] = _unary("min_max_normalize", (n, c, p),
                                      (X[n, c, p] - lo) / (hi - lo))
    var_c = _sum((X[m, c, q] - _mean_c(X)) ** 2, (m, N), (q, P)) / (N * P)
    out["batchnorm"] = _unary("batchnorm", (n, c, p),
                              (X[n, c, p] - _mean_c(X)) / sp.sqrt(var_c))
    # -- distances
    diff = S[n, c, p] - T[n, c, p]
    per_entry = N * C * P
    out["l1"] = _binary("l1", _sum(sp.Abs(diff), (n, N), (c, C), (p, P)) / per_entry)
    out["mse"] = _binary("mse", _sum(diff**2, (n, N), (c, C), (p, P)) / per_entry)
    out["l2"] = _binary("l2", _sum(sp.sqrt(_sum((S[n, j] - T[n, j]) ** 2, (j, J))), (n, N)) / N)
    out["smooth_l1"] = _binary("smooth_l1", _sum(_huber(diff), (n, N), (c, C), (p, P))
                               / per_entry)
    for t in (1, 4, 8, 16):
        out[f"kl_t{t}"] = _binary(f"kl_t{t}", t**2 * _sum(_kl(
            _tempered(T, t, n), _tempered(S, t, n), j, J), (n, N)) / N)
        out[f"cwd_t{t}"] = _binary(f"cwd_t{t}", t**2 * _sum(_kl(
            _tempered(T, t, n, c), _tempered(S, t, n, c), p, P), (n, N), (c, C)) / (N * C))

    def norm(x: sp.IndexedBase) -> Any:
        return sp.sqrt(_sum(x[n, j] ** 2, (j, J)))

    out["cosine"] = _binary("cosine", 1 - _sum(_sum(S[n, j] * T[n, j], (j, J))
                                               / (norm(S) * norm(T)), (n, N)) / N)
    Sc, Tc = sp.IndexedBase("S^c"), sp.IndexedBase("T^c")
    out["pearson"] = _binary("pearson", 1 - _sum(_sum(Sc[n, j] * Tc[n, j], (j, J))
                                                 / (norm(Sc) * norm(Tc)), (n, N)) / N)
    arg_s, arg_t = sp.IndexedBase("argmax_S"), sp.IndexedBase("argmax_T")
    out["hard"] = _binary("hard", 1 - _sum(sp.KroneckerDelta(arg_s[n], arg_t[n]), (n, N)) / N)

    def gram_hat(x: sp.IndexedBase) -> Callable[[Any, Any], Any]:
        return lambda u, v: _gram(x, u, v) / _fro(lambda u2, v2: _gram(x, u2, v2), N)

    out["sp_dist"] = _binary("sp_dist", _fro(lambda u, v: gram_hat(S)(u, v) - gram_hat(T)(u, v),
                                             N))

    def cgram_hat(x: sp.IndexedBase) -> Callable[[Any, Any], Any]:
        return lambda u, v: _channel_gram(x, u, v) / _fro(
            lambda u2, v2: _channel_gram(x, u2, v2), C)

    out["ickd_dist"] = _binary("ickd_dist", _sum(_fro(
        lambda u, v: cgram_hat(S)(u, v) - cgram_hat(T)(u, v), C), (n, N)) / N)
    # -- per-layer statistics
    mean_l = _sum(X[l, k], (k, E)) / E
    std_l = sp.sqrt(_sum((X[l, k] - mean_l) ** 2, (k, E)) / E)
    out["znorm"] = _unary("znorm", (l, e), (X[l, e] - mean_l) / std_l)
    out["softmax"] = _unary("softmax", (l, e), _softmax(lambda i: X[l, i], e, E))
    out["logsoftmax"] = _unary("logsoftmax", (l, e), _log_softmax(lambda i: X[l, i], e, E))
    out["l1_norm"] = _unary("l1_norm", (l,), _sum(sp.Abs(X[l, e]), (e, E)))
    out["fro_norm"] = _unary("fro_norm", (l,), sp.sqrt(_sum(X[l, e] ** 2, (e, E))))
    out["mean"] = _unary("mean", (l,), _sum(X[l, e], (e, E)) / E)
    dl = X[l, e] - Y[l, e]
    out["dist_l1"] = _binary("dist_l1", _sum(sp.Abs(dl), (e, E)) / E, "X", "Y", (l,))
    out["dist_l2"] = _binary("dist_l2", _sum(dl**2, (e, E)) / E, "X", "Y", (l,))
    out["dist_smooth_l1"] = _binary("dist_smooth_l1", _sum(_huber(dl), (e, E)) / E, "X", "Y",
                                    (l,))
    out["dist_kl"] = _binary("dist_kl", _kl(lambda i: X[l, i], lambda i: Y[l, i], e, E),
                             "X", "Y", (l,))
    out["sum_layers"] = sp.Eq(sp.Function("sum_layers")(sp.Symbol("X")), _sum(X[l], (l, L)))
    out["mean_layers"] = sp.Eq(sp.Function("mean_layers")(sp.Symbol("X")),
                               _sum(X[l], (l, L)) / L)
    # -- normalisers of the combiners, over a population x[1..A]
    x = sp.IndexedBase("x")
    out["rank01"] = sp.Eq(_applied("rank", sp.Symbol("x"))[a], (_sum(
        sp.Heaviside(x[a] - x[b], sp.Rational(1, 2)), (b, A)) - sp.Rational(1, 2)) / (A - 1))
    mu = _sum(x[b], (b, A)) / A
    out["z"] = sp.Eq(_applied("z", sp.Symbol("x"))[a],
                     (x[a] - mu) / sp.sqrt(_sum((x[b] - mu) ** 2, (b, A)) / A))
    return out


#: op name (or combiner normaliser) -> its definition
DEFINITIONS: dict[str, sp.Eq] = _defs()
#: the function a normaliser is written as in expressions
_NORMALISER_FUNCTION = {"rank01": "rank", "z": "z"}


def to_expression(node: Node, side: str | None = None) -> Any:
    """The formula as a sympy expression (inside a distance inputs carry _S / _T)."""
    op = get(node.name)
    if op.family == "input":
        return sp.Symbol(f"{node.name}_{side}" if side else node.name)
    if op.pairwise:
        return sp.Function(node.name)(to_expression(node.args[0], "S"),
                                      to_expression(node.args[0], "T"))
    args = [to_expression(x, side) for x in node.args]
    if op.cross_arch:
        f = sp.Function(_NORMALISER_FUNCTION[op.normaliser])
        return sum((sp.nsimplify(sign) * f(x) for sign, x in zip(op.part_signs, args,
                                                                 strict=True)), sp.Integer(0))
    if op.sympy is not None:
        return op.sympy(*args)
    return sp.Function(node.name)(*args)


def definitions(node: Node) -> list[sp.Eq]:
    """The definitions of the named functions ``to_expression(node)`` uses, in tree order."""
    names: dict[str, None] = {}
    for x in node.walk():
        op = get(x.name)
        if op.cross_arch:
            names[op.normaliser] = None
        elif op.family != "input" and op.sympy is None:
            names[x.name] = None
    return [DEFINITIONS[name] for name in names]
