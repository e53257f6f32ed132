"""A user's own search space, written against the public API only (as a user outside the
project would): a handful of small CNNs and a wider teacher of the same shape."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from gp_proxy import FeatureNet, SearchSpace, register_space

WIDTHS, DEPTHS = (4, 8, 12), (1, 2)


class TinyNet(FeatureNet):
    def __init__(self, width: int, depth: int, classes: int, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, 1, 1), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(width, width, 3, 1, 1), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(2 * width, classes)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        k1 = self.body(x)
        k2 = self.down(k1)
        return {"k1": k1, "k2": k2, "k3": self.fc(k2.mean(dim=(2, 3)))}


@register_space("tiny-user")
class TinySpace(SearchSpace):
    name = "tiny-user"
    input_shape = (1, 8, 8)
    num_classes = 3

    def validate(self, spec: str) -> str:
        w, _, d = spec.partition("x")
        if not (w.isdigit() and d.isdigit()) or int(w) not in WIDTHS or int(d) not in DEPTHS:
            from gp_proxy.spaces import SpecError

            raise SpecError(f"tiny-user: spec {spec!r} is not WIDTHxDEPTH of {WIDTHS}x{DEPTHS}")
        return spec

    def build(self, spec: str, seed: int = 0) -> FeatureNet:
        w, _, d = self.validate(spec).partition("x")
        torch.manual_seed(seed)
        return TinyNet(int(w), int(d), self.num_classes, self.input_shape[0])

    def enumerate(self) -> Iterator[str]:
        for w in WIDTHS:
            for d in DEPTHS:
                yield f"{w}x{d}"

    def sample(self, rng: random.Random) -> str:
        return f"{rng.choice(WIDTHS)}x{rng.choice(DEPTHS)}"

    def mutate(self, spec: str, rng: random.Random) -> str:
        return self.sample(rng)

    def teachers(self) -> list[str]:
        return ["wide"]

    def build_teacher(self, name: str = "wide", seed: int = 0) -> FeatureNet:
        torch.manual_seed(seed)
        return TinyNet(16, 2, self.num_classes, self.input_shape[0])


def random_restart(campaign: object) -> None:
    """A user's campaign scheme (config ``scheme=tests.user_plugin:random_restart``): each
    generation replaces the worse half of the population by fresh random formulas."""
    c: Any = campaign
    keep = sorted(c.population, key=c.order, reverse=True)[:len(c.population) // 2]
    fresh = [c.newcomer() for _ in range(len(c.population) - len(keep))]
    c.evaluations += len(fresh)
    c.evaluate(fresh)
    c.population = keep + fresh
