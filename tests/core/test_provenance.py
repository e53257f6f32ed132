"""Provenance: enough to tell whether two runs came from the same machine type."""

from __future__ import annotations

import re

import torch

from gp_proxy.core.provenance import cpu_id, environment


def test_environment_names_the_cpu_generation_and_torch_kernels() -> None:
    env = environment()
    # "AMD EPYC" alone named both an AVX-512 and an AVX2 machine whose runs differed
    assert env["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(env["torch_cpu_capability"], str) and env["torch_cpu_capability"]
    assert env["cpu_id"] == cpu_id()
    assert env["cpu_id"] == "unknown" or re.fullmatch(r"\d+/\d+/\d+", env["cpu_id"])
