"""Keep freed large CPU buffers in the heap instead of returning them to the OS.

glibc serves allocations above its mmap threshold (at most 32 MiB by default) with fresh
``mmap`` pages and gives them back on ``free``; the next tensor of that size then page-faults
on every page it touches. Formulas over per-layer activations make many such temporaries:
measured on the development machine, ``x.abs()`` of a 56 MB tensor ran at 4.4 GB/s with the
default and at 11.7 GB/s with the thresholds raised (about 2x on whole act-heavy formulas, and
most of the system time of an evaluation). The price: the process keeps its peak heap, and
over many batches the heap ratchets up as it fragments (a joint two-benchmark campaign grew to
24 GB and was killed in its 20th generation). So :func:`release_memory` hands the free heap
back with ``malloc_trim`` whenever the evaluator clears its memo, after a batch or a
generation: measured on benchmark 3, random formula batches then return to 1.5 GB after each
batch, where without it the process kept its largest peak so far (4.2 GB after 12 batches).
Applied once per process by the CPU evaluator; set ``GP_PROXY_MALLOC_TUNING=0`` to leave the
allocator alone. A no-op where libc is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["release_memory", "tune_allocator"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done: bool | None = None
_libc: ctypes.CDLL | None = None


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
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = (bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30))
          and bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)))
    global _libc
    _libc = libc if ok else None
    _done = ok
    return ok


def release_memory() -> bool:
    """Return the free heap to the OS (``malloc_trim(0)``) where :func:`tune_allocator` raised
    the thresholds; True when memory was released. Costs a walk of the heap, so it is called
    between batches, never inside one."""
    return bool(_libc.malloc_trim(0)) if _libc is not None else False
