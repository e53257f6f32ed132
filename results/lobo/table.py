"""The leave-one-benchmark-out table of results/lobo, from its `gp-proxy compare` tables.

    python results/lobo/table.py > results/lobo/TABLE.md

Reads every results/lobo/compare-B/compare.csv (each made by `gp-proxy compare params flops
descriptors "sum_layers(l1_norm(weight))" results/lobo/*-s* --benchmark benchmarks/B
--bootstrap 1000 --out results/lobo/compare-B`, split seed 0: on benchmarks that share their
students, the same training and held-out architectures) and every run folder
results/lobo/GROUP-sSEED. What a run evolved on is read from its config.yaml (`benchmark` and
`benchmarks`), what it was evolved with (fitness, size prior) too, so a benchmark or a
campaign added later needs no edit here (its label names every non-default option). Printed
per campaign and benchmark: the held-out τ, its paired differences with #params and with the
descriptor regression, and the partial τ given #params, each with its 95 % bootstrap
interval; a benchmark the campaign never saw is marked "not evolved on"; a formula that
cannot be scored there (teacher and student features of different shapes) "undefined".
Each benchmark's held-out size and noise ceiling head the table.
Where results/lobo/compare-B-fixed/ exists (the same command with `--orient fixed`), a column
gives each proxy's held-out τ with nothing learnt from B: a run keeps the sign it was evolved
with and #params counts bigger as better (the other columns orient each proxy and #params by
its τ on B's training architectures). Where results/lobo/compare-B-unseen/ exists (the same
with `--orient fixed --test-fraction 0.95`: 95 % of B's architectures held out), a last column
gives, for a run that never saw B's student space (another family), its τ on that larger
sample: nothing of B entered the run, so every architecture of B is unseen by it (the 5 %
left out are only what the #params and descriptor baselines of that table fit on).
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

import functools  # noqa: E402

from gp_proxy.bench.benchmark import load_benchmark  # noqa: E402
from gp_proxy.evaluate.fitness import make_splits  # noqa: E402

BASELINES = ("#params", "descriptor regression", "sum_layers(l1_norm(weight))")


def _rows(folder: str) -> dict[str, dict[str, str]]:
    path = HERE / folder / "compare.csv"
    if not path.exists():
        return {}
    with path.open() as fh:
        return {r["proxy"]: r for r in csv.DictReader(fh)}


def _f(x: str) -> str:
    return "n/a" if x in ("", "nan") else f"{float(x):+.3f}"


def _ci(r: dict[str, str], key: str) -> str:
    if r.get("kind") == "failed":  # the formula cannot be scored on this benchmark
        return f"undefined ({r['note'].split(': ')[1] if ': ' in r['note'] else 'failed'})"
    return f"{_f(r[key])} [{_f(r[key + '_lo'])}, {_f(r[key + '_hi'])}]"


def _tau(r: dict[str, str] | None) -> float | None:
    """The held-out τ of a row; NaN when there is no such table, None when undefined."""
    if r is None:
        return float("nan")
    return None if r.get("kind") == "failed" or r["test_tau"] == "" else float(r["test_tau"])


def _runs() -> dict[str, dict[int, tuple[Path, set[str], str]]]:
    """group -> seed -> (folder, benchmarks evolved on, label), from the runs' configs."""
    out: dict[str, dict[int, tuple[Path, set[str], str]]] = {}
    for cfg_file in sorted(HERE.glob("*-s*/config.yaml")):
        run = cfg_file.parent
        group, _, seed = run.name.rpartition("-s")
        cfg = yaml.safe_load(cfg_file.read_text())
        seen = [Path(b).name for b in [cfg["benchmark"], *cfg.get("benchmarks", [])]]
        how = [f"fitness={cfg['fitness']}"] if cfg.get("fitness", "tau") != "tau" else []
        how += ["size_prior=true"] if cfg.get("size_prior") else []
        how += ["defined_on_transfer=true"] if cfg.get("defined_on_transfer") else []
        how += ([f"fitness_aggregate={cfg['fitness_aggregate']}"]
                if cfg.get("fitness_aggregate", "mean") != "mean" else [])
        where = f"on {seen[0]}" if len(seen) == 1 else f"jointly on {', '.join(seen)}"
        label = f"{' '.join(how) or 'default'}, {where}"
        out.setdefault(group, {})[int(seed)] = (run, set(seen), label)
    return out


@functools.cache
def _space(bench: str) -> str:
    return str(load_benchmark(ROOT / "benchmarks" / bench).space)


def _header(bench: str) -> str:
    b = load_benchmark(ROOT / "benchmarks" / bench)
    splits = make_splits(len(b.truth.y), 0.3, seed=0)
    ceiling = b.noise_ceiling(splits.test)
    noise = ("" if ceiling is None else
             f", noise ceiling τ {ceiling['kendall_ceiling']:.3f} (reliability "
             f"{ceiling['reliability']:.3f})")
    return (f"- **{bench}**: {b.space} students, {b.teacher} teacher; {len(splits.train)} "
            f"training / {len(splits.test)} held-out architectures{noise}")


def main() -> None:
    benches = sorted(p.parent.name.removeprefix("compare-")
                     for p in HERE.glob("compare-*/compare.csv")
                     if not p.parent.name.endswith(("-fixed", "-unseen")))
    tables = {b: _rows(f"compare-{b}") for b in benches}
    fixed = {b: _rows(f"compare-{b}-fixed") for b in benches}
    unseen_family = {b: _rows(f"compare-{b}-unseen") for b in benches}
    for bench in benches:
        print(_header(bench))
    print()
    print("| campaign | seed | benchmark | held-out τ [95 % CI] | Δτ vs #params | "
          "Δτ vs descriptor regression | partial τ given #params | held-out τ, sign as "
          "evolved | another family: τ on 95 % of it, sign as evolved |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    # (campaign, benchmark) -> per seed: τ oriented on B, as evolved, on 95 % of B
    spread: dict[tuple[str, str], list[list[float]]] = {}
    for _group, seeds in _runs().items():
        for seed, (run, seen, label) in sorted(seeds.items()):
            for bench, rows in tables.items():
                key = f"results/lobo/{run.name}:"
                r = next((v for k, v in rows.items() if k.startswith(key)), None)
                if r is None:
                    continue
                rf = next((v for k, v in fixed[bench].items() if k.startswith(key)), None)
                other_family = _space(bench) not in {_space(b) for b in seen}
                ru = (next((v for k, v in unseen_family[bench].items() if k.startswith(key)),
                           None) if other_family else None)
                unseen = "" if bench in seen else " (**not evolved on**)"
                print(f"| {label} | {seed} | {bench}{unseen} | {_ci(r, 'test_tau')} | "
                      f"{_ci(r, 'test_tau_minus_params')} | "
                      f"{_ci(r, 'test_tau_minus_descriptors')} | "
                      f"{_ci(r, 'test_partial_tau_params')} | "
                      f"{'n/a' if rf is None else _ci(rf, 'test_tau')} | "
                      f"{'' if ru is None else _ci(ru, 'test_tau')} |")
                spread.setdefault((label, bench + unseen.replace("**", "")), []).append(
                    [_tau(x) for x in (r, rf, ru)])
    for bench, rows in tables.items():
        for name in BASELINES:
            r, rf = rows[name], fixed[bench].get(name)
            ru = unseen_family[bench].get(name)
            as_is = "n/a" if rf is None else _ci(rf, "test_tau")
            # the descriptor regression fits on B: on 5 % of it, its figure there means nothing
            wide = ("" if ru is None or name == "descriptor regression" else
                    _ci(ru, "test_tau"))
            extra = (f"| | | | {as_is} | {wide} |" if name == "#params" else
                     f"| {_ci(r, 'test_tau_minus_params')} | "
                     f"{_ci(r, 'test_tau_minus_descriptors')} | "
                     f"{_ci(r, 'test_partial_tau_params')} | {as_is} | {wide} |")
            print(f"| **{name}** | | {bench} | {_ci(r, 'test_tau')} {extra}")
    print()
    print("| campaign | benchmark | held-out τ over GP seeds: mean (sd; min–max) | sign as "
          "evolved | another family, 95 % of it |")
    print("| --- | --- | --- | --- | --- |")
    for (label, bench), per_seed in spread.items():
        print(f"| {label} | {bench} | "
              + " | ".join(_spread([taus[i] for taus in per_seed]) for i in range(3)) + " |")


def _spread(values: list[float | None]) -> str:
    present = [t for t in values if t is None or t == t]  # a missing table gives NaN
    taus = [t for t in present if t is not None]
    undefined = len(present) - len(taus)
    note = f"; undefined for {undefined} of {len(present)} seeds" if undefined else ""
    if not taus:
        return f"undefined for every seed ({undefined})" if undefined else ""
    sd = f"{statistics.stdev(taus):.3f}" if len(taus) > 1 else "n/a"
    return f"{statistics.mean(taus):.3f} ({sd}; {min(taus):.3f}–{max(taus):.3f}{note})"


if __name__ == "__main__":
    main()
