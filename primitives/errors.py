"""Project exceptions: one line, naming the token, field or shape at fault."""

from __future__ import annotations

__all__ = ["FormulaError", "GpProxyError", "KindError", "ShapeError"]


class GpProxyError(Exception):
    """Base class of every error gp-proxy raises on purpose (user errors, bad input)."""


class FormulaError(GpProxyError):
    """A formula string that cannot be parsed or type-checked.

    ``position`` is the 0-based character offset of the offending token in the text.
    """

    def __init__(self, message: str, text: str = "", position: int | None = None) -> None:
        self.text = text
        self.position = position
        where = f" at position {position}" if position is not None else ""
        shown = f" in {text!r}" if text else ""
        super().__init__(f"{message}{where}{shown}")


class KindError(GpProxyError):
    """An op was applied to a kind of value it has no signature for."""


class ShapeError(GpProxyError):
    """Shapes that an op cannot combine (teacher vs student, too-small maps, ragged layouts)."""
