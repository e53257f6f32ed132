"""``nb201``: the NAS-Bench-201 cell space (Dong & Yang 2020).

A cell is a DAG of 4 nodes; each of its 6 edges carries one of 5 ops. Specs use the standard
genotype notation ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` (node i's incoming edges from nodes
0..i-1). The network: 3×3 stem (C=16), three stages of N=5 cells (widths 16/32/64) joined by
residual reduction blocks, then BN-ReLU, global pooling and a linear classifier.
5^6 = 15,625 genotypes. ``k1`` is the stage-2 output, ``k2`` the final map, ``k3`` the logits.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from .base import FeatureNet, SearchSpace, SpecError, seeded_init
from .blocks import BasicBlock

__all__ = ["OPS", "NB201Net", "NB201Space"]

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")  # genotype names
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to, from), genotype order


def _conv(k: int) -> Callable[[int], nn.Module]:
    return lambda c: nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, k, 1, k // 2, bias=False),
                                   nn.BatchNorm2d(c))


#: cell operation -> its module for ``c`` channels
_BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "none": lambda c: _Zero(),
    "skip_connect": lambda c: nn.Identity(),
    "nor_conv_1x1": _conv(1),
    "nor_conv_3x3": _conv(3),
    "avg_pool_3x3": lambda c: nn.AvgPool2d(3, 1, 1, count_include_pad=False),
}


def _op(name: str, c: int) -> nn.Module:
    return _BUILDERS[name](c)


class _Zero(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)


class _Cell(nn.Module):
    def __init__(self, ops: tuple[str, ...], c: int) -> None:
        super().__init__()
        self.edges = nn.ModuleList(_op(o, c) for o in ops)

    def forward(self, x: Tensor) -> Tensor:
        nodes = [x]
        for to in range(1, 4):
            nodes.append(sum((self.edges[e](nodes[frm]) for e, (t, frm) in enumerate(EDGES)
                              if t == to), torch.zeros_like(x)))
        return nodes[3]


class NB201Net(FeatureNet):
    def __init__(self, ops: tuple[str, ...], c: int = 16, n: int = 5, num_classes: int = 10,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
        stages: list[nn.Module] = []
        width = c
        for s in range(3):
            layers: list[nn.Module] = []
            if s > 0:
                layers.append(BasicBlock(width, width * 2, 2))
                width *= 2
            layers += [_Cell(ops, width) for _ in range(n)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.last = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU())
        self.fc = nn.Linear(width, num_classes)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        x = self.stages[0](self.stem(x))
        k1 = self.stages[1](x)
        k2 = self.last(self.stages[2](k1))
        return {"k1": k1, "k2": k2, "k3": self.fc(k2.mean(dim=(2, 3)))}


def _format(ops: tuple[str, ...]) -> str:
    nodes = [[f"{ops[e]}~{frm}" for e, (t, frm) in enumerate(EDGES) if t == to]
             for to in range(1, 4)]
    return "+".join("|" + "|".join(n) + "|" for n in nodes)


class NB201Space(SearchSpace):
    name = "nb201"
    input_shape = (3, 32, 32)

    def __init__(self, num_classes: int = 10, c: int = 16, n: int = 5) -> None:
        self.num_classes, self.c, self.n = num_classes, c, n

    def parse(self, spec: str) -> tuple[str, ...]:
        parts = spec.strip().split("+")
        if len(parts) != 3:
            raise SpecError(f"{self.name}: spec {spec!r} must have 3 '+'-separated nodes")
        ops: dict[tuple[int, int], str] = {}
        for to, part in enumerate(parts, start=1):
            if not (part.startswith("|") and part.endswith("|")):
                raise SpecError(f"{self.name}: node {to} {part!r} must be wrapped in '|'")
            items = part[1:-1].split("|")
            if len(items) != to:
                raise SpecError(f"{self.name}: node {to} needs {to} inputs, got {len(items)}")
            for item in items:
                op, _, frm = item.partition("~")
                if op not in OPS:
                    raise SpecError(f"{self.name}: node {to}: unknown op {op!r}; "
                                    f"choose from {', '.join(OPS)}")
                if not frm.isdigit() or int(frm) >= to or (to, int(frm)) in ops:
                    raise SpecError(f"{self.name}: node {to}: bad input index in {item!r}")
                ops[(to, int(frm))] = op
        return tuple(ops[e] for e in EDGES)

    def validate(self, spec: str) -> str:
        return _format(self.parse(spec))

    def build(self, spec: str, seed: int = 0) -> FeatureNet:
        net = NB201Net(self.parse(spec), self.c, self.n, self.num_classes,
                       self.input_shape[0])
        return seeded_init(net, seed)  # type: ignore[return-value]

    def enumerate(self) -> Iterator[str]:
        for ops in itertools.product(OPS, repeat=len(EDGES)):
            yield _format(ops)

    def size(self) -> int:
        return len(OPS) ** len(EDGES)

    def sample(self, rng: random.Random) -> str:
        return _format(tuple(rng.choice(OPS) for _ in EDGES))

    def mutate(self, spec: str, rng: random.Random) -> str:
        ops = list(self.parse(spec))
        i = rng.randrange(len(ops))
        ops[i] = rng.choice([o for o in OPS if o != ops[i]])
        return _format(tuple(ops))

    def descriptors(self, spec: str) -> dict[str, float]:
        ops = self.parse(spec)
        return {f"n_{op}": float(ops.count(op)) for op in OPS}

    def teachers(self) -> list[str]:
        return ["resnet56"]

    def build_teacher(self, name: str = "resnet56", seed: int = 0) -> FeatureNet:
        from .cifar_resnet import CifarResNetSpace

        self.check_teacher(name)
        return CifarResNetSpace(self.num_classes).adapt(self.input_shape).build_teacher(name, seed)
