"""A benchmark folder: space, teacher, probe batch and ground truth, ready for a campaign."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from primitives.errors import GpProxyError

from ..core.files import load_tensors, read_text
from ..evaluate.cache import CacheConfig, FeatureCache, load_cache
from ..spaces import FeatureNet, SearchSpace, get_space
from .build import BenchConfig
from .data import Split, get_dataset
from .groundtruth import GroundTruth, load_ground_truth

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

    def seed_columns(self, target: str | None = None) -> np.ndarray | None:
        """Architectures × seeds of ``target``'s per-seed runs (``kd_mean`` → ``kd_s0``...,
        derived targets likewise); None when the ground truth has no per-seed columns."""
        name = target or self.truth.target
        stem = name[:-len("_mean")] if name.endswith("_mean") else name
        cols = sorted((int(m.group(2)), c) for c in self.truth.columns
                      if (m := _SEED_COLUMN.match(c)) and m.group(1) == stem)
        if len(cols) < 2:
            return None
        return np.stack([self.truth.columns[c] for _, c in cols], axis=1)

    def noise_ceiling(self, idx: np.ndarray | None = None, target: str | None = None
                      ) -> dict[str, float] | None:
        """The target's reliability and Kendall ceiling from its seeds (on ``idx``)."""
        from ..evaluate.fitness import noise_ceiling

        m = self.seed_columns(target)
        return None if m is None else noise_ceiling(m, idx)

    def descriptors(self) -> np.ndarray | None:
        """Architectures × descriptors of the space (None if it declares none)."""
        space = self.search_space()
        rows = [space.descriptors(a) for a in self.truth.archs]
        if any(r is None for r in rows):
            return None
        return np.array([[r[k] for k in sorted(r)] for r in rows if r is not None])

    def search_space(self) -> SearchSpace:
        """The student space adapted to this benchmark's input."""
        return get_space(self.space, tuple(self.input_shape) or None, self.num_classes or None)

    def trained_teacher(self) -> FeatureNet:
        """The benchmark's teacher with its committed weights, in eval mode."""
        teacher = self.cache_config().build_teacher(seed=0)
        teacher.load_state_dict(load_tensors(self.folder / "teacher.safetensors"))
        return teacher.eval()

    def random_teacher(self) -> FeatureNet:
        """The benchmark's teacher architecture at a seeded random initialisation (seed 0; the
        DisWOT setting), in train mode."""
        return self.cache_config(teacher_init="random").build_teacher(seed=0).train()

    def probe(self) -> tuple[Tensor, Tensor]:
        """The committed probe batch: images and integer labels."""
        p = load_tensors(self.folder / "probe.safetensors")
        return p["images"], p["labels"].long()

    def training_split(self, train_all: Split) -> Split:
        """The fixed training subset the ground truth was trained on."""
        from .build import _train_subset

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
              act_samples: int = 16, lazy: bool = False) -> FeatureCache:
        """The benchmark's feature cache, built where missing; ``lazy``: headers only, the
        evaluator reads chunks when it needs them (see :func:`load_cache`)."""
        return load_cache(cache_dir, self.cache_config(teacher_init, init_seed, act_samples),
                          list(self.truth.archs), lazy=lazy)


def load_benchmark(folder: str | os.PathLike[str], target: str = "kd_mean") -> Benchmark:
    """Load a folder made by ``gp-proxy bench build`` (or laid out the same way)."""
    path = Path(folder)
    for name in ("config.json", "ground_truth.csv", "probe.safetensors", "teacher.safetensors"):
        if not (path / name).exists():
            raise GpProxyError(f"{path}: not a benchmark folder (missing {name})")
    cfg = BenchConfig.load(path / "config.json")
    shape, classes, teacher_space = _adaptation(cfg)
    space = get_space(cfg.space, shape or None, classes or None)
    header = [h.strip() for h in read_text(path / "ground_truth.csv").split("\n", 1)[0]
              .split(",")]
    derived = DERIVED.get(target)
    if derived is not None and target not in header:
        missing = [c for c in derived[0] if c not in header]
        if missing:
            raise GpProxyError(f"{path / 'ground_truth.csv'}: target {target!r} needs column "
                               f"{missing[0]!r}")
        load_as = derived[0][0]
    else:
        load_as = target
    # every numeric column a report may use: the means, and the per-seed runs (noise ceilings)
    extra = tuple(c for c in header if c != load_as and (c in ("kd_mean", "ce_mean")
                                                         or _SEED_COLUMN.match(c)))
    truth = load_ground_truth(path / "ground_truth.csv", space, load_as,
                              numeric=("params", "flops", *extra))
    if derived is not None and load_as != target:
        cols = dict(truth.columns)
        cols[target] = derived[1](cols)
        for s in sorted({int(m.group(2)) for c in cols if (m := _SEED_COLUMN.match(c))}):
            per = {k[:-len(f"_s{s}")] + "_mean": v for k, v in cols.items()
                   if k.endswith(f"_s{s}")}
            if all(c in per for c in derived[0]):
                cols[f"{target}_s{s}"] = derived[1](per)
        truth = GroundTruth(truth.path, truth.archs, cols, target)
    return Benchmark(path, cfg.space, cfg.teacher, truth,
                     truth.columns["params"], truth.columns["flops"], teacher_space, shape,
                     classes)


#: targets computed from ground-truth columns: name -> (columns, how); the per-seed columns
#: ``<col>_s<k>`` give the derived target's per-seed values the same way
DERIVED: dict[str, tuple[tuple[str, ...], Callable[[dict[str, np.ndarray]], np.ndarray]]] = {
    "kd_gain": (("kd_mean", "ce_mean"), lambda c: c["kd_mean"] - c["ce_mean"]),
}
_SEED_COLUMN = re.compile(r"^(\w+?)_s(\d+)$")


def _adaptation(full: BenchConfig) -> tuple[tuple[int, ...], int, str]:
    """Input shape, classes and teacher family a benchmark config declares; empty where it
    keeps the space's own (older folders and the embedded one, whose space is native to its
    data), so that their cache keys stay as they were."""
    space = get_space(full.space)
    shape = full.input_shape()
    classes = full.num_classes()
    native = space.input_shape == shape and space.num_classes == classes
    return ((), 0, full.teacher_space) if native else (shape, classes, full.teacher_space)
