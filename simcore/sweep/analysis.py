"""Reading a sweep: the Pareto front over chosen objectives, one-factor-at-a-time sensitivity, and the
compact table the CLI prints. Everything here takes a sweep's DataFrame (or its spec) and runs nothing:
`simcore.sweep.core.sensitivity` runs the points `sensitivity_points` plans."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from simcore.sweep.spec import Axis, SweepSpec
from simcore.tables import text_table
from simcore.units import column_kind, fmt, to_number


def pareto_mask(costs: Any) -> Any:
    """Boolean mask of the non-dominated rows of an (n, d) array, every column to be minimized.

    A row is dominated when another is no worse in every column and better in at least one; rows with
    identical costs are all kept. Each pass drops everything the current candidate dominates, so the
    work is about n x (front size) rather than n^2.
    """
    import numpy as np

    c = np.asarray(costs, dtype=float)
    n = len(c)
    idx = np.arange(n)
    i = 0
    while i < len(c):
        keep = np.any(c < c[i], axis=1) | np.all(c == c[i], axis=1)
        idx, c = idx[keep], c[keep]
        i = int(np.sum(keep[:i])) + 1
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    return mask


def pareto_front(df: Any, objectives: Mapping[str, str] | None = None) -> Any:
    """A boolean Series: which rows are on the Pareto front of `objectives` ({column: "min"|"max"},
    default `df.attrs["objectives"]`). Only rows with status ok and finite objective values compete."""
    import numpy as np
    import pandas as pd

    objectives = dict(objectives if objectives is not None else df.attrs.get("objectives", {}))
    out = pd.Series(False, index=df.index, name="pareto")
    if not objectives or df.empty:
        return out
    missing = [k for k in objectives if k not in df.columns]
    if missing:
        raise KeyError(f"no column {missing[0]!r} for objective (columns: {', '.join(map(str, df.columns))})")
    vals = df[list(objectives)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    sign = np.array([1.0 if g == "min" else -1.0 for g in objectives.values()])
    ok = np.isfinite(vals).all(axis=1)
    if "status" in df.columns:
        ok &= (df["status"] == "ok").to_numpy()
    rows = np.flatnonzero(ok)
    if len(rows):
        out.iloc[rows[pareto_mask(vals[rows] * sign)]] = True
    return out


# ------------------------------------------------------------------------------------ sensitivity
def _center(a: Axis) -> Any:
    if not a.continuous:
        return a.values[len(a.values) // 2]
    return a.at(0.5)


def sensitivity_points(spec: SweepSpec, center: Mapping[str, Any] | None = None, steps: int = 5
                       ) -> tuple[list[dict[str, Any]], list[tuple[str, Any]]]:  # fmt: skip
    """The points of a one-factor-at-a-time study around a center point, and each point's label: the center
    (default: each axis's middle value) labelled ("center", None), then each axis walking its values (a
    range in `steps` steps) while the others stay at the center, labelled (axis, value as a number)."""
    mid = {a.name: _center(a) for a in spec.axes}
    if center:
        unknown = [k for k in center if k not in mid]
        if unknown:
            raise KeyError(f"{unknown[0]!r} is not an axis of sweep {spec.name!r} (axes: {', '.join(mid)})")
        mid.update(center)
    points: list[dict[str, Any]] = [dict(mid)]
    labels: list[tuple[str, Any]] = [("center", None)]
    for a in spec.axes:
        axis = dataclasses.replace(a, steps=a.steps or steps) if a.continuous else a
        for v in axis.levels():
            points.append({**mid, a.name: v})
            labels.append((a.name, to_number(v)))
    return points, labels


def sensitivity_table(df: Any, labels: Sequence[tuple[str, Any]], metrics: Sequence[str] | None = None,
                      objectives: Sequence[str] = ()) -> Any:  # fmt: skip
    """The sweep DataFrame of `sensitivity_points`' points (in their order) with `axis` and `value` columns
    first, and `<metric>_rel` = metric / metric at the center - 1 for each of `metrics` (default: the
    `objectives`, else latency_s, tokens_per_s and energy_per_token_j). Changes `df` in place."""
    df.insert(0, "axis", [lab for lab, _ in labels])
    df.insert(1, "value", [v if lab != "center" else math.nan for lab, v in labels])
    if metrics is None:
        metrics = list(objectives) or [
            m for m in ("latency_s", "tokens_per_s", "energy_per_token_j") if m in df
        ]
    base = df.iloc[0]
    for m in metrics:
        ref = base.get(m)
        if m in df.columns and isinstance(ref, int | float) and ref and math.isfinite(ref):
            df[f"{m}_rel"] = df[m] / ref - 1.0
    return df


def sensitivity_summary(df: Any, metric: str) -> Any:
    """Per axis: the smallest and largest relative change of `metric` (a tornado chart's bars), widest first."""
    col = f"{metric}_rel"
    sub = df[df["axis"] != "center"]
    g = sub.groupby("axis")[col].agg(["min", "max"])
    g["span"] = g["max"] - g["min"]
    return g.sort_values("span", ascending=False)


# ----------------------------------------------------------------------------------------- tables
def format_value(df: Any, col: str, v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int | float):
        if isinstance(v, float) and not math.isfinite(v):
            return "-"
        kind = column_kind(df, col)
        if kind:
            return fmt(float(v), kind)
        if float(v).is_integer() and abs(v) < 1e15:
            return f"{int(v):,}"
        return f"{v:,.0f}" if 1e3 <= abs(v) < 1e15 else f"{v:.4g}"
    return str(v)


def top_table(df: Any, n: int = 10) -> str:
    """The best points as aligned text: the Pareto front (or all ok points) sorted by the first objective."""
    objectives: dict[str, str] = df.attrs.get("objectives", {})
    axes: list[str] = df.attrs.get("axes", [])
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    if "pareto" in df.columns:
        ok = ok[ok["pareto"]]
    if objectives:
        first, goal = next(iter(objectives.items()))
        ok = ok.sort_values(first, ascending=goal == "min")
        cols = [*axes, *objectives]
    else:
        cols = [*axes, *[c for c in ("latency_s", "tokens_per_s", "energy_per_token_j") if c in df.columns]]
    ok = ok.head(n)
    if ok.empty:
        return "(no feasible points)"
    header = [c + (f" ({objectives[c]})" if c in objectives else "") for c in cols]
    cells = [[format_value(df, c, r[c]) for c in cols] for _, r in ok.iterrows()]
    return text_table(header, cells)
