"""Tiny frozen benchmark folders with synthetic ground truth for tests: 24 fmnist-cnn archs
under the ResNet teacher (students narrower than the teacher), or ResNet depth codes on
1×14×14 inputs under a ResNet-20 teacher (students as wide as the teacher)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from gp_proxy.bench.build import BenchConfig
from gp_proxy.core.files import save_tensors
from gp_proxy.spaces import count_flops, count_params, get_space


def make_tiny_benchmark(folder: Path, n_archs: int = 24) -> Path:
    space = get_space("fmnist-cnn")
    archs = list(space.enumerate())[:: max(1, 162 // n_archs)][:n_archs]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"space": "fmnist-cnn",
                                                    "teacher": "resnet-t"}))
    _write(folder, space, space.build_teacher(seed=1).state_dict(), archs)
    return folder


def make_tiny_resnet_benchmark(folder: Path, n_archs: int = 16) -> Path:
    """ResNet depth codes adapted to 1×14×14 Fashion-MNIST, as benchmark 3 is, with a
    ResNet-20 teacher: teacher and student features have the same shapes."""
    cfg = BenchConfig(space="cifar-resnet-depth", teacher="resnet20", seeds=(0,))
    space = cfg.student_space()
    archs = list(space.enumerate())[:: max(1, 64 // n_archs)][:n_archs]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg.to_json()))
    _write(folder, space, cfg.build_teacher(seed=1).state_dict(), archs)
    return folder


def _write(folder: Path, space, teacher: dict[str, torch.Tensor], archs: list[str]) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(0)
    c, h, w = space.input_shape
    save_tensors(folder / "probe.safetensors",
                 {"images": torch.randn(8, c, h, w, generator=g),
                  "labels": torch.randint(0, 10, (8,), generator=g)})
    save_tensors(folder / "teacher.safetensors", teacher)
    with (folder / "ground_truth.csv").open("w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["arch", "params", "flops", "kd_mean"])
        for i, a in enumerate(archs):
            m = space.build(a)
            p = count_params(m)
            # accuracy that grows with size plus a deterministic wiggle: params is a strong
            # but imperfect baseline, as in real KD tables
            acc = 80 + 2 * torch.log10(torch.tensor(float(p))).item() + ((i * 7) % 5) * 0.3
            wr.writerow([a, p, count_flops(m, space.input_shape), f"{acc:.3f}"])
