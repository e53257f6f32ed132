"""The ``gp-proxy`` command line. Every user error ends in one line, never a traceback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

import primitives
from primitives.errors import GpProxyError

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Discover training-free proxies for distillation-aware NAS.")
_out = Console(soft_wrap=True)
_err = Console(stderr=True, soft_wrap=True)


@app.command("primitives")
def list_primitives(
    family: Annotated[str | None, typer.Option(help="only this family (transform, distance, "
                                                    "instinct, ...)")] = None,
) -> None:
    """List every primitive op with its typed signatures and properties."""
    families = {op.family for op in primitives.ops()}
    if family is not None and family not in families:
        raise GpProxyError(f"unknown family {family!r}; choose from {', '.join(sorted(families))}")
    table = Table(title="gp-proxy primitives", show_lines=False)
    for col in primitives.listing.HEADER:
        table.add_column(col)
    for row in primitives.listing.rows():
        if family is None or row[1] == family:
            table.add_row(*row)
    _out.print(table)


@app.command("formula")
def show_formula(
    text: Annotated[str, typer.Argument(help="a formula, e.g. 'kl_t4(softmax_c(k3))'")],
) -> None:
    """Parse and type-check a formula; print its canonical form, kind, complexity and LaTeX."""
    node = primitives.parse(text)
    canon = primitives.canonicalize(node)
    _out.print(f"formula     {node}")
    _out.print(f"canonical   {canon}")
    _out.print(f"kind        {primitives.infer_kind(node)}")
    _out.print(f"complexity  {primitives.complexity(canon)}  (size {canon.size}, "
               f"height {canon.height})")
    _out.print(f"latex       {primitives.to_latex(canon)}", markup=False, highlight=False)
    _out.print(f"sympy       {primitives.to_sympy(canon)}", markup=False, highlight=False)
    props = sorted({p for n in canon.walk() for p in primitives.get(n.name).properties()})
    _out.print(f"properties  {', '.join(props) or '-'}")


bench_app = typer.Typer(no_args_is_help=True, help="Build and summarise ground-truth benchmarks.")
app.add_typer(bench_app, name="bench")


@bench_app.command("build")
def bench_build(
    out: Annotated[Path, typer.Argument(help="benchmark folder (created, or resumed)")],
    data: Annotated[Path | None, typer.Option(help="folder with the Fashion-MNIST IDX files")
                    ] = None,
    workers: Annotated[int, typer.Option(help="trainings in parallel (one process each)")] = 2,
    archs: Annotated[str, typer.Option(help="comma-separated specs (default: whole space)")] = "",
    epochs: Annotated[int, typer.Option(help="student epochs")] = 10,
    teacher_epochs: Annotated[int, typer.Option(help="teacher epochs")] = 15,
    max_runs: Annotated[int | None, typer.Option(help="stop after this many new trainings")
                        ] = None,
) -> None:
    """Train the teacher and every student (KD and CE, 3 seeds); resumes where it stopped."""
    from .bench import BenchConfig, build_benchmark, command_line, summarize
    from .data import load_fashion_mnist

    cfg = BenchConfig(epochs=epochs, teacher_epochs=teacher_epochs,
                      archs=tuple(a for a in archs.split(",") if a))
    train = load_fashion_mnist(data, "train")
    test = load_fashion_mnist(data, "test")
    counts = build_benchmark(out, cfg, train, test, workers=workers, max_runs=max_runs)
    _out.print(f"runs: {counts['done_before']} already done, {counts['new']} new, "
               f"{counts['remaining']} remaining")
    if counts["remaining"] == 0:
        noise = summarize(out, command_line())
        _out.print_json(data=noise)


@bench_app.command("summarize")
def bench_summarize(
    out: Annotated[Path, typer.Argument(help="benchmark folder")],
) -> None:
    """Write ground_truth.csv, noise.json and manifest.json from the finished runs."""
    from .bench import command_line, summarize

    _out.print_json(data=summarize(out, command_line()))


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning project errors into one line and exit code 2."""
    try:
        app(args=argv, prog_name="gp-proxy")  # usage errors exit through SystemExit
    except GpProxyError as exc:
        _err.print(f"gp-proxy: error: {exc}", markup=False, highlight=False)
        return 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
