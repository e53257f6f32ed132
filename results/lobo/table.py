"""The leave-one-benchmark-out table of results/lobo, from the two `gp-proxy compare` tables.

    python results/lobo/table.py > results/lobo/TABLE.md

Reads results/lobo/compare-fmnist/compare.csv and compare-fmnist-wide/compare.csv (each made
by `gp-proxy compare params flops descriptors "sum_layers(l1_norm(weight))" results/lobo/*-s*
--benchmark B --bootstrap 1000 --out results/lobo/compare-B`, same split seed 0: the same 113
training and 49 held-out architectures, since the two benchmarks share their students) and
prints, per campaign and benchmark, the held-out τ,
its paired differences with #params and with the descriptor regression, and the partial τ
given #params, each with its 95 % bootstrap interval; a benchmark the campaign never saw is
marked "not evolved on".
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {"fmnist": "benchmarks/fmnist (resnet-t teacher)",
           "fmnist-wide": "benchmarks/fmnist-wide (wide-cnn teacher)"}
#: campaign group -> benchmarks it evolved on
EVOLVED = {"fmnist": {"fmnist"}, "wide": {"fmnist-wide"}, "joint": {"fmnist", "fmnist-wide"},
           "partial": {"fmnist"}}
GROUPS = {"fmnist": "default, on fmnist", "wide": "default, on fmnist-wide",
          "joint": "default, jointly on both", "partial": "fitness=partial_tau_params "
                                                          "size_prior=true, on fmnist"}


def _rows(bench: str) -> dict[str, dict[str, str]]:
    with (HERE / f"compare-{bench}" / "compare.csv").open() as fh:
        return {r["proxy"]: r for r in csv.DictReader(fh)}


def _f(x: str) -> str:
    return "n/a" if x in ("", "nan") else f"{float(x):+.3f}"


def _ci(r: dict[str, str], key: str) -> str:
    return f"{_f(r[key])} [{_f(r[key + '_lo'])}, {_f(r[key + '_hi'])}]"


def main() -> None:
    tables = {b: _rows(b) for b in BENCHES}
    print("| campaign | seed | benchmark | held-out τ [95 % CI] | Δτ vs #params | "
          "Δτ vs descriptor regression | partial τ given #params |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    spread: dict[tuple[str, str], list[float]] = {}
    for group in GROUPS:
        for seed in (0, 1, 2):
            run = f"results/lobo/{group}-s{seed}"
            for bench, rows in tables.items():
                r = next((v for k, v in rows.items() if k.startswith(run + ":")), None)
                if r is None:
                    continue
                seen = "" if bench in EVOLVED[group] else " (**not evolved on**)"
                print(f"| {GROUPS[group]} | {seed} | {bench}{seen} | {_ci(r, 'test_tau')} | "
                      f"{_ci(r, 'test_tau_minus_params')} | "
                      f"{_ci(r, 'test_tau_minus_descriptors')} | "
                      f"{_ci(r, 'test_partial_tau_params')} |")
                spread.setdefault((group, bench), []).append(float(r["test_tau"]))
    for bench, rows in tables.items():
        for name in ("#params", "descriptor regression", "sum_layers(l1_norm(weight))"):
            r = rows[name]
            extra = ("| | | |" if name == "#params" else
                     f"| {_ci(r, 'test_tau_minus_params')} | "
                     f"{_ci(r, 'test_tau_minus_descriptors')} | "
                     f"{_ci(r, 'test_partial_tau_params')} |")
            print(f"| **{name}** | | {bench} | {_ci(r, 'test_tau')} {extra}")
    print()
    print("| campaign | benchmark | held-out τ over GP seeds: mean (sd; min–max) |")
    print("| --- | --- | --- |")
    for (group, bench), taus in spread.items():
        sd = statistics.stdev(taus) if len(taus) > 1 else float("nan")
        seen = "" if bench in EVOLVED[group] else " (not evolved on)"
        print(f"| {GROUPS[group]} | {bench}{seen} | {statistics.mean(taus):.3f} ({sd:.3f}; "
              f"{min(taus):.3f}–{max(taus):.3f}) |")


if __name__ == "__main__":
    main()
