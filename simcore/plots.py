"""Plots of results and sweeps: roofline, timeline (Gantt), energy breakdown, Pareto scatter, tornado.

Matplotlib is imported only when a plot is drawn, and figures are built with `matplotlib.figure.Figure`
(no pyplot state, no GUI backend), so plotting works in worker processes, tests and notebooks alike.
Every helper takes an optional `ax` to draw into and an optional `path` to save a PNG, and returns the
Figure. Axes carry units, scaled to the data (ms or us, TB/s, TFLOP/s).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from simcore.component import ridge_point
from simcore.sweep.analysis import pareto_front, sensitivity_summary
from simcore.units import DISPLAY_SCALES, column_kind

#: Colours per op kind, stable across plots.
KIND_COLORS = {
    "gemm": "#1f77b4", "attention": "#ff7f0e", "elementwise": "#2ca02c", "norm": "#9467bd",
    "softmax": "#8c564b", "embedding": "#e377c2", "collective": "#d62728", "transfer": "#7f7f7f",
    "allreduce": "#d62728", "allgather": "#ff9896", "reducescatter": "#c49c94", "alltoall": "#f7b6d2",
}  # fmt: skip
_EXTRA_COLORS = ("#17becf", "#bcbd22", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5")
PHASE_MARKERS = {"prefill": "o", "decode": "^"}
#: Readable names for energy actions (Result.ledger.energy_breakdown_J()).
ACTION_LABELS = {"dram.byte": "DRAM traffic", "l2.byte": "L2 traffic", "smem.byte": "shared memory / registers",
                 "static": "static (idle) power", "active": "active power (kernels running)"}  # fmt: skip


# ------------------------------------------------------------------------------------------ helpers
def _figure(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def _finish(fig: Any, path: str | Path | None) -> Any:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def unit_scale(kind: str, values: Iterable[float]) -> tuple[float, str]:
    """(divisor, unit symbol) that puts typical `values` of a unit kind in a readable range."""
    vals = sorted(abs(v) for v in values if isinstance(v, int | float) and math.isfinite(v) and v)
    if not vals or kind not in DISPLAY_SCALES:
        return 1.0, ""
    typical = vals[len(vals) // 2]
    for scale, sym in DISPLAY_SCALES[kind]:
        if typical >= scale:
            return scale, sym
    return DISPLAY_SCALES[kind][-1]


def column_label(col: str, df: Any = None) -> tuple[str, float]:
    """An axis label with its unit for a sweep column, and the divisor to apply to the values."""
    if col == "tokens_per_s":
        return "throughput (tokens/s)", 1.0
    kind = column_kind(df, col)
    if not kind:
        return col.replace("_", " "), 1.0
    name = col
    for suffix in ("_Bps", "_B", "_s", "_j", "_J", "_W"):
        if col.endswith(suffix):
            name = col.removesuffix(suffix)
            break
    values = df[col].tolist() if df is not None and col in df else []
    scale, sym = unit_scale(kind, values)
    return f"{name.replace('_', ' ')} ({sym})", scale


def _kind_color(kind: str, seen: dict[str, str]) -> str:
    if kind in KIND_COLORS:
        return KIND_COLORS[kind]
    if kind not in seen:
        seen[kind] = _EXTRA_COLORS[len(seen) % len(_EXTRA_COLORS)]
    return seen[kind]


def _hardware_name(result: Any) -> str:
    return str(
        result.summary.get("hardware") or (result.ledger.system.name if result.ledger is not None else "")
    )


def _records(result: Any) -> list[dict[str, Any]]:
    recs = list(result.records())
    if not recs:
        raise ValueError("this Result has no op records: run it with keep_records=True")
    return recs


# ------------------------------------------------------------------------------------------ roofline
def roofline(result: Any, *, device: str | None = None, dtype: str | None = None, ax: Any = None,
             path: str | Path | None = None, title: str | None = None) -> Any:  # fmt: skip
    """The ops of a Result on its device's roofline: arithmetic intensity (FLOP per operand byte) against
    achieved FLOP/s, one marker per distinct op and phase (area ~ its share of the run time), under the
    tensor-core peak, the vector peak, the spec (peak) memory bandwidth and, dashed, the achievable one of
    `device` (default: the first GPU). The ridge point marked is simcore.component.ridge_point (spec peak
    / spec bandwidth), the one definition `hw show` uses too."""
    import numpy as np

    system = result.ledger.system
    if device is None:
        gpus = system.of_type("gpu")
        device = gpus[0] if gpus else next(iter(system.devices))
    dev = system.devices[device]
    dtype = dtype or result.summary.get("dtype", "bf16")
    bw = dev.peak_memory_bandwidth_Bps
    bw_ach = dev.memory_bandwidth_Bps
    peak = dev.dense_peak_flops(dtype) or None
    vpeak = dev.vector_peak(dtype) if hasattr(dev, "vector_peak") else None

    groups: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    total_t = 0.0
    for r in _records(result):
        if r["kind"] == "transfer" or not r["flops"] or not r["bytes"] or r["duration_s"] <= 0:
            continue
        short = r["name"].split(".", 1)[-1] if r["name"][:1] == "L" and "." in r["name"] else r["name"]
        g = groups[(r["phase"], r["kind"], short)]
        g[0] += r["flops"]
        g[1] += r["bytes"]
        g[2] += r["duration_s"]
        g[3] += 1
        total_t += r["duration_s"]
    if not groups:
        raise ValueError("no op in this Result has both FLOPs and bytes to place on a roofline")
    fig, ax = _figure(ax, (9.5, 5.0))
    ai = np.array([g[0] / g[1] for g in groups.values()])
    perf = np.array([g[0] / g[2] for g in groups.values()])
    x_lo, x_hi = ai.min() / 4, ai.max() * 4
    if peak:
        x_hi = max(x_hi, 4 * peak / bw)
    xs = np.logspace(math.log10(x_lo), math.log10(x_hi), 200)
    top = max(perf.max(), peak or 0.0)
    scale, sym = unit_scale("flops", [top])
    if peak:
        ax.plot(xs, np.minimum(peak, bw * xs) / scale, color="black", lw=1.8,
                label=f"{dtype} tensor peak {peak / scale:.3g} {sym}, spec memory {bw / 1e12:.3g} TB/s")  # fmt: skip
        ridge = ridge_point(dev, dtype)
        ax.axvline(ridge, color="black", lw=0.8, ls=":")
        ax.annotate(f"ridge point (spec) {ridge:.0f} FLOP/B", (ridge, 0), xycoords=("data", "axes fraction"),
                    textcoords="offset points", xytext=(3, 4), rotation=90, fontsize=8, va="bottom")  # fmt: skip
    else:
        ax.plot(xs, bw * xs / scale, color="black", lw=1.8, label=f"spec memory {bw / 1e12:.3g} TB/s")
    if bw_ach and bw_ach != bw:
        ax.plot(xs, np.minimum(peak or math.inf, bw_ach * xs) / scale, color="black", lw=0.8, ls="--",
                label=f"achievable memory {bw_ach / 1e12:.3g} TB/s")  # fmt: skip
    if vpeak:
        ax.plot(xs, np.minimum(vpeak, bw * xs) / scale, color="grey", lw=1.0, ls="--",
                label=f"vector peak {vpeak / scale:.3g} {sym}")  # fmt: skip
    extra: dict[str, str] = {}
    kinds_seen: dict[str, None] = {}
    for (phase, kind, _short), (flops, nbytes, t, _n) in groups.items():
        kinds_seen.setdefault(kind)
        ax.scatter(flops / nbytes, flops / t / scale, s=20 + 400 * t / total_t, marker=PHASE_MARKERS.get(phase, "s"),
                   color=_kind_color(kind, extra), alpha=0.75, edgecolors="black", linewidths=0.5, zorder=3)  # fmt: skip
    for kind in kinds_seen:
        ax.scatter([], [], color=_kind_color(kind, extra), marker="s", label=kind)
    for phase in sorted({p for p, _, _ in groups}):
        ax.scatter(
            [], [], color="white", edgecolors="black", marker=PHASE_MARKERS.get(phase, "s"), label=phase
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(perf.min() / scale / 4, top / scale * 2)
    ax.set_xlabel("arithmetic intensity (FLOP per operand byte)")
    ax.set_ylabel(f"achieved throughput ({sym})")
    ax.set_title(title or f"Roofline: {result.summary.get('model', '')} on {system.name} ({device})")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        title="marker area ~ share of run time",
        title_fontsize=7,
    )
    return _finish(fig, path)


# ------------------------------------------------------------------------------------------ timeline
def timeline(result: Any, *, ax: Any = None, path: str | Path | None = None, title: str | None = None,
             start_s: float | None = None, end_s: float | None = None) -> Any:  # fmt: skip
    """A Gantt chart of a Result: one lane per device group or link, one bar per op coloured by kind,
    phases shaded. `start_s`/`end_s` zoom into a window of simulated time."""
    recs = _records(result)
    if start_s is not None or end_s is not None:
        lo, hi = start_s or 0.0, end_s if end_s is not None else math.inf
        recs = [r for r in recs if r["end_s"] > lo and r["start_s"] < hi]
    lanes: list[str] = []
    for r in recs:
        if r["devices"] not in lanes:
            lanes.append(r["devices"])
    t_end = max(r["end_s"] for r in recs)
    t_start = min(r["start_s"] for r in recs)
    scale, sym = unit_scale("time", [t_end - t_start])
    fig, ax = _figure(ax, (10.0, 1.2 + 0.6 * len(lanes)))
    bars: dict[tuple[int, str], list[tuple[float, float]]] = defaultdict(list)
    for r in recs:
        bars[(lanes.index(r["devices"]), r["kind"])].append(
            (r["start_s"] / scale, max(r["duration_s"], 0.0) / scale)
        )
    extra: dict[str, str] = {}
    labelled: set[str] = set()
    for (lane, kind), spans in sorted(bars.items()):
        ax.broken_barh(spans, (lane - 0.4, 0.8), facecolors=_kind_color(kind, extra),
                       label=None if kind in labelled else kind)  # fmt: skip
        labelled.add(kind)
    # phases: (program, phase) spans, shaded alternately and named at the top
    phases: dict[tuple[int, str], list[float]] = {}
    for r in recs:
        p = phases.setdefault((r["program"], r["phase"]), [r["start_s"], r["end_s"]])
        p[0], p[1] = min(p[0], r["start_s"]), max(p[1], r["end_s"])
    shown = sorted(phases.items(), key=lambda kv: kv[1][0])
    for i, ((_, name), (a, b)) in enumerate(shown):
        ax.axvspan(a / scale, b / scale, color="grey" if i % 2 else "white", alpha=0.1, zorder=0)
        if len(shown) <= 12:
            rel = ((a + b) / 2 - t_start) / ((t_end - t_start) or 1.0)  # near an edge, align the name inward
            x, ha = (
                ((a + b) / 2, "center")
                if 0.06 < rel < 0.94
                else ((b, "right") if rel >= 0.94 else (a, "left"))
            )
            ax.text(x / scale, -0.5, name, ha=ha, va="bottom", fontsize=8)
    ax.set_yticks(range(len(lanes)), [_short_lane(lane) for lane in lanes])
    ax.set_ylim(len(lanes) - 0.5, -0.85)  # lane 0 on top, room above it for the phase names
    ax.set_xlim(t_start / scale, t_end / scale)
    ax.set_xlabel(f"simulated time ({sym})")
    ax.set_ylabel("device group / link")
    ax.set_title(title or f"Timeline: {result.summary.get('model', '')} on {_hardware_name(result)}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="op kind", title_fontsize=8)
    return _finish(fig, path)


def _short_lane(lane: str) -> str:
    """A device group as `first..last (n)`; a copy lane (`copy,src,dst`) as `src -> dst`."""
    parts = lane.split(",")
    if parts[0] == "copy" and len(parts) == 3:
        return f"{parts[1]} -> {parts[2]}"
    return lane if len(parts) <= 2 else f"{parts[0]}..{parts[-1]} ({len(parts)})"


# --------------------------------------------------------------------------------- energy breakdown
def _action_label(action: str) -> str:
    if action in ACTION_LABELS:
        return ACTION_LABELS[action]
    if action.startswith(("flop.", "mac.")):
        return f"math ({action.split('.', 1)[1]})"
    return action


def _component_group(name: str, group: bool) -> str:
    """'gpu3' -> 'gpus', 'nvlink:gpu3-nvswitch' -> 'nvlink links' when grouping identical parts."""
    if not group:
        return name
    if ":" in name:
        return f"{name.split(':', 1)[0]} links"
    stem = name.rstrip("0123456789")
    return f"{stem}s" if stem != name and stem else name


def energy_breakdown(results: Any, *, by: str = "action", per_token: bool = False, group: bool = True,
                     ax: Any = None, path: str | Path | None = None, title: str | None = None) -> Any:  # fmt: skip
    """Stacked bars of where the joules go: one bar per Result (a Result, or {label: Result}), stacked by
    action (math per dtype, DRAM, L2, shared memory, links, static power; `by="action"`) or by component
    (`by="component"`; numbered parts such as gpu0..gpu7 summed unless `group=False`). `per_token`
    divides by the tokens each run produced."""
    import numpy as np

    if not isinstance(results, Mapping):
        results = {_hardware_name(results) or "run": results}
    table: dict[str, dict[str, float]] = {}
    for label, res in results.items():
        row: dict[str, float] = defaultdict(float)
        if res.ledger is not None:
            for comp, actions in res.ledger.energy_breakdown_J().items():
                for action, j in actions.items():
                    row[_action_label(action) if by == "action" else _component_group(comp, group)] += j
        else:
            for comp, j in res.summary.get("energy_by_component_j", {}).items():
                row[_component_group(comp, group)] += j
        if per_token:
            tokens = res.summary["energy_j"] / res.summary["energy_per_token_j"]
            row = defaultdict(float, {k: v / tokens for k, v in row.items()})
        table[str(label)] = row
    cats = sorted(
        {c for row in table.values() for c in row}, key=lambda c: -sum(r.get(c, 0) for r in table.values())
    )
    totals = [sum(row.values()) for row in table.values()]
    scale, sym = unit_scale("energy", totals)
    fig, ax = _figure(ax, (max(5.0, 1.4 * len(table) + 3.5), 4.5))
    x = np.arange(len(table))
    bottom = np.zeros(len(table))
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974",
              "#64b5cd"]  # fmt: skip
    for i, cat in enumerate(cats):
        vals = np.array([row.get(cat, 0.0) for row in table.values()]) / scale
        ax.bar(x, vals, bottom=bottom, label=cat, color=colors[i % len(colors)], width=0.6)
        bottom += vals
    for xi, tot in zip(x, bottom, strict=True):
        ax.annotate(f"{tot:.3g} {sym}", (xi, tot), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                    textcoords="offset points")  # fmt: skip
    ax.set_xticks(x, list(table))
    ax.set_ylabel(f"energy per token ({sym}/token)" if per_token else f"energy ({sym})")
    ax.set_ylim(0, bottom.max() * 1.15 if len(bottom) else 1)
    ax.set_title(title or ("Energy per token" if per_token else "Energy") + f" by {by}")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(
        handles[::-1], labels[::-1], fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0)
    )  # as stacked
    return _finish(fig, path)


# ----------------------------------------------------------------------------------------- sweeps
def pareto_scatter(df: Any, x: str, y: str, *, color: str | None = None, goals: Mapping[str, str] | None = None,
                   ax: Any = None, path: str | Path | None = None, title: str | None = None,
                   logx: bool = False, logy: bool = False) -> Any:  # fmt: skip
    """Feasible sweep points in the (x, y) plane, coloured by `color` (a column), with the Pareto front of
    x and y (goals from `goals`, else the sweep's objectives, else x min / y max) drawn as a staircase."""
    import numpy as np

    objectives = df.attrs.get("objectives", {})
    g = {x: objectives.get(x, "min"), y: objectives.get(y, "max")}
    if goals:
        g.update(goals)
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    ok = ok[np.isfinite(ok[x].astype(float)) & np.isfinite(ok[y].astype(float))]
    front = pareto_front(ok, g) if len(ok) else ok[x].astype(bool)
    fig, ax = _figure(ax, (7.0, 5.0))
    xlabel, xs = column_label(x, df)
    ylabel, ys = column_label(y, df)
    if color and color in ok:
        clabel, cs = column_label(color, df)
        sc = ax.scatter(ok[x] / xs, ok[y] / ys, c=ok[color].astype(float) / cs, cmap="viridis", s=22, alpha=0.8,
                        label="feasible points")  # fmt: skip
        fig.colorbar(sc, ax=ax, label=clabel)
    else:
        ax.scatter(ok[x] / xs, ok[y] / ys, color="#7f7f7f", s=18, alpha=0.6, label="feasible points")
    pf = ok[front].sort_values(x)
    if len(pf):
        ax.scatter(pf[x] / xs, pf[y] / ys, facecolors="none", edgecolors="#d62728", s=70, lw=1.5,
                   label=f"Pareto front ({len(pf)}: {x} {g[x]}, {y} {g[y]})")  # fmt: skip
        ax.step(pf[x] / xs, pf[y] / ys, where="post" if g[y] == "max" else "pre", color="#d62728", lw=1.0)
    n_bad = int((df["status"] != "ok").sum()) if "status" in df.columns else 0
    if n_bad:
        ax.scatter([], [], marker="x", color="#bbbbbb", label=f"{n_bad} infeasible / skipped (not shown)")
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(
        title or f"Sweep {df.attrs.get('sweep', '')}: {ylabel.split(' (')[0]} vs {xlabel.split(' (')[0]}"
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, path)


def tornado(
    df: Any, metric: str, *, ax: Any = None, path: str | Path | None = None, title: str | None = None
) -> Any:
    """One-factor sensitivity as a tornado chart: per axis, the range of `metric`'s relative change
    (from `simcore.sweep.sensitivity`), widest on top."""
    s = sensitivity_summary(df, metric)
    fig, ax = _figure(ax, (7.0, 1.2 + 0.5 * len(s)))
    ypos = range(len(s))
    ax.barh(ypos, (s["max"] - s["min"]) * 100, left=s["min"] * 100, color="#4c72b0", height=0.6)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(list(ypos), list(s.index))
    ax.invert_yaxis()
    ax.set_xlabel(f"change of {metric} vs the center point (%)")
    ax.set_title(title or f"Sensitivity of {metric}")
    ax.grid(True, axis="x", alpha=0.3)
    return _finish(fig, path)
