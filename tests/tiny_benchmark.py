"""A tiny frozen benchmark folder (24 fmnist-cnn archs, synthetic ground truth) for tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from gp_proxy.core.files import save_tensors
from gp_proxy.spaces import count_flops, count_params, get_space


def make_tiny_benchmark(folder: Path, n_archs: int = 24) -> Path:
    space = get_space("fmnist-cnn")
    archs = list(space.enumerate())[:: max(1, 162 // n_archs)][:n_archs]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"space": "fmnist-cnn",
                                                    "teacher": "resnet-t"}))
    g = torch.Generator().manual_seed(0)
    save_tensors(folder / "probe.safetensors",
                 {"images": torch.randn(8, 1, 14, 14, generator=g),
                  "labels": torch.randint(0, 10, (8,), generator=g)})
    save_tensors(folder / "teacher.safetensors", space.build_teacher(seed=1).state_dict())
    with (folder / "ground_truth.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["arch", "params", "flops", "kd_mean"])
        for i, a in enumerate(archs):
            m = space.build(a)
            p = count_params(m)
            # accuracy that grows with size plus a deterministic wiggle: params is a strong
            # but imperfect baseline, as in real KD tables
            acc = 80 + 2 * torch.log10(torch.tensor(float(p))).item() + ((i * 7) % 5) * 0.3
            w.writerow([a, p, count_flops(m, space.input_shape), f"{acc:.3f}"])
    return folder
