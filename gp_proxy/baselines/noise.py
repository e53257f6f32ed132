"""The noise probe batch: what a proxy sees when the data carries no information. A proxy
that ranks students the same on it (Kendall τ near 1 between the two rankings) is a statistic
of the architecture and its initial weights, not of knowledge.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch

from ..bench.benchmark import Benchmark
from ..core.files import save_tensors
from ..evaluate.cache import FeatureCache, load_cache

__all__ = ["noise_cache", "noise_probe"]


def noise_probe(bench: Benchmark, root: str) -> Path:
    """A probe file like the benchmark's, but of seeded Gaussian noise with the real batch's
    mean and std, and random labels: what a proxy sees when the data carries no information."""
    x, y = bench.probe()
    digest = hashlib.sha1((bench.folder / "probe.safetensors").read_bytes()).hexdigest()[:12]
    path = Path(root) / f"noise-probe-{digest}.safetensors"
    if not path.exists():
        g = torch.Generator().manual_seed(20261122)
        images = torch.randn(x.shape, generator=g) * x.std() + x.mean()
        labels = torch.randint(0, int(y.max()) + 1, y.shape, generator=g)
        save_tensors(path, {"images": images, "labels": labels})
    return path


def noise_cache(bench: Benchmark, cache: FeatureCache, root: str) -> FeatureCache:
    """``cache``'s configuration with :func:`noise_probe` in place of the real probe batch."""
    config = dataclasses.replace(cache.config, probe=str(noise_probe(bench, root)))
    return load_cache(root, config, list(bench.truth.archs))

