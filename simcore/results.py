"""Simulation results: a summary, per-op records, tables, JSON, DataFrames and Chrome traces."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simcore.invariants import check_result
from simcore.ledger import Ledger
from simcore.units import fmt, kind_from_name

COLLECTIVE_KINDS = ("allreduce", "allgather", "sendrecv")


@dataclass
class Result:
    """What one simulation produced: `summary` (flat JSON-able figures in SI units) and the ledger of
    per-op records and per-resource tallies. A record: it holds no engine."""

    summary: dict[str, Any]
    ledger: Ledger | None = field(default=None, repr=False)

    def check(self, records: bool = False) -> Result:
        """The run's invariants (simcore.invariants): the summary and the ledger's aggregates, and with
        `records` every per-op record too; InternalError names the first broken figure."""
        check_result(self.summary, self.ledger)
        if records and self.ledger is not None:
            self.ledger.check_records()
        return self

    # ------------------------------------------------------------------------------------ records
    def records(self) -> Iterator[dict[str, Any]]:
        """One dict per executed op or transfer, in execution order (see simcore.ledger for energy_j)."""
        if self.ledger is not None:
            yield from self.ledger.records()

    def to_dataframe(self) -> Any:
        import pandas as pd  # optional dependency, imported only here

        return pd.DataFrame(list(self.records()))

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.summary, indent=2, sort_keys=True, default=float)
        if path:
            Path(path).write_text(text)
        return text

    def to_chrome_trace(self, path: str | Path) -> Path:
        """Chrome trace JSON (opens in Perfetto / chrome://tracing): one lane per device group or link; a
        transfer also shows on a lane for every link on its route."""
        events: list[dict[str, Any]] = []
        lanes: dict[str, int] = {}
        system = self.ledger.system if self.ledger is not None else None
        for r in self.records():
            lane_names = [r["devices"]]
            if r["kind"] in COLLECTIVE_KINDS:  # the collective also occupies the group's links
                lane_names.append(f"links {r['devices']}")
            elif r["kind"] == "transfer" and system is not None:
                _, src, dst = r["devices"].split(",")
                lane_names += [f"{link.type} {a}->{b}" for a, b, link in system.route(src, dst)]
            for lane in lane_names:
                tid = lanes.setdefault(lane, len(lanes) + 1)
                events.append({"name": r["name"], "cat": r["kind"], "ph": "X", "pid": 1, "tid": tid,
                               "ts": r["start_s"] * 1e6, "dur": r["duration_s"] * 1e6,
                               "args": {"phase": r["phase"], "bound": r["bound"], "flops": r["flops"],
                                        "bytes": r["bytes"], "energy_j": r["energy_j"]}})  # fmt: skip
        for name, tid in lanes.items():
            events.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": name}})
        events.append({"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "simcore"}})
        p = Path(path)
        p.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
        return p

    # ---------------------------------------------------------------------------------- terminal
    def table(self) -> str:
        """The summary as an aligned two-column table with units."""
        return summary_table(self.summary)


def _fmt_value(kind: str | None, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, float | int):
        return str(value)
    if kind == "percent":
        return f"{100 * value:.1f} %"
    if kind == "rate":
        return f"{value:,.0f} /s" if abs(value) >= 1000 else f"{value:.4g} /s"
    if kind:
        return fmt(float(value), kind)
    return f"{value:,.4g}" if isinstance(value, float) else f"{value:,}"


def _compact(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """gpu0..gpu7 with one value -> gpu[0-7]: identical devices of a group are listed once."""
    import re

    out: list[tuple[str, str]] = []
    groups: dict[tuple[str, str, str], list[int]] = {}
    order: list[tuple[str, str, str] | tuple[str, str]] = []
    for key, val in items:
        m = re.fullmatch(r"([^\d]*?)(\d+)(\D.*)?", key)
        if m:
            g = (m.group(1), m.group(3) or "", val)
            if g not in groups:
                groups[g] = []
                order.append(g)
            groups[g].append(int(m.group(2)))
        else:
            order.append((key, val))
    for g in order:
        if len(g) == 2:
            out.append(g)  # type: ignore[arg-type]
            continue
        nums = sorted(groups[g])
        idx = (
            str(nums[0])
            if len(nums) == 1
            else f"[{nums[0]}-{nums[-1]}]"
            if nums == list(range(nums[0], nums[-1] + 1))
            else f"[{','.join(map(str, nums))}]"
        )
        out.append((f"{g[0]}{idx}{g[1]}", g[2]))
    return out


def summary_table(summary: Mapping[str, Any], title: str | None = None) -> str:
    """Aligned `key  value` rows with units; nested figures per device are compacted and zeros dropped."""
    rows: list[tuple[str, str]] = []
    for k, v in summary.items():
        kind = kind_from_name(k)
        if isinstance(v, Mapping):
            items = [(str(sk), _fmt_value(kind or kind_from_name(str(sk)), sv)) for sk, sv in v.items() if sv]
            rows += [(f"{k}.{sk}", sv) for sk, sv in _compact(items)]
        else:
            rows.append((k, _fmt_value(kind, v)))
    width = max((len(k) for k, _ in rows), default=0)
    lines = [title, "-" * len(title)] if title else []
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)
