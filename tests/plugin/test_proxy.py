"""The plug-in API: Proxy, adapters, and agreement with the batched evaluator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gp_proxy.core.files import save_tensors
from gp_proxy.evaluate.cache import CacheConfig, load_cache
from gp_proxy.evaluate.evaluator import Evaluator
from gp_proxy.plugin.proxy import NASLibPredictor, Proxy, make_measure
from gp_proxy.spaces import get_space
from primitives import GpProxyError

ARCHS = ["w8-d111-k3", "w12-d211-k5", "w16-d121-k3"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("proxy")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 14, 14, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    save_tensors(folder / "probe.safetensors", {"images": x, "labels": y})
    space = get_space("fmnist-cnn")
    teacher = space.build_teacher(seed=0)
    save_tensors(folder / "teacher.safetensors", teacher.state_dict())
    cache = load_cache(folder / "cache", CacheConfig(
        "fmnist-cnn", "resnet-t", str(folder / "probe.safetensors"),
        str(folder / "teacher.safetensors"), 0, act_samples=8), ARCHS)
    teacher.eval()
    return space, teacher, x, y, cache


@pytest.mark.parametrize("formula", ["sp_dist(k2)", "kl_t4(k3)",
                                     "mean_layers(fro_norm(mul(grad,weight)))",
                                     "rank_add(mse(mm(k1)),sum_layers(l1_norm(act)))"])
def test_proxy_agrees_with_the_batched_evaluator(setup, formula: str) -> None:  # type: ignore[no-untyped-def]
    space, teacher, x, y, cache = setup
    want = Evaluator(cache, device="cpu").evaluate([formula])[0].scores
    got = Proxy.from_string(formula).score_many(teacher, [space.build(a) for a in ARCHS], x, y)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_single_score_sign_and_errors(setup) -> None:  # type: ignore[no-untyped-def]
    space, teacher, x, y, _ = setup
    student = space.build(ARCHS[0])
    plus = Proxy.from_string("kl_t4(k3)").score(teacher, student, x)
    minus = Proxy("kl_t4(k3)", sign=-1).score(teacher, student, x)
    assert plus == pytest.approx(-minus)
    with pytest.raises(GpProxyError, match="score_many"):
        Proxy.from_string("rank_add(kl_t4(k3),sum_layers(l1_norm(act)))").score(
            teacher, student, x, y)
    with pytest.raises(GpProxyError, match="pass targets"):
        Proxy.from_string("mean_layers(fro_norm(grad))").score(teacher, student, x)


def test_arbitrary_models_by_module_names() -> None:
    def net(width: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))

    torch.manual_seed(0)
    teacher, student = net(16), net(4)
    x = torch.randn(6, 1, 8, 8)
    proxy = Proxy.from_string("sp_dist(k2)", features={"k2": "3"})
    value = proxy.score(teacher, student, x)
    assert value > 0 and proxy.score(teacher, teacher, x) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(GpProxyError, match="no module 'layer9'"):
        Proxy.from_string("sp_dist(k2)", features={"k2": "layer9"}).score(teacher, student, x)


def test_load_from_a_run_directory_and_adapters(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    space, teacher, x, y, _ = setup
    (tmp_path / "best_proxy.json").write_text(json.dumps({"formula": "kl_t4(k3)", "sign": -1}))
    proxy = Proxy.load(tmp_path)
    assert proxy.sign == -1
    student = space.build(ARCHS[1])
    direct = proxy.score(teacher, student, x, y)
    assert make_measure(proxy, teacher)(student, x, y) == direct
    predictor = NASLibPredictor(proxy, teacher)
    assert predictor.query(student, [(x, y)]) == direct

    class Graph:  # NASLib graphs expose their network
        model = student

    assert predictor.query(Graph(), [(x, y)]) == direct
    with pytest.raises(GpProxyError, match=r"nn\.Module"):
        predictor.query(object(), [(x, y)])


def test_readme_example_runs() -> None:
    """The README's plug-in example, executed as written."""
    root = Path(__file__).resolve().parents[2]
    text = (root / "README.md").read_text()
    code = text.split("<!-- example -->")[1].split("<!-- /example -->")[0]
    code = code.split("```python")[1].split("```")[0]
    import contextlib
    import io
    import os

    buf = io.StringIO()
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with contextlib.redirect_stdout(buf):
            exec(compile(code, "README example", "exec"), {})  # our own README, not user input
    finally:
        os.chdir(cwd)
    assert "#params" in buf.getvalue()


def test_a_run_directory_brings_its_campaign_seed(tmp_path: Path) -> None:
    """Stochastic ops draw from (seed, subtree): a run's formula must be re-scored with the
    campaign's seed, recorded in best_proxy.json or read from config.yaml."""
    from gp_proxy.plugin.proxy import read_best

    run = tmp_path / "run"
    run.mkdir()
    (run / "best_proxy.json").write_text(json.dumps({"formula": "sp_dist(drop(k2))", "sign": -1}))
    assert read_best(run) == ("sp_dist(drop(k2))", -1, 0)
    (run / "config.yaml").write_text("seed: 3\ngenerations: 2\n")
    assert read_best(run) == ("sp_dist(drop(k2))", -1, 3)
    assert Proxy.load(run).seed == 3 and Proxy.load(run, seed=5).seed == 5
    (run / "best_proxy.json").write_text(json.dumps({"formula": "sp_dist(drop(k2))", "seed": 4}))
    assert read_best(run / "best_proxy.json")[2] == 4


def test_proxy_scores_do_not_depend_on_the_callers_thread_count() -> None:
    # a convolution's backward and the formula's large reductions add up in an order set by the
    # thread count: the proxy runs models on 1 thread and the formula on 2, whatever the caller
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 1, 14, 14, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    space = get_space("fmnist-cnn")
    teacher = space.build_teacher(seed=0).eval()
    students = [space.build(a) for a in ("w16-d333-k5", "w16-d123-k5", "w12-d111-k5")]
    formula = ("rank_add(kl_t8(mm(bmm(ickd(k2)))),"
               "mean_layers(dist_kl(relu(log(weight)),sqrt(abs(grad)))))")
    proxy = Proxy.from_string(formula)
    before = torch.get_num_threads()
    parts = {}
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            parts[threads] = proxy.part_scores(teacher, students, x, y)
            assert torch.get_num_threads() == threads  # the caller's setting is restored
    finally:
        torch.set_num_threads(before)
    assert parts[1].keys() == parts[3].keys()
    for k in parts[1]:
        assert parts[1][k].numpy().tobytes() == parts[3][k].numpy().tobytes(), k


def test_act_holds_the_first_act_samples_inputs_as_in_the_cache(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # the cache keeps each layer's activations of the first act_samples probe images; the
    # proxy must read the same, or formulas on `act` score differently from the campaign's
    space, teacher, x, y, cache = setup
    cfg = CacheConfig("fmnist-cnn", "resnet-t", cache.config.probe, cache.config.teacher_weights,
                      0, act_samples=3)
    small = load_cache(tmp_path / "cache", cfg, ARCHS)
    formula = "rank_add(kl_t4(k3),sum_layers(l1_norm(act)))"
    want = Evaluator(small, device="cpu").evaluate([formula])[0].scores
    models = [space.build(a) for a in ARCHS]
    got = Proxy(formula, act_samples=3).part_scores(teacher, models, x, y)
    np.testing.assert_allclose(got["sum_layers(l1_norm(act))"].numpy(),
                               Evaluator(small, device="cpu").evaluate(
                                   ["sum_layers(l1_norm(act))"])[0].scores, rtol=1e-5)
    np.testing.assert_allclose(Proxy(formula, act_samples=3).score_many(teacher, models, x, y),
                               want, rtol=1e-5)
    every = Proxy(formula, act_samples=None).part_scores(teacher, models, x, y)
    assert not np.allclose(every["sum_layers(l1_norm(act))"].numpy(),
                           got["sum_layers(l1_norm(act))"].numpy(), rtol=1e-3)
    # a run directory brings its act_samples and threads
    (tmp_path / "best_proxy.json").write_text(json.dumps({"formula": formula, "sign": 1}))
    (tmp_path / "config.yaml").write_text("act_samples: 3\nthreads: 1\n")
    loaded = Proxy.load(tmp_path)
    assert (loaded.act_samples, loaded.threads) == (3, 1)


CALIBRATED = ["rank_add(mse(mm(k1)),sum_layers(l1_norm(act)))",
              "z_sub(kl_t4(k3),mean_layers(fro_norm(weight)))",
              "rank_sub(rank_add(kl_t4(k3),sp_dist(k2)),sum_layers(l1_norm(weight)))"]
REFERENCE = ["w8-d111-k3", "w12-d211-k5", "w16-d121-k3", "w8-d333-k5", "w12-d123-k3",
             "w16-d311-k5", "w8-d212-k3"]


@pytest.mark.parametrize("formula", CALIBRATED)
def test_calibrated_proxy_scores_one_model_at_a_time(setup, formula: str, tmp_path: Path  # type: ignore[no-untyped-def]
                                                     ) -> None:
    """Per-model scores of the reference population equal score_many's over it (so they rank
    it exactly as score_many does); a new model's score is deterministic and survives a
    save/load of the calibration; the adapters work on combined formulas."""
    space, teacher, x, y, _ = setup
    models = [space.build(a) for a in REFERENCE]
    proxy = Proxy.from_string(formula)
    together = proxy.score_many(teacher, models, x, y)
    cal = proxy.calibrate(teacher, models, x, y)
    alone = [proxy.score(teacher, m, x, y) for m in models]
    assert alone == together  # bit for bit
    cal.save(tmp_path / "calibration.json")
    from gp_proxy.plugin.proxy import Calibration

    loaded = Proxy.from_string(formula, calibration=Calibration.load(tmp_path /
                                                                     "calibration.json"))
    new = space.build("w16-d333-k3", seed=3)
    first = loaded.score(teacher, new, x, y)
    assert first == loaded.score(teacher, new, x, y) == proxy.score(teacher, new, x, y)
    assert make_measure(loaded, teacher)(new, x, y) == first
    assert NASLibPredictor(loaded, teacher, x, y).query(new) == first


def test_calibrated_rank_places_values_between_neighbours() -> None:
    from primitives.instinct import NORMALISERS

    over, against = NORMALISERS["rank01"]
    ref = torch.tensor([1.0, 2.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    assert torch.equal(against(ref, ref), over(ref))  # members: their own ranks
    got = against(ref, torch.tensor([3.0, 6.0, 0.0, 9.0, 2.0, 0.75, 10.0],
                                    dtype=torch.float64)) * 4
    # 3 between 2 (ranks 1,2) and 4 (rank 3): from rank 2 half-way to 3; 6 between ranks 3, 4;
    # outside the range the end gap extrapolated (1 -> 2 below, 4 -> 8 above), at most half a
    # step: 0 -> -0.5 (capped), 0.75 -> -0.25, 9 -> 4.25, 10 -> 4.5 (capped)
    assert got.tolist() == [2.5, 3.5, -0.5, 4.25, 1.5, -0.25, 4.5]
    # continuous at the ends: a rounding below the smallest member moves its rank by as little
    eps = torch.tensor([1.0 - 1e-9, 8.0 + 1e-9], dtype=torch.float64)
    assert torch.allclose(against(ref, eps), torch.tensor([0.0, 1.0], dtype=torch.float64),
                          atol=1e-8)
    assert torch.isnan(against(ref, torch.tensor([float("nan")]))).all()


def test_a_calibration_for_another_formula_is_refused(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    space, teacher, x, y, _ = setup
    proxy = Proxy.from_string(CALIBRATED[0])
    cal = proxy.calibrate(teacher, [space.build(a) for a in REFERENCE[:3]], x, y)
    with pytest.raises(GpProxyError, match="does not fit"):
        Proxy.from_string(CALIBRATED[1], calibration=cal)
