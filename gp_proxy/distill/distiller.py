"""Distillers as data: the Auto-KD search space, built from the primitive registry.

A distiller is a sequence of decisions (one MCTS tree level each):

1. the knowledge: a teacher/student feature pair (``k1``, ``k2``) or the logits (``k3``);
2. up to two knowledge transforms (attention, mask, multi-scale, local, sample-wise SP,
   channel-wise ICKD, normalisations, softmaxes...: every differentiable, non-identity op of
   the ``transform`` family that accepts the value's kind and shape), or ``stop``;
3. a distance (every differentiable distance op for the resulting kind; the KL and CWD
   families are one choice each, their temperature being decision 4);
4. a temperature in {1, 4, 8, 16} (the KL/CWD distance's and the logit KD term's);
5. a feature-loss weight in {1, 5, 25, 50};
6. a logit-KD weight in {0.1, 0.5, 1, 5} (the supplement's options).

The loss is ``wf · distance(transforms(connector(S)), transforms(T)) + wkd · KD_T(logits)``
(the training adds the cross-entropy). Where the student's feature differs in shape from the
teacher's, a learned 1×1 connector (FitNet's regressor; bilinear resize of the map when the
sizes differ) maps it first. The string ``mse(satt(k2))|T=4|wf=25|wkd=1`` is the distiller's
identity: printed, parsed against the registry (never ``eval``), stored, compared, and used
by ``gp-proxy distill --distiller``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import primitives
from primitives import Kind, Node
from primitives.errors import GpProxyError

__all__ = ["DISTILLER_LEVELS", "Distiller", "DistillerLoss", "DistillerSpace"]

KNOWLEDGE = primitives.paired_inputs()  # what a teacher-student distance may read
TEMPERATURES = (1, 4, 8, 16)
FEATURE_WEIGHTS = (1.0, 5.0, 25.0, 50.0)
KD_WEIGHTS = (0.1, 0.5, 1.0, 5.0)
MAX_TRANSFORMS = 2
STOP = "stop"
DISTILLER_LEVELS = ("knowledge", "transform 1", "transform 2", "distance", "temperature",
                    "feature weight", "KD weight")


def _family(op: primitives.Op) -> str:
    """A tempered distance's family (``kl_t4`` -> ``kl``), else the op's name."""
    return op.name.removesuffix(f"_t{int(op.temperature)}") if op.temperature else op.name


def _transforms() -> list[primitives.Op]:
    return [op for op in primitives.ops() if op.family == "transform" and op.differentiable
            and not op.identity]


def _distances() -> dict[str, dict[int, primitives.Op]]:
    """family -> temperature (0: none) -> op"""
    out: dict[str, dict[int, primitives.Op]] = {}
    for op in primitives.ops():
        if op.family == "distance" and op.differentiable:
            out.setdefault(_family(op), {})[int(op.temperature)] = op
    return out


@dataclass(frozen=True)
class Distiller:
    knowledge: str
    transforms: tuple[str, ...]
    distance: str  # a family: "mse", "kl", "cwd", ...
    temperature: int
    feature_weight: float
    kd_weight: float

    @property
    def distance_op(self) -> str:
        ops = _distances().get(self.distance)
        if ops is None:
            raise GpProxyError(f"distiller: unknown distance {self.distance!r}")
        return ops[self.temperature].name if 0 not in ops else ops[0].name

    @property
    def formula(self) -> str:
        inner = self.knowledge
        for t in self.transforms:
            inner = f"{t}({inner})"
        return f"{self.distance_op}({inner})"

    def __str__(self) -> str:
        return (f"{self.formula}|T={self.temperature}|wf={self.feature_weight:g}"
                f"|wkd={self.kd_weight:g}")

    @classmethod
    def parse(cls, text: str) -> Distiller:
        """Read a printed distiller; errors name the offending field."""
        head, *fields = text.strip().split("|")
        node = primitives.parse(head)  # against the registry: the token is named on error
        op = primitives.get(node.name)
        if op.family != "distance":
            raise GpProxyError(f"distiller {text!r}: {node.name} is not a distance")
        chain: list[str] = []
        x = node.args[0]
        while x.args:
            chain.append(x.name)
            x = x.args[0]
        values: dict[str, str] = {}
        for f in fields:
            key, sep, value = f.partition("=")
            if not sep or key not in ("T", "wf", "wkd") or key in values:
                raise GpProxyError(f"distiller {text!r}: field {f!r} is not T=, wf= or wkd=")
            values[key] = value
        missing = [k for k in ("T", "wf", "wkd") if k not in values]
        if missing:
            raise GpProxyError(f"distiller {text!r}: missing {', '.join(missing)}")
        try:
            t, wf, wkd = int(values["T"]), float(values["wf"]), float(values["wkd"])
        except ValueError:
            raise GpProxyError(f"distiller {text!r}: T, wf and wkd must be numbers") from None
        d = cls(x.name, tuple(reversed(chain)), _family(op), t, wf, wkd)
        checks: tuple[tuple[float, tuple[float, ...], str], ...] = (
            (t, TEMPERATURES, "T"), (wf, FEATURE_WEIGHTS, "wf"), (wkd, KD_WEIGHTS, "wkd"))
        for number, allowed, what in checks:
            if number not in allowed:
                raise GpProxyError(f"distiller {text!r}: {what}={number:g} is not one of "
                                   f"{', '.join(f'{a:g}' for a in allowed)}")
        if op.temperature and int(op.temperature) != t:
            raise GpProxyError(f"distiller {text!r}: {node.name} is at temperature "
                               f"{op.temperature:g} but T={t}")
        if d.knowledge not in KNOWLEDGE or len(d.transforms) > MAX_TRANSFORMS or any(
                c not in {o.name for o in _transforms()} for c in d.transforms):
            raise GpProxyError(f"distiller {text!r}: not in the search space (knowledge "
                               f"{', '.join(KNOWLEDGE)}; at most {MAX_TRANSFORMS} "
                               "differentiable transforms)")
        return d


class DistillerSpace:
    """The decisions valid for one teacher/student pair: each level's choices depend on the
    value's kind and shape so far (checked by running the transforms on the teacher's shapes:
    after the connector the student's feature has them too)."""

    def __init__(self, teacher_shapes: dict[str, tuple[int, ...]],
                 kinds: dict[str, Kind] | None = None) -> None:
        self.shapes = {k: tuple(v) for k, v in teacher_shapes.items() if k in KNOWLEDGE}
        self.kinds = dict(kinds or primitives.DEFAULT_INPUT_KINDS)
        self._ran: dict[str, bool] = {}

    def _runs(self, formula: str) -> bool:
        """Whether ``formula`` types and runs on the teacher's shapes (remembered)."""
        if formula not in self._ran:
            self._ran[formula] = self._try(formula)
        return self._ran[formula]

    def _try(self, formula: str) -> bool:
        try:
            node = primitives.parse(formula, self.kinds)
        except GpProxyError:
            return False
        x = {k: torch.randn((1, 4, *s[1:]), generator=torch.Generator().manual_seed(0))
             for k, s in self.shapes.items()}
        try:
            out = primitives.evaluate(node, x, x)
        except (primitives.ShapeError, primitives.KindError):
            return False
        return isinstance(out, Tensor)

    def _kind(self, knowledge: str, transforms: tuple[str, ...]) -> Kind | None:
        inner = knowledge
        for t in transforms:
            inner = f"{t}({inner})"
        try:
            return primitives.infer_kind(primitives.parse(inner, self.kinds), self.kinds)
        except GpProxyError:
            return None

    def choices(self, prefix: tuple[Any, ...]) -> list[Any]:
        """The choices of the next decision after ``prefix`` (empty: the prefix is complete)."""
        level = len(prefix)
        if level == 0:
            return [k for k in KNOWLEDGE if k in self.shapes]
        knowledge = prefix[0]
        chain = tuple(c for c in prefix[1:min(level, 1 + MAX_TRANSFORMS)] if c != STOP)
        if level in (1, 2):
            if level == 2 and prefix[1] == STOP:
                return [STOP]
            out = [STOP]
            for op in _transforms():
                candidate = (*chain, op.name)
                # after the connector the two sides have one shape: MSE runs where any does
                if self._kind(knowledge, candidate) is not None and self._runs(
                        f"mse({_nest(knowledge, candidate)})"):
                    out.append(op.name)
            return out
        if level == 3:
            return [fam for fam, ops in _distances().items()
                    if self._runs(f"{next(iter(ops.values())).name}({_nest(knowledge, chain)})")]
        later: dict[int, list[Any]] = {4: list(TEMPERATURES), 5: list(FEATURE_WEIGHTS),
                                       6: list(KD_WEIGHTS)}
        return later.get(level, [])

    def distiller(self, decisions: tuple[Any, ...]) -> Distiller:
        chain = tuple(c for c in decisions[1:1 + MAX_TRANSFORMS] if c != STOP)
        return Distiller(decisions[0], chain, decisions[3], int(decisions[4]),
                         float(decisions[5]), float(decisions[6]))

    def decisions(self, d: Distiller) -> tuple[Any, ...]:
        chain = list(d.transforms) + [STOP] * (MAX_TRANSFORMS - len(d.transforms))
        return (d.knowledge, *chain, d.distance, d.temperature, d.feature_weight, d.kd_weight)

    def sample(self, rng: random.Random, prefix: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        """Complete ``prefix`` with uniform choices at every level."""
        out = tuple(prefix)
        while choices := self.choices(out):
            out = (*out, rng.choice(choices))
        return out

    def enumerate_structures(self) -> Iterator[tuple[Any, ...]]:
        """Every (knowledge, transforms, distance) prefix of the space."""
        def walk(prefix: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
            if len(prefix) == 4:
                yield prefix
                return
            for c in self.choices(prefix):
                yield from walk((*prefix, c))
        yield from walk(())


def _nest(knowledge: str, chain: tuple[str, ...]) -> str:
    inner = knowledge
    for t in chain:
        inner = f"{t}({inner})"
    return inner


class _Connector(nn.Module):
    """FitNet's regressor: a learned 1×1 map from the student's channels to the teacher's,
    and a bilinear resize of a map whose size differs."""

    def __init__(self, student: tuple[int, ...], teacher: tuple[int, ...]) -> None:
        super().__init__()
        self.size = tuple(teacher[2:])
        if len(student) == 4:
            self.proj: nn.Module = nn.Conv2d(student[1], teacher[1], 1, bias=False)
        elif len(student) == 3:
            self.proj = nn.Conv1d(student[1], teacher[1], 1, bias=False)
        else:
            self.proj = nn.Linear(student[1], teacher[1], bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        if x.dim() == 4 and tuple(x.shape[2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x


class DistillerLoss(nn.Module):
    """A distiller as a distillation loss (``gp-proxy distill --distiller``): the weighted
    feature distance plus the weighted logit KD at the distiller's temperature. A random
    transform (the mask) draws new positions at every step, from the step count (a buffer, so
    a resumed run draws what an uninterrupted one would)."""

    hyperparameters: ClassVar[dict[str, str]] = {"spec": "distiller"}

    def __init__(self, shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]],
                 spec: str = "") -> None:
        super().__init__()
        self.distiller = Distiller.parse(spec)
        self.node: Node = primitives.parse(self.distiller.formula)
        s_shape, t_shape = shapes[self.distiller.knowledge]
        self.connector = (_Connector(s_shape, t_shape) if tuple(s_shape[1:]) != tuple(
            t_shape[1:]) else None)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, s: dict[str, Tensor], t: dict[str, Tensor], y: Tensor) -> Tensor:
        d = self.distiller
        fs = s[d.knowledge]
        if self.connector is not None:
            fs = self.connector(fs)
        step = self.get_buffer("step")
        out = primitives.evaluate(self.node, {d.knowledge: fs.unsqueeze(0)},
                                  {d.knowledge: t[d.knowledge].detach().unsqueeze(0)},
                                  seed=int(step))
        step.add_(1)
        assert isinstance(out, Tensor)
        temp = float(d.temperature)
        log_ps = F.log_softmax(s["k3"] / temp, 1)
        log_pt = F.log_softmax(t["k3"].detach() / temp, 1)
        kd = temp**2 * (log_pt.exp() * (log_pt - log_ps)).sum(1).mean()
        return d.feature_weight * out.sum() + d.kd_weight * kd
