"""Teacher-student distances: one number per architecture, lower = student closer to teacher.

A distance is *pairwise*: its single formula argument (a transform chain) is evaluated on
the teacher and on the student, and ``fn(student, teacher)`` compares them. The teacher has
architecture axis 1 and broadcasts over the student's architectures. Per-sample quantities
are averaged over the probe batch. Fixes relative to the published listing:

- ``kl_t*`` is KL(p_T ‖ p_S) between *probabilities*: both sides go through a softmax over
  each sample's flattened values at temperature T (times T², as in Hinton KD); the listing
  fed raw features to ``F.kl_div``, which expects log-probabilities.
- ``cosine`` and ``pearson`` are distances (1 − similarity); the listing's ``cosine`` returned
  the similarity, so its sign silently differed from every other distance.
- teacher and student shapes must match exactly (besides the architecture axis); a mismatch
  raises :class:`ShapeError` instead of broadcasting or being swallowed by a try/except.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ShapeError
from .registry import Op, Signature, register
from .values import Kind, recording

__all__ = ["TEMPERATURES", "abs_diff", "huber", "sq_diff"]

TEMPERATURES = (1, 4, 8, 16)
_EPS = 1e-8
_CONTRACTS = {
    Kind.FMAP: "n c h w, n c h w ->",
    Kind.SEQ: "n c m, n c m ->",
    Kind.VEC: "n d, n d ->",
}
_ALL = (Kind.FMAP, Kind.SEQ, Kind.VEC)


def _check(s: Tensor, t: Tensor) -> None:
    if s.shape[1:] != t.shape[1:]:
        raise ShapeError(
            f"student {tuple(s.shape[1:])} and teacher {tuple(t.shape[1:])} differ "
            "(per architecture: samples, channels, positions)"
        )


def _check_samples(s: Tensor, t: Tensor) -> None:
    if s.shape[1] != t.shape[1]:
        raise ShapeError(f"student has {s.shape[1]} samples, teacher {t.shape[1]}")


_TEACHER_TERMS: dict[tuple[str, int], tuple[weakref.ref[Tensor], int, Any]] = {}


def _teacher_term(tag: str, t: Tensor, fn: Callable[[Tensor], Any]) -> Any:
    """``fn(t)``, computed once per teacher tensor object (and in-place version).

    The evaluator computes a subtree's teacher side once and compares it with one chunk of
    students after another; the teacher-only terms of a distance (its softmax, entropy, gram,
    norms) would otherwise be recomputed for every chunk. Entries die with the tensor.
    Tensors that need gradients are never cached.
    """
    if t.requires_grad:
        return fn(t)
    key = (tag, id(t))
    hit = _TEACHER_TERMS.get(key)
    if hit is not None and hit[0]() is t and hit[1] == t._version:
        return hit[2]
    value = fn(t)

    def forget(_ref: weakref.ref[Tensor], k: tuple[str, int] = key) -> None:
        _TEACHER_TERMS.pop(k, None)

    _TEACHER_TERMS[key] = (weakref.ref(t, forget), t._version, value)
    return value


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], x.shape[1], -1)


def _mean_per_arch(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).mean(dim=1)


def abs_diff(a: Tensor, b: Tensor) -> Tensor:
    """|a − b|, elementwise (in place on the difference unless autograd records)"""
    d = a - b
    return d.abs() if recording(d) else d.abs_()


def sq_diff(a: Tensor, b: Tensor) -> Tensor:
    """(a − b)², elementwise (in place on the difference unless autograd records)"""
    d = a - b
    return d**2 if recording(d) else d.pow_(2)


def l1(s: Tensor, t: Tensor) -> Tensor:
    """mean |S − T|"""
    _check(s, t)
    return _mean_per_arch(abs_diff(s, t))


def mse(s: Tensor, t: Tensor) -> Tensor:
    """mean (S − T)²"""
    _check(s, t)
    return _mean_per_arch(sq_diff(s, t))


def l2(s: Tensor, t: Tensor) -> Tensor:
    """mean over samples of ‖S_i − T_i‖₂ (flattened per sample)"""
    _check(s, t)
    return torch.linalg.vector_norm(_flat(s) - _flat(t), dim=2).mean(dim=1)


def huber(a: Tensor, b: Tensor) -> Tensor:
    """Huber(a − b) with beta = 1, elementwise: 0.5 d² below 1, |d| − 0.5 above. torch's
    fused smooth-L1 kernel: one pass instead of six (5-8x faster, measured), the same
    arithmetic ((0.5 |d|) |d| and |d| − 0.5: tested bit for bit against the step-by-step
    form) and the same gradient (x / beta inside, sign(x) outside)."""
    if a.shape != b.shape:  # a teacher of batch 1 against students: broadcast explicitly (views)
        a, b = torch.broadcast_tensors(a, b)
    return F.smooth_l1_loss(a, b, reduction="none", beta=1.0)


def smooth_l1(s: Tensor, t: Tensor) -> Tensor:
    """mean Huber(S − T) with beta = 1"""
    _check(s, t)
    return _mean_per_arch(huber(s, t))


def _probs(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """softmax of x over dim and Σ p log p over dim (the negative entropy)."""
    log_p = torch.log_softmax(x, dim=dim)
    p = log_p.exp()
    return p, (p * log_p).sum(dim=dim)


def _scaled(x: Tensor, temperature: float) -> Tensor:
    return x if temperature == 1.0 else x / temperature  # x / 1 is x, bit for bit


def _cross(pt: Tensor, log_ps: Tensor, dim: int) -> Tensor:
    """Σ pT log pS over dim (log_ps is the caller's own temporary)"""
    return (pt * log_ps if recording(pt, log_ps) else log_ps.mul_(pt)).sum(dim=dim)


def _kl(temperature: float) -> Callable[[Tensor, Tensor], Tensor]:
    def fn(s: Tensor, t: Tensor) -> Tensor:
        _check(s, t)
        pt, neg_entropy = _teacher_term(f"kl{temperature}", t, lambda t: _probs(
            _scaled(_flat(t), temperature), dim=2))
        log_ps = torch.log_softmax(_scaled(_flat(s), temperature), dim=2)
        # KL(pT ‖ pS) = Σ pT log pT − Σ pT log pS; the first sum is the teacher's alone
        kl = neg_entropy - _cross(pt, log_ps, 2)
        return temperature**2 * kl.mean(dim=1)
    fn.__doc__ = f"T² · mean_i KL(softmax(T_i/T) ‖ softmax(S_i/T)), T={temperature}"
    return fn


def cosine(s: Tensor, t: Tensor) -> Tensor:
    """1 − mean_i cos(S_i, T_i) (flattened per sample; a zero vector has cosine 0)"""
    _check(s, t)
    fs, ft = torch.broadcast_tensors(_flat(s), _flat(t))
    return 1.0 - F.cosine_similarity(fs, ft, dim=2, eps=_EPS).mean(dim=1)


def _centred(x: Tensor) -> tuple[Tensor, Tensor]:
    f = _flat(x) - _flat(x).mean(dim=2, keepdim=True)
    return f, torch.linalg.vector_norm(f, dim=2)


def pearson(s: Tensor, t: Tensor) -> Tensor:
    """1 − mean_i corr(S_i, T_i) (flattened per sample; a constant vector has correlation 0)"""
    _check(s, t)
    fs, norm_s = _centred(s)
    ft, norm_t = _teacher_term("pearson", t, _centred)
    den = norm_s * norm_t
    num = (fs * ft if recording(fs, ft) else fs.mul_(ft)).sum(dim=2)
    return 1.0 - (num / den.clamp_min(_EPS)).mean(dim=1)


def hard(s: Tensor, t: Tensor) -> Tensor:
    """1 − fraction of samples whose student argmax equals the teacher argmax"""
    _check(s, t)
    # max(dim).indices is argmax (the first maximum; NaN counts as the maximum), 3-4x faster
    # on CPU (tested equal); the teacher's is computed once, not per chunk of students
    top_t = _teacher_term("hard", t, lambda t: _flat(t).max(dim=2).indices)
    agree = (_flat(s).max(dim=2).indices == top_t).to(s.dtype)
    return 1.0 - agree.mean(dim=1)


def _gram_normalised(x: Tensor) -> Tensor:
    f = _flat(x)
    g = torch.einsum("and,akd->ank", f, f)
    return g / torch.linalg.vector_norm(g, dim=(1, 2), keepdim=True).clamp_min(_EPS)


def sp_dist(s: Tensor, t: Tensor) -> Tensor:
    """Auto-KD Eq. 1: ‖G_T/‖G_T‖ − G_S/‖G_S‖‖_F with G = X Xᵀ over flattened samples.

    The N × N relation does not depend on the feature width, so teacher and student may have
    different channel counts and map sizes (only the sample counts must match).
    """
    _check_samples(s, t)
    gt = _teacher_term("sp", t, _gram_normalised)
    return torch.linalg.vector_norm(_gram_normalised(s) - gt, dim=(1, 2))


def _channel_gram_normalised(x: Tensor) -> Tensor:
    f = x.reshape(x.shape[0], x.shape[1], x.shape[2], -1)
    g = torch.einsum("ancm,andm->ancd", f, f)
    return g / torch.linalg.vector_norm(g, dim=(2, 3), keepdim=True).clamp_min(_EPS)


def ickd_dist(s: Tensor, t: Tensor) -> Tensor:
    """Auto-KD Eq. 3: mean_i ‖Ĝ_T,i − Ĝ_S,i‖_F with per-sample channel grams Ĝ normalised"""
    _check(s, t)
    d = _channel_gram_normalised(s) - _teacher_term("ickd", t, _channel_gram_normalised)
    return torch.linalg.vector_norm(d, dim=(2, 3)).mean(dim=1)


def _cwd(temperature: float) -> Callable[[Tensor, Tensor], Tensor]:
    def fn(s: Tensor, t: Tensor) -> Tensor:
        _check(s, t)
        fs = s.reshape(s.shape[0], s.shape[1], s.shape[2], -1)
        pt, neg_entropy = _teacher_term(f"cwd{temperature}", t, lambda t: _probs(
            _scaled(t.reshape(t.shape[0], t.shape[1], t.shape[2], -1), temperature), dim=3))
        log_ps = torch.log_softmax(_scaled(fs, temperature), dim=3)
        kl = neg_entropy - _cross(pt, log_ps, 3)
        return temperature**2 * kl.mean(dim=(1, 2))
    fn.__doc__ = (f"Auto-KD Eq. 4 / CWD: T² · mean over samples and channels of "
                  f"KL over positions, T={temperature}")
    return fn


def _distance(name: str, fn: Callable[[Tensor, Tensor], Tensor], kinds: tuple[Kind, ...],
              latex: str, source: str = "Auto-DAS supplement C.2 / Listing 1.2",
              complexity: int = 1, differentiable: bool = True, relation: bool = False,
              temperature: float = 0.0) -> Op:
    """The record of a teacher-student distance: one signature per input kind, its doc the
    function's."""
    return Op(
        name=name, family="distance",
        signatures=tuple(Signature((k,), Kind.SCORE, fn, _CONTRACTS[k]) for k in kinds),
        doc=(fn.__doc__ or "").strip(), source=source, pairwise=True, complexity=complexity,
        differentiable=differentiable, relation=relation, latex=latex, temperature=temperature,
    )


register(_distance("l1", l1, _ALL, r"\ell_1\left({0}, {1}\right)"))
register(_distance("mse", mse, _ALL, r"\operatorname{{MSE}}\left({0}, {1}\right)"))
register(_distance("l2", l2, _ALL, r"\ell_2\left({0}, {1}\right)"))
register(_distance(
    "smooth_l1", smooth_l1, _ALL, r"\ell_{{1,\mathrm{{smooth}}}}\left({0}, {1}\right)"))
for _t in TEMPERATURES:
    register(_distance(
        f"kl_t{_t}", _kl(float(_t)), _ALL,
        r"\operatorname{{KL}}_{{T=%d}}\left({1} \,\|\, {0}\right)" % _t,
        source="Auto-DAS C.2; with kind fmap it is Auto-KD Eq. 2 (sample-wise KL)",
        temperature=float(_t)))
register(_distance("cosine", cosine, _ALL, r"\operatorname{{cos-dist}}\left({0}, {1}\right)"))
register(_distance("pearson", pearson, _ALL, r"\operatorname{{pearson-dist}}\left({0}, {1}\right)"))
register(_distance(
    "hard", hard, _ALL, r"\operatorname{{hard}}\left({0}, {1}\right)", differentiable=False))
register(_distance(
    "sp_dist", sp_dist, _ALL, r"D_{{\mathrm{{SP}}}}\left({0}, {1}\right)",
    source="Auto-KD supplement Eq. 1", complexity=2, relation=True))
register(_distance(
    "ickd_dist", ickd_dist, (Kind.FMAP, Kind.SEQ), r"D_{{\mathrm{{ICKD}}}}\left({0}, {1}\right)",
    source="Auto-KD supplement Eq. 3", complexity=2))
for _t in TEMPERATURES:
    register(_distance(
        f"cwd_t{_t}", _cwd(float(_t)), (Kind.FMAP, Kind.SEQ),
        r"D_{{\mathrm{{CWD}},T=%d}}\left({0}, {1}\right)" % _t,
        source="Auto-KD supplement Eq. 4 / CWD (Shu et al. 2021)", complexity=2,
        temperature=float(_t)))
