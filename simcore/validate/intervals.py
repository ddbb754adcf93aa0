"""Error bars from the validation residuals (split conformal): for each op family, the band of
ln(predicted / measured) that held `coverage` of a calibration half of its measured rows, and how much of
the other half it covers. A prediction p of that family then carries [p / e^hi, p / e^lo].

    simcore validate data FILES... --intervals configs/validation/intervals.yaml

writes the table `simcore op` reads (`time_s_interval`). Rows read off figures are left out; a family
needs MIN_ROWS measured rows.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from simcore.validate.rows import Row

MIN_ROWS = 20


def _quantile(sorted_xs: list[float], q: float) -> float:
    """The split-conformal quantile: the ceil((n + 1) q)-th smallest (the largest when that exceeds n)."""
    k = min(len(sorted_xs), max(1, math.ceil((len(sorted_xs) + 1) * q)))
    return sorted_xs[k - 1]


def fit_intervals(rows: Iterable[Row], coverage: float = 0.8, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per family: the (lo, hi) band of ln(predicted / measured) from a random half of its rows (each tail
    (1 - coverage) / 2), and the share of the other half inside it."""
    by_family: dict[str, list[float]] = {}
    for r in rows:
        if r.mapped and not r.approx and r.measured > 0 and r.predicted > 0 and math.isfinite(r.predicted):
            by_family.setdefault(r.family, []).append(math.log(r.predicted / r.measured))
    tail = (1.0 - coverage) / 2.0
    out: dict[str, dict[str, Any]] = {}
    for family, res in sorted(by_family.items()):
        if len(res) < MIN_ROWS:
            continue
        shuffled = res[:]  # split per family: rows added to another family never move this one's
        random.Random(f"{seed}:{family}").shuffle(shuffled)
        half = len(shuffled) // 2
        calib, held = sorted(shuffled[:half]), shuffled[half:]
        # the band's edges: the tails' conformal quantiles, each side at its own level
        lo = -_quantile(sorted(-x for x in calib), 1.0 - tail)
        hi = _quantile(calib, 1.0 - tail)
        inside = sum(lo <= x <= hi for x in held) / len(held)
        out[family] = {"lo": round(lo, 5), "hi": round(hi, 5), "rows": len(res),
                       "held_out_coverage": round(inside, 3)}  # fmt: skip
    return out


def write_intervals(
    table: dict[str, dict[str, Any]], path: str | Path, coverage: float, files: list[str]
) -> None:
    header = (f"# {coverage:.0%} error bars per op family from validation residuals (split conformal: band of\n"
              f"# ln(predicted / measured) fitted on half of each family's measured rows, held_out_coverage on\n"
              f"# the other half). Written by `simcore validate data ... --intervals` from:\n"
              + "".join(f"#   {Path(f).name}\n" for f in files))  # fmt: skip
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump({"coverage": coverage, "families": table}, sort_keys=True)
    Path(path).write_text(header + body)
