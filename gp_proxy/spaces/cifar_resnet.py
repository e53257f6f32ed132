"""``cifar-resnet-depth``: CIFAR ResNets (widths 16/32/64, basic blocks) with depth codes.

Spec ``d1d2d3``: the number of basic blocks in each of the three stages, each in {1, 3, 5, 7}
(64 architectures, e.g. ``357``). Teachers of the same family: ResNet-20/56/110 (3, 9, 18
blocks per stage). 32×32×3 inputs; ``k1`` the stage-2 map (16×16), ``k2`` the stage-3 map
(8×8), ``k3`` the logits.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

from torch import Tensor, nn

from .base import FeatureNet, SearchSpace, SpecError, seeded_init
from .blocks import BasicBlock

__all__ = ["CifarResNet", "CifarResNetSpace"]

DEPTH_CHOICES = (1, 3, 5, 7)
WIDTHS = (16, 32, 64)
TEACHERS = {"resnet20": (3, 3, 3), "resnet56": (9, 9, 9), "resnet110": (18, 18, 18)}


class CifarResNet(FeatureNet):
    def __init__(self, blocks: tuple[int, int, int], num_classes: int = 100,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, WIDTHS[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(WIDTHS[0])
        self.relu = nn.ReLU()  # a module, as in the blocks: hooks see it
        stages = []
        c = WIDTHS[0]
        for s, (n, w) in enumerate(zip(blocks, WIDTHS, strict=True)):
            stages.append(nn.Sequential(*[BasicBlock(c if i == 0 else w, w,
                                                     2 if (i == 0 and s > 0) else 1)
                                          for i in range(n)]))
            c = w
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(c, num_classes)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        x = self.stages[0](self.relu(self.bn(self.conv(x))))
        k1 = self.stages[1](x)
        k2 = self.stages[2](k1)
        return {"k1": k1, "k2": k2, "k3": self.fc(k2.mean(dim=(2, 3)))}


class CifarResNetSpace(SearchSpace):
    name = "cifar-resnet-depth"
    input_shape = (3, 32, 32)

    def __init__(self, num_classes: int = 100) -> None:
        self.num_classes = num_classes

    def validate(self, spec: str) -> str:
        s = spec.strip()
        if len(s) != 3 or not s.isdigit():
            raise SpecError(f"{self.name}: spec {spec!r} must be three digits like '357'")
        for i, ch in enumerate(s):
            if int(ch) not in DEPTH_CHOICES:
                raise SpecError(f"{self.name}: spec {spec!r}: stage {i + 1} has {ch} blocks, "
                                f"allowed {DEPTH_CHOICES}")
        return s

    def build(self, spec: str, seed: int = 0) -> FeatureNet:
        d = [int(c) for c in self.validate(spec)]
        return seeded_init(CifarResNet((d[0], d[1], d[2]), self.num_classes,
                                       self.input_shape[0]), seed)  # type: ignore[return-value]

    def enumerate(self) -> Iterator[str]:
        for d in itertools.product(DEPTH_CHOICES, repeat=3):
            yield "".join(map(str, d))

    def size(self) -> int:
        return len(DEPTH_CHOICES) ** 3

    def sample(self, rng: random.Random) -> str:
        return "".join(str(rng.choice(DEPTH_CHOICES)) for _ in range(3))

    def mutate(self, spec: str, rng: random.Random) -> str:
        d = list(self.validate(spec))
        i = rng.randrange(3)
        d[i] = str(rng.choice([c for c in DEPTH_CHOICES if str(c) != d[i]]))
        return "".join(d)

    def descriptors(self, spec: str) -> dict[str, float]:
        d = [int(c) for c in self.validate(spec)]
        return {"blocks1": d[0], "blocks2": d[1], "blocks3": d[2]}

    def teachers(self) -> list[str]:
        return list(TEACHERS)

    def build_teacher(self, name: str = "resnet110", seed: int = 0) -> FeatureNet:
        self.check_teacher(name)
        return seeded_init(CifarResNet(TEACHERS[name], self.num_classes, self.input_shape[0]),
                           seed)  # type: ignore[return-value]
