"""How differently two conditions rank the same students (gp_proxy.bench.agreement)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from gp_proxy.bench.agreement import compare_conditions, parse_condition, ranking_difference
from gp_proxy.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _table(rng: np.random.Generator, truth: np.ndarray, noise: float, seeds: int = 3
           ) -> np.ndarray:
    return truth[:, None] + noise * rng.standard_normal((len(truth), seeds))


def test_single_run_taus_and_reliabilities_match_scipy() -> None:
    rng = np.random.default_rng(1)
    truth = rng.standard_normal(30)
    a, b = _table(rng, truth, 0.5), _table(rng, truth + 0.3 * rng.standard_normal(30), 0.5)
    params = rng.uniform(1, 10, 30)
    res = ranking_difference(a, b, params, boot=50)
    tau = lambda x, y: stats.kendalltau(x, y)[0]  # noqa: E731
    within_a = np.mean([tau(a[:, i], a[:, j]) for i, j in itertools.combinations(range(3), 2)])
    cross = np.mean([tau(a[:, i], b[:, j]) for i in range(3) for j in range(3) if i != j])
    runs = res["single_run_kendall"]
    assert runs["within_a"] == pytest.approx(within_a, abs=1e-12)
    assert runs["cross"] == pytest.approx(cross, abs=1e-12)
    rho = np.mean([stats.spearmanr(a[:, i], a[:, j])[0]
                   for i, j in itertools.combinations(range(3), 2)])
    assert res["reliability_of_mean"]["a"] == pytest.approx(3 * rho / (1 + 2 * rho))
    rho_ab = stats.spearmanr(a.mean(axis=1), b.mean(axis=1))[0]
    assert res["spearman_disattenuated"] == pytest.approx(
        rho_ab / np.sqrt(res["reliability_of_mean"]["a"] * res["reliability_of_mean"]["b"]))
    diff = (b - a).mean(axis=1)
    assert res["difference_b_minus_a"]["kendall_with_params"] == pytest.approx(
        tau(diff, params), abs=1e-12)
    lo, hi = runs["within_minus_cross_ci95"]
    assert lo < runs["within_minus_cross"] < hi


def test_a_reordering_shows_beyond_noise_and_a_shift_does_not() -> None:
    rng = np.random.default_rng(0)
    truth = np.linspace(0, 3, 40)
    a = _table(rng, truth, 0.3)
    shifted = _table(rng, truth + 1.0, 0.3)  # every student better by the same amount
    reordered = _table(rng, truth[::-1].copy(), 0.3)  # the condition reverses the ranking
    same = ranking_difference(a, shifted, truth, boot=300)
    lo, hi = same["single_run_kendall"]["within_minus_cross_ci95"]
    assert lo < 0 < hi and same["interaction"]["p"] > 0.01
    assert same["difference_b_minus_a"]["mean"] == pytest.approx(1.0, abs=0.1)
    diff = ranking_difference(a, reordered, truth, boot=300)
    assert diff["single_run_kendall"]["within_minus_cross_ci95"][0] > 1.0
    assert diff["interaction"]["p"] < 1e-6
    assert diff["difference_b_minus_a"]["seed_reliability"] > 0.9
    with pytest.raises(ValueError, match="one shape"):
        ranking_difference(a, a[:, :1], truth)


def test_two_teachers_reproduce_benchmark_2s_committed_analysis() -> None:
    """The general comparison of KD under benchmark 1's and benchmark 2's teachers gives the
    teacher-difference figures committed in benchmark 2's noise.json (to the last bits a
    machine type may move)."""
    res = compare_conditions(str(ROOT / "benchmarks" / "fmnist"),
                             str(ROOT / "benchmarks" / "fmnist-wide"))
    kept = json.loads((ROOT / "benchmarks" / "fmnist-wide" / "noise.json").read_text())
    kept = kept["teacher_difference"]
    runs, kept_runs = res["single_run_kendall"], kept["single_run_kendall"]
    assert res["architectures"] == kept["architectures"] == 162
    for mine, theirs in (("within_a", "within_reference"), ("within_b", "within_this"),
                         ("cross", "cross_teacher"), ("within_minus_cross",) * 2):
        assert runs[mine] == pytest.approx(kept_runs[theirs], rel=1e-9)
    assert runs["within_minus_cross_ci95"] == pytest.approx(
        kept_runs["within_minus_cross_ci95"], rel=1e-9)
    kept_f = kept["interaction_arch_x_teacher"]
    assert res["interaction"]["df"] == kept_f["df"]
    assert (res["interaction"]["F"], res["interaction"]["p"]) == pytest.approx(
        (kept_f["F"], kept_f["p"]), rel=1e-9)
    for key, value in res["difference_b_minus_a"].items():
        assert value == pytest.approx(kept["teacher_effect"][key], rel=1e-9)


def test_conditions_parse_and_bad_ones_get_one_line(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_condition("benchmarks/fmnist:ce_mean") == ("benchmarks/fmnist", "ce_mean")
    assert parse_condition("benchmarks/fmnist") == ("benchmarks/fmnist", "kd_mean")
    assert parse_condition("C:/data/bench") == ("C:/data/bench", "kd_mean")
    b1 = ROOT / "benchmarks" / "fmnist"
    out = tmp_path / "kd-vs-ce.json"
    assert main(["bench", "agreement", f"{b1}:ce_mean", f"{b1}:kd_mean", "--bootstrap", "20",
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["a"].endswith("ce_mean") and res["architectures"] == 162
    capsys.readouterr()
    resnets = tmp_path / "resnets"  # another student space: the committed folder's settings
    resnets.mkdir()
    for name in ("config.json", "probe.safetensors", "teacher.safetensors"):
        (resnets / name).write_bytes((ROOT / "benchmarks" / "fmnist-resnet" / name).read_bytes())
    (resnets / "ground_truth.csv").write_text(
        "arch,params,flops,kd_s0,kd_s1,kd_mean\n111,1,1,80,81,80.5\n333,2,2,82,81,81.5\n"
        "555,3,3,83,84,83.5\n")
    for args, message in (([f"{b1}:params", str(b1)], "no per-seed columns"),
                          ([str(b1), str(resnets)], "different student spaces"),
                          ([f"{b1}:nope", str(b1)], "no numeric column 'nope'")):
        assert main(["bench", "agreement", *args, "--bootstrap", "5"]) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
