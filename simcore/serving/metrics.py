"""Serving figures from per-request records: latency percentiles, throughput, goodput under SLOs.

TTFT is arrival to first token; TPOT a request's mean time per output token after the first,
(finish - first token) / (output tokens - 1); ITL the gaps between consecutive tokens of a request, over
all requests (it differs from TPOT when a request's gaps are uneven, e.g. when prefills stall decodes);
e2e latency arrival to last token. A request meets its SLO when its TTFT and its TPOT are within the
targets; goodput counts those per second. A figure with no sample (no request produced a second token)
is reported as 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from simcore.config import param_field, positive


@dataclass(frozen=True)
class SLOSpec:
    """The `slo:` block of a serve scenario. The defaults are MLPerf Inference's server-scenario limits for
    Llama-2-70B (TTFT 2 s, TPOT 200 ms)."""

    ttft: float = param_field(positive("time to first token a request must meet to count toward goodput",
                                       unit="time", default=2.0))  # fmt: skip
    tpot: float = param_field(positive("mean time per output token after the first a request must meet to "
                                       "count toward goodput", unit="time", default=0.2))  # fmt: skip


class RequestRecord(NamedTuple):
    """What happened to one served request (times in seconds of simulated time)."""

    id: int
    arrival_s: float
    first_token_s: float
    finish_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_hit_tokens: int
    preemptions: int

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        n = self.output_tokens - 1
        return (self.finish_s - self.first_token_s) / n if n > 0 else None

    @property
    def e2e_s(self) -> float:
        return self.finish_s - self.arrival_s


def _stats(name: str, values: Sequence[float] | np.ndarray) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return {f"{name}_mean_s": 0.0, f"{name}_p50_s": 0.0, f"{name}_p90_s": 0.0, f"{name}_p99_s": 0.0}
    p50, p90, p99 = np.percentile(a, (50, 90, 99))
    return {f"{name}_mean_s": float(a.mean()), f"{name}_p50_s": float(p50), f"{name}_p90_s": float(p90),
            f"{name}_p99_s": float(p99)}  # fmt: skip


def mean_in_system(records: Sequence[RequestRecord], start_s: float, end_s: float) -> float:
    """Time-average number of requests between arrival and last token over [start_s, end_s]: the
    integral of the in-system count (a step function over the records' events) over the span."""
    if end_s <= start_s or not records:
        return 0.0
    times = np.array([r.arrival_s for r in records] + [r.finish_s for r in records])
    steps = np.array([1] * len(records) + [-1] * len(records))
    order = np.lexsort((-steps, times))  # at equal times, arrivals first (a zero-length stay adds nothing)
    times, level = times[order], np.cumsum(steps[order])
    return float(np.sum(level[:-1] * np.diff(times)) / (end_s - start_s))


def summarize(records: Sequence[RequestRecord], gaps: Sequence[float], start_s: float, end_s: float,
              slo: SLOSpec) -> dict[str, Any]:  # fmt: skip
    """The serving figures of a run whose requests arrived from `start_s` and were served by `end_s`."""
    span = max(end_s - start_s, 0.0)
    out_tokens = sum(r.output_tokens for r in records)
    tpots = [t for t in (r.tpot_s for r in records) if t is not None]
    good = sum(1 for r in records if r.ttft_s <= slo.ttft and (r.tpot_s is None or r.tpot_s <= slo.tpot))
    prompt = sum(r.prompt_tokens for r in records)

    def per_s(x: float) -> float:
        return x / span if span > 0 else 0.0

    out: dict[str, Any] = {
        "requests": len(records),
        "output_tokens": out_tokens,
        "prompt_tokens": prompt,
        "throughput_tokens_per_s": per_s(out_tokens),
        "requests_per_s": per_s(len(records)),
        "goodput_requests_per_s": per_s(good),
        "slo_met_fraction": good / len(records) if records else 0.0,
        "slo_ttft_s": slo.ttft,
        "slo_tpot_s": slo.tpot,
    }
    out.update(_stats("ttft", [r.ttft_s for r in records]))
    out.update(_stats("tpot", tpots))
    out.update(_stats("itl", gaps))
    out["itl_max_s"] = float(max(gaps, default=0.0))
    out.update(_stats("e2e", [r.e2e_s for r in records]))
    out["mean_requests_in_system"] = mean_in_system(records, start_s, end_s)
    return out
