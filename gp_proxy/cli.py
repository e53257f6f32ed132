"""The ``gp-proxy`` command line. Every user error ends in one line, never a traceback."""

from __future__ import annotations

import sys
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
