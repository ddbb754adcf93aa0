"""Replay: a program that nothing can contend with, played out without the event loop.

When a program starts with nothing else in flight and nothing scheduled, no event from outside can reach
it before it ends. Its lanes, their waits on each other and its flows' fair sharing (flows.fair_rates)
can then be played out in a plain loop over the instants at which a flow or a delay ends, and the engine
waits once for the makespan: the same figures as the event loop, at a fraction of its cost per step
(expert offload writes a program per decoded token, with copies running beside the kernels).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from simcore.flows import Flow, Resource, advance, fair_rates
from simcore.ledger import Compiled, Plan, Segment

_TIE = 1e-12  # flows ending within this relative distance of the next instant end at it (float round-off)


@dataclass
class Played:
    """What a replayed program did: when it ended, each lane item's times, busy time per device group."""

    end_s: float
    steps: list[tuple[int, float, float]] = field(default_factory=list)  # (step, start, end), if kept
    busy_s: dict[tuple[str, ...], float] = field(default_factory=dict)
    items: int = 0  # steps or segments run
    flows: int = 0  # flows that ran


#: a lane item's waits and flows in order: a float is a delay, a tuple a flow's (resources, weights, rate
#: alone, bytes, cap)
Work = tuple[float | tuple[tuple[Resource, ...], tuple[float, ...], float, float, float], ...]


@dataclass(slots=True)
class _Item:
    """A lane's step or segment in progress: its waits and flows in order (`k`: the next one)."""

    first: int
    last: int
    start_s: float
    work: Work
    segment: Segment | None
    group: tuple[str, ...] | None  # the devices a kernel keeps busy (None: a transfer)
    k: int = 0


def replay(c: Compiled, start_s: float, prepare: Callable[[tuple[Plan, ...]], Work], keep: bool) -> Played:
    """Play `c` out from `start_s` with the lanes, dependencies and sharing rules of Engine._lane; `prepare`
    turns a step's or segment's plans into its work (the engine's resources: bytes carried are booked on
    them)."""
    program = c.program
    steps, costs, segments, signals = program.steps, c.costs, c.segments, program.signals
    lanes = list(program.lanes.values())
    pos = [0] * len(lanes)
    cur: list[_Item | None] = [None] * len(lanes)
    done: set[int] = set()  # signalled steps that have ended
    flows: dict[Flow, int] = {}  # running flow -> its lane
    timers: dict[int, float] = {}  # lane -> when its delay ends
    out = Played(start_s)
    t = start_s
    stale = False  # whether the flows' rates are due for recomputation before time moves
    end: dict[Flow, float] = {}  # running flow -> when it ends at its current rate
    waiters: dict[int, list[int]] = {}  # signalled step -> lanes waiting for it
    load: dict[Resource, float] = {}  # what each resource would carry with its flows at their solo rates
    throttled: set[Flow] = set()  # flows below their solo rate (none: a start or end changes no one else)

    def run(lane: int) -> None:
        """Start lane `lane`'s next work if it is free to: the next wait or flow of its item, the next item
        once its cross-lane dependencies have ended."""
        nonlocal stale
        idxs = lanes[lane]
        while True:
            item = cur[lane]
            if item is None:
                if pos[lane] >= len(idxs):
                    return
                i = idxs[pos[lane]]
                for d in steps[i].deps:
                    if d in signals and d not in done:  # woken when it ends
                        waiters.setdefault(d, []).append(lane)
                        return
                seg = segments.get(i)
                if seg is not None:
                    work, last = prepare(seg.flows), seg.steps[-1]
                    pos[lane] += len(seg.steps)
                else:
                    work, last = prepare((c.plans[i],)), i
                    pos[lane] += 1
                group = steps[i].devices if costs[i] is not None else None
                item = cur[lane] = _Item(i, last, t, work, seg, group)
            if item.k < len(item.work):
                w = item.work[item.k]
                item.k += 1
                if isinstance(w, float):
                    timers[lane] = t + w
                else:
                    path, weights, solo, nbytes, cap = w
                    f = Flow(path, nbytes, cap, None, weights, 0.0, t, 0, solo)
                    flows[f] = lane
                    out.flows += 1
                    fits = True
                    for r, x in zip(path, weights, strict=True):
                        load[r] = x = load.get(r, 0.0) + x * solo
                        fits = fits and x <= r.capacity_Bps * (1 + 1e-12)
                    if fits and not throttled:  # nothing saturates: it runs at its rate alone, nobody slows
                        f.rate_Bps = solo
                        end[f] = t + f.remaining_B / solo
                    else:  # rates are shared out again before time moves
                        stale = True
                return
            finish(lane, item)

    def finish(lane: int, item: _Item) -> None:
        cur[lane] = None
        out.items += 1
        seg, group = item.segment, item.group
        if group is not None:  # a kernel's (or a segment's) time keeps its devices busy
            out.busy_s[group] = out.busy_s.get(group, 0.0) + (t - item.start_s)
        if keep:
            if seg is None:
                out.steps.append((item.first, item.start_s, t))
            else:  # each step's share of the segment's time, in proportion to its time alone
                scale = (t - item.start_s) / (sum(seg.solo_s) or 1.0)
                s0 = item.start_s
                for j, solo in zip(seg.steps, seg.solo_s, strict=True):
                    out.steps.append((j, s0, s0 + solo * scale))
                    s0 += solo * scale
        if item.last in signals:
            done.add(item.last)
            ready.extend(waiters.pop(item.last, ()))

    ready = list(range(len(lanes)))  # lanes free to start their next work
    # flows run at their fair rates from `updated_at` (flows.FlowNetwork's bookkeeping, without events):
    # rates are recomputed only when a flow starts or ends beside others on a shared resource
    while True:
        while ready:
            run(ready.pop())
        if not flows and not timers:
            break
        if stale:
            advance(flows, t)  # the bytes moved so far at the old rates
            throttled.clear()
            for f, rate in fair_rates(flows.keys()).items():
                f.rate_Bps = rate
                end[f] = t + f.remaining_B / rate if rate > 0 else math.inf
                if rate < f.solo_Bps * (1 - 1e-12):
                    throttled.add(f)
            stale = False
        nxt = min(end.values()) if end else math.inf
        if timers:
            nxt = min(nxt, min(timers.values()))
        if math.isinf(nxt):
            raise RuntimeError(f"program {program.name!r} cannot progress: a flow has no bandwidth")
        t, limit = nxt, nxt * (1 + _TIE)
        for f in [f for f, at in end.items() if at <= limit]:
            moved = f.remaining_B  # all it had left since its last update
            f.remaining_B = 0.0
            solo = f.solo_Bps
            for r, w in zip(f.path, f.weights, strict=True):
                r.bytes_carried += moved * w
                load[r] -= w * solo
            if throttled:  # the flows it slowed may speed up
                throttled.discard(f)
                stale = True
            del end[f]
            ready.append(flows.pop(f))
        if timers:
            for lane in [lane for lane, at in timers.items() if at <= limit]:
                del timers[lane]
                ready.append(lane)
    if any(cur) or any(p < len(idxs) for p, idxs in zip(pos, lanes, strict=True)):
        raise RuntimeError(f"program {program.name!r} deadlocked: a step waits for one that never runs")
    out.end_s = t
    return out
