"""Reference interpreter: evaluate a formula tree on one environment of inputs.

This is the plain, obviously-correct evaluator (no memoisation, no chunking) that the fast
batched evaluator is tested against. Randomness: every stochastic node draws from its own
``torch.Generator`` seeded from ``(seed, the node's printed subtree)``, so the teacher and the
student side of a distance see the same draws, so does every architecture in a batch, and
two identical subtrees are the same value (which lets the fast evaluator memoise them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

from .errors import KindError
from .formula import Node
from .registry import apply, get
from .values import Value

__all__ = ["evaluate", "node_generator", "node_seed"]


def node_seed(seed: int, subtree: str) -> int:
    """The seed of the stochastic node printing as ``subtree`` (a 63-bit hash of both)."""
    digest = hashlib.blake2b(f"{seed}:{subtree}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def node_generator(seed: int, subtree: str, device: torch.device | str = "cpu"
                   ) -> torch.Generator:
    """The generator of the stochastic node printing as ``subtree``, for seed ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(node_seed(seed, subtree))
    return g


def evaluate(node: Node, student: Mapping[str, Value], teacher: Mapping[str, Value] | None = None,
             seed: int = 0, _side: Mapping[str, Value] | None = None) -> Value:
    """Evaluate ``node``.

    ``student``/``teacher`` map input names (``k1``, ``act``...) to values with a leading
    architecture axis (the teacher's is 1). Inside a distance, inputs are read from the side
    being evaluated; elsewhere from the student.
    """
    env = student if _side is None else _side
    op = get(node.name)
    if op.family == "input":
        try:
            return env[node.name]
        except KeyError:
            raise KindError(f"input {node.name!r} is not available") from None
    if op.pairwise:
        if teacher is None:
            raise KindError(f"{node.name} compares teacher and student: pass teacher inputs")
        s = evaluate(node.args[0], student, teacher, seed, student)
        t = evaluate(node.args[0], student, teacher, seed, teacher)
        return apply(node.name, s, t)
    args = [evaluate(a, student, teacher, seed, _side) for a in node.args]
    if op.stochastic:
        device = args[0].device if isinstance(args[0], torch.Tensor) else args[0].values.device
        return apply(node.name, *args, generator=node_generator(seed, node.text, device))
    return apply(node.name, *args)
