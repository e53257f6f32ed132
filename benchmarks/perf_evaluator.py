"""Performance of the cached evaluator, as ratios measured in one run on one machine.

    python benchmarks/perf_evaluator.py --out benchmarks/perf_cpu.json [--device cuda]

1. reference vs cached: the published Auto-DAS code recomputes the teacher and every student
   forward (and backward, for gradient statistics) for every formula. Two references, both
   with our models and the reference interpreter: "published loop" has the published
   evaluation loop's structure (per formula the teacher is built; per student the student is
   built, the teacher and the student run forward for the interaction part, the student runs
   forward and backward again for the instinct part; its per-student garbage collection is
   left out, in the reference's favour); "reference"
   is the lean version of the same recomputation (models built beforehand, teacher once per
   formula, one pass per student), which favours the reference. "cached" is the batched
   evaluator on the feature cache. The
   reference runs on 3 formulas: the 1/6, 1/2 and 5/6 quantiles of the population by cached
   time, so the median of their speed-ups is the median formula's. Setups:
   CIFAR-ResNet depth space (64 archs, ResNet-110 teacher, batch 64 of 32x32 images; random
   images and random-init teacher: the cost does not depend on the values) and the embedded
   Fashion-MNIST benchmark (162 archs, its trained teacher, its 64-image probe batch).
2. per-formula time vs the memory-bandwidth floor: bytes of cached inputs a formula reads
   divided by a measured bandwidth. The reference cost over the median floor is the bound: the
   speed-up an evaluator that did nothing but stream each formula's inputs once would reach.
   Two floors: the read bandwidth (one pass summing a 512 MB
   tensor; the stricter floor) and the copy bandwidth the issue defines the target on (bytes
   copied per second, copying a 512 MB tensor into another: each byte is read and written).
3. population throughput with and without memoisation on a typical generation: the 50
   offspring that the campaign's crossover and mutation breed from 50 parents, evaluated as one
   batch (the generational scheme's unit of work) after the parents were evaluated, as in a
   campaign (with memoisation, shared subtrees within the batch are computed once per chunk
   and parts inherited from the parents are reused; without it, everything is recomputed).
4. numba vs scipy for Kendall tau-b and Spearman rho over 1,000 score vectors (best of 5 and
   of 3 passes).
5. using every core: the same generation (with memoisation) on one process of 1 thread, on
   one process of N threads, and on N worker processes of 1 thread each (N = the CPU count),
   and whether the workers' scores equal the one-process scores bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import primitives  # noqa: E402
from gp_proxy.core.files import save_tensors  # noqa: E402
from gp_proxy.core.rank import kendall_tau_batch, spearman_rho_batch  # noqa: E402
from gp_proxy.evaluate.cache import CacheConfig, FeatureCache, load_cache  # noqa: E402
from gp_proxy.evaluate.evaluator import Evaluator  # noqa: E402
from gp_proxy.evolve.pset import build_pset  # noqa: E402
from gp_proxy.evolve.variation import crossover, mutate  # noqa: E402
from gp_proxy.spaces import get_space  # noqa: E402
from primitives import Kind  # noqa: E402


def population(n: int, seed: int, misaligned: dict[str, frozenset[int]] | None = None,
               grammar: str = "both", kinds: dict[str, Kind] | None = None) -> list[str]:
    """Random canonical formulas from the campaign's typed generator for this cache."""
    ps = build_pset(grammar, input_kinds=kinds, misaligned=misaligned,
                    exclude=frozenset({"log_params"}))  # as a default campaign
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        s = str(primitives.canonicalize(ps.to_node(ps.random_tree(rng, 3, 6))))
        if s not in out:
            out.append(s)
    return out


def offspring(parents: list[str], n: int, seed: int,
              misaligned: dict[str, frozenset[int]] | None = None,
              kinds: dict[str, Kind] | None = None) -> list[str]:
    ps = build_pset("both", input_kinds=kinds, misaligned=misaligned)
    rng = random.Random(seed)
    trees = [ps.to_tree(primitives.parse(p, kinds)) for p in parents]
    out: list[str] = []
    while len(out) < n:
        a, b = rng.choice(trees), rng.choice(trees)
        child = crossover(ps, a, b, rng, 10, 30)
        if rng.random() < 0.3:
            child = mutate(ps, child, rng, 10, 30)
        s = str(primitives.canonicalize(ps.to_node(child)))
        if s not in out and s not in parents:
            out.append(s)
    return out


def _bandwidth(device: torch.device, copy: bool) -> float:
    x = torch.ones(128 << 20, device=device)  # 512 MB of float32
    y = torch.empty_like(x) if copy else x
    best = float("inf")
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        if copy:
            y.copy_(x)
        else:
            x.sum()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def read_bandwidth(device: torch.device) -> float:
    """Bytes read per second by one summing pass."""
    return _bandwidth(device, copy=False)


def copy_bandwidth(device: torch.device) -> float:
    """Bytes copied per second (each read once and written once)."""
    return _bandwidth(device, copy=True)


def best_of(fn: Callable[[], None], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls (a few-millisecond pass is easily disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _read_inputs(node: primitives.Node) -> set[str]:
    """Inputs the evaluator reads for ``node``: a distance of a cached input with itself is
    known to be zero without reading it (see Evaluator)."""
    if not node.args:
        return {node.name}
    same = node.self_distance_arg()
    if same is not None and not same.args:
        return set()
    return set().union(*(_read_inputs(a) for a in node.args))


def input_bytes(formula: str, cache: FeatureCache) -> int:
    names = _read_inputs(primitives.canonicalize(primitives.parse(formula, cache.feature_kinds)))
    total = 0
    for s in cache.students:
        for name in names:
            if name in s.features:
                total += s.features[name].numel() * 4
            else:
                attr = {"act": "acts", "grad": "grads", "weight": "weights"}[name]
                total += sum(t.numel() * 4 for t in getattr(s, attr))
    total += sum(cache.teacher[n].numel() * 4 for n in names if n in cache.teacher)
    return total


def _reads_layers(node: primitives.Node) -> bool:
    """Whether ``node`` reads a student-only per-layer input (act, grad, weight)."""
    return any(not n.args and primitives.get(n.name).side == "student" for n in node.walk())


def _teacher_features(teacher: torch.nn.Module, images: torch.Tensor) -> dict[str, object]:
    with torch.no_grad():
        return {k: v.unsqueeze(0) for k, v in teacher.features(images).items()}  # type: ignore[operator]


def _student_env(m: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 act_samples: int, layers: bool) -> dict[str, object]:
    """A student's inputs as the cache holds them: k1-k3 from one forward (no gradients), or,
    with ``layers``, also act/grad/weight from one forward and cross-entropy backward."""
    if not layers:
        with torch.no_grad():
            m.train()
            return {k: v.unsqueeze(0) for k, v in m.features(images).items()}  # type: ignore[operator]
    from primitives.reference import collect_student_layers

    got = collect_student_layers(m, images, labels, act_samples, forward=m.features)
    feats = got.pop("outputs")
    assert isinstance(feats, dict)
    return {**{k: v.detach().unsqueeze(0) for k, v in feats.items()},
            **primitives.gather_inputs([got], "student")}


def _teacher(space_name: str, teacher_name: str, teacher_weights: str | None, device: str
             ) -> torch.nn.Module:
    teacher = get_space(space_name).build_teacher(teacher_name)
    if teacher_weights:
        from gp_proxy.core.files import load_tensors

        teacher.load_state_dict(load_tensors(teacher_weights))
        teacher.eval()
    return teacher.to(device)


def _evaluate_parts(node: primitives.Node, env: dict[str, object], tf: dict[str, object]
                    ) -> None:
    try:
        for part in node.args if node.op.cross_arch else (node,):
            primitives.evaluate(part, env, tf)  # type: ignore[arg-type]
    except primitives.GpProxyError:
        pass


def reference_cost(space_name: str, teacher_name: str, teacher_weights: str | None,
                   images: torch.Tensor, labels: torch.Tensor, archs: list[str],
                   formulas: list[str], act_samples: int, device: str = "cpu") -> list[float]:
    """Seconds per formula when every forward pass is recomputed for every formula, leanly:
    models built beforehand, the teacher run once per formula, each student once (forward and
    backward only when the formula reads act/grad/weight). On the same device as the cached
    evaluator, so a CUDA run compares CUDA with CUDA."""
    teacher = _teacher(space_name, teacher_name, teacher_weights, device)
    space = get_space(space_name)
    images, labels = images.to(device), labels.to(device)
    models = [space.build(a).to(device) for a in archs]
    kinds = models[0].feature_kinds
    times = []
    for f in formulas:
        node = primitives.canonicalize(primitives.parse(f, kinds))
        layers = _reads_layers(node)
        t0 = time.perf_counter()
        tf = _teacher_features(teacher, images)
        for m in models:
            _evaluate_parts(node, _student_env(m, images, labels, act_samples, layers), tf)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def published_loop_cost(space_name: str, teacher_name: str, teacher_weights: str | None,
                        images: torch.Tensor, labels: torch.Tensor, archs: list[str],
                        formulas: list[str], act_samples: int, device: str = "cpu"
                        ) -> list[float]:
    """Seconds per formula of the published evaluation loop's structure (Auto-DAS,
    ``exps/rank/*/eval_rank_jointly.py``, read for its structure): per formula the teacher is
    built; per student the student is built, the interaction part runs the teacher and the
    student forward, and the instinct part runs the student forward and backward again. Our
    ops and models are used, so only the loop's structure is the published code's. Left out,
    in the reference's favour: the published loop also runs the garbage collector after every
    student, whose cost depends on the live objects of the process (0.1 s a call in this
    benchmark's process, which holds the feature cache: 16 s per formula on FMNIST)."""
    space = get_space(space_name)
    images, labels = images.to(device), labels.to(device)
    kinds = space.build(archs[0]).feature_kinds
    times = []
    for f in formulas:
        node = primitives.canonicalize(primitives.parse(f, kinds))
        parts = node.args if node.op.cross_arch else (node,)
        t0 = time.perf_counter()
        teacher = _teacher(space_name, teacher_name, teacher_weights, device)
        for a in archs:
            m = space.build(a).to(device)
            for part in parts:
                if _reads_layers(part):
                    env, tf = _student_env(m, images, labels, act_samples, True), {}
                else:
                    tf = _teacher_features(teacher, images)
                    env = _student_env(m, images, labels, act_samples, False)
                _evaluate_parts(part, env, tf)
            del m
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def cached_cost(cache: FeatureCache, formulas: list[str], device: str, chunk: int | None
                ) -> tuple[list[float], list[str]]:
    """Seconds and status of each formula, evaluated one at a time without memoisation."""
    ev = Evaluator(cache, chunk_size=chunk, device=device, memoize=False,
                   threads=torch.get_num_threads())
    ev.evaluate(formulas[:5])  # warm-up
    times, statuses = [], []
    for f in formulas:
        t0 = time.perf_counter()
        r = ev.evaluate([f])[0]
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        statuses.append(r.status)
    return times, statuses


def setup(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    if name == "cifar-resnet-depth":
        space = get_space(name)
        archs = list(space.enumerate())
        g = torch.Generator().manual_seed(0)
        probe = tmp / "cifar_probe.safetensors"
        images = torch.randn(64, 3, 32, 32, generator=g)
        labels = torch.randint(0, 100, (64,), generator=g)
        save_tensors(probe, {"images": images, "labels": labels})
        cfg = CacheConfig(name, "resnet110", str(probe), None, 0, args.act_samples)
        weights = None
        teacher = "resnet110"
    else:
        from gp_proxy.core.files import load_tensors

        folder = ROOT / "benchmarks" / "fmnist"
        archs = list(get_space(name).enumerate())
        probe = folder / "probe.safetensors"
        p = load_tensors(probe)
        images, labels = p["images"], p["labels"]
        weights = str(folder / "teacher.safetensors")
        teacher = "resnet-t"
        cfg = CacheConfig(name, teacher, str(probe), weights, 0, args.act_samples)
    t0 = time.perf_counter()
    cache = load_cache(args.cache_dir, cfg, archs)
    build = time.perf_counter() - t0
    return {"space": name, "archs": archs, "cache": cache, "images": images, "labels": labels,
            "weights": weights, "teacher": teacher, "cache_seconds": build}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/perf_cpu.json")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--setups", default="cifar-resnet-depth,fmnist-cnn")
    ap.add_argument("--population", type=int, default=100)
    ap.add_argument("--reference-formulas", type=int, default=3)
    ap.add_argument("--act-samples", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=None,
                    help="architectures per chunk (default: chunks of about 8 MiB)")
    ap.add_argument("--cache-dir", default=".gp-proxy-cache")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bw = read_bandwidth(device)
    bw_copy = copy_bandwidth(device)
    report: dict[str, object] = {
        "command": " ".join(["python", *sys.argv]),
        "machine": {"processor": platform.processor() or platform.machine(),
                    "torch_threads": args.threads, "device": str(device),
                    "device_name": torch.cuda.get_device_name(device)
                    if device.type == "cuda" else platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch": torch.__version__},
        "read_bandwidth_GBps": bw / 1e9, "copy_bandwidth_GBps": bw_copy / 1e9, "setups": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.setups.split(","):
            s = setup(name, args, Path(tmp))
            cache: FeatureCache = s["cache"]  # type: ignore[assignment]
            mis = cache.misaligned()
            kinds = cache.feature_kinds
            ok_pop = population(args.population, seed=1, misaligned=mis, kinds=kinds)
            cached, status_of = cached_cost(cache, ok_pop, args.device, args.chunk)
            statuses = {st: status_of.count(st) for st in set(status_of)}
            ref_formulas = [f for f, _, st in sorted(zip(ok_pop, cached, status_of, strict=True),
                                                     key=lambda x: x[1]) if st == "ok"]
            # the formulas at the centres of k equal slices of the ok ones ordered by cached time
            # (k = 3: the 1/6, 1/2 and 5/6 quantiles), so the middle one is the median formula
            k = min(args.reference_formulas, len(ref_formulas))
            ref_pick = [ref_formulas[int((i + 0.5) * len(ref_formulas) / k)] for i in range(k)]
            ref = reference_cost(name,
                                 str(s["teacher"]), s["weights"], s["images"],  # type: ignore[arg-type]
                                 s["labels"], s["archs"], ref_pick, args.act_samples,  # type: ignore[arg-type]
                                 args.device)
            published = published_loop_cost(
                name, str(s["teacher"]), s["weights"], s["images"],  # type: ignore[arg-type]
                s["labels"], s["archs"], ref_pick, args.act_samples, args.device)  # type: ignore[arg-type]
            cached_of = dict(zip(ok_pop, cached, strict=True))
            floors = [input_bytes(f, cache) / bw for f in ok_pop]
            ratio_floor = [c / fl for c, fl in zip(cached, floors, strict=True) if fl > 0]
            # (formulas reading nothing, every part a self-distance of an input, have no floor)
            ratio_copy = [r * bw_copy / bw for r in ratio_floor]
            parents = population(50, seed=7, misaligned=mis, kinds=kinds)
            kids = offspring(parents, 50, seed=8, misaligned=mis, kinds=kinds)
            timings = {}
            for memo in (False, True):
                ev = Evaluator(cache, chunk_size=args.chunk, device=args.device, memoize=memo,
                               threads=args.threads)
                # the previous generation; without memoisation nothing of it is kept, so a
                # warm-up is enough
                ev.evaluate(parents if memo else parents[:3])
                t0 = time.perf_counter()
                ev.evaluate(kids)  # one generation's offspring, as the generational scheme does
                timings[memo] = time.perf_counter() - t0
            cores = os.cpu_count() or 1
            parallel: dict[str, float] = {}
            bits: dict[str, list[bytes | None]] = {}
            layouts = (("1 process x 1 thread", 1, 1), (f"1 process x {cores} threads", cores, 1),
                       (f"{cores} processes x 1 thread", 1, cores))
            for label, threads, workers in layouts if args.device == "cpu" else ():
                ev = Evaluator(cache, chunk_size=args.chunk, device=args.device,
                               threads=threads, workers=workers,
                               backend="processes" if workers > 1 else "local")
                ev.evaluate(parents)  # also starts the workers
                t0 = time.perf_counter()
                res = ev.evaluate(kids)
                parallel[label] = time.perf_counter() - t0
                ev.close()
                bits[label] = [None if r.scores is None else r.scores.tobytes() for r in res]
            report["setups"][name] = {  # type: ignore[index]
                "architectures": len(s["archs"]),  # type: ignore[arg-type]
                "cache_build_seconds": s["cache_seconds"],
                "population": len(ok_pop), "statuses": statuses,
                "cached_median_seconds": statistics.median(cached),
                "cached_p90_seconds": float(np.quantile(cached, 0.9)),
                "reference_formulas": ref_pick,
                "reference_seconds": ref,
                "cached_seconds_of_reference_formulas": [cached_of[f] for f in ref_pick],
                "speedup_median_reference_vs_cached": statistics.median(
                    r / cached_of[f] for r, f in zip(ref, ref_pick, strict=True)),
                "published_loop_seconds": published,
                "speedup_median_published_loop_vs_cached": statistics.median(
                    r / cached_of[f] for r, f in zip(published, ref_pick, strict=True)),
                "speedup_published_loop_mean_vs_population_median": statistics.mean(published)
                / statistics.median(cached),
                "published_loop_bound_at_copy_floor": statistics.mean(published)
                / statistics.median(f * bw / bw_copy for f in floors),
                # the reference cost hardly depends on the formula (forward and backward passes
                # dominate it): its mean over the cached median of the whole population
                "speedup_reference_mean_vs_population_median": statistics.mean(ref)
                / statistics.median(cached),
                "median_input_MB": statistics.median(floors) * bw / 1e6,
                # what an implementation that only streams each formula's cached inputs once
                # (at the measured copy / read bandwidth) would reach against the reference:
                # the most any cached evaluator can reach on this machine
                "speedup_bound_at_copy_floor": statistics.mean(ref)
                / statistics.median(f * bw / bw_copy for f in floors),
                "speedup_bound_at_read_floor": statistics.mean(ref) / statistics.median(floors),
                "median_time_over_bandwidth_floor": statistics.median(ratio_floor),
                "median_time_over_copy_floor": statistics.median(ratio_copy),
                "generation_seconds_no_memo": timings[False],
                "generation_seconds_memo": timings[True],
                "memo_throughput_gain": timings[False] / timings[True],
                "generation_seconds_by_parallelism": parallel,
                # CPU only (worker processes and thread counts are CPU settings)
                "workers_equal_one_process_bits": bits["1 process x 1 thread"]
                == bits[f"{cores} processes x 1 thread"] if bits else None,
            }
            print(json.dumps({name: report["setups"][name]}, indent=1,  # type: ignore[index]
                             default=str)[:2000], flush=True)
    rng = np.random.default_rng(0)
    for n in (64, 162):
        xs = rng.normal(size=(1000, n))
        y = rng.normal(size=n)
        kendall_tau_batch(xs[:2], y)
        spearman_rho_batch(xs[:2], y)

        def numba_pass(xs: np.ndarray = xs, y: np.ndarray = y) -> None:
            kendall_tau_batch(xs, y)
            spearman_rho_batch(xs, y)

        def scipy_pass(xs: np.ndarray = xs, y: np.ndarray = y) -> None:
            for row in xs:
                stats.kendalltau(row, y)
                stats.spearmanr(row, y)

        t_numba, t_scipy = best_of(numba_pass, 5), best_of(scipy_pass, 3)
        report[f"correlations_n{n}"] = {"numba_seconds": t_numba, "scipy_seconds": t_scipy,
                                        "speedup": t_scipy / t_numba}
    Path(args.out).write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
