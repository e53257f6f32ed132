"""A benchmark folder: space, teacher, probe batch and ground truth, ready for a campaign."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from primitives.errors import GpProxyError

from .cache import CacheConfig, FeatureCache, load_cache
from .groundtruth import GroundTruth, load_ground_truth
from .io import read_json
from .spaces import get_space

__all__ = ["Benchmark", "load_benchmark"]


@dataclass
class Benchmark:
    folder: Path
    space: str
    teacher: str
    truth: GroundTruth
    params: np.ndarray
    flops: np.ndarray

    def cache(self, cache_dir: str, teacher_init: str = "trained", init_seed: int = 0,
              act_samples: int = 16) -> FeatureCache:
        weights = str(self.folder / "teacher.safetensors") if teacher_init == "trained" else None
        cfg = CacheConfig(self.space, self.teacher, str(self.folder / "probe.safetensors"),
                          weights, init_seed, act_samples)
        return load_cache(cache_dir, cfg, list(self.truth.archs))


def load_benchmark(folder: str | os.PathLike[str], target: str = "kd_mean") -> Benchmark:
    """Load a folder made by ``gp-proxy bench build`` (or laid out the same way)."""
    path = Path(folder)
    for name in ("config.json", "ground_truth.csv", "probe.safetensors", "teacher.safetensors"):
        if not (path / name).exists():
            raise GpProxyError(f"{path}: not a benchmark folder (missing {name})")
    cfg = read_json(path / "config.json")
    space = get_space(cfg["space"])
    truth = load_ground_truth(path / "ground_truth.csv", space, target,
                              numeric=("params", "flops"))
    return Benchmark(path, cfg["space"], cfg.get("teacher", "resnet-t"), truth,
                     truth.columns["params"], truth.columns["flops"])
