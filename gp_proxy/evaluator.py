"""Batched formula evaluation over a feature cache: a formula scored in milliseconds.

``Evaluator(cache).evaluate(formulas)`` is a pure function of (formulas, cache): it returns
one :class:`EvalResult` per formula with a status and the score vector over architectures.

- Architectures whose features have the same shapes are stacked and processed in chunks of
  about ``chunk_bytes`` of input features (or ``chunk_size`` architectures when given): small
  chunks keep intermediates in the CPU cache (one giant stack is slower because of page
  faults), but chunks of one tiny network pay Python overhead per op.
- The teacher side of a subtree is computed once, not per architecture or chunk.
- Subtrees shared across the batch are computed once: values are memoised by canonical
  subtree string (and chunk) within ``memo_bytes``.
- Stochastic ops draw from a generator seeded by (seed, subtree), identical on both sides.
- A formula that fails on one architecture fails as a whole; the first cause is recorded.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from primitives import (
    FormulaError,
    Kind,
    KindError,
    Node,
    Ragged,
    ShapeError,
    apply,
    canonicalize,
    get,
    node_generator,
    parse,
)
from primitives.values import Value

from .cache import FeatureCache

__all__ = ["STATUSES", "EvalResult", "Evaluator", "count_statuses"]

STATUSES = ("ok", "nan", "inf", "constant", "shape_error", "kind_error", "parse_error",
            "runtime_error")


@dataclass
class EvalResult:
    formula: str
    status: str
    reason: str = ""
    scores: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def count_statuses(results: Sequence[EvalResult]) -> dict[str, int]:
    return dict(Counter(r.status for r in results))


@dataclass
class _Chunk:
    cid: int
    index: np.ndarray  # positions of its architectures in the cache order
    inputs: dict[str, Value]


def _nbytes(v: Value) -> int:
    t = v.values if isinstance(v, Ragged) else v
    return t.numel() * t.element_size()


class Evaluator:
    def __init__(self, cache: FeatureCache, chunk_size: int | None = None,
                 device: str | None = None, memo_bytes: int = 512 << 20, seed: int = 0,
                 memoize: bool = True, chunk_bytes: int = 2 << 20) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.kinds = dict(cache.feature_kinds)
        self.n = len(cache.students)
        self.seed = seed
        self.memo_bytes = memo_bytes
        self.memoize = memoize
        self.teacher = {k: v.unsqueeze(0).to(self.device) for k, v in cache.teacher.items()}
        self.chunks = self._make_chunks(cache, chunk_size, chunk_bytes)
        self._memo: OrderedDict[tuple[str, int], Value] = OrderedDict()
        self._memo_size = 0
        self.memo_hits = 0

    def _make_chunks(self, cache: FeatureCache, size: int | None, chunk_bytes: int
                     ) -> list[_Chunk]:
        groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        for i, s in enumerate(cache.students):
            sig = tuple(tuple(s.features[k].shape) for k in ("k1", "k2", "k3"))
            groups.setdefault(sig, []).append(i)
        chunks: list[_Chunk] = []
        for members in groups.values():
            n = size
            if n is None:
                per_arch = sum(t.numel() * t.element_size()
                               for t in cache.students[members[0]].features.values())
                n = max(1, chunk_bytes // max(per_arch, 1))
            for start in range(0, len(members), n):
                idx = members[start:start + n]
                archs = [cache.students[i] for i in idx]
                inputs: dict[str, Value] = {
                    k: torch.stack([a.features[k] for a in archs]).to(self.device)
                    for k in ("k1", "k2", "k3")}
                for name, kind, attr in (("act", Kind.ASET, "acts"), ("grad", Kind.WSET, "grads"),
                                         ("weight", Kind.WSET, "weights")):
                    r = Ragged.from_layers(kind, [getattr(a, attr) for a in archs])
                    inputs[name] = Ragged(kind, r.values.to(self.device),
                                          r.segment.to(self.device), r.n_segments,
                                          r.segment_arch.to(self.device), r.n_arch)
                chunks.append(_Chunk(len(chunks), np.asarray(idx), inputs))
        return chunks

    # ------------------------------------------------------------------ memo ---------------
    def _remember(self, key: tuple[str, int], value: Value) -> Value:
        if not self.memoize:
            return value
        size = _nbytes(value)
        if size > self.memo_bytes:
            return value
        self._memo[key] = value
        self._memo_size += size
        while self._memo_size > self.memo_bytes:
            _, old = self._memo.popitem(last=False)
            self._memo_size -= _nbytes(old)
        return value

    def clear_memo(self) -> None:
        self._memo.clear()
        self._memo_size = 0

    # ------------------------------------------------------------------ evaluation ---------
    def _eval(self, node: Node, chunk: _Chunk | None, teacher_side: bool) -> Value:
        """Value of ``node`` on one chunk of students (or on the teacher if teacher_side)."""
        key = (node.text, -1 if teacher_side else chunk.cid)  # type: ignore[union-attr]
        hit = self._memo.get(key)
        if hit is not None:
            self._memo.move_to_end(key)
            self.memo_hits += 1
            return hit
        op = get(node.name)
        if op.family == "input":
            env = self.teacher if teacher_side else chunk.inputs  # type: ignore[union-attr]
            if node.name not in env:
                raise KindError(f"input {node.name!r} is not available on the teacher")
            return env[node.name]
        if op.pairwise:
            s = self._eval(node.args[0], chunk, False)
            t = self._eval(node.args[0], None, True)
            return self._remember(key, apply(node.name, s, t))
        args = [self._eval(a, chunk, teacher_side) for a in node.args]
        if op.stochastic:
            first = args[0]
            device = first.device if isinstance(first, Tensor) else first.values.device
            value = apply(node.name, *args, generator=node_generator(self.seed, node.text, device))
        else:
            value = apply(node.name, *args)
        return self._remember(key, value)

    def _scores(self, node: Node) -> Tensor:
        """The full score vector of a score-kind node, in cache order."""
        op = get(node.name)
        if op.cross_arch:
            return apply(node.name, *(self._scores(a) for a in node.args))  # type: ignore[return-value]
        out = torch.empty(self.n, dtype=torch.float64)
        for chunk in self.chunks:
            v = self._eval(node, chunk, False)
            assert isinstance(v, Tensor)
            out[torch.from_numpy(chunk.index)] = v.detach().to("cpu", torch.float64)
        return out

    def evaluate_one(self, formula: str | Node) -> EvalResult:
        text = str(formula)
        try:
            node = formula if isinstance(formula, Node) else parse(formula, self.kinds)
            node = canonicalize(node)
            with torch.no_grad():
                scores = self._scores(node).numpy()
        except FormulaError as exc:
            return EvalResult(text, "parse_error", str(exc))
        except ShapeError as exc:
            return EvalResult(text, "shape_error", str(exc))
        except KindError as exc:
            return EvalResult(text, "kind_error", str(exc))
        except RuntimeError as exc:  # torch/einops failures inside an op (not Python bugs)
            return EvalResult(text, "runtime_error", str(exc).splitlines()[0])
        if np.isnan(scores).any():
            return EvalResult(text, "nan", f"{int(np.isnan(scores).sum())} NaN scores", scores)
        if np.isinf(scores).any():
            return EvalResult(text, "inf", f"{int(np.isinf(scores).sum())} infinite scores",
                              scores)
        if np.ptp(scores) == 0:
            return EvalResult(text, "constant", "every architecture has the same score", scores)
        return EvalResult(text, "ok", "", scores)

    def evaluate(self, formulas: Sequence[str | Node], keep_memo: bool = False
                 ) -> list[EvalResult]:
        """Evaluate a batch; shared subtrees are computed once across it.

        With ``keep_memo`` the memo survives the call (a campaign keeps it for a whole
        generation, whose offspring share their parents' subtrees) until :meth:`clear_memo`.
        """
        try:
            return [self.evaluate_one(f) for f in formulas]
        finally:
            if not keep_memo:
                self.clear_memo()
