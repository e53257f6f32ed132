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
from ..core.files import atomic_write_json, load_tensors, save_tensors
from ..core.rank import kendall_tau, spearman_rho
from ..evaluate.backends import make_evaluator
from ..evaluate.cache import FeatureCache, load_cache
from ..evaluate.evaluator import Evaluator
from ..evaluate.fitness import (
    Assessment,
    Splits,
    assess,
    descriptor_regression,
    partial_kendall,
    size_residual,
    tau_in_params_bins,
)
from ..plugin.proxy import read_best
from .reported import REPORTED
from .zerocost import MEASURES, SIZE_STATISTICS, get_measure, zero_cost

__all__ = ["ProxyRow", "cache_like_run", "compare", "resolve_scores"]

#: the architecture-descriptor regression (fitted on the training architectures of the split)
DESCRIPTORS = "descriptors"


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


def noise_probe(bench: Benchmark, root: str) -> Path:
    """A probe file like the benchmark's, but of seeded Gaussian noise with the real batch's
    mean and std, and random labels: what a proxy sees when the data carries no information."""
    x, y = bench.probe()
    digest = hashlib.sha1((bench.folder / "probe.safetensors").read_bytes()).hexdigest()[:12]
    path = Path(root) / f"noise-probe-{digest}.safetensors"
    if not path.exists():
        g = torch.Generator().manual_seed(20261122)
        images = torch.randn(x.shape, generator=g) * x.std() + x.mean()
        labels = torch.randint(0, int(y.max()) + 1, y.shape, generator=g)
        save_tensors(path, {"images": images, "labels": labels})
    return path


def noise_cache(bench: Benchmark, cache: FeatureCache, root: str) -> FeatureCache:
    """``cache``'s configuration with :func:`noise_probe` in place of the real probe batch."""
    config = dataclasses.replace(cache.config, probe=str(noise_probe(bench, root)))
    return load_cache(root, config, list(bench.truth.archs))


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
            raise GpProxyError(f"proxy {item!r}: {res.status}: {res.reason}")
        scores = res.scores
    atomic_write_json(file, {"proxy": item, "kind": kind, "archs": list(bench.truth.archs),
                             "scores": [None if not math.isfinite(v) else v for v in scores]})
    return label or item, kind, scores


def _precision_top(s: np.ndarray, y: np.ndarray, frac: float = 0.1) -> float:
    k = max(1, round(frac * len(y)))
    return len(set(np.argsort(-s)[:k]) & set(np.argsort(-y)[:k])) / k


def proxy_metrics(s: np.ndarray, y: np.ndarray, params: np.ndarray, splits: Splits,
             bootstrap: int, seed: int, descriptors: np.ndarray | None = None
             ) -> dict[str, float]:
    """Train and held-out metrics of one proxy, with bootstrap intervals over the held-out
    architectures: its τ, its partial τ given #params, and its paired differences with
    #params and (``descriptors``: the regression's predictions) the descriptor regression."""
    tr, te = splits.train, splits.test
    if not np.isfinite(s).all():
        return {"sign": float("nan")}
    sign = -1.0 if kendall_tau(s[tr], y[tr]) < 0 else 1.0
    o = sign * s
    # how much of the proxy is model size: Kendall τ of the oriented scores with #params
    out = {"sign": sign, "tau_with_params": kendall_tau(o, params)}
    for part, idx in (("train", tr), ("test", te)):
        out[f"{part}_tau"] = kendall_tau(o[idx], y[idx])
        out[f"{part}_rho"] = spearman_rho(o[idx], y[idx])
        out[f"{part}_pearson"] = float(np.corrcoef(o[idx], y[idx])[0, 1])
        out[f"{part}_p_at_10"] = _precision_top(o[idx], y[idx])
        out[f"{part}_tau_params_bins"] = tau_in_params_bins(o[idx], y[idx], params[idx])
    # beyond size: what the proxy orders that #params does not (fit-free), and its τ with the
    # target's size residual (the size fit made on the training architectures only)
    out["test_partial_tau_params"] = partial_kendall(o[te], y[te], params[te])
    out["test_tau_size_residual"] = kendall_tau(o[te], size_residual(y, params, tr)[te])
    rng = np.random.default_rng(seed)
    # #params oriented on the training architectures too, for the paired difference
    p = (-1.0 if kendall_tau(params[tr], y[tr]) < 0 else 1.0) * params
    taus, diffs, partials, vs_desc = [], [], [], []
    for b in (rng.choice(te, len(te)) for _ in range(bootstrap)):
        t = kendall_tau(o[b], y[b])
        if math.isfinite(t):
            taus.append(t)
            d = t - kendall_tau(p[b], y[b])
            if math.isfinite(d):
                diffs.append(d)
            if descriptors is not None:
                d = t - kendall_tau(descriptors[b], y[b])
                if math.isfinite(d):
                    vs_desc.append(d)
        pt = partial_kendall(o[b], y[b], params[b])
        if math.isfinite(pt):
            partials.append(pt)

    def ci(v: list[float]) -> tuple[float, float]:
        return ((float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if v
                else (float("nan"), float("nan")))

    out["test_tau_lo"], out["test_tau_hi"] = ci(taus)
    # the paired bootstrap: the same resampled architectures for the proxy and #params
    out["test_tau_minus_params"] = out["test_tau"] - kendall_tau(p[te], y[te])
    out["test_tau_minus_params_lo"], out["test_tau_minus_params_hi"] = ci(diffs)
    out["test_partial_tau_params_lo"], out["test_partial_tau_params_hi"] = ci(partials)
    if descriptors is not None:
        out["test_tau_minus_descriptors"] = out["test_tau"] - kendall_tau(descriptors[te], y[te])
        out["test_tau_minus_descriptors_lo"], out["test_tau_minus_descriptors_hi"] = ci(vs_desc)
    return out


def baselines(bench: Benchmark, splits: Splits, metric: str = "tau") -> dict[str, Assessment]:
    """The size statistics and (for a space that declares descriptors; fitted on the training
    architectures only) the descriptor regression, assessed on ``splits`` like a proxy."""
    y, params = bench.truth.y, bench.params
    out = {name: assess(np.asarray(bench.truth.columns[stat.key], dtype=float), y, params,
                        splits, metric)
           for name, stat in SIZE_STATISTICS.items()}
    desc = bench.descriptors()
    if desc is not None:
        out["descriptors"] = assess(descriptor_regression(desc, params, y, splits.train), y,
                                    params, splits, metric)
    return out


def paired_verdicts(scores: np.ndarray, bench: Benchmark, splits: Splits,
                    resamples: int = 1000) -> dict[str, Any]:
    """A proxy's held-out τ minus #params' and minus the descriptor regression's, each with
    its paired bootstrap interval (the same resampled held-out architectures for both
    sides): what decides "beats #params", rather than the point estimates alone."""
    desc = bench.descriptors()
    pred = (None if desc is None else
            descriptor_regression(desc, bench.params, bench.truth.y, splits.train))
    m = proxy_metrics(scores, bench.truth.y, bench.params, splits, resamples, 0, pred)
    out = {}
    for name, key in (("paired_vs_params", "test_tau_minus_params"),
                      ("paired_vs_descriptors", "test_tau_minus_descriptors")):
        if key in m:
            out[name] = {"difference": _finite(m[key]), "lo": _finite(m[key + "_lo"]),
                         "hi": _finite(m[key + "_hi"]), "resamples": resamples}
    return out


def record_context(bench: Benchmark, splits: Splits, target: str,
                   found: dict[str, Assessment]) -> dict[str, Any]:
    """The fields every best-proxy record carries beside the proxy's own numbers: the
    baselines on the same split, the architectures, benchmark, target, noise ceiling."""
    return {"baselines": {k: v.to_json() for k, v in found.items()},
            "architectures": {"total": len(bench.truth.y), "train": len(splits.train),
                              "test": len(splits.test)},
            "benchmark": str(bench.folder), "target": target,
            "noise_ceiling": bench.noise_ceiling(splits.test)}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def compare(items: list[str], bench: Benchmark, cache: FeatureCache, cache_root: str,
            splits: Splits, bootstrap: int = 1000, seed: int = 0,
            noise_check: bool = False, evaluation: Mapping[str, Any] | None = None
            ) -> list[ProxyRow]:
    """One row per proxy. A formula that parses but cannot be evaluated on this benchmark
    (for example teacher and student features of different shapes) gives a row with its
    status as the note instead of stopping the table; a malformed formula still raises.

    With ``noise_check`` every proxy is scored again with a noise probe batch
    (:func:`noise_probe`) and ``tau_real_vs_noise`` is the Kendall τ between the two score
    vectors over all architectures: near 1, the proxy ranks students the same whatever the
    data — a statistic of the architecture (and its initial weights), not of knowledge."""
    from primitives.formula import parse

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
        except GpProxyError as err:
            formula = REPORTED[item].formula if item in REPORTED else item
            if item in (*SIZE_STATISTICS, DESCRIPTORS) or item in MEASURES or Path(item).exists():
                raise
            parse(formula)  # a malformed formula is the user's error: raise it
            rows.append(ProxyRow(item, "failed", {}, str(err)))
            continue
        metrics = proxy_metrics(scores, y, bench.params, splits, bootstrap, seed, desc)
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
