"""What a record needs to say where it came from: versions, git revision, hardware."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["cpu_id", "cpu_name", "environment", "git_revision", "hardware"]


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_id() -> str:
    """``family/model/stepping`` of the CPU (x86 /proc/cpuinfo; "unknown" elsewhere): two
    machines that both call themselves "AMD EPYC" can be different generations."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("cpu family", "model", "stepping") and key not in fields:
                fields[key] = value.strip()
    except OSError:
        pass
    if len(fields) < 3:
        return "unknown"
    return f"{fields['cpu family']}/{fields['model']}/{fields['stepping']}"


def environment() -> dict[str, Any]:
    """Versions and hardware of a run. Results are bit-reproducible only on the same machine
    type: torch picks its CPU kernels by ``torch_cpu_capability`` (AVX2, AVX512, ...), and
    one campaign's formula ranked the same 162 students differently on an AVX-512 and an AVX2
    EPYC (held-out τ 0.797 vs 0.802: values equal up to float rounding ordered differently),
    so both it and the CPU's family/model are recorded."""
    import numpy as np
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, **hardware(), "git_revision": git_revision()}


def hardware() -> dict[str, Any]:
    """The machine: architecture, CPU name and generation, torch's kernel choice, cores."""
    import torch

    return {"machine": platform.machine(), "processor": cpu_name(), "cpu_id": cpu_id(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count()}
