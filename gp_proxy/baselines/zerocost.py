"""Zero-cost proxies of the NAS literature, implemented from their papers' definitions.

Each takes ``(model, inputs, targets)`` and returns one float (higher = predicted better, as
each paper uses it). Models are deep-copied, so the caller's weights, gradients and modes are
never touched; every gradient is taken after zeroing, with hooks removed afterwards.

- ``grad_norm``: Σ_layers ‖∂L/∂W‖₂ (Abdelfattah et al., "Zero-Cost Proxies for Lightweight
  NAS", ICLR 2021).
- ``snip``: Σ |W ⊙ ∂L/∂W| (Lee et al., "SNIP", ICLR 2019).
- ``grasp``: −Σ W ⊙ (H ∂L/∂W) (Wang et al., "GraSP", ICLR 2020), Hessian-vector product by
  double backward.
- ``fisher``: Σ_channels ½ (Σ_positions a ⊙ ∂L/∂a)² summed over samples, at each ReLU output
  (Theis et al. 2018; Turner et al., "BlockSwap", ICLR 2020).
- ``synflow``: Σ W ⊙ ∂R/∂W with |W|, an all-ones input and R = Σ output, BN in eval mode
  (Tanaka et al., "SynFlow", NeurIPS 2020).
- ``jacov``: −Σ_i [log(λ_i + k) + 1/(λ_i + k)], λ the eigenvalues of the correlation matrix of
  the input-Jacobians, k = 1e-5 (Mellor et al., "NAS without training", v1, 2020).
- ``nwot``: log|det K|, K_ij = number of ReLUs on which samples i and j agree (Mellor et al.,
  ICML 2021).
- ``zen``: log ‖f(x) − f(x + 0.01 ε)‖ of the pre-pooling feature + Σ log(BN batch std)
  (Lin et al., "Zen-NAS", ICCV 2021), Gaussian inputs.
- ``plain``: Σ W ⊙ ∂L/∂W (Abdelfattah et al. 2021).
- ``l2_norm``: Σ_layers ‖W‖₂ (Abdelfattah et al. 2021).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from primitives.errors import GpProxyError
from primitives.reference import weight_layers

from ..core.registry import Registry

__all__ = ["MEASURES", "SIZE_STATISTICS", "Measure", "SizeStatistic", "get_measure",
           "register_measure", "student_measures", "zero_cost"]


def _weights(model: nn.Module) -> list[Tensor]:
    """The weight tensors of convolutions and linears, in module order."""
    return [m.weight for m in weight_layers(model)]


def _total(values: list[Tensor]) -> float:
    return float(torch.stack([v.detach().double() for v in values]).sum())


def _loss_grads(model: nn.Module, x: Tensor, y: Tensor, create_graph: bool = False
                ) -> tuple[list[Tensor], list[Tensor]]:
    model.train()
    model.zero_grad(set_to_none=True)
    weights = _weights(model)
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, weights, create_graph=create_graph)
    return weights, list(grads)


def grad_norm(model: nn.Module, x: Tensor, y: Tensor) -> float:
    _, grads = _loss_grads(model, x, y)
    return _total([torch.linalg.vector_norm(g) for g in grads])


def snip(model: nn.Module, x: Tensor, y: Tensor) -> float:
    weights, grads = _loss_grads(model, x, y)
    return _total([(w * g).abs().sum() for w, g in zip(weights, grads, strict=True)])


def plain(model: nn.Module, x: Tensor, y: Tensor) -> float:
    weights, grads = _loss_grads(model, x, y)
    return _total([(w * g).sum() for w, g in zip(weights, grads, strict=True)])


def l2_norm(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return _total([torch.linalg.vector_norm(w) for w in _weights(model)])


def grasp(model: nn.Module, x: Tensor, y: Tensor) -> float:
    weights, grads = _loss_grads(model, x, y, create_graph=True)
    g_const = [g.detach() for g in grads]
    dot = torch.stack([(g * gc).sum() for g, gc in zip(grads, g_const, strict=True)]).sum()
    hg = torch.autograd.grad(dot, weights)  # H g
    return -_total([(w * h).sum() for w, h in zip(weights, hg, strict=True)])


def fisher(model: nn.Module, x: Tensor, y: Tensor) -> float:
    acts: list[Tensor] = []

    def keep(m: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        out.retain_grad()
        acts.append(out)

    handles = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        model.train()
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    finally:
        for h in handles:
            h.remove()
    total = 0.0
    for a in acts:
        if a.grad is None:
            continue
        per = (a.detach() * a.grad).reshape(a.shape[0], a.shape[1], -1).sum(dim=2)  # n c
        total += float(0.5 * (per * per).sum())
    return total


def synflow(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.double()  # products of |W| over depth overflow float32 quickly
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    model.eval()
    model.zero_grad(set_to_none=True)
    weights = _weights(model)
    ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64)
    r = model(ones).sum()
    grads = torch.autograd.grad(r, weights)
    return _total([(w * g).sum() for w, g in zip(weights, grads, strict=True)])


def jacov(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.train()
    xi = x.clone().requires_grad_(True)
    out = model(xi)
    (jac,) = torch.autograd.grad(out.sum(), xi)
    j = jac.reshape(jac.shape[0], -1).double()
    corr = torch.corrcoef(j)
    corr = torch.nan_to_num(corr, nan=0.0)
    eig = torch.linalg.eigvalsh(corr)
    k = 1e-5
    return float(-(torch.log(eig + k) + 1.0 / (eig + k)).sum())


def nwot(model: nn.Module, x: Tensor, y: Tensor) -> float:
    codes: list[Tensor] = []

    def keep(m: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        codes.append((out.detach().reshape(out.shape[0], -1) > 0).double())

    handles = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        model.train()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    if not codes:
        return float("nan")
    c = torch.cat(codes, dim=1)
    k = c @ c.T + (1 - c) @ (1 - c).T
    return float(torch.linalg.slogdet(k).logabsdet)


def zen(model: nn.Module, x: Tensor, y: Tensor, alpha: float = 0.01) -> float:
    feats = getattr(model, "features", None)
    if not callable(feats):
        raise GpProxyError("zen reads the feature k2: the model has no features() method; "
                           "pass features={'k2': '<module name>'}")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(x.shape, generator=g)
    dz = torch.randn(x.shape, generator=g)
    stds: list[Tensor] = []

    def keep(m: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        stds.append(inp[0].detach().transpose(0, 1).reshape(inp[0].shape[1], -1).std(dim=1))

    model.train()
    with torch.no_grad():
        a = feats(z)["k2"]
        handles = [m.register_forward_hook(keep) for m in model.modules()
                   if isinstance(m, nn.BatchNorm2d)]
        try:
            b = feats(z + alpha * dz)["k2"]
        finally:
            for h in handles:
                h.remove()
    delta = torch.linalg.vector_norm(a - b) / alpha
    return float(torch.log(delta + 1e-12) + sum(torch.log(s.mean() + 1e-12) for s in stds))


@dataclass(frozen=True)
class Measure:
    """A zero-cost measure: ``fn(model, x, y)``, or ``fn(teacher, model, x, y)`` when it
    ``needs_teacher`` (DisWOT compares the student with a teacher). ``reads``: the module type
    whose outputs it hooks, if any; a model without one is refused with a clear error rather
    than scored as a constant (a model applying ``F.relu`` has no ``nn.ReLU`` to hook)."""

    fn: Callable[..., float]
    needs_teacher: bool = False
    reads: type[nn.Module] | None = None


def _builtins() -> None:
    relu = nn.ReLU  # Fisher and NWOT hook the ReLUs' outputs
    for name, fn, reads in (("grad_norm", grad_norm, None), ("snip", snip, None),
                            ("grasp", grasp, None), ("fisher", fisher, relu),
                            ("synflow", synflow, None), ("jacov", jacov, None),
                            ("nwot", nwot, relu), ("zen", zen, None), ("plain", plain, None),
                            ("l2_norm", l2_norm, None)):
        MEASURES.register(name, Measure(fn, reads=reads))
    MEASURES.register("diswot", Measure(diswot, needs_teacher=True))


#: measure name -> :class:`Measure` (register your own with :func:`register_measure`)
MEASURES: Registry[Measure] = Registry("zero-cost measure", _builtins)


@dataclass(frozen=True)
class SizeStatistic:
    """A baseline that counts rather than measures: ``label`` as reports show it; ``key`` is
    both the ground-truth column and the search space's method giving it for a spec."""

    label: str
    key: str


#: size statistic name -> :class:`SizeStatistic` (the baselines every correlation stands
#: beside; no data is involved, so they have no noise)
SIZE_STATISTICS: dict[str, SizeStatistic] = {
    "params": SizeStatistic("#params", "params"),
    "flops": SizeStatistic("FLOPS", "flops"),
}


def register_measure(name: str, *, needs_teacher: bool = False,
                     reads: type[nn.Module] | None = None, replace: bool = False
                     ) -> Callable[[Callable[..., float]], Callable[..., float]]:
    """Decorator: ``@register_measure("mine")`` on ``fn(model, x, y) -> float`` (or
    ``fn(teacher, model, x, y)`` with ``needs_teacher=True``) makes it a baseline of
    ``compare``, ``search`` and the pipeline by name; ``reads=nn.ReLU`` when it hooks the
    outputs of that module type."""

    def add(fn: Callable[..., float]) -> Callable[..., float]:
        MEASURES.register(name, Measure(fn, needs_teacher, reads), replace=replace)
        return fn

    return add


def get_measure(name: str) -> Measure:
    entry = MEASURES.get(name)
    return entry if isinstance(entry, Measure) else Measure(entry)  # a module:attr function


def student_measures() -> list[str]:
    """The built-in and registered measures that need no teacher."""
    return [n for n in MEASURES if not MEASURES.get(n).needs_teacher]


def zero_cost(name: str, model: nn.Module, x: Tensor, y: Tensor,
              teacher: nn.Module | None = None, features: dict[str, str] | None = None,
              teacher_features: dict[str, str] | None = None) -> float:
    """Score ``model`` with measure ``name`` on private copies (the models are left
    untouched); a measure that needs a teacher gets ``teacher``. Models without a
    ``features()`` method (read by zen and DisWOT) name the module giving each feature:
    ``features={"k2": "layer4"}`` (and ``teacher_features`` for the teacher)."""
    from ..spaces.base import with_features

    model = with_features(model, features)
    if teacher is not None:
        teacher = with_features(teacher, teacher_features)
    m = get_measure(name)
    if m.reads is not None and not any(isinstance(mod, m.reads) for mod in model.modules()):
        raise GpProxyError(f"zero-cost measure {name!r} reads the outputs of "
                           f"{m.reads.__name__} modules and this {type(model).__name__} has "
                           "none (an activation applied as a function, or another one)")
    if m.needs_teacher:
        if teacher is None:
            raise GpProxyError(f"zero-cost measure {name!r} compares with a teacher: pass one")
        value = m.fn(copy.deepcopy(teacher), copy.deepcopy(model), x, y)
    else:
        value = m.fn(copy.deepcopy(model), x, y)
    return value if math.isfinite(value) else float("nan")


def _relation(m: Tensor) -> Tensor:
    g = m.reshape(m.shape[0], -1) @ m.reshape(m.shape[0], -1).T
    return F.normalize(g, p=2, dim=1)


def _cam(model: nn.Module, fmap: Tensor, y: Tensor) -> Tensor:
    """Class activation maps of the labelled class, n × (h w): for a global-pool + linear head
    these are Grad-CAM maps up to the 1/(hw) factor (the gradient of a logit with respect to
    the pooled map is the classifier row)."""
    head = _weights(model)[-1]  # the classifier: last weight layer in module order
    return torch.einsum("nchw,nc->nhw", fmap, head[y]).reshape(fmap.shape[0], -1)


def diswot(teacher: nn.Module, student: nn.Module, x: Tensor, y: Tensor) -> float:
    """DisWOT (Dong et al., CVPR 2023): −(semantic + relation distance) between random-init
    teacher and student. Semantic: inter-sample similarity of class activation maps of ``k2``;
    relation: inter-sample similarity of the flattened ``k2`` (both row-normalised n × n
    grams, compared with the L2 norm). Higher = more similar = predicted better student."""
    feats_t, feats_s = getattr(teacher, "features", None), getattr(student, "features", None)
    if not (callable(feats_t) and callable(feats_s)):
        raise GpProxyError("diswot reads the feature k2 of both models: pass features= "
                           "(and teacher_features=) {'k2': '<module name>'} for models "
                           "without a features() method")
    teacher, student = copy.deepcopy(teacher).train(), copy.deepcopy(student).train()
    with torch.no_grad():
        ft, fs = teacher.features(x)["k2"], student.features(x)["k2"]  # type: ignore[operator]
        sem = torch.linalg.vector_norm(_relation(_cam(teacher, ft, y)) -
                                       _relation(_cam(student, fs, y)))
        rel = torch.linalg.vector_norm(_relation(ft) - _relation(fs))
    return float(-(sem + rel))
