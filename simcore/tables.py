"""Aligned text tables for the terminal: a header, a rule, and rows; numeric columns right-aligned."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_NUMBER = re.compile(r"^[-+]?[\d.,]+(e[-+]?\d+)?(\s?\S+)?$")


def text_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool] | None = None
) -> str:
    """Columns as wide as their widest cell; `right[i]` right-aligns column i (default: the columns whose
    cells all read as numbers, with or without a unit)."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    if right is None:
        right = [bool(cells) and all(_NUMBER.match(r[i]) for r in cells) for i in range(len(headers))]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if a else v.ljust(w) for v, w, a in zip(vals, widths, right, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])
