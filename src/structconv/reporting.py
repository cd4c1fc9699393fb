"""Plain-text tables and the one relative-error formula that every report uses."""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["format_table", "relative_error"]


def format_table(rows: Sequence[Sequence[object]], *, align: str | None = None, rule: bool = True) -> str:
    """Columns padded to their widest cell; the first row is the header, underlined when ``rule``.

    ``align`` has one character per column, ``'l'`` or ``'r'`` (default: all left).
    """
    cells = [[str(c) for c in row] for row in rows]
    if not cells:
        return ""
    ncol = len(cells[0])
    align = align or "l" * ncol
    if len(align) != ncol or any(len(r) != ncol for r in cells):
        raise ValueError(f"format_table: rows and align={align!r} must all have {ncol} columns")
    widths = [max(len(r[i]) for r in cells) for i in range(ncol)]

    def line(row):
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align)).rstrip()

    lines = [line(r) for r in cells]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64 (0 when both are 0)."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    den = torch.linalg.vector_norm(e)
    num = torch.linalg.vector_norm(a - e)
    return float(num / den) if den > 0 else float(num)
