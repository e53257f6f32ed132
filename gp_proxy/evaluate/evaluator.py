"""Batched formula evaluation over a feature cache: a formula scored in milliseconds.

``Evaluator(cache).evaluate(formulas)`` is a pure function of (formulas, cache): it returns
one :class:`EvalResult` per formula with a status and the score vector over architectures.

- Architectures whose features have the same shapes are stacked and processed in chunks of
  about ``chunk_bytes`` of input features (or ``chunk_size`` architectures when given): small
  chunks keep intermediates in the CPU cache (one giant stack is slower because of page
  faults), but chunks of one tiny network pay Python overhead per op.
- The teacher side of a subtree is computed once, not per architecture or chunk.
- The batch is evaluated chunk-major (all formulas on one chunk, then the next), so subtrees
  shared across the batch are computed once per chunk while the memo (keyed by canonical
  subtree string, within ``memo_bytes``) holds only one chunk's intermediates.
- Score vectors of per-architecture parts (the subtrees below rank/z combiners) and their
  failures are kept across calls (within ``root_bytes``): offspring that inherit a whole
  interaction or instinct part from an evaluated parent reuse it for free. Like the memo, this
  is switched off by ``memoize=False``; results are identical either way.
- Small student-side values (per-layer scalars, per-architecture vectors: at most 64 KiB per
  chunk) are kept across calls too (within ``kept_bytes``, least recently used dropped
  first), so a later generation's formula that puts a new reduction or combination over an
  evaluated inner subtree (``fro_norm(act)``) does not read the features again.
- Stochastic ops draw from a generator seeded by (seed, subtree), identical on both sides.
- A formula that fails on one architecture fails as a whole; the first cause is recorded.
- On CPU every call runs on ``threads`` torch threads (default :data:`EVAL_THREADS`), whatever
  the caller's setting: parallel reductions add up in an order set by the thread count, and
  29 of 420 random formulas scored differently in the last bits on 1 and on 2 threads, enough
  to send a campaign elsewhere. Fixed, a run reproduces on any machine with the same
  instruction set. ``threads=None`` uses the caller's setting.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from primitives import (
    FormulaError,
    GpProxyError,
    KindError,
    Node,
    Ragged,
    ShapeError,
    apply,
    canonicalize,
    gather_inputs,
    get,
    node_generator,
    paired_inputs,
    parse,
)
from primitives.instinct import zero_per_layer
from primitives.values import Value

from .allocator import release_memory, tune_allocator
from .cache import CachedArch, FeatureCache, load_students, torch_threads

__all__ = ["EVAL_THREADS", "Backend", "EvalResult", "Evaluator"]

#: torch threads of a CPU evaluation unless told otherwise (the development machine's count,
#: on which every committed campaign ran)
EVAL_THREADS = 2

@dataclass
class EvalResult:
    formula: str
    status: str
    reason: str = ""
    scores: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class _Chunk:
    cid: int
    index: np.ndarray  # positions of its architectures in the cache order
    inputs: dict[str, Value] | None  # None: loaded from disk when needed (a lazy cache)


#: student-side values of at most this size per chunk are kept across calls (see kept_bytes)
_SMALL_BYTES = 64 << 10


def _nbytes(v: Value) -> int:
    t = v.values if isinstance(v, Ragged) else v
    return t.numel() * t.element_size()


def _storage_bytes(v: Value) -> int:
    """What keeping ``v`` holds in memory: its whole buffer, which for a view (a slice, a
    diagonal, an expanded tensor) can be far larger than the view itself."""
    t = v.values if isinstance(v, Ragged) else v
    return max(t.untyped_storage().nbytes(), _nbytes(v))


def _compact(v: Value) -> Value:
    """``v`` without a larger buffer behind it (a small view would keep its base alive)."""
    t = v.values if isinstance(v, Ragged) else v
    if t.untyped_storage().nbytes() <= _nbytes(v):
        return v
    return v.with_values(t.clone()) if isinstance(v, Ragged) else t.clone()


def plan_chunks(cache: FeatureCache, size: int | None = None, chunk_bytes: int = 8 << 20
                ) -> list[list[int]]:
    """Architectures (positions in the cache) of each chunk: students with equal feature shapes,
    ``size`` at a time or about ``chunk_bytes`` of features at a time."""
    groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
    for i, s in enumerate(cache.students):
        sig = tuple(tuple(s.features[k].shape) for k in paired_inputs())
        groups.setdefault(sig, []).append(i)
    plan: list[list[int]] = []
    for members in groups.values():
        n = size
        if n is None:
            per_arch = sum(t.numel() * t.element_size()
                           for t in cache.students[members[0]].features.values())
            n = max(1, chunk_bytes // max(per_arch, 1))
        plan.extend(members[start:start + n] for start in range(0, len(members), n))
    return plan


class Evaluator:
    """Scores batches of formulas over a feature cache (see the module docstring).

    Where the per-architecture parts are computed is the ``backend``'s business (one of
    :data:`BACKENDS`: ``local`` in this process, ``processes`` on ``workers`` local worker
    processes, ``dask`` on a Dask cluster at ``scheduler`` or a new ``LocalCluster``). Every
    chunk is evaluated exactly as in one process, so scores are the same bits on every backend
    and for any number of workers (tested); only the thread count per process changes bits.
    Build one from a config with :func:`gp_proxy.evaluate.backends.make_evaluator`.

    A lazy cache (``load_cache(..., lazy=True)``) is read chunk by chunk, keeping at most
    ``held_bytes`` of loaded features (least recently used dropped first).
    """

    def __init__(self, cache: FeatureCache, chunk_size: int | None = None,
                 device: str | None = None, memo_bytes: int = 512 << 20, seed: int = 0,
                 memoize: bool = True, chunk_bytes: int = 8 << 20,
                 root_bytes: int = 64 << 20, threads: int | None = EVAL_THREADS,
                 workers: int = 1, plan: list[list[int]] | None = None,
                 kept_bytes: int = 64 << 20, backend: str = "local",
                 scheduler: str | None = None, held_bytes: int = 1 << 30) -> None:
        # with workers elsewhere this process only combines score vectors, on the CPU; each
        # worker resolves ``device`` (None: CUDA when it has one) on its own machine
        from .backends import BACKENDS, WorkerOptions  # (backends import this module)

        spec = BACKENDS.get(backend)
        here = device if spec.in_process else "cpu"
        self.device = torch.device(here or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.threads = threads if self.device.type == "cpu" else None
        # keeping freed buffers in the heap (about 15 % faster on act-heavy formulas) holds
        # the process at its peak; streaming a cache larger than ``held_bytes`` chunk by chunk
        # then ratchets up as the heap fragments (measured on 2,000 NB-201 architectures: a
        # worker's peak 2.2 GB at 500 and 3.1 GB at 2,000 with it, 1.5 GB at both without)
        streaming = cache.lazy and sum(s.nbytes for s in cache.students) > held_bytes
        if self.device.type == "cpu" and not streaming:
            tune_allocator()
        self.kinds = dict(cache.feature_kinds)
        self.n = len(cache.students)
        self.seed = seed
        self.memo_bytes = memo_bytes
        self.memoize = memoize
        self.teacher = {k: v.unsqueeze(0).to(self.device) for k, v in cache.teacher.items()}
        self.plan = plan if plan is not None else plan_chunks(cache, chunk_size, chunk_bytes)
        self._cache = cache
        self.chunks: list[_Chunk] = []  # this process's chunks (none when workers hold them)
        self.closed = False
        self.held_bytes = held_bytes
        self._held: OrderedDict[int, int] = OrderedDict()  # loaded lazy chunk -> its bytes
        self._memo: OrderedDict[tuple[str, int], Value] = OrderedDict()
        self._memo_size = 0
        # small student-side values (per-layer scalars, per-architecture vectors: at most
        # ``_SMALL_BYTES`` per chunk) kept across calls within ``kept_bytes``: a later
        # generation's formula that reuses an expensive inner subtree (``fro_norm(act)`` under
        # a new reduction or combination) does not read the features again
        self.kept_bytes = kept_bytes
        self._kept: OrderedDict[tuple[str, int], Value] = OrderedDict()
        self._kept_size = 0
        self.kept_hits = 0
        self.memo_hits = 0
        self.root_bytes = root_bytes
        # part text -> its float64 score vector over all architectures, or its failure
        self._parts: OrderedDict[str, Tensor | tuple[str, str]] = OrderedDict()
        self.part_hits = 0
        self.backend: Backend = spec.evaluations(self, cache, WorkerOptions(
            workers=workers, scheduler=scheduler, device=device, memo_bytes=memo_bytes,
            seed=seed, memoize=memoize, threads=threads, kept_bytes=kept_bytes,
            held_bytes=held_bytes))

    def _make_chunks(self, cache: FeatureCache, plan: list[list[int]]) -> list[_Chunk]:
        """This process's chunks: stacked now, or (lazy cache) when first needed."""
        if cache.lazy:
            return [_Chunk(cid, np.asarray(idx), None) for cid, idx in enumerate(plan)]
        return [_Chunk(cid, np.asarray(idx), self._stack([cache.students[i] for i in idx]))
                for cid, idx in enumerate(plan)]

    def _stack(self, archs: list[CachedArch]) -> dict[str, Value]:
        return {**gather_inputs([a.features for a in archs], "both", self.device),
                **gather_inputs([a.layers() for a in archs], "student", self.device)}

    def _inputs(self, chunk: _Chunk) -> dict[str, Value]:
        """The chunk's stacked features; a lazy chunk is read from disk and held while the
        loaded chunks fit in ``held_bytes`` (least recently used released first)."""
        if chunk.cid in self._held:
            self._held.move_to_end(chunk.cid)
        if chunk.inputs is None:
            chunk.inputs = self._stack(load_students(self._cache, chunk.index.tolist()))
            self._held[chunk.cid] = sum(_nbytes(v) for v in chunk.inputs.values())
            while sum(self._held.values()) > self.held_bytes and len(self._held) > 1:
                old, _ = self._held.popitem(last=False)
                self.chunks[old].inputs = None
        return chunk.inputs

    # ------------------------------------------------------------------ memo ---------------
    def _remember(self, key: tuple[str, int], value: Value) -> Value:
        # the teacher side (chunk -1) is always kept: it is computed once per batch, whatever
        # the setting; ``memoize`` only controls sharing of student-side subtrees
        if not self.memoize and key[1] != -1:
            return value
        # a memo entry is charged for the buffer it keeps alive, not for its view of it:
        # views of large intermediates counted by their own size once held gigabytes
        size = _storage_bytes(value)
        if size > self.memo_bytes:
            return value
        replaced = self._memo.pop(key, None)
        if replaced is not None:
            self._memo_size -= _storage_bytes(replaced)
        self._memo[key] = value
        self._memo_size += size
        small = _nbytes(value)
        if key[1] != -1 and small <= _SMALL_BYTES and self.kept_bytes > 0:
            replaced = self._kept.pop(key, None)
            if replaced is not None:
                self._kept_size -= _nbytes(replaced)
            self._kept[key] = _compact(value)
            self._kept_size += small
            while self._kept_size > self.kept_bytes:
                _, old = self._kept.popitem(last=False)
                self._kept_size -= _nbytes(old)
        while self._memo_size > self.memo_bytes:
            _, old = self._memo.popitem(last=False)
            self._memo_size -= _storage_bytes(old)
        return value

    def _keep_part(self, text: str, value: Tensor | tuple[str, str]) -> None:
        if not self.memoize:
            return
        self._parts[text] = value
        budget = max(1, self.root_bytes // (8 * self.n))  # entries of n float64 values
        while len(self._parts) > budget:
            self._parts.popitem(last=False)

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def clear_memo(self) -> None:
        self._memo.clear()
        self._memo_size = 0
        self.backend.clear_memo()
        release_memory()  # the batch's intermediates are gone: give their pages back

    def close(self) -> None:
        """Release the backend's workers (if any) and this process's stacked features and memo
        now: the in-process backend and the evaluator refer to each other, so without this
        they waited for the garbage collector (a comparison of 40 runs, one evaluator per run,
        ran out of memory that way). A closed evaluator refuses to evaluate."""
        self.backend.close()
        self.closed = True
        self.chunks = []
        self._held.clear()
        self._memo.clear()
        self._memo_size = 0
        self._kept.clear()
        self._kept_size = 0
        release_memory()

    # ------------------------------------------------------------------ evaluation ---------
    def _eval(self, node: Node, chunk: _Chunk | None, teacher_side: bool) -> Value:
        """Value of ``node`` on one chunk of students (or on the teacher if teacher_side)."""
        key = (node.text, -1 if teacher_side else chunk.cid)  # type: ignore[union-attr]
        hit = self._memo.get(key)
        if hit is not None:
            self._memo.move_to_end(key)
            self.memo_hits += 1
            return hit
        hit = self._kept.get(key)
        if hit is not None:
            self._kept.move_to_end(key)
            self.kept_hits += 1
            return hit
        op = get(node.name)
        if op.family == "input":
            env = self.teacher if teacher_side else self._inputs(chunk)  # type: ignore[arg-type]
            if node.name not in env:
                raise KindError(f"input {node.name!r} is not available on the teacher")
            return env[node.name]
        if op.pairwise:
            s = self._eval(node.args[0], chunk, False)
            t = self._eval(node.args[0], None, True)
            return self._remember(key, apply(node.name, s, t))
        same = node.self_distance_arg()
        if same is not None:
            # a distance of a value with itself: +0 per layer when the value is finite (cached
            # inputs always are; a derived value is checked, one read instead of the distance's
            # passes), so `dist_l2(act,act)` no longer reads every activation to give zeros
            x = self._eval(same, chunk, teacher_side)
            if isinstance(x, Ragged) and (not same.args or bool(torch.isfinite(x.values).all())):
                return self._remember(key, zero_per_layer(x))
        args = [self._eval(a, chunk, teacher_side) for a in node.args]
        if op.stochastic:
            first = args[0]
            device = first.device if isinstance(first, Tensor) else first.values.device
            value = apply(node.name, *args, generator=node_generator(self.seed, node.text, device))
        else:
            value = apply(node.name, *args)
        return self._remember(key, value)

    @staticmethod
    def _score_roots(node: Node, out: dict[str, Node]) -> None:
        """The maximal per-architecture score subtrees (below cross-architecture combiners)."""
        if get(node.name).cross_arch:
            for a in node.args:
                Evaluator._score_roots(a, out)
        else:
            out.setdefault(node.text, node)

    @staticmethod
    def _combine(node: Node, vectors: dict[str, Tensor]) -> Tensor:
        if get(node.name).cross_arch:
            return apply(node.name, *(Evaluator._combine(a, vectors) for a in node.args))  # type: ignore[return-value]
        return vectors[node.text]

    @staticmethod
    def _failure(exc: Exception) -> tuple[str, str]:
        if isinstance(exc, FormulaError):
            return "parse_error", str(exc)
        if isinstance(exc, ShapeError):
            return "shape_error", str(exc)
        if isinstance(exc, KindError):
            return "kind_error", str(exc)
        return "runtime_error", str(exc).splitlines()[0] if str(exc) else type(exc).__name__

    def evaluate(self, formulas: Sequence[str | Node], keep_memo: bool = False
                 ) -> list[EvalResult]:
        """Evaluate a batch, chunk by chunk: every formula of the batch on one chunk of
        architectures, then the next chunk. Subtrees shared across the batch are computed once
        per chunk, and the memo only ever holds one chunk's intermediates (plus the teacher's).

        With ``keep_memo`` the teacher-side memo survives the call (until :meth:`clear_memo`).
        """
        if self.closed:
            raise GpProxyError("this evaluator is closed: make a new one")
        with torch_threads(self.threads):
            return self._evaluate(formulas, keep_memo)

    def _evaluate(self, formulas: Sequence[str | Node], keep_memo: bool) -> list[EvalResult]:
        nodes: list[Node | None] = []
        failed: dict[int, tuple[str, str]] = {}
        for i, f in enumerate(formulas):
            try:
                node = f if isinstance(f, Node) else parse(f, self.kinds)
                nodes.append(canonicalize(node))
            except FormulaError as exc:
                nodes.append(None)
                failed[i] = self._failure(exc)
        roots: dict[str, Node] = {}
        for n in nodes:
            if n is not None:
                self._score_roots(n, roots)
        vectors: dict[str, Tensor] = {}
        root_error: dict[str, tuple[str, str]] = {}
        todo: dict[str, Node] = {}  # parts not kept from an earlier call
        for t, root in roots.items():
            known = self._parts.get(t) if self.memoize else None
            if known is None:
                vectors[t] = torch.empty(self.n, dtype=torch.float64)
                todo[t] = root
                continue
            self._parts.move_to_end(t)
            self.part_hits += 1
            if isinstance(known, Tensor):
                vectors[t] = known
            else:
                root_error[t] = known
        try:
            if todo:
                errors = self.backend.compute(todo, vectors, keep_memo)
                for text, (_, status, reason) in errors.items():
                    root_error[text] = (status, reason)
            for text in todo:
                self._keep_part(text, root_error.get(text, vectors[text]))
            results = []
            for i, n in enumerate(nodes):
                text = str(formulas[i])
                if n is None:
                    results.append(EvalResult(text, *failed[i]))
                    continue
                sub: dict[str, Node] = {}
                self._score_roots(n, sub)
                bad = next((root_error[t] for t in sub if t in root_error), None)
                if bad is not None:
                    results.append(EvalResult(text, *bad))
                    continue
                broken = next((t for t in sub if not torch.isfinite(vectors[t]).all()), None)
                # a combination must not rank around a broken part
                if len(sub) > 1 and broken is not None:
                    v = vectors[broken]
                    nan, inf = int(torch.isnan(v).sum()), int(torch.isinf(v).sum())
                    results.append(EvalResult(
                        text, "nan" if nan else "inf",
                        f"part {broken}: {nan} NaN scores" if nan
                        else f"part {broken}: {inf} infinite scores"))
                    continue
                if len(sub) > 1:  # a rank/z combination whose part is constant is that other
                    flat = next((t for t in sub if torch.isfinite(vectors[t]).all()
                                 and float(vectors[t].max() - vectors[t].min()) == 0.0), None)
                    if flat is not None:
                        results.append(EvalResult(
                            text, "constant_part", f"part {flat} is the same for every "
                            "architecture, so the combination reduces to its other part"))
                        continue
                try:
                    scores = self._combine(n, vectors).numpy().copy()
                except (GpProxyError, RuntimeError) as exc:
                    results.append(EvalResult(text, *self._failure(exc)))
                    continue
                results.append(self._status(text, scores))
            return results
        finally:
            if not keep_memo:
                self.clear_memo()

    @staticmethod
    def _status(text: str, scores: np.ndarray) -> EvalResult:
        if np.isnan(scores).any():
            return EvalResult(text, "nan", f"{int(np.isnan(scores).sum())} NaN scores", scores)
        if np.isinf(scores).any():
            return EvalResult(text, "inf", f"{int(np.isinf(scores).sum())} infinite scores",
                              scores)
        if np.ptp(scores) == 0:
            return EvalResult(text, "constant", "every architecture has the same score", scores)
        return EvalResult(text, "ok", "", scores)

    def compute_chunks(self, todo: dict[str, Node], vectors: dict[str, Tensor],
                       chunks: Sequence[_Chunk] | None = None) -> dict[str, tuple[int, str, str]]:
        """Fill ``vectors[text]`` at the architectures of ``chunks`` (default: all of this
        process's) for each part of ``todo``; returns each failed part's first failing chunk
        id, status and reason. The memo is the caller's to clear."""
        errors: dict[str, tuple[int, str, str]] = {}
        with torch.no_grad():
            for chunk in self.chunks if chunks is None else chunks:
                where = torch.from_numpy(chunk.index)
                for text, root in todo.items():
                    if text in errors:
                        continue
                    try:
                        v = self._eval(root, chunk, False)
                        assert isinstance(v, Tensor)
                        vectors[text][where] = v.detach().to("cpu", torch.float64)
                    except (GpProxyError, RuntimeError) as exc:
                        errors[text] = (chunk.cid, *self._failure(exc))
                self._drop_student_memo()
        return errors

    def _drop_student_memo(self) -> None:
        for key in [k for k in self._memo if k[1] != -1]:
            self._memo_size -= _nbytes(self._memo.pop(key))


class Backend(Protocol):
    """Where an evaluator's parts are computed (see :data:`gp_proxy.evaluate.backends.BACKENDS`)."""

    def compute(self, todo: dict[str, Node], vectors: dict[str, Tensor], keep_memo: bool
                ) -> dict[str, tuple[int, str, str]]:
        """Fill ``vectors[text]`` (over all architectures) for each part of ``todo``; return
        each failed part's first failing chunk id (in plan order), status and reason."""
        ...

    def clear_memo(self) -> None:
        """Release intermediates kept for a ``keep_memo`` call."""
        ...

    def close(self) -> None:
        """Release workers and connections."""
        ...
