"""Datasets: Fashion-MNIST from IDX files (Debian's ``dataset-fashion-mnist`` or any folder).

Images are downsampled 28×28 → 14×14 by 2×2 average pooling and standardised with the
training-set mean and std; returned as float32 tensors ``n 1 14 14`` with int64 labels.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from primitives.errors import GpProxyError

__all__ = ["DATASETS", "DEFAULT_FMNIST_DIR", "DatasetSpec", "Split", "get_dataset",
           "load_fashion_mnist", "read_idx"]

DEFAULT_FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_DTYPES: dict[int, Any] = {
    0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8",
}
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530  # of the 28x28 training set, scale [0, 1]


class DatasetError(GpProxyError):
    """A dataset that is missing or malformed."""


@dataclass(frozen=True)
class Split:
    images: Tensor  # n 1 h w, float32, standardised
    labels: Tensor  # n, int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _open(path: Path) -> bytes:
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.exists():
            data = candidate.read_bytes()
            return gzip.decompress(data) if candidate.suffix == ".gz" else data
    raise DatasetError(f"missing IDX file {path} (or {path.name}.gz)")


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped); errors name the file and the bad field."""
    raw = _open(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path}: not an IDX file (bad magic number)")
    dtype = _DTYPES.get(raw[2])
    if dtype is None:
        raise DatasetError(f"{path}: unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated header")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    count = int(np.prod(dims)) if dims else 0
    arr = np.frombuffer(raw, dtype=dtype, offset=header)
    if arr.size != count:
        raise DatasetError(f"{path}: header promises {dims} = {count} values, file has {arr.size}")
    return arr.reshape(dims)


def _downsample(images: np.ndarray, size: int) -> Tensor:
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    if x.shape[-1] != size:
        x = F.adaptive_avg_pool2d(x, size)
    return ((x - FMNIST_MEAN) / FMNIST_STD).contiguous()


def load_fashion_mnist(root: str | os.PathLike[str] | None = None, split: str = "train",
                       size: int = 14) -> Split:
    """Load a Fashion-MNIST split at ``size``×``size``."""
    folder = Path(root) if root is not None else DEFAULT_FMNIST_DIR
    if not folder.is_dir():
        raise DatasetError(
            f"Fashion-MNIST not found at {folder}: install it with "
            "'apt-get install dataset-fashion-mnist' or pass the folder holding its IDX files"
        )
    if split not in _FILES:
        raise DatasetError(f"unknown split {split!r}; choose train or test")
    img_name, lab_name = _FILES[split]
    images = read_idx(folder / img_name)
    labels = read_idx(folder / lab_name)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{folder}: images {images.shape} and labels {labels.shape} disagree")
    return Split(_downsample(images, size), torch.from_numpy(labels.astype(np.int64)))


@dataclass(frozen=True)
class DatasetSpec:
    """A data recipe a benchmark names: channels and classes of its images, and a loader
    ``load(root, split, size)`` returning a standardised :class:`Split` at ``size``×``size``."""

    name: str
    channels: int
    classes: int
    load: Callable[[str | os.PathLike[str] | None, str, int], Split]

    def input_shape(self, size: int) -> tuple[int, int, int]:
        return (self.channels, size, size)


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec("fashion-mnist", 1, 10, load_fashion_mnist),
}


def get_dataset(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose from {', '.join(sorted(DATASETS))}")
    return DATASETS[name]
