"""Programs: placed op graphs in topological order, compiled once and run many times by the engine.

A Program keeps per-step costs and resource plans once computed; `replace_ops` derives the next decode
step's program by swapping only the ops that change, and tallies (cost counts, bytes per path) are
derived from the base program's the same way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import networkx as nx

from simcore.component import OpCost
from simcore.flows import Resource
from simcore.ops import Op, OpGraph, Tensor, Transfer


@dataclass(frozen=True, slots=True)
class Step:
    """One placed op: what runs, on which device group (in lock-step), after which steps."""

    op: Op
    devices: tuple[str, ...]
    deps: tuple[int, ...]
    phase: str
    allocs: tuple[Tensor, ...] = ()

    @property
    def lane(self) -> tuple[str, ...]:
        if isinstance(self.op, Transfer):
            return ("copy", self.op.src, self.op.dst)
        return self.devices


@dataclass
class Program:
    """A placed graph in topological order, compiled once and runnable many times."""

    name: str
    steps: list[Step]
    lanes: dict[tuple[str, ...], list[int]] = field(default_factory=dict)
    signals: frozenset[int] = frozenset()  # steps that another lane waits for
    costs: list[OpCost | None] = field(default_factory=list)  # filled by the engine, kept by replace_ops
    plans: list[Plan | None] = field(default_factory=list)
    #: device -> (bytes, op name) of the largest activation; computed once, updated by replace_ops
    workspace: dict[str, tuple[float, str]] = field(default_factory=dict)
    base: Program | None = None  # the program this one was derived from by replace_ops
    changed: tuple[int, ...] = ()  # the steps that differ from `base`
    _tally: Tally | None = None

    def __post_init__(self) -> None:
        if not self.workspace:
            for s in self.steps:
                self._grow_workspace(s)

    def _grow_workspace(self, s: Step) -> None:
        if isinstance(s.op, Transfer):
            return
        nbytes = s.op.activation_bytes
        for d in s.devices:
            if nbytes > self.workspace.get(d, (-1.0, ""))[0]:
                self.workspace[d] = (nbytes, s.op.name)

    @classmethod
    def from_graph(cls, graph: OpGraph, default_devices: tuple[str, ...] = ()) -> Program:
        g = graph.g
        order = list(nx.lexicographical_topological_sort(g, key=lambda n: g.nodes[n].get("seq", 0)))
        index = {n: i for i, n in enumerate(order)}
        steps = []
        for n in order:
            d = g.nodes[n]
            devices = d["devices"] or default_devices
            deps = tuple(sorted(index[p] for p in g.predecessors(n)))
            steps.append(Step(d["op"], tuple(devices), deps, d.get("phase", ""), tuple(d.get("allocs", ()))))
        return cls.compile(graph.name, steps)

    @classmethod
    def compile(cls, name: str, steps: list[Step]) -> Program:
        lanes: dict[tuple[str, ...], list[int]] = {}
        for i, s in enumerate(steps):
            lanes.setdefault(s.lane, []).append(i)
        signals = {d for s in steps for d in s.deps if steps[d].lane != s.lane}
        return cls(name, steps, lanes, frozenset(signals), [None] * len(steps), [None] * len(steps))

    def replace_ops(self, fn: Callable[[Op], Op | None], name: str | None = None,
                    only: Iterable[int] | None = None) -> Program:  # fmt: skip
        """Same structure with the ops for which `fn` returns a new op swapped (e.g. the attention of the
        next decode step); costs of untouched steps are kept. `only` limits the steps offered to `fn`."""
        steps, costs, plans = list(self.steps), list(self.costs), list(self.plans)
        prog = Program(
            name or self.name, steps, self.lanes, self.signals, costs, plans, dict(self.workspace), self
        )
        changed = []
        for i in range(len(steps)) if only is None else only:
            s = steps[i]
            new = fn(s.op)
            if new is not None:
                steps[i] = Step(new, s.devices, s.deps, s.phase, s.allocs)
                costs[i] = plans[i] = None
                prog._grow_workspace(steps[i])
                changed.append(i)
        prog.changed = tuple(changed)
        return prog

    def indices_of(self, kind: str) -> list[int]:
        """Steps whose op is of `kind` (e.g. every attention of a decode step)."""
        return [i for i, s in enumerate(self.steps) if s.op.kind == kind]

    def tally(self) -> Tally:
        """How often each (device group, cost) occurs and the bytes each resource path carries, for one
        run; derived programs reuse their base's tally and adjust only the steps that changed."""
        if self._tally is None:
            t = Tally()
            if self.base is not None and self.base.costs[0] is not None:
                b = self.base.tally()
                t.costs.update(b.costs)
                t.path_bytes.update(b.path_bytes)
                for i in self.changed:
                    t.remove(self.base.steps[i], self.base.costs[i], self.base.plans[i])
                    t.add(self.steps[i], self.costs[i], self.plans[i])
            else:
                for s, c, p in zip(self.steps, self.costs, self.plans, strict=True):
                    t.add(s, c, p)
            self._tally = t
        return self._tally


@dataclass
class Tally:
    costs: Counter[tuple[tuple[str, ...], OpCost]] = field(default_factory=Counter)
    path_bytes: Counter[tuple[Resource, ...]] = field(default_factory=Counter)

    def add(self, step: Step, cost: OpCost | None, plan: Plan | None, sign: int = 1) -> None:
        if cost is not None:
            self.costs[(step.devices, cost)] += sign
        if plan is not None and plan.path:
            self.path_bytes[plan.path] += sign * plan.nbytes

    def remove(self, step: Step, cost: OpCost | None, plan: Plan | None) -> None:
        self.add(step, cost, plan, -1)


@dataclass(frozen=True, slots=True)
class Plan:
    """A step's use of shared resources: wait `delay_s`, then move `nbytes` over `path` at <= `cap_Bps`."""

    delay_s: float
    path: tuple[Resource, ...]
    nbytes: float
    cap_Bps: float
    solo_s: (
        float  # duration when nothing else shares the path: delay + bytes at the lesser of cap and capacity
    )

    @classmethod
    def make(cls, delay_s: float, path: tuple[Resource, ...], nbytes: float, cap_Bps: float) -> Plan:
        rate = min([cap_Bps] + [r.capacity_Bps for r in path])
        return cls(delay_s, path, nbytes, cap_Bps, delay_s + (nbytes / rate if path else 0.0))
