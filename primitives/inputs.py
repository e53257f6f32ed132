"""Terminals: the named values a formula reads.

``k1``/``k2``/``k3`` are read on both the teacher and the student side of a distance;
``act``/``grad``/``weight`` are student-only statistics for the instinct part; ``log_params``
is the student's size as a score, so that a combination can weigh a size prior explicitly. The kind
listed here is the default; a search space whose features have another layout (a ViT's
token maps are ``seq``) passes its own kinds to the parser.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from .registry import Op, Signature, ops, register
from .values import Kind, Ragged, Value

__all__ = ["DEFAULT_INPUT_KINDS", "gather_inputs"]

DEFAULT_INPUT_KINDS: dict[str, Kind] = {
    "k1": Kind.FMAP,
    "k2": Kind.FMAP,
    "k3": Kind.VEC,
    "act": Kind.ASET,
    "grad": Kind.WSET,
    "weight": Kind.WSET,
    "log_params": Kind.SCORE,
}


def _stack(per_arch: list[Tensor]) -> Tensor:
    return torch.stack(per_arch)


def _layers(kind: Kind) -> Callable[[list[list[Tensor]]], Ragged]:
    return lambda per_arch: Ragged.from_layers(kind, per_arch)


def _log_count(per_arch: list[int]) -> Tensor:
    return torch.log(torch.tensor([float(n) for n in per_arch], dtype=torch.float64))


#: name -> (meaning, LaTeX, side, needs a backward pass, key, gather, per-model expression).
#: side: "both" = read on the teacher and the student (a feature the distances compare),
#: "student" = a student-only statistic. key: the key the value is read from, in a model's
#: features (side "both") or in what ``collect_student_layers`` collects (side "student").
#: gather: the batched value from the key's values over the architectures. The per-model
#: expression is what an exported proxy reads (``student_layers`` is that collection).
_TABLE: dict[str, tuple[str, str, str, bool, str, Callable[..., Value], str]] = {
    "k1": ("penultimate stage feature map", "k_1", "both", False, "k1", _stack, ""),
    "k2": ("last stage feature map (or pooled embedding)", "k_2", "both", False, "k2", _stack,
           ""),
    "k3": ("logits", "k_3", "both", False, "k3", _stack, ""),
    "act": ("per-layer activations of the student on the probe batch", r"\mathbf{A}", "student",
            False, "act", _layers(Kind.ASET), "list(student_layers['act'])"),
    "grad": ("per-layer weight gradients of one cross-entropy backward", r"\nabla\mathbf{W}",
             "student", True, "grad", _layers(Kind.WSET), "list(student_layers['grad'])"),
    "weight": ("per-layer weights", r"\mathbf{W}", "student", False, "weight",
               _layers(Kind.WSET), "list(student_layers['weight'])"),
    "log_params": ("log of the student's parameter count: a size prior a combination can "
                   "weight (campaign option size_prior)", r"\log|\theta|", "student", False,
                   "params", _log_count,
                   "torch.log(torch.tensor(float(student_layers['params']), "
                   "dtype=torch.float64))"),
}

for _name, _kind in DEFAULT_INPUT_KINDS.items():
    _doc, _tex, _side, _grad, _key, _gather, _per_model = _TABLE[_name]
    register(Op(
        name=_name, family="input",
        signatures=(Signature((), _kind, _gather, "-> (input)"),),
        doc=_doc, complexity=0, needs_grad=_grad, latex=_tex, side=_side, key=_key,
        per_model=_per_model,
    ))


def gather_inputs(per_arch: list[Mapping[str, Any]], side: str,
                  device: torch.device | str = "cpu") -> dict[str, Value]:
    """The batched inputs of ``side`` ("both" or "student") from each architecture's
    collection (its features, or what ``collect_student_layers`` gives), in registry order,
    on ``device``.
    Inputs of one ragged kind and one layout share one segment tensor, so that binary ops
    on them (weight × grad) skip comparing layouts."""
    out: dict[str, Value] = {}
    for op in ops("input"):
        if op.side != side:
            continue
        sig = op.signatures[0]
        assert sig.fn is not None
        value = sig.fn([a[op.key] for a in per_arch])
        value = value.on(device) if isinstance(value, Ragged) else value.to(device)
        if isinstance(value, Ragged):
            twin = next((v for v in out.values() if isinstance(v, Ragged)
                         and v.kind is value.kind and v.same_layout(value)), None)
            if twin is not None:
                value = twin.with_values(value.values)
        out[op.name] = value
    return out
