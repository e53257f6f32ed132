"""The proxies the public Auto-DAS code reports as best, transcribed into our formula syntax.

Source: the evaluation scripts of the public Auto-DAS repository (``exps/rank/<space>/
eval_rank_jointly.py``), which hard-code the searched genotypes, one per space. Each genotype
is an *interaction* (input → three transforms on teacher and student → a weight → a distance)
and an *instinct* (per-layer weight gradients → four unary ops → the mean of each layer,
summed over layers), added raw.

What our transcription changes, always in the direction of fixed numerics:

- ``logsoftmax``/``softmax`` in the published instinct run over dim 0 of each gradient tensor
  (its output channels); ours normalise over all elements of the layer.
- The published weight ``w100_teacher_student`` multiplies the distance by 100 (a constant:
  rank-invariant, dropped) and by the mean cosine similarity of the flattened teacher and
  student features (not an op of ours, and undefined when their shapes differ: dropped).
- The published sum of the two raw parts lets the larger one swamp the other; ours combines
  them by ranks (``rank_add``), the sign chosen on training architectures as for every proxy.
- Unary ops that reduce an already reduced scalar (``normalized_sum`` of a norm) and
  ``no_op`` are identities and are left out.

Parts that cannot be written faithfully are not given under Auto-DAS's name: the NAS-Bench-201
interaction uses a ``multiply`` distance (mean of the element-wise product, not a distance)
and the ViT interaction applies ``mask`` to logits, which our typed ``mask`` (feature maps
only) does not accept. Their instinct parts are given.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["REPORTED", "ReportedFormula"]


@dataclass(frozen=True)
class ReportedFormula:
    name: str
    space: str
    published: str
    formula: str
    note: str


_RESNET_INTERACTION = "kl_t8(abs(sigmoid(relu(k2))))"
_RESNET_INSTINCT = "sum_layers(fro_norm(logsoftmax(grad)))"

REPORTED: dict[str, ReportedFormula] = {r.name: r for r in (
    ReportedFormula(
        "autodas-resnet", "cifar-resnet-depth",
        "interaction k2 → relu, sigmoid, abs → w100_teacher_student → kl_T8; "
        "instinct grad → logsoftmax, no_op, frobenius_norm, normalized_sum",
        f"rank_add({_RESNET_INTERACTION},{_RESNET_INSTINCT})",
        "joint proxy; the interaction needs teacher and student k2 of the same shape"),
    ReportedFormula(
        "autodas-resnet-interaction", "cifar-resnet-depth",
        "k2 → relu, sigmoid, abs → w100_teacher_student → kl_T8",
        _RESNET_INTERACTION, "interaction part alone"),
    ReportedFormula(
        "autodas-resnet-instinct", "cifar-resnet-depth",
        "grad → logsoftmax, no_op, frobenius_norm, normalized_sum",
        _RESNET_INSTINCT,
        "instinct part alone: Σ over layers of ‖logsoftmax(grad)‖_F, close to a function of "
        "layer sizes only, since log-softmax of small gradients ≈ −log(layer size)"),
    ReportedFormula(
        "autodas-nb201-instinct", "nb201",
        "grad → logsoftmax, no_op, tanh, l1_norm",
        "sum_layers(mean(abs(tanh(logsoftmax(grad)))))",
        "instinct part only (the interaction's 'multiply' distance has no counterpart)"),
    ReportedFormula(
        "autodas-vit-instinct", "autoformer / pit",
        "grad → sigmoid, logsoftmax, abslog, no_op",
        "sum_layers(mean(abslog(logsoftmax(sigmoid(grad)))))",
        "instinct part only (the interaction masks logits, which our typed mask rejects)"),
)}
