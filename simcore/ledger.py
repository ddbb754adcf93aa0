"""The ledger: what ran, when, and what it cost — per-op records and per-resource tallies of a run.

The engine writes it as programs finish; a Result keeps it (a record: no engine, no SimPy). Per-op
records are exact, not sampled: a program that ran alone is stored as its start time and its compiled
step durations, and its records are laid out from them on demand.

Energy of an op (`energy_j` in the records) means one thing everywhere: the dynamic energy of the
actions it causes on every device of its group (compute, on-chip and DRAM traffic), priced by each
device's energy per action. Transfers cost the DRAM bytes they read and write at both ends; link bits
and static power are booked per component for the whole run, never to an op. A record's `power_w` is the
draw of its devices while it ran: its dynamic joules over its duration plus their idle and active power (a
transfer: its DRAM joules over its duration).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from hardware.links import link_energy_per_bit_J
from simcore.component import OpCost
from simcore.energy import energy_breakdown
from simcore.invariants import check_records
from simcore.ops import Chain, Transfer
from simcore.program import Program, Step
from simcore.system import System


def _is_decode(prog: Program) -> bool:
    """A program of the decode phase (its name, or its steps' phase, says so)."""
    if prog.name.endswith("decode"):
        return True
    return bool(prog.steps) and prog.steps[0].phase == "decode"


@dataclass(frozen=True, slots=True)
class Plan:
    """A step's use of shared resources: wait `delay_s`, then move `nbytes` over `path` at <= `cap_Bps`,
    each unit using `weights[i]` of resource i (empty: 1 each). `path` holds resource names (a plan is a
    value, valid on any engine of the same system)."""

    delay_s: float
    path: tuple[str, ...]
    nbytes: float
    cap_Bps: float
    solo_s: float  # duration when nothing else shares the path: delay + units at the rate the path allows
    weights: tuple[float, ...] = ()

    @classmethod
    def make(cls, delay_s: float, path: tuple[str, ...], nbytes: float, cap_Bps: float,
             capacity_Bps: Mapping[str, float], weights: tuple[float, ...] = ()) -> Plan:  # fmt: skip
        rate = cls.rate(path, cap_Bps, capacity_Bps, weights)
        return cls(delay_s, path, nbytes, cap_Bps, delay_s + (nbytes / rate if path else 0.0), weights)

    @staticmethod
    def rate(path: tuple[str, ...], cap_Bps: float, capacity_Bps: Mapping[str, float],
             weights: tuple[float, ...] = ()) -> float:  # fmt: skip
        """Units per second over `path` alone: the cap or the tightest resource."""
        use: dict[str, float] = {}  # a resource crossed twice (a copy within one memory) counts both uses
        for r, x in zip(path, weights or (1.0,) * len(path), strict=True):
            use[r] = use.get(r, 0.0) + x
        return min([cap_Bps] + [capacity_Bps[r] / x for r, x in use.items()])


@dataclass(frozen=True, slots=True)
class Segment:
    """Consecutive kernels of one lane of a coarse program, run as pooled flows (engine.pool): `steps` in
    order, `flows` their plans, `solo_s` each step's duration alone (their records are laid out in
    proportion to it)."""

    steps: tuple[int, ...]
    flows: tuple[Plan, ...]
    solo_s: tuple[float, ...]


@dataclass
class Tally:
    """How often each (device group, cost) occurs, the bytes each resource path carries, and the DMA bytes
    read or written per device memory, for one run of a program."""

    costs: Counter[tuple[tuple[str, ...], OpCost]] = field(default_factory=Counter)
    path_bytes: Counter[tuple[tuple[str, ...], tuple[float, ...]]] = field(default_factory=Counter)
    dma_bytes: Counter[str] = field(default_factory=Counter)
    busy: Counter[tuple[str, ...]] = field(default_factory=Counter)  # solo seconds per compute lane

    def add(self, step: Step, cost: OpCost | None, plan: Plan, sign: int = 1) -> None:
        if cost is not None:
            self.costs[(step.devices, cost)] += sign
            self.busy[step.devices] += sign * plan.solo_s
        else:  # a transfer: read at the source, written at the destination
            op: Transfer = step.op  # type: ignore[assignment]
            self.dma_bytes[op.src] += sign * op.nbytes
            self.dma_bytes[op.dst] += sign * op.nbytes
        if plan.path:
            self.path_bytes[(plan.path, plan.weights)] += sign * plan.nbytes

    def copy(self) -> Tally:
        return Tally(
            Counter(self.costs), Counter(self.path_bytes), Counter(self.dma_bytes), Counter(self.busy)
        )


@dataclass(frozen=True, eq=False)
class Compiled:
    """A program's costs, plans and tally on one system; `solo_s` is its duration when it runs alone."""

    program: Program
    costs: list[OpCost | None]
    plans: list[Plan]
    tally: Tally
    solo_s: float
    allocs: tuple[tuple[str, str, float], ...]  # (device, tensor, bytes) the program makes resident
    #: a coarse program's pooled kernel runs, by their first step
    segments: Mapping[int, Segment] = field(default_factory=dict)


@dataclass
class RunRecord:
    """One program run: when it started and ended; per-step times if it shared the machine."""

    compiled: Compiled
    start_s: float
    end_s: float
    solo: bool
    steps: list[tuple[int, float, float]] = field(default_factory=list)  # (step, start, end), contended runs


@dataclass
class ResourceTally:
    """Bytes one shared resource carried; `label` names it in the utilization figures."""

    label: str
    capacity_Bps: float
    bytes_carried: float
    link: Any = None  # the Link, for a link direction


@dataclass
class Ledger:
    """Everything a finished simulation booked, without the engine that booked it."""

    system: System
    now_s: float
    runs: list[RunRecord]
    costs: Counter[tuple[tuple[str, ...], OpCost]]
    dma_bytes: Counter[str]
    busy_s: Counter[str]
    resources: list[ResourceTally]
    peak_B: dict[str, float]
    events: int
    ops: int
    _epa_cache: dict[str, Mapping[str, float]] = field(default_factory=dict, repr=False)
    _base_cache: dict[tuple[str, ...], float] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------------------------- energy
    def _epa(self, device: str) -> Mapping[str, float]:
        epa = self._epa_cache.get(device)
        if epa is None:
            epa = self._epa_cache[device] = self.system.devices[device].energy_per_action_J()
        return epa

    def op_energy_J(self, device: str, cost: OpCost) -> dict[str, float]:
        """Dynamic joules per action of one op on one device (actions the device has no price for cost 0)."""
        return dict(energy_breakdown(cost.actions, self._epa(device)).by_action_J)

    def energy_breakdown_J(self) -> dict[str, dict[str, float]]:
        """Joules per component and action: op actions × energy per action, DMA bytes, link bits, static
        (idle power × the run's time) and active (active power × the device's busy time)."""
        out: dict[str, Counter[str]] = {}
        for (devices, cost), count in self.costs.items():
            for dev in devices:
                acc = out.setdefault(dev, Counter())
                for action, j in self.op_energy_J(dev, cost).items():
                    acc[action] += j * count
        for dev, nbytes in self.dma_bytes.items():
            j = self._epa(dev).get("dram.byte", 0.0)
            if j:
                out.setdefault(dev, Counter())["dram.byte"] += nbytes * j
        for r in self.resources:
            if r.link is not None and r.bytes_carried:
                link = r.link
                name = f"{link.type}:{min(link.a, link.b)}-{max(link.a, link.b)}"
                out.setdefault(name, Counter())["link.bit"] += (
                    r.bytes_carried * 8 * link_energy_per_bit_J(link)
                )
        for dev, comp in self.system.devices.items():
            if comp.static_power_W:
                out.setdefault(dev, Counter())["static"] += comp.static_power_W * self.now_s
            if comp.active_power_W and self.busy_s[dev]:
                out.setdefault(dev, Counter())["active"] += comp.active_power_W * self.busy_s[dev]
        return {k: dict(v) for k, v in out.items()}

    def flops_by_device(self) -> Counter[str]:
        """FLOPs each device executed: its ops' `flop.*` actions plus two per `mac.*` (actions are per
        device of an op's group)."""
        per_cost: dict[int, float] = {}
        out: Counter[str] = Counter()
        for (devices, cost), count in self.costs.items():
            f = per_cost.get(id(cost))
            if f is None:
                f = per_cost[id(cost)] = sum(
                    v * (2.0 if a.startswith("mac.") else 1.0)
                    for a, v in cost.actions.items()
                    if a.startswith(("flop.", "mac."))
                )
            if f:
                for dev in devices:
                    out[dev] += f * count
        return out

    def utilization(self, dtype: str | None = None) -> dict[str, float]:
        """Fractions of the run's time, per device and resource:
        `<dev>.busy` — time its compute lane had a kernel (100 % on memory-bound decode: busy, not MFU);
        `<dev>.mfu` — achieved FLOP/s / its spec dense peak in `dtype` (model FLOPs utilization);
        `<dev>.memory_bw_of_peak` — bytes its memory carried / (spec peak bandwidth × time);
        `<dev>.memory_bw_of_achievable` — the same against the achievable (efficiency-scaled) bandwidth;
        links (`<type>:<a>-><b>`) — bytes carried / (link rate × time), once used."""
        t = self.now_s or math.inf
        util = {f"{d}.busy": self.busy_s[d] / t for d in self.system.devices if self.busy_s[d]}
        if dtype:
            for dev, flops in self.flops_by_device().items():
                peak = self.system.devices[dev].dense_peak_flops(dtype)
                if peak:
                    util[f"{dev}.mfu"] = flops / (peak * t)
        for r in self.resources:
            if r.link is None and r.label.endswith(".memory_bw"):  # a memory port (its reads)
                owner = r.label.removesuffix(".memory_bw")
                comp = self.system.devices.get(owner)
                peak_bw = comp.peak_memory_bandwidth_Bps if comp is not None else 0.0
                if peak_bw:
                    util[f"{owner}.memory_bw_of_peak"] = r.bytes_carried / (peak_bw * t)
                util[f"{owner}.memory_bw_of_achievable"] = r.bytes_carried / (r.capacity_Bps * t)
            elif r.link is None or r.bytes_carried:  # a separate write port (storage); links once used
                util[r.label] = r.bytes_carried / (r.capacity_Bps * t)
        return util

    # ------------------------------------------------------------------------------------ records
    def check_records(self) -> int:
        """Check every per-op record (simcore.invariants.check_records; O(ops), for tests); InternalError
        names the first broken figure. Returns the number of records."""
        return check_records(self.records(), self.now_s)

    def records(self, every: int = 1) -> Iterator[dict[str, Any]]:
        """One dict per executed op or transfer, in execution order. With `every` N > 1, only the records
        of every Nth decode program (the 1st, N+1th, ...) and of every other program (prefill) are laid out;
        `program` in a record is always the run's index among all runs."""
        energy: dict[int, float] = {}
        decode_seen = 0
        for pid, run in enumerate(self.runs):
            c = run.compiled
            prog = c.program
            if every > 1 and _is_decode(prog):
                decode_seen += 1
                if (decode_seen - 1) % every:
                    continue
            if run.solo:
                t = run.start_s
                times = []
                for i, plan in enumerate(c.plans):
                    times.append((i, t, t + plan.solo_s))
                    t += plan.solo_s
            else:
                times = run.steps
            for i, t0, t1 in times:
                step, cost = prog.steps[i], c.costs[i]
                if isinstance(step.op, Chain) and cost is not None:  # members, in proportion to their times
                    parts: tuple[OpCost, ...] = cost.detail["parts"]
                    scale = (t1 - t0) / (cost.duration_s or 1.0)
                    for op, name, part in zip(step.op.ops, step.op.labels, parts, strict=True):
                        end = t0 + part.duration_s * scale
                        yield self._record(pid, prog, step._replace(op=op, name=name), part, t0, end, energy)
                        t0 = end
                else:
                    yield self._record(pid, prog, step, cost, t0, t1, energy)

    def _record(self, pid: int, prog: Program, step: Step, cost: OpCost | None, t0: float, t1: float,
                energy: dict[int, float]) -> dict[str, Any]:  # fmt: skip
        op = step.op
        if cost is not None:
            if id(cost) not in energy:
                energy[id(cost)] = sum(sum(self.op_energy_J(d, cost).values()) for d in step.devices)
            e = energy[id(cost)]
            base_W = self._base_W(step.devices)
        else:
            e = sum(op.nbytes * self._epa(d).get("dram.byte", 0.0) for d in (op.src, op.dst))
            base_W = 0.0
        return {
            "name": step.label, "kind": op.kind, "phase": step.phase or prog.name, "program": pid,
            "devices": ",".join(step.lane if isinstance(op, Transfer) else step.devices),
            "start_s": t0, "end_s": t1, "duration_s": t1 - t0, "flops": op.flops, "bytes": op.bytes,
            "bound": cost.bound if cost else "transfer", "dtype": op.dtype, "energy_j": e,
            "power_w": (e / (t1 - t0) if t1 > t0 else 0.0) + base_W,
        }  # fmt: skip

    def _base_W(self, devices: tuple[str, ...]) -> float:
        """Idle plus active power of `devices` while a kernel runs on them (what a record's power adds to
        its dynamic joules per second)."""
        w = self._base_cache.get(devices)
        if w is None:
            w = self._base_cache[devices] = sum(
                self.system.devices[d].static_power_W + self.system.devices[d].active_power_W for d in devices
            )
        return w
