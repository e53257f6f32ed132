"""The plug-in surface from outside the package: a user's space, dataset and combined proxy,
through the public API and the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import gp_proxy
from gp_proxy import GpProxyError


def test_public_api_names_resolve() -> None:
    for name in ("Proxy", "Calibration", "make_measure", "NASLibPredictor", "SearchSpace",
                 "FeatureNet", "get_space", "register_space", "register_dataset",
                 "load_benchmark"):
        assert getattr(gp_proxy, name) is not None
    with pytest.raises(AttributeError):
        gp_proxy.nothing_here  # noqa: B018


def test_a_user_space_by_name_and_by_module_attr() -> None:
    from .. import user_plugin  # registers "tiny-user"

    space = gp_proxy.get_space("tiny-user")
    assert list(space.enumerate())[:2] == ["4x1", "4x2"]
    other = gp_proxy.get_space("tests.user_plugin:TinySpace")
    assert isinstance(other, user_plugin.TinySpace)
    adapted = gp_proxy.get_space("tiny-user", (3, 8, 8), 5)
    assert adapted.build("8x2").features(torch.zeros(2, 3, 8, 8))["k3"].shape == (2, 5)
    with pytest.raises(GpProxyError, match="registered twice"):
        gp_proxy.register_space("tiny-user")(user_plugin.TinySpace)
    with pytest.raises(GpProxyError, match="cannot import 'no_such_module'"):
        gp_proxy.get_space("no_such_module:Space")


def _arrays(path: Path, n: int = 90, classes: int = 3) -> Path:
    """Learnable toy data (the label is the brightest third of the image), uint8 n h w."""
    rng = np.random.default_rng(0)
    def make(m: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, m)
        x = rng.integers(0, 60, (m, 8, 8)).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, :, c * 2:(c + 1) * 2] += 150
        return x, y
    (xa, ya), (xb, yb) = make(n), make(n // 3)
    np.savez(path, train_images=xa, train_labels=ya, test_images=xb, test_labels=yb)
    return path


def test_arrays_dataset_standardises_and_names_missing_arrays(tmp_path: Path) -> None:
    from gp_proxy.bench.data import get_dataset

    f = _arrays(tmp_path / "d.npz")
    ds = get_dataset("arrays")
    train = ds.load(f, "train", 8)
    assert train.images.shape == (90, 1, 8, 8) and train.images.dtype == torch.float32
    assert abs(float(train.images.mean())) < 1e-5
    assert ds.describe(f, 8) == (1, 3)
    np.savez(tmp_path / "bad.npz", train_images=np.zeros((3, 8, 8)))
    with pytest.raises(GpProxyError, match="no array 'train_labels'"):
        ds.load(tmp_path / "bad.npz", "train", 8)


def test_bench_build_on_a_user_space_and_dataset(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The command line with a plug-in space (module:attr) and an arrays dataset: channels
    and classes come from the data, the ground truth is built and summarised."""
    from gp_proxy.bench.build import BenchConfig
    from gp_proxy.cli import main

    data = _arrays(tmp_path / "d.npz")
    out = tmp_path / "bench"
    argv = ["bench", "build", str(out), "--space", "tests.user_plugin:TinySpace",
            "--teacher", "wide", "--dataset", "arrays", "--data", str(data),
            "--image-size", "8", "--epochs", "1", "--teacher-epochs", "1",
            "--archs", "4x1,8x1,12x2", "--workers", "1"]
    # a tiny recipe: the config file is written first, then edited like a user would
    cfg = BenchConfig(space="tests.user_plugin:TinySpace", teacher="wide", dataset="arrays",
                      image_size=8, epochs=1, teacher_epochs=1, train_size=60,
                      teacher_train_size=90, probe_size=8, seeds=(0, 1), channels=1,
                      classes=3, archs=("4x1", "8x1", "12x2"))
    out.mkdir()
    (out / "config.json").write_text(__import__("json").dumps(cfg.to_json()))
    assert main(argv) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "12 new, 0 remaining" in text
    bench = gp_proxy.load_benchmark(out)
    assert bench.truth.archs == ("4x1", "8x1", "12x2")


def test_bench_import_of_published_ground_truth(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A CSV of (architecture, accuracies) for a registered space becomes a benchmark folder
    a campaign can run on; a bad row is one line naming the line and column."""
    from gp_proxy.cli import main

    from .. import user_plugin  # noqa: F401  (registers tiny-user)

    data = _arrays(tmp_path / "d.npz")
    csv_file = tmp_path / "gt.csv"
    csv_file.write_text("arch,top1,top5\n4x1,51.5,90\n8x1,55.0,91\n12x2,58.25,93\n4x2,53,90\n")
    out = tmp_path / "imported"
    base = ["bench", "import", str(csv_file), str(out), "--space", "tests.user_plugin:TinySpace",
            "--teacher", "wide", "--dataset", "arrays", "--data", str(data), "--image-size",
            "8", "--columns", "top1,top5", "--probe-size", "8"]
    assert main(base) == 0, capsys.readouterr().err
    bench = gp_proxy.load_benchmark(out, "top1")
    assert bench.truth.archs == ("4x1", "8x1", "12x2", "4x2")
    assert bench.truth.y.tolist() == [51.5, 55.0, 58.25, 53.0]
    assert bench.probe()[0].shape == (8, 1, 8, 8)
    assert main(base) == 2  # the folder already holds a benchmark
    csv_file.write_text("arch,top1\n4x1,51.5\n9x1,55\n8x1,50\n")
    assert main([*base[:3], str(tmp_path / "b2"), *base[4:-4], "--columns", "top1"]) == 2
    assert "gt.csv:3: column 'arch'" in capsys.readouterr().err


def test_a_plain_model_without_features_gets_a_hint_naming_features() -> None:
    from torch import nn

    plain = nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    teacher = nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    x = torch.randn(4, 1, 8, 8)
    with pytest.raises(GpProxyError, match=r"reads k2 .*pass features=\{'k2'"):
        gp_proxy.Proxy.from_string("sp_dist(k2)").score(teacher, plain, x)
    proxy = gp_proxy.Proxy.from_string("sp_dist(k2)", features={"k2": "2"})
    assert np.isfinite(proxy.score(teacher, plain, x))


def test_user_measures_and_features_for_zen_and_diswot() -> None:
    """A user's zero-cost measure registers by decorator (with needs_teacher as a property,
    not a special name); zen and DisWOT read plain models through features=."""
    from torch import nn

    from gp_proxy.baselines.zerocost import MEASURES, register_measure, zero_cost

    @register_measure("test-width", replace=True)
    def width(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(sum(p.numel() for p in model.parameters()))

    @register_measure("test-vs-teacher", needs_teacher=True, replace=True)
    def versus(teacher: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor
               ) -> float:
        return float(sum(p.numel() for p in teacher.parameters())
                     - sum(p.numel() for p in model.parameters()))

    net = nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    big = nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))
    assert "test-width" in MEASURES
    assert zero_cost("test-width", net, x, y) == 63
    with pytest.raises(GpProxyError, match="compares with a teacher"):
        zero_cost("test-vs-teacher", net, x, y)
    assert zero_cost("test-vs-teacher", net, x, y, teacher=big) > 0
    with pytest.raises(GpProxyError, match="features="):
        zero_cost("zen", net, x, y)
    assert np.isfinite(zero_cost("zen", net, x, y, features={"k2": "2"}))
    got = zero_cost("diswot", net, x, y, teacher=big, features={"k2": "2"},
                    teacher_features={"k2": "2"})
    assert np.isfinite(got) and got <= 0


def test_a_user_loss_declares_its_hyperparameters() -> None:
    """A registered loss gets the config fields it declares (no branching on its name)."""
    from typing import ClassVar

    from torch import nn

    from gp_proxy.distill.losses import LOSSES, build_loss, loss_arguments, register_loss
    from gp_proxy.distill.runner import DistillConfig

    @register_loss("test-logit-l2", replace=True)
    class LogitL2(nn.Module):
        hyperparameters: ClassVar[dict[str, str]] = {"scale": "temperature"}

        def __init__(self, shapes: object, scale: float = 1.0) -> None:
            super().__init__()
            self.scale = scale

        def forward(self, s: dict, t: dict, y: torch.Tensor) -> torch.Tensor:  # type: ignore[type-arg]
            return ((s["k3"] - t["k3"]) ** 2).mean() / self.scale

    assert "test-logit-l2" in LOSSES
    cfg = DistillConfig(temperature=8.0, losses={"test-logit-l2": 1.0})
    assert loss_arguments("test-logit-l2", cfg) == {"scale": 8.0}
    loss = build_loss("test-logit-l2", {}, **loss_arguments("test-logit-l2", cfg))
    s, t = {"k3": torch.ones(2, 3)}, {"k3": torch.zeros(2, 3)}
    assert float(loss(s, t, torch.zeros(2))) == pytest.approx(1 / 8)


def test_tutorial_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """The tutorial (docs/tutorial.md), executed as written in a temporary folder."""
    from gp_proxy.spaces import SPACES

    root = Path(__file__).resolve().parents[2]
    text = (root / "docs" / "tutorial.md").read_text()
    code = text.split("<!-- tutorial -->")[1].split("<!-- /tutorial -->")[0]
    code = code.split("```python")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    try:
        exec(compile(code, "docs/tutorial.md", "exec"), {})  # our own docs, not user input
    finally:
        SPACES._entries.pop("my-cnns", None)  # the tutorial registers it once per process
    out = capsys.readouterr().out
    assert "score of 8x2:" in out
    assert (tmp_path / "my-run" / "best_proxy.json").exists()


def test_image_folder_and_torch_dataset_plugins(tmp_path: Path) -> None:
    from PIL import Image

    from gp_proxy.bench.data import get_dataset

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(
                    tmp_path / split / c / f"{i}.png")
    ds = get_dataset("image-folder")
    train = ds.load(tmp_path, "train", 8)
    assert train.images.shape == (8, 3, 8, 8) and train.labels.tolist() == [0] * 4 + [1] * 4
    assert ds.describe(tmp_path, 8) == (3, 2)
    assert ds.load(tmp_path, "test", 8).images.shape == (4, 3, 8, 8)
    with pytest.raises(GpProxyError, match="no class folders"):
        ds.load(tmp_path / "nowhere", "train", 8)
    torch_ds = get_dataset("tests.plugin.test_plugins:_tensor_dataset")
    got = torch_ds.load(None, "test", 6)
    assert got.images.shape == (5, 1, 6, 6) and got.labels.tolist() == [0, 1, 2, 0, 1]


def _tensor_dataset(root: object, split: str, size: int) -> torch.utils.data.Dataset:  # type: ignore[type-arg]
    """A map-style torch Dataset, as a user's module:attr dataset may return one."""
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    n = 10 if split == "train" else 5
    return torch.utils.data.TensorDataset(torch.randn(n, 1, 6, 6, generator=g),
                                          torch.arange(n) % 3)
