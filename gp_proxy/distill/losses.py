"""Distillation losses, one registry. Each docstring gives the formula and the paper.

A loss is built with the student's and teacher's feature shapes (some own parameters, e.g.
FitNet's regressor) and called as ``loss(student_feats, teacher_feats, labels)`` where the
feature dicts hold ``k1``, ``k2`` (maps) and ``k3`` (logits).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import primitives
from primitives.errors import GpProxyError

from ..bench.train import soft_kl
from ..core.registry import Registry

__all__ = ["LOSSES", "build_loss", "loss_arguments", "register_loss"]

Feats = dict[str, Tensor]


class KD(nn.Module):
    """Hinton et al. 2015: T²·KL(softmax(t/T) ‖ softmax(s/T)) on logits."""

    #: constructor argument -> the distillation config field that supplies it
    hyperparameters: ClassVar[dict[str, str]] = {"temperature": "temperature"}

    def __init__(self, shapes: Any, temperature: float = 4.0) -> None:
        super().__init__()
        self.t = temperature

    def forward(self, s: Feats, t: Feats, y: Tensor) -> Tensor:
        return self.t**2 * soft_kl(s["k3"], t["k3"], self.t)


class FitNet(nn.Module):
    """Romero et al., ICLR 2015: ‖r(S_k1) − T_k1‖² with a learned 1×1 conv regressor r."""

    def __init__(self, shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> None:
        super().__init__()
        (_, cs, *_), (_, ct, *_) = shapes["k1"]
        self.reg = nn.Conv2d(cs, ct, 1, bias=False)

    def forward(self, s: Feats, t: Feats, y: Tensor) -> Tensor:
        out = self.reg(s["k1"])
        if out.shape[-2:] != t["k1"].shape[-2:]:
            out = F.interpolate(out, size=t["k1"].shape[-2:], mode="bilinear",
                                align_corners=False)
        return F.mse_loss(out, t["k1"])


def _att(f: Tensor) -> Tensor:
    return F.normalize(f.pow(2).mean(1).flatten(1), dim=1)


class AT(nn.Module):
    """Zagoruyko & Komodakis, ICLR 2017: Σ_maps ‖A(S) − A(T)‖², A(F) = normalise(mean_c F²)."""

    def __init__(self, shapes: Any) -> None:
        super().__init__()

    def forward(self, s: Feats, t: Feats, y: Tensor) -> Tensor:
        total = torch.zeros((), device=s["k2"].device)
        for k in ("k1", "k2"):
            a, b = s[k], t[k]
            if a.shape[-2:] != b.shape[-2:]:
                a = F.interpolate(a, size=b.shape[-2:], mode="bilinear", align_corners=False)
            total = total + (_att(a) - _att(b)).pow(2).mean()
        return total


def _sp_gram(f: Tensor) -> Tensor:
    f = f.flatten(1)
    return F.normalize(f @ f.T, dim=1)


class SP(nn.Module):
    """Tung & Mori, ICCV 2019: ‖G_S − G_T‖_F² / n², G = row-normalised batch gram of k2."""

    def __init__(self, shapes: Any) -> None:
        super().__init__()

    def forward(self, s: Feats, t: Feats, y: Tensor) -> Tensor:
        n = s["k2"].shape[0]
        return (_sp_gram(s["k2"]) - _sp_gram(t["k2"])).pow(2).sum() / (n * n)


class RKD(nn.Module):
    """Park et al., CVPR 2019: 25·Huber(ψ_D) + 50·Huber(ψ_A) on pooled k2 embeddings
    (pairwise distances normalised by their mean; angles of triplets)."""

    def __init__(self, shapes: Any, w_dist: float = 25.0, w_angle: float = 50.0) -> None:
        super().__init__()
        self.w_dist, self.w_angle = w_dist, w_angle

    @staticmethod
    def _dist(e: Tensor) -> Tensor:
        d = torch.cdist(e, e)
        return d / d[d > 0].mean().clamp_min(1e-12)

    @staticmethod
    def _angle(e: Tensor) -> Tensor:
        diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)
        return torch.bmm(diff, diff.transpose(1, 2)).flatten()

    def forward(self, s: Feats, t: Feats, y: Tensor) -> Tensor:
        es, et = s["k2"].mean((2, 3)), t["k2"].mean((2, 3)).detach()
        return (self.w_dist * F.smooth_l1_loss(self._dist(es), self._dist(et))
                + self.w_angle * F.smooth_l1_loss(self._angle(es), self._angle(et)))


class PKT(nn.Module):
    """Passalis & Tefas, ECCV 2018: KL(P_T ‖ P_S) of cosine-similarity conditional
    distributions p_ij = (c_ij + 1) / Σ_j (c_ij + 1) over the pooled k2 embeddings."""

    def __init__(self, shapes: Any) -> None:
        super().__init__()

    @staticmethod
    def _p(e: Tensor) -> Tensor:
        e = F.normalize(e, dim=1)
        c = (e @ e.T + 1.0) / 2.0
        return c / c.sum(1, keepdim=True)

    def forward(self, s: Feats, t: Feats, y: Tensor) -> Tensor:
        ps, pt = self._p(s["k2"].mean((2, 3))), self._p(t["k2"].mean((2, 3)))
        return (pt * torch.log((pt + 1e-7) / (ps + 1e-7))).sum(1).mean()


class ICKD(nn.Module):
    """Liu et al., ICCV 2021: ‖G(r(S)) − G(T)‖² / c², G = per-sample channel gram of k2 and r a
    learned 1×1 conv to the teacher's channels."""

    def __init__(self, shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> None:
        super().__init__()
        (_, cs, *_), (_, ct, *_) = shapes["k2"]
        self.reg = nn.Conv2d(cs, ct, 1, bias=False)

    @staticmethod
    def _gram(f: Tensor) -> Tensor:
        f = f.flatten(2)
        return f @ f.transpose(1, 2) / f.shape[2]

    def forward(self, s: Feats, t: Feats, y: Tensor) -> Tensor:
        c = t["k2"].shape[1]
        diff = self._gram(self.reg(s["k2"])) - self._gram(t["k2"])
        return diff.pow(2).sum((1, 2)).mean() / c**2


class DKD(nn.Module):
    """Zhao et al., CVPR 2022: α·TCKD + β·NCKD (T = 4, α = 1, β = 8): KL of the target/non-target
    binary split, plus KL among non-target classes, both × T²."""

    def __init__(self, shapes: Any, alpha: float = 1.0, beta: float = 8.0, t: float = 4.0
                 ) -> None:
        super().__init__()
        self.alpha, self.beta, self.t = alpha, beta, t

    def forward(self, s: Feats, t: Feats, y: Tensor) -> Tensor:
        zs, zt = s["k3"] / self.t, t["k3"] / self.t
        mask = F.one_hot(y, zs.shape[1]).bool()
        ps, pt = zs.softmax(1), zt.softmax(1)
        bs = torch.stack([(ps * mask).sum(1), (ps * ~mask).sum(1)], 1).clamp_min(1e-12)
        bt = torch.stack([(pt * mask).sum(1), (pt * ~mask).sum(1)], 1).clamp_min(1e-12)
        tckd = (bt * (bt.log() - bs.log())).sum(1).mean()
        ls = F.log_softmax(zs.masked_fill(mask, -1e9), 1)
        lt = F.log_softmax(zt.masked_fill(mask, -1e9), 1)
        nckd = (lt.exp() * (lt - ls)).masked_fill(mask, 0).sum(1).mean()
        return self.t**2 * (self.alpha * tckd + self.beta * nckd)


class FormulaLoss(nn.Module):
    """A discovered teacher-student formula used as a feature loss: the distance part of the
    formula (its pairwise subtrees) evaluated on student and teacher features, summed. Only
    formulas whose ops are all differentiable qualify (recorded in the registry).

    Raw formula distances span many orders of magnitude (2.29e15 was seen for an evolved
    one), so each part is divided by its value on the first training batch (kept as a buffer,
    so a resumed run divides by the same number): every part starts at 1, and the weight a
    user gives the loss means "this many times the cross-entropy scale", as for the others."""

    hyperparameters: ClassVar[dict[str, str]] = {"formula": "formula"}

    def __init__(self, shapes: Any, formula: str = "") -> None:
        super().__init__()
        node = primitives.canonicalize(primitives.parse(formula))
        self.parts = [n for n in node.walk() if primitives.get(n.name).pairwise]
        if not self.parts:
            raise GpProxyError(f"formula {formula!r} has no teacher-student distance")
        bad = sorted({n.name for p in self.parts for n in p.walk()
                      if not primitives.get(n.name).differentiable
                      or primitives.get(n.name).stochastic})
        if bad:
            raise GpProxyError(f"formula {formula!r} cannot be a loss: {', '.join(bad)} "
                               "is not differentiable (or is random)")
        self.register_buffer("scale", torch.zeros(len(self.parts), dtype=torch.float64))

    def forward(self, s: Feats, t: Feats, y: Tensor) -> Tensor:
        se = {k: v.unsqueeze(0) for k, v in s.items()}
        te = {k: v.detach().unsqueeze(0) for k, v in t.items()}
        raw = []
        for p in self.parts:
            out = primitives.evaluate(p, se, te)
            assert isinstance(out, Tensor)
            raw.append(out.sum())
        values = torch.stack(raw)
        scale = self.get_buffer("scale")
        if not bool(scale.any()):  # the first batch fixes each part's unit
            first = values.detach().abs().double()
            scale.copy_(torch.where(first > 0, first, torch.ones_like(first)))
        return (values / scale.to(values.dtype)).sum()


def _builtins() -> None:
    from .distiller import DistillerLoss
    from .distpro import DistProLoss

    for name, cls in (("kd", KD), ("fitnet", FitNet), ("at", AT), ("sp", SP), ("rkd", RKD),
                      ("pkt", PKT), ("ickd", ICKD), ("dkd", DKD), ("formula", FormulaLoss),
                      ("distiller", DistillerLoss), ("distpro", DistProLoss)):
        LOSSES.register(name, cls)


#: loss name -> its class (``cls(shapes, **hyperparameters)``; register your own with
#: :func:`register_loss`). A class's ``hyperparameters`` maps its constructor arguments to
#: the distillation config fields that supply them.
LOSSES: Registry[Callable[..., nn.Module]] = Registry("distillation loss", _builtins)


def register_loss(name: str, *, replace: bool = False) -> Callable[[Any], Any]:
    """Class decorator: ``@register_loss("mine")`` on an ``nn.Module`` taking
    ``(shapes, **hyperparameters)`` and called as ``loss(student_feats, teacher_feats,
    labels)`` makes it usable by ``distill --losses mine=1``."""
    return LOSSES.register(name, replace=replace)


def loss_arguments(name: str, config: Any) -> dict[str, Any]:
    """The constructor arguments loss ``name`` declares, read from ``config``."""
    cls = LOSSES.get(name)
    return {arg: getattr(config, field)
            for arg, field in getattr(cls, "hyperparameters", {}).items()}


def build_loss(name: str, shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]],
               **kwargs: Any) -> nn.Module:
    """``shapes[k] = (student shape, teacher shape)`` of each feature, for losses with
    parameters (FitNet, ICKD)."""
    return LOSSES.get(name)(shapes, **kwargs)
