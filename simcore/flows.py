"""Flow-level sharing of links and memories: max-min fair rates, recomputed when a flow starts or ends.

A flow moves `nbytes` over a path of resources (link directions, memory ports, a device's compute) at one
rate, optionally capped (an op that needs only part of its memory's bandwidth). Each unit of a flow may
use a different amount of each resource on its path (`weights`: a kernel's unit is a byte of DRAM
traffic and takes duration/bytes seconds of its device's compute). One SimPy timeout per flow; the rates
of the flows that share a resource with a starting or ending flow are recomputed by progressive filling,
once per instant however many flows start or end in it (no time passes in between, so nothing moves at a
stale rate).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

import simpy

_EPS_B = 1e-6  # bytes left that count as done (float round-off)


@dataclass(eq=False, slots=True)
class Resource:
    """A shared bandwidth: one direction of a link, or a device memory's port."""

    name: str
    capacity_Bps: float
    kind: str = "link"
    flows: set[Flow] = field(default_factory=set)
    bytes_carried: float = 0.0
    busy_s: float = 0.0  # time with at least one flow
    _busy_since: float = -1.0


@dataclass(eq=False, slots=True)
class Flow:
    path: tuple[Resource, ...]
    remaining_B: float
    cap_Bps: float
    done: simpy.Event | None  # None: a flow of a program replayed off the event loop (engine)
    weights: tuple[float, ...]  # use of each resource of `path` per unit moved
    rate_Bps: float = 0.0
    updated_at: float = 0.0
    generation: int = 0
    solo_Bps: float = 0.0  # its rate alone: its cap or its tightest resource


def solo_rate(path: tuple[Resource, ...], weights: tuple[float, ...], cap_Bps: float = math.inf) -> float:
    """A flow's rate alone: its cap or its tightest resource, a resource it crosses twice (a copy between
    two devices on one memory reads and writes that memory) counted with both uses."""
    use: dict[Resource, float] = {}
    for r, w in zip(path, weights, strict=True):
        use[r] = use.get(r, 0.0) + w
    return min(cap_Bps, min(r.capacity_Bps / w for r, w in use.items()))


def advance(flows: Iterable[Flow], now: float) -> None:
    """Move `flows` on to `now` at their current rates, booking the bytes on their resources."""
    for f in flows:
        moved = f.rate_Bps * (now - f.updated_at)
        if moved:
            f.remaining_B -= moved
            for r, w in zip(f.path, f.weights, strict=True):
                r.bytes_carried += moved * w
        f.updated_at = now


def fair_rates(flows: Collection[Flow]) -> dict[Flow, float]:
    """Max-min fair rates of `flows` by progressive filling: raise all unfrozen rates together until a
    resource or a cap saturates. `flows` must be closed (every flow on their resources is in it); where
    nothing saturates (the common case) each gets its solo rate without filling."""
    if len(flows) == 1:
        return {f: f.solo_Bps for f in flows}
    load: dict[Resource, float] = {}  # what each resource would carry with every flow at its solo rate
    for f in flows:
        for r, w in zip(f.path, f.weights, strict=True):
            load[r] = load.get(r, 0.0) + w * f.solo_Bps
    if all(x <= r.capacity_Bps * (1 + 1e-12) for r, x in load.items()):
        return {f: f.solo_Bps for f in flows}
    users: dict[Resource, float] = {}  # weight of the unfrozen flows on each resource
    for f in flows:
        for r, w in zip(f.path, f.weights, strict=True):
            users[r] = users.get(r, 0.0) + w
    left = {r: r.capacity_Bps for r in users}
    rate = dict.fromkeys(flows, 0.0)
    unfrozen = set(flows)
    while unfrozen:
        inc = min(left[r] / n for r, n in users.items() if n > 0)
        for f in unfrozen:
            inc = min(inc, f.cap_Bps - rate[f])
        for f in unfrozen:
            rate[f] += inc
        for r, n in users.items():
            if n > 0:
                left[r] -= inc * n
        frozen = [f for f in unfrozen if rate[f] >= f.cap_Bps * (1 - 1e-12)
                  or any(left[r] <= r.capacity_Bps * 1e-12 for r in f.path)]  # fmt: skip
        for f in frozen:
            unfrozen.discard(f)
            for r, w in zip(f.path, f.weights, strict=True):
                users[r] -= w
                if users[r] < 1e-12 * w:
                    users[r] = 0.0
    return rate


class FlowNetwork:
    """All active flows of one simulation and the rates they get."""

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self.active: set[Flow] = set()
        self.timeouts = 0
        #: resources whose flows' rates are due for recomputation at the end of this instant: flows that
        #: start or end at one instant (an all-to-all's transfers) are reallocated together, once
        self._dirty: set[Resource] = set()
        self._touched_at = -1.0  # the instant of the last immediate reallocation

    def start(self, path: tuple[Resource, ...], nbytes: float, cap_Bps: float = math.inf,
              weights: tuple[float, ...] = ()) -> simpy.Event:  # fmt: skip
        """Begin moving `nbytes` over `path` (each unit using `weights[i]` of resource i, default 1); the
        returned event fires when the last byte arrives."""
        done = self.env.event()
        if nbytes <= 0:
            done.succeed()
            return done
        now = self.env.now
        flow = Flow(path, nbytes, cap_Bps, done, weights or (1.0,) * len(path), updated_at=now)
        flow.solo_Bps = solo_rate(path, flow.weights, cap_Bps)
        for r in path:
            if not r.flows:
                r._busy_since = now
            r.flows.add(flow)
        self.active.add(flow)
        if all(len(r.flows) == 1 for r in path):  # alone: no one else's rate changes
            flow.rate_Bps = flow.solo_Bps
            self._schedule(flow)
        else:
            self._touch(path)
        return done

    # ------------------------------------------------------------------------------------ internals
    def _touch(self, path: tuple[Resource, ...]) -> None:
        """Reallocate the flows on `path`'s resources: at once for the first start or end of an instant (most
        instants have one), else once more when the instant's other starts and ends are in."""
        now = self.env.now
        if now != self._touched_at:
            self._touched_at = now
            self._reallocate(self._component(*{f for r in path for f in r.flows}))
            return
        if not self._dirty:
            flush = self.env.timeout(0)
            flush.callbacks.append(self._flush)
        self._dirty.update(path)

    def _flush(self, _ev: simpy.Event) -> None:
        seeds = {f for r in self._dirty for f in r.flows}
        self._dirty.clear()
        if seeds:
            self._reallocate(self._component(*seeds))

    def _component(self, *flows: Flow) -> set[Flow]:
        """Flows transitively sharing a resource with `flows` (only their rates can change)."""
        seen, todo = set(flows), list(flows)
        while todo:
            f = todo.pop()
            for r in f.path:
                for g in r.flows:
                    if g not in seen:
                        seen.add(g)
                        todo.append(g)
        return seen

    def _advance(self, flows: set[Flow]) -> None:
        advance(flows, self.env.now)

    def _reallocate(self, flows: set[Flow]) -> None:
        """New fair rates for `flows`, a closed component (every flow on its resources is in it)."""
        self._advance(flows)
        rates = fair_rates(flows)
        for f in flows:
            rate = rates[f]
            if f.rate_Bps != rate or f.generation == 0:
                f.rate_Bps = rate
                self._schedule(f)

    def _schedule(self, flow: Flow) -> None:
        flow.generation += 1
        gen = flow.generation
        delay = max(flow.remaining_B, 0.0) / flow.rate_Bps if flow.rate_Bps > 0 else math.inf
        if math.isinf(delay):
            return
        self.timeouts += 1
        t = self.env.timeout(delay)
        t.callbacks.append(lambda _ev, f=flow, g=gen: self._maybe_finish(f, g))

    def _maybe_finish(self, flow: Flow, generation: int) -> None:
        if generation != flow.generation or flow not in self.active:
            return  # superseded by a later rate change
        now = self.env.now
        self._advance({flow})
        flow.remaining_B = 0.0
        self.active.discard(flow)
        for r in flow.path:
            r.flows.discard(flow)
            if not r.flows:
                r.busy_s += now - r._busy_since
        assert flow.done is not None
        flow.done.succeed()
        if any(r.flows for r in flow.path):  # the flows left beside it may speed up
            self._touch(flow.path)
