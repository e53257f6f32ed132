"""Shared factories for values of every kind (seeded, never mocked)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import primitives
from gp_proxy.core.files import save_tensors
from gp_proxy.evaluate.cache import CacheConfig, FeatureCache, load_cache
from gp_proxy.evolve.pset import build_pset
from primitives import Kind, Ragged

from .tiny_benchmark import make_tiny_benchmark

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


#: the students of the small feature cache (``cache`` fixture) the evaluator tests run on
EVAL_ARCHS = ["w8-d111-k3", "w8-d211-k3", "w12-d111-k5", "w8-d123-k5", "w16-d111-k3",
              "w12-d321-k3", "w8-d111-k5"]


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 12-image probe batch for the FMNIST space."""
    path = tmp_path_factory.mktemp("probe") / "probe.safetensors"
    g = torch.Generator().manual_seed(0)
    save_tensors(path, {"images": torch.randn(12, 1, 14, 14, generator=g),
                        "labels": torch.randint(0, 10, (12,), generator=g)})
    return path


@pytest.fixture(scope="module")
def cache(probe: Path, tmp_path_factory: pytest.TempPathFactory) -> FeatureCache:
    """The feature cache of EVAL_ARCHS on ``probe`` (ResNet teacher, 4 activation samples)."""
    root = tmp_path_factory.mktemp("cache")
    cfg = CacheConfig("fmnist-cnn", "resnet-t", str(probe), act_samples=4)
    return load_cache(root, cfg, EVAL_ARCHS)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny benchmark folder (see tiny_benchmark.py) for campaign tests."""
    return make_tiny_benchmark(tmp_path_factory.mktemp("bench") / "tiny")


def random_formulas(cache: FeatureCache, n: int, rng: random.Random) -> list[str]:
    """Distinct canonical formulas from ``n`` trees (depth 2-5) of the campaign's typed
    generator, given the cache's feature kinds and misaligned axes."""
    ps = build_pset("both", input_kinds=cache.feature_kinds, misaligned=cache.misaligned(),
                    smallest_map=cache.smallest_map())
    return list(dict.fromkeys(str(primitives.canonicalize(ps.to_node(ps.random_tree(
        rng, 2, 5)))) for _ in range(n)))


def _cfg(bench: Path, cache: Path, **kw: object) -> list[str]:
    """Campaign config overrides for a small, fast campaign on ``bench``."""
    base = {"benchmark": str(bench), "cache_dir": str(cache), "population": 12,
            "generations": 3, "act_samples": 2, "test_fraction": 0.3, "folds": 3}
    base.update(kw)
    return [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in base.items()]
