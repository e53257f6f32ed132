"""Structural transforms of teacher and student features (Auto-DAS C.1, Auto-KD relations).

A transform is applied identically to the teacher and the student side of a distance.
Every function takes and returns tensors with a leading architecture axis ``a``; shapes in
the docstrings omit it. Fixes relative to the published listing (one line of why each):

- ``logsoftmax_n`` normalises over the sample axis; the listing used ``dim=1`` (channels).
- no op passes a wrong-rank input through unchanged: an op only has signatures for the
  kinds it is defined on, so ``mask(k3)`` is a type error, not a silent no-op.
- ``batchnorm`` is parameter-free with batch statistics; the listing built a fresh
  ``nn.BatchNorm`` module (with its own running buffers) on every call.
- ``mask`` and ``drop`` draw from an explicit generator, so teacher and student see the
  same mask and fitness is not noise; the listing used the global RNG.
- ``mm``/``sp`` on ``vec`` compute the n × n gram; the listing returned 2-D input unchanged.
- ``min_max_normalize`` works per architecture and returns 0 for a constant tensor instead
  of dividing by ~0.
- ``local_s*`` and ``multi_scale_r*`` crop maps whose side is not a multiple of the patch
  and raise :class:`ShapeError` on maps smaller than one patch, instead of an einops crash.
- ``satt`` returns ``n (h w)``; the listing appended a dangling unit axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor

from .errors import ShapeError
from .registry import Op, Signature, register
from .values import Kind, recording

__all__: list[str] = []

ATT_T = 0.5  # FGD temperature for the attention transforms
MASK_RATIO = 0.65  # MGD: fraction of positions masked
DROP_P = 0.1
BN_EPS = 1e-5
NORM_EPS = 1e-12

_AUTODAS = "Auto-DAS supplement Listing 1.1"


def _sig(inp: Kind, out: Kind, fn: Callable[..., Tensor], contract: str) -> Signature:
    return Signature((inp,), out, fn, contract)


def _transform(name: str, doc: str, sigs: list[Signature], source: str = _AUTODAS,
               complexity: int = 1, latex: str = "", **props: Any) -> Op:
    """The record of a transform (applied alike to the teacher and the student side)."""
    return Op(name=name, family="transform", signatures=tuple(sigs), doc=doc, source=source,
              complexity=complexity, latex=latex, **props)


def _crop(x: Tensor, p: int) -> Tensor:
    h, w = x.shape[-2], x.shape[-1]
    if h < p or w < p:
        raise ShapeError(f"a {h}x{w} map is smaller than a {p}x{p} patch")
    return x[..., : h // p * p, : w // p * p]


# ---------------------------------------------------------------- attention (FGD) ----------
def _attention(x: Tensor, dim: int) -> Tensor:
    """size · softmax(x / T) along dim"""
    p = torch.softmax(x / ATT_T, dim=dim)
    return x.shape[dim] * p if recording(p) else p.mul_(x.shape[dim])


def _satt(x: Tensor) -> Tensor:
    return _attention(reduce(x.abs(), "a n c h w -> a n (h w)", "mean"), -1)


def _catt_map(x: Tensor) -> Tensor:
    return _attention(reduce(x.abs(), "a n c h w -> a n c", "mean"), -1)


def _catt_axis(x: Tensor) -> Tensor:
    return _attention(x, 2)


def _natt(x: Tensor) -> Tensor:
    return _attention(x, 1)


register(_transform(
    "satt", "spatial attention (FGD): HW · softmax(mean_c|F| / T) over positions, T=0.5",
    [_sig(Kind.FMAP, Kind.VEC, _satt, "n c h w -> n (h w)")],
    latex=r"A^{{S}}\left({0}\right)"))
register(_transform(
    "catt", "channel attention (FGD): C · softmax(mean_hw|F| / T) over channels, T=0.5; "
    "on seq/vec: C · softmax(F / T) over the channel axis",
    [_sig(Kind.FMAP, Kind.VEC, _catt_map, "n c h w -> n c"),
     _sig(Kind.SEQ, Kind.SEQ, _catt_axis, "n c m -> n c m"),
     _sig(Kind.VEC, Kind.VEC, _catt_axis, "n d -> n d")],
    latex=r"A^{{C}}\left({0}\right)"))
register(_transform(
    "natt", "sample attention: N · softmax(F / T) over the sample axis, T=0.5",
    [_sig(k, k, _natt, c) for k, c in ((Kind.FMAP, "n c h w -> n c h w"),
                                       (Kind.SEQ, "n c m -> n c m"), (Kind.VEC, "n d -> n d"))],
    latex=r"A^{{N}}\left({0}\right)"))


# ---------------------------------------------------------------- stochastic ---------------
def _mask(x: Tensor, generator: torch.Generator) -> Tensor:
    n, h, w = x.shape[1], x.shape[3], x.shape[4]
    r = torch.rand((n, h, w), generator=generator, device=x.device)
    keep = (r >= MASK_RATIO).to(x.dtype)
    return x * rearrange(keep, "n h w -> 1 n 1 h w")


def _drop(x: Tensor, generator: torch.Generator) -> Tensor:
    n, c = x.shape[1], x.shape[2]
    r = torch.rand((n, c), generator=generator, device=x.device)
    keep = (r >= DROP_P).to(x.dtype) / (1.0 - DROP_P)
    return x * keep.reshape((1, n, c) + (1,) * (x.dim() - 3))


register(_transform(
    "mask", "random spatial mask (MGD): zero 65% of positions, same mask for every channel, "
    "architecture, teacher and student", [_sig(Kind.FMAP, Kind.FMAP, _mask, "n c h w -> n c h w")],
    source="Auto-DAS C.1 / MGD (Yang et al. 2022)", stochastic=True,
    latex=r"\operatorname{{mask}}\left({0}\right)"))
register(_transform(
    "drop", "channel dropout p=0.1 (whole channel maps for fmap/seq, elements for vec), "
    "rescaled by 1/(1-p)",
    [_sig(k, k, _drop, c) for k, c in ((Kind.FMAP, "n c h w -> n c h w"),
                                       (Kind.SEQ, "n c m -> n c m"), (Kind.VEC, "n d -> n d"))],
    stochastic=True))


# ---------------------------------------------------------------- grams and reshapes ------
def _bmm(x: Tensor) -> Tensor:
    f = rearrange(x, "a n c h w -> a n c (h w)") if x.dim() == 5 else x
    return torch.einsum("ancm,andm->ancd", f, f)


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], x.shape[1], -1)


def _mm(x: Tensor) -> Tensor:
    f = _flat(x)
    return torch.einsum("and,akd->ank", f, f)


def _sp(x: Tensor) -> Tensor:
    return F.normalize(_mm(x), p=2, dim=-1, eps=NORM_EPS)


def _ickd(x: Tensor) -> Tensor:
    g = _bmm(x)
    norm = torch.linalg.vector_norm(g, dim=(-2, -1), keepdim=True)
    return g / norm.clamp_min(NORM_EPS)


register(_transform(
    "bmm", "per-sample channel gram F Fᵀ (C × C)",
    [_sig(Kind.FMAP, Kind.SEQ, _bmm, "n c h w -> n c c"),
     _sig(Kind.SEQ, Kind.SEQ, _bmm, "n c m -> n c c")],
    complexity=2, latex=r"G_{{C}}\left({0}\right)"))
register(_transform(
    "mm", "batch gram F Fᵀ over flattened samples (N × N)",
    [_sig(Kind.FMAP, Kind.VEC, _mm, "n c h w -> n n"),
     _sig(Kind.SEQ, Kind.VEC, _mm, "n c m -> n n"),
     _sig(Kind.VEC, Kind.VEC, _mm, "n d -> n n")],
    complexity=2, latex=r"G_{{N}}\left({0}\right)"))
register(_transform(
    "sp", "sample-wise relation (SP, Tung & Mori 2019; Auto-KD Eq. 1): batch gram with each "
    "row L2-normalised",
    [_sig(Kind.FMAP, Kind.VEC, _sp, "n c h w -> n n"),
     _sig(Kind.SEQ, Kind.VEC, _sp, "n c m -> n n"),
     _sig(Kind.VEC, Kind.VEC, _sp, "n d -> n n")],
    source="Auto-KD supplement Eq. 1 / SP", complexity=2,
    latex=r"\operatorname{{SP}}\left({0}\right)"))
register(_transform(
    "ickd", "channel-wise relation (ICKD, Liu et al. 2021; Auto-KD Eq. 3): per-sample channel "
    "gram divided by its Frobenius norm",
    [_sig(Kind.FMAP, Kind.SEQ, _ickd, "n c h w -> n c c"),
     _sig(Kind.SEQ, Kind.SEQ, _ickd, "n c m -> n c c")],
    source="Auto-KD supplement Eq. 3 / ICKD", complexity=2,
    latex=r"\operatorname{{ICKD}}\left({0}\right)"))
register(_transform(
    "batch", "flatten each sample: n c h w -> n (c h w)",
    [_sig(Kind.FMAP, Kind.VEC, _flat, "n c h w -> n (c h w)"),
     _sig(Kind.SEQ, Kind.VEC, _flat, "n c m -> n (c m)")]))
register(_transform(
    "channel", "flatten positions: n c h w -> n c (h w)",
    [_sig(Kind.FMAP, Kind.SEQ, lambda x: rearrange(x, "a n c h w -> a n c (h w)"),
          "n c h w -> n c (h w)")]))


# ---------------------------------------------------------------- multi-scale and local ---
def _multi_scale(r: int) -> Callable[[Tensor], Tensor]:
    def fn(x: Tensor) -> Tensor:
        return reduce(_crop(x, r), "a n c (h p) (w q) -> a n c h w", "max", p=r, q=r)
    return fn


def _local(p: int) -> Callable[[Tensor], Tensor]:
    def fn(x: Tensor) -> Tensor:
        return rearrange(_crop(x, p), "a n c (h p) (w q) -> a n (c h w) p q", p=p, q=p)
    return fn


for _r in (1, 2, 4):
    register(_transform(
        f"multi_scale_r{_r}",
        f"spatial pyramid level (Review, Chen et al. 2021): {_r}x{_r} max pooling",
        [_sig(Kind.FMAP, Kind.FMAP, _multi_scale(_r),
              f"n c h w -> n c h//{_r} w//{_r}" if _r > 1 else "n c h w -> n c h w")],
        identity=_r == 1, min_map=_r,
        latex=r"\operatorname{{MS}}_{{%d}}\left({0}\right)" % _r))
register(_transform(
    "local_s1", "local patches of 1x1 (LKD): every position becomes its own instance",
    [_sig(Kind.FMAP, Kind.VEC, lambda x: rearrange(x, "a n c h w -> a n (c h w)"),
          "n c h w -> n (c h w)")], latex=r"\operatorname{{local}}_{{1}}\left({0}\right)"))
for _p in (2, 4):
    register(_transform(
        f"local_s{_p}", f"local patches of {_p}x{_p} (LKD, Li et al. 2020), stacked on the "
        "channel axis",
        [_sig(Kind.FMAP, Kind.FMAP, _local(_p),
              f"n c h w -> n (c h//{_p} w//{_p}) {_p} {_p}")],
        min_map=_p, latex=r"\operatorname{{local}}_{{%d}}\left({0}\right)" % _p))


# ---------------------------------------------------------------- normalisations ----------
_SEQUENTIAL_MAX = 32768  # torch's grain size: longer reductions may be split across threads
_SLICE_MIN = 1024  # elements per slice below which one torch call beats a loop of slices


def vector_norm_keepdim(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``torch.linalg.vector_norm(x, dim=dims, keepdim=True)`` (the L2 norm), bit for bit, fast
    over a single axis that is not the innermost.

    Over such an axis torch's CPU kernel visits each output element on its own (4.3 ns per
    element measured over the channels of CIFAR ``k1``, 16x a copy). Its arithmetic is a plain
    float32 running sum of float32 squares in axis order, then a correctly rounded square
    root; here the same sum runs as one vectorised pass per slice of the axis (``norm_c`` on
    one 8 MiB chunk: 1.6 ms instead of 8.9 ms) and the square root in float64, whose rounding
    to float32 is the correctly rounded float32 root. Tested bit for bit against torch on
    shapes, axes, thread counts and non-finite values; anything else (several axes, autograd,
    other devices and dtypes, short slices, the innermost axis) goes to torch.
    """
    dim = dims[0]
    n = x.shape[dim]
    if (len(dims) != 1 or x.device.type != "cpu" or x.dtype != torch.float32 or recording(x)
            or not x.is_contiguous() or not 1 < n < _SEQUENTIAL_MAX
            or math.prod(x.shape[dim + 1:]) == 1 or x.numel() < n * _SLICE_MIN):
        return torch.linalg.vector_norm(x, dim=dims, keepdim=True)
    slices = x.unbind(dim)
    acc = slices[0] * slices[0]
    square = torch.empty_like(acc)
    for s in slices[1:]:
        acc.add_(torch.mul(s, s, out=square))
    return acc.double().sqrt_().to(x.dtype).unsqueeze(dim)


def _normalize(dims: tuple[int, ...]) -> Callable[[Tensor], Tensor]:
    def fn(x: Tensor) -> Tensor:
        return x / vector_norm_keepdim(x, dims).clamp_min(NORM_EPS)
    return fn


def _softmax_hw(log: bool) -> Callable[[Tensor], Tensor]:
    def fn(x: Tensor) -> Tensor:
        f = rearrange(x, "a n c h w -> a n c (h w)") if x.dim() == 5 else x
        return torch.log_softmax(f, dim=-1) if log else torch.softmax(f, dim=-1)
    return fn


_ALL = ((Kind.FMAP, "n c h w -> n c h w"), (Kind.SEQ, "n c m -> n c m"), (Kind.VEC, "n d -> n d"))
register(_transform(
    "norm_hw", "L2-normalise over positions",
    [_sig(Kind.FMAP, Kind.FMAP, _normalize((3, 4)), "n c h w -> n c h w"),
     _sig(Kind.SEQ, Kind.SEQ, _normalize((3,)), "n c m -> n c m")], idempotent=True))
register(_transform(
    "norm_c", "L2-normalise over channels",
    [_sig(k, k, _normalize((2,)), c) for k, c in _ALL], idempotent=True))
register(_transform(
    "norm_n", "L2-normalise over samples",
    [_sig(k, k, _normalize((1,)), c) for k, c in _ALL], idempotent=True))
for _log in (False, True):
    _pre = "log" if _log else ""
    _f = torch.log_softmax if _log else torch.softmax
    register(_transform(
        f"{_pre}softmax_n", f"{_pre} softmax over the sample axis",
        [_sig(k, k, (lambda f: lambda x: f(x, dim=1))(_f), c) for k, c in _ALL]))
    register(_transform(
        f"{_pre}softmax_c", f"{_pre} softmax over the channel axis",
        [_sig(k, k, (lambda f: lambda x: f(x, dim=2))(_f), c) for k, c in _ALL]))
    register(_transform(
        f"{_pre}softmax_hw", f"{_pre} softmax over positions",
        [_sig(Kind.FMAP, Kind.SEQ, _softmax_hw(_log), "n c h w -> n c (h w)"),
         _sig(Kind.SEQ, Kind.SEQ, _softmax_hw(_log), "n c m -> n c m")]))


def _min_max(x: Tensor) -> Tensor:
    dims = tuple(range(1, x.dim()))
    lo = x.amin(dim=dims, keepdim=True)
    hi = x.amax(dim=dims, keepdim=True)
    span = hi - lo
    if recording(x):
        return torch.where(span > 0, (x - lo) / span.clamp_min(NORM_EPS), torch.zeros_like(x))
    # the same values as the where(): a constant architecture's tensor becomes +0.0
    return (x - lo).div_(span.clamp_min(NORM_EPS)).masked_fill_(~(span > 0), 0.0)


def _batchnorm(x: Tensor) -> Tensor:
    dims = (1, *range(3, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=False)
    centred, std = x - mean, torch.sqrt(var + BN_EPS)
    return centred / std if recording(centred, std) else centred.div_(std)


register(_transform(
    "min_max_normalize", "(x - min) / (max - min) over each architecture's tensor; 0 if constant",
    [_sig(k, k, _min_max, c) for k, c in _ALL], idempotent=True))
register(_transform(
    "batchnorm", "parameter-free batch norm: per channel, batch statistics over samples and "
    "positions, eps=1e-5", [_sig(k, k, _batchnorm, c) for k, c in _ALL],
    latex=r"\operatorname{{BN}}\left({0}\right)"))
