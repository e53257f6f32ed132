"""Shape contracts in einops-like notation, checked by the registry-generated tests.

A contract reads ``"n c h w -> n (c h//2 w//2) 2 2"``: input axes bind sizes, output tokens
are axis names, integers, ``name//k`` (floor division) or parenthesised products. Several
inputs are separated by commas; an empty right-hand side means one number per architecture.
Contracts describe one architecture: the leading architecture axis is implicit.
"""

from __future__ import annotations

import math
import re

from .errors import ShapeError

__all__ = ["expected_shape", "is_tensor_contract", "propagate_misaligned"]

_TOKEN = re.compile(r"\(|\)|[A-Za-z_][A-Za-z0-9_]*(?://\d+)?|\d+")


def is_tensor_contract(contract: str) -> bool:
    return "[" not in contract


def _size(token: str, sizes: dict[str, int]) -> int:
    if token.isdigit():
        return int(token)
    name, _, div = token.partition("//")
    if name not in sizes:
        raise ShapeError(f"contract axis {name!r} is not bound by the inputs")
    return sizes[name] // int(div) if div else sizes[name]


def expected_shape(contract: str, input_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The per-architecture output shape that ``contract`` promises for ``input_shapes``."""
    lhs, _, rhs = contract.partition("->")
    patterns = [p.split() for p in lhs.split(",")]
    if len(patterns) != len(input_shapes):
        raise ShapeError(f"contract {contract!r} takes {len(patterns)} inputs")
    sizes: dict[str, int] = {}
    for pattern, shape in zip(patterns, input_shapes, strict=True):
        if len(pattern) != len(shape):
            raise ShapeError(f"contract {contract!r} expects rank {len(pattern)}, got {shape}")
        for axis, n in zip(pattern, shape, strict=True):
            if sizes.setdefault(axis, n) != n:
                raise ShapeError(f"contract {contract!r}: axis {axis} is {sizes[axis]} and {n}")
    out: list[int] = []
    group: list[int] | None = None
    for token in _TOKEN.findall(rhs):
        if token == "(":
            group = []
        elif token == ")":
            assert group is not None
            out.append(math.prod(group))
            group = None
        elif group is not None:
            group.append(_size(token, sizes))
        else:
            out.append(_size(token, sizes))
    return tuple(out)


def propagate_misaligned(contract: str, misaligned: frozenset[int]) -> frozenset[int]:
    """Output axes whose size may differ between teacher and student.

    ``misaligned`` holds the input's axis positions that may differ (say the channel axis
    when students are narrower than the teacher); an output axis is misaligned when its
    expression uses any of those axes. ``"n c h w -> n n"`` maps ``{1}`` to ``{}``, which is
    how the typed GP knows that ``mm(k2)`` can be compared across widths and ``k2`` cannot.
    """
    lhs, _, rhs = contract.partition("->")
    names = lhs.split(",")[0].split()
    bad = {names[i] for i in misaligned if i < len(names)}
    out: set[int] = set()
    pos = 0
    group: set[str] | None = None
    for token in _TOKEN.findall(rhs):
        if token == "(":
            group = set()
            continue
        if token == ")":
            assert group is not None
            if group & bad:
                out.add(pos)
            pos += 1
            group = None
            continue
        base = token.partition("//")[0]
        if group is not None:
            group.add(base)
        else:
            if base in bad:
                out.add(pos)
            pos += 1
    return frozenset(out)
