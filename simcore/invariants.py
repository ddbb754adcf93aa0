"""Invariants every finished run must satisfy; a violation is a bug, raised as InternalError in one line.

`check_result` runs at the end of every scenario (`scenarios.base.account`). It is cheap: it walks the
summary (a few figures per device and resource) and the ledger's aggregates (per resource, per device,
per distinct cost), never the per-op records. `check_records` checks those records too, for tests and
debugging (`Ledger.check_records`, `Result.check(records=True)`).

What holds:
- every number in the summary is finite and non-negative: times, rates, FLOP and action counts, bytes,
  joules (fractions may undershoot 0 by rounding, within SLACK);
- every utilization and other fraction is at most 1 (+ SLACK);
- `latency_s` > 0;
- `energy_j` equals the sum of `energy_by_component_j` (relative ENERGY_REL);
- each device's peak memory is within its memory's capacity (an allocation that does not fit ends the run
  earlier, as OutOfMemory);
- the ledger's clock, busy seconds, bytes carried, DMA bytes and every distinct op cost's duration, DRAM
  bytes and action counts (FLOPs, MACs, bytes) are finite and non-negative.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from simcore.errors import InternalError

#: slack on fractions (utilization <= 1 + SLACK) and on capacities (relative)
SLACK = 1e-9
#: relative tolerance of energy_j against the sum of its components
ENERGY_REL = 1e-9
#: numeric fields of a per-op record that must be finite and non-negative
RECORD_FIELDS = ("start_s", "end_s", "duration_s", "flops", "bytes", "energy_j")


def _broken(figure: str, value: Any, why: str) -> InternalError:
    return InternalError(
        f"internal error: {figure} = {value!r} {why} (a bug in the simulator, please report it)"
    )


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_fraction(path: str) -> bool:
    return path.startswith("utilization.") or path.endswith("_fraction")


def _walk(summary: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, float]]:
    for k, v in summary.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping):
            yield from _walk(v, path + ".")
        elif _is_number(v):
            yield path, v


def check_figure(figure: str, value: float, fraction: bool = False) -> None:
    """One figure: finite and non-negative; a fraction also at most 1 (both within SLACK)."""
    if not math.isfinite(value):
        raise _broken(figure, value, "is not finite")
    if value < (-SLACK if fraction else 0.0):
        raise _broken(figure, value, "is negative")
    if fraction and value > 1.0 + SLACK:
        raise _broken(figure, value, "is above 1")


def check_result(summary: Mapping[str, Any], ledger: Any = None) -> None:
    """Raise InternalError naming the first figure of a finished run that breaks an invariant; `ledger`
    (a simcore.ledger.Ledger, not imported: the ledger imports this module) adds its aggregates."""
    for path, v in _walk(summary):
        check_figure(path, v, _is_fraction(path))
    latency = summary.get("latency_s")
    if latency is None:
        raise _broken("latency_s", None, "is missing from the summary")
    if not latency > 0:
        raise _broken("latency_s", latency, "is not positive")
    parts = summary.get("energy_by_component_j")
    if "energy_j" in summary and parts is not None:
        total, added = summary["energy_j"], math.fsum(parts.values())
        if not math.isclose(total, added, rel_tol=ENERGY_REL, abs_tol=1e-300):
            raise _broken("energy_j", total, f"is not the sum of energy_by_component_j ({added!r})")
    if ledger is not None:
        _check_ledger(ledger, {**ledger.peak_B, **(summary.get("peak_memory_B") or {})})


def _check_ledger(ledger: Any, peak_B: Mapping[str, float]) -> None:
    check_figure("ledger.now_s", ledger.now_s)
    system = ledger.system
    for dev, peak in peak_B.items():
        check_figure(f"peak_memory_B.{dev}", peak)
        port = system.memory_of(dev) if dev in system.devices else None
        cap = port.capacity_B if port is not None else 0.0
        if peak > cap * (1.0 + SLACK):
            raise _broken(f"peak_memory_B.{dev}", peak, f"exceeds the device's memory capacity ({cap!r} B)")
    for dev, t in ledger.busy_s.items():
        check_figure(f"ledger.busy_s.{dev}", t)
    for dev, nbytes in ledger.dma_bytes.items():
        check_figure(f"ledger.dma_bytes.{dev}", nbytes)
    for r in ledger.resources:
        check_figure(f"ledger.bytes_carried.{r.label}", r.bytes_carried)
    for (devices, cost), count in ledger.costs.items():  # one entry per distinct (group, cost), not per op
        where = f"cost of an op on {','.join(devices)}"
        check_figure(f"{where}: count", count)
        check_figure(f"{where}: duration_s", cost.duration_s)
        check_figure(f"{where}: dram_bytes", cost.dram_bytes)
        for action, n in cost.actions.items():
            check_figure(f"{where}: {action}", n)


def check_records(records: Iterable[Mapping[str, Any]], end_s: float | None = None) -> int:
    """Per-op records: numbers finite and non-negative, end = start + duration, within the run's `end_s`.
    O(ops): for tests and debugging, not run on every simulation. Returns how many records it checked."""
    n = 0
    for n, r in enumerate(records, 1):
        name = f"record {n - 1} ({r.get('name')!r})"
        for f in RECORD_FIELDS:
            check_figure(f"{name}.{f}", r[f])
        if r["end_s"] < r["start_s"]:
            raise _broken(f"{name}.end_s", r["end_s"], f"is before its start_s ({r['start_s']!r})")
        if end_s is not None and r["end_s"] > end_s * (1.0 + SLACK) + SLACK:
            raise _broken(f"{name}.end_s", r["end_s"], f"is after the run's end ({end_s!r} s)")
    return n
