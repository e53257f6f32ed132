"""One progress helper for every long piece of work (cache builds, campaigns, benchmark
builds, searches, distillation, the pipeline's stages).

On a terminal it draws a rich bar with elapsed time and an estimate of what is left; in a log
(not a terminal) it prints one plain line per finished unit, so a background run is never
silent; ``quiet`` (or the environment variable ``GP_PROXY_QUIET=1``) prints nothing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["Advance", "bar", "progress", "quiet_by_default"]

#: ``advance(n=1, info="")``: n more units done, with an optional short status
Advance = Callable[..., None]


def bar(console: Console, label: str = "{task.description}", info: str = "info") -> Progress:
    """The project's one progress bar: label, bar, done/total, elapsed, left, and a status
    text read from the task's ``info`` field."""
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn(f"{{task.fields[{info}]}}"),
                    console=console)


def quiet_by_default() -> bool:
    return os.environ.get("GP_PROXY_QUIET", "") not in ("", "0")


@contextmanager
def progress(label: str, total: int, quiet: bool = False,
             console: Console | None = None) -> Iterator[Advance]:
    """Report ``total`` units of ``label``; yields ``advance(n=1, info="")``."""
    console = console or Console(stderr=True)
    if quiet or quiet_by_default() or total <= 0:
        yield lambda n=1, info="": None
        return
    if console.is_terminal:
        with bar(console) as shown:
            task = shown.add_task(label, total=total, info="")

            def advance(n: int = 1, info: str = "") -> None:
                shown.update(task, advance=n, info=info)

            yield advance
        return
    done = 0
    start = time.perf_counter()

    def log(n: int = 1, info: str = "") -> None:
        nonlocal done
        done += n
        elapsed = time.perf_counter() - start
        left = elapsed / done * (total - done) if done else 0.0
        print(f"{label}: {done}/{total} ({elapsed:.0f} s, about {left:.0f} s left)"
              + (f" {info}" if info else ""), file=sys.stderr, flush=True)

    yield log
