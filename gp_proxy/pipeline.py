"""Proxy → training-free search under a budget → distillation → report.

The report compares, under the same budget and the same KD recipe, averaged over seeds, the
student chosen by the discovered proxy, by #params, by DisWOT and at random, plus the best
student of the ground truth where the benchmark knows it, with the seconds of every stage and
where each chosen student ranks in the ground truth.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from primitives.errors import GpProxyError

from .bench.benchmark import Benchmark
from .bench.data import Split
from .core.files import atomic_write_json, atomic_write_text
from .core.progress import progress
from .distill.runner import DistillConfig, distill
from .plugin.proxy import Proxy, load_proxy
from .search.students import baseline_scorer, formula_scorer, search

__all__ = ["PipelineConfig", "load_proxy", "run_pipeline"]


@dataclass(frozen=True)
class PipelineConfig:
    max_params: int | None = None
    max_flops: int | None = None
    strategy: str = "exhaustive"
    iterations: int = 200
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 10
    search_seed: int = 0
    # restrict every selector to these architectures (e.g. the proxy campaign's held-out ones)
    among: tuple[str, ...] | None = None


def run_pipeline(proxy: Proxy, proxy_seconds: float, bench: Benchmark, train: Split,
                 test: Split, cfg: PipelineConfig, out: Path, quiet: bool = False
                 ) -> dict[str, Any]:
    """Search with each selector, distil each chosen student on every seed, report; each
    stage reports its progress (a bar on a terminal, a line per unit in logs)."""
    space = bench.search_space()
    teacher = bench.trained_teacher()
    x, y = bench.probe()
    budget = {"max_params": cfg.max_params, "max_flops": cfg.max_flops}
    selectors: dict[str, Any] = {
        "discovered proxy": formula_scorer(proxy, space, teacher, x, y, seed=cfg.search_seed),
        "#params": baseline_scorer("params", space, None, x, y),
        "DisWOT": baseline_scorer("diswot", space, bench.random_teacher(), x, y),
    }
    chosen: dict[str, dict[str, Any]] = {}
    with progress("pipeline: search", len(selectors), quiet) as advance:
        for name, scorer in selectors.items():
            t0 = time.perf_counter()
            top = search(space, scorer, cfg.strategy, cfg.iterations,
                         max_params=cfg.max_params, max_flops=cfg.max_flops,
                         seed=cfg.search_seed, top_k=1, candidates=cfg.among)
            chosen[name] = {"arch": top[0].spec, "search_seconds": time.perf_counter() - t0}
            advance(info=f"{name}: {top[0].spec}")
    rng = random.Random(cfg.search_seed)
    among = set(cfg.among) if cfg.among is not None else None
    fits = [a for a in bench.truth.archs
            if _fits(space, a, **budget) and (among is None or a in among)]
    if not fits:
        raise GpProxyError("no ground-truth architecture fits the budget")
    chosen["random"] = {"arch": rng.choice(fits), "search_seconds": 0.0}
    truth = dict(zip(bench.truth.archs, bench.truth.y.tolist(), strict=True))
    ranked = sorted(fits, key=lambda a: -truth[a])
    chosen["ground-truth best"] = {"arch": ranked[0], "search_seconds": 0.0}
    results: dict[str, dict[str, Any]] = {}
    for name, info in chosen.items():
        arch = info["arch"]
        accs, secs = [], 0.0
        with progress(f"pipeline: distil {name} ({arch})", len(cfg.seeds), quiet) as advance:
            for seed in cfg.seeds:
                run = out / "distill" / f"{arch}__s{seed}"
                m = distill(space.build(arch, seed=seed), teacher, train, test,
                            DistillConfig(epochs=cfg.epochs, seed=seed), run)
                accs.append(100 * m["test_acc"])
                secs += m["train_seconds"]
                advance(info=f"seed {seed}: {accs[-1]:.2f} %")
        results[name] = {
            **info, "params": space.params(arch), "flops": space.flops(arch),
            "kd_acc_mean": statistics.fmean(accs),
            "kd_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "kd_acc_per_seed": accs, "distill_seconds": secs,
            "ground_truth_kd_mean": truth.get(arch),
            "ground_truth_rank_within_budget": (ranked.index(arch) + 1) if arch in truth else None,
        }
    report = {"proxy": str(proxy.node), "sign": proxy.sign, "proxy_seconds": proxy_seconds,
              "budget": budget, "strategy": cfg.strategy, "seeds": list(cfg.seeds),
              "epochs": cfg.epochs, "architectures_within_budget": len(fits),
              "benchmark": str(bench.folder), "results": results,
              "candidates": "all" if cfg.among is None else f"{len(cfg.among)} given "
                            "architectures (the proxy campaign's held-out split)",
              # what the one seeded random draw stands for: a uniform pick within budget
              "random_expectation": {
                  "ground_truth_kd_mean": statistics.fmean(truth[a] for a in fits),
                  "rank_within_budget": (len(fits) + 1) / 2}}
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", _markdown(report))
    return report


def _fits(space: Any, arch: str, max_params: int | None, max_flops: int | None) -> bool:
    return ((max_params is None or space.params(arch) <= max_params)
            and (max_flops is None or space.flops(arch) <= max_flops))


def _markdown(r: dict[str, Any]) -> str:
    lines = [f"# Pipeline report: {r['benchmark']}", "",
             f"Proxy `{r['proxy']}` (sign {r['sign']:+d}); budget {r['budget']}; "
             f"{r['architectures_within_budget']} ground-truth architectures within budget; "
             f"candidates: {r.get('candidates', 'all')}; "
             f"search `{r['strategy']}`; KD recipe of the benchmark, {r['epochs']} epochs, "
             f"seeds {r['seeds']}; proxy stage {r['proxy_seconds']:.1f} s.", "",
             "| selector | student | #params | MACs | KD accuracy (mean ± std over seeds) | "
             "ground-truth KD mean | rank within budget | search s | distill s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, v in r["results"].items():
        gt = "n/a" if v["ground_truth_kd_mean"] is None else f"{v['ground_truth_kd_mean']:.2f}"
        rank = v["ground_truth_rank_within_budget"]
        lines.append(f"| {name} | `{v['arch']}` | {v['params']:,} | {v['flops']:,} | "
                     f"{v['kd_acc_mean']:.2f} ± {v['kd_acc_std']:.2f} | {gt} | "
                     f"{rank if rank is not None else 'n/a'} | {v['search_seconds']:.1f} | "
                     f"{v['distill_seconds']:.0f} |")
    e = r.get("random_expectation")
    if e:
        lines += ["", f"The `random` row is one seeded draw. A uniformly random pick within budget "
                      f"has, in expectation, ground-truth KD mean {e['ground_truth_kd_mean']:.2f} "
                      f"and rank {e['rank_within_budget']:.1f} of "
                      f"{r['architectures_within_budget']}."]
    return "\n".join(lines) + "\n"


