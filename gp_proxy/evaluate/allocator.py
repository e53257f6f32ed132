"""Keep freed large CPU buffers in the heap instead of returning them to the OS.

glibc serves allocations above its mmap threshold (at most 32 MiB by default) with fresh
``mmap`` pages and gives them back on ``free``; the next tensor of that size then page-faults
on every page it touches. Formulas over per-layer activations make many such temporaries:
measured on the development machine, ``x.abs()`` of a 56 MB tensor ran at 4.4 GB/s with the
default and at 11.7 GB/s with the thresholds raised (about 2x on whole act-heavy formulas, and
most of the system time of an evaluation). The price: the process keeps its peak heap instead of
shrinking after a batch. Applied once per process by the CPU evaluator; set
``GP_PROXY_MALLOC_TUNING=0`` to leave the allocator alone. A no-op where libc is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["tune_allocator"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done: bool | None = None


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds once; True when they are raised."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("GP_PROXY_MALLOC_TUNING", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = (bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30))
          and bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)))
    _done = ok
    return ok
