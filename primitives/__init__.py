"""The gp-proxy primitive library: typed, batched, pure tensor ops with one registry.

>>> import primitives
>>> print(primitives.table())          # every op with its typed signatures
>>> f = primitives.check("kl_t4(softmax_c(k3))")
>>> primitives.to_latex(f)
"""

from . import _load  # noqa: F401  (registers every op)
from .errors import FormulaError, GpProxyError, KindError, ShapeError
from .formula import Node, canonicalize, check, complexity, infer_kind, parse
from .inputs import DEFAULT_INPUT_KINDS, gather_inputs
from .interpret import evaluate, node_generator
from .listing import table
from .registry import REGISTRY, Op, Signature, apply, get, ops, paired_inputs
from .render import to_latex, to_sympy
from .values import Kind, Ragged, Value, kind_of

__all__ = [
    "DEFAULT_INPUT_KINDS", "REGISTRY", "FormulaError", "GpProxyError", "Kind", "KindError",
    "Node", "Op", "Ragged", "ShapeError", "Signature", "Value", "apply", "canonicalize", "check",
    "complexity", "evaluate", "gather_inputs", "get", "infer_kind", "kind_of", "node_generator",
    "ops", "paired_inputs", "parse", "table", "to_latex", "to_sympy",
]
