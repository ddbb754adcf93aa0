"""Simulation results: a summary, per-op records, tables, JSON, DataFrames and Chrome traces."""

from __future__ import annotations

import gzip
import json
import sys
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
    #: a serving run's per-request records (NamedTuples: id, arrival_s, first_token_s, finish_s, prompt_tokens,
    #: output_tokens, ... with ttft_s, tpot_s and e2e_s); empty for other scenarios
    requests: tuple[Any, ...] = field(default=(), repr=False)

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

    def requests_dataframe(self) -> Any:
        """One row per served request with its TTFT, TPOT and end-to-end latency (pandas)."""
        import pandas as pd  # optional dependency, imported only here

        return pd.DataFrame([{**r._asdict(), "ttft_s": r.ttft_s, "tpot_s": r.tpot_s, "e2e_s": r.e2e_s}
                             for r in self.requests])  # fmt: skip

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.summary, indent=2, sort_keys=True, default=float)
        if path:
            Path(path).write_text(text)
        return text

    def to_chrome_trace(self, path: str | Path, *, max_mb: float | None = 200.0, every: int = 1,
                        compress: bool | None = None) -> Path:  # fmt: skip
        """Chrome trace JSON (opens in Perfetto / chrome://tracing): one lane per device group or link; a
        transfer also shows on a lane for every link on its route. Events stream to the file as the records
        are laid out (memory stays flat however long the run). `compress` (default: a `.gz` suffix) writes
        gzip. Past `max_mb` MB written (compressed size for gzip; None: no cap) no more events are written:
        one line on stderr and `otherData.truncated` in the trace say so. `every` N > 1 keeps every op of
        prefill and of every Nth decode program (records carry their `program` index)."""
        if every < 1:
            raise ValueError(f"every must be >= 1, not {every}")
        p = Path(path)
        if compress is None:
            compress = p.suffix == ".gz"
        raw = p.open("wb")
        out: Any = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) if compress else raw
        cap = None if max_mb is None else max_mb * 1e6
        lanes: dict[str, int] = {}
        system = self.ledger.system if self.ledger is not None else None
        written = pending = kept = 0  # bytes in the file (compressed for gzip), bytes buffered
        truncated_at: float | None = None
        dumps = json.JSONEncoder(separators=(",", ":"), default=float).encode
        try:
            out.write(b'{"displayTimeUnit":"ms","traceEvents":[')
            first = True
            buf: list[str] = []

            def flush() -> None:
                nonlocal first, buf, written, pending
                if buf:
                    out.write((("" if first else ",") + ",".join(buf)).encode())
                    first, buf = False, []
                    written = raw.tell() if compress else written + pending
                    pending = 0

            for r in self.records() if self.ledger is None else self.ledger.records(every):
                lane_names = [r["devices"]]
                if r["kind"] in COLLECTIVE_KINDS:  # the collective also occupies the group's links
                    lane_names.append(f"links {r['devices']}")
                elif r["kind"] == "transfer" and system is not None:
                    _, src, dst = r["devices"].split(",")
                    lane_names += [f"{link.type} {a}->{b}" for a, b, link in system.route(src, dst)]
                events = []
                for lane in lane_names:
                    tid = lanes.setdefault(lane, len(lanes) + 1)
                    events.append(dumps({"name": r["name"], "cat": r["kind"], "ph": "X", "pid": 1, "tid": tid,
                                         "ts": r["start_s"] * 1e6, "dur": r["duration_s"] * 1e6,
                                         "args": {"phase": r["phase"], "program": r["program"],
                                                  "bound": r["bound"], "flops": r["flops"], "bytes": r["bytes"],
                                                  "energy_j": r["energy_j"], "power_w": r["power_w"]}}))  # fmt: skip
                size = sum(len(e) + 1 for e in events)
                if cap is not None and written + pending + size > cap:  # (gzip: buffered bytes uncompressed)
                    truncated_at = r["start_s"]
                    break
                buf += events
                pending += size
                kept += len(events)
                if len(buf) >= 4096:
                    flush()
            if truncated_at is None and self.requests:
                spans = [dumps(e) for e in _request_events(self.requests)]
                buf += spans
                kept += len(spans)
            flush()
            meta = [{"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": name}}
                    for name, tid in lanes.items()]  # fmt: skip
            meta.append({"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "simcore"}})
            if self.requests:
                meta.append({"name": "process_name", "ph": "M", "pid": 2, "args": {"name": "requests"}})
            out.write((("" if first else ",") + ",".join(map(dumps, meta)) + "]").encode())
            other: dict[str, Any] = {"every": every, "events": kept}
            if truncated_at is not None:
                other["truncated"] = (f"stopped at {max_mb:g} MB (--trace-max-mb): events from "
                                      f"t = {truncated_at:.6g} s on are missing")  # fmt: skip
            out.write(b',"otherData":' + dumps(other).encode() + b"}")
        finally:
            if out is not raw:
                out.close()
            raw.close()
        if truncated_at is not None:
            print(f"simcore: warning: trace {p} truncated at {max_mb:g} MB (events from "
                  f"t = {truncated_at:.6g} s on left out; raise --trace-max-mb or use --trace-every)",
                  file=sys.stderr)  # fmt: skip
        return p

    # ---------------------------------------------------------------------------------- terminal
    def table(self) -> str:
        """The summary as an aligned two-column table with units."""
        return summary_table(self.summary)


def _request_events(requests: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Each request as two spans on a lane of its own while it lives (lanes reused once free): waiting and
    prefill up to its first token, then decode to its last."""
    lane_free_s: list[float] = []
    events = []
    for r in sorted(requests, key=lambda r: (r.arrival_s, r.id)):
        lane = next((i for i, t in enumerate(lane_free_s) if t <= r.arrival_s), len(lane_free_s))
        if lane == len(lane_free_s):
            lane_free_s.append(0.0)
        lane_free_s[lane] = r.finish_s
        args = {"id": r.id, "prompt_tokens": r.prompt_tokens, "output_tokens": r.output_tokens}
        spans = (("queue + prefill", r.arrival_s, r.first_token_s), ("decode", r.first_token_s, r.finish_s))
        for name, t0, t1 in spans:
            events.append({"name": f"request {r.id}: {name}", "cat": "request", "ph": "X", "pid": 2, "tid": lane + 1,
                           "ts": t0 * 1e6, "dur": (t1 - t0) * 1e6, "args": args})  # fmt: skip
    return events


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
    """gpu0..gpu7 with one value -> gpu[0-7] ... per device: identical devices of a group are listed once,
    their (equal) value said to be per device."""
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
        out.append((f"{g[0]}{idx}{g[1]}", g[2] if len(nums) == 1 else f"{g[2]} per device"))
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
