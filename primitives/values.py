"""Kinds of value the primitives pass around, and the ragged per-layer container.

Every tensor value carries a leading architecture axis ``a`` so that one call works on a
batch of architectures; the teacher side uses ``a == 1`` and broadcasts.

=========  =====================  ===============================================
kind       layout                 what it is
=========  =====================  ===============================================
``fmap``   ``a n c h w``          a feature map (k1, k2 of convolutional nets)
``seq``    ``a n c m``            channel × position (gram rows, flattened maps, tokens)
``vec``    ``a n d``              one vector per sample (logits k3, flattened features)
``score``  ``a``                  one number per architecture
``wset``   ragged, per layer      tensors shaped like each layer's weights (weights, grads)
``aset``   ragged, per layer      each layer's activations on the probe batch
``lval``   ragged, one per layer  one number per layer
=========  =====================  ===============================================
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

import torch
from torch import Tensor

from .errors import KindError, ShapeError

__all__ = ["RAGGED_KINDS", "TENSOR_KINDS", "Kind", "Ragged", "Value", "kind_of", "recording"]


def recording(*xs: Tensor) -> bool:
    """Whether autograd records ops on any of ``xs``. Kernels finish in place on their own
    fresh temporaries (same arithmetic, less memory traffic) only when it does not, because a
    backward may need the value an in-place step overwrites."""
    return torch.is_grad_enabled() and any(x.requires_grad for x in xs)


class Kind(StrEnum):
    """The type of a value in a formula; the typed GP never connects mismatched kinds."""

    FMAP = "fmap"
    SEQ = "seq"
    VEC = "vec"
    SCORE = "score"
    WSET = "wset"
    ASET = "aset"
    LVAL = "lval"


#: tensor kinds and the rank of their tensors *including* the architecture axis
TENSOR_KINDS: dict[Kind, int] = {Kind.FMAP: 5, Kind.SEQ: 4, Kind.VEC: 3, Kind.SCORE: 1}
RAGGED_KINDS: frozenset[Kind] = frozenset({Kind.WSET, Kind.ASET, Kind.LVAL})


@dataclass(frozen=True, eq=False)
class Ragged:
    """Per-layer values of several architectures packed into one flat tensor.

    ``values[i]`` belongs to segment ``segment[i]``; segment ``s`` belongs to architecture
    ``segment_arch[s]``. For ``wset``/``aset`` a segment is one layer; for ``lval`` each
    element is one layer and its segment is its architecture, so per-segment operations
    (z-normalise, softmax) work across the layers of one architecture.
    Element-wise ops touch only ``values``, so they run on all layers of all architectures
    in one call. Invariant: segment ids never decrease along ``values`` (segments are
    contiguous runs), which lets per-segment sums use ``torch.segment_reduce``.
    """

    kind: Kind
    values: Tensor
    segment: Tensor
    n_segments: int
    segment_arch: Tensor
    n_arch: int

    def __post_init__(self) -> None:
        if self.kind not in RAGGED_KINDS:
            raise KindError(f"Ragged cannot hold kind {self.kind}")
        if self.values.dim() != 1 or self.segment.shape != self.values.shape:
            raise ShapeError(
                f"ragged values {tuple(self.values.shape)} and segment ids "
                f"{tuple(self.segment.shape)} must be 1-D and of equal length"
            )
        if self.segment_arch.shape != (self.n_segments,):
            raise ShapeError(
                f"segment_arch has shape {tuple(self.segment_arch.shape)}, "
                f"expected ({self.n_segments},)"
            )

    @cached_property
    def lengths(self) -> Tensor:
        """Number of elements of each segment (computed once per layout: values derived by
        :meth:`with_values` ask the value they were derived from)."""
        origin = self.__dict__.get("_layout_of")
        if origin is not None:
            return origin.lengths
        return torch.bincount(self.segment, minlength=self.n_segments)

    @cached_property
    def lengths_list(self) -> list[int]:
        return [int(n) for n in self.lengths.tolist()]

    def with_values(self, values: Tensor, kind: Kind | None = None) -> Ragged:
        """Same layout, new values (the result of an element-wise op)."""
        out = Ragged(
            kind or self.kind, values, self.segment, self.n_segments, self.segment_arch,
            self.n_arch,
        )
        # the layout's lengths are computed (a bincount over every element) at most once, on
        # the value the chain started from, however long the chain of element-wise ops
        out.__dict__["_layout_of"] = self.__dict__.get("_layout_of", self)
        for name in ("lengths", "lengths_list"):
            if name in self.__dict__:
                out.__dict__[name] = self.__dict__[name]
        return out

    def on(self, device: torch.device | str) -> Ragged:
        """The same value on ``device``; lengths already known travel with it."""
        out = Ragged(self.kind, self.values.to(device), self.segment.to(device),
                     self.n_segments, self.segment_arch.to(device), self.n_arch)
        if "lengths" in self.__dict__:
            out.__dict__["lengths"] = self.lengths.to(device)
        if "lengths_list" in self.__dict__:
            out.__dict__["lengths_list"] = self.lengths_list
        return out

    def same_layout(self, other: Ragged) -> bool:
        return (
            self.n_segments == other.n_segments
            and self.n_arch == other.n_arch
            and self.values.shape == other.values.shape
            and (self.segment is other.segment or bool(torch.equal(self.segment, other.segment)))
        )

    @staticmethod
    def from_layers(kind: Kind, per_arch: list[list[Tensor]]) -> Ragged:
        """Pack ``per_arch[a][l]`` (any shapes) into one ragged value of ``kind``."""
        flats: list[Tensor] = []
        seg: list[Tensor] = []
        seg_arch: list[int] = []
        s = 0
        for a, layers in enumerate(per_arch):
            for t in layers:
                flat = t.detach().reshape(-1)
                flats.append(flat)
                seg.append(torch.full((flat.numel(),), s, dtype=torch.long, device=flat.device))
                seg_arch.append(a)
                s += 1
        if not flats:
            raise ShapeError("a ragged value needs at least one layer")
        device = flats[0].device
        if kind is Kind.LVAL:
            values = torch.cat(flats)
            arch = torch.tensor(seg_arch, dtype=torch.long, device=device)
            return Ragged(kind, values, arch, len(per_arch),
                          torch.arange(len(per_arch), device=device), len(per_arch))
        out = Ragged(kind, torch.cat(flats), torch.cat(seg), s,
                     torch.tensor(seg_arch, dtype=torch.long, device=device), len(per_arch))
        sizes = [f.numel() for f in flats]
        out.__dict__["lengths"] = torch.tensor(sizes, dtype=torch.long, device=device)
        out.__dict__["lengths_list"] = sizes
        return out


Value = Tensor | Ragged


def kind_of(value: Value) -> Kind:
    """The kind of a runtime value (tensors by rank, ragged values by their tag)."""
    if isinstance(value, Ragged):
        return value.kind
    for kind, rank in TENSOR_KINDS.items():
        if value.dim() == rank:
            return kind
    raise KindError(f"a tensor of rank {value.dim()} is not a value of any kind")
