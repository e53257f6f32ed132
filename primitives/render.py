"""Render formulas as LaTeX and sympy expressions, from the ops' recorded templates."""

from __future__ import annotations

from typing import Any

import sympy as sp

from .formula import Node
from .registry import get

__all__ = ["to_latex", "to_sympy"]


def to_latex(node: Node, side: str | None = None) -> str:
    """LaTeX of a formula; inside a distance, inputs carry a ^{S} / ^{T} side marker."""
    op = get(node.name)
    if op.family == "input":
        tex = op.latex_template()
        return f"{tex}^{{{side}}}" if side else tex
    if op.pairwise:
        return op.latex_template().format(to_latex(node.args[0], "S"), to_latex(node.args[0], "T"))
    return op.latex_template().format(*(to_latex(a, side) for a in node.args))


def to_sympy(node: Node, side: str | None = None) -> Any:
    """A sympy expression: element-wise ops map to sympy functions, others stay opaque."""
    op = get(node.name)
    if op.family == "input":
        return sp.Symbol(f"{node.name}_{side}" if side else node.name)
    if op.pairwise:
        return sp.Function(node.name)(to_sympy(node.args[0], "S"), to_sympy(node.args[0], "T"))
    args = [to_sympy(a, side) for a in node.args]
    if op.sympy is not None:
        return op.sympy(*args)
    return sp.Function(node.name)(*args)
