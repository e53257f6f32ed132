"""Terminals: the named values a formula reads.

``k1``/``k2``/``k3`` are read on both the teacher and the student side of a distance;
``act``/``grad``/``weight`` are student-only statistics for the instinct part; ``log_params``
is the student's size as a score, so that a combination can weigh a size prior explicitly. The kind
listed here is the default; a search space whose features have another layout (a ViT's
token maps are ``seq``) passes its own kinds to the parser.
"""

from __future__ import annotations

from .registry import Op, Signature, register
from .values import Kind

__all__ = ["DEFAULT_INPUT_KINDS"]

DEFAULT_INPUT_KINDS: dict[str, Kind] = {
    "k1": Kind.FMAP,
    "k2": Kind.FMAP,
    "k3": Kind.VEC,
    "act": Kind.ASET,
    "grad": Kind.WSET,
    "weight": Kind.WSET,
    "log_params": Kind.SCORE,
}

#: name -> (meaning, LaTeX, side: "both" = read on the teacher and the student, "student" =
#: a student-only statistic, whether it needs a backward pass)
_TABLE = {
    "k1": ("penultimate stage feature map", "k_1", "both", False),
    "k2": ("last stage feature map (or pooled embedding)", "k_2", "both", False),
    "k3": ("logits", "k_3", "both", False),
    "act": ("per-layer activations of the student on the probe batch", r"\mathbf{A}", "student",
            False),
    "grad": ("per-layer weight gradients of one cross-entropy backward", r"\nabla\mathbf{W}",
             "student", True),
    "weight": ("per-layer weights", r"\mathbf{W}", "student", False),
    "log_params": ("log of the student's parameter count: a size prior a combination can "
                   "weight (campaign option size_prior)", r"\log|\theta|", "student", False),
}

for _name, _kind in DEFAULT_INPUT_KINDS.items():
    _doc, _tex, _side, _grad = _TABLE[_name]
    register(Op(
        name=_name, family="input",
        signatures=(Signature((), _kind, None, "-> (input)"),),
        doc=_doc, complexity=0, needs_grad=_grad, latex=_tex, side=_side,
    ))
