"""The evaluation backend seam: in-process, local processes and Dask give the same bits; a
lazily read cache holds bounded memory; a worker killed mid-generation changes nothing; a
distributed cache build resumes without redoing finished architectures."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gp_proxy.config import ConfigError, load_config
from gp_proxy.evaluate.backends import BACKENDS, make_evaluator
from gp_proxy.evaluate.cache import CacheConfig, build_cache, load_cache
from gp_proxy.evaluate.evaluator import Evaluator
from gp_proxy.evolve.campaign import Campaign
from primitives import GpProxyError

from ..conftest import EVAL_ARCHS, random_formulas

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """A LocalCluster of 2 single-threaded worker processes shared by this module's tests."""
    import logging

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=logging.ERROR) as cl:
        yield cl.scheduler_address


def _layouts(scheduler: str) -> dict[str, dict[str, Any]]:
    return {"local": {}, "lazy local, one chunk held": {"lazy": True, "held_bytes": 1},
            "processes": {"backend": "processes", "workers": 2},
            "dask": {"backend": "dask", "scheduler": scheduler, "lazy": True}}


def _record(results: list[Any]) -> list[tuple[Any, ...]]:
    return [(r.formula, r.status, r.reason, None if r.scores is None else r.scores.tobytes())
            for r in results]


def test_every_backend_gives_the_same_bits_statuses_and_first_causes(
        cache, scheduler: str) -> None:  # type: ignore[no-untyped-def]
    """Per formula: score bits, status and the first failing chunk's reason are those of one
    process, on every backend, across calls, with the teacher memo kept and cleared."""
    formulas = random_formulas(cache, 60, random.Random(11))
    formulas += ["l1(k1)", "rank_add(mse(k2),sum_layers(mean(act)))", "kl_t4(k3", "mean(k1)"]
    lazy = load_cache(cache.folder.parent, cache.config, cache.archs, lazy=True)
    assert all(t.is_meta for s in lazy.students for t in s.features.values())
    runs = {}
    for name, opts in _layouts(scheduler).items():
        opts = dict(opts)
        source = lazy if opts.pop("lazy", False) else cache
        with Evaluator(source, chunk_size=2, device="cpu", threads=1, **opts) as ev:
            first = ev.evaluate(formulas, keep_memo=True)
            ev.clear_memo()
            again = ev.evaluate([*formulas[:20], "mse(k3)"])
            if name.startswith("lazy"):  # at most one chunk's features held at a time
                assert len(ev._held) == 1 and sum(c.inputs is not None for c in ev.chunks) == 1
        runs[name] = _record(first + again)
    for name, run in runs.items():
        assert run == runs["local"], name
    statuses = {r[1] for r in runs["local"]}
    assert {"ok", "shape_error", "parse_error"} <= statuses, statuses


def test_unknown_backend_and_misused_workers_are_one_line_errors(cache) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r"unknown evaluation backend 'dusk'.*dask"):
        load_config(None, ["backend=dusk"])
    with pytest.raises(GpProxyError, match="workers=2 needs backend=processes or dask"):
        Evaluator(cache, workers=2)
    assert set(BACKENDS.names()) == {"local", "processes", "dask"}


def test_an_unreachable_scheduler_is_a_one_line_error(cache) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(GpProxyError, match=r"scheduler=tcp://127\.0\.0\.1:9: cannot reach"):
        make_evaluator(cache, None, backend="dask", scheduler="tcp://127.0.0.1:9")


def _campaign(bench: Path, cache_dir: Path, out: Path, **kw: Any) -> tuple[str, list[Any]]:
    base = {"benchmark": str(bench), "cache_dir": str(cache_dir), "population": 12,
            "generations": 2, "act_samples": 2, "test_fraction": 0.3, "folds": 3,
            "threads": 1, "chunk_size": 2, "noise_check": False, **kw}
    Campaign(load_config(None, [f"{k}={v}" for k, v in base.items()]), out).run()
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    return ((out / "hall_of_fame.csv").read_text(),
            [(h["best"], h["statuses"], h["median_fitness"]) for h in history])


class _KillOnce(distributed.WorkerPlugin):  # type: ignore[misc]
    """A Dask worker plugin that SIGKILLs its worker's process when the ``nth`` task whose key
    starts with ``prefix`` (counted across the cluster in a file) starts executing: a worker
    lost mid-run, deterministically. Only the worker that reaches the count dies."""

    def __init__(self, counter: str, nth: int, prefix: str = "gp-proxy-") -> None:
        self.counter, self.nth, self.prefix = counter, nth, prefix

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish != "executing" or not str(key).startswith(self.prefix):
            return
        with open(self.counter, "a") as fh:
            fh.write("x")
        if os.path.getsize(self.counter) == self.nth:
            os.kill(os.getpid(), 9)


def test_same_hall_of_fame_on_every_backend_and_after_a_killed_worker(
        bench: Path, tmp_path: Path, scheduler: str) -> None:
    """The same campaign on local, processes and Dask gives the same hall of fame and history
    (bit-identical scores); so does a Dask run in which a worker is SIGKILLed during the first
    generation (its tasks run again on a live or restarted worker)."""
    cache_dir = tmp_path / "cache"
    runs = {"local": _campaign(bench, cache_dir, tmp_path / "local"),
            "processes": _campaign(bench, cache_dir, tmp_path / "proc", backend="processes",
                                   workers=2),
            "dask": _campaign(bench, cache_dir, tmp_path / "dask", backend="dask",
                              scheduler=scheduler)}
    client = distributed.Client(scheduler)
    counter = tmp_path / "tasks-started"
    try:
        before = set(client.scheduler_info()["workers"])
        client.register_plugin(_KillOnce(str(counter), 20), name="kill-once")
        runs["dask, a worker killed"] = _campaign(bench, cache_dir, tmp_path / "killed",
                                                  backend="dask", scheduler=scheduler)
        client.unregister_worker_plugin("kill-once")
        assert counter.stat().st_size > 20  # the kill happened mid-run, and work went on
        assert set(client.scheduler_info()["workers"]) != before  # a worker was replaced
    finally:
        client.close()
    for name, run in runs.items():
        assert run == runs["local"], name


def test_a_distributed_cache_build_resumes_without_redoing_finished_archs(
        probe: Path, tmp_path: Path, scheduler: str) -> None:
    """Each architecture is a task that writes its own file. A worker killed during the build
    costs its task a rerun; a build stopped part-way (here: files of architectures it had
    not reached are absent) resumes building only those; the files' bits are those of a
    one-process build."""
    from gp_proxy.evaluate.cache import _arch_file

    cfg = CacheConfig("fmnist-cnn", "resnet-t", str(probe), act_samples=4)
    client = distributed.Client(scheduler)
    counter = tmp_path / "tasks-started"
    try:
        client.register_plugin(_KillOnce(str(counter), 3, "_build_one"), name="kill-build")
        folder = build_cache(tmp_path / "dist", cfg, EVAL_ARCHS, quiet=True, backend="dask",
                             scheduler=scheduler)
        client.unregister_worker_plugin("kill-build")
    finally:
        client.close()
    assert counter.stat().st_size > len(EVAL_ARCHS)  # the killed task ran again
    files = {a: _arch_file(folder, a) for a in EVAL_ARCHS}
    for a in EVAL_ARCHS[4:]:  # a build stopped after the first four architectures
        files[a].unlink()
    stamps = {a: files[a].stat().st_mtime_ns for a in EVAL_ARCHS[:4]}
    build_cache(tmp_path / "dist", cfg, EVAL_ARCHS, quiet=True, backend="processes", workers=2)
    assert {a: files[a].stat().st_mtime_ns for a in EVAL_ARCHS[:4]} == stamps  # not redone
    assert all(f.exists() for f in files.values())
    serial = build_cache(tmp_path / "serial", cfg, EVAL_ARCHS, quiet=True)
    for a in EVAL_ARCHS:
        one, dist = load_cache(tmp_path / "serial", cfg, [a]), load_cache(tmp_path / "dist",
                                                                          cfg, [a])
        for k in ("k1", "k2", "k3"):
            assert one.students[0].features[k].equal(dist.students[0].features[k])
        assert all(x.equal(y) for x, y in zip(one.students[0].grads, dist.students[0].grads,
                                              strict=True))
    assert serial.name == folder.name


def test_benchmark_trainings_on_dask_match_local_processes(tmp_path: Path,
                                                           scheduler: str) -> None:
    """`bench build --backend dask`: each training a task (its data scattered once per
    worker), each run file written as it arrives; the runs are those of local processes,
    and a build resumed on the other backend redoes none of them."""
    from gp_proxy.bench.build import build_benchmark

    from ..bench.test_bench_and_data import TINY, _synthetic

    train, test = _synthetic(300, 0), _synthetic(100, 1)
    counts = build_benchmark(tmp_path / "dask", TINY, train, test, workers=2, max_runs=6,
                             quiet=True, backend="dask", scheduler=scheduler)
    assert counts == {"done_before": 0, "new": 6, "remaining": 6}
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "dask" / "runs").glob("*")}
    assert build_benchmark(tmp_path / "dask", TINY, train, test, workers=2, quiet=True,
                           backend="processes")["new"] == 6
    assert all((tmp_path / "dask" / "runs" / n).stat().st_mtime_ns == t
               for n, t in stamps.items())
    build_benchmark(tmp_path / "proc", TINY, train, test, workers=2, quiet=True)

    def runs(folder: Path) -> dict[str, tuple[Any, ...]]:
        out = {}
        for p in (folder / "runs").glob("*.json"):
            r = json.loads(p.read_text())
            out[p.name] = (r["test_acc"], r["train_loss"])
        return out

    assert runs(tmp_path / "dask") == runs(tmp_path / "proc")


def test_an_exhaustive_search_fanned_out_equals_the_local_one(scheduler: str) -> None:
    """`gp-proxy search --backend ...`: a large batch of candidates is split into parts scored
    on workers holding a copy of the scorer; the top students and their scores are the same
    bits as in one process, on local processes and on Dask."""
    import torch

    from gp_proxy.evaluate.backends import fanned_out
    from gp_proxy.plugin.proxy import Proxy
    from gp_proxy.search.students import formula_scorer, search
    from gp_proxy.spaces import get_space

    space = get_space("fmnist-cnn")
    x = torch.randn(6, 1, 14, 14, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6) % 10
    proxy = Proxy.from_string("rank_add(sp_dist(k2),mean_layers(fro_norm(weight)))")
    scorer = formula_scorer(proxy, space, space.build_teacher(seed=0), x, y, reference=12)
    candidates = list(space.enumerate())[::9]  # 18 students: parts of 4
    runs = {}
    for name, opts in (("local", {}), ("processes", {"backend": "processes", "workers": 2}),
                       ("dask", {"backend": "dask", "scheduler": scheduler})):
        with fanned_out(scorer, part=4, **opts) as batch:  # type: ignore[arg-type]
            runs[name] = search(space, batch, "exhaustive", top_k=18, candidates=candidates)
    assert len(runs["local"]) == len(candidates)
    assert runs["processes"] == runs["local"] and runs["dask"] == runs["local"]
