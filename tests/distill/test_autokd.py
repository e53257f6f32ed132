"""Auto-KD: the distiller grammar, the distiller loss, UCT, MCTS / random / GA searches,
resumption after a kill, the CLI."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from gp_proxy.bench.data import Split
from gp_proxy.distill.autokd import Node, SearchConfig, mcts_search, run_search, uct
from gp_proxy.distill.distiller import (
    DISTILLER_LEVELS,
    FEATURE_WEIGHTS,
    KD_WEIGHTS,
    TEMPERATURES,
    Distiller,
    DistillerLoss,
    DistillerSpace,
)
from gp_proxy.distill.runner import DistillConfig, distill
from gp_proxy.spaces import get_space
from primitives import GpProxyError

from ..tiny_benchmark import make_tiny_benchmark

G = torch.Generator().manual_seed(0)
# a student narrower than the teacher (the connector maps it) with the teacher's map sizes
STUDENT = {"k1": (4, 8, 7, 7), "k2": (4, 16, 4, 4), "k3": (4, 10)}
TEACHER = {"k1": (4, 64, 7, 7), "k2": (4, 128, 4, 4), "k3": (4, 10)}
SPACE = DistillerSpace(TEACHER)
STRUCTURES = list(SPACE.enumerate_structures())


def _loss_and_grad(decisions: tuple, weights: tuple = (4, 25.0, 1.0)) -> tuple[float, float]:
    d = SPACE.distiller((*decisions, *weights))
    loss = DistillerLoss({k: (STUDENT[k], TEACHER[k]) for k in STUDENT}, str(d))
    s = {k: torch.randn(v, generator=G).requires_grad_(True) for k, v in STUDENT.items()}
    t = {k: torch.randn(v, generator=G) for k, v in TEACHER.items()}
    value = loss(s, t, torch.tensor([0, 1, 2, 3]))
    value.backward()
    grads = [s[d.knowledge].grad, s["k3"].grad]
    norm = sum(float(g.abs().sum()) for g in grads if g is not None)
    return float(value.detach()), norm


def test_the_space_is_what_the_supplement_lists() -> None:
    assert TEMPERATURES == (1, 4, 8, 16)
    assert FEATURE_WEIGHTS == (1, 5, 25, 50) and KD_WEIGHTS == (0.1, 0.5, 1, 5)
    assert SPACE.choices(()) == ["k1", "k2", "k3"]
    transforms = SPACE.choices(("k2",))
    for family in ("satt", "catt", "mask", "multi_scale_r2", "local_s2", "sp", "ickd"):
        assert family in transforms  # attention, mask, multi-scale, local, SP, ICKD
    assert "stop" in transforms and "hard" not in SPACE.choices(("k3", "stop", "stop"))
    distances = SPACE.choices(("k2", "stop", "stop"))
    assert {"mse", "l2", "cosine", "pearson", "kl", "cwd", "sp_dist", "ickd_dist"} <= set(distances)
    assert len(DISTILLER_LEVELS) == 7
    assert len(STRUCTURES) > 5000  # knowledge x transform chains x distances


def test_printed_distillers_parse_back_and_bad_ones_name_the_field() -> None:
    rng = random.Random(0)
    for _ in range(200):
        d = SPACE.distiller(SPACE.sample(rng))
        assert Distiller.parse(str(d)) == d
        assert SPACE.decisions(d)[0] == d.knowledge
    assert str(Distiller.parse("kl_t4(satt(k2))|T=4|wf=25|wkd=1")) == \
        "kl_t4(satt(k2))|T=4|wf=25|wkd=1"
    for bad, word in [("kl_t4(satt(k2))|T=8|wf=25|wkd=1", "temperature"),
                      ("mse(satt(k2))|T=4|wf=3|wkd=1", "wf=3"),
                      ("mse(satt(k2))|T=4|wf=25", "missing wkd"),
                      ("mse(foo(k2))|T=4|wf=25|wkd=1", "foo"),
                      ("satt(k2)|T=4|wf=25|wkd=1", "not a distance"),
                      ("mse(tanh(k2))|T=4|wf=25|wkd=1", "search space"),
                      ("mse(k2)|T=4|wf=25|wkd=1|x=2", "x=2")]:
        with pytest.raises(GpProxyError, match=word):
            Distiller.parse(bad)


@pytest.mark.parametrize("i", range(0, len(STRUCTURES), max(1, len(STRUCTURES) // 400)))
def test_sampled_distillers_have_a_finite_loss_and_a_gradient(i: int) -> None:
    value, grad = _loss_and_grad(STRUCTURES[i])
    assert math.isfinite(value) and math.isfinite(grad) and grad > 0, STRUCTURES[i]


@pytest.mark.slow
def test_every_distiller_structure_has_a_finite_loss_and_a_gradient() -> None:
    """All of them (about 13,000 knowledge x transforms x distance structures; the weights
    and temperatures only scale): python -m pytest -m slow -k every_distiller."""
    bad = []
    for decisions in STRUCTURES:
        for weights in ((1, 1.0, 0.1), (16, 50.0, 5.0)):
            value, grad = _loss_and_grad(decisions, weights)
            if not (math.isfinite(value) and math.isfinite(grad) and grad > 0):
                bad.append((decisions, weights))
    assert not bad, bad[:5]


def test_the_connector_learns_and_a_random_mask_redraws_each_step() -> None:
    d = "mse(mask(k1))|T=4|wf=1|wkd=0.1"
    loss = DistillerLoss({k: (STUDENT[k], TEACHER[k]) for k in STUDENT}, d)
    assert loss.connector is not None and any(p.requires_grad for p in loss.parameters())
    s = {k: torch.randn(v, generator=G) for k, v in STUDENT.items()}
    t = {k: torch.randn(v, generator=G) for k, v in TEACHER.items()}
    first, second = (float(loss(s, t, torch.zeros(4)).detach()) for _ in range(2))
    assert first != second and int(loss.step) == 2
    same = DistillerLoss({k: (TEACHER[k], TEACHER[k]) for k in TEACHER}, d)
    assert same.connector is None


def test_uct_arithmetic_on_a_hand_built_tree() -> None:
    parent = Node(("k2",), visits=10)
    a = Node(("k2", "satt"), visits=4, total=4 * 0.80)
    b = Node(("k2", "mm"), visits=1, total=0.70)
    c = Node(("k2", "sp"))
    lo, hi = 0.60, 0.85
    # a: (0.80 - 0.60) / 0.25 = 0.8, plus 0.7 sqrt(ln 10 / 4)
    assert uct(a, 10, 0.7, lo, hi) == pytest.approx(0.8 + 0.7 * math.sqrt(math.log(10) / 4))
    assert uct(b, 10, 0.7, lo, hi) == pytest.approx(0.4 + 0.7 * math.sqrt(math.log(10)))
    assert uct(c, 10, 0.7, lo, hi) == math.inf
    a.pending = 1  # a virtual loss: one more visit at the worst reward
    assert uct(a, 10, 0.7, lo, hi) == pytest.approx(
        ((4 * 0.80 + 0.60) / 5 - 0.60) / 0.25 + 0.7 * math.sqrt(math.log(10) / 5))
    parent.children = {"satt": a, "mm": b, "sp": c}
    assert parent.to_json()["children"]["satt"]["visits"] == 4


def _synthetic(d: str) -> float:
    """A reward with structure: KL on k3 best, weights matter a little, no noise."""
    x = Distiller.parse(d)
    return (0.5 + 0.3 * (x.distance == "kl") + 0.1 * (x.knowledge == "k3")
            + 0.01 * FEATURE_WEIGHTS.index(x.feature_weight) - 0.02 * len(x.transforms))


def _reward(batch: list[str]) -> list[float]:
    return [_synthetic(d) for d in batch]


def test_mcts_spends_its_budget_on_distinct_distillers_and_finds_structure() -> None:
    cfg = SearchConfig(budget=60, batch=3, seed=1)
    root, rewards = mcts_search(SPACE, _reward, cfg)
    assert len(rewards) == 60 and root.visits >= 60
    assert sum(c.visits for c in root.children.values()) == root.visits
    best = max(rewards, key=lambda d: rewards[d])
    assert Distiller.parse(best).distance == "kl"  # found the high-reward region
    again = mcts_search(SPACE, _reward, cfg)
    assert again[1] == rewards and again[0].to_json() == root.to_json()  # seeded


@pytest.mark.parametrize("algorithm", ["mcts", "random", "gp"])
def test_a_killed_search_resumes_to_the_same_tree(tmp_path: Path, algorithm: str) -> None:
    bench = make_tiny_benchmark(tmp_path / "bench", n_archs=4)
    cfg = SearchConfig(algorithm=algorithm, budget=12, batch=2, population=4, seed=3)
    whole = run_search(str(bench), "w8-d111-k3", cfg, tmp_path / "whole", reward=_reward)
    calls = []

    def dies(batch: list[str]) -> list[float]:
        calls.append(len(batch))
        if sum(calls) > 5:
            raise KeyboardInterrupt
        return _reward(batch)

    with pytest.raises(KeyboardInterrupt):
        run_search(str(bench), "w8-d111-k3", cfg, tmp_path / "part", reward=dies)
    kept = (tmp_path / "part" / "evaluations.jsonl").read_text().splitlines()
    assert 0 < len(kept) < 12
    resumed = []

    def counts(batch: list[str]) -> list[float]:
        resumed.extend(batch)
        return _reward(batch)

    again = run_search(str(bench), "w8-d111-k3", cfg, tmp_path / "part", reward=counts)
    assert len(resumed) == 12 - len(kept)  # nothing trained twice
    assert again == whole
    for name in ("tree.json", "best.json"):
        assert json.loads((tmp_path / "part" / name).read_text()) == \
            json.loads((tmp_path / "whole" / name).read_text())
    with pytest.raises(GpProxyError, match="other settings"):
        run_search(str(bench), "w8-d111-k3", SearchConfig(algorithm=algorithm, budget=13),
                   tmp_path / "part", reward=_reward)


def test_the_ga_and_random_search_use_their_budget() -> None:
    from gp_proxy.distill.autokd import ga_search, random_search

    for search in (ga_search, random_search):
        _, rewards = search(SPACE, _reward, SearchConfig(budget=24, batch=4, population=6))
        assert len(rewards) == 24


def _data(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, 1, 14, 14, generator=g), torch.randint(0, 10, (n,), generator=g))


def test_a_distiller_distillation_resumes_to_identical_weights(tmp_path: Path) -> None:
    """The mask's step count and the connector live in the checkpoint: a killed run ends
    with the weights of an uninterrupted one."""
    space = get_space("fmnist-cnn")
    teacher = space.build_teacher(seed=1).eval()
    train, test = _data(64, 0), _data(16, 1)
    cfg = DistillConfig(epochs=2, batch_size=32, ce_weight=1.0, losses={"distiller": 1.0},
                        distiller="mse(mask(k1))|T=4|wf=5|wkd=1")
    whole = space.build("w8-d111-k3", seed=0)
    distill(whole, teacher, train, test, cfg, tmp_path / "a")

    class Stop(Exception):
        pass

    def stop(epoch: int, loss: float) -> None:
        raise Stop

    with pytest.raises(Stop):  # killed after its first epoch
        distill(space.build("w8-d111-k3", seed=0), teacher, train, test, cfg, tmp_path / "b",
                on_epoch=stop)
    resumed = space.build("w8-d111-k3", seed=0)
    distill(resumed, teacher, train, test, cfg, tmp_path / "b")
    for (k, v), w in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    assert json.loads((tmp_path / "b" / "config.json").read_text())["distiller"] == cfg.distiller


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gp_proxy.cli import main

    bench = make_tiny_benchmark(tmp_path / "bench", n_archs=4)
    assert main(["distiller-search", "--student", "w8-d111-k3", "--out", str(tmp_path / "s"),
                 "--benchmark", str(bench), "--algorithm", "annealing"]) == 2
    assert "annealing" in capsys.readouterr().err
    assert main(["distill", "--student", "w8-d111-k3", "--out", str(tmp_path / "d"),
                 "--benchmark", str(bench), "--distiller", "mse(satt(k2))|T=3|wf=1|wkd=1"]) == 2
    assert "T=3" in capsys.readouterr().err
    assert main(["distill", "--student", "w8-d111-k3", "--out", str(tmp_path / "d"),
                 "--benchmark", str(bench), "--distiller", str(tmp_path)]) == 2
    assert "best.json" in capsys.readouterr().err


def test_comparison_runs_end_to_end_and_resumes(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The full-budget comparison on a tiny benchmark and fake data: every candidate trained
    over the seeds, proxy rewards for all, the correlation and the Welch test reported; run
    again, it trains nothing (every training is on disk)."""
    from gp_proxy.distill.kdcompare import HAND_DESIGNED, CompareConfig, compare_distillers

    from ..bench.test_bench_and_data import _fake_fmnist

    data = tmp_path / "idx"
    data.mkdir()
    _fake_fmnist(data, 60, gz=True)
    bench = make_tiny_benchmark(tmp_path / "bench", n_archs=4)
    cfg = CompareConfig(benchmark=str(bench), students=("w8-d111-k3",),
                        search=SearchConfig(budget=3, epochs=1, train_size=24, val_size=12),
                        top=1, seeds=(0, 1), epochs=1, train_size=36, workers=1, data=str(data),
                        exploration_check=(1.4,))
    report = compare_distillers(cfg, tmp_path / "out")
    r = report["students"]["w8-d111-k3"]
    assert set(HAND_DESIGNED) | {"mcts #1", "random #1", "gp #1"} == set(r["rows"])
    assert all(len(row["per_seed"]) == 2 and row["proxy_reward"] is not None
               for row in r["rows"].values())
    assert r["proxy_vs_full"]["n"] == len(r["rows"])
    assert set(report["exploration_check"]["by_c"]) == {"0.7", "1.4"}
    assert "Spearman" in (tmp_path / "out" / "report.md").read_text()
    again = compare_distillers(cfg, tmp_path / "out")
    assert again["students"] == report["students"]
