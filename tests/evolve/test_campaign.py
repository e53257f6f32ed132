"""Campaigns: determinism, kill-and-resume, Ctrl-C, guesses, worker processes, calibration,
user schemes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import primitives
from gp_proxy.config import ConfigError, load_config
from gp_proxy.evolve.campaign import Campaign

from ..conftest import _cfg


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
    assert c.key(c.population[0]) == str(primitives.canonicalize(primitives.parse(guess)))
    bad = load_config(None, _cfg(bench, tmp_path / "cache", generations=0, guesses=["l1(k2)"]))
    with pytest.raises(primitives.GpProxyError, match="does not fit the 'both' grammar"):
        Campaign(bad, tmp_path / "h").run()


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
    from gp_proxy.core.rank import kendall_tau
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
