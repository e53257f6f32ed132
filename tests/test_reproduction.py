"""The committed reference results reproduce: the project's refactors (one collector of the
student's layers, inputs gathered from the registry, files moved by stage) must not move a
bit of what a campaign computes.

Bits are only promised on the machine type that made them (floats differ across CPU
families): on another processor the numbers are compared to 1e-9, which a changed formula,
split, cache or metric would still fail by far.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gp_proxy.bench.benchmark import Benchmark, load_benchmark
from gp_proxy.config import run_config
from gp_proxy.core.provenance import cpu_name
from gp_proxy.evaluate.cache import FeatureCache, load_cache
from gp_proxy.evaluate.evaluator import Evaluator
from gp_proxy.evaluate.fitness import Splits, assess, descriptor_regression, make_splits

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "results" / "fmnist-reference"
ENV = json.loads((RUN / "env.json").read_text())
SAME_MACHINE = cpu_name() == ENV["processor"]
METRICS = ("fitness", "train_tau", "test_tau", "test_rho", "kfold_tau",
           "test_tau_in_params_bins", "test_partial_tau_params", "test_tau_size_residual")


def _same(got: Any, want: Any, where: str) -> None:
    if want is None or (isinstance(want, float) and np.isnan(want)):
        assert got is None or np.isnan(got), where
    elif SAME_MACHINE:
        assert got == want, f"{where}: {got!r} != committed {want!r}"
    else:
        assert abs(got - want) <= 1e-9, f"{where}: {got!r} vs committed {want!r}"


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reference-cache")


@pytest.fixture(scope="module")
def reference(cache_root: Path) -> tuple[Benchmark, FeatureCache, Splits, str]:
    config = run_config(RUN)
    assert config is not None
    bench = load_benchmark(ROOT / config.benchmark, config.target)
    cfg = bench.cache_config(config.teacher_init, config.init_seed, config.act_samples)
    cache = load_cache(cache_root, cfg, list(bench.truth.archs))
    splits = make_splits(len(bench.truth.y), config.test_fraction, config.folds,
                         config.split_seed)
    return bench, cache, splits, config.fitness


def test_the_feature_cache_is_the_committed_one(
        reference: tuple[Benchmark, FeatureCache, Splits, str]) -> None:
    _, cache, splits, _ = reference
    assert cache.key == ENV["cache_key"]  # the content hash of what the features are made of
    assert (len(splits.train), len(splits.test)) == (ENV["train"], ENV["test"])


def test_the_hall_of_fame_scores_as_committed(
        reference: tuple[Benchmark, FeatureCache, Splits, str]) -> None:
    """Every hall-of-fame formula re-evaluated (evaluator, fitness, held-out metrics) gives
    the committed numbers."""
    bench, cache, splits, metric = reference
    with (RUN / "hall_of_fame.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 10
    results = Evaluator(cache, device="cpu").evaluate([r["formula"] for r in rows])
    for row, res in zip(rows, results, strict=True):
        assert res.ok and res.scores is not None, (row["formula"], res.status, res.reason)
        a = assess(res.scores, bench.truth.y, bench.params, splits, metric).to_json()
        assert a["sign"] == int(row["sign"]), row["formula"]
        for m in METRICS:
            want = float(row[m]) if m in row and row[m] != "" else None
            if m in row:
                _same(a[m], want, f"{row['formula']} {m}")


def test_the_baselines_score_as_committed(
        reference: tuple[Benchmark, FeatureCache, Splits, str]) -> None:
    bench, _, splits, metric = reference
    committed = json.loads((RUN / "best_proxy.json").read_text())["baselines"]
    y, params = bench.truth.y, bench.params
    desc = bench.descriptors()
    assert desc is not None
    got = {"params": assess(params, y, params, splits, metric),
           "flops": assess(bench.flops, y, params, splits, metric),
           "descriptors": assess(descriptor_regression(desc, params, y, splits.train), y,
                                 params, splits, metric)}
    for name, a in got.items():
        for m, v in a.to_json().items():
            if m in committed[name]:
                _same(v, committed[name][m], f"baseline {name} {m}")


def test_the_reference_campaign_evolves_as_committed(tmp_path: Path, cache_root: Path) -> None:
    """Its first generations re-run (population, variation, selection, every random draw)
    reach the committed history line for line, but for the seconds they took."""
    from gp_proxy.evolve.campaign import Campaign

    config = run_config(RUN)
    assert config is not None
    config = config.model_copy(update={"generations": 1, "noise_check": False,
                                       "benchmark": str(ROOT / config.benchmark),
                                       "cache_dir": str(cache_root)})
    Campaign(config, tmp_path / "run").run()
    got = (tmp_path / "run" / "history.jsonl").read_text().splitlines()
    want = (RUN / "history.jsonl").read_text().splitlines()[:len(got)]
    assert len(got) == 2
    for g, w in zip(got, want, strict=True):
        gl, wl = json.loads(g), json.loads(w)
        gl.pop("seconds"), wl.pop("seconds")
        _same_record(gl, wl, f"generation {wl['generation']}")


def _same_record(got: Any, want: Any, where: str) -> None:
    """``got`` holds every field of the committed ``want`` with its value (fields added
    since it was written are not compared)."""
    if isinstance(want, dict):
        assert isinstance(got, dict), where
        for k, v in want.items():
            assert k in got, f"{where}: {k} missing"
            _same_record(got[k], v, f"{where}.{k}")
    elif isinstance(want, float) or isinstance(got, float):
        _same(got, want, where)
    else:
        assert got == want, f"{where}: {got!r} != committed {want!r}"


def test_inspect_reads_the_committed_run_written_with_the_old_key_names(
        capsys: pytest.CaptureFixture[str]) -> None:
    """``best_proxy.json`` files written before the report keys were named as ``compare``
    names them (kendall_* -> tau_*) read the same."""
    from gp_proxy.cli import main
    from gp_proxy.core.artifacts import LEGACY_KEYS

    raw = (RUN / "best_proxy.json").read_text()
    assert all(old in raw for old in LEGACY_KEYS)  # the committed run is such a file
    assert main(["inspect", str(RUN)]) == 0
    out = capsys.readouterr().out
    with_params = json.loads(raw)["kendall_with_params"]
    assert f"and #params (all architectures): {with_params:+.3f}" in out
    assert "real vs noise +1.000 (ignores the data)" in out
