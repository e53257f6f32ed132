"""Export a discovered proxy: a self-contained PyTorch file, sympy mathematics, or LaTeX.

``gp-proxy export RUN_DIR --to torch`` writes a Python module that depends on torch only:
the per-model functions of the ops the formula uses, copied by their source out of
:mod:`primitives.reference` (the plain-torch twins of the kernels, checked against them op by
op), the calibration of a rank/z-combined formula as constants, and one function::

    proxy(teacher_features, student_features, student_layers) -> float

that scores one student, higher meaning a better predicted student (the run's sign applied).
It gives the evaluator's scores (tested on the embedded benchmark) and can be pasted into any
code base. The sympy export spells the formula as mathematics: element-wise ops as sympy
functions, the combiners as arithmetic on ranks or z-scores, and every tensor op as a named
function with its definition in index notation (:mod:`primitives.definitions`).
"""

from __future__ import annotations

import ast
import inspect
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import primitives
from primitives import Node
from primitives import reference as ref_module
from primitives.errors import GpProxyError
from primitives.interpret import node_seed

from ..config import run_config
from .proxy import Calibration, read_best

__all__ = ["FORMATS", "export", "to_sympy", "to_torch"]

FORMATS = ("torch", "sympy", "latex")


# ---------------------------------------------------------------- source closure ----------
def _module_definitions() -> tuple[str, dict[str, ast.stmt]]:
    source = inspect.getsource(ref_module)
    tree = ast.parse(source)
    defs: dict[str, ast.stmt] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef):
            defs[stmt.name] = stmt
        elif isinstance(stmt, ast.Assign | ast.AnnAssign):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    defs[t.id] = stmt
    return source, defs


def _closure(roots: Iterable[str]) -> list[str]:
    """The source of ``roots`` and of every module-level name they use, in file order."""
    source, defs = _module_definitions()
    wanted: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in wanted or name not in defs:
            continue
        wanted.add(name)
        stmt = defs[name]
        # a function's decorators (the registry's ``_ref``) are not copied, so not followed
        parts = ([*stmt.body, stmt.args] if isinstance(stmt, ast.FunctionDef) else [stmt])
        for part in parts:
            for n in ast.walk(part):
                if isinstance(n, ast.Name) and n.id in defs and n.id != name:
                    todo.append(n.id)
    lines = source.splitlines()
    chosen = sorted({id(defs[n]): defs[n] for n in wanted}.values(), key=lambda s: s.lineno)
    blocks = []
    for stmt in chosen:  # from the ``def`` line: decorators sit above it
        blocks.append("\n".join(lines[stmt.lineno - 1: stmt.end_lineno]))
    return blocks


# ---------------------------------------------------------------- torch ---------------------
class _Emitter:
    """Straight-line code for one formula: every distinct subtree once, as a variable."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.lines: list[str] = []
        self.names: dict[tuple[str, str], str] = {}
        self.used: set[str] = set()

    def _bind(self, key: tuple[str, str], expr: str) -> str:
        if key not in self.names:
            var = f"v{len(self.names)}"
            self.names[key] = var
            where = f" ({key[1]})" if key[1] else ""
            self.lines.append(f"    {var} = {expr}  # {key[0]}{where}")
        return self.names[key]

    def value(self, node: Node, side: str = "") -> str:
        """The variable holding ``node`` on ``side`` ("student"/"teacher" inside a distance,
        "" for the student's own values)."""
        op = primitives.get(node.name)
        if op.family == "input":
            if op.side == "both":
                owner = "teacher" if side == "teacher" else "student"
                return self._bind((node.text, owner), f"{owner}_features[{op.key!r}]")
            return self._bind((node.text, ""), op.per_model)
        fn = f"op_{node.name}"
        if fn not in ref_module.__dict__:
            raise GpProxyError(f"export: op {node.name} has no per-model reference")
        self.used.add(fn)
        if op.pairwise:
            s = self.value(node.args[0], "student")
            t = self.value(node.args[0], "teacher")
            return self._bind((node.text, ""), f"{fn}({s}, {t})")
        args = [self.value(a, side) for a in node.args]
        if op.stochastic:
            self.used.add("generator")
            args.append(f"generator({node_seed(self.seed, node.text)})")
        return self._bind((node.text, side), f"{fn}({', '.join(args)})")


def to_torch(formula: str | Node, sign: int = 1, seed: int = 0,
             calibration: Calibration | None = None, origin: str = "",
             act_samples: int | None = 16) -> str:
    """The source of a self-contained torch module scoring one student with ``formula``."""
    node = primitives.canonicalize(primitives.parse(formula) if isinstance(formula, str)
                                   else formula)
    cross = any(primitives.get(n.name).cross_arch for n in node.walk())
    if cross and calibration is None:
        raise GpProxyError(f"{node} ranks architectures against each other: export it from a "
                           "run directory holding calibration.json (or pass a calibration)")
    if calibration is not None:
        if calibration.formula != node.text:
            raise GpProxyError(f"calibration of {calibration.formula} does not fit {node}")
    em = _Emitter(seed)
    constants: list[str] = []
    combination: list[str] = []
    part_vars: dict[str, str] = {}

    def place(n: Node) -> str:
        """Lines of ``combine`` placing ``n``'s parts against the calibration."""
        op = primitives.get(n.name)
        if not op.cross_arch:
            part_vars.setdefault(n.text, em.value(n))
            return f"parts[{n.text!r}]"
        assert calibration is not None
        norm = {"rank01": "calibrated_rank01", "z": "calibrated_z"}[op.normaliser]
        em.used.add(norm)
        terms: list[str] = []
        for sign_i, a in zip(op.part_signs, n.args, strict=True):
            ref_name = f"REFERENCE_{len(constants)}"
            values = ", ".join(repr(float(v)) for v in calibration.reference[a.text].tolist())
            constants.append(f"#: {a.text} over the {calibration.size} reference students, "
                             f"sorted\n{ref_name} = torch.tensor([{values}], "
                             "dtype=torch.float64)")
            term = f"{norm}({ref_name}, {place(a)})"
            terms.append(term if not terms else f"{sign_i!r} * {term}")
        var = f"c{len(combination)}"
        combination.append(f"    {var} = {' + '.join(terms)}  # {n.name}")
        return var

    if cross:
        last = place(node)
        body = "\n".join(em.lines)
        returned = ", ".join(f"{t!r}: {v}.double().reshape(1)" for t, v in part_vars.items())
        functions = (
            "def parts(teacher_features: dict[str, Tensor], student_features: dict[str, Tensor],"
            "\n          student_layers: dict[str, object]) -> dict[str, Tensor]:\n"
            '    """The raw score of each part the combination places (by formula)."""\n'
            f"{body}\n    return {{{returned}}}\n\n\n"
            "def combine(parts: dict[str, Tensor]) -> float:\n"
            '    """The oriented score from the parts: each placed among the reference '
            'students."""\n' + "\n".join(combination) + f"\n    return SIGN * float({last}[0])"
            "\n\n\n"
            "def proxy(teacher_features: dict[str, Tensor], student_features: dict[str, Tensor],"
            "\n          student_layers: dict[str, object]) -> float:\n"
            f'    """The oriented score of one student: {node.text}"""\n'
            "    return combine(parts(teacher_features, student_features, student_layers))\n")
    else:
        result = em.value(node)
        body = "\n".join(em.lines)
        functions = (
            "def proxy(teacher_features: dict[str, Tensor], student_features: dict[str, Tensor],"
            "\n          student_layers: dict[str, object]) -> float:\n"
            f'    """The oriented score of one student: {node.text}"""\n'
            f"{body}\n    return SIGN * float({result})\n")
    inputs = sorted({n.name for n in node.walk() if not n.args})
    layer_keys = [op.key for op in primitives.ops("input")
                  if op.side == "student" and op.name in inputs]
    if layer_keys:  # the helper that collects them from a model
        em.used.add("collect_student_layers")
    blocks = _closure(sorted(em.used))
    source = f" ({origin})" if origin else ""
    acts = f"the first {act_samples} probe images" if act_samples else "the probe images"
    header = f'''"""A training-free proxy discovered by gp-proxy{source}.

formula: {node.text}
sign:    {sign:+d} (applied: higher means a better predicted student)
seed:    {seed} (fixes the random draws of stochastic ops)

Depends on torch only. proxy(teacher_features, student_features, student_layers) scores one
student. The features are dicts of the probe batch's tensors: "k1" and "k2" the outputs of the
last two stages (n, c, h, w), "k3" the logits (n, classes); the student's come from a randomly
initialised model in train mode, the teacher's from the trained teacher in eval mode.
student_layers holds, for every Conv2d and Linear in module order, "weight" (the weights),
"grad" (their gradients after one cross-entropy backward on the probe batch) and "act" (their
outputs on {acts}), and "params" (the model's number of parameters):
collect_student_layers(model, images, labels, act_samples={act_samples}) collects them.
This formula reads: {", ".join(inputs)}{"; student_layers keys: " + ", ".join(layer_keys)
                                        if layer_keys else ""}.
"""
'''
    definitions = [b for b in blocks if b.startswith("def ")]
    values = [b for b in blocks if not b.startswith("def ")]
    imports = ("from __future__ import annotations\n\nfrom collections.abc import Callable\n\n"
               "import torch\nimport torch.nn.functional as F\nfrom torch import Tensor")
    head = "\n\n".join([header.rstrip("\n"), imports, f"SIGN = {sign:+d}", *constants,
                         "\n".join(values)])
    # PEP 8: two blank lines around every function
    return "\n\n\n".join([head, *definitions, functions.rstrip("\n")]) + "\n"


# ---------------------------------------------------------------- sympy / latex -------------
def to_sympy(formula: str | Node, sign: int = 1) -> tuple[Any, list[Any]]:
    """(expression, definitions): the oriented formula as sympy mathematics, and one ``Eq``
    per tensor op it uses defining that op in index notation."""
    from primitives.definitions import definitions, to_expression

    node = primitives.canonicalize(primitives.parse(formula) if isinstance(formula, str)
                                   else formula)
    return sign * to_expression(node), definitions(node)


def _latex(formula: str, sign: int) -> str:
    import sympy as sp

    expr, defs = to_sympy(formula, sign)
    lines = [f"s = {sp.latex(expr)}", "", "where"]
    lines += [sp.latex(d) for d in defs]
    return "\n".join(lines) + "\n"


def export(run: str | os.PathLike[str], to: str) -> str:
    """The export of a run directory (or ``best_proxy.json``) in format ``to``."""
    if to not in FORMATS:
        raise GpProxyError(f"--to {to}: choose one of {', '.join(FORMATS)}")
    formula, sign, seed = read_best(run)
    if to == "torch":
        p = Path(run)
        stored = (p if p.is_dir() else p.parent) / "calibration.json"
        cal = Calibration.load(stored) if stored.is_file() else None
        config = run_config(run)
        return to_torch(formula, sign, seed, cal, origin=str(run),
                        act_samples=config.act_samples if config is not None else 16)
    if to == "sympy":
        expr, defs = to_sympy(formula, sign)
        return "\n".join([f"s = {expr}", "", "where", *(str(d) for d in defs)]) + "\n"
    return _latex(formula, sign)
