"""Evaluation backends: where an evaluator's per-architecture parts are computed.

One seam, three built-in backends (a registry users extend, like every other plug-in):

- ``local`` — in this process (the default);
- ``processes`` — ``workers`` local worker processes, each holding a share of the chunks
  (loaded once, from the cache folder, when the worker starts);
- ``dask`` — a Dask cluster: the scheduler at ``scheduler``, or a new ``LocalCluster`` sized
  to the machine. A worker plugin gives every worker (also one that joins later, or a
  replacement for a killed one) its own reader of the feature cache; tasks are pure, one per
  (batch of parts, chunk), keyed by their content, and retried on another worker when a worker
  dies, so a lost worker costs a retry, never a different result.

Every backend evaluates each chunk exactly as one process would (same chunks, same thread
count), so scores are the same bits on all of them (tested). :func:`make_evaluator` builds an
evaluator from a campaign config, the one way the project constructs one.

The same seam fans out other pure units of work (feature-cache builds, ground-truth
trainings): :func:`executor` is a ``concurrent.futures`` executor on the chosen backend.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from primitives import GpProxyError, Node, canonicalize, parse

from ..core.registry import Registry
from .cache import CacheConfig, FeatureCache, load_cache, torch_threads
from .evaluator import Backend, Evaluator

if TYPE_CHECKING:
    from ..config import CampaignConfig

__all__ = ["BACKENDS", "BackendSpec", "InProcess", "Processes", "WorkerOptions", "compute_parts",
           "executor", "fanned_out", "make_evaluator", "optional_executor"]


@dataclass(frozen=True)
class WorkerOptions:
    """How a backend runs: its workers and the options of each worker's evaluator."""

    workers: int = 1
    scheduler: str | None = None  # dask: a running scheduler's address (None: LocalCluster)
    device: str | None = None  # None: each worker takes CUDA when its machine has it
    memo_bytes: int = 512 << 20
    seed: int = 0
    memoize: bool = True
    threads: int | None = 2
    kept_bytes: int = 64 << 20
    held_bytes: int = 1 << 30
    retries: int = 3  # dask: attempts of a task after its worker died or it raised

    def worker_evaluator(self, share: int) -> dict[str, Any]:
        """Keyword arguments of a worker's own (``local``) evaluator holding 1/``share`` of the
        work: the memory budgets are split so that all workers together keep the bound."""
        return dict(device=self.device, memo_bytes=self.memo_bytes, seed=self.seed,
                    memoize=self.memoize, threads=self.threads,
                    kept_bytes=self.kept_bytes // share,
                    held_bytes=max(1, self.held_bytes // share))


#: ``executor(workers, scheduler, retries, initializer, initargs)``: a context manager giving
#: a ``concurrent.futures`` executor on the backend's workers
ExecutorFactory = Callable[..., AbstractContextManager[Executor]]


@dataclass(frozen=True)
class BackendSpec:
    """One place work can run. ``evaluations(evaluator, cache, options)`` computes an
    evaluator's parts there; ``executor`` runs other pure units of work (cache entries,
    trainings, searches) there. ``in_process``: the work stays in this process (nothing is
    sent; the evaluator's device is used here). ``cluster``: the workers are a cluster's, so
    it is used whatever ``workers`` says and every unit is queued at once (its scheduler
    balances them) rather than a few ahead per local process."""

    evaluations: Callable[[Evaluator, FeatureCache, WorkerOptions], Backend]
    executor: ExecutorFactory
    in_process: bool = False
    cluster: bool = False


#: backend name -> :class:`BackendSpec` (``BACKENDS.register`` adds one)
BACKENDS: Registry[BackendSpec] = Registry("evaluation backend")


def make_evaluator(cache: FeatureCache, config: CampaignConfig | None = None,
                   **overrides: Any) -> Evaluator:
    """The evaluator a campaign config asks for (chunking, device, seed, threads, backend,
    workers, scheduler, held bytes); ``overrides`` replace config keys (``seed=3``)."""
    from ..config import CampaignConfig

    c = (config or CampaignConfig()).model_copy(update=overrides)
    return Evaluator(cache, c.chunk_size, None if c.device == "auto" else c.device,
                     seed=c.seed, chunk_bytes=c.chunk_bytes, threads=c.threads,
                     workers=c.workers, backend=c.backend, scheduler=c.scheduler,
                     held_bytes=c.held_bytes)


# ---------------------------------------------------------------------- in-process ---------
class InProcess:
    """The evaluator computes its own chunks."""

    def __init__(self, ev: Evaluator, cache: FeatureCache, options: WorkerOptions) -> None:
        if options.workers > 1:
            raise GpProxyError(f"workers={options.workers} needs backend=processes or dask "
                               "(the local backend computes in this process)")
        ev.chunks = ev._make_chunks(cache, ev.plan)
        self.ev = ev

    def compute(self, todo: dict[str, Node], vectors: dict[str, Tensor], keep_memo: bool
                ) -> dict[str, tuple[int, str, str]]:
        return self.ev.compute_chunks(todo, vectors)  # evaluate() clears the memo after

    def clear_memo(self) -> None:
        pass

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------- local processes ----
_WORKER: Evaluator | None = None


def _worker_start(root: str, config: dict[str, Any], archs: list[str], plan: list[list[int]],
                  lazy: bool, options: dict[str, Any]) -> None:
    """Initialise one worker process: load its architectures' features, build its chunks."""
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if options.get("threads") is not None:
        torch.set_num_threads(options["threads"])
    cache = load_cache(root, CacheConfig(**config), archs, quiet=True, lazy=lazy)
    _WORKER = Evaluator(cache, plan=plan, **options)


def compute_parts(ev: Evaluator, texts: list[str], chunks: list[Any] | None = None
                  ) -> tuple[dict[str, Tensor], dict[str, tuple[int, str, str]]]:
    """A worker's share of a batch: the parts ``texts`` on ``chunks`` of its own evaluator (all
    of them by default), computed as one process computes them; full-length vectors and each
    failed part's first failing chunk. The memo is the caller's to clear."""
    todo = {t: canonicalize(parse(t, ev.kinds)) for t in texts}
    vectors = {t: torch.empty(ev.n, dtype=torch.float64) for t in texts}
    with torch_threads(ev.threads):
        errors = ev.compute_chunks(todo, vectors, chunks)
    return vectors, errors


def _worker_compute(texts: list[str], keep_memo: bool
                    ) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, str, str]]]:
    ev = _WORKER
    assert ev is not None
    try:
        vectors, errors = compute_parts(ev, texts)
    finally:
        if not keep_memo:
            ev.clear_memo()
    return {t: v.numpy() for t, v in vectors.items() if t not in errors}, errors


def _worker_clear() -> None:
    if _WORKER is not None:
        _WORKER.clear_memo()


def _balance(sizes: list[int], bins: int) -> list[list[int]]:
    """Chunk ids per worker: largest first to the least-loaded (ties: lowest index)."""
    owned: list[list[int]] = [[] for _ in range(min(bins, len(sizes)))]
    load = [0] * len(owned)
    for cid in sorted(range(len(sizes)), key=lambda c: (-sizes[c], c)):
        w = min(range(len(owned)), key=lambda k: (load[k], k))
        owned[w].append(cid)
        load[w] += sizes[cid]
    return [sorted(o) for o in owned]


def _chunk_sizes(cache: FeatureCache, plan: list[list[int]]) -> list[int]:
    """Bytes of each chunk's features (what balancing the workers' loads weighs)."""
    return [sum(cache.students[i].nbytes for i in idx) for idx in plan]


def _needs_folder(cache: FeatureCache, backend: str) -> str:
    if cache.folder is None:
        raise GpProxyError(f"backend={backend} needs a cache loaded from disk (load_cache), "
                           "so that workers can load their share")
    return str(cache.folder.parent)


@dataclass
class _Shard:
    chunk_ids: list[int]  # global chunk ids, in the order the worker numbers them
    index: np.ndarray  # positions in the cache of the worker's architectures
    executor: ProcessPoolExecutor


class Processes:
    """Chunks spread over worker processes (one single-process executor each, so that each
    request reaches the worker that holds the chunks). Chunks go to the least-loaded worker,
    largest first; the split changes nothing in the scores."""

    def __init__(self, ev: Evaluator, cache: FeatureCache, options: WorkerOptions) -> None:
        root = _needs_folder(cache, "processes")
        plan = ev.plan
        owned = _balance(_chunk_sizes(cache, plan), options.workers)
        ctx = mp.get_context("spawn")
        kwargs = options.worker_evaluator(len(owned))
        self.shards: list[_Shard] = []
        for cids in owned:
            positions = [i for c in cids for i in plan[c]]
            local: list[list[int]] = []
            start = 0
            for c in cids:
                local.append(list(range(start, start + len(plan[c]))))
                start += len(plan[c])
            executor = ProcessPoolExecutor(
                max_workers=1, mp_context=ctx, initializer=_worker_start,
                initargs=(root, asdict(cache.config),
                          [cache.students[i].spec for i in positions], local, cache.lazy,
                          kwargs))
            self.shards.append(_Shard(cids, np.asarray(positions), executor))
        self._finalizer = weakref.finalize(self, Processes._shutdown,
                                           [s.executor for s in self.shards])

    @staticmethod
    def _shutdown(executors: list[ProcessPoolExecutor], wait: bool = False) -> None:
        for ex in executors:
            ex.shutdown(wait=wait, cancel_futures=True)

    def _on_all(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """``fn(*args)`` on every worker; a worker that died is a one-line error."""
        try:
            futures: list[Future[Any]] = [s.executor.submit(fn, *args) for s in self.shards]
            return [f.result() for f in futures]
        except BrokenProcessPool as exc:
            raise GpProxyError(
                f"an evaluation worker process died ({exc}): out of memory, or a script that "
                "starts workers without `if __name__ == '__main__':`? Try fewer workers, or "
                "backend=dask (it retries a lost worker's tasks)") from None

    def compute(self, todo: dict[str, Node], vectors: dict[str, Tensor], keep_memo: bool
                ) -> dict[str, tuple[int, str, str]]:
        outs = self._on_all(_worker_compute, list(todo), keep_memo)
        errors: dict[str, tuple[int, str, str]] = {}
        for shard, (vecs, errs) in zip(self.shards, outs, strict=True):
            where = torch.from_numpy(shard.index)
            for text, v in vecs.items():
                vectors[text][where] = torch.from_numpy(v)
            for text, (local, status, reason) in errs.items():
                _first(errors, text, shard.chunk_ids[local], status, reason)
        return errors

    def clear_memo(self) -> None:
        # best effort: called from ``finally`` clauses, where a dead worker must not hide the
        # error being raised (the next computation reports it)
        with contextlib.suppress(GpProxyError):
            self._on_all(_worker_clear)

    def close(self) -> None:
        """Stop the workers and wait until they have exited."""
        if self._finalizer.detach() is not None:
            Processes._shutdown([s.executor for s in self.shards], wait=True)


def _first(errors: dict[str, tuple[int, str, str]], text: str, cid: int, status: str,
           reason: str) -> None:
    """Keep the failure of the first chunk in plan order, as one process records it."""
    if text not in errors or cid < errors[text][0]:
        errors[text] = (cid, status, reason)




def _dask_module() -> Any:
    """gp_proxy.evaluate.dask, imported only when asked for: Dask is an optional extra."""
    try:
        from . import dask
    except ImportError as exc:
        raise GpProxyError(f"backend=dask needs Dask ({exc}): pip install "
                           "'gp-proxy[dask]'") from None
    return dask


def _dask(ev: Evaluator, cache: FeatureCache, options: WorkerOptions) -> Backend:
    return _dask_module().DaskBackend(ev, cache, options)




# ---------------------------------------------------------------------- other work ---------
@contextlib.contextmanager
def _here(workers: int, scheduler: str | None, retries: int,
          initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]
          ) -> Iterator[Executor]:
    """Units one at a time in this process."""
    if initializer is not None:
        initializer(*initargs)
    with ThreadPoolExecutor(max_workers=1) as ex:
        yield ex


@contextlib.contextmanager
def _spawned(workers: int, scheduler: str | None, retries: int,
             initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]
             ) -> Iterator[Executor]:
    """Units in ``workers`` spawned local processes."""
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=initializer, initargs=initargs) as ex:
        yield ex


@contextlib.contextmanager
def _on_dask(workers: int, scheduler: str | None, retries: int,
             initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]
             ) -> Iterator[Executor]:
    """Units on a Dask cluster (a unit whose worker died runs again elsewhere)."""
    dask = _dask_module()
    client = dask.CLIENTS.acquire(scheduler, workers)
    try:
        with dask.DaskExecutor(client, retries, initializer, initargs) as ex:
            yield ex
    finally:
        dask.CLIENTS.release(scheduler, workers)


BACKENDS.register("local", BackendSpec(InProcess, _here, in_process=True))
BACKENDS.register("processes", BackendSpec(Processes, _spawned))
BACKENDS.register("dask", BackendSpec(_dask, _on_dask, cluster=True))


def executor(backend: str = "processes", workers: int = 2, scheduler: str | None = None,
             retries: int = 2, initializer: Callable[..., Any] | None = None,
             initargs: tuple[Any, ...] = ()) -> AbstractContextManager[Executor]:
    """A ``concurrent.futures`` executor on a backend, for pure units of work whose results the
    caller writes atomically as they arrive (a cache entry, a training's run file), so a lost
    worker loses only the unit it was running: ``local`` runs them in this process one at a
    time, ``processes`` in ``workers`` spawned processes, ``dask`` on the cluster (a unit whose
    worker died runs again elsewhere, up to ``retries`` times for an exception).
    ``initializer(*initargs)`` runs once per worker process before its first unit."""
    return BACKENDS.get(backend).executor(workers, scheduler, retries, initializer, initargs)


@contextlib.contextmanager
def optional_executor(backend: str = "processes", workers: int = 1,
                      scheduler: str | None = None) -> Iterator[Executor | None]:
    """:func:`executor`, or None where one local process is asked for: then the caller runs
    its units in this process, as it always did (a cluster is used whatever its size)."""
    if workers <= 1 and not BACKENDS.get(backend).cluster:
        yield None
        return
    with executor(backend, workers, scheduler) as ex:
        yield ex


# ---------------------------------------------------------------------- batch scorers ------
_SCORER: Callable[[list[str]], list[float]] | None = None


def _set_scorer(blob: bytes) -> None:
    """A worker's copy of the scorer (a closure over models and data: cloudpickled by this
    project for its own workers, never read from a user's file)."""
    import cloudpickle

    global _SCORER
    _SCORER = cloudpickle.loads(blob)


def _score_part(specs: list[str]) -> list[float]:
    assert _SCORER is not None
    return _SCORER(specs)


@contextlib.contextmanager
def fanned_out(scorer: Callable[[list[str]], list[float]], backend: str = "local",
               workers: int = 1, scheduler: str | None = None, part: int = 16
               ) -> Iterator[Callable[[list[str]], list[float]]]:
    """``scorer`` (specs -> scores, each spec scored on its own) with large batches split into
    parts of ``part`` specs scored on the backend's workers (the same bits: each worker holds a
    copy of the scorer, sent once); a batch of at most ``part`` specs is scored here, without a
    round trip. For the exhaustive student search over a large space."""
    if BACKENDS.get(backend).in_process:  # scored here: nothing to send, no extra needed
        yield scorer
        return
    try:
        import cloudpickle
    except ImportError:
        raise GpProxyError("scoring on workers needs cloudpickle: pip install "
                           "'gp-proxy[dask]'") from None
    blob = cloudpickle.dumps(scorer)
    with executor(backend, workers, scheduler, initializer=_set_scorer,
                  initargs=(blob,)) as ex:

        def score(specs: list[str]) -> list[float]:
            if len(specs) <= part:
                return scorer(specs)
            futures = [ex.submit(_score_part, specs[i:i + part])
                       for i in range(0, len(specs), part)]
            return [v for f in futures for v in f.result()]

        yield score
