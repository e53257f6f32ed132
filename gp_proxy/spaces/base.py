"""One interface for every student search space.

A space enumerates or samples architecture specs (short strings), validates them with an
error naming the bad field, builds seeded models, counts params and FLOPs, and its models
expose named features: ``k1`` (penultimate stage), ``k2`` (last stage), ``k3`` (logits), plus
the weight layers whose activations, weights and gradients feed the instinct ops.
"""

from __future__ import annotations

import copy
import random
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import Tensor, nn

from primitives import Kind
from primitives.errors import GpProxyError

__all__ = ["FeatureAdapter", "FeatureNet", "SearchSpace", "SpecError", "count_flops",
           "count_params", "seeded_init", "with_features"]


class SpecError(GpProxyError):
    """An architecture spec that does not belong to its space."""


class FeatureNet(nn.Module):
    """A classifier that also returns its named features."""

    #: kinds of k1/k2/k3 for this family (a ViT's token maps are ``seq``)
    feature_kinds: ClassVar[dict[str, Kind]] = {"k1": Kind.FMAP, "k2": Kind.FMAP,
                                                "k3": Kind.VEC}

    @abstractmethod
    def features(self, x: Tensor) -> dict[str, Tensor]:
        """``{"k1": ..., "k2": ..., "k3": logits}`` for a batch ``x``."""

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)["k3"]


class FeatureAdapter(FeatureNet):
    """Any ``nn.Module`` as a :class:`FeatureNet`: ``features`` maps each feature name to a
    module name of ``model.named_modules()`` whose output is read by a forward hook; ``k3``
    is the model's output unless mapped."""

    def __init__(self, model: nn.Module, features: dict[str, str]) -> None:
        super().__init__()
        self.model = model
        self.names = dict(features)
        modules = dict(model.named_modules())
        for key, name in self.names.items():
            if name not in modules:
                raise GpProxyError(f"feature {key}: the model has no module {name!r}")

    def features(self, x: Tensor) -> dict[str, Tensor]:
        modules = dict(self.model.named_modules())
        captured: dict[str, Tensor] = {}
        handles = [modules[name].register_forward_hook(
            lambda m, i, o, key=key: captured.__setitem__(key, o))
            for key, name in self.names.items()]
        try:
            out = self.model(x)
        finally:
            for h in handles:
                h.remove()
        captured.setdefault("k3", out)
        return captured


def with_features(model: nn.Module, features: dict[str, str] | None) -> nn.Module:
    """``model`` itself when no mapping is given, else a :class:`FeatureAdapter`."""
    return model if not features else FeatureAdapter(model, features)


def seeded_init(model: nn.Module, seed: int) -> nn.Module:
    """Re-initialise every parameter from ``seed`` alone (not the global RNG state)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                fan_in = m.weight[0].numel()
                std = (2.0 / fan_in) ** 0.5 if isinstance(m, nn.Conv2d) else (1.0 / fan_in) ** 0.5
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d | nn.LayerNorm | nn.BatchNorm1d):
                if m.weight is not None:
                    m.weight.fill_(1.0)
                    m.bias.zero_()
            reset = getattr(m, "reset_seeded", None)
            if callable(reset):
                reset(g)
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one image (convs, linears, attention)."""
    total = 0

    def conv_hook(m: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Conv2d)
        k = m.weight[0].numel()  # in/groups * kh * kw
        total += int(out.numel() // out.shape[0]) * k

    def linear_hook(m: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Linear)
        total += int(out.numel() // out.shape[0]) * m.in_features

    def extra_hook(m: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        total += int(m.extra_macs(inp[0]))  # type: ignore[operator]

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
        if hasattr(m, "extra_macs"):
            handles.append(m.register_forward_hook(extra_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


class SearchSpace(ABC):
    """A family of student architectures identified by spec strings."""

    name: str = ""
    input_shape: tuple[int, int, int] = (3, 32, 32)
    num_classes: int = 10

    @abstractmethod
    def validate(self, spec: str) -> str:
        """The canonical form of ``spec``; raise :class:`SpecError` naming the bad field."""

    @abstractmethod
    def build(self, spec: str, seed: int = 0) -> FeatureNet:
        """A model for ``spec`` initialised from ``seed`` alone."""

    def enumerate(self) -> Iterator[str]:
        """Every spec, in a fixed order (spaces too large to list raise)."""
        raise SpecError(f"space {self.name} is too large to enumerate; sample from it")

    def size(self) -> int | None:
        return None

    @abstractmethod
    def sample(self, rng: random.Random) -> str:
        """One spec drawn uniformly from ``rng``."""

    @abstractmethod
    def mutate(self, spec: str, rng: random.Random) -> str:
        """A neighbour of ``spec`` differing in one choice."""

    def adapt(self, input_shape: tuple[int, ...] | None = None,
              num_classes: int | None = None) -> SearchSpace:
        """This space for another input (channels, height, width) and number of classes; a
        benchmark's data recipe decides both (``cifar-resnet-depth`` on 1×14×14, say)."""
        new = copy.copy(self)
        if input_shape is not None:
            c, h, w = (int(v) for v in input_shape)
            new.input_shape = (c, h, w)
        if num_classes is not None:
            new.num_classes = int(num_classes)
        return new

    def descriptors(self, spec: str) -> dict[str, float] | None:
        """Numbers describing ``spec``'s composition (widths, depths, kernel sizes...) for the
        architecture-descriptor regression baseline; None: the space declares none."""
        return None

    def teachers(self) -> list[str]:
        return []

    def build_teacher(self, name: str, seed: int = 0) -> FeatureNet:
        raise SpecError(f"space {self.name} has no teacher {name!r}")

    def check_teacher(self, name: str) -> None:
        """One line naming the choices when ``name`` is not one of :meth:`teachers`."""
        if name not in self.teachers():
            raise SpecError(f"{self.name}: unknown teacher {name!r}; choose from "
                            f"{', '.join(self.teachers())}")

    def params(self, spec: str) -> int:
        return count_params(self.build(spec))

    def flops(self, spec: str) -> int:
        return count_flops(self.build(spec), self.input_shape)
