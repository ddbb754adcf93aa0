"""Programs: placed op sequences, immutable and reusable on any number of engines.

A Program is a value: steps (op, device group, dependencies, tensors it allocates) in a valid order and
the lanes they run on. It holds no cost, no plan and no resource of any engine — an engine compiles it
against its own resources (engine.Compiled). `replace_ops` derives the next decode step's program by
swapping only the ops that change; the derived program remembers its base so an engine recompiles only
those steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

from simcore.ops import Chain, Op, OpGraph, Tensor, Transfer

Lane = tuple[str, ...]


class Step(NamedTuple):
    """One placed op: what runs, on which device group (in lock-step), after which steps. (A named tuple:
    a program of a large model has a million of them, and they are built per design point.)"""

    op: Op
    devices: tuple[str, ...]
    deps: tuple[int, ...]
    phase: str
    allocs: tuple[Tensor, ...] = ()
    twin: int = -1  # an earlier step running an identical op on the same devices (identical layers)
    name: str = ""  # what records call it; identical layers share one op record under their own names
    #: share of its devices' SMs the kernel gets (the rest drive communication, as in Comet's fused MoE
    #: kernel): the engine prices it at max(t_sm / share, t_mem)
    sm_share: float = 1.0

    @property
    def label(self) -> str:
        return self.name or self.op.name

    @property
    def lane(self) -> Lane:
        if isinstance(self.op, Transfer):
            return ("copy", self.op.src, self.op.dst)
        return self.devices


@dataclass(frozen=True, eq=False)  # identity-hashed: engines key their compiled forms by it
class Program:
    """Placed steps in a valid order, grouped into lanes; immutable."""

    name: str
    steps: tuple[Step, ...]
    lanes: Mapping[Lane, tuple[int, ...]]
    signals: frozenset[int] = frozenset()  # steps that another lane waits for
    #: device group -> (bytes, op name) of its largest activation
    group_workspace: Mapping[tuple[str, ...], tuple[float, str]] = field(default_factory=dict)
    base: Program | None = None  # the program this one was derived from by replace_ops
    changed: tuple[int, ...] = ()  # the steps that differ from `base`
    #: run each lane's kernels between synchronisation points (a wait on another lane, a step another lane
    #: waits for, a transfer or collective) as pooled flows: a few events per segment instead of one per kernel
    coarse: bool = False

    @classmethod
    def from_graph(cls, graph: OpGraph, default_devices: tuple[str, ...] = ()) -> Program:
        """A program from a placed OpGraph (order: topological, ties by insertion sequence)."""
        import networkx as nx

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
    def compile(cls, name: str, steps: Sequence[Step], coarse: bool = False) -> Program:
        """Group steps (already in a valid order) into lanes and find the cross-lane signals."""
        lane_of = [s.lane for s in steps]
        lanes: dict[Lane, list[int]] = {}
        for i, lane in enumerate(lane_of):
            lanes.setdefault(lane, []).append(i)
        signals = frozenset(d for i, s in enumerate(steps) for d in s.deps if lane_of[d] != lane_of[i])
        workspace: dict[tuple[str, ...], tuple[float, str]] = {}
        for s in steps:
            if s.twin < 0:
                _grow_workspace(workspace, s)
        return cls(name, tuple(steps), {k: tuple(v) for k, v in lanes.items()}, signals, workspace,
                   coarse=coarse)  # fmt: skip

    def replace_ops(self, fn: Callable[[Op], Op | None], name: str | None = None,
                    only: Iterable[int] | None = None, uniform: bool = False) -> Program:  # fmt: skip
        """Same structure with the ops for which `fn` returns a new op swapped (e.g. the attention of the
        next decode step). `only` limits the steps offered to `fn`; `uniform` promises that `fn` maps
        equal ops to equal ops, so twin steps stay twins and a shared op record is swapped once."""
        steps = list(self.steps)
        workspace = dict(self.group_workspace)
        changed = []
        made: dict[int, Op | None] = {}  # id(old op) -> its replacement, with `uniform`
        size: dict[tuple[tuple[str, ...], str], float] = {}  # (group, label) of a swapped op -> its new bytes
        for i in range(len(steps)) if only is None else only:
            s = steps[i]
            if uniform:
                new = made.get(id(s.op), s)
                if new is s:
                    new = made[id(s.op)] = fn(s.op)
            else:
                new = fn(s.op)
            if new is not None:
                twin = s.twin if uniform and steps[s.twin].op is not self.steps[s.twin].op else -1
                steps[i] = Step(new, s.devices, s.deps, s.phase, s.allocs, twin, s.name, s.sm_share)
                if twin < 0:
                    size[(s.devices, s.label)] = _grow_workspace(workspace, steps[i])
                changed.append(i)
        # a group whose largest activation was a swapped op that now holds less: take its maximum again
        for group in [g for g, (old_B, holder) in self.group_workspace.items()
                      if size.get((g, holder), old_B) < old_B and workspace[g] == self.group_workspace[g]]:  # fmt: skip
            del workspace[group]
            for st in steps:
                if st.devices == group and st.twin < 0:
                    _grow_workspace(workspace, st)
        root = self.base if self.base is not None else self
        if self.base is not None:  # keep one level: changed steps relative to the root
            changed = sorted(set(changed) | set(self.changed))
        return Program(name or self.name, tuple(steps), self.lanes, self.signals, workspace, root,
                       tuple(changed), self.coarse)  # fmt: skip

    def indices_of(self, kind: str) -> list[int]:
        """Steps whose op is of `kind` (e.g. every attention of a decode step)."""
        return [i for i, s in enumerate(self.steps) if s.op.kind == kind]

    @property
    def single_lane(self) -> bool:
        return len(self.lanes) == 1

    @cached_property
    def serial(self) -> bool:
        """Each step waits for the one before it (one lane, or a chain that hands off between devices):
        nothing in it can overlap, so alone it takes the sum of its steps."""
        return self.single_lane or all(s.deps == (i - 1,) for i, s in enumerate(self.steps) if i)

    @cached_property
    def op_count(self) -> int:
        """Ops it runs, a chained step's members counted one by one (a derived program: its base's count
        and the changed steps' difference)."""
        if self.base is not None:
            old = self.base.steps
            return self.base.op_count + sum(
                _op_count(self.steps[i].op) - _op_count(old[i].op) for i in self.changed
            )
        return sum(_op_count(s.op) for s in self.steps)

    @cached_property
    def workspace(self) -> dict[str, tuple[float, str]]:
        """device -> (bytes, op name) of the largest activation, reserved while the program runs."""
        out: dict[str, tuple[float, str]] = {}
        for group, (nbytes, name) in self.group_workspace.items():
            for d in group:
                if nbytes > out.get(d, (-1.0, ""))[0]:
                    out[d] = (nbytes, name)
        return out


def _op_count(op: Op) -> int:
    return len(op.ops) if isinstance(op, Chain) else 1


_ACTIVATION_B: dict[tuple, float] = {}  # op signature -> transient bytes (identical layers share it)


def _activation_B(op: Op) -> float:
    """An op's transient bytes, cached by signature; a chain's are its largest member's (they run in turn)."""
    if isinstance(op, Chain):
        return max((_activation_B(m) for m in op.ops), default=0.0)
    sig = op.signature()
    nbytes = _ACTIVATION_B.get(sig)
    if nbytes is None:
        nbytes = _ACTIVATION_B[sig] = op.activation_bytes
    return nbytes


def _grow_workspace(workspace: dict[tuple[str, ...], tuple[float, str]], s: Step) -> float:
    """Raise `s`'s group's workspace to its activation bytes if larger; returns them (0 for a transfer)."""
    if isinstance(s.op, Transfer):
        return 0.0
    nbytes = _activation_B(s.op)
    if nbytes > workspace.get(s.devices, (-1.0, ""))[0]:
        workspace[s.devices] = (nbytes, s.label)
    return nbytes
