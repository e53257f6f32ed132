"""Campaigns: generator, variation, determinism, kill-and-resume, Ctrl-C, config, CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import primitives
from gp_proxy.bench.benchmark import load_benchmark
from gp_proxy.config import ConfigError, load_config
from gp_proxy.evaluate.evaluator import Evaluator
from gp_proxy.evolve.campaign import Campaign
from gp_proxy.evolve.pset import build_pset
from gp_proxy.evolve.variation import crossover, mutate


def _cfg(bench: Path, cache: Path, **kw: object) -> list[str]:
    base = {"benchmark": str(bench), "cache_dir": str(cache), "population": 12,
            "generations": 3, "act_samples": 2, "test_fraction": 0.3, "folds": 3}
    base.update(kw)
    return [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in base.items()]


@pytest.mark.parametrize("grammar", ["both", "interaction", "instinct"])
def test_type_safe_generator_never_fails(grammar: str) -> None:
    ps = build_pset(grammar)
    rng = random.Random(0)
    for i in range(10_000 if grammar == "both" else 2_000):
        tree = ps.random_tree(rng, 1, 2 + i % 8)
        node = ps.to_node(tree)
        assert primitives.infer_kind(node) is primitives.Kind.SCORE


def test_variation_inherits_genes_and_respects_limits() -> None:
    ps = build_pset("both")
    rng = random.Random(1)
    shared = 0
    for _ in range(300):
        a, b = ps.random_tree(rng, 3, 6), ps.random_tree(rng, 3, 6)
        c = crossover(ps, a, b, rng, max_height=8, max_size=20)
        m = mutate(ps, a, rng, max_height=8, max_size=20)
        for t in (c, m):
            assert t.height + 1 <= 8 or t == a
            node = ps.to_node(t)
            # no nested useless ops: canonicalisation has nothing left to remove
            assert primitives.canonicalize(node).size == node.size
            primitives.check(str(node))
        parts = {str(n) for n in ps.to_node(c).walk()}
        if parts & ({str(n) for n in ps.to_node(a).walk()} | {str(n) for n in
                                                            ps.to_node(b).walk()}):
            shared += 1
    assert shared > 250  # children carry their parents' subtrees


def test_same_seed_same_hall_of_fame(bench: Path, tmp_path: Path) -> None:
    cfg = load_config(None, _cfg(bench, tmp_path / "cache"))
    a = Campaign(cfg, tmp_path / "a")
    a.run()
    b = Campaign(cfg, tmp_path / "b")
    b.run()
    assert (tmp_path / "a" / "hall_of_fame.csv").read_text() == \
        (tmp_path / "b" / "hall_of_fame.csv").read_text()
    lines = (tmp_path / "a" / "history.jsonl").read_text().splitlines()
    assert len(lines) == 4
    first = json.loads(lines[-1])
    assert {"best", "baselines", "statuses", "median_fitness"} <= set(first)
    assert set(first["baselines"]) == {"params", "flops", "descriptors"}  # fmnist-cnn has them
    best = json.loads((tmp_path / "a" / "best_proxy.json").read_text())
    assert best["architectures"]["test"] >= 3 and "latex" in best
    # the anatomy of a combined formula: how size-like it is, and what each part does
    assert -1 <= best["tau_with_params"] <= 1
    assert len(best["parts"]) == 2 and all("status" in p for p in best["parts"])
    # and how much of it reacts to the data: rankings on the real vs a noise probe batch
    assert "tau_real_vs_noise" in best and best["seed"] == cfg.seed
    for part in best["parts"]:
        if part["status"] == "ok":
            v = part["tau_real_vs_noise"]
            assert v is None or -1 <= v <= 1
    assert any(p.name.startswith("noise-probe-") for p in (tmp_path / "cache").iterdir())


def test_noise_check_of_the_best_formula_can_be_switched_off(bench: Path,
                                                             tmp_path: Path) -> None:
    cfg = load_config(None, _cfg(bench, tmp_path / "cache", generations=1, noise_check="false"))
    Campaign(cfg, tmp_path / "run").run()
    best = json.loads((tmp_path / "run" / "best_proxy.json").read_text())
    assert "tau_real_vs_noise" not in best
    assert not any(p.name.startswith("noise-probe-") for p in (tmp_path / "cache").iterdir())


def test_data_free_formulas_show_tau_one_between_real_and_noise(bench: Path,
                                                                tmp_path: Path) -> None:
    cfg = load_config(None, _cfg(bench, tmp_path / "cache", generations=1))
    c = Campaign(cfg, tmp_path / "run")
    info = c._anatomy(primitives.parse("rank_add(sp_dist(k2),sum_layers(sqrt(l1_norm(weight))))",
                                       c.cache.feature_kinds))
    free = next(p for p in info["parts"] if "weight" in p["formula"])
    data = next(p for p in info["parts"] if "sp_dist" in p["formula"])
    assert free["tau_real_vs_noise"] == pytest.approx(1.0)
    assert data["tau_real_vs_noise"] < 0.9


@pytest.mark.parametrize("scheme", ["steady", "generational"])
def test_kill_and_resume_reaches_the_same_hall_of_fame(bench: Path, tmp_path: Path,
                                                       scheme: str) -> None:
    args = _cfg(bench, tmp_path / "cache", scheme=scheme, generations=4)
    full = Campaign(load_config(None, args), tmp_path / "full")
    full.run()

    class Killed(Exception):
        pass

    def kill_at_2(c: Campaign, line: dict) -> None:  # type: ignore[type-arg]
        if line["generation"] == 2:
            raise Killed  # like SIGKILL right after generation 2's checkpoint

    part = Campaign(load_config(None, args), tmp_path / "part")
    with pytest.raises(Killed):
        part.run(kill_at_2)
    assert json.loads((tmp_path / "part" / "checkpoint.json").read_text())["generation"] == 2
    with (tmp_path / "part" / "history.jsonl").open("a") as fh:
        fh.write('{"generation": 3, "evaluat')  # a kill in the middle of the next append
    resumed = Campaign(load_config(None, args), tmp_path / "part")
    resumed.run(resume=True)
    for name in ("hall_of_fame.csv", "best_proxy.json"):
        assert (tmp_path / "full" / name).read_text() == (tmp_path / "part" / name).read_text()
    hist = (tmp_path / "part" / "history.jsonl").read_text().splitlines()
    assert [json.loads(h)["generation"] for h in hist] == [0, 1, 2, 3, 4]


def test_ctrl_c_keeps_a_checkpoint(bench: Path, tmp_path: Path) -> None:
    args = _cfg(bench, tmp_path / "cache")

    def interrupt(c: Campaign, line: dict) -> None:  # type: ignore[type-arg]
        if line["generation"] == 1:
            raise KeyboardInterrupt

    c = Campaign(load_config(None, args), tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        c.run(interrupt)
    state = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert state["generation"] == 1 and len(state["population"]) == 12


def test_guesses_seed_the_population(bench: Path, tmp_path: Path) -> None:
    guess = "rank_add(sp_dist(k2),mean_layers(fro_norm(weight)))"
    c = Campaign(load_config(None, _cfg(bench, tmp_path / "cache", generations=0,
                                        guesses=[guess])), tmp_path / "g")
    c.run()
    assert c._key(c.population[0]) == str(primitives.canonicalize(primitives.parse(guess)))
    bad = load_config(None, _cfg(bench, tmp_path / "cache", generations=0, guesses=["l1(k2)"]))
    with pytest.raises(primitives.GpProxyError, match="does not fit the 'both' grammar"):
        Campaign(bad, tmp_path / "h").run()


def test_config_errors_name_the_key_and_suggest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'populaton' \\(did you mean 'population'"):
        load_config(None, ["populaton=10"])
    with pytest.raises(ConfigError, match="population: Input should be greater than or equal"):
        load_config(None, ["population=2"])
    with pytest.raises(ConfigError, match="scheme"):
        load_config(None, ["scheme=annealing"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["population"])
    p = tmp_path / "c.yaml"
    p.write_text("population: [1\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_config(p)
    p.write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(p)
    p.write_text("population: 8\nseed: 3\n")
    cfg = load_config(p, ["seed=4"])
    assert cfg.population == 8 and cfg.seed == 4


def test_cli_evolve_inspectable_run(bench: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from gp_proxy.cli import main

    run = tmp_path / "run"
    code = main(["evolve", *_cfg(bench, tmp_path / "cache", generations=2), "--out", str(run)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "#params" in out and "held-out" in out
    for name in ("config.yaml", "history.jsonl", "hall_of_fame.csv", "best_proxy.json",
                 "checkpoint.json", "env.json", "pareto.csv"):
        assert (run / name).exists(), name
    assert main(["resume", str(run), "generations=3"]) == 0
    assert json.loads((run / "checkpoint.json").read_text())["generation"] == 3
    capsys.readouterr()
    assert main(["inspect", str(run), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "hall of fame" in out and "\\operatorname" in out
    for pic in ("evolution.png", "scatter.png", "tree.png"):
        assert (run / pic).stat().st_size > 1000, pic
    assert main(["inspect", str(tmp_path)]) == 2
    assert main(["evolve", "populaton=3"]) == 2
    assert "did you mean 'population'" in capsys.readouterr().err


def test_sigkill_then_resume_matches_an_uninterrupted_run(bench: Path, tmp_path: Path) -> None:
    """A real SIGKILL at an arbitrary moment: resume reaches the uninterrupted hall of fame."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from gp_proxy.cli import main

    args = _cfg(bench, tmp_path / "cache", generations=6)
    assert main(["evolve", *args, "--out", str(tmp_path / "full")]) == 0
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "gp_proxy.cli", "evolve", *args, "--out",
                             str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        ck = run / "checkpoint.json"
        if ck.exists() and json.loads(ck.read_text())["generation"] >= 1:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert main(["resume", str(run)]) == 0
    for name in ("hall_of_fame.csv", "best_proxy.json"):
        assert (tmp_path / "full" / name).read_text() == (run / name).read_text()


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


def test_fitness_within_params_bins(bench: Path, tmp_path: Path) -> None:
    cfg = load_config(None, _cfg(bench, tmp_path / "cache", generations=1,
                                 fitness="tau_params_bins"))
    c = Campaign(cfg, tmp_path / "bins")
    c.run()
    best = json.loads((tmp_path / "bins" / "best_proxy.json").read_text())
    assert best["fitness"] == pytest.approx(best["train_tau_in_params_bins"])
    with pytest.raises(ConfigError, match="fitness"):
        load_config(None, ["fitness=spearman"])


def test_score_command_prints_formula_next_to_baselines(bench: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    from gp_proxy.cli import main

    cache = str(tmp_path / "cache")
    assert main(["score", "autodas-resnet-instinct", "--benchmark", str(bench),
                 "--cache-dir", cache]) == 0
    out = capsys.readouterr().out
    assert "formula: sum_layers(fro_norm(logsoftmax(grad)))" in out
    assert "#params" in out and "FLOPS" in out and "held-out" in out
    assert "Kendall τ between the formula and #params" in out
    assert main(["score", "sum_layers(fro_norm(logsoftmax(grad))", "--benchmark", str(bench),
                 "--cache-dir", cache]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "position" in err


def test_noise_check_separates_data_free_statistics_from_data_dependent_proxies(
        bench: Path, tmp_path: Path) -> None:
    from gp_proxy.baselines.compare import compare, noise_probe
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


def test_worker_processes_reproduce_a_one_process_campaign(bench: Path, tmp_path: Path) -> None:
    """``workers`` only spreads the work: same threads, same hall of fame and history."""
    runs = {}
    for workers in (1, 2):
        cfg = load_config(None, _cfg(bench, tmp_path / "cache", generations=2, threads=1,
                                     workers=workers, chunk_size=2, noise_check=False,
                                     backend="local" if workers == 1 else "processes"))
        Campaign(cfg, tmp_path / f"w{workers}").run()
        history = [json.loads(line) for line in
                   (tmp_path / f"w{workers}" / "history.jsonl").read_text().splitlines()]
        runs[workers] = ((tmp_path / f"w{workers}" / "hall_of_fame.csv").read_text(),
                         [(h["best"], h["statuses"], h["median_fitness"]) for h in history])
    assert runs[1] == runs[2]


def test_a_combined_best_formula_comes_with_its_calibration(bench: Path, tmp_path: Path) -> None:
    """calibration.json (the parts over the benchmark's students) lets Proxy.load score one
    model at a time; scored alone, the benchmark's students rank as the campaign ranks them."""
    from gp_proxy.evaluate.rank import kendall_tau
    from gp_proxy.plugin.proxy import Proxy

    cfg = load_config(None, _cfg(bench, tmp_path / "cache", generations=0))
    c = Campaign(cfg, tmp_path / "run")
    c.run_dir.mkdir(parents=True)
    formula = "rank_add(sp_dist(k2),sum_layers(sqrt(l1_norm(weight))))"
    c._write_calibration(primitives.parse(formula, c.cache.feature_kinds))
    (c.run_dir / "best_proxy.json").write_text(json.dumps({"formula": formula, "sign": 1}))
    (c.run_dir / "config.yaml").write_text("act_samples: 2\n")
    proxy = Proxy.load(c.run_dir)
    assert proxy.calibration is not None and proxy.calibration.size == len(c.y)
    b = c.bench
    x, y = b.probe()
    teacher = b.trained_teacher()
    space = b.search_space()
    alone = [proxy.score(teacher, space.build(a, seed=cfg.init_seed), x, y)
             for a in b.truth.archs]
    want = c.evaluator.evaluate([formula])[0].scores
    assert kendall_tau(np.asarray(alone), want) > 0.99
    c._write_calibration(primitives.parse("sp_dist(k2)", c.cache.feature_kinds))
    assert not (c.run_dir / "calibration.json").exists()  # a per-model formula needs none


def test_formula_tree_marks_families_and_sides(tmp_path: Path) -> None:
    from gp_proxy.report import pictures as report

    node = primitives.parse("rank_sub_w2(cosine(tanh(k2)),sum_layers(l1_norm(weight)))")
    g = report.formula_graph(node)
    by_label = {d["label"]: d for _, d in g.nodes(data=True)}
    assert by_label["k2"]["side"] == "pair" and by_label["weight"]["side"] == "student"
    assert by_label["cosine"]["family"] == "distance"
    assert by_label["rank_sub_w2"]["family"] == "combine"
    report.plot_formula_tree(node, tmp_path / "tree.png")
    report.plot_pareto([{"complexity": "3", "test_tau": "0.7", "formula": "l1(k2)"}], 0.6,
                       tmp_path / "pareto.png")
    assert (tmp_path / "tree.png").stat().st_size > 5000
    assert (tmp_path / "pareto.png").stat().st_size > 5000


def test_a_user_scheme_by_module_attr_runs_and_an_unknown_one_is_named(
        bench: Path, tmp_path: Path) -> None:
    """Schemes are a registry like the rest: a user's generation function, named
    ``module:attr`` in the config, drives the campaign; a typo names the built-ins."""
    args = _cfg(bench, tmp_path / "cache", scheme="tests.user_plugin:random_restart",
                generations=2)
    c = Campaign(load_config(None, args), tmp_path / "run")
    c.run()
    hist = [json.loads(h) for h in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["generation"] for h in hist] == [0, 1, 2]
    assert [h["evaluations"] for h in hist] == [12, 18, 24]  # half the population each time
    best = [h["best"]["fitness"] for h in hist]
    assert best == sorted(best)  # the better half is kept
    with pytest.raises(ConfigError, match=r"unknown campaign scheme 'stedy'.*steady"):
        load_config(None, ["scheme=stedy"])
