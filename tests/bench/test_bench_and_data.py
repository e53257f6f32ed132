"""Data loading, ground-truth import and the resumable benchmark builder (tiny configs)."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from gp_proxy.bench.agreement import interaction_test
from gp_proxy.bench.build import BenchConfig, build_benchmark, summarize
from gp_proxy.bench.data import Split, load_fashion_mnist, read_idx
from gp_proxy.bench.groundtruth import GroundTruthError, load_ground_truth
from gp_proxy.spaces import count_flops, get_space
from primitives import GpProxyError


def _idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    head = bytes([0, 0, code, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return head + arr.tobytes()


def _fake_fmnist(folder: Path, n: int, gz: bool) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("t10k", n // 2)):
        images = rng.integers(0, 255, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=(count,), dtype=np.uint8)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{split}-{kind}-ubyte"
            data = _idx_bytes(arr)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reader_downsamples(tmp_path: Path, gz: bool) -> None:
    _fake_fmnist(tmp_path, 40, gz)
    train = load_fashion_mnist(tmp_path, "train")
    assert train.images.shape == (40, 1, 14, 14) and train.labels.shape == (40,)
    assert load_fashion_mnist(tmp_path, "test").images.shape == (20, 1, 14, 14)


def test_dataset_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(GpProxyError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nowhere")
    bad = tmp_path / "x-idx"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(GpProxyError, match="bad magic"):
        read_idx(bad)
    bad.write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x00" * 3)
    with pytest.raises(GpProxyError, match="promises"):
        read_idx(bad)


def _synthetic(n: int, seed: int) -> Split:
    """Learnable toy data: the label is the brightest of 10 image regions."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randn(n, 1, 14, 14, generator=g) * 0.3
    for i, c in enumerate(labels.tolist()):
        images[i, 0, c, :] += 2.0
    return Split(images, labels)


TINY = BenchConfig(train_size=100, epochs=1, teacher_epochs=1, teacher_train_size=200,
                   probe_size=8, seeds=(0, 1),
                   archs=("w8-d111-k3", "w8-d211-k3", "w12-d111-k5"))


def test_killed_build_resumes_without_redoing_runs(tmp_path: Path) -> None:
    train, test = _synthetic(300, 0), _synthetic(100, 1)
    out = tmp_path / "bench"
    first = build_benchmark(out, TINY, train, test, workers=1, max_runs=5, quiet=True)
    assert first == {"done_before": 0, "new": 5, "remaining": 7}
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    teacher_stamp = (out / "teacher.safetensors").stat().st_mtime_ns
    second = build_benchmark(out, TINY, train, test, workers=2, quiet=True)
    assert second == {"done_before": 5, "new": 7, "remaining": 0}
    for name, stamp in stamps.items():
        assert (out / "runs" / name).stat().st_mtime_ns == stamp, f"{name} was redone"
    assert (out / "teacher.safetensors").stat().st_mtime_ns == teacher_stamp
    assert not list((out / "runs").glob(".*.tmp"))
    noise = summarize(out, "test")
    assert noise["architectures"] == 3
    gt = load_ground_truth(out / "ground_truth.csv", get_space("fmnist-cnn"), "kd_mean",
                           numeric=("params", "flops", "ce_mean"))
    assert gt.archs == TINY.archs and len(gt.columns) == 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runs"] == 12 and manifest["versions"]["torch"] == torch.__version__


def test_an_unfinished_build_is_summarised_only_as_a_preview(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    """A ground truth written from part of a build would be read as the benchmark by every
    command: summarize refuses it, naming how far the build is, unless --partial."""
    from gp_proxy.cli import main

    cfg = replace(TINY, archs=(*TINY.archs, "w12-d211-k3"))
    train, test = _synthetic(300, 0), _synthetic(100, 1)
    out = tmp_path / "bench"
    build_benchmark(out, cfg, train, test, workers=2, quiet=True)
    next((out / "runs").glob("w12-d211-k3__kd__*.json")).unlink()
    with pytest.raises(GpProxyError, match="3 of 4 architectures have every run"):
        summarize(out, "test")
    assert not (out / "ground_truth.csv").exists()
    assert main(["bench", "summarize", str(out)]) == 2
    assert "3 of 4 architectures" in capsys.readouterr().err
    assert main(["bench", "summarize", str(out), "--partial"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["architectures_complete"], manifest["architectures_in_space"]) == (3, 4)


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(TINY.to_json()))
    other = BenchConfig(**{**TINY.__dict__, "epochs": 2})
    with pytest.raises(GpProxyError, match="epochs"):
        build_benchmark(out, other, _synthetic(300, 0), _synthetic(100, 1), quiet=True)


@pytest.mark.parametrize(("content", "message"), [
    ("arch,acc\n357,70.1\n333,oops\n", r":3: column 'acc': 'oops' is not a number"),
    ("arch,acc\n357,70.1\n358,71\n", r":3: column 'arch': .*stage 3 has 8 blocks"),
    ("arch,acc\n357,70.1\n357,71\n", r":3: architecture '357' repeats line 2"),
    ("arch,accuracy\n357,70\n", r"no numeric column 'acc' \(did you mean 'accuracy'\?\)"),
    ("arch,acc\n357,nan\n", r":2: column 'acc': 'nan' is not finite"),
    ("arch,acc\n357,70,1\n", r":2: 3 fields, header has 2"),
    ("arch,acc\n357,70\n", r"1 architectures"),
])
def test_bad_ground_truth_names_line_and_column(tmp_path: Path, content: str, message: str
                                                ) -> None:
    p = tmp_path / "gt.csv"
    p.write_text(content)
    with pytest.raises(GroundTruthError, match=message):
        load_ground_truth(p, get_space("cifar-resnet-depth"), "acc")


def test_import_nb201_ground_truth(tmp_path: Path) -> None:
    space = get_space("nb201")
    specs = list(space.enumerate())[:5]
    p = tmp_path / "nb.csv"
    p.write_text("arch,acc\n" + "".join(f"{s},{60 + i}\n" for i, s in enumerate(specs)))
    gt = load_ground_truth(p, space, "acc")
    assert gt.archs == tuple(specs) and gt.y.tolist() == [60, 61, 62, 63, 64]


TINY_RESNET = BenchConfig(space="cifar-resnet-depth", teacher="resnet20", train_size=100,
                          epochs=1, teacher_epochs=1, teacher_train_size=200, probe_size=8,
                          seeds=(0, 1), archs=("111", "131", "311"))


def test_builder_other_space_and_teacher_family_stops_and_resumes(tmp_path: Path) -> None:
    """A non-default space (ResNet depth codes adapted to 1×14×14 Fashion-MNIST) with a
    teacher of its own family; killed after 3 runs, resumed without redoing them."""
    train, test = _synthetic(300, 0), _synthetic(100, 1)
    out = tmp_path / "resnet"
    first = build_benchmark(out, TINY_RESNET, train, test, workers=1, max_runs=3, quiet=True)
    assert first == {"done_before": 0, "new": 3, "remaining": 9}
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    second = build_benchmark(out, TINY_RESNET, train, test, workers=2, quiet=True)
    assert second == {"done_before": 3, "new": 9, "remaining": 0}
    assert all((out / "runs" / n).stat().st_mtime_ns == t for n, t in stamps.items())
    summarize(out, "test")
    space = TINY_RESNET.student_space()
    assert space.input_shape == (1, 14, 14) and space.num_classes == 10
    gt = load_ground_truth(out / "ground_truth.csv", space, "kd_mean", numeric=("flops",))
    assert gt.columns["flops"][0] == count_flops(space.build("111"), (1, 14, 14))
    teacher = json.loads((out / "teacher.json").read_text())
    assert teacher["name"] == "resnet20" and teacher["flops"] == count_flops(
        TINY_RESNET.build_teacher(), (1, 14, 14))


def test_second_teacher_shares_ce_runs_and_reports_the_difference(tmp_path: Path) -> None:
    train, test = _synthetic(300, 0), _synthetic(100, 1)
    first = tmp_path / "first"
    build_benchmark(first, TINY, train, test, workers=2, quiet=True)
    summarize(first, "test")
    wide = replace(TINY, teacher="wide-cnn", modes=("kd",), ce_from="../first")
    second = tmp_path / "second"
    counts = build_benchmark(second, wide, train, test, workers=2, quiet=True)
    assert counts["new"] == 6  # KD only: 3 archs x 2 seeds
    assert {p.name.split("__")[1] for p in (second / "runs").glob("*.json")} == {"kd"}
    noise = summarize(second, "test")
    a, b = (json.loads((f / "noise.json").read_text()) for f in (first, second))
    gt_a, gt_b = ((f / "ground_truth.csv").read_text().splitlines() for f in (first, second))
    ce_cols = [i for i, c in enumerate(gt_a[0].split(",")) if c.startswith("ce_")]
    for ra, rb in zip(gt_a[1:], gt_b[1:], strict=True):  # the CE columns are the shared runs
        assert [ra.split(",")[i] for i in ce_cols] == [rb.split(",")[i] for i in ce_cols]
    assert noise["ce_runs_shared_from"] == "../first" and "teacher_difference" not in a
    diff = b["teacher_difference"]
    assert diff["architectures"] == 3
    assert diff["interaction_arch_x_teacher"]["df"] == [2, 6]
    assert json.loads((second / "manifest.json").read_text())["runs"] == 6


def test_shared_ce_runs_need_the_same_student_recipe(tmp_path: Path) -> None:
    first = tmp_path / "first"
    first.mkdir()
    (first / "config.json").write_text(json.dumps(TINY.to_json()))
    second = tmp_path / "second"
    second.mkdir()
    cfg = replace(TINY, teacher="wide-cnn", modes=("kd",), ce_from="../first", epochs=2)
    (second / "config.json").write_text(json.dumps(cfg.to_json()))
    with pytest.raises(GpProxyError, match=r"differently \(epochs\)"):
        summarize(second)


def test_teacher_difference_statistics_by_hand() -> None:
    """The interaction F of a hand-made 2-arch table: teacher B swaps the two archs."""
    a = np.array([[1.0, 1.2, 0.8], [2.0, 2.2, 1.8]])
    b = np.array([[2.0, 2.2, 1.8], [1.0, 1.2, 0.8]])
    res = interaction_test(a, b)
    # cells 1,2 / 2,1: interaction SS = 3 reps * 4 * 0.5^2 = 3; error SS = 4 cells * 0.08
    assert res["df"] == [1, 8]
    assert res["F"] == pytest.approx((3.0 / 1) / (0.32 / 8))


def test_a_killed_teacher_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """Teacher trainings checkpoint every epoch (model, optimiser, data-order RNG): stopped
    after epoch 1 and resumed, the weights equal an uninterrupted training's, bit for bit."""
    from gp_proxy.bench.train import Recipe, train_classifier

    data = _synthetic(96, 0)
    recipe = Recipe(epochs=3, batch_size=32, augment=True)
    space = get_space("fmnist-cnn")
    full = space.build_teacher("wide-cnn", seed=0)
    train_classifier(full, data.images, data.labels, recipe, seed=0)

    class Stop(Exception):
        pass

    def stop(epoch: int, loss: float) -> None:
        raise Stop

    ckpt = tmp_path / "teacher.ckpt.safetensors"
    part = space.build_teacher("wide-cnn", seed=0)
    with pytest.raises(Stop):
        train_classifier(part, data.images, data.labels, recipe, seed=0, on_epoch=stop,
                         checkpoint=ckpt)
    resumed = space.build_teacher("wide-cnn", seed=0)
    train_classifier(resumed, data.images, data.labels, recipe, seed=0, checkpoint=ckpt)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_the_benchmark_kd_loss_keeps_its_bits() -> None:
    """The committed benchmarks were trained with α·T²·KL + (1 − α)·CE multiplied in this
    order; the shared divergence must reproduce it, and the registered kd loss T²·KL, exactly."""
    import torch.nn.functional as F

    from gp_proxy.bench.train import hinton_kd_loss
    from gp_proxy.distill.losses import KD

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(64, 10, generator=g), torch.randn(64, 10, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    temp, alpha = 4.0, 0.9
    log_ps, log_pt = F.log_softmax(s / temp, dim=1), F.log_softmax(t / temp, dim=1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean()
    want = alpha * temp**2 * kl + (1 - alpha) * F.cross_entropy(s, y)
    assert torch.equal(hinton_kd_loss(s, t, y, temp, alpha), want)
    assert torch.equal(KD(None, temp)({"k3": s}, {"k3": t}, y), temp**2 * kl)
