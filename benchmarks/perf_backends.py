"""Evaluation backends compared in one run on one machine, and a worker's memory on a large
space.

    python benchmarks/perf_backends.py --out benchmarks/perf_backends.json [--large 500,2000]

1. The embedded benchmark (162 architectures, its trained teacher and probe batch): a
   population of random formulas (the parents) and the offspring crossover and mutation
   breed from them (one generation's batch), evaluated on
   - ``local``: this process, 1 torch thread;
   - ``processes``: 2 local worker processes, 1 thread each;
   - ``dask``: a ``LocalCluster`` of 2 single-threaded worker processes, 1 torch thread each.
   Recorded per backend: start-up (workers started, cache read), the parents' first
   evaluation, the generation's wall time and throughput (formulas per second), and whether
   every score is the same bits as the local one's.
2. Dask's overhead per task: the same cheap formula (one teacher-student distance of logits,
   nothing kept between calls) evaluated 20 times on ``local`` and on ``dask``; the
   difference divided by the number of tasks (one per chunk).
3. A large space: random NB-201 architectures (random-init students and teacher, 8 random
   3x32x32 probe images, 2 activation samples), a feature cache built on the Dask cluster
   (one task per architecture), then, for each size of ``--large`` (the first N of them) on
   fresh worker processes (a new cluster per size), ``--large-population`` parents and as
   many offspring evaluated with ``held_bytes`` = ``--held-mb`` over both workers. Recorded
   per size: the cache's size on disk, each worker's resident-memory high-water mark (VmHWM)
   after start and after the evaluation, and the bound the design states beyond start-up
   (held share + memo + kept share + one chunk). Bounded memory shows as a peak that does not
   grow with the size.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from perf_evaluator import offspring, population  # noqa: E402

from gp_proxy.bench.benchmark import load_benchmark  # noqa: E402
from gp_proxy.core.files import save_tensors  # noqa: E402
from gp_proxy.evaluate.cache import CacheConfig, build_cache, load_cache  # noqa: E402
from gp_proxy.evaluate.evaluator import Evaluator  # noqa: E402
from gp_proxy.spaces import get_space  # noqa: E402


def _layouts(scheduler: str) -> dict[str, dict[str, Any]]:
    return {"local (1 process x 1 thread)": {},
            "processes (2 x 1 thread)": {"backend": "processes", "workers": 2},
            "dask LocalCluster (2 workers x 1 thread)": {"backend": "dask",
                                                         "scheduler": scheduler}}


def embedded(args: argparse.Namespace, scheduler: str) -> dict[str, Any]:
    bench = load_benchmark(ROOT / "benchmarks" / "fmnist")
    cache = bench.cache(args.cache_dir, lazy=True)
    parents = population(args.population, 0, cache.misaligned(), kinds=cache.feature_kinds)
    children = offspring(parents, args.population, 1, cache.misaligned(), cache.feature_kinds)
    out: dict[str, Any] = {"architectures": len(cache.students), "parents": len(parents),
                           "offspring": len(children)}
    bits: dict[str, list[Any]] = {}
    for name, opts in _layouts(scheduler).items():
        t0 = time.perf_counter()
        ev = Evaluator(cache, threads=1, **opts)
        t1 = time.perf_counter()
        first = ev.evaluate(parents)
        t2 = time.perf_counter()
        gen = ev.evaluate(children)
        t3 = time.perf_counter()
        ev.close()
        bits[name] = [None if r.scores is None else r.scores.tobytes() for r in first + gen]
        out[name] = {"start_s": t1 - t0, "parents_first_s": t2 - t1, "generation_s": t3 - t2,
                     "formulas_per_s": len(children) / (t3 - t2), "chunks": len(ev.plan)}
        print(name, json.dumps(out[name]), flush=True)
    base = next(iter(bits.values()))
    out["same_bits_as_local"] = {k: v == base for k, v in bits.items()}
    local = out["local (1 process x 1 thread)"]["generation_s"]
    out["generation_speedup_vs_local"] = {k: local / out[k]["generation_s"] for k in bits}
    return out


def overhead(args: argparse.Namespace, scheduler: str) -> dict[str, Any]:
    bench = load_benchmark(ROOT / "benchmarks" / "fmnist")
    cache = bench.cache(args.cache_dir, lazy=True)
    times: dict[str, float] = {}
    tasks = 0
    layouts: list[tuple[str, dict[str, Any]]] = [
        ("local", {}), ("dask", {"backend": "dask", "scheduler": scheduler})]
    for name, opts in layouts:
        with Evaluator(cache, threads=1, memoize=False, **opts) as ev:
            ev.evaluate(["l1(k3)"])  # warm: chunks read, workers ready
            runs = []
            for _ in range(20):
                t = time.perf_counter()
                ev.evaluate(["l1(k3)"])
                runs.append(time.perf_counter() - t)
            times[name] = statistics.median(runs)
            tasks = len(ev.plan)
    return {"formula": "l1(k3)", "tasks_per_batch": tasks, "local_batch_s": times["local"],
            "dask_batch_s": times["dask"],
            "overhead_per_task_ms": 1000 * (times["dask"] - times["local"]) / tasks}


def large(args: argparse.Namespace, scheduler: str, tmp: Path) -> dict[str, Any]:
    """Per space size: a fresh cluster's workers evaluate the same batch; their peak resident
    memory should not grow with the number of architectures."""
    from distributed import Client

    sizes = sorted(int(n) for n in args.large.split(","))
    space = get_space("nb201")
    rng = random.Random(0)
    archs = list(dict.fromkeys(space.sample(rng) for _ in range(sizes[-1] * 2)))[:sizes[-1]]
    g = torch.Generator().manual_seed(0)
    probe = tmp / "nb201-probe.safetensors"
    save_tensors(probe, {"images": torch.randn(8, 3, 32, 32, generator=g),
                         "labels": torch.randint(0, 10, (8,), generator=g)})
    cfg = CacheConfig("nb201", "resnet56", str(probe), act_samples=2)
    root = Path(args.large_root) if args.large_root else tmp / "cache"  # gigabytes
    t0 = time.perf_counter()
    folder = build_cache(root, cfg, archs, backend="dask", scheduler=scheduler)
    out: dict[str, Any] = {"space": "nb201", "cache_build_s": time.perf_counter() - t0,
                           "cache_build_archs": len(archs), "held_mb_all_workers": args.held_mb,
                           "per_size": {}}
    for n in sizes:
        cache = load_cache(root, cfg, archs[:n], lazy=True)
        disk = sum((folder / "archs" / f"{_name(s.spec)}").stat().st_size
                   for s in cache.students)
        parents = population(args.large_population, 0, cache.misaligned(),
                             kinds=cache.feature_kinds)
        children = offspring(parents, args.large_population, 1, cache.misaligned(),
                             cache.feature_kinds)
        # fresh worker processes, so that this size's peak is its own: a new cluster per size
        # rather than ``client.restart()``, which on a loaded machine can lose both workers
        # for good (dask/distributed#7312: a lost-worker timer left by one restart closes the
        # nannies while the next restart's workers are still starting)
        with _cluster() as fresh, Client(fresh) as client:
            base = client.run(peak_rss_mb)
            t1 = time.perf_counter()
            with Evaluator(cache, threads=1, backend="dask", scheduler=fresh.scheduler_address,
                           held_bytes=args.held_mb << 20) as ev:
                results = ev.evaluate(parents) + ev.evaluate(children)
                chunk_mb = max(sum(cache.students[i].nbytes for i in idx)
                               for idx in ev.plan) / 2**20
                chunks = len(ev.plan)
            row = {"cache_mb_on_disk": disk / 2**20, "chunks": chunks,
                   "largest_chunk_mb": chunk_mb, "formulas": len(results),
                   "ok": sum(r.ok for r in results), "evaluation_s": time.perf_counter() - t1,
                   "worker_peak_mb_after_start": base, "worker_peak_mb": client.run(peak_rss_mb)}
        out["per_size"][str(n)] = row
        print(n, json.dumps(row), flush=True)
    # the design's bound per worker, beyond the interpreter, torch and the plan: its share of
    # held_bytes, the memo (512 MiB), its share of kept values (64 MiB) and one chunk
    out["stated_bound_mb_beyond_start"] = (args.held_mb / 2 + 512 + 32
                                           + max(r["largest_chunk_mb"]
                                                 for r in out["per_size"].values()))
    return out


def _cluster() -> Any:
    """The benchmark's cluster: 2 single-threaded worker processes on this machine."""
    from distributed import LocalCluster

    return LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                        dashboard_address=":0", silence_logs=logging.ERROR)


def _name(spec: str) -> str:
    from gp_proxy.evaluate.cache import _arch_file

    return _arch_file(Path("."), spec).name


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark (VmHWM), in MiB."""
    with open(f"/proc/{os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/perf_backends.json")
    ap.add_argument("--cache-dir", default=".gp-proxy-cache")
    ap.add_argument("--population", type=int, default=50)
    ap.add_argument("--large", default="500,2000",
                    help="comma-separated sizes of the NB-201 space (empty: skip)")
    ap.add_argument("--large-population", type=int, default=12,
                    help="parents (and as many offspring) on the large space")
    ap.add_argument("--held-mb", type=int, default=256, help="held_bytes over both workers")
    ap.add_argument("--large-root", default="", help="keep the large cache here (default: a "
                                                     "temporary folder, removed)")
    ap.add_argument("--parts", default="embedded,overhead,large")
    args = ap.parse_args()
    torch.set_num_threads(1)
    report: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "machine": {"cores": os.cpu_count(), "processor": platform.processor() or
                    platform.machine(), "torch": torch.__version__}}
    t0 = time.perf_counter()
    with _cluster() as cluster, tempfile.TemporaryDirectory() as tmp:
        report["local_cluster_start_s"] = time.perf_counter() - t0
        parts = args.parts.split(",")
        if "embedded" in parts:
            report["embedded"] = embedded(args, cluster.scheduler_address)
        if "overhead" in parts:
            report["dask_overhead"] = overhead(args, cluster.scheduler_address)
            print(json.dumps(report["dask_overhead"]), flush=True)
        if "large" in parts and args.large.strip():
            report["large_space"] = large(args, cluster.scheduler_address, Path(tmp))
            print(json.dumps(report["large_space"]), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
