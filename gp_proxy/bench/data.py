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

from ..core.registry import Registry

__all__ = ["DATASETS", "DEFAULT_FMNIST_DIR", "DatasetSpec", "Split", "get_dataset",
           "load_arrays", "load_fashion_mnist", "load_image_folder", "read_idx",
           "register_dataset"]

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


def _standardise(images: np.ndarray | Tensor, size: int, stats: tuple[Tensor, Tensor] | None
                 ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """float32 ``n c size size`` images standardised per channel with ``stats`` (the training
    split's mean and std; computed here when None). uint8 images are scaled to [0, 1] first;
    ``n h w`` and ``n h w c`` layouts (c in 1 or 3) are accepted."""
    x = torch.as_tensor(np.asarray(images))
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float()
    if x.ndim == 3:
        x = x.unsqueeze(1)
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.ndim != 4:
        raise DatasetError(f"images of shape {tuple(x.shape)}: expected n c h w, n h w c or n h w")
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.adaptive_avg_pool2d(x, size) if x.shape[-1] >= size else F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False)
    if stats is None:
        stats = (x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True)
                 .clamp_min(1e-6))
    return ((x - stats[0]) / stats[1]).contiguous(), stats


def load_arrays(root: str | os.PathLike[str] | None, split: str = "train", size: int = 14
                ) -> Split:
    """A dataset given as arrays: a ``.npz`` or ``.safetensors`` file holding
    ``train_images``, ``train_labels``, ``test_images``, ``test_labels`` (images uint8 or
    float; standardised with the training split's per-channel statistics)."""
    if root is None:
        raise DatasetError("dataset 'arrays' needs --data FILE (.npz or .safetensors)")
    path = Path(root)
    if not path.is_file():
        raise DatasetError(f"{path}: no such arrays file")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:  # plain arrays only, nothing unpickled
            arrays = {k: z[k] for k in z.files}
    elif path.suffix == ".safetensors":
        from ..core.files import load_tensors

        arrays = {k: v.numpy() for k, v in load_tensors(path).items()}
    else:
        raise DatasetError(f"{path}: arrays come as .npz or .safetensors")
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        if key not in arrays:
            raise DatasetError(f"{path}: no array {key!r} (has {', '.join(sorted(arrays))})")
    train, stats = _standardise(arrays["train_images"], size, None)
    if split == "train":
        images, labels = train, arrays["train_labels"]
    elif split == "test":
        images, labels = _standardise(arrays["test_images"], size, stats)[0], arrays["test_labels"]
    else:
        raise DatasetError(f"unknown split {split!r}; choose train or test")
    y = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
    if len(y) != len(images):
        raise DatasetError(f"{path}: {len(images)} {split} images but {len(y)} labels")
    return Split(images, y)


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def load_image_folder(root: str | os.PathLike[str] | None, split: str = "train", size: int = 14
                      ) -> Split:
    """An image folder: ``root/train/<class>/*.png`` and ``root/test/<class>/*.png`` (class
    names sorted give the labels; grayscale images give one channel, colour three), resized
    to ``size`` and standardised with the training split's per-channel statistics."""
    from PIL import Image

    if root is None:
        raise DatasetError("dataset 'image-folder' needs --data FOLDER (with train/ and test/)")
    base = Path(root)

    def read(which: str) -> tuple[np.ndarray, np.ndarray]:
        folder = base / which
        classes = sorted(d.name for d in folder.iterdir() if d.is_dir()) if folder.is_dir() \
            else []
        if not classes:
            raise DatasetError(f"{folder}: no class folders (expected {folder}/<class>/*.png)")
        images, labels = [], []
        for label, name in enumerate(classes):
            for f in sorted((folder / name).iterdir()):
                if f.suffix.lower() not in _IMAGE_SUFFIXES:
                    continue
                try:
                    with Image.open(f) as raw:
                        im = raw.convert("L" if raw.mode in ("1", "L", "I", "F") else "RGB")
                        images.append(np.asarray(im.resize((size, size))))
                except OSError as exc:
                    raise DatasetError(f"{f}: not a readable image ({exc})") from None
                labels.append(label)
        shapes = {a.shape for a in images}
        if len(shapes) != 1:
            raise DatasetError(f"{folder}: images mix grayscale and colour ({sorted(shapes)})")
        return np.stack(images), np.asarray(labels)

    train_x, train_y = read("train")
    train, stats = _standardise(train_x, size, None)
    if split == "train":
        return Split(train, torch.as_tensor(train_y).long())
    if split != "test":
        raise DatasetError(f"unknown split {split!r}; choose train or test")
    test_x, test_y = read("test")
    return Split(_standardise(test_x, size, stats)[0], torch.as_tensor(test_y).long())


def _from_torch_dataset(loader: Callable[..., Any]) -> Callable[..., Split]:
    """A ``module:attr`` dataset: ``attr(root, split, size)`` returning a :class:`Split`, or
    any map-style ``torch.utils.data.Dataset`` of (image tensor, label) pairs, stacked and
    standardised with the training split's statistics."""

    def as_arrays(ds: Any) -> tuple[np.ndarray, np.ndarray]:
        items = [ds[i] for i in range(len(ds))]
        x = np.stack([np.asarray(img, dtype=np.float32) for img, _ in items])
        return x, np.asarray([int(lbl) for _, lbl in items])

    def load(root: str | os.PathLike[str] | None, split: str, size: int) -> Split:
        out = loader(root, split, size)
        if isinstance(out, Split):
            return out
        train_x, train_y = as_arrays(out if split == "train" else loader(root, "train", size))
        train, stats = _standardise(train_x, size, None)
        if split == "train":
            return Split(train, torch.as_tensor(train_y).long())
        test_x, test_y = as_arrays(out)
        return Split(_standardise(test_x, size, stats)[0], torch.as_tensor(test_y).long())

    return load


@dataclass(frozen=True)
class DatasetSpec:
    """A data recipe a benchmark names: channels and classes of its images (0: read from the
    data), and a loader ``load(root, split, size)`` returning a standardised :class:`Split`
    at ``size``×``size``."""

    name: str
    channels: int
    classes: int
    load: Callable[[str | os.PathLike[str] | None, str, int], Split]

    def input_shape(self, size: int, channels: int = 0) -> tuple[int, int, int]:
        return (self.channels or channels, size, size)

    def describe(self, root: str | os.PathLike[str] | None, size: int) -> tuple[int, int]:
        """(channels, classes), from the data where the recipe does not fix them."""
        if self.channels and self.classes:
            return self.channels, self.classes
        train = self.load(root, "train", size)
        return int(train.images.shape[1]), int(train.labels.max().item()) + 1


def _builtins() -> None:
    DATASETS.register("fashion-mnist", DatasetSpec("fashion-mnist", 1, 10, load_fashion_mnist))
    DATASETS.register("arrays", DatasetSpec("arrays", 0, 0, load_arrays))
    DATASETS.register("image-folder", DatasetSpec("image-folder", 0, 0, load_image_folder))


#: dataset name -> its recipe (register your own: ``register_dataset``)
DATASETS: Registry[DatasetSpec] = Registry("dataset", _builtins)


def register_dataset(name: str, channels: int, classes: int,
                     load: Callable[[str | os.PathLike[str] | None, str, int], Split],
                     *, replace: bool = False) -> DatasetSpec:
    """Make a dataset usable by name (``bench build --dataset``, distill, pipeline):
    ``load(root, split, size)`` returns a :class:`Split` of standardised float32 images
    ``n c size size`` and int64 labels."""
    spec = DatasetSpec(name, channels, classes, load)
    DATASETS.register(name, spec, replace=replace)
    return spec


def get_dataset(name: str) -> DatasetSpec:
    entry = DATASETS.get(name)
    if isinstance(entry, DatasetSpec):
        return entry
    if callable(entry):  # a module:attr loader (or Dataset factory): shape from the data
        return DatasetSpec(name, 0, 0, _from_torch_dataset(entry))
    raise DatasetError(f"dataset {name!r} is not a DatasetSpec or a loader function")
