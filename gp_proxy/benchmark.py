"""A benchmark folder: space, teacher, probe batch and ground truth, ready for a campaign."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from primitives.errors import GpProxyError

from .bench import BenchConfig
from .cache import CacheConfig, FeatureCache, load_cache
from .data import Split, get_dataset
from .groundtruth import GroundTruth, load_ground_truth
from .io import load_tensors
from .spaces import FeatureNet, SearchSpace, get_space

__all__ = ["Benchmark", "load_benchmark"]


@dataclass
class Benchmark:
    folder: Path
    space: str
    teacher: str
    truth: GroundTruth
    params: np.ndarray
    flops: np.ndarray
    teacher_space: str = ""
    input_shape: tuple[int, ...] = ()
    num_classes: int = 0

    @property
    def name(self) -> str:
        return self.folder.name

    def search_space(self) -> SearchSpace:
        """The student space adapted to this benchmark's input."""
        return get_space(self.space, tuple(self.input_shape) or None, self.num_classes or None)

    def trained_teacher(self) -> FeatureNet:
        """The benchmark's teacher with its committed weights, in eval mode."""
        teacher = self.cache_config().build_teacher(seed=0)
        teacher.load_state_dict(load_tensors(self.folder / "teacher.safetensors"))
        return teacher.eval()

    def probe(self) -> tuple[Tensor, Tensor]:
        """The committed probe batch: images and integer labels."""
        p = load_tensors(self.folder / "probe.safetensors")
        return p["images"], p["labels"].long()

    def training_split(self, train_all: Split) -> Split:
        """The fixed training subset the ground truth was trained on."""
        from .bench import _train_subset

        cfg = BenchConfig.load(self.folder / "config.json")
        idx, _ = _train_subset(train_all, min(cfg.train_size, len(train_all)), cfg.subset_seed)
        return Split(train_all.images[idx], train_all.labels[idx])

    def load_data(self, root: str | os.PathLike[str] | None = None) -> tuple[Split, Split]:
        """The benchmark's training subset and the test split, by its data recipe."""
        cfg = BenchConfig.load(self.folder / "config.json")
        ds = get_dataset(cfg.dataset)
        return (self.training_split(ds.load(root, "train", cfg.image_size)),
                ds.load(root, "test", cfg.image_size))

    def cache_config(self, teacher_init: str = "trained", init_seed: int = 0,
                     act_samples: int = 16) -> CacheConfig:
        """What determines this benchmark's features for a teacher initialisation ("trained":
        the committed weights; "random"), student init seed and activation samples."""
        weights = str(self.folder / "teacher.safetensors") if teacher_init == "trained" else None
        return CacheConfig(self.space, self.teacher, str(self.folder / "probe.safetensors"),
                           weights, init_seed, act_samples, self.teacher_space,
                           tuple(self.input_shape), self.num_classes)

    def cache(self, cache_dir: str, teacher_init: str = "trained", init_seed: int = 0,
              act_samples: int = 16) -> FeatureCache:
        return load_cache(cache_dir, self.cache_config(teacher_init, init_seed, act_samples),
                          list(self.truth.archs))


def load_benchmark(folder: str | os.PathLike[str], target: str = "kd_mean") -> Benchmark:
    """Load a folder made by ``gp-proxy bench build`` (or laid out the same way)."""
    path = Path(folder)
    for name in ("config.json", "ground_truth.csv", "probe.safetensors", "teacher.safetensors"):
        if not (path / name).exists():
            raise GpProxyError(f"{path}: not a benchmark folder (missing {name})")
    cfg = BenchConfig.load(path / "config.json")
    shape, classes, teacher_space = _adaptation(cfg)
    space = get_space(cfg.space, shape or None, classes or None)
    header = (path / "ground_truth.csv").read_text().split("\n", 1)[0].split(",")
    extra = tuple(c for c in ("kd_mean", "ce_mean") if c in header and c != target)
    truth = load_ground_truth(path / "ground_truth.csv", space, target,
                              numeric=("params", "flops", *extra))
    return Benchmark(path, cfg.space, cfg.teacher, truth,
                     truth.columns["params"], truth.columns["flops"], teacher_space, shape,
                     classes)


def _adaptation(full: BenchConfig) -> tuple[tuple[int, ...], int, str]:
    """Input shape, classes and teacher family a benchmark config declares; empty where it
    keeps the space's own (older folders and the embedded one, whose space is native to its
    data), so that their cache keys stay as they were."""
    space = get_space(full.space)
    shape = full.input_shape()
    classes = get_dataset(full.dataset).classes
    native = space.input_shape == shape and space.num_classes == classes
    return ((), 0, full.teacher_space) if native else (shape, classes, full.teacher_space)
