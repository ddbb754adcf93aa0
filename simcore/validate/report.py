"""`simcore validate data`: error statistics per device and family, tables, the per-row CSV and the
predicted-vs-measured plot."""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simcore.errors import ConfigError, SimError
from simcore.tables import text_table
from simcore.validate import e2e  # noqa: F401  (registers the end-to-end LLM format)
from simcore.validate.intervals import fit_intervals, write_intervals
from simcore.validate.rows import Row, Simulator, load_rows

COVERAGE = 0.8  # the error bars `--intervals` writes

# ------------------------------------------------------------------------------------- statistics


def percentile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty sequence."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True)
class Group:
    """Error distribution of one device x family x dtype x quality group."""

    device: str
    family: str
    dtype: str
    quality: str
    count: int
    median_abs: float
    p90_abs: float
    worst: float  # signed error of largest magnitude
    bias: float  # median signed error

    def record(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def summarize(rows: Iterable[Row], key: Callable[[Row], tuple[str, str, str, str]]) -> list[Group]:
    groups: dict[tuple[str, str, str, str], list[float]] = {}
    for r in rows:
        if r.mapped and math.isfinite(r.predicted):
            groups.setdefault(key(r), []).append(r.error)
    out = []
    for k in sorted(groups):
        errs = groups[k]
        absd = [abs(e) for e in errs]
        out.append(Group(*k, len(errs), statistics.median(absd), percentile(absd, 90),
                         max(errs, key=abs), statistics.median(errs)))  # fmt: skip
    return out


def by_group(r: Row) -> tuple[str, str, str, str]:
    return (r.preset or "", r.family, r.dtype or "-", r.quality)


def by_family(r: Row) -> tuple[str, str, str, str]:
    return ("all", r.family, "all", r.quality)


# ------------------------------------------------------------------------------------------ tables


def signed_pct(x: float) -> str:
    return f"{100 * x:+.1f}%" if math.isfinite(x) else "-"


def abs_pct(x: float) -> str:
    return f"{100 * x:.1f}%" if math.isfinite(x) else "-"


def group_table(groups: Sequence[Group]) -> str:
    rows = [(g.device, g.family, g.dtype, g.quality, g.count, abs_pct(g.median_abs), abs_pct(g.p90_abs), signed_pct(g.worst),
             signed_pct(g.bias)) for g in groups]  # fmt: skip
    return text_table(("device", "family", "dtype", "rows", "n", "median|err|", "p90|err|", "worst", "bias"), rows,
                 (False, False, False, False, True, True, True, True, True))  # fmt: skip


def _ranges(lines: list[int]) -> str:
    """[2, 3, 3, 4, 9] -> '2-4,9'."""
    out: list[str] = []
    for x in sorted(set(lines)):
        if out and (m := re.match(r"^(\d+)(?:-(\d+))?$", out[-1])) and int(m.group(2) or m.group(1)) == x - 1:
            out[-1] = f"{m.group(1)}-{x}"
        else:
            out.append(str(x))
    return ",".join(out)


def unmapped_table(rows: Sequence[Row]) -> str:
    by: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        if not r.mapped:
            by.setdefault((r.reason, Path(r.file).name), []).append(r)
    lines = [
        (len(v), f"{file}:{_ranges([r.line for r in v])}", reason) for (reason, file), v in sorted(by.items())
    ]
    return text_table(("rows", "where (file:lines)", "reason"), lines, (True, False, False))


# ------------------------------------------------------------------------------------- validate data


def run_data(files: Sequence[str], out_dir: str | None, as_json: bool, plot: bool = True,
             intervals: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Load, simulate and summarise; write the per-row CSV and the plot; return the JSON-able report."""
    sim = Simulator()
    rows: list[Row] = []
    skipped: list[str] = []
    for f in files:
        try:
            rows.extend(load_rows(f, sim))
        except ConfigError as e:  # one unreadable file of several does not stop the others
            if len(files) == 1:
                raise
            skipped.append(str(e))
            print(f"simcore validate data: skipped {e}", file=sys.stderr)
    if not rows and skipped:
        raise ConfigError(f"none of the {len(files)} files could be read (first: {skipped[0]})")
    for r in rows:
        if r.mapped and r.predict is not None:
            try:
                r.predicted, r.bound = r.predict()
            except SimError as e:  # the run a row describes is refused (too long, out of memory): say so
                r.reason = f"not simulated: {e}"
    groups = summarize(rows, by_group)
    families = summarize(rows, by_family)
    report = {
        "files": list(files),
        "skipped_files": skipped,
        "rows": len(rows),
        "mapped": sum(r.mapped for r in rows),
        "unmapped": [
            {"file": r.file, "line": r.line, "device": r.device, "family": r.family, "reason": r.reason}
            for r in rows
            if not r.mapped
        ],  # fmt: skip
        "groups": [g.record() for g in groups],
        "families": [g.record() for g in families],
        "convention": "error = predicted/measured - 1 (time for ops, bandwidth for links)",
    }
    if intervals:
        table = fit_intervals(rows, COVERAGE)
        write_intervals(table, intervals, COVERAGE, list(files))
        report["intervals"] = table
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        report["predictions_csv"] = str(write_predictions(rows, out / "predictions.csv"))
        if plot:
            report["plot_png"] = str(plot_predictions(rows, out / "predicted_vs_measured.png"))
    if as_json:
        print(json.dumps(report, sort_keys=True, default=float))
    else:
        print(f"simcore validate data: {report['mapped']} of {report['rows']} rows simulated "
              f"(error = predicted/measured - 1; time for ops, bandwidth for links)\n")  # fmt: skip
        print(group_table(groups))
        print("\nAll devices, by family:\n")
        print(group_table(families))
        n_un = len(report["unmapped"])
        if n_un:
            print(f"\nUnmapped rows ({n_un}), by reason:\n")
            print(unmapped_table(rows))
        if out_dir:
            print(f"\nwrote {report['predictions_csv']}" + (f" and {report['plot_png']}" if plot else ""))
    return report


def write_predictions(rows: Sequence[Row], path: Path) -> Path:
    records = [r.record() for r in rows]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(records[0]) if records else ["file"])
        w.writeheader()
        for rec in records:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in rec.items()})
    return path


_COLORS = {"gemm": "tab:blue", "attention": "tab:orange", "softmax": "tab:green", "layernorm": "tab:olive",
           "gelu": "tab:cyan", "hbm": "tab:red", "pcie": "tab:purple", "nvlink": "tab:brown",
           "allreduce": "tab:pink"}  # fmt: skip


def plot_predictions(rows: Sequence[Row], path: Path) -> Path:
    """Predicted vs measured, log-log: op times and link bandwidths side by side, y = x and ±10/25% bands."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend or figure state is touched
    except ImportError:
        raise ConfigError("the plot needs matplotlib (pip install matplotlib), or pass --no-plot",
                          key="simcore validate data") from None  # fmt: skip

    panels = [
        (quantity, scale, unit, title, pts)
        for quantity, scale, unit, title in (
            ("time", 1e6, "time (µs)", "Operators and runs"),
            ("bandwidth", 1e-9, "bandwidth (GB/s)", "Memory and links"),
            ("energy", 1.0, "energy (J)", "Energy"),
            ("power", 1.0, "power (W)", "Power"),
        )
        if (pts := [r for r in rows if r.mapped and r.quantity == quantity and math.isfinite(r.predicted)])
    ]
    fig = Figure(figsize=(6 * max(1, len(panels)), 5.5))
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    if not panels:
        axes[0].text(0.5, 0.5, "no simulated rows", ha="center", va="center")
        axes[0].set_axis_off()
    for ax, (_quantity, scale, unit, title, pts) in zip(axes, panels, strict=False):
        lo = min(min(r.measured, r.predicted) for r in pts) * scale / 1.5
        hi = max(max(r.measured, r.predicted) for r in pts) * scale * 1.5
        xs = [lo, hi]
        ax.fill_between(xs, [x * 0.75 for x in xs], [x * 1.25 for x in xs], color="0.9", label="±25%")
        ax.fill_between(xs, [x * 0.9 for x in xs], [x * 1.1 for x in xs], color="0.8", label="±10%")
        ax.plot(xs, xs, "k-", lw=1, label="y = x")
        for fam in sorted({r.family for r in pts}):
            for approx in (False, True):
                sel = [r for r in pts if r.family == fam and r.approx == approx]
                if sel:
                    ax.scatter([r.measured * scale for r in sel], [r.predicted * scale for r in sel], s=14,
                               facecolors="none" if approx else _COLORS.get(fam, "k"),
                               edgecolors=_COLORS.get(fam, "k"), linewidths=0.8,
                               label=f"{fam} ({len(sel)}{', read off figures' if approx else ''})")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"measured {unit}")
        ax.set_ylabel(f"predicted {unit}")
        ax.set_title(title)
        ax.grid(True, which="both", ls=":", c="0.7")
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("simcore validate: predicted vs measured")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    return path
