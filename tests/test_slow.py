"""Slow checks, excluded by default: ``python -m pytest -m slow``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_performance_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "perf.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "perf_evaluator.py"), "--out", str(out),
         "--setups", "fmnist-cnn", "--population", "12", "--reference-formulas", "1",
         "--act-samples", "4", "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    setup = report["setups"]["fmnist-cnn"]
    assert setup["speedup_median_reference_vs_cached"] > 1
    assert report["correlations_n64"]["numba_seconds"] > 0


@pytest.mark.slow
def test_backends_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    """benchmarks/perf_backends.py, small: every backend's bits equal, the overhead measured,
    and worker memory reported per space size."""
    pytest.importorskip("distributed")
    out = tmp_path / "perf.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "perf_backends.py"), "--out", str(out),
         "--population", "8", "--large", "10,20", "--large-population", "4", "--held-mb", "16",
         "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert all(report["embedded"]["same_bits_as_local"].values())
    assert report["dask_overhead"]["tasks_per_batch"] >= 1
    assert set(report["large_space"]["per_size"]) == {"10", "20"}


@pytest.mark.slow
def test_real_fashion_mnist_student_learns(tmp_path: Path) -> None:
    from gp_proxy.bench.data import DEFAULT_FMNIST_DIR, load_fashion_mnist
    from gp_proxy.bench.train import Recipe, evaluate_accuracy, train_classifier
    from gp_proxy.spaces import get_space

    if not DEFAULT_FMNIST_DIR.is_dir():
        pytest.skip("apt-get install dataset-fashion-mnist to run this check")
    train, test = load_fashion_mnist(split="train"), load_fashion_mnist(split="test")
    model = get_space("fmnist-cnn").build("w8-d111-k3", seed=0)
    train_classifier(model, train.images[:5000], train.labels[:5000], Recipe(epochs=4), seed=0)
    assert evaluate_accuracy(model, test.images, test.labels) > 0.6
