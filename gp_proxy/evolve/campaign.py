"""An evolution campaign: one object owns its state, its run directory and its resume.

Run directory (the product)::

    config.yaml        the resolved configuration
    env.json           versions, git revision, device, cache key
    history.jsonl      one line per generation
    checkpoint.json    population (formula strings), RNG state, archive; atomic, every generation
    hall_of_fame.csv   best formulas by training fitness, with held-out metrics
    pareto.csv         held-out Kendall vs complexity front of the archive
    best_proxy.json    the best formula, its correlations, the baselines, LaTeX

Fitness is the oriented Kendall τ on the training architectures (:mod:`gp_proxy.evaluate.fitness`);
held-out numbers are reported, never selected on (the Pareto front is labelled as such).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import yaml
from deap import gp

import primitives
from primitives.errors import GpProxyError

from ..baselines.metrics import baselines, paired_verdicts, record_context
from ..bench.benchmark import Benchmark, load_benchmark
from ..config import CampaignConfig, ConfigError
from ..core.artifacts import (
    ArchiveEntry,
    ArtifactError,
    CampaignCheckpoint,
    load_artifact,
    read_history,
    write_artifact,
)
from ..core.files import atomic_write_json, atomic_write_text, run_lock
from ..core.provenance import environment
from ..core.rank import kendall_tau
from ..evaluate.backends import make_evaluator
from ..evaluate.cache import CacheConfig, FeatureCache, load_cache
from ..evaluate.evaluator import EvalResult, Evaluator
from ..evaluate.fitness import (
    Assessment,
    Splits,
    assess,
    descriptor_regression,
    make_splits,
    partial_kendall,
    training_metric,
)
from .pset import ProxySet, build_pset, undefined_on
from .schemes import SCHEMES
from .variation import crossover, mutate

__all__ = ["FAILED", "Campaign", "Record"]

FAILED = -math.inf


@dataclass
class Record:
    """What is known about one canonical formula."""

    formula: str
    status: str
    reason: str
    fitness: float
    assessment: Assessment | None
    complexity: int
    size: int
    generation: int
    spread: float = math.nan  # max − min of the training metric over the fitness variants

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"formula": self.formula, "status": self.status,
                             "reason": self.reason, "fitness": _num(self.fitness),
                             "complexity": self.complexity, "size": self.size,
                             "generation": self.generation}
        if self.assessment is not None:
            d.update(self.assessment.to_json())
        if math.isfinite(self.spread):
            d["fitness_spread"] = self.spread
        return d


@dataclass
class Variant:
    """One set of features a formula's fitness is computed on: a benchmark with a student
    init seed and a probe batch (the first variant is the primary one, whose training sign
    orients the formula everywhere)."""

    name: str
    bench: Benchmark
    cache: FeatureCache
    evaluator: Evaluator
    y: np.ndarray
    splits: Splits


class Elsewhere(NamedTuple):
    """Where every formula must also be defined: a ``valid_for`` space (its feature kinds) or,
    with ``defined_on_transfer``, a transfer benchmark (kinds, teacher-student axes that
    differ in size, smallest map side: its shapes, never its accuracies)."""

    name: str
    kinds: dict[str, Any]
    misaligned: dict[str, frozenset[int]] | None = None
    smallest_map: int | None = None


def _num(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def _jsonable_state(state: tuple[Any, ...]) -> tuple[int, list[int], float | None]:
    return (state[0], list(state[1]), state[2])


def _state_from_json(data: list[Any]) -> tuple[Any, ...]:
    return (data[0], tuple(data[1]), data[2])


def _real_vs_noise(real: EvalResult, noise: EvalResult) -> float | None:
    """Kendall τ between a formula's scores on the real and on the noise probe batch; None
    when either is not a usable score vector (e.g. constant on noise data)."""
    if not (real.ok and noise.ok) or real.scores is None or noise.scores is None:
        return None
    return _num(kendall_tau(real.scores, noise.scores))


class Campaign:
    """Owns a campaign's mutable state: population, RNG, archive, counters, run directory."""

    def __init__(self, config: CampaignConfig, run_dir: str | Path,
                 benchmark: Benchmark | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.bench = benchmark or load_benchmark(config.benchmark, config.target)
        device = None if config.device == "auto" else config.device
        self.cache = self._features(self.bench, self.bench.cache_config(
            config.teacher_init, config.init_seed, config.act_samples))
        self.evaluator = make_evaluator(self.cache, config)
        self.y = self.bench.truth.y
        self.splits: Splits = make_splits(len(self.y), config.test_fraction, config.folds,
                                          config.split_seed)
        self.variants = [Variant("primary", self.bench, self.cache, self.evaluator, self.y,
                                 self.splits), *self._extra_variants(device)]
        caches = [v.cache for v in self.variants]
        kinds = {tuple(sorted((k, str(v)) for k, v in c.feature_kinds.items())) for c in caches}
        if len(kinds) > 1:
            raise ConfigError("benchmarks: the joint benchmarks' features are of different "
                              "kinds (a CNN and a ViT space); evolve on one family")
        misaligned: dict[str, frozenset[int]] = {}
        for c in caches:
            for k, axes in c.misaligned().items():
                misaligned[k] = misaligned.get(k, frozenset()) | axes
        smallest = [m for c in caches if (m := c.smallest_map()) is not None]
        self.ps: ProxySet = build_pset(
            config.grammar, config.combiner, self.cache.feature_kinds, misaligned,
            exclude=frozenset() if config.size_prior else frozenset({"log_params"}),
            smallest_map=min(smallest) if smallest else None)
        self.rng = random.Random(config.seed)
        # where every formula must be defined besides the benchmarks it is evolved on: the
        # valid_for spaces (feature kinds only) and, on request, the transfer benchmarks
        # (kinds, teacher-student shape differences, map sizes)
        self._transfer: dict[str, Variant] = {}
        self._elsewhere_rules = [Elsewhere(name, _feature_kinds(name))
                                 for name in config.valid_for]
        if config.defined_on_transfer:
            for folder in config.transfer:
                tc = self._transfer_variant(folder).cache
                self._elsewhere_rules.append(Elsewhere(folder, dict(tc.feature_kinds),
                                                       tc.misaligned(), tc.smallest_map()))
        self.population: list[gp.PrimitiveTree] = []
        self.records: dict[str, Record] = {}
        self._keys: dict[str, str] = {}  # DEAP's rendering of a tree -> its canonical formula
        self._nodes: dict[str, primitives.Node] = {}  # canonical formula -> its Node
        self.archive: dict[str, Record] = {}
        self.generation = 0
        self.evaluations = 0
        self.elapsed = 0.0
        self.stagnant = 0
        self.best_history: list[float] = []
        self.baselines = baselines(self.bench, self.splits, config.fitness)

    def _features(self, bench: Benchmark, config: CacheConfig) -> FeatureCache:
        """A benchmark's feature cache, built on the campaign's backend where missing, loaded
        lazily: the evaluator (or its workers) reads each chunk when it needs it and holds at
        most ``held_bytes``, so a large space never sits in memory whole or twice."""
        c = self.config
        return load_cache(c.cache_dir, config, list(bench.truth.archs), lazy=True,
                          backend=c.backend, workers=c.workers, scheduler=c.scheduler)

    def _extra_variants(self, device: str | None) -> list[Variant]:
        c = self.config
        out = []

        def variant(name: str, bench: Benchmark, init_seed: int, probe: str | None) -> Variant:
            config = bench.cache_config(c.teacher_init, init_seed, c.act_samples)
            if probe is not None:
                config = dataclasses.replace(config, probe=probe)
            cache = self._features(bench, config)
            ev = make_evaluator(cache, c)
            y = bench.truth.y
            return Variant(name, bench, cache, ev, y,
                           make_splits(len(y), c.test_fraction, c.folds, c.split_seed))

        for seed in c.init_seeds:
            if seed != c.init_seed:
                out.append(variant(f"init_seed={seed}", self.bench, seed, None))
        for probe in c.probes:
            if not Path(probe).is_file():
                raise ConfigError(f"probes: {probe}: no such probe file")
            out.append(variant(f"probe={Path(probe).name}", self.bench, c.init_seed, probe))
        for folder in c.benchmarks:
            other = load_benchmark(folder, c.target)
            if other.folder.resolve() != self.bench.folder.resolve():
                out.append(variant(f"benchmark={other.name}", other, c.init_seed, None))
        return out

    # ------------------------------------------------------------------ fitness -----------
    def key(self, tree: gp.PrimitiveTree) -> str:
        """The canonical formula string: the identity of an individual everywhere. Selection
        asks for it many times per tree; each distinct tree is converted to a Node and
        canonicalised once (keyed by DEAP's own rendering), and the canonical Node is kept for
        the record, so a formula is not printed and parsed back per comparison."""
        text = str(tree)
        key = self._keys.get(text)
        if key is None:
            node = primitives.canonicalize(self.ps.to_node(tree))
            key = self._keys[text] = str(node)
            self._nodes.setdefault(key, node)
        return key

    def evaluate(self, trees: list[gp.PrimitiveTree]) -> list[Record]:
        """Records for ``trees`` (canonical trees), evaluating only unseen formulas."""
        keys = [self.key(t) for t in trees]
        todo = list(dict.fromkeys(k for k in keys if k not in self.records))
        if todo:
            results = self.evaluator.evaluate(todo, keep_memo=True)
            others = [v.evaluator.evaluate(todo, keep_memo=True) for v in self.variants[1:]]
            for i, res in enumerate(results):
                node = self._nodes.get(res.formula) or primitives.parse(
                    res.formula, self.cache.feature_kinds)
                a: Assessment | None = None
                fitness, spread = FAILED, math.nan
                status, reason = res.status, res.reason
                if res.ok and res.scores is not None:
                    a = assess(res.scores, self.y, self.bench.params, self.splits,
                               self.config.fitness)
                    if math.isfinite(a.fitness):
                        fitness = a.fitness
                    else:
                        status, reason = "constant", "no ranking on the training architectures"
                if others and fitness > FAILED and a is not None:
                    fitness, spread, status, reason = self._robust(a, [o[i] for o in others])
                    a = dataclasses.replace(a, fitness=fitness) if fitness > FAILED else a
                rec = Record(res.formula, status, reason, fitness, a,
                             primitives.complexity(node), node.size, self.generation, spread)
                self.records[res.formula] = rec
                if fitness > FAILED:
                    self._archive(rec)
        return [self.records[k] for k in keys]

    def _robust(self, primary: Assessment, others: list[EvalResult]
                ) -> tuple[float, float, str, str]:
        """Fitness over every variant: the training metric of each, oriented by the primary
        variant's sign, aggregated (mean or worst); a failure on any variant fails the
        formula. Returns (fitness, spread, status, reason)."""
        values = [primary.fitness]
        for v, res in zip(self.variants[1:], others, strict=True):
            if not res.ok or res.scores is None:
                return FAILED, math.nan, res.status, f"on {v.name}: {res.reason}"
            m = training_metric(np.asarray(res.scores, dtype=np.float64), v.y, v.bench.params,
                                v.splits.train, self.config.fitness)
            if not math.isfinite(m):
                return FAILED, math.nan, "constant", f"on {v.name}: no ranking"
            values.append(primary.sign * m)
        agg = min(values) if self.config.fitness_aggregate == "worst" else statistics.fmean(values)
        return agg, max(values) - min(values), "ok", ""

    def _archive(self, rec: Record) -> None:
        self.archive[rec.formula] = rec
        if len(self.archive) > self.config.archive_size:
            worst = min(self.archive.values(), key=self._rank_key)
            del self.archive[worst.formula]

    @staticmethod
    def _rank_key(r: Record) -> tuple[float, int, str]:
        """Higher fitness first, then lower complexity, then the string (a total order)."""
        return (r.fitness, -r.complexity, r.formula)

    def select_key(self, r: Record) -> tuple[float, int, str]:
        """What selection compares: fitness less ``parsimony`` per unit of complexity (linear
        parsimony pressure, Koza 1992; 0 by default: exactly :meth:`_rank_key`), then lower
        complexity, then the string. Reports (best, hall of fame) keep the plain fitness."""
        return (r.fitness - self.config.parsimony * r.complexity, -r.complexity, r.formula)

    def record(self, tree: gp.PrimitiveTree) -> Record:
        return self.records[self.key(tree)]

    def order(self, tree: gp.PrimitiveTree) -> tuple[float, int, str]:
        return self.select_key(self.record(tree))

    # ------------------------------------------------------------------ initialisation ----
    def newcomer(self) -> gp.PrimitiveTree:
        from .variation import normalise

        c = self.config
        for _ in range(1000):
            t = normalise(self.ps, self.ps.random_tree(self.rng, c.init_min_height,
                                                       c.init_max_height))
            if len(t) <= c.max_size and t.height + 1 <= c.max_height and self._valid(t):
                return t
        if not self._valid(t):
            raise ConfigError(f"no formula of the grammar found in 1000 draws that is also "
                              f"defined on {self._elsewhere_names()}")
        return t

    def _elsewhere_names(self) -> str:
        return ", ".join(e.name for e in self._elsewhere_rules)

    def _valid(self, tree: gp.PrimitiveTree) -> bool:
        """Defined as well on every space of ``valid_for`` and, with ``defined_on_transfer``,
        on every transfer benchmark."""
        if not self._elsewhere_rules:
            return True
        node = self.ps.to_node(tree)
        return all(undefined_on(node, e.kinds, e.misaligned, e.smallest_map) is None
                   for e in self._elsewhere_rules)

    def initialise(self) -> None:
        seen: set[str] = set()
        pop: list[gp.PrimitiveTree] = []
        for text in self.config.guesses:
            try:
                node = primitives.canonicalize(primitives.parse(text, self.cache.feature_kinds))
            except primitives.FormulaError as exc:
                raise ConfigError(f"guess {text!r}: {exc}") from None
            tree = self.ps.to_tree(node)
            if not self._valid(tree):
                raise ConfigError(f"guess {text!r} is not defined on every space of valid_for "
                                  f"or transfer benchmark it must be "
                                  f"({self._elsewhere_names()})")
            if str(node) not in seen:
                seen.add(str(node))
                pop.append(tree)
        attempts = 0
        while len(pop) < self.config.population and attempts < 100 * self.config.population:
            attempts += 1
            t = self.newcomer()
            k = self.key(t)
            if k not in seen:
                seen.add(k)
                pop.append(t)
        self.population = pop[: self.config.population]
        self.evaluations += len(self.population)
        self.evaluate(self.population)

    # ------------------------------------------------------------------ schemes -----------
    def offspring(self, parents: list[gp.PrimitiveTree]) -> gp.PrimitiveTree:
        c = self.config
        child = parents[0]
        if self.rng.random() < c.crossover_prob:
            child = crossover(self.ps, parents[0], parents[1], self.rng, c.max_height, c.max_size)
        if self.rng.random() < c.mutation_prob or self.key(child) in (
                self.key(parents[0]), self.key(parents[1])):
            child = mutate(self.ps, child, self.rng, c.max_height, c.max_size)
        for _ in range(20):  # a child undefined where it must be defined is mutated again
            if self._valid(child):
                return child
            child = mutate(self.ps, parents[0], self.rng, c.max_height, c.max_size)
        return child if self._valid(child) else parents[0]

    # ------------------------------------------------------------------ reporting ---------
    def best(self) -> Record:
        return max((self.record(t) for t in self.population), key=self._rank_key)

    def hall_of_fame(self) -> list[Record]:
        return sorted(self.archive.values(), key=self._rank_key, reverse=True)[
            : self.config.hof_size]

    def pareto(self) -> list[Record]:
        """Non-dominated archive members by (held-out τ high, complexity low)."""
        recs = [r for r in self.archive.values()
                if r.assessment is not None and math.isfinite(r.assessment.test_tau)]
        front: list[Record] = []
        # the formula breaks ties, so a resumed run orders equal rows as an uninterrupted one
        for r in sorted(recs, key=lambda r: (r.complexity, -r.assessment.test_tau,  # type: ignore[union-attr]
                                             r.formula)):
            if not front or r.assessment.test_tau > front[-1].assessment.test_tau:  # type: ignore[union-attr]
                front.append(r)
        return front

    def _history_line(self, statuses: Counter[str], seconds: float) -> dict[str, Any]:
        b = self.best()
        fits = [self.record(t).fitness for t in self.population]
        finite = [f for f in fits if math.isfinite(f)]
        return {
            "generation": self.generation, "evaluations": self.evaluations,
            "seconds": round(seconds, 3), "best": b.to_json(),
            "median_fitness": statistics.median(finite) if finite else None,
            "statuses": dict(statuses),
            "baselines": {k: v.to_json() for k, v in self.baselines.items()},
        }

    # ------------------------------------------------------------------ persistence -------
    def _checkpoint(self) -> None:
        write_artifact(self.run_dir / "checkpoint.json", CampaignCheckpoint(
            generation=self.generation, evaluations=self.evaluations,
            elapsed=self.elapsed, stagnant=self.stagnant,
            best_history=[_num(f) for f in self.best_history],
            population=[self.key(t) for t in self.population],
            rng_state=_jsonable_state(self.rng.getstate()),
            archive=[ArchiveEntry(**r.to_json()) for r in self.archive.values()]))

    def _write_static(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.yaml",
                          yaml.safe_dump(self.config.model_dump(), sort_keys=True))
        atomic_write_json(self.run_dir / "env.json", {
            **environment(), "device": str(self.evaluator.device), "cache_key": self.cache.key,
            # with workers elsewhere, "device" is this process's; the workers resolve theirs
            "backend": self.config.backend,
            "architectures": len(self.y), "train": len(self.splits.train),
            "test": len(self.splits.test), "space": self.bench.space,
            "benchmark": str(self.bench.folder),
        })
        atomic_write_json(self.run_dir / "splits.json", self.splits.to_json())

    def _restore(self, path: Path) -> None:
        state = load_artifact(path, CampaignCheckpoint)
        self.generation = state.generation
        self.evaluations = state.evaluations
        self.elapsed = state.elapsed
        self.stagnant = state.stagnant
        self.best_history = [FAILED if f is None else f for f in state.best_history]
        try:
            self.rng.setstate(_state_from_json(list(state.rng_state)))
        except (TypeError, ValueError):
            raise ArtifactError(f"{path}: field rng_state: not a random-generator state"
                                ) from None
        try:
            self.population = [self.ps.to_tree(primitives.parse(f, self.cache.feature_kinds))
                               for f in state.population]
        except GpProxyError as exc:
            raise ArtifactError(f"{path}: field population: {exc}") from None
        self.evaluate(self.population)
        for d in (e.model_dump() for e in state.archive):
            if d["formula"] not in self.records:
                fitness = FAILED if d["fitness"] is None else float(d["fitness"])
                self.records[d["formula"]] = Record(
                    d["formula"], d["status"], d["reason"], fitness, _assessment(d),
                    d["complexity"], d["size"], d["generation"],
                    math.nan if d.get("fitness_spread") is None else d["fitness_spread"])
            rec = self.records[d["formula"]]
            rec.generation = d["generation"]
            self.archive[d["formula"]] = rec

    def write_results(self) -> dict[str, Any]:
        hof = self.hall_of_fame()
        fields = ["rank", "formula", "fitness", "train_tau", "test_tau", "test_rho", "kfold_tau",
                  "test_tau_in_params_bins", "test_partial_tau_params", "test_tau_size_residual",
                  "fitness_spread", "sign", "complexity", "size", "generation", "latex"]
        for name, rows in (("hall_of_fame.csv", hof), ("pareto.csv", self.pareto())):
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
            w.writeheader()
            for i, r in enumerate(rows, start=1):
                w.writerow({**r.to_json(), "rank": i,
                            "latex": primitives.to_latex(primitives.parse(
                                r.formula, self.cache.feature_kinds))})
            atomic_write_text(self.run_dir / name, buf.getvalue())
        best = hof[0] if hof else self.best()
        node = primitives.parse(best.formula, self.cache.feature_kinds)
        out = {**best.to_json(), **self._anatomy(node), "latex": primitives.to_latex(node),
               "sympy": str(primitives.to_sympy(node)),
               **record_context(self.bench, self.splits, self.config.target, self.baselines),
               # stochastic ops (mask, drop) draw from (seed, subtree): scoring the formula
               # again needs the campaign's seed
               "seed": self.config.seed,
               "generations": self.generation, "evaluations": self.evaluations,
               "beats_params_on_held_out": bool(
                   best.assessment is not None
                   and best.assessment.test_tau > self.baselines["params"].test_tau)}
        out.update(self._paired(best.formula))
        if len(self.variants) > 1 or self.config.transfer:
            out["held_out_elsewhere"] = self._elsewhere(best.formula, best.assessment)
        atomic_write_json(self.run_dir / "best_proxy.json", out)
        self._write_calibration(node)
        return out

    def _paired(self, formula: str) -> dict[str, Any]:
        """The best formula's held-out τ minus #params' and minus the descriptor
        regression's, each with its paired bootstrap interval (1,000 resamples of the held-out
        architectures, the same for both sides): what decides "beats #params", rather than the
        point estimates alone."""
        res = self.evaluator.evaluate([formula])[0]
        if not res.ok or res.scores is None:
            return {}
        return paired_verdicts(res.scores, self.bench, self.splits)

    def _elsewhere(self, formula: str, a: Assessment | None) -> list[dict[str, Any]]:
        """Held-out numbers of ``formula`` on every other variant it was evolved on and on
        every transfer benchmark it never saw (oriented by the primary training sign), each
        beside #params and the descriptor regression on the same held-out architectures."""
        sign = 1 if a is None else a.sign
        c = self.config
        rows = []
        targets: list[tuple[str, Variant | None, str | None]] = [
            (v.name, v, None) for v in self.variants[1:]]
        targets += [(f"transfer={Path(t).name}", None, t) for t in c.transfer]
        for name, v, folder in targets:
            if v is None:
                assert folder is not None
                v = self._transfer_variant(folder)
            res = v.evaluator.evaluate([formula])[0]
            te = v.splits.test
            row: dict[str, Any] = {"name": name, "benchmark": str(v.bench.folder),
                                   "status": res.status, "held_out": len(te)}
            params = v.bench.params
            row["params_test_tau"] = _num(kendall_tau(params[te], v.y[te]))
            desc = v.bench.descriptors()
            if desc is not None:
                pred = descriptor_regression(desc, params, v.y, v.splits.train)
                row["descriptors_test_tau"] = _num(kendall_tau(pred[te], v.y[te]))
            if res.ok and res.scores is not None:
                o = sign * np.asarray(res.scores, dtype=np.float64)
                row["test_tau"] = _num(kendall_tau(o[te], v.y[te]))
                row["test_partial_tau_params"] = _num(partial_kendall(o[te], v.y[te],
                                                                      params[te]))
            ceiling = v.bench.noise_ceiling(te)
            if ceiling is not None:
                row["kendall_ceiling"] = _num(ceiling["kendall_ceiling"])
            rows.append(row)
        return rows

    def _transfer_variant(self, folder: str) -> Variant:
        """A transfer benchmark's features, evaluator and split, made once: read for its
        shapes at the start (``defined_on_transfer``) and scored on at the end."""
        if folder not in self._transfer:
            c = self.config
            bench = load_benchmark(folder, c.target)
            cache = self._features(bench, bench.cache_config(c.teacher_init, c.init_seed,
                                                             c.act_samples))
            y = bench.truth.y
            self._transfer[folder] = Variant(
                f"transfer={Path(folder).name}", bench, cache, make_evaluator(cache, c), y,
                make_splits(len(y), c.test_fraction, c.folds, c.split_seed))
        return self._transfer[folder]

    def _write_calibration(self, node: primitives.Node) -> None:
        """For a rank/z-combined best formula, ``calibration.json``: its parts' values over the
        benchmark's architectures, so that ``Proxy.load(run_dir)`` scores one model at a time
        (placed against these students; calibrate on a sample of another space to use it
        there)."""
        from ..plugin.proxy import Calibration, Proxy

        path = self.run_dir / "calibration.json"
        proxy = Proxy(node)
        if not proxy.cross_arch:
            path.unlink(missing_ok=True)
            return
        parts = proxy.parts()
        results = self.evaluator.evaluate([p.text for p in parts])
        if not all(r.ok and r.scores is not None for r in results):
            path.unlink(missing_ok=True)  # a failing part: nothing to place models against
            return
        Calibration.from_parts(node, {p.text: torch.from_numpy(np.asarray(r.scores))
                                      for p, r in zip(parts, results, strict=True)}).save(path)

    def _anatomy(self, node: primitives.Node) -> dict[str, Any]:
        """How much of a formula is a size statistic, and what each combined part does.

        ``tau_with_params``: τ between the formula's oriented scores and #params over all
        architectures. ``parts``: for rank/z combinations, each part's status and held-out τ
        (a constant part contributes nothing: the formula reduces to the other part).
        """
        texts = [node.text] + ([a.text for a in node.args] if node.op.cross_arch else [])
        results = self.evaluator.evaluate(texts)
        info: dict[str, Any] = {}
        whole = results[0]
        if whole.scores is not None:  # on the oriented score (sign chosen on training archs)
            sign = assess(whole.scores, self.y, self.bench.params, self.splits,
                          self.config.fitness).sign
            info["tau_with_params"] = _num(sign * kendall_tau(whole.scores,
                                                                  self.bench.params))
        noisy = self._noise_results(texts) if self.config.noise_check else None
        if noisy is not None:
            info["tau_real_vs_noise"] = _real_vs_noise(whole, noisy[0])
        parts = []
        for i, res in enumerate(results[1:], start=1):
            entry: dict[str, Any] = {"formula": res.formula, "status": res.status}
            if res.ok and res.scores is not None:
                a = assess(res.scores, self.y, self.bench.params, self.splits)
                entry.update({"test_tau": _num(a.test_tau), "sign": a.sign,
                              "tau_with_params": _num(a.sign * kendall_tau(
                                  res.scores, self.bench.params))})
                if noisy is not None:
                    entry["tau_real_vs_noise"] = _real_vs_noise(res, noisy[i])
            parts.append(entry)
        if parts:
            info["parts"] = parts
        return info

    def _noise_results(self, texts: list[str]) -> list[EvalResult]:
        """The formulas scored on the feature cache of a seeded noise probe batch."""
        from ..baselines.noise import noise_cache

        c = self.config
        cache = noise_cache(self.bench, self.cache, c.cache_dir)
        return make_evaluator(cache, c).evaluate(texts)

    # ------------------------------------------------------------------ driver ------------
    def _should_stop(self) -> str | None:
        c = self.config
        if self.generation >= c.generations:
            return "generations"
        if c.max_evaluations is not None and self.evaluations >= c.max_evaluations:
            return "evaluations"
        if c.max_seconds is not None and self.elapsed >= c.max_seconds:
            return "time"
        if c.target_fitness is not None and self.best().fitness >= c.target_fitness:
            return "target"
        if c.stagnation is not None and self.stagnant >= c.stagnation:
            return "stagnation"
        return None

    def run(self, on_generation: Callable[[Campaign, dict[str, Any]], None] | None = None,
            resume: bool = False) -> str:
        """Run (or resume) until a stopping rule fires; returns the rule's name.

        A checkpoint is written atomically after every generation, so a killed run loses at
        most the generation in flight; KeyboardInterrupt re-raises after the last complete
        generation's checkpoint is on disk.
        """
        with run_lock(self.run_dir):
            return self._run(on_generation, resume)

    def _run(self, on_generation: Callable[[Campaign, dict[str, Any]], None] | None,
             resume: bool) -> str:
        if resume:
            hist = self.run_dir / "history.jsonl"
            # checked before the population is re-evaluated (minutes): a torn last line is
            # dropped, and so are lines of a generation in flight at the kill
            lines = read_history(self.run_dir) if hist.exists() else []
            checkpoint = self.run_dir / "checkpoint.json"
            generation = load_artifact(checkpoint, CampaignCheckpoint).generation
            keep = [json.dumps(ln) for ln in lines if ln["generation"] <= generation]
            self._restore(checkpoint)
            if hist.exists():
                atomic_write_text(hist, "".join(ln + "\n" for ln in keep))
        else:
            self._write_static()
            t0 = time.perf_counter()
            self.initialise()
            self._clear_memos()
            self.elapsed += time.perf_counter() - t0
            self.best_history.append(self.best().fitness)
            line = self._history_line(Counter(r.status for r in self.records.values()),
                                      self.elapsed)
            atomic_write_text(self.run_dir / "history.jsonl", json.dumps(line) + "\n")
            self._checkpoint()
            if on_generation:
                on_generation(self, line)
        while (reason := self._should_stop()) is None:
            before = set(self.records)
            t0 = time.perf_counter()
            SCHEMES.get(self.config.scheme)(self)
            self.generation += 1
            self._clear_memos()
            self.elapsed += time.perf_counter() - t0
            best = self.best().fitness
            self.stagnant = self.stagnant + 1 if best <= max(self.best_history) else 0
            self.best_history.append(best)
            new = Counter(self.records[k].status for k in set(self.records) - before)
            line = self._history_line(new, self.elapsed)
            with (self.run_dir / "history.jsonl").open("a") as fh:
                fh.write(json.dumps(line) + "\n")
            self._checkpoint()
            if on_generation:
                on_generation(self, line)
        self.refit_weights()
        self.write_results()
        return reason

    def _clear_memos(self) -> None:
        """Between generations: the primary's and every extra feature set's memo emptied
        (and their pages handed back), so memory does not grow with the generations."""
        for v in self.variants:
            v.evaluator.clear_memo()

    def refit_weights(self, formula: str | None = None) -> list[Record]:
        """The best formula's top-level combination with every part weight of its normaliser
        (``rank_add`` → ``rank_add_w025`` ... ``rank_sub_w4``), scored on the training
        architectures like any candidate: the weight is fitted there, never on held-out ones,
        and the variants enter the archive (and the hall of fame if they are fitter)."""
        node = primitives.parse(formula or self.best().formula, self.cache.feature_kinds)
        if not node.op.normaliser:
            return []
        variants = [primitives.Node(op.name, node.args) for op in primitives.ops()
                    if op.cross_arch and op.normaliser == node.op.normaliser]
        trees = []
        for v in variants:
            try:
                trees.append(self.ps.to_tree(primitives.canonicalize(v)))
            except GpProxyError:  # a variant the grammar cannot express is skipped
                continue
        return self.evaluate(trees)


def _feature_kinds(space_name: str) -> dict[str, Any]:
    """The input kinds of a space's models (k1/k2 maps or token sequences)."""
    from ..spaces import get_space

    space = get_space(space_name)
    return dict(type(space.build(space.sample(random.Random(0)))).feature_kinds)




def _assessment(d: dict[str, Any]) -> Assessment | None:
    keys = ("sign", "fitness", "train_tau", "test_tau", "test_rho", "kfold_tau",
            "test_tau_in_params_bins", "train_tau_in_params_bins")
    if any(k not in d for k in keys):
        return None
    optional = ("test_partial_tau_params", "test_tau_size_residual",  # newer fields
                "train_partial_tau_params")
    vals = {k: (float("nan") if d.get(k) is None else d[k]) for k in (*keys, *optional)}
    vals["sign"] = int(vals["sign"])
    return Assessment(**vals)  # type: ignore[arg-type]
