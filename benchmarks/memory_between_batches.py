"""A campaign process's memory between generations, with and without handing the free heap
back.

    python benchmarks/memory_between_batches.py --out benchmarks/memory_between_batches.json

On benchmark 3 (``benchmarks/fmnist-resnet``: 64 ResNets, its trained teacher and probe
batch, 16 activation samples) ``--batches`` batches of ``--formulas`` random formulas of the
campaign's grammar (the same ones in both modes) are evaluated as a generation is: the memo
kept through the batch, cleared after it. Each mode runs in a fresh process, the allocator
tuned as the CPU evaluator tunes it:

- ``release``: as the evaluator does since 2026-12-03 (``clear_memo`` hands the free heap back
  with ``malloc_trim``);
- ``keep``: ``release_memory`` switched off (the behaviour before).

Recorded per mode and batch: the resident set after the batch (before and after the memo is
cleared) and the batch's wall time; the ratio of the last resident sets and of the total
times (measured in this one run, on this machine).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss() -> int:
    """Resident set of this process in bytes."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def _one(mode: str, batches: int, formulas: int, cache_dir: str) -> dict[str, Any]:
    import primitives
    from gp_proxy.bench.benchmark import load_benchmark
    from gp_proxy.evaluate import evaluator as ev_module
    from gp_proxy.evaluate.cache import load_cache
    from gp_proxy.evolve.pset import build_pset

    if mode == "keep":
        ev_module.release_memory = lambda: False
    bench = load_benchmark(ROOT / "benchmarks" / "fmnist-resnet")
    cache = load_cache(cache_dir, bench.cache_config(act_samples=16), list(bench.truth.archs),
                       lazy=True)
    ev = ev_module.Evaluator(cache, device="cpu")
    ps = build_pset("both", input_kinds=cache.feature_kinds, misaligned=cache.misaligned(),
                    smallest_map=cache.smallest_map())
    rng = random.Random(0)
    rows = []
    for b in range(batches):
        batch = list(dict.fromkeys(str(primitives.canonicalize(ps.to_node(
            ps.random_tree(rng, 2, 6)))) for _ in range(formulas)))
        t0 = time.perf_counter()
        ev.evaluate(batch, keep_memo=True)
        held = _rss()
        ev.clear_memo()
        rows.append({"batch": b, "formulas": len(batch), "seconds": time.perf_counter() - t0,
                     "rss_with_memo_mb": held >> 20, "rss_after_clear_mb": _rss() >> 20})
        print(f"{mode} batch {b}: {rows[-1]['rss_after_clear_mb']} MB after clearing",
              file=sys.stderr, flush=True)
    return {"mode": mode, "batches": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--formulas", type=int, default=60)
    p.add_argument("--cache-dir", default=str(ROOT / ".gp-proxy-cache"))
    p.add_argument("--mode", help=argparse.SUPPRESS)  # a child process's one mode
    a = p.parse_args()
    if a.mode:
        print(json.dumps(_one(a.mode, a.batches, a.formulas, a.cache_dir)))
        return
    runs = {}
    for mode in ("release", "keep"):  # each in a fresh process: allocator state is global
        out = subprocess.run([sys.executable, __file__, "--out", str(a.out), "--mode", mode,
                              "--batches", str(a.batches), "--formulas", str(a.formulas),
                              "--cache-dir", a.cache_dir],
                             check=True, capture_output=True, text=True).stdout
        runs[mode] = json.loads(out.strip().splitlines()[-1])["batches"]
    last = {m: r[-1]["rss_after_clear_mb"] for m, r in runs.items()}
    total = {m: sum(x["seconds"] for x in r) for m, r in runs.items()}
    result = {
        "command": f"python benchmarks/memory_between_batches.py --out {a.out} "
                   f"--batches {a.batches} --formulas {a.formulas}",
        "batches": a.batches, "formulas_per_batch": a.formulas,
        "last_rss_mb": last,
        "peak_rss_after_clear_mb": {m: max(x["rss_after_clear_mb"] for x in r)
                                    for m, r in runs.items()},
        "rss_ratio_keep_over_release": last["keep"] / last["release"],
        "time_ratio_release_over_keep": total["release"] / total["keep"],
        "runs": runs,
    }
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
