"""Beyond-size metrics: partial τ given #params, the size residual, noise ceilings, derived
targets (checked against hand computations and scipy)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import primitives
from gp_proxy.bench.benchmark import load_benchmark
from gp_proxy.evaluate.fitness import (
    assess,
    make_splits,
    noise_ceiling,
    partial_kendall,
    size_residual,
)


def test_partial_kendall_by_hand() -> None:
    x = np.array([1.0, 2, 3, 4, 5])
    y = np.array([2.0, 1, 4, 3, 5])
    z = np.array([1.0, 3, 2, 5, 4])
    txy = stats.kendalltau(x, y).statistic  # 0.6
    txz = stats.kendalltau(x, z).statistic  # 0.6
    tyz = stats.kendalltau(y, z).statistic  # 0.2
    assert (txy, txz, tyz) == pytest.approx((0.6, 0.6, 0.2))
    want = (0.6 - 0.6 * 0.2) / np.sqrt((1 - 0.36) * (1 - 0.04))
    assert partial_kendall(x, y, z) == pytest.approx(want)
    assert partial_kendall(x, y, z) == pytest.approx((txy - txz * tyz)
                                                    / np.sqrt((1 - txz**2) * (1 - tyz**2)))
    # a proxy that is #params has nothing left once #params is given
    assert partial_kendall(z, y, z) != partial_kendall(z, y, z)  # NaN: τ_xz = 1


def test_size_residual_never_sees_held_out_architectures() -> None:
    rng = np.random.default_rng(0)
    params = rng.integers(10_000, 1_000_000, 40).astype(float)
    y = 80 + 2 * np.log(params) + rng.normal(0, 0.3, 40)
    train, test = np.arange(28), np.arange(28, 40)
    r = size_residual(y, params, train)
    y2 = y.copy()
    y2[test] += rng.normal(0, 50, len(test))  # wildly different held-out targets
    r2 = size_residual(y2, params, train)
    np.testing.assert_array_equal(r[train], r2[train])  # the fit did not move
    np.testing.assert_allclose((y2 - r2)[test], (y - r)[test])  # same predictions there
    lp = np.log(params[train])
    fit = np.polyfit(lp, y[train], 2)
    np.testing.assert_allclose(r[train], y[train] - np.polyval(fit, lp), atol=1e-8)


def test_noise_ceiling_by_hand() -> None:
    rng = np.random.default_rng(1)
    truth = rng.normal(size=60)
    seeds = np.stack([truth + rng.normal(0, 0.5, 60) for _ in range(3)], axis=1)
    got = noise_ceiling(seeds)
    rhos = [stats.spearmanr(seeds[:, i], seeds[:, j]).statistic
            for i, j in ((0, 1), (0, 2), (1, 2))]
    r1 = float(np.mean(rhos))
    rel = 3 * r1 / (1 + 2 * r1)
    assert got["reliability"] == pytest.approx(rel)
    assert got["kendall_ceiling"] == pytest.approx(2 / np.pi * np.arcsin(np.sqrt(rel)))


def test_assess_reports_beyond_size_numbers_on_held_out_only() -> None:
    rng = np.random.default_rng(2)
    params = rng.integers(10_000, 1_000_000, 50).astype(float)
    y = np.log(params) + rng.normal(0, 0.2, 50)
    splits = make_splits(50)
    a = assess(params, y, params, splits)  # #params itself
    assert a.test_partial_tau_params != a.test_partial_tau_params  # NaN: nothing beyond size
    te, tr = splits.test, splits.train
    s = y + rng.normal(0, 0.05, 50)  # an oracle-ish proxy
    b = assess(s, y, params, splits)
    assert b.test_partial_tau_params == pytest.approx(partial_kendall(s[te], y[te], params[te]))
    resid = size_residual(y, params, tr)
    assert b.test_tau_size_residual == pytest.approx(stats.kendalltau(s[te],
                                                                      resid[te]).statistic)


def test_kd_gain_is_a_target_with_its_own_seeds() -> None:
    b = load_benchmark("benchmarks/fmnist", "kd_gain")
    np.testing.assert_allclose(b.truth.y, b.truth.columns["kd_mean"] - b.truth.columns["ce_mean"])
    seeds = b.seed_columns()
    assert seeds is not None and seeds.shape == (162, 3)
    np.testing.assert_allclose(seeds[:, 0], b.truth.columns["kd_s0"] - b.truth.columns["ce_s0"])
    kd = load_benchmark("benchmarks/fmnist")
    assert kd.noise_ceiling()["reliability"] > b.noise_ceiling()["reliability"]  # type: ignore[index]


def test_descriptor_regression_reproduces_the_study_and_never_sees_held_out() -> None:
    """The issue's study: on split seed 0 the descriptor regression reaches held-out τ 0.844
    on kd_mean against #params' 0.738; changing held-out targets does not move the fit."""
    from gp_proxy.evaluate.fitness import descriptor_regression

    b = load_benchmark("benchmarks/fmnist")
    splits = make_splits(len(b.truth.y))
    desc = b.descriptors()
    assert desc is not None and desc.shape == (162, 5)
    pred = descriptor_regression(desc, b.params, b.truth.y, splits.train)
    assert assess(pred, b.truth.y, b.params, splits).test_tau == pytest.approx(0.8443, abs=1e-4)
    assert assess(b.params, b.truth.y, b.params, splits).test_tau == pytest.approx(0.7382,
                                                                                  abs=1e-4)
    y2 = b.truth.y.copy()
    y2[splits.test] = 0.0
    np.testing.assert_allclose(descriptor_regression(desc, b.params, y2, splits.train), pred)


def test_spaces_without_descriptors_give_none() -> None:
    from gp_proxy.spaces import get_space

    assert get_space("autoformer").descriptors(get_space("autoformer").sample(
        __import__("random").Random(0))) is None
    assert get_space("cifar-resnet-depth").descriptors("357") == {"blocks1": 3, "blocks2": 5,
                                                                  "blocks3": 7}


@pytest.mark.parametrize("metric", ["partial_tau_params", "tau_size_residual"])
def test_beyond_size_fitness_cannot_be_won_by_size(metric: str) -> None:
    """#params itself scores (near) zero under a beyond-size fitness, while a proxy carrying
    signal beyond size keeps a positive one; fitness is computed on training rows only."""
    rng = np.random.default_rng(3)
    params = rng.integers(10_000, 1_000_000, 60).astype(float)
    extra = rng.normal(size=60)
    y = np.log(params) + 0.5 * extra + rng.normal(0, 0.1, 60)
    splits = make_splits(60)
    size_only = assess(params, y, params, splits, metric)
    beyond = assess(extra, y, params, splits, metric)
    assert not size_only.fitness > 0.1
    assert beyond.fitness > 0.3
    y2 = y.copy()
    y2[splits.test] = rng.normal(size=len(splits.test))  # held-out targets never enter fitness
    assert assess(extra, y2, params, splits, metric).fitness == pytest.approx(beyond.fitness)


def test_campaign_accepts_beyond_size_fitness(bench, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from gp_proxy.config import load_config
    from gp_proxy.evolve.campaign import Campaign

    from ..conftest import _cfg

    cfg = load_config(None, _cfg(bench, tmp_path / "cache", generations=1,
                                 fitness="partial_tau_params"))
    c = Campaign(cfg, tmp_path / "run")
    c.run()
    best = c.best()
    assert best.assessment is not None
    s = c.evaluator.evaluate([best.formula])[0].scores
    tr = c.splits.train
    assert best.fitness == pytest.approx(abs(partial_kendall(s[tr], c.y[tr],
                                                             c.bench.params[tr])))


def test_weighted_combiners_and_their_refit(bench, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """rank_add_w025(x, y) = rank(x) + 0.25·rank(y); the refit scores every weight of the best
    formula's normaliser on training architectures and archives them."""
    import torch

    import primitives
    from gp_proxy.config import load_config
    from gp_proxy.evolve.campaign import Campaign

    from ..conftest import _cfg

    x = torch.tensor([3.0, 1.0, 2.0, 5.0], dtype=torch.float64)
    y = torch.tensor([1.0, 4.0, 2.0, 3.0], dtype=torch.float64)
    r = primitives.instinct.NORMALISERS["rank01"][0]
    assert torch.equal(primitives.apply("rank_add_w025", x, y), r(x) + 0.25 * r(y))
    z = primitives.instinct.NORMALISERS["z"][0]
    assert torch.equal(primitives.apply("z_sub_w4", x, y), z(x) - 4 * z(y))
    assert not primitives.get("rank_add_w2").commutative
    cfg = load_config(None, _cfg(bench, tmp_path / "cache", generations=0,
                                 guesses=["rank_add(sp_dist(k2),sum_layers(l1_norm(weight)))"]))
    c = Campaign(cfg, tmp_path / "run")
    c.initialise()
    added = c.refit_weights("rank_add(sp_dist(k2),sum_layers(l1_norm(weight)))")
    names = {primitives.parse(r.formula).name for r in added}
    assert len(names) == 2 * (1 + len(primitives.instinct.PART_WEIGHTS))
    assert all(primitives.get(n).normaliser == "rank01" for n in names)
    assert all(r.formula in c.records for r in added)
    fits = {r.formula: r.fitness for r in added}
    for r in added:  # fitness is the training metric of each weighted variant's own scores
        s = c.evaluator.evaluate([r.formula])[0].scores
        assert r.fitness == pytest.approx(abs(__import__("gp_proxy.core.rank", fromlist=["x"])
                                              .kendall_tau(s[c.splits.train],
                                                           c.y[c.splits.train])))
    assert len(set(fits.values())) > 1  # the weight matters


def test_the_size_prior_input(bench, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """log_params is log #params as a student score, in the evaluator and the plug-in API;
    campaigns offer it only with size_prior=true."""
    import torch

    import primitives
    from gp_proxy.config import load_config
    from gp_proxy.evolve.campaign import Campaign
    from gp_proxy.plugin.proxy import Proxy
    from gp_proxy.spaces import count_params

    from ..conftest import _cfg

    off = Campaign(load_config(None, _cfg(bench, tmp_path / "cache", generations=0)),
                   tmp_path / "a")
    on = Campaign(load_config(None, _cfg(bench, tmp_path / "cache", generations=0,
                                         size_prior=True)), tmp_path / "b")
    assert "log_params" not in off.ps.pset.mapping and "log_params" in on.ps.pset.mapping
    got = on.evaluator.evaluate(["log_params"])[0].scores
    np.testing.assert_allclose(got, np.log(on.bench.params))
    study = on.evaluator.evaluate(["rank_add_w025(log_params,sp_dist(k2))"])[0]
    assert study.ok
    b = on.bench
    x, y = b.probe()
    model = b.search_space().build(b.truth.archs[0])
    score = Proxy.from_string("log_params").score(b.trained_teacher(), model, x, y)
    assert score == pytest.approx(float(torch.log(torch.tensor(float(count_params(model))))))
    with pytest.raises(primitives.FormulaError, match="student-only"):
        primitives.parse("l1(log_params)")


def test_joint_fitness_is_the_aggregate_of_single_benchmark_fitnesses(bench, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A campaign evolved on two benchmarks (and an extra init seed) gives each formula the
    mean (or worst) of its training metrics there, oriented by the primary sign; the best
    formula's report carries held-out numbers on the other benchmark and a transfer one."""
    from gp_proxy.config import load_config
    from gp_proxy.evolve.campaign import Campaign

    from ..conftest import _cfg
    from ..tiny_benchmark import make_tiny_benchmark

    other = make_tiny_benchmark(tmp_path / "other", n_archs=18)
    formulas = ["rank_add(kl_t4(k3),sum_layers(l1_norm(weight)))",
                "rank_sub(sp_dist(k2),mean_layers(fro_norm(grad)))",
                "rank_add(sp_dist(k1),sum_layers(fro_norm(weight)))"]
    single = {}
    for name, folder in (("a", bench), ("b", other)):
        c = Campaign(load_config(None, _cfg(folder, tmp_path / "cache", generations=0)),
                     tmp_path / f"single-{name}")
        single[name] = {f: c.records[f] if f in c.records else c.evaluate(
            [c.ps.to_tree(primitives.parse(f, c.cache.feature_kinds))])[0] for f in formulas}
    for agg in ("mean", "worst"):
        joint = Campaign(load_config(None, _cfg(bench, tmp_path / "cache", generations=0,
                                                benchmarks=[str(other)],
                                                fitness_aggregate=agg)),
                         tmp_path / f"joint-{agg}")
        for f in formulas:
            rec = joint.evaluate([joint.ps.to_tree(primitives.parse(
                f, joint.cache.feature_kinds))])[0]
            a, b = single["a"][f].assessment, single["b"][f].assessment
            assert a is not None and b is not None
            values = [a.fitness, a.sign * b.train_tau]
            want = min(values) if agg == "worst" else sum(values) / 2
            assert rec.fitness == pytest.approx(want), f
            assert rec.spread == pytest.approx(max(values) - min(values))
    seeds = Campaign(load_config(None, _cfg(bench, tmp_path / "cache", generations=1,
                                            init_seeds=[0, 1], transfer=[str(other)])),
                     tmp_path / "seeds")
    assert [v.name for v in seeds.variants] == ["primary", "init_seed=1"]
    memo_after: list[list[int]] = []
    seeds.run(on_generation=lambda c, _: memo_after.append(
        [len(v.evaluator._memo) for v in c.variants]))
    # every feature set's memo is emptied each generation (the extra sets' once never were)
    assert memo_after and all(n == [0, 0] for n in memo_after)
    import json

    best = json.loads((tmp_path / "seeds" / "best_proxy.json").read_text())
    names = [r["name"] for r in best["held_out_elsewhere"]]
    assert names == ["init_seed=1", "transfer=other"]
    assert all("params_test_tau" in r for r in best["held_out_elsewhere"])


def test_a_second_probe_batch_is_committed_and_disjoint_from_training() -> None:
    from gp_proxy.core.files import load_tensors

    a = load_tensors("benchmarks/fmnist/probe.safetensors")["images"]
    b = load_tensors("benchmarks/fmnist/probe-1.safetensors")["images"]
    assert a.shape == b.shape
    flat_a = {tuple(x.flatten().tolist()) for x in a}
    assert sum(tuple(x.flatten().tolist()) in flat_a for x in b) < len(b)  # another batch


def test_nsga2_keeps_the_first_front(bench, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """NSGA-II survival over (fitness, training partial τ given #params): every formula of the
    pool that no other dominates survives (when the first front fits the population)."""
    from gp_proxy.config import load_config
    from gp_proxy.evolve.campaign import FAILED, Campaign

    from ..conftest import _cfg

    c = Campaign(load_config(None, _cfg(bench, tmp_path / "cache", generations=2,
                                        scheme="nsga2")), tmp_path / "run")
    c.initialise()
    before = list(c.population)
    offspring: list = []  # type: ignore[type-arg]
    real = c.evaluate

    def spy(trees):  # type: ignore[no-untyped-def]
        offspring.extend(trees)
        return real(trees)

    c.evaluate = spy  # type: ignore[method-assign]
    from gp_proxy.evolve.schemes import nsga2

    nsga2(c)
    assert len(c.population) == len(before)

    def objectives(t):  # type: ignore[no-untyped-def]
        r = c.record(t)
        a = r.assessment
        if r.fitness <= FAILED or a is None:
            return (-2.0, -2.0)
        beyond = a.sign * a.train_partial_tau_params
        return (r.fitness, beyond if np.isfinite(beyond) else -2.0)

    pool = {c.key(t): objectives(t) for t in before + offspring}
    front = [k for k, v in pool.items()
             if not any(w[0] >= v[0] and w[1] >= v[1] and w != v for w in pool.values())]
    kept = {c.key(t) for t in c.population}
    if len(front) <= len(c.population):
        assert set(front) <= kept
    c.run_dir.mkdir(parents=True, exist_ok=True)
    c._evaluate = real  # type: ignore[method-assign]


def test_valid_for_builds_only_formulas_defined_on_a_vit_space(bench, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Evolved on the CNN benchmark with valid_for=[autoformer]: every formula of the run
    also type-checks on AutoFormer's token-sequence features (without the option, some do
    not)."""
    from gp_proxy.config import ConfigError, load_config
    from gp_proxy.evolve.campaign import Campaign, _feature_kinds

    from ..conftest import _cfg

    vit = _feature_kinds("autoformer")

    def defined(f: str) -> bool:
        try:
            primitives.infer_kind(primitives.parse(f), vit)
            return True
        except primitives.GpProxyError:
            return False

    free = Campaign(load_config(None, _cfg(bench, tmp_path / "cache", generations=1)),
                    tmp_path / "free")
    free.run()
    assert not all(defined(f) for f in free.records)
    c = Campaign(load_config(None, _cfg(bench, tmp_path / "cache", generations=2,
                                        valid_for=["autoformer"])), tmp_path / "run")
    c.run()
    assert all(defined(c.key(t)) for t in c.population)
    assert all(defined(r.formula) for r in c.archive.values())
    with pytest.raises(ConfigError, match="not defined on every space"):
        Campaign(load_config(None, _cfg(bench, tmp_path / "cache", generations=0,
                                        valid_for=["autoformer"],
                                        guesses=["rank_add(sp_dist(satt(k1)),"
                                                 "sum_layers(l1_norm(weight)))"])),
                 tmp_path / "g").initialise()


def test_undefined_on_predicts_shape_errors_numerically(cache) -> None:  # type: ignore[no-untyped-def]
    """Formulas built as if students were as wide as the teacher (a ResNet family), then
    evaluated on students narrower than it: the static check names exactly those that fail,
    and passes every formula of the cache's own grammar."""
    import random

    from gp_proxy.evaluate.evaluator import Evaluator
    from gp_proxy.evolve.pset import build_pset, undefined_on

    from ..conftest import random_formulas

    kinds, mis, small = cache.feature_kinds, cache.misaligned(), cache.smallest_map()
    assert mis["k2"]  # the premise: these students are narrower than the teacher
    aligned = build_pset("both", input_kinds=kinds)
    rng = random.Random(5)
    formulas = list(dict.fromkeys(str(primitives.canonicalize(aligned.to_node(
        aligned.random_tree(rng, 2, 5)))) for _ in range(300)))
    results = Evaluator(cache, device="cpu").evaluate(formulas)
    undefined = 0
    for f, r in zip(formulas, results, strict=True):
        why = undefined_on(primitives.parse(f, kinds), kinds, mis, small)
        if why is None:
            assert r.status != "shape_error", (f, r.reason)
        else:
            undefined += 1
            assert r.status == "shape_error", (f, why, r.status)
    assert 20 < undefined < len(formulas) - 20  # both kinds of formula were tried
    assert all(undefined_on(primitives.parse(f, kinds), kinds, mis, small) is None
               for f in random_formulas(cache, 200, rng))


def test_defined_on_transfer_keeps_every_formula_defined_on_the_other_family(  # type: ignore[no-untyped-def]
        bench, tmp_path) -> None:
    """Evolved on ResNet students as wide as their teacher, carried to narrower CNN students:
    with ``defined_on_transfer`` every formula of the run can be scored there (without it,
    some cannot), and the run reports a score on the transfer benchmark."""
    import json

    from gp_proxy.config import ConfigError, load_config
    from gp_proxy.evaluate.cache import load_cache
    from gp_proxy.evolve.campaign import Campaign
    from gp_proxy.evolve.pset import undefined_on

    from ..conftest import _cfg
    from ..tiny_benchmark import make_tiny_resnet_benchmark

    resnet = make_tiny_resnet_benchmark(tmp_path / "resnet")
    other = load_benchmark(bench)
    oc = load_cache(tmp_path / "cache", other.cache_config(act_samples=2),
                    list(other.truth.archs))
    rules = (oc.feature_kinds, oc.misaligned(), oc.smallest_map())

    def defined(f: str) -> bool:
        return undefined_on(primitives.parse(f), *rules) is None

    free = Campaign(load_config(None, _cfg(resnet, tmp_path / "cache", generations=1,
                                           transfer=[str(bench)])), tmp_path / "free")
    free.run()
    assert not all(defined(f) for f in free.records)
    c = Campaign(load_config(None, _cfg(resnet, tmp_path / "cache", generations=2,
                                        transfer=[str(bench)], defined_on_transfer=True)),
                 tmp_path / "run")
    c.run()
    assert all(defined(c.key(t)) for t in c.population)
    assert all(defined(r.formula) for r in c.archive.values())
    row = json.loads((tmp_path / "run" / "best_proxy.json").read_text())["held_out_elsewhere"][0]
    assert row["name"] == "transfer=tiny" and row["status"] == "ok"
    with pytest.raises(ConfigError, match="not defined on every space"):
        Campaign(load_config(None, _cfg(resnet, tmp_path / "cache", generations=0,
                                        transfer=[str(bench)], defined_on_transfer=True,
                                        guesses=["rank_add(cosine(k2),"
                                                 "sum_layers(l1_norm(weight)))"])),
                 tmp_path / "g").initialise()
    with pytest.raises(ConfigError, match="transfer lists none"):
        load_config(None, ["defined_on_transfer=true"])


def test_paired_bootstrap_difference_against_params() -> None:
    from gp_proxy.baselines.metrics import proxy_metrics

    rng = np.random.default_rng(4)
    params = rng.integers(10_000, 1_000_000, 60).astype(float)
    y = np.log(params) + rng.normal(0, 0.3, 60)
    splits = make_splits(60)
    m = proxy_metrics(params, y, params, splits, 200, 0)
    assert m["test_tau_minus_params"] == 0.0
    assert m["test_tau_minus_params_lo"] == m["test_tau_minus_params_hi"] == 0.0
    oracle = proxy_metrics(y, y, params, splits, 200, 0)
    assert oracle["test_tau_minus_params_lo"] > 0


def test_bootstrap_intervals_of_partial_tau_and_of_the_difference_with_descriptors() -> None:
    """The partial τ's interval comes from the same resamples as τ's and contains the point
    estimate; the paired difference with the descriptor regression is 0 for the regression
    itself and positive for an oracle that the regression only approximates."""
    from gp_proxy.baselines.metrics import proxy_metrics
    from gp_proxy.evaluate.fitness import partial_kendall

    rng = np.random.default_rng(5)
    params = rng.integers(10_000, 1_000_000, 80).astype(float)
    extra = rng.normal(0, 1, 80)
    y = np.log(params) + extra + rng.normal(0, 0.2, 80)
    splits = make_splits(80)
    te = splits.test
    desc = np.log(params) + 0.5 * extra  # a regression that found half of the extra signal
    m = proxy_metrics(y, y, params, splits, 300, 0, desc)
    assert m["test_partial_tau_params"] == pytest.approx(partial_kendall(y[te], y[te],
                                                                         params[te]))
    assert m["test_partial_tau_params_lo"] <= m["test_partial_tau_params"] \
        <= m["test_partial_tau_params_hi"]
    assert m["test_tau_minus_descriptors_lo"] > 0
    same = proxy_metrics(desc, y, params, splits, 300, 0, desc)
    assert same["test_tau_minus_descriptors"] == 0.0
    assert same["test_tau_minus_descriptors_lo"] == same["test_tau_minus_descriptors_hi"] == 0.0
    assert "test_tau_minus_descriptors" not in proxy_metrics(y, y, params, splits, 50, 0)


@pytest.mark.parametrize("scheme", ["steady", "generational"])
def test_parsimony_pressure_shrinks_the_population_not_the_reported_fitness(
        bench, tmp_path, scheme: str) -> None:  # type: ignore[no-untyped-def]
    """With strong parsimony (1 per unit of complexity, more than any τ) selection prefers the
    simpler formula, so the final population is simpler than without it; the hall of fame
    still ranks by plain fitness."""
    import statistics

    from gp_proxy.config import load_config
    from gp_proxy.evolve.campaign import Campaign

    from ..conftest import _cfg

    runs = {}
    for p in (0.0, 1.0):
        c = Campaign(load_config(None, _cfg(bench, tmp_path / "cache", generations=4,
                                            scheme=scheme, parsimony=p)), tmp_path / f"p{p}")
        c.run()
        hof = c.hall_of_fame()
        assert [r.fitness for r in hof] == sorted((r.fitness for r in hof), reverse=True)
        runs[p] = statistics.mean(c.record(t).complexity for t in c.population)
    assert runs[1.0] < runs[0.0]


def test_the_verdict_on_params_rests_on_the_paired_interval(bench, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """best_proxy.json carries the best formula's paired differences with #params and with the
    descriptor regression (those of `compare`, same resamples); the printed verdict says
    "beyond noise" only when the paired interval excludes 0."""
    import json

    from gp_proxy.baselines.metrics import proxy_metrics
    from gp_proxy.cli import _report
    from gp_proxy.config import load_config
    from gp_proxy.evolve.campaign import Campaign

    from ..conftest import _cfg

    c = Campaign(load_config(None, _cfg(bench, tmp_path / "cache", generations=1)),
                 tmp_path / "run")
    c.run()
    best = json.loads((tmp_path / "run" / "best_proxy.json").read_text())
    scores = c.evaluator.evaluate([best["formula"]])[0].scores
    m = proxy_metrics(scores, c.y, c.bench.params, c.splits, 1000, 0)
    paired = best["paired_vs_params"]
    assert (paired["difference"], paired["lo"], paired["hi"]) == pytest.approx(
        (m["test_tau_minus_params"], m["test_tau_minus_params_lo"],
         m["test_tau_minus_params_hi"]))
    assert "paired_vs_descriptors" in best
    capsys.readouterr()
    for lo, words in ((0.01, ", beyond noise:"), (-0.01, "but NOT beyond noise:")):
        _report({**best, "beats_params_on_held_out": True,
                 "paired_vs_params": {**paired, "difference": 0.05, "lo": lo}})
        assert words in capsys.readouterr().out
    _report({**best, "beats_params_on_held_out": False})
    assert "does NOT beat #params" in capsys.readouterr().out
