"""Shared factories for values of every kind (seeded, never mocked)."""

from __future__ import annotations

import pytest
import torch

from primitives import Kind, Ragged

A = 3  # architectures in a batched call
SHAPES = {  # per-architecture shapes of the tensor kinds
    Kind.FMAP: (4, 6, 8, 8),
    Kind.SEQ: (4, 6, 10),
    Kind.VEC: (4, 7),
}
#: layer shapes per architecture for the ragged kinds (different depths on purpose)
LAYERS = {
    Kind.WSET: [[(6, 3, 3, 3), (10, 6)], [(8, 3, 3, 3), (8, 8, 1, 1), (10, 8)], [(5, 7)]],
    Kind.ASET: [[(4, 6, 8, 8), (4, 10)], [(4, 8, 8, 8), (4, 8, 4, 4), (4, 10)], [(4, 5)]],
    Kind.LVAL: [[(1,), (1,)], [(1,), (1,), (1,)], [(1,)]],
}
FAMILIES = ("random", "zero", "huge", "negative")


def _fill(shape: tuple[int, ...], family: str, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(shape, generator=g)
    if family == "zero":
        return torch.zeros(shape)
    if family == "huge":
        return x * 1e6
    if family == "negative":
        return -x.abs() - 0.1
    return x


def make_layers(kind: Kind, family: str = "random", seed: int = 0) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[_fill(s, family, g) for s in arch] for arch in LAYERS[kind]]


def make_value(kind: Kind, family: str = "random", seed: int = 0, archs: int = A
               ) -> torch.Tensor | Ragged:
    """A value of ``kind`` with ``archs`` architectures (ragged kinds: always 3)."""
    if kind in LAYERS:
        return Ragged.from_layers(kind, make_layers(kind, family, seed))
    g = torch.Generator().manual_seed(seed)
    if kind is Kind.SCORE:
        return _fill((archs,), family, g)
    return _fill((archs, *SHAPES[kind]), family, g)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
