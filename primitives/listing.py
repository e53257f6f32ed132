"""A plain-text table of the registry (the CLI shows the same rows with rich)."""

from __future__ import annotations

from .registry import Op, ops

__all__ = ["rows", "table"]

HEADER = ("name", "family", "signatures", "properties", "cx")


def rows() -> list[tuple[str, str, str, str, str]]:
    def line(op: Op) -> tuple[str, str, str, str, str]:
        sigs = "; ".join(str(s) for s in op.signatures)
        return (op.name, op.family, sigs, ",".join(op.properties()) or "-", str(op.complexity))

    return [line(op) for op in ops()]


def table() -> str:
    """Every registered op with its family, typed signatures, properties and complexity."""
    body = rows()
    widths = [max(len(r[i]) for r in [HEADER, *body]) for i in range(len(HEADER))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*HEADER), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r).rstrip() for r in body]
    return "\n".join(lines)
