"""The Dask backend (``pip install 'gp-proxy[dask]'``): evaluations, cache builds and trainings
on a Dask cluster. See :mod:`gp_proxy.evaluate.backends` for the seam; here:

- a worker plugin gives every worker (one that joins later, or the replacement of a killed
  one, too) a lazy reader of the feature cache and an evaluator over the whole chunk plan;
- one task per (batch of parts, chunk), keyed by its content; a chunk prefers one worker (so
  it is read once and stays held there) but may run on any; a task whose worker died runs
  again elsewhere (Dask's rescheduling), and one that raised is retried ``retries`` times;
- clients are shared by the evaluators of one process and closed with the last of them.

The cluster's own messages are pickles: run a scheduler only on a network you trust, as
Dask's documentation says.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from distributed import Client, LocalCluster, WorkerPlugin
from torch import Tensor

from primitives import GpProxyError, Node

from .backends import WorkerOptions, _balance, _chunk_sizes, _first, _needs_folder, compute_parts
from .cache import CacheConfig, FeatureCache, load_cache
from .evaluator import Evaluator

__all__ = ["CLIENTS", "DaskBackend", "DaskExecutor"]

@dataclass
class _DaskState:
    evaluator: Evaluator
    lock: threading.Lock  # one evaluation at a time: the evaluator's memo is not thread-safe


#: per worker process: token -> the evaluator the plugin of that token set up
_DASK_STATES: dict[str, _DaskState] = {}


class _CachePlugin(WorkerPlugin):
    """A Dask worker plugin: gives each worker (one that joins later, or a replacement for a
    killed one, too) a lazy reader of the feature cache and an evaluator over the whole plan.
    Features are read chunk by chunk as tasks need them and held within the worker's
    ``held_bytes``; the first task of a chunk on a worker pays its read, later ones do not."""

    def __init__(self, token: str, root: str, config: dict[str, Any], archs: list[str],
                 plan: list[list[int]], options: dict[str, Any]) -> None:
        self.token, self.root, self.config = token, root, config
        self.archs, self.plan, self.options = archs, plan, options

    def setup(self, worker: Any) -> None:
        cache = load_cache(self.root, CacheConfig(**self.config), self.archs, quiet=True,
                           lazy=True)
        ev = Evaluator(cache, plan=self.plan, **self.options)
        _DASK_STATES[self.token] = _DaskState(ev, threading.Lock())

    def teardown(self, worker: Any) -> None:
        _DASK_STATES.pop(self.token, None)


def _dask_chunk(token: str, texts: list[str], cid: int
                ) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, str]]]:
    """One task: the parts ``texts`` on chunk ``cid`` (pure: the same bits wherever it runs)."""
    state = _DASK_STATES.get(token)
    if state is None:
        raise GpProxyError(f"this Dask worker has no feature cache {token[:12]} (its plugin "
                           "did not run: is the worker's gp-proxy the same version?)")
    ev = state.evaluator
    with state.lock:
        chunk = ev.chunks[cid]
        try:
            vectors, errors = compute_parts(ev, texts, [chunk])
        finally:
            ev._drop_student_memo()
        where = torch.from_numpy(chunk.index)
        return ({t: v[where].numpy() for t, v in vectors.items() if t not in errors},
                {t: (status, reason) for t, (_, status, reason) in errors.items()})


class _Clients:
    """Dask clients shared by the evaluators of one process (a campaign's several feature
    sets use one cluster), closed with the last evaluator using them or at exit."""

    def __init__(self) -> None:
        self._open: dict[tuple[str | None, int], tuple[Any, int]] = {}
        self._lock = threading.Lock()

    def acquire(self, scheduler: str | None, workers: int) -> Any:
        key = (scheduler, workers)
        with self._lock:
            if key in self._open:
                client, users = self._open[key]
                self._open[key] = (client, users + 1)
                return client
            client = _connect(scheduler, workers)
            self._open[key] = (client, 1)
            return client

    def release(self, scheduler: str | None, workers: int) -> None:
        key = (scheduler, workers)
        with self._lock:
            if key not in self._open:
                return
            client, users = self._open.pop(key)
            if users > 1:
                self._open[key] = (client, users - 1)
                return
        _disconnect(client)


def _connect(scheduler: str | None, workers: int) -> Any:
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise GpProxyError(f"scheduler={scheduler}: cannot reach a Dask scheduler "
                               f"({exc})") from None
    else:
        n = workers if workers > 1 else max(1, os.cpu_count() or 1)
        # one task at a time per worker process: torch's threads are per process
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.ERROR)
        client = Client(cluster)
    print(f"Dask: {len(client.scheduler_info()['workers'])} workers, dashboard "
          f"{client.dashboard_link}", file=sys.stderr)
    return client


def _disconnect(client: Any) -> None:
    cluster = client.cluster
    with contextlib.suppress(Exception):
        client.close()
        if cluster is not None:
            cluster.close()


CLIENTS = _Clients()


class DaskBackend:
    """Parts computed on a Dask cluster, one task per (batch, chunk); see the module text."""

    def __init__(self, ev: Evaluator, cache: FeatureCache, options: WorkerOptions) -> None:
        root = _needs_folder(cache, "dask")
        self.options = options
        self.plan = ev.plan
        self.sizes = _chunk_sizes(cache, self.plan)
        self.client = CLIENTS.acquire(options.scheduler, options.workers)
        workers = max(1, len(self.client.scheduler_info()["workers"]))
        kwargs = options.worker_evaluator(workers)
        archs = [s.spec for s in cache.students]
        self.token = hashlib.sha256(repr((cache.key, archs, self.plan, sorted(kwargs.items())))
                                    .encode()).hexdigest()[:24]
        self.name = f"gp-proxy-cache-{self.token}"
        try:
            self.client.register_plugin(_CachePlugin(
                self.token, root, asdict(cache.config), archs, self.plan, kwargs),
                name=self.name)
        except Exception:
            CLIENTS.release(options.scheduler, options.workers)
            raise
        self._finalizer = weakref.finalize(self, DaskBackend._shutdown, self.client, self.name,
                                           options.scheduler, options.workers)

    @staticmethod
    def _shutdown(client: Any, name: str, scheduler: str | None, workers: int) -> None:
        with contextlib.suppress(Exception):
            client.unregister_worker_plugin(name)
        CLIENTS.release(scheduler, workers)

    def _placement(self) -> list[str | None]:
        """A preferred worker per chunk (balanced by size), so that each chunk is read by one
        worker and stays held there; any worker may still run it (a preference only)."""
        workers = sorted(self.client.scheduler_info()["workers"])
        where: list[str | None] = [None] * len(self.plan)
        for w, cids in zip(workers, _balance(self.sizes, len(workers)), strict=False):
            for c in cids:
                where[c] = w
        return where

    def compute(self, todo: dict[str, Node], vectors: dict[str, Tensor], keep_memo: bool
                ) -> dict[str, tuple[int, str, str]]:
        texts = sorted(todo)
        digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:20]
        futures = [self.client.submit(
            _dask_chunk, self.token, texts, cid, key=f"gp-proxy-{self.token[:12]}-{digest}-{cid}",
            workers=[w] if w else None, allow_other_workers=True,
            retries=self.options.retries, pure=False)
            for cid, w in enumerate(self._placement())]
        try:
            outs = self.client.gather(futures)
        except Exception as exc:
            raise GpProxyError(f"a Dask evaluation task failed after "
                               f"{self.options.retries} retries: {exc}") from None
        finally:
            for f in futures:
                f.release()
        errors: dict[str, tuple[int, str, str]] = {}
        for cid, (vecs, errs) in enumerate(outs):
            where = torch.as_tensor(self.plan[cid], dtype=torch.long)
            for text, v in vecs.items():
                vectors[text][where] = torch.from_numpy(v)
            for text, (status, reason) in errs.items():
                _first(errors, text, cid, status, reason)
        return errors

    def clear_memo(self) -> None:
        # workers drop each task's student-side values after it; what they keep (teacher
        # sides, small kept values, held chunks) is bounded and never changes a result
        pass

    def close(self) -> None:
        if self._finalizer.detach() is not None:
            DaskBackend._shutdown(self.client, self.name, self.options.scheduler,
                                  self.options.workers)



_INITIALIZED: set[str] = set()  # per dask worker process: initialisers already run


def _initialized_call(token: str, initializer: Callable[..., Any], initargs: tuple[Any, ...],
                      fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on a Dask worker, after ``initializer(*initargs)`` once per process (what
    a process pool's ``initializer`` does; the arguments reach each worker once, scattered)."""
    if token not in _INITIALIZED:
        initializer(*initargs)
        _INITIALIZED.add(token)
    return fn(*args)


class DaskExecutor(Executor):
    """``client.get_executor`` plus a process pool's ``initializer``."""

    def __init__(self, client: Any, retries: int, initializer: Callable[..., Any] | None,
                 initargs: tuple[Any, ...]) -> None:
        self._ex = client.get_executor(retries=retries, pure=False)
        self._init = None
        if initializer is not None:
            data = client.scatter([initargs], broadcast=True, hash=False)[0]
            token = hashlib.sha256(os.urandom(16)).hexdigest()[:16]
            self._init = (token, initializer, data)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if self._init is None:
            return self._ex.submit(fn, *args, **kwargs)
        return self._ex.submit(_initialized_call, *self._init, fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._ex.shutdown(wait=wait)


