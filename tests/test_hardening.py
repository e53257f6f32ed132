"""The audit's reproducers: malformed inputs and artifacts give one clear line and a non-zero
exit, concurrent writers are refused, torn or tampered files are repaired or rebuilt."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import primitives
from gp_proxy.cli import main
from gp_proxy.config import ConfigError, load_config
from gp_proxy.core.artifacts import ArtifactError, CampaignCheckpoint, load_artifact, read_history
from gp_proxy.core.files import RunLockedError, run_lock
from gp_proxy.plugin.proxy import Proxy, read_best
from primitives import FormulaError, GpProxyError

DEEP = "sum_layers(" + "abs(" * 495 + "fro_norm(grad)" + ")" * 495 + ")"


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_deep_nesting_is_one_error_not_a_recursion_error(capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    assert main(["formula", DEEP]) == 2
    assert "nests deeper than 100 levels" in _one_line_error(capsys)
    with pytest.raises(FormulaError, match="deeper than"):
        Proxy.from_string(DEEP)
    ok = "sum_layers(" + "abs(" * 90 + "fro_norm(grad)" + ")" * 90 + ")"
    assert primitives.parse(ok).height == 93


GOOD_CHECKPOINT = {"generation": 2, "evaluations": 30, "elapsed": 1.5, "stagnant": 0,
                   "best_history": [0.1, None], "population": ["l1(k2)"],
                   "rng_state": [3, [1] * 625, None], "archive": []}


@pytest.mark.parametrize(("change", "message"), [
    ({"generation": "abc"}, "field generation"),
    ({"rng_state": "x"}, "field rng_state"),
    ({"population": []}, "field population"),
    ({"archive": None}, "field archive"),
    ({"elapsed": float("nan")}, "field elapsed"),
])
def test_malformed_checkpoints_name_the_field(tmp_path: Path, change: dict, message: str,  # type: ignore[type-arg]
                                              capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.json").write_text(json.dumps({**GOOD_CHECKPOINT, **change}))
    assert main(["resume", str(run)]) == 2
    err = _one_line_error(capsys)
    assert "checkpoint.json" in err and message in err, err
    (run / "checkpoint.json").write_text("[]")
    with pytest.raises(ArtifactError, match=r"checkpoint\.json"):
        load_artifact(run / "checkpoint.json", CampaignCheckpoint)
    assert load_artifact(_write(tmp_path / "ok.json", GOOD_CHECKPOINT),
                         CampaignCheckpoint).generation == 2


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(("content", "message"), [
    ({"formula": 123, "sign": 1}, "field formula"),
    ({"formula": "l1(k2)", "sign": "x"}, "field sign"),
    ({"sign": 1}, "field formula"),
    ([], "whole file"),
])
def test_malformed_best_proxy_names_the_field(tmp_path: Path, content: object,
                                              message: str) -> None:
    with pytest.raises(ArtifactError, match=message):
        read_best(_write(tmp_path / "best_proxy.json", content))


def test_benchmark_artifacts_name_file_and_field(tmp_path: Path) -> None:
    from gp_proxy.bench.benchmark import load_benchmark
    from gp_proxy.bench.build import BenchConfig, _load_runs

    from .tiny_benchmark import make_tiny_benchmark

    bench = make_tiny_benchmark(tmp_path / "b", n_archs=4)
    _write(bench / "config.json", [1, 2])
    with pytest.raises(GpProxyError, match=r"config\.json: a benchmark config must be"):
        load_benchmark(bench)
    _write(bench / "config.json", {"space": "fmnist-cnn", "epochs": "ten"})
    with pytest.raises(GpProxyError, match=r"config\.json: field epochs"):
        BenchConfig.load(bench / "config.json")
    (bench / "runs").mkdir()
    run = {"arch": "w8-d111-k3", "mode": "kd", "seed": 0, "test_acc": "oops",
           "train_loss": 0.5, "train_seconds": 1.0}
    _write(bench / "runs" / "w8-d111-k3__kd__s0.json", run)
    with pytest.raises(ArtifactError, match=r"__kd__s0\.json: field test_acc"):
        _load_runs(bench, ("kd",))
    (bench / "runs" / "w8-d111-k3__kd__s0.json").write_text(
        json.dumps({**run, "test_acc": math.nan}))  # json writes NaN, Python reads it back
    with pytest.raises(ArtifactError, match="field test_acc"):
        _load_runs(bench, ("kd",))


def test_config_that_is_a_folder_or_binary_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)
    binary = tmp_path / "c.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_config(binary)


def test_errors_name_the_override_or_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"override 'seed=-1': seed: .*greater than or equal"):
        load_config(None, ["seed=-1"])
    f = tmp_path / "c.yaml"
    f.write_text("population: 2\n")
    with pytest.raises(ConfigError, match=rf"{f.name}: population"):
        load_config(f)
    with pytest.raises(ConfigError, match=r"override 'populaton=3': unknown key"):
        load_config(f, ["populaton=3"])


def test_ground_truth_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    from gp_proxy.bench.groundtruth import load_ground_truth
    from gp_proxy.spaces import get_space

    p = tmp_path / "gt.csv"
    p.write_bytes("arch,acc\n357,70\n333,71\n111,60\n".encode("utf-8-sig"))
    gt = load_ground_truth(p, get_space("cifar-resnet-depth"), "acc")
    assert gt.archs == ("357", "333", "111")


def test_count_options_refuse_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "--top-k", "0"]) == 2
    assert "top-k" in capsys.readouterr().err


def test_distill_reports_a_bad_student_or_loss_before_the_dataset(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from .tiny_benchmark import make_tiny_benchmark

    bench = make_tiny_benchmark(tmp_path / "b", n_archs=4)
    nowhere = str(tmp_path / "no-data")
    base = ["distill", "--benchmark", str(bench), "--data", nowhere, "--out",
            str(tmp_path / "run")]
    assert main([*base, "--student", "w9-d111-k3"]) == 2
    assert "base width 9" in _one_line_error(capsys)
    assert main([*base, "--student", "w8-d111-k3", "--losses", "kd=1,nope=2"]) == 2
    assert "unknown distillation loss 'nope'" in _one_line_error(capsys)
    assert main([*base, "--student", "w8-d111-k3"]) == 2
    assert "Fashion-MNIST not found" in _one_line_error(capsys)


def test_bench_build_reports_a_bad_teacher_before_the_dataset(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "b")
    assert main(["bench", "build", out, "--teacher", "resnet-x", "--data",
                 str(tmp_path / "none")]) == 2
    assert "teacher 'resnet-x'" in _one_line_error(capsys)


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    with run_lock(tmp_path / "run"):
        with pytest.raises(RunLockedError, match=r"in use by process \d+"), \
                run_lock(tmp_path / "run"):
            pass
    with run_lock(tmp_path / "run"):  # released on exit
        pass


def test_two_campaigns_on_one_folder(bench: Path, tmp_path: Path) -> None:
    from gp_proxy.evolve.campaign import Campaign

    from .conftest import _cfg

    cfg = load_config(None, _cfg(bench, tmp_path / "cache", generations=1))
    with run_lock(tmp_path / "run"), pytest.raises(RunLockedError):
        Campaign(cfg, tmp_path / "run").run()


def test_a_torn_history_tail_is_skipped_a_torn_middle_is_an_error(tmp_path: Path) -> None:
    h = tmp_path / "history.jsonl"
    h.write_text('{"generation": 0}\n{"generation": 1}\n{"generation": 2, "be')
    assert [r["generation"] for r in read_history(tmp_path)] == [0, 1]
    h.write_text('{"generation": 0}\n{"gen\n{"generation": 2}\n')
    with pytest.raises(GpProxyError, match=r"history\.jsonl:2: not a generation record"):
        read_history(tmp_path)


def test_a_tampered_cache_file_is_rebuilt(probe: Path, tmp_path: Path) -> None:
    """Finite garbage written over a cache file (metadata intact) was used silently: the
    content digest catches it and the file is rebuilt to the same bits."""
    from gp_proxy.core.files import load_tensors, save_tensors
    from gp_proxy.evaluate.cache import CacheConfig, _arch_file, _read_metadata, load_cache

    cfg = CacheConfig("fmnist-cnn", "resnet-t", str(probe), act_samples=2)
    first = load_cache(tmp_path, cfg, ["w8-d111-k3"])
    path = _arch_file(tmp_path / first.key, "w8-d111-k3")
    meta = _read_metadata(path)
    assert meta is not None and len(meta["digest"]) == 64
    tensors = load_tensors(path)
    tensors["k2"] = tensors["k2"] * 1.001  # plausible, finite, wrong
    save_tensors(path, tensors, meta)
    again = load_cache(tmp_path, cfg, ["w8-d111-k3"])
    assert torch.equal(again.students[0].features["k2"], first.students[0].features["k2"])


def test_pareto_breaks_ties_by_formula(bench: Path, tmp_path: Path) -> None:
    from gp_proxy.evaluate.fitness import Assessment
    from gp_proxy.evolve.campaign import Campaign, Record

    from .conftest import _cfg

    c = Campaign(load_config(None, _cfg(bench, tmp_path / "cache", generations=0)),
                 tmp_path / "run")
    a = Assessment(1, 0.5, 0.5, 0.4, 0.5, 0.4, 0.3, 0.3)
    recs = [Record(f, "ok", "", 0.5, a, 3, 3, 0) for f in ("l1(k2)", "l1(k1)")]
    orders = []
    for rs in (recs, recs[::-1]):
        c.archive = {r.formula: r for r in rs}
        orders.append([r.formula for r in c.pareto()])
    assert orders[0] == orders[1] == ["l1(k1)"]


def test_inspect_of_a_malformed_best_proxy_is_one_line(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "hall_of_fame.csv").write_text("rank,formula,fitness,test_tau,test_rho,"
                                          "test_tau_in_params_bins,complexity,latex\n")
    (run / "history.jsonl").write_text('{"generation": 0}\n')
    (run / "config.yaml").write_text("seed: 0\n")
    for content, field in (({"formula": "l1(k2)", "sign": 1}, "baselines"),
                           ({"formula": 123, "sign": 1}, "formula")):
        (run / "best_proxy.json").write_text(json.dumps(content))
        assert main(["inspect", str(run)]) == 2
        err = _one_line_error(capsys)
        assert "best_proxy.json" in err and f"field {field}" in err, err


def test_score_reports_a_typo_before_building_the_cache(bench: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    cache = tmp_path / "cache"
    assert main(["score", "rank_add(sp_dist(k2),sum_layers(l1_nrom(weight)))", "--benchmark",
                 str(bench), "--cache-dir", str(cache)]) == 2
    assert "unknown op 'l1_nrom'" in _one_line_error(capsys)
    assert not cache.exists()  # nothing was built


def test_score_many_holds_one_student_at_a_time() -> None:
    """The bound stated for Proxy.part_scores: besides the teacher's features, at most one
    student's environment (features, activations, weights, gradients) is alive at a time."""
    import gc
    import weakref

    from gp_proxy.spaces import get_space

    space = get_space("fmnist-cnn")
    teacher = space.build_teacher(seed=0).eval()
    proxy = Proxy.from_string("rank_add(sp_dist(k2),sum_layers(l1_norm(act)))")
    alive: list[weakref.ref] = []  # type: ignore[type-arg]
    most = 0
    real = proxy._side

    def side(model, x, targets, student):  # type: ignore[no-untyped-def]
        nonlocal most
        gc.collect()
        most = max(most, sum(r() is not None for r in alive))
        env = real(model, x, targets, student)
        if student:
            alive.append(weakref.ref(env["act"].values))
        return env

    proxy._side = side  # type: ignore[method-assign]
    x = torch.randn(8, 1, 14, 14)
    y = torch.randint(0, 10, (8,))
    students = (space.build(a) for a in ["w8-d111-k3", "w12-d211-k5", "w16-d121-k3",
                                         "w8-d333-k5"])
    assert len(proxy.score_many(teacher, students, x, y)) == 4
    assert most <= 1  # when a student is read, no earlier student's tensors are alive


def test_a_malformed_teacher_record_names_its_field(tmp_path: Path) -> None:
    from gp_proxy.core.artifacts import TeacherRecord

    _write(tmp_path / "teacher.json", {"name": "resnet-t", "test_acc": "high"})
    with pytest.raises(ArtifactError, match=r"teacher\.json: field test_acc"):
        load_artifact(tmp_path / "teacher.json", TeacherRecord)


def test_running_out_of_memory_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """torch's allocator failing (a memory limit, a formula with huge intermediates) is one
    line and exit 2; any other RuntimeError is a bug and keeps its traceback."""
    from gp_proxy import cli

    def fail(message: str):  # type: ignore[no-untyped-def]
        def run(*_: object, **__: object) -> None:
            raise RuntimeError(message)
        return run

    monkeypatch.setattr(cli, "app", fail("[enforce fail at alloc_cpu.cpp:127] err == 0. "
                                         "DefaultCPUAllocator:\ncan't allocate memory: you "
                                         "tried to allocate 16970496 bytes."))
    assert cli.main(["config"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "out of memory" in err and "16970496" in err
    monkeypatch.setattr(cli, "app", fail("some other failure"))
    with pytest.raises(RuntimeError, match="some other failure"):
        cli.main(["config"])
