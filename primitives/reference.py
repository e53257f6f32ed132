"""Every op once more, for one model at a time, in plain torch: the code the torch export ships.

The registered kernels are built for speed (an architecture axis, ragged per-layer buffers,
in-place steps, einops patterns, cached teacher terms); this module says the same arithmetic
in the plainest torch, for a single model, so that an exported proxy is a file a user can
read, paste into another code base and run with torch alone. Tests generated from the
registry check every op's reference against its kernel on every kind it accepts, so the two
cannot drift apart; the export copies functions out of this file by their source, which is
why this module imports nothing but torch and defines nothing a copied function cannot see.

Per-model values: ``fmap`` is ``(n, c, h, w)``, ``seq`` ``(n, c, m)``, ``vec`` ``(n, d)``,
``score`` a 0-d tensor, ``wset``/``aset`` a list of per-layer tensors, ``lval`` a 1-D tensor
with one value per layer. A teacher-student distance takes ``(student, teacher)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["REFERENCE", "calibrated_rank01", "calibrated_z", "collect_student_layers", "generator",
           "weight_layers"]

#: op name -> its per-model function (filled by ``_ref``)
REFERENCE: dict[str, Callable[..., object]] = {}

EPS = 1e-9  # element-wise and per-layer guards
EXP_CLAMP = 80.0  # exp's input is clamped here so float32 stays finite
ATT_T = 0.5  # attention temperature (FGD)
MASK_RATIO = 0.65  # fraction of positions the random mask zeroes (MGD)
DROP_P = 0.1  # channel dropout probability
NORM_EPS = 1e-12  # L2 normalisations
BN_EPS = 1e-5  # parameter-free batch norm
DIST_EPS = 1e-8  # cosine, Pearson and gram normalisations of the distances


_Fn = TypeVar("_Fn", bound=Callable[..., object])


def _ref(fn: _Fn) -> _Fn:
    REFERENCE[fn.__name__.removeprefix("op_")] = fn
    return fn


def generator(seed: int) -> torch.Generator:
    """The random stream of one stochastic node (the export fixes each node's seed)."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def weight_layers(model: torch.nn.Module) -> list[torch.nn.Conv2d | torch.nn.Linear]:
    """The layers whose weights the student-only inputs read: every Conv2d and Linear, in
    module order. The one rule of the project (cache, Proxy, zero-cost measures, export)."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]


def collect_student_layers(model: torch.nn.Module, images: Tensor, labels: Tensor | None,
                           act_samples: int | None = 16,
                           forward: Callable[[Tensor], object] | None = None
                           ) -> dict[str, object]:
    """The student-only inputs of a model as the feature cache builds them: for every layer
    of :func:`weight_layers` its weights, their gradients after one cross-entropy backward on
    the probe batch (the model in train mode) and its outputs on the first ``act_samples``
    images; and the number of parameters. ``forward`` maps the images to the logits or to a
    feature dict holding them under ``"k3"`` (default: the model itself); what it returned is
    under ``"outputs"``. Without ``labels`` there is no backward and the gradients are zeros.
    The model's gradients are cleared afterwards and its mode restored."""
    layers = weight_layers(model)
    acts: list[Tensor] = [torch.empty(0)] * len(layers)
    hooks = [m.register_forward_hook(
        lambda _m, _i, out, k=k: acts.__setitem__(k, out[:act_samples].detach().clone()))
        for k, m in enumerate(layers)]
    was_training = model.training
    try:
        model.train()
        model.zero_grad(set_to_none=True)
        outputs = (forward or model)(images)
        if labels is not None:
            logits = outputs["k3"] if isinstance(outputs, dict) else outputs
            assert isinstance(logits, Tensor)
            F.cross_entropy(logits, labels).backward()
        weights = [m.weight.detach().clone() for m in layers]
        grads = [m.weight.grad.detach().clone() if m.weight.grad is not None
                 else torch.zeros_like(m.weight) for m in layers]
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return {"weight": weights, "grad": grads, "act": acts,
            "params": sum(p.numel() for p in model.parameters()), "outputs": outputs}


def _each(fn: Callable[[Tensor], Tensor], x: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
    """``fn`` on a tensor, or on each layer of a per-layer list."""
    return [fn(t) for t in x] if isinstance(x, list) else fn(x)


def _each2(fn: Callable[[Tensor, Tensor], Tensor], x: Tensor | list[Tensor],
           y: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
    if isinstance(x, list) and isinstance(y, list):
        if [t.shape for t in x] != [t.shape for t in y]:
            raise ValueError("per-layer values of different layouts")
        return [fn(a, b) for a, b in zip(x, y, strict=True)]
    return fn(x, y)  # type: ignore[arg-type]


def _per_layer(fn: Callable[[Tensor], Tensor], x: list[Tensor]) -> Tensor:
    """One number per layer (an ``lval``)."""
    return torch.stack([fn(t) for t in x])


def _per_layer2(fn: Callable[[Tensor, Tensor], Tensor], x: list[Tensor], y: list[Tensor]
                ) -> Tensor:
    if [t.shape for t in x] != [t.shape for t in y]:
        raise ValueError("per-layer distance between values of different layouts")
    return torch.stack([fn(a, b) for a, b in zip(x, y, strict=True)])


def _flat(x: Tensor) -> Tensor:
    """One row per sample."""
    return x.reshape(x.shape[0], -1)


def _positions(x: Tensor) -> Tensor:
    """``(n, c, h, w)`` or ``(n, c, m)`` -> ``(n, c, positions)``."""
    return x.reshape(x.shape[0], x.shape[1], -1)


# ---------------------------------------------------------------- element-wise ------------
@_ref
def op_exp(x):  # type: ignore[no-untyped-def]
    return _each(lambda t: t.clamp(max=EXP_CLAMP).exp(), x)


@_ref
def op_mish(x):  # type: ignore[no-untyped-def]
    return _each(F.mish, x)


@_ref
def op_leaky_relu(x):  # type: ignore[no-untyped-def]
    return _each(lambda t: F.leaky_relu(t, 0.01), x)


@_ref
def op_relu(x):  # type: ignore[no-untyped-def]
    return _each(torch.relu, x)


@_ref
def op_tanh(x):  # type: ignore[no-untyped-def]
    return _each(torch.tanh, x)


@_ref
def op_sigmoid(x):  # type: ignore[no-untyped-def]
    return _each(torch.sigmoid, x)


@_ref
def op_swish(x):  # type: ignore[no-untyped-def]
    return _each(F.silu, x)


@_ref
def op_pow2(x):  # type: ignore[no-untyped-def]
    return _each(lambda t: t * t, x)


@_ref
def op_pow4(x):  # type: ignore[no-untyped-def]
    return _each(lambda t: (t * t) * (t * t), x)


@_ref
def op_log(x):  # type: ignore[no-untyped-def]
    """signed log: sign(x) log(|x| + 1e-9)"""
    return _each(lambda t: torch.log(t.abs() + EPS) * torch.sign(t), x)


@_ref
def op_sqrt(x):  # type: ignore[no-untyped-def]
    """protected square root: sqrt(|x| + 1e-18)"""
    return _each(lambda t: torch.sqrt(t.abs() + EPS * EPS), x)


@_ref
def op_abs(x):  # type: ignore[no-untyped-def]
    return _each(torch.abs, x)


@_ref
def op_scale(x):  # type: ignore[no-untyped-def]
    return _each(lambda t: (t + 1.0) / 2.0, x)


@_ref
def op_nop(x):  # type: ignore[no-untyped-def]
    return x


@_ref
def op_abslog(x):  # type: ignore[no-untyped-def]
    return _each(lambda t: torch.log(t.abs() + EPS), x)


@_ref
def op_invert(x):  # type: ignore[no-untyped-def]
    """protected reciprocal x / (x² + 1e-9)"""
    return _each(lambda t: t / (t * t + EPS), x)


@_ref
def op_negate(x):  # type: ignore[no-untyped-def]
    return _each(torch.neg, x)


# ---------------------------------------------------------------- transforms --------------
def _attention(x: Tensor, dim: int) -> Tensor:
    """size · softmax(x / T) along dim"""
    return x.shape[dim] * torch.softmax(x / ATT_T, dim=dim)


@_ref
def op_satt(x):  # type: ignore[no-untyped-def]
    """spatial attention of a map: positions weighted by their mean |activation|"""
    return _attention(x.abs().mean(dim=1).reshape(x.shape[0], -1), 1)


@_ref
def op_catt(x):  # type: ignore[no-untyped-def]
    """channel attention: of a map, channels weighted by their mean |activation|"""
    if x.dim() == 4:
        return _attention(x.abs().mean(dim=(2, 3)), 1)
    return _attention(x, 1)


@_ref
def op_natt(x):  # type: ignore[no-untyped-def]
    return _attention(x, 0)


@_ref
def op_mask(x, g):  # type: ignore[no-untyped-def]
    """zero 65% of the positions, the same ones in every channel"""
    n, h, w = x.shape[0], x.shape[2], x.shape[3]
    keep = (torch.rand((n, h, w), generator=g) >= MASK_RATIO).to(x.dtype)
    return x * keep[:, None]


@_ref
def op_drop(x, g):  # type: ignore[no-untyped-def]
    """drop whole channels with probability 0.1, rescaled by 1 / 0.9"""
    n, c = x.shape[0], x.shape[1]
    keep = (torch.rand((n, c), generator=g) >= DROP_P).to(x.dtype) / (1.0 - DROP_P)
    return x * keep.reshape((n, c) + (1,) * (x.dim() - 2))


@_ref
def op_bmm(x):  # type: ignore[no-untyped-def]
    """per-sample channel gram (c × c)"""
    f = _positions(x)
    return f @ f.transpose(1, 2)


@_ref
def op_mm(x):  # type: ignore[no-untyped-def]
    """gram of the samples (n × n)"""
    f = _flat(x)
    return f @ f.T


@_ref
def op_sp(x):  # type: ignore[no-untyped-def]
    return F.normalize(op_mm(x), p=2, dim=1, eps=NORM_EPS)


@_ref
def op_ickd(x):  # type: ignore[no-untyped-def]
    g = op_bmm(x)
    return g / torch.linalg.vector_norm(g, dim=(1, 2), keepdim=True).clamp_min(NORM_EPS)


@_ref
def op_batch(x):  # type: ignore[no-untyped-def]
    return _flat(x)


@_ref
def op_channel(x):  # type: ignore[no-untyped-def]
    return _positions(x)


def _crop(x: Tensor, p: int) -> Tensor:
    h, w = x.shape[2], x.shape[3]
    if h < p or w < p:
        raise ValueError(f"a {h}x{w} map is smaller than a {p}x{p} patch")
    return x[:, :, : h // p * p, : w // p * p]


@_ref
def op_multi_scale_r1(x):  # type: ignore[no-untyped-def]
    return x


@_ref
def op_multi_scale_r2(x):  # type: ignore[no-untyped-def]
    return F.max_pool2d(_crop(x, 2), 2)


@_ref
def op_multi_scale_r4(x):  # type: ignore[no-untyped-def]
    return F.max_pool2d(_crop(x, 4), 4)


@_ref
def op_local_s1(x):  # type: ignore[no-untyped-def]
    return _flat(x)


def _local(x: Tensor, p: int) -> Tensor:
    """p × p patches stacked on the channel axis: (n, c, h, w) -> (n, c·h/p·w/p, p, p)"""
    f = _crop(x, p)
    n, c, h, w = f.shape
    f = f.reshape(n, c, h // p, p, w // p, p).permute(0, 1, 2, 4, 3, 5)
    return f.reshape(n, c * (h // p) * (w // p), p, p)


@_ref
def op_local_s2(x):  # type: ignore[no-untyped-def]
    return _local(x, 2)


@_ref
def op_local_s4(x):  # type: ignore[no-untyped-def]
    return _local(x, 4)


def _normalize(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    return x / torch.linalg.vector_norm(x, dim=dims, keepdim=True).clamp_min(NORM_EPS)


@_ref
def op_norm_hw(x):  # type: ignore[no-untyped-def]
    return _normalize(x, tuple(range(2, x.dim())))


@_ref
def op_norm_c(x):  # type: ignore[no-untyped-def]
    return _normalize(x, (1,))


@_ref
def op_norm_n(x):  # type: ignore[no-untyped-def]
    return _normalize(x, (0,))


@_ref
def op_softmax_n(x):  # type: ignore[no-untyped-def]
    return torch.softmax(x, dim=0)


@_ref
def op_softmax_c(x):  # type: ignore[no-untyped-def]
    return torch.softmax(x, dim=1)


@_ref
def op_softmax_hw(x):  # type: ignore[no-untyped-def]
    return torch.softmax(_positions(x), dim=2)


@_ref
def op_logsoftmax_n(x):  # type: ignore[no-untyped-def]
    return torch.log_softmax(x, dim=0)


@_ref
def op_logsoftmax_c(x):  # type: ignore[no-untyped-def]
    return torch.log_softmax(x, dim=1)


@_ref
def op_logsoftmax_hw(x):  # type: ignore[no-untyped-def]
    return torch.log_softmax(_positions(x), dim=2)


@_ref
def op_min_max_normalize(x):  # type: ignore[no-untyped-def]
    """(x - min) / (max - min) over the whole tensor; 0 if it is constant"""
    lo, hi = x.min(), x.max()
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(NORM_EPS), torch.zeros_like(x))


@_ref
def op_batchnorm(x):  # type: ignore[no-untyped-def]
    """per channel, statistics over samples and positions (no learned parameters)"""
    dims = (0, *range(2, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + BN_EPS)


# ---------------------------------------------------------------- distances (s, t) -------
def _same_shape(s: Tensor, t: Tensor) -> None:
    if s.shape != t.shape:
        raise ValueError(f"student {tuple(s.shape)} and teacher {tuple(t.shape)} differ")


@_ref
def op_l1(s, t):  # type: ignore[no-untyped-def]
    _same_shape(s, t)
    return (s - t).abs().mean()


@_ref
def op_mse(s, t):  # type: ignore[no-untyped-def]
    _same_shape(s, t)
    return ((s - t) ** 2).mean()


@_ref
def op_l2(s, t):  # type: ignore[no-untyped-def]
    """mean over samples of the L2 distance of the flattened samples"""
    _same_shape(s, t)
    return torch.linalg.vector_norm(_flat(s) - _flat(t), dim=1).mean()


@_ref
def op_smooth_l1(s, t):  # type: ignore[no-untyped-def]
    _same_shape(s, t)
    return F.smooth_l1_loss(s, t, beta=1.0)


def _kl(s: Tensor, t: Tensor, temperature: float) -> Tensor:
    """T² · mean over samples of KL(softmax(t/T) ‖ softmax(s/T)), each sample flattened"""
    _same_shape(s, t)
    log_pt = torch.log_softmax(_flat(t) / temperature, dim=1)
    log_ps = torch.log_softmax(_flat(s) / temperature, dim=1)
    return temperature**2 * (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean()


@_ref
def op_kl_t1(s, t):  # type: ignore[no-untyped-def]
    return _kl(s, t, 1.0)


@_ref
def op_kl_t4(s, t):  # type: ignore[no-untyped-def]
    return _kl(s, t, 4.0)


@_ref
def op_kl_t8(s, t):  # type: ignore[no-untyped-def]
    return _kl(s, t, 8.0)


@_ref
def op_kl_t16(s, t):  # type: ignore[no-untyped-def]
    return _kl(s, t, 16.0)


@_ref
def op_cosine(s, t):  # type: ignore[no-untyped-def]
    """1 - mean cosine similarity of the flattened samples"""
    _same_shape(s, t)
    return 1.0 - F.cosine_similarity(_flat(s), _flat(t), dim=1, eps=DIST_EPS).mean()


@_ref
def op_pearson(s, t):  # type: ignore[no-untyped-def]
    """1 - mean Pearson correlation of the flattened samples (0 for a constant sample)"""
    _same_shape(s, t)
    fs = _flat(s) - _flat(s).mean(dim=1, keepdim=True)
    ft = _flat(t) - _flat(t).mean(dim=1, keepdim=True)
    den = torch.linalg.vector_norm(fs, dim=1) * torch.linalg.vector_norm(ft, dim=1)
    return 1.0 - ((fs * ft).sum(dim=1) / den.clamp_min(DIST_EPS)).mean()


@_ref
def op_hard(s, t):  # type: ignore[no-untyped-def]
    """1 - fraction of samples whose argmax agrees with the teacher's"""
    _same_shape(s, t)
    agree = _flat(s).max(dim=1).indices == _flat(t).max(dim=1).indices
    return 1.0 - agree.to(s.dtype).mean()


def _gram(x: Tensor) -> Tensor:
    f = _flat(x)
    g = f @ f.T
    return g / torch.linalg.vector_norm(g).clamp_min(DIST_EPS)


@_ref
def op_sp_dist(s, t):  # type: ignore[no-untyped-def]
    """Frobenius distance of the normalised sample grams (widths may differ)"""
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"student has {s.shape[0]} samples, teacher {t.shape[0]}")
    return torch.linalg.vector_norm(_gram(s) - _gram(t))


def _channel_gram(x: Tensor) -> Tensor:
    f = _positions(x)
    g = f @ f.transpose(1, 2)
    return g / torch.linalg.vector_norm(g, dim=(1, 2), keepdim=True).clamp_min(DIST_EPS)


@_ref
def op_ickd_dist(s, t):  # type: ignore[no-untyped-def]
    """mean over samples of the Frobenius distance of the normalised channel grams"""
    _same_shape(s, t)
    return torch.linalg.vector_norm(_channel_gram(s) - _channel_gram(t), dim=(1, 2)).mean()


def _cwd(s: Tensor, t: Tensor, temperature: float) -> Tensor:
    """T² · mean over samples and channels of KL over positions"""
    _same_shape(s, t)
    log_pt = torch.log_softmax(_positions(t) / temperature, dim=2)
    log_ps = torch.log_softmax(_positions(s) / temperature, dim=2)
    return temperature**2 * (log_pt.exp() * (log_pt - log_ps)).sum(dim=2).mean()


@_ref
def op_cwd_t1(s, t):  # type: ignore[no-untyped-def]
    return _cwd(s, t, 1.0)


@_ref
def op_cwd_t4(s, t):  # type: ignore[no-untyped-def]
    return _cwd(s, t, 4.0)


@_ref
def op_cwd_t8(s, t):  # type: ignore[no-untyped-def]
    return _cwd(s, t, 8.0)


@_ref
def op_cwd_t16(s, t):  # type: ignore[no-untyped-def]
    return _cwd(s, t, 16.0)


# ---------------------------------------------------------------- per-layer statistics ----
def _z(t: Tensor) -> Tensor:
    c = t - t.mean()
    return c / (torch.sqrt((c * c).mean()) + EPS)


@_ref
def op_znorm(x):  # type: ignore[no-untyped-def]
    """z-normalise each layer (an lval: across its layers)"""
    return _each(_z, x)


@_ref
def op_softmax(x):  # type: ignore[no-untyped-def]
    """softmax over all elements of each layer"""
    return _each(lambda t: torch.softmax(t.reshape(-1), dim=0).reshape(t.shape), x)


@_ref
def op_logsoftmax(x):  # type: ignore[no-untyped-def]
    return _each(lambda t: torch.log_softmax(t.reshape(-1), dim=0).reshape(t.shape), x)


@_ref
def op_l1_norm(x):  # type: ignore[no-untyped-def]
    return _per_layer(lambda t: t.abs().sum(), x)


@_ref
def op_fro_norm(x):  # type: ignore[no-untyped-def]
    return _per_layer(lambda t: torch.sqrt((t * t).sum()), x)


@_ref
def op_mean(x):  # type: ignore[no-untyped-def]
    return _per_layer(torch.mean, x)


@_ref
def op_add(x, y):  # type: ignore[no-untyped-def]
    return _each2(torch.add, x, y)


@_ref
def op_sub(x, y):  # type: ignore[no-untyped-def]
    return _each2(torch.sub, x, y)


@_ref
def op_mul(x, y):  # type: ignore[no-untyped-def]
    return _each2(torch.mul, x, y)


@_ref
def op_div(x, y):  # type: ignore[no-untyped-def]
    """protected division x · y / (y² + 1e-9)"""
    return _each2(lambda a, b: a * b / (b * b + EPS), x, y)


@_ref
def op_dist_l1(x, y):  # type: ignore[no-untyped-def]
    return _per_layer2(lambda a, b: (a - b).abs().mean(), x, y)


@_ref
def op_dist_l2(x, y):  # type: ignore[no-untyped-def]
    return _per_layer2(lambda a, b: ((a - b) ** 2).mean(), x, y)


@_ref
def op_dist_smooth_l1(x, y):  # type: ignore[no-untyped-def]
    return _per_layer2(lambda a, b: F.smooth_l1_loss(a, b, beta=1.0), x, y)


def _layer_kl(a: Tensor, b: Tensor) -> Tensor:
    """KL(softmax(a) ‖ softmax(b)) over all elements of a layer"""
    la = torch.log_softmax(a.reshape(-1), dim=0)
    lb = torch.log_softmax(b.reshape(-1), dim=0)
    return (la.exp() * (la - lb)).sum()


@_ref
def op_dist_kl(x, y):  # type: ignore[no-untyped-def]
    return _per_layer2(_layer_kl, x, y)


@_ref
def op_sum_layers(x):  # type: ignore[no-untyped-def]
    return x.sum()


@_ref
def op_mean_layers(x):  # type: ignore[no-untyped-def]
    return x.sum() / max(x.numel(), 1)


# ---------------------------------------------------------------- calibrated combiners ----
def calibrated_rank01(reference: Tensor, x: Tensor) -> Tensor:
    """``x`` placed among a stored reference population (sorted ascending), scaled to
    [0, 1] as ``_rank01`` places a member among the others: a value equal to reference members
    gets their average rank, one strictly between two neighbours a linear interpolation of
    their ranks, one outside the reference's range the end gap extrapolated, at most half a
    step beyond the end (ranks stay bounded, so one part cannot swamp the other). Continuous
    away from ties, so a rounding difference in a part moves a score by as little; for the
    reference's own members exactly their ``_rank01``."""
    n = reference.numel()
    if torch.isnan(x).any() or n == 0:
        return torch.full_like(x, float("nan"))
    lo = torch.searchsorted(reference, x, right=False)
    hi = torch.searchsorted(reference, x, right=True)
    rank = (lo + hi - 1).to(x.dtype) / 2.0
    between = (lo == hi) & (lo > 0) & (lo < n)
    left = reference[(lo - 1).clamp(0, n - 1)]
    right = reference[lo.clamp(0, n - 1)]
    frac = ((x - left) / (right - left)).clamp(0, 1)
    rank = torch.where(between, (lo - 1).to(x.dtype) + frac.to(x.dtype), rank)
    if n > 1:  # outside the range: the gap between the two end members, extrapolated
        below = (x - reference[0]) / (reference[1] - reference[0])
        above = (x - reference[-1]) / (reference[-1] - reference[-2])
        rank = torch.where(hi == 0, below.clamp(min=-0.5).to(x.dtype), rank)
        rank = torch.where(lo == n, (n - 1) + above.clamp(max=0.5).to(x.dtype), rank)
    return rank / max(n - 1, 1)


def calibrated_z(reference: Tensor, x: Tensor) -> Tensor:
    """``x`` in z-units of the reference population"""
    std = reference.std(unbiased=False)
    return torch.where(std > 0, (x - reference.mean()) / std.clamp_min(EPS), torch.zeros_like(x))
