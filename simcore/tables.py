"""Aligned text tables for the terminal: a header, a rule, and rows; numbers right-aligned on request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def text_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool] | None = None
) -> str:
    """Columns as wide as their widest cell; `right[i]` right-aligns column i (default: left)."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    right = right or [False] * len(headers)

    def line(vals: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if a else v.ljust(w) for v, w, a in zip(vals, widths, right, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])
