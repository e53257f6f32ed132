"""The comparison table: baselines, runs and formulas on one split, cached scores, noise checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gp_proxy.bench.benchmark import load_benchmark
from gp_proxy.evaluate.evaluator import Evaluator


def test_compare_table_csv_chart_and_cached_scores(bench: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from gp_proxy.cli import main

    cache = tmp_path / "cache"
    argv = ["compare", "snip", "diswot", "sp_dist(k2)", "--benchmark", str(bench),
            "--cache-dir", str(cache), "--bootstrap", "50", "--out", str(tmp_path / "cmp")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "#params" in out and "FLOPS" in out and "snip" in out and "diswot" in out
    csv_text = (tmp_path / "cmp" / "compare.csv").read_text()
    # header + #params, FLOPS, descriptor regression, snip, diswot, the formula
    assert "test_tau_lo" in csv_text and len(csv_text.splitlines()) == 7
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000
    cached = list(cache.glob("*/scores/*.json"))
    assert len(cached) == 3
    stamps = [p.stat().st_mtime_ns for p in cached]
    assert main(argv) == 0  # re-run reads the cached score vectors
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    # vectors kept by other code live under another name, so they are never read
    from gp_proxy.baselines import compare as cmp

    name = "formula:sp_dist(k2):0"
    b = load_benchmark(bench, "kd_mean")
    here = cmp._file(b.cache(str(cache)), str(cache), name)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(cmp, "_code_version", lambda: "other-code")
        assert cmp._file(b.cache(str(cache)), str(cache), name) != here
    # a vector kept for another architecture list (the benchmark grew) is recomputed
    stale = json.loads(cached[0].read_text())
    stale["archs"], stale["scores"] = stale["archs"][:-1], stale["scores"][:-1]
    cached[0].write_text(json.dumps(stale))
    assert main(argv) == 0
    assert len(json.loads(cached[0].read_text())["scores"]) == len(stale["scores"]) + 1
    # a formula that parses but is undefined here (teacher and student k2 of different
    # channel counts) is a row with its status; a malformed formula is an error
    capsys.readouterr()
    assert main(["compare", "l1(k2)", "autodas-resnet", "autodas-resnet-instinct",
                 "--benchmark", str(bench), "--cache-dir", str(cache), "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert "l1(k2): not evaluated: " in out and "shape_error" in out
    assert "autodas-resnet: not evaluated" in out
    assert "autodas-resnet-instinct: not evaluated" not in out
    assert main(["compare", "l1(k2", "--benchmark", str(bench), "--cache-dir",
                 str(cache)]) == 2


def test_compare_scores_a_run_on_features_like_those_it_evolved_on(bench: Path,
                                                                  tmp_path: Path) -> None:
    # a run evolved with a random-init teacher, another student init seed, 2 activation
    # samples and 1 thread is scored with those settings, not compare's defaults
    import yaml

    from gp_proxy.baselines.compare import resolve_scores

    formula = "rank_add(kl_t4(k3),sum_layers(fro_norm(act)))"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"benchmark": str(bench), "teacher_init": "random", "init_seed": 3, "act_samples": 2,
         "threads": 1, "seed": 0}))
    (run / "best_proxy.json").write_text(json.dumps({"formula": formula, "sign": 1, "seed": 0}))
    root = str(tmp_path / "cache")
    b = load_benchmark(bench, "kd_mean")
    default = b.cache(root)
    _, _, got = resolve_scores(str(run), b, default, root)
    like_run = b.cache(root, "random", 3, 2)
    want = Evaluator(like_run, threads=1).evaluate([formula])[0].scores
    assert want is not None and got.tobytes() == want.tobytes()
    plain = Evaluator(default).evaluate([formula])[0].scores
    assert plain is not None and not np.array_equal(plain, got)
    # kept under its own name; read back the same
    assert resolve_scores(str(run), b, default, root)[2].tobytes() == got.tobytes()
    # a lone best_proxy.json (no config.yaml beside it) is scored with compare's settings
    lone = tmp_path / "lone.json"
    lone.write_text((run / "best_proxy.json").read_text())
    assert resolve_scores(str(lone), b, default, root)[2].tobytes() == plain.tobytes()


def test_reported_autodas_formulas_parse_and_instincts_run_everywhere(bench: Path,
                                                                      tmp_path: Path) -> None:
    from gp_proxy.baselines.compare import compare
    from gp_proxy.baselines.reported import REPORTED
    from gp_proxy.bench.benchmark import load_benchmark
    from gp_proxy.evaluate.fitness import make_splits
    from primitives.formula import check, parse

    for r in REPORTED.values():
        check(r.formula)
        parse(r.formula)
    b = load_benchmark(bench, "kd_mean")
    cache = b.cache(str(tmp_path / "cache"))
    names = [n for n in REPORTED if n.endswith("instinct")]
    rows = compare(names, b, cache, str(tmp_path / "cache"), make_splits(len(b.truth.y)),
                   bootstrap=10)
    for row in rows:
        assert row.kind == "reported" and not row.note
        assert -1 <= row.metrics["test_tau"] <= 1
    # the ResNet instinct is nearly a size statistic: it ranks like #params
    res = next(r for r in rows if r.name == "autodas-resnet-instinct")
    assert res.metrics["tau_with_params"] > 0.8


def test_noise_check_separates_data_free_statistics_from_data_dependent_proxies(
        bench: Path, tmp_path: Path) -> None:
    from gp_proxy.baselines.compare import compare
    from gp_proxy.baselines.noise import noise_probe
    from gp_proxy.evaluate.fitness import make_splits

    b = load_benchmark(bench, "kd_mean")
    root = str(tmp_path / "cache")
    cache = b.cache(root)
    rows = compare(["params", "sum_layers(sqrt(l1_norm(weight)))", "sp_dist(k2)", "snip"], b,
                   cache, root, make_splits(len(b.truth.y)), bootstrap=10, noise_check=True)
    tau = {r.name: r.metrics["tau_real_vs_noise"] for r in rows}
    assert tau["#params"] == 1.0
    assert tau["sum_layers(sqrt(l1_norm(weight)))"] == pytest.approx(1.0)  # weights only
    assert tau["sp_dist(k2)"] < 0.9  # a relation of the probe's samples: data-dependent
    assert -1.0 <= tau["snip"] <= 1.0
    probe = noise_probe(b, root)
    x, _ = b.probe()
    from gp_proxy.core.files import load_tensors

    noise = load_tensors(probe)["images"]
    assert noise.shape == x.shape and not torch.allclose(noise, x)
    assert noise_probe(b, root) == probe  # seeded, written once


def test_a_measure_that_does_not_apply_to_the_space_is_a_failed_row(
        bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A measure hooking a module type the students lack (here GELU, on the CNN students) is a
    row saying why, next to the others, not a constant score nor an aborted table."""
    from torch import nn

    from gp_proxy.baselines.zerocost import MEASURES, Measure, l2_norm
    from gp_proxy.cli import main

    assert "l2_norm" in MEASURES  # built-ins loaded
    monkeypatch.setitem(MEASURES._entries, "gelu-codes", Measure(l2_norm, reads=nn.GELU))
    assert main(["compare", "gelu-codes", "l2_norm", "--benchmark", str(bench),
                 "--cache-dir", str(tmp_path / "cache"), "--bootstrap", "20",
                 "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "gelu-codes: not evaluated" in out and "GELU modules" in out
    rows = (tmp_path / "cmp" / "compare.csv").read_text()
    assert "l2_norm" in rows


def test_a_run_undefined_on_the_benchmark_is_a_failed_row(bench: Path, tmp_path: Path) -> None:
    """A run evolved on ResNet students as wide as their teacher whose formula compares
    teacher and student `k2` directly: on narrower CNN students it is a failed row under the
    run's name (so a leave-one-benchmark-out table shows it as undefined), not an aborted
    comparison; a run folder that cannot be read still stops it."""
    import csv

    from gp_proxy.cli import main
    from gp_proxy.config import load_config
    from gp_proxy.evolve.campaign import Campaign

    from ..conftest import _cfg
    from ..tiny_benchmark import make_tiny_resnet_benchmark

    resnet = make_tiny_resnet_benchmark(tmp_path / "resnet")
    run = tmp_path / "run"
    # every formula of the run compares teacher and student maps as they are
    guesses = [f"rank_add({d}({k}),sum_layers(l1_norm(weight)))"
               for d in ("cosine", "mse") for k in ("k1", "k2")]
    Campaign(load_config(None, _cfg(resnet, tmp_path / "cache", generations=0, population=4,
                                    guesses=guesses, noise_check=False)), run).run()
    assert main(["compare", str(run), "--benchmark", str(bench), "--cache-dir",
                 str(tmp_path / "cache"), "--bootstrap", "20", "--out", str(tmp_path / "cmp")]
                ) == 0
    with (tmp_path / "cmp" / "compare.csv").open() as fh:
        rows = {r["proxy"]: r for r in csv.DictReader(fh)}
    (row,) = [r for name, r in rows.items() if name.startswith(f"{run}: ")]
    assert row["kind"] == "failed" and "shape_error" in row["note"] and row["test_tau"] == ""
    assert rows["#params"]["test_tau"] != ""
    (run / "best_proxy.json").write_text("{}")
    assert main(["compare", str(run), "--benchmark", str(bench), "--cache-dir",
                 str(tmp_path / "cache"), "--out", str(tmp_path / "cmp2")]) != 0


def test_fixed_orientation_learns_nothing_from_the_benchmark(bench: Path,
                                                             tmp_path: Path) -> None:
    """``orient="fixed"``: a run keeps the sign it was evolved with (whichever way it ranks
    here), #params and other proxies count higher as better; ``train`` orients each by its
    training τ. The descriptor regression is fitted on the training split in both."""
    from scipy.stats import kendalltau

    from gp_proxy.baselines.compare import compare
    from gp_proxy.evaluate.fitness import make_splits

    b = load_benchmark(bench, "kd_mean")
    root = str(tmp_path / "cache")
    cache = b.cache(root)
    splits = make_splits(len(b.truth.y), 0.3, seed=0)
    te, y = splits.test, b.truth.y
    formula = "sum_layers(fro_norm(weight))"
    runs = {}
    for sign in (1, -1):
        run = tmp_path / f"run{sign}"
        run.mkdir()
        (run / "best_proxy.json").write_text(json.dumps({"formula": formula, "sign": sign,
                                                          "seed": 0}))
        runs[sign] = str(run)
    neg = "sum_layers(negate(fro_norm(weight)))"
    items = ["params", runs[1], runs[-1], neg]
    fixed = {r.name.split(":")[0]: r.metrics for r in compare(items, b, cache, root, splits, 20,
                                                               orient="fixed")}
    trained = {r.name.split(":")[0]: r.metrics for r in compare(items, b, cache, root, splits,
                                                                 20, orient="train")}
    raw = Evaluator(cache).evaluate([formula])[0].scores
    assert raw is not None
    want = float(kendalltau(raw[te], y[te])[0])
    assert fixed[runs[1]]["test_tau"] == pytest.approx(want, abs=1e-12)
    assert fixed[runs[-1]]["test_tau"] == pytest.approx(-want, abs=1e-12)
    assert fixed[neg]["test_tau"] == pytest.approx(-want, abs=1e-12)
    assert fixed["#params"]["test_tau"] == pytest.approx(
        float(kendalltau(b.params[te], y[te])[0]), abs=1e-12)
    assert fixed[runs[1]]["sign"] == 1 and fixed[runs[-1]]["sign"] == -1
    # oriented on the training split, the two runs and the negated formula are the same proxy
    assert trained[runs[1]]["test_tau"] == trained[runs[-1]]["test_tau"] \
        == trained[neg]["test_tau"]
    assert fixed[runs[1]]["test_tau_minus_params"] == pytest.approx(
        want - fixed["#params"]["test_tau"], abs=1e-12)
