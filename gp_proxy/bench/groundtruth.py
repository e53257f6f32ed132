"""Ground truth from CSV: one row per architecture, accuracy (or any target) columns.

This is how users bring published benchmarks (a KD table of the ResNet depth space,
NAS-Bench-201 accuracies) and how the embedded benchmark is read back. Every problem is
reported with the file, the 1-based line number and the column.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from primitives.errors import GpProxyError

from ..core.files import read_text
from ..spaces import SearchSpace, SpecError

__all__ = ["GroundTruth", "GroundTruthError", "load_ground_truth"]


class GroundTruthError(GpProxyError):
    """A ground-truth CSV that cannot be used as it is."""


@dataclass(frozen=True)
class GroundTruth:
    """Architectures (canonical specs) and their numeric columns, in file order."""

    path: str
    archs: tuple[str, ...]
    columns: dict[str, np.ndarray]
    target: str

    @property
    def y(self) -> np.ndarray:
        return self.columns[self.target]

    def __len__(self) -> int:
        return len(self.archs)


def _column(name: str, header: list[str], path: Path, what: str) -> str:
    if name in header:
        return name
    close = [h for h in header if name.lower() in h.lower()] or \
        difflib.get_close_matches(name, header, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise GroundTruthError(f"{path}: no {what} column {name!r}{hint}; columns are "
                           f"{', '.join(header)}")


def load_ground_truth(path: str | os.PathLike[str], space: SearchSpace, target: str,
                      arch_column: str = "arch", numeric: tuple[str, ...] = ()) -> GroundTruth:
    """Read ``path``; ``target`` is the column proxies are ranked against.

    Specs are validated against ``space`` and stored canonically; ``numeric`` lists extra
    columns to parse as numbers (the target always is). Duplicate architectures, empty or
    non-finite numbers and invalid specs are errors naming the line and the column.
    """
    path = Path(path)
    if not path.is_file():
        raise GroundTruthError(f"{path}: ground-truth CSV not found")
    try:
        text = read_text(path)  # UTF-8; a spreadsheet's byte-order mark is dropped
    except GpProxyError as exc:
        raise GroundTruthError(str(exc)) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise GroundTruthError(f"{path}: empty file") from None
    arch_col = _column(arch_column, header, path, "architecture")
    wanted = [target, *(c for c in numeric if c != target)]
    cols = [_column(c, header, path, "numeric") for c in wanted]
    ai = header.index(arch_col)
    idx = {c: header.index(c) for c in cols}
    archs: list[str] = []
    values: dict[str, list[float]] = {c: [] for c in cols}
    seen: dict[str, int] = {}
    for line, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise GroundTruthError(f"{path}:{line}: {len(row)} fields, header has "
                                   f"{len(header)}")
        try:
            spec = space.validate(row[ai])
        except SpecError as exc:
            raise GroundTruthError(f"{path}:{line}: column {arch_col!r}: {exc}") from None
        if spec in seen:
            raise GroundTruthError(f"{path}:{line}: architecture {spec!r} repeats line "
                                   f"{seen[spec]}")
        seen[spec] = line
        for c in cols:
            cell = row[idx[c]].strip()
            try:
                v = float(cell)
            except ValueError:
                raise GroundTruthError(f"{path}:{line}: column {c!r}: {cell!r} is not a "
                                       "number") from None
            if not math.isfinite(v):
                raise GroundTruthError(f"{path}:{line}: column {c!r}: {cell!r} is not finite")
            values[c].append(v)
        archs.append(spec)
    if len(archs) < 3:
        raise GroundTruthError(f"{path}: {len(archs)} architectures; rank correlation needs at "
                               "least 3")
    return GroundTruth(str(path), tuple(archs), {c: np.asarray(v) for c, v in values.items()},
                       target)
