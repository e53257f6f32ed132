"""Compare proxies on one benchmark, on the same splits: baselines, formulas, run directories.

Every proxy's score vector is oriented by its sign on the training architectures (as in
campaigns), then reported on training and held-out architectures: Kendall τ, Spearman ρ,
Pearson r, precision at the top 10 %, τ within #params bins, and a bootstrap 95 % interval of
the held-out τ. Score vectors are cached as JSON next to the feature cache (keyed by the proxy
and a hash of the code they depend on, checked against the architecture list), so a re-run is
instant.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from primitives.errors import GpProxyError

from ..bench.benchmark import Benchmark
from ..config import CampaignConfig, run_config
from ..core.artifacts import ScoreCacheRecord, load_artifact
from ..core.files import atomic_write_json, load_tensors
from ..core.rank import kendall_tau
from ..evaluate.backends import make_evaluator
from ..evaluate.cache import FeatureCache, load_cache
from ..evaluate.evaluator import Evaluator
from ..evaluate.fitness import (
    Splits,
    descriptor_regression,
)
from ..plugin.proxy import read_best
from .metrics import proxy_metrics
from .noise import noise_cache
from .reported import REPORTED
from .zerocost import MEASURES, SIZE_STATISTICS, get_measure, zero_cost

__all__ = ["ProxyRow", "Undefined", "cache_like_run", "compare", "resolve_scores"]

#: the architecture-descriptor regression (fitted on the training architectures of the split)
DESCRIPTORS = "descriptors"


class Undefined(GpProxyError):
    """A proxy that parses but cannot be scored on this benchmark (a formula comparing teacher
    and student features of different shapes, a measure that does not apply): a failed row of
    a comparison, not the end of it. ``name`` is the row's display name."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass
class ProxyRow:
    name: str
    kind: str
    metrics: dict[str, float]
    note: str = ""


@functools.cache
def _code_version() -> str:
    """Hash of the code a score vector depends on: kept vectors from older code are stale."""
    import primitives

    from ..evaluate import evaluator
    from . import zerocost

    h = hashlib.sha1()
    files = sorted(Path(primitives.__file__).parent.glob("*.py"))
    for f in [*files, Path(evaluator.__file__), Path(zerocost.__file__)]:
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _file(cache: FeatureCache, root: str, name: str) -> Path:
    digest = hashlib.sha1(f"{_code_version()}:{name}".encode()).hexdigest()[:16]
    return Path(root) / cache.key / "scores" / f"{digest}.json"


_EVALUATOR_DEFAULTS: dict[str, Any] = {
    k: inspect.signature(Evaluator).parameters[k].default
    for k in ("chunk_size", "chunk_bytes", "threads")}


def cache_like_run(bench: Benchmark, cache: FeatureCache, root: str, run: CampaignConfig
                   ) -> FeatureCache:
    """``cache`` (its benchmark and probe batch) with the run's teacher initialisation, student
    init seed and activation samples: a formula is scored on the kind of features it was
    evolved on (a formula from a random-teacher campaign is not scored against the trained
    teacher)."""
    config = dataclasses.replace(
        bench.cache_config(run.teacher_init, run.init_seed, run.act_samples),
        probe=cache.config.probe)
    return cache if config == cache.config else load_cache(root, config, list(bench.truth.archs))


def _model_scores(bench: Benchmark, name: str, probe: Path | None = None) -> np.ndarray:
    space = bench.search_space()
    if probe is None:
        x, y = bench.probe()
    else:
        p = load_tensors(probe)
        x, y = p["images"], p["labels"].long()
    # a measure that compares with a teacher gets a random-init one, as in DisWOT
    teacher = bench.random_teacher() if get_measure(name).needs_teacher else None
    out = []
    for arch in bench.truth.archs:
        model = space.build(arch, seed=0)
        with torch.random.fork_rng():  # measures drawing from the global RNG start from 0,
            torch.manual_seed(0)       # and the caller's RNG state is left as it was
            out.append(zero_cost(name, model, x, y, teacher))
    return np.asarray(out, dtype=float)


def resolve_scores(item: str, bench: Benchmark, cache: FeatureCache, cache_root: str,
                   seed: int = 0, probe: Path | None = None, fit_on: np.ndarray | None = None,
                   evaluation: Mapping[str, Any] | None = None
                   ) -> tuple[str, str, np.ndarray]:
    """(display name, kind, scores) for a baseline name, a run directory or a formula.
    ``probe`` (with ``cache`` built on it) replaces the benchmark's probe batch; ``fit_on``
    (training architectures) is where the descriptor regression is fitted; ``evaluation``
    (``backend``, ``workers``, ``scheduler``: config keys that never change a score) says
    where formulas are evaluated."""
    if item == DESCRIPTORS:
        desc = bench.descriptors()
        if desc is None or fit_on is None:
            raise GpProxyError(f"{bench.space} declares no architecture descriptors")
        return "descriptor regression", "fitted", descriptor_regression(
            desc, bench.params, bench.truth.y, fit_on)
    if item in SIZE_STATISTICS:
        stat = SIZE_STATISTICS[item]
        return stat.label, "size", np.asarray(bench.truth.columns[stat.key], dtype=float)
    if item in bench.truth.columns and item != bench.truth.target:
        return item, "column", np.asarray(bench.truth.columns[item], dtype=float)
    if item in REPORTED:
        name = item
        item = REPORTED[item].formula
        _, _, scores = resolve_scores(item, bench, cache, cache_root, seed, probe,
                                      evaluation=evaluation)
        return name, "reported", scores
    path = Path(item)
    options: dict[str, Any] = {}
    label = None
    if path.is_dir() or path.suffix == ".json":
        item, _, seed = read_best(path)  # a run's formula is scored with the run's seed
        label = f"{path}: {item}"  # a run is shown by its name, then its formula
        run = run_config(path)
        if run is not None:  # ... on features and with settings like those it evolved on
            cache = cache_like_run(bench, cache, cache_root, run)
            options = {"chunk_size": run.chunk_size, "chunk_bytes": run.chunk_bytes,
                       "threads": run.threads}
    kind = "zero-cost" if item in MEASURES else "formula"
    # settings that can change a score's last bits are part of its name (defaults: none, so
    # vectors kept by earlier versions stay valid)
    changed = {k: v for k, v in options.items() if v != _EVALUATOR_DEFAULTS[k]}
    file = _file(cache, cache_root, f"{kind}:{item}:{seed}"
                 + "".join(f":{k}={v}" for k, v in sorted(changed.items())))
    if file.exists():
        try:
            kept = load_artifact(file, ScoreCacheRecord)
        except GpProxyError:  # a damaged kept vector is only a cache: compute it again
            kept = None
        # a vector saved for another architecture list (a benchmark that grew) is stale
        if kept is not None and kept.archs == list(bench.truth.archs) \
                and len(kept.scores) == len(kept.archs):
            return label or item, kind, np.asarray(
                [float("nan") if v is None else v for v in kept.scores], dtype=float)
    if kind == "zero-cost":
        scores = _model_scores(bench, item, probe)
    else:
        with make_evaluator(cache, None, seed=seed, **options, **(evaluation or {})) as ev:
            res = ev.evaluate([item])[0]
        if not res.ok or res.scores is None:
            message = f"proxy {item!r}: {res.status}: {res.reason}"
            if res.status == "parse_error":  # a malformed formula is the user's error
                raise GpProxyError(message)
            raise Undefined(label or item, message)
        scores = res.scores
    atomic_write_json(file, {"proxy": item, "kind": kind, "archs": list(bench.truth.archs),
                             "scores": [None if not math.isfinite(v) else v for v in scores]})
    return label or item, kind, scores


#: how ``compare`` orients scores: ``train``, each proxy (and #params) by its τ on this
#: benchmark's training architectures; ``fixed``, as written, so that nothing is learnt from
#: this benchmark: a run keeps the sign it was evolved with, every other proxy and #params
#: count higher as better (the descriptor regression is fitted here in both)
ORIENTATIONS = ("train", "fixed")


def compare(items: list[str], bench: Benchmark, cache: FeatureCache, cache_root: str,
            splits: Splits, bootstrap: int = 1000, seed: int = 0,
            noise_check: bool = False, evaluation: Mapping[str, Any] | None = None,
            orient: str = "train") -> list[ProxyRow]:
    """One row per proxy. A formula that parses but cannot be evaluated on this benchmark
    (for example teacher and student features of different shapes) gives a row with its
    status as the note instead of stopping the table; a malformed formula still raises.
    ``orient``: see :data:`ORIENTATIONS`.

    With ``noise_check`` every proxy is scored again with a noise probe batch
    (:func:`noise_probe`) and ``tau_real_vs_noise`` is the Kendall τ between the two score
    vectors over all architectures: near 1, the proxy ranks students the same whatever the
    data — a statistic of the architecture (and its initial weights), not of knowledge."""
    from primitives.formula import parse

    if orient not in ORIENTATIONS:
        raise GpProxyError(f"orient={orient!r}: choose from {', '.join(ORIENTATIONS)}")
    y = bench.truth.y
    # the descriptor regression's predictions (fitted on the training architectures), for
    # every proxy's paired difference with it
    desc = None if bench.descriptors() is None else resolve_scores(
        DESCRIPTORS, bench, cache, cache_root, seed, fit_on=splits.train)[2]
    rows = []
    for item in items:
        try:
            name, kind, scores = resolve_scores(item, bench, cache, cache_root, seed,
                                                fit_on=splits.train, evaluation=evaluation)
        except Undefined as err:  # a run's formula too: undefined here is a result
            rows.append(ProxyRow(err.name if Path(item).exists() else item, "failed", {},
                                 str(err)))
            continue
        except GpProxyError as err:
            if item in (*SIZE_STATISTICS, DESCRIPTORS) or Path(item).exists():
                raise
            if item not in MEASURES:
                # a malformed formula is the user's error: raise it (a formula that fails on
                # this space, like a measure that does not apply to it, is a failed row)
                parse(REPORTED[item].formula if item in REPORTED else item)
            rows.append(ProxyRow(item, "failed", {}, str(err)))
            continue
        fixed = None if orient == "train" else (
            float(read_best(item)[1]) if Path(item).exists() else 1.0)
        metrics = proxy_metrics(scores, y, bench.params, splits, bootstrap, seed, desc,
                                sign=fixed, params_sign=None if fixed is None else 1.0)
        if noise_check:
            metrics["tau_real_vs_noise"] = _noise_tau(item, kind, scores, bench, cache,
                                                      cache_root, seed, evaluation)
        rows.append(ProxyRow(name, kind, metrics))
    return rows


#: proxy kinds whose real-vs-noise τ is known without scoring them again: 1 for those that
#: read no data at all (a size statistic, the descriptor regression), undefined for a
#: ground-truth column (trained, not a function of the probe batch)
_NOISE_TAU = {"size": 1.0, "fitted": 1.0, "column": float("nan")}


def _noise_tau(item: str, kind: str, scores: np.ndarray, bench: Benchmark,
               cache: FeatureCache, cache_root: str, seed: int,
               evaluation: Mapping[str, Any] | None = None) -> float:
    if kind in _NOISE_TAU:
        return _NOISE_TAU[kind]
    noisy = noise_cache(bench, cache, cache_root)
    try:
        _, _, other = resolve_scores(item, bench, noisy, cache_root, seed,
                                     Path(noisy.config.probe), evaluation=evaluation)
    except GpProxyError:
        return float("nan")
    if not (np.isfinite(scores).all() and np.isfinite(other).all()):
        return float("nan")
    return kendall_tau(scores, other)


def rows_to_json(rows: list[ProxyRow]) -> list[dict[str, Any]]:
    return [{"proxy": r.name, "kind": r.kind, **r.metrics, "note": r.note} for r in rows]
