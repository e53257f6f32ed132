"""``fmnist-cnn``: the embedded benchmark's plain CNN students and their residual teacher.

Spec ``w{base}-d{d1}{d2}{d3}-k{kernel}``: three stages of conv-BN-ReLU layers, ``d_s`` layers in
stage ``s`` (1-3), widths ``base · 2^s`` (base in 8, 12, 16), kernel 3 or 5; stages 2 and 3
start with stride 2 (14×14 → 7×7 → 4×4 on 14×14 inputs). 3 × 27 × 2 = 162 architectures.
``k1`` is the stage-2 map, ``k2`` the stage-3 map, ``k3`` the logits.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from .base import FeatureNet, SearchSpace, SpecError, seeded_init
from .blocks import BasicBlock, ConvBNReLU

__all__ = ["FmnistCNN", "FmnistCNNSpace", "FmnistTeacher", "WideShallowTeacher"]

WIDTHS = (8, 12, 16)
DEPTHS = (1, 2, 3)
KERNELS = (3, 5)
TEACHER_WIDTHS = (32, 64, 128)
WIDE_WIDTHS = (64, 128, 256)
_SPEC = re.compile(r"^w(?P<w>\d+)-d(?P<d>\d{3})-k(?P<k>\d+)$")


class FmnistCNN(FeatureNet):
    def __init__(self, base: int, depths: tuple[int, int, int], kernel: int,
                 num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        stages = []
        c = in_channels
        for s, d in enumerate(depths):
            width = base * 2**s
            layers = [ConvBNReLU(c if i == 0 else width, width, kernel,
                                 2 if (i == 0 and s > 0) else 1) for i in range(d)]
            stages.append(nn.Sequential(*layers))
            c = width
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(c, num_classes)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        x = self.stages[0](x)
        k1 = self.stages[1](x)
        k2 = self.stages[2](k1)
        return {"k1": k1, "k2": k2, "k3": self.fc(torch.flatten(k2.mean(dim=(2, 3)), 1))}


class FmnistTeacher(FeatureNet):
    """Residual teacher: 3x3 stem, three stages of two basic blocks, widths 32/64/128."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = ConvBNReLU(in_channels, TEACHER_WIDTHS[0], 3)
        stages = []
        c = TEACHER_WIDTHS[0]
        for s, w in enumerate(TEACHER_WIDTHS):
            stages.append(nn.Sequential(BasicBlock(c, w, 1 if s == 0 else 2), BasicBlock(w, w)))
            c = w
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(c, num_classes)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        x = self.stages[0](self.stem(x))
        k1 = self.stages[1](x)
        k2 = self.stages[2](k1)
        return {"k1": k1, "k2": k2, "k3": self.fc(k2.mean(dim=(2, 3)))}


class WideShallowTeacher(FeatureNet):
    """A second teacher family: no residuals, one wide conv-BN-ReLU per stage after a stem
    (widths 64/128/256, five weight layers against the residual teacher's fourteen)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = ConvBNReLU(in_channels, WIDE_WIDTHS[0], 3)
        self.stages = nn.ModuleList(
            ConvBNReLU(WIDE_WIDTHS[max(s - 1, 0)], w, 3, 1 if s == 0 else 2)
            for s, w in enumerate(WIDE_WIDTHS))
        self.fc = nn.Linear(WIDE_WIDTHS[-1], num_classes)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        x = self.stages[0](self.stem(x))
        k1 = self.stages[1](x)
        k2 = self.stages[2](k1)
        return {"k1": k1, "k2": k2, "k3": self.fc(k2.mean(dim=(2, 3)))}


# teacher name -> its class; both expose k1/k2 at the students' stage-2/3 resolutions
TEACHERS: dict[str, type[FeatureNet]] = {"resnet-t": FmnistTeacher,
                                         "wide-cnn": WideShallowTeacher}


class FmnistCNNSpace(SearchSpace):
    name = "fmnist-cnn"
    input_shape = (1, 14, 14)
    num_classes = 10

    def validate(self, spec: str) -> str:
        m = _SPEC.match(spec.strip())
        if m is None:
            raise SpecError(f"{self.name}: spec {spec!r} is not of the form w16-d123-k3")
        w, d, k = int(m["w"]), tuple(int(c) for c in m["d"]), int(m["k"])
        if w not in WIDTHS:
            raise SpecError(f"{self.name}: spec {spec!r}: base width {w} not in {WIDTHS}")
        for s, depth in enumerate(d):
            if depth not in DEPTHS:
                raise SpecError(f"{self.name}: spec {spec!r}: stage {s + 1} depth {depth} "
                                f"not in {DEPTHS}")
        if k not in KERNELS:
            raise SpecError(f"{self.name}: spec {spec!r}: kernel {k} not in {KERNELS}")
        return f"w{w}-d{''.join(map(str, d))}-k{k}"

    def _parts(self, spec: str) -> tuple[int, tuple[int, int, int], int]:
        m = _SPEC.match(self.validate(spec))
        assert m is not None
        d = tuple(int(c) for c in m["d"])
        return int(m["w"]), (d[0], d[1], d[2]), int(m["k"])

    def build(self, spec: str, seed: int = 0) -> FeatureNet:
        w, d, k = self._parts(spec)
        model = FmnistCNN(w, d, k, self.num_classes, self.input_shape[0])
        return seeded_init(model, seed)  # type: ignore[return-value]

    def enumerate(self) -> Iterator[str]:
        for w, d, k in itertools.product(WIDTHS, itertools.product(DEPTHS, repeat=3), KERNELS):
            yield f"w{w}-d{''.join(map(str, d))}-k{k}"

    def size(self) -> int:
        return len(WIDTHS) * len(DEPTHS) ** 3 * len(KERNELS)

    def sample(self, rng: random.Random) -> str:
        d = "".join(str(rng.choice(DEPTHS)) for _ in range(3))
        return f"w{rng.choice(WIDTHS)}-d{d}-k{rng.choice(KERNELS)}"

    def mutate(self, spec: str, rng: random.Random) -> str:
        w, d, k = self._parts(spec)
        field = rng.randrange(5)
        if field == 0:
            w = rng.choice([x for x in WIDTHS if x != w])
        elif field == 4:
            k = rng.choice([x for x in KERNELS if x != k])
        else:
            dl = list(d)
            dl[field - 1] = rng.choice([x for x in DEPTHS if x != dl[field - 1]])
            d = (dl[0], dl[1], dl[2])
        return f"w{w}-d{''.join(map(str, d))}-k{k}"

    def descriptors(self, spec: str) -> dict[str, float]:
        w, d, k = self._parts(spec)
        return {"log_width": math.log(w), "depth1": d[0], "depth2": d[1], "depth3": d[2],
                "kernel": k}

    def teachers(self) -> list[str]:
        return list(TEACHERS)

    def build_teacher(self, name: str = "resnet-t", seed: int = 0) -> FeatureNet:
        self.check_teacher(name)
        model = TEACHERS[name](self.num_classes, self.input_shape[0])
        return seeded_init(model, seed)  # type: ignore[return-value]
