"""Student-only statistics (the instinct part), per-layer reductions and score combiners.

Inputs are ragged per-layer values (see :class:`primitives.values.Ragged`): ``act``
(activations), ``grad`` (weight gradients of one cross-entropy backward) and ``weight``.
Element-wise unary ops shared with the transforms live in :mod:`primitives.elementwise`.
Everything here runs on all layers of all architectures at once through segment reductions.

``sum_layers`` and ``mean_layers`` both exist on purpose: a sum over layers grows with
depth, so a formula that uses it carries a built-in depth bias a reader should see.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .distances import abs_diff, huber, sq_diff
from .errors import ShapeError

# the calibrated normalisers live with the per-model twins: exports copy them from there, and
# the evaluator's combiners use the same functions, so the two cannot drift
from .reference import calibrated_rank01, calibrated_z
from .registry import Op, Signature, register
from .values import Kind, Ragged, recording

__all__ = ["average_ranks", "segment_mean", "segment_sum", "zero_per_layer"]

_EPS = 1e-9
_SOURCE = "EZNAS (Akhauri et al. 2022) / Auto-Prox instinct ops"


#: average segment length above which per-segment reductions loop over contiguous slices
#: (bandwidth-bound, pairwise-summed); below it one segment_reduce call avoids Python overhead
_LONG_SEGMENTS = 1024


def _long(r: Ragged) -> bool:
    return r.values.numel() >= _LONG_SEGMENTS * r.n_segments


def segment_sum(r: Ragged, x: Tensor) -> Tensor:
    """Sum of ``x`` (laid out like ``r.values``) within each segment of ``r``."""
    if _long(r):
        return torch.stack([t.sum() for t in torch.split(x, r.lengths_list)])
    return torch.segment_reduce(x, "sum", lengths=r.lengths, unsafe=True)


def segment_sum_of(r: Ragged, fn: Callable[..., Tensor], *xs: Tensor) -> Tensor:
    """Sum of ``fn(*xs)`` within each segment. For long segments ``fn`` runs slice by slice,
    so its full-size temporaries never exist: each layer's slice stays in the CPU cache."""
    if _long(r):
        parts = zip(*(torch.split(x, r.lengths_list) for x in xs), strict=True)
        return torch.stack([fn(*p).sum() for p in parts])
    return segment_sum(r, fn(*xs))


def _per_slice(r: Ragged, fn: Callable[..., Tensor], x: Tensor) -> Tensor:
    """``fn`` applied to each segment's contiguous slice of ``x``, concatenated. ``fn(t, out)``
    writes its result into ``out`` (the slice's place in the result, saving a concatenation
    pass) or, with ``out=None`` (when autograd records), returns it."""
    if recording(x):
        return torch.cat([fn(t, None) for t in torch.split(x, r.lengths_list)])
    result = torch.empty_like(x)
    for t, o in zip(torch.split(x, r.lengths_list), torch.split(result, r.lengths_list),
                    strict=True):
        fn(t, o)
    return result


def _per_element(r: Ragged, per_segment: Tensor) -> Tensor:
    """Broadcast one value per segment to the segment's elements."""
    return torch.repeat_interleave(per_segment, r.lengths, output_size=r.values.numel())


def _segment_count(r: Ragged) -> Tensor:
    return r.lengths.to(r.values.dtype).clamp_min(1.0)


def segment_mean(r: Ragged, x: Tensor) -> Tensor:
    return segment_sum(r, x) / _segment_count(r)


def _segment_max(r: Ragged, x: Tensor) -> Tensor:
    if _long(r):
        return torch.stack([t.amax() for t in torch.split(x, r.lengths_list)])
    init = torch.full((r.n_segments,), -torch.inf, dtype=x.dtype, device=x.device)
    return init.scatter_reduce(0, r.segment, x, reduce="amax", include_self=True)


def _znorm_slice(t: Tensor, out: Tensor | None) -> Tensor:
    c = t - t.mean()
    std = torch.sqrt((c * c).mean()) + _EPS
    return c / std if out is None else torch.div(c, std, out=out)


def _znorm(r: Ragged) -> Ragged:
    x = r.values
    if _long(r):
        return r.with_values(_per_slice(r, _znorm_slice, x))
    mean = _per_element(r, segment_mean(r, x))
    centred = x - mean
    std = _per_element(r, torch.sqrt(segment_mean(r, centred * centred))).add_(_EPS)
    return r.with_values(centred / std if recording(centred) else centred.div_(std))


def _log_softmax_values(r: Ragged, x: Tensor) -> Tensor:
    if _long(r):
        return _per_slice(r, lambda t, out: torch.log_softmax(t, dim=0) if out is None
                          else torch.log_softmax(t, dim=0, out=out), x)
    shifted = x - _per_element(r, _segment_max(r, x))
    lse = _per_element(r, torch.log(segment_sum(r, shifted.exp())))
    return shifted - lse if recording(shifted) else shifted.sub_(lse)


def _softmax(r: Ragged) -> Ragged:
    log_p = _log_softmax_values(r, r.values)
    return r.with_values(log_p.exp() if recording(log_p) else log_p.exp_())


def _logsoftmax(r: Ragged) -> Ragged:
    return r.with_values(_log_softmax_values(r, r.values))


_PER_SEGMENT = "[layer] -> [layer] (normalised within each layer; for lval across the layers)"
# (name, fn, doc, LaTeX, idempotent)
for _name, _fn, _doc, _tex, _idem in (
    ("znorm", _znorm, "z-normalise: (x − mean) / (std + 1e-9) within each layer",
     r"\operatorname{{z}}\left({0}\right)", True),
    ("softmax", _softmax, "softmax over all elements of each layer",
     r"\operatorname{{softmax}}\left({0}\right)", False),
    ("logsoftmax", _logsoftmax, "log-softmax over all elements of each layer",
     r"\log\operatorname{{softmax}}\left({0}\right)", False),
):
    register(Op(name=_name, family="instinct",
                signatures=tuple(Signature((k,), k, _fn, _PER_SEGMENT)
                                 for k in (Kind.WSET, Kind.ASET, Kind.LVAL)),
                doc=_doc, source=_SOURCE, idempotent=_idem, latex=_tex))


def zero_per_layer(r: Ragged) -> Ragged:
    """+0 for every layer of ``r``: what a ``zero_on_equal`` distance gives for (r, r), r finite
    (x − x, |x − x|, (x − x)², Huber(x − x) and softmax(x) · (log-softmax(x) − log-softmax(x))
    are +0 element by element, and so are their per-layer sums and means)."""
    return _to_lval(r, torch.zeros(r.n_segments, dtype=r.values.dtype, device=r.values.device))


def _to_lval(r: Ragged, per_segment: Tensor) -> Ragged:
    return Ragged(Kind.LVAL, per_segment, r.segment_arch, r.n_arch,
                  torch.arange(r.n_arch, device=per_segment.device), r.n_arch)


for _name, _stat, _doc, _tex in (
    ("l1_norm", lambda r: segment_sum_of(r, torch.abs, r.values), "Σ|x| of each layer",
     r"\left\|{0}\right\|_{{1}}"),
    ("fro_norm", lambda r: torch.sqrt(segment_sum_of(r, torch.square, r.values)),
     "Frobenius norm of each layer", r"\left\|{0}\right\|_{{F}}"),
    ("mean", lambda r: segment_mean(r, r.values), "mean of each layer",
     r"\overline{{{0}}}"),
):
    register(Op(name=_name, family="instinct",
                signatures=tuple(
                    Signature((k,), Kind.LVAL, (lambda s: lambda r: _to_lval(r, s(r)))(_stat),
                              "[layer] -> [layer: scalar]")
                    for k in (Kind.WSET, Kind.ASET)),
                doc=_doc, source=_SOURCE, latex=_tex))


def _binary(kernel: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Ragged, Ragged], Ragged]:
    def fn(a: Ragged, b: Ragged) -> Ragged:
        if not a.same_layout(b):
            raise ShapeError(
                f"per-layer values of different layouts ({a.values.numel()} elements in "
                f"{a.n_segments} segments vs {b.values.numel()} in {b.n_segments})"
            )
        return a.with_values(kernel(a.values, b.values))
    return fn


def _protected_div(a: Tensor, b: Tensor) -> Tensor:
    num, den = a * b, (b * b).add_(_EPS)
    return num / den if recording(num, den) else num.div_(den)


_BIN_KINDS = (Kind.WSET, Kind.ASET, Kind.LVAL)
for _name, _kernel, _comm, _doc, _tex, _sym in (
    ("add", torch.add, True, "x + y", r"\left({0} + {1}\right)", lambda x, y: x + y),
    ("sub", torch.sub, False, "x − y", r"\left({0} - {1}\right)", lambda x, y: x - y),
    ("mul", torch.mul, True, "x · y", r"{0} \cdot {1}", lambda x, y: x * y),
    ("div", _protected_div, False, "protected division x · y / (y² + 1e-9)",
     r"\frac{{{0}}}{{{1}}}", lambda x, y: x / y),
):
    register(Op(name=_name, family="instinct",
                signatures=tuple(
                    Signature((k, k), k, _binary(_kernel), "[layer], [layer] -> [layer]")
                    for k in _BIN_KINDS),
                doc=_doc, source=_SOURCE, commutative=_comm, latex=_tex, sympy=_sym))


def _layer_distance(kernel: Callable[[Ragged, Tensor, Tensor], Tensor]
                    ) -> Callable[[Ragged, Ragged], Ragged]:
    def fn(a: Ragged, b: Ragged) -> Ragged:
        if not a.same_layout(b):
            raise ShapeError("per-layer distance between values of different layouts")
        return _to_lval(a, kernel(a, a.values, b.values))
    return fn


def _kl_from_logs(lx: Tensor, ly: Tensor) -> Tensor:
    """exp(lx) · (lx − ly), elementwise (lx is the caller's own temporary)"""
    if recording(lx, ly):
        return lx.exp() * (lx - ly)
    p = lx.exp()
    return p.mul_(lx.sub_(ly))


def _kl_terms(x: Tensor, y: Tensor) -> Tensor:
    return _kl_from_logs(torch.log_softmax(x, dim=0), torch.log_softmax(y, dim=0))


def _layer_kl(r: Ragged, x: Tensor, y: Tensor) -> Tensor:
    if _long(r):  # softmax over each layer's slice: its log-softmax is the slice's own
        return segment_sum_of(r, _kl_terms, x, y)
    return segment_sum(r, _kl_from_logs(_log_softmax_values(r, x), _log_softmax_values(r, y)))


def _segment_mean_of(r: Ragged, fn: Callable[..., Tensor], *xs: Tensor) -> Tensor:
    return segment_sum_of(r, fn, *xs) / _segment_count(r)


for _name, _k, _comm, _doc in (
    ("dist_l1", lambda r, x, y: _segment_mean_of(r, abs_diff, x, y), True,
     "mean |x − y| per layer"),
    ("dist_l2", lambda r, x, y: _segment_mean_of(r, sq_diff, x, y), True,
     "mean (x − y)² per layer"),
    ("dist_smooth_l1", lambda r, x, y: _segment_mean_of(r, huber, x, y),
     True, "mean Huber(x − y), beta 1, per layer"),
    ("dist_kl", _layer_kl, False,
     "KL(softmax(x) ‖ softmax(y)) over the elements of each layer"),
):
    register(Op(name=_name, family="instinct",
                signatures=tuple(Signature((k, k), Kind.LVAL, _layer_distance(_k),
                                           "[layer], [layer] -> [layer: scalar]")
                                 for k in (Kind.WSET, Kind.ASET)),
                doc=_doc, source=_SOURCE, commutative=_comm, zero_on_equal=True,
                latex=r"D_{{%s}}\left({0}, {1}\right)" % _name[5:].replace("_", r"\_")))


def _reduce_layers(mean: bool) -> Callable[[Ragged], Tensor]:
    def fn(r: Ragged) -> Tensor:
        total = segment_sum(r, r.values)
        return total / _segment_count(r) if mean else total
    return fn


register(Op(name="sum_layers", family="reduce",
            signatures=(Signature((Kind.LVAL,), Kind.SCORE, _reduce_layers(False),
                                  "[layer: scalar] ->"),),
            doc="sum over layers (grows with depth: a built-in depth bias)", source=_SOURCE,
            latex=r"\sum_{{l}} {0}"))
register(Op(name="mean_layers", family="reduce",
            signatures=(Signature((Kind.LVAL,), Kind.SCORE, _reduce_layers(True),
                                  "[layer: scalar] ->"),),
            doc="mean over layers (depth-neutral)", source=_SOURCE,
            latex=r"\frac{{1}}{{L}}\sum_{{l}} {0}"))


def average_ranks(x: Tensor) -> Tensor:
    """0-based ranks of a 1-D tensor, ties sharing their average rank.

    A NaN has no place in an order: any NaN makes every rank NaN (as scipy's ``rankdata``
    with ``nan_policy="propagate"``), so a combination never silently ranks around it."""
    if torch.isnan(x).any():
        return torch.full_like(x, float("nan"))
    s = torch.sort(x).values
    lo = torch.searchsorted(s, x, right=False)
    hi = torch.searchsorted(s, x, right=True)
    return (lo + hi - 1).to(x.dtype) / 2.0


def _rank01(x: Tensor) -> Tensor:
    n = x.numel()
    return average_ranks(x) / max(n - 1, 1)


def _z(x: Tensor) -> Tensor:
    std = x.std(unbiased=False)
    return torch.where(std > 0, (x - x.mean()) / std.clamp_min(_EPS), torch.zeros_like(x))


#: normaliser name -> (over a population, against a stored reference population)
NORMALISERS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]] = {
    "rank01": (_rank01, calibrated_rank01),
    "z": (_z, calibrated_z),
}


def _combiner(norm: str, sign: float) -> Callable[[Tensor, Tensor], Tensor]:
    f = NORMALISERS[norm][0]
    return lambda x, y: f(x) + sign * f(y)


#: weights of the second part in the weighted combiners (log-even around the 1:1 of rank_add;
#: a part twice or four times as important, either way): the weight is data in the formula
#: string (``rank_add_w025``) and is chosen on training architectures like any gene
PART_WEIGHTS = (0.25, 0.5, 2.0, 4.0)


def _weight_tag(w: float) -> str:
    return "w" + f"{w:g}".replace(".", "")  # 0.25 -> w025, 2.0 -> w2


_COMBINERS = [
    ("rank_add", "rank01", 1.0, r"\operatorname{{rank}}\left({0}\right) + "
     r"\operatorname{{rank}}\left({1}\right)", "rank(x) + rank(y), ranks over architectures "
     "scaled to [0, 1]"),
    ("rank_sub", "rank01", -1.0, r"\operatorname{{rank}}\left({0}\right) - "
     r"\operatorname{{rank}}\left({1}\right)", "rank(x) − rank(y), ranks over architectures "
     "scaled to [0, 1]"),
    ("z_add", "z", 1.0, r"z\left({0}\right) + z\left({1}\right)",
     "z(x) + z(y), z-scores over architectures"),
    ("z_sub", "z", -1.0, r"z\left({0}\right) - z\left({1}\right)",
     "z(x) − z(y), z-scores over architectures"),
]

for _name, _norm, _sign, _tex, _doc in _COMBINERS:
    register(Op(name=_name, family="combine",
                signatures=(Signature((Kind.SCORE, Kind.SCORE), Kind.SCORE,
                                      _combiner(_norm, _sign), ", ->"),),
                doc=_doc + " (normalising first stops one part swamping the other)",
                source="gp-proxy (fixes the raw sum of the published code)",
                commutative=_sign > 0, cross_arch=True, normaliser=_norm,
                part_signs=(1.0, _sign), latex=_tex))
    for _w in PART_WEIGHTS:
        _op, _tag = ("+" if _sign > 0 else "-"), _weight_tag(_w)
        register(Op(name=f"{_name}_{_tag}", family="combine",
                    signatures=(Signature((Kind.SCORE, Kind.SCORE), Kind.SCORE,
                                          _combiner(_norm, _sign * _w), ", ->"),),
                    doc=f"{_doc.split(',')[0]} with the second part weighted {_w:g}",
                    source="gp-proxy (a fixed 1:1 combination cannot weight a weak part)",
                    complexity=2, cross_arch=True, normaliser=_norm,
                    part_signs=(1.0, _sign * _w),
                    latex=_tex.replace("{1}", "{1}", 1).replace(f"{_op} ", f"{_op} {_w:g}\\,",
                                                                 1)))
