"""The committed embedded benchmark loads on a fresh clone and a campaign runs on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gp_proxy.bench.benchmark import load_benchmark
from gp_proxy.cli import main
from gp_proxy.core.files import load_tensors, read_json

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "fmnist"


def test_committed_benchmark_is_complete_data() -> None:
    bench = load_benchmark(BENCH)
    # the bar: >= 150 architectures x 3 seeds (KD and CE) committed
    assert len(bench.truth) >= 150
    runs = list((BENCH / "runs").glob("*.json"))
    assert len(runs) == 6 * len(bench.truth)
    header = (BENCH / "ground_truth.csv").read_text().splitlines()[0].split(",")
    for col in ("kd_s0", "kd_s1", "kd_s2", "kd_mean", "kd_std", "kd_seconds", "ce_s0", "ce_s1",
                "ce_s2", "ce_mean", "ce_std", "params", "flops"):
        assert col in header
    probe = load_tensors(BENCH / "probe.safetensors")
    assert probe["images"].shape[1:] == (1, 14, 14) and len(probe["labels"]) == 64
    teacher = read_json(BENCH / "teacher.json")
    assert teacher["test_acc"] >= 0.89  # the brief's bar for a clearly stronger teacher
    noise = read_json(BENCH / "noise.json")
    assert noise["architectures"] == len(bench.truth)
    manifest = read_json(BENCH / "manifest.json")
    assert manifest["architectures_complete"] == len(bench.truth)


def test_main_job_runs_on_the_embedded_benchmark(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    code = main(["evolve", f"benchmark={BENCH}", f"cache_dir={tmp_path / 'cache'}",
                 "population=8", "generations=1", "act_samples=4", "--out", str(run)])
    out = capsys.readouterr().out
    assert code == 0, out
    best = json.loads((run / "best_proxy.json").read_text())
    assert best["architectures"]["total"] == len(load_benchmark(BENCH).truth)
    assert "#params" in out and "FLOPS" in out


SECOND_TEACHER = ROOT / "benchmarks" / "fmnist-wide"


def test_second_teacher_benchmark_is_complete_data() -> None:
    """Benchmark 2: the same students and probe batch as benchmarks/fmnist, a wide-shallow
    CNN teacher, KD runs only (CE shared): every student's 3 KD runs are valid records of
    this config, and the summary covers all of them with the teacher-difference analysis."""
    from gp_proxy.bench.build import BenchConfig, shared_ce_source
    from gp_proxy.core.artifacts import BenchRun, TeacherRecord, load_artifact

    cfg = BenchConfig.load(SECOND_TEACHER / "config.json")
    assert cfg.teacher == "wide-cnn" and cfg.modes == ("kd",) and cfg.ce_from == "../fmnist"
    assert shared_ce_source(SECOND_TEACHER, cfg) == BENCH.resolve()
    teacher = load_artifact(SECOND_TEACHER / "teacher.json", TeacherRecord)
    assert teacher.test_acc is not None and teacher.test_acc >= 0.89
    mine, theirs = (load_tensors(f / "probe.safetensors") for f in (SECOND_TEACHER, BENCH))
    assert all((mine[k] == theirs[k]).all() for k in ("images", "labels"))
    space = cfg.student_space()
    for p in (SECOND_TEACHER / "runs").glob("*.json"):
        run = load_artifact(p, BenchRun)
        assert run.mode == "kd" and run.seed in cfg.seeds
        assert p.name == f"{space.validate(run.arch)}__kd__s{run.seed}.json"
    bench = load_benchmark(SECOND_TEACHER)
    assert list(bench.truth.archs) == list(load_benchmark(BENCH).truth.archs)  # all 162
    assert len(list((SECOND_TEACHER / "runs").glob("*.json"))) == 3 * len(bench.truth)
    noise = read_json(SECOND_TEACHER / "noise.json")
    assert noise["architectures"] == len(bench.truth)
    diff = noise["teacher_difference"]
    assert diff["architectures"] == len(bench.truth) and diff["reference"] == "fmnist"
    for key in ("within_reference", "within_this", "cross_teacher"):
        assert -1 <= diff["single_run_kendall"][key] <= 1
    manifest = read_json(SECOND_TEACHER / "manifest.json")
    assert manifest["architectures_complete"] == len(bench.truth)


SECOND_FAMILY = ROOT / "benchmarks" / "fmnist-resnet"


def test_second_family_benchmark_is_complete_data() -> None:
    """Benchmark 3: the cifar-resnet-depth layout (all 64 students) on the same 1x14x14 data
    and probe batch, a ResNet-56 teacher of that family, KD and CE on 3 seeds: every run is a
    valid record of this config, and the summary covers every architecture."""
    from gp_proxy.bench.build import BenchConfig
    from gp_proxy.core.artifacts import BenchRun, TeacherRecord, load_artifact

    cfg = BenchConfig.load(SECOND_FAMILY / "config.json")
    assert (cfg.space, cfg.teacher, cfg.modes) == ("cifar-resnet-depth", "resnet56",
                                                   ("kd", "ce"))
    space = cfg.student_space()
    archs = list(space.enumerate())
    assert space.input_shape == (1, 14, 14) and len(archs) == 64
    teacher = load_artifact(SECOND_FAMILY / "teacher.json", TeacherRecord)
    assert teacher.test_acc is not None and teacher.test_acc >= 0.89
    mine, theirs = (load_tensors(f / "probe.safetensors") for f in (SECOND_FAMILY, BENCH))
    assert all((mine[k] == theirs[k]).all() for k in ("images", "labels"))
    names = set()
    for p in (SECOND_FAMILY / "runs").glob("*.json"):
        run = load_artifact(p, BenchRun)
        assert run.mode in cfg.modes and run.seed in cfg.seeds
        assert p.name == f"{space.validate(run.arch)}__{run.mode}__s{run.seed}.json"
        assert 0.5 < run.test_acc <= 1.0
        names.add(p.name)
    assert names == {f"{a}__{m}__s{s}.json" for a in archs for m in cfg.modes
                     for s in cfg.seeds}  # 384: every student, mode and seed
    bench = load_benchmark(SECOND_FAMILY)
    assert sorted(bench.truth.archs) == sorted(archs)
    noise = read_json(SECOND_FAMILY / "noise.json")
    assert noise["architectures"] == 64
    manifest = read_json(SECOND_FAMILY / "manifest.json")
    assert manifest["architectures_complete"] == manifest["architectures_in_space"] == 64
    assert manifest["runs"] == 384
