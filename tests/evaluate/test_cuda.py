"""The CUDA path: ops, evaluator, campaign and benchmark on a GPU, checked against the CPU.

Skipped where torch sees no CUDA device (the development machine and CI have none); run them
on a GPU machine with ``python -m pytest -m cuda``. CUDA kernels sum in other orders than the
CPU ones, so values are compared within a tolerance and rankings by Kendall τ; what must be
exact on one device (same seed, same bits) is checked bit for bit.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import primitives
from gp_proxy.config import load_config
from gp_proxy.core.rank import kendall_tau
from gp_proxy.evaluate.evaluator import Evaluator
from gp_proxy.evolve.campaign import Campaign
from primitives import Ragged

from ..conftest import _cfg, random_formulas
from ..primitives.test_primitives_generated import CASES, IDS, _args, _call, _flat

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device (on a GPU machine: pytest -m cuda)", allow_module_level=True)
pytestmark = pytest.mark.cuda

ROOT = Path(__file__).resolve().parents[2]


def _to(v: torch.Tensor | Ragged, device: str) -> torch.Tensor | Ragged:
    return v.on(device) if isinstance(v, Ragged) else v.to(device)


def _on_cpu(v: torch.Tensor | Ragged) -> torch.Tensor:
    return _flat(v).detach().cpu()


@pytest.mark.parametrize(("op", "sig"), CASES, ids=IDS)
def test_every_op_on_cuda_matches_the_cpu(op: primitives.Op, sig: primitives.Signature) -> None:
    args = _args(op, sig)
    on_gpu = [_to(a, "cuda") for a in args]
    before = [_on_cpu(a).clone() for a in on_gpu]
    first = _call(op, on_gpu, device="cuda")
    assert primitives.kind_of(first) == sig.output
    out = _on_cpu(first)
    assert out.device.type == "cpu" and torch.isfinite(out).all(), op.name
    # pure and deterministic on the GPU too (same generator seed, same bits)
    torch.testing.assert_close(_on_cpu(_call(op, on_gpu, device="cuda")), out, rtol=0, atol=0)
    for a, b in zip(on_gpu, before, strict=True):
        assert torch.equal(_on_cpu(a), b), f"{op.name} modified its input in place on CUDA"
    if op.stochastic:  # CPU and CUDA generators draw different streams: shape only
        assert out.shape == _flat(_call(op, args)).shape
        return
    ref = _flat(_call(op, args))
    scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * scale, msg=op.name)


def _population(cache, n: int = 60) -> list[str]:  # type: ignore[no-untyped-def]
    return random_formulas(cache, n, random.Random(0))


def _stochastic(formula: str) -> bool:
    return any(node.op.stochastic for node in primitives.parse(formula).walk())


def _flat_spread(scores: np.ndarray) -> bool:
    return float(np.ptp(scores)) <= 1e-5 * max(1e-30, float(np.abs(scores).max()))


def test_evaluator_on_cuda_ranks_like_the_cpu(cache) -> None:  # type: ignore[no-untyped-def]
    formulas = [f for f in _population(cache) if not _stochastic(f)]
    gpu = Evaluator(cache, device="cuda").evaluate(formulas)
    cpu = Evaluator(cache, device="cpu").evaluate(formulas)
    taus = []
    for g, c in zip(gpu, cpu, strict=True):
        if g.status != c.status:
            # rounding may turn an exactly constant score vector into a nearly constant one:
            # allowed only between ok and constant(_part), with a flat spread
            assert {g.status, c.status} <= {"ok", "constant", "constant_part"}, g.formula
            assert _flat_spread(g.scores if g.ok else c.scores), g.formula
        elif g.ok:
            assert g.scores is not None and c.scores is not None
            taus.append(kendall_tau(g.scores, c.scores))
    # kernels sum in other orders, so a near-tie between two architectures may swap (one
    # swap of 7 is τ 0.905); a wrong op would change many rankings
    assert len(taus) >= 15
    assert min(taus) > 0.5 and np.mean(np.array(taus) == 1.0) >= 0.9, taus


def test_cuda_evaluation_is_deterministic(cache) -> None:  # type: ignore[no-untyped-def]
    formulas = [*_population(cache, 30), "sp_dist(mask(k1))", "pearson(drop(k3))"]
    a = Evaluator(cache, device="cuda", seed=3).evaluate(formulas)
    b = Evaluator(cache, device="cuda", seed=3, chunk_size=2).evaluate(formulas)
    for x, y in zip(a, b, strict=True):
        assert x.status == y.status, x.formula
        if x.ok:
            np.testing.assert_array_equal(x.scores, y.scores, err_msg=x.formula)


def test_campaign_on_cuda_is_reproducible(bench: Path, tmp_path: Path) -> None:
    cfg = load_config(None, _cfg(bench, tmp_path / "cache", device="cuda"))
    for name in ("a", "b"):
        Campaign(cfg, tmp_path / name).run()
    assert (tmp_path / "a" / "hall_of_fame.csv").read_text() == \
        (tmp_path / "b" / "hall_of_fame.csv").read_text()
    env = json.loads((tmp_path / "a" / "env.json").read_text())
    assert env["device"].startswith("cuda")


def test_performance_benchmark_runs_on_cuda(tmp_path: Path) -> None:
    out = tmp_path / "perf.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "perf_evaluator.py"), "--out", str(out),
         "--device", "cuda", "--setups", "fmnist-cnn", "--population", "12",
         "--reference-formulas", "1", "--act-samples", "4", "--cache-dir",
         str(tmp_path / "cache")],
        capture_output=True, text=True, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["machine"]["device"].startswith("cuda")
    assert report["setups"]["fmnist-cnn"]["speedup_median_reference_vs_cached"] > 1
