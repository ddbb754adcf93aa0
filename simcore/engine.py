"""The SimPy engine: runs placed op graphs with one event per op or transfer.

Ops on the same device group run in program order on that group's compute lane; transfers run on copy
lanes; a step waits only for its dependencies on other lanes. Every op and transfer is a flow over the
memories and links it uses, so concurrent work shares bandwidth (flows.py). Memory capacity is tracked
per device; a tensor that does not fit raises OutOfMemory naming tensor, device, needed and free bytes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import simpy

from simcore.component import Component, OpCost
from simcore.errors import OutOfMemory
from simcore.flows import FlowNetwork, Resource
from simcore.ops import AllReduce, Collective, Transfer
from simcore.program import Plan, Program, Step
from simcore.system import System


@dataclass
class Trace:
    """Columnar per-op records: cheap to append a million of."""

    programs: list[Program] = field(default_factory=list)
    prog: list[int] = field(default_factory=list)
    step: list[int] = field(default_factory=list)
    start: list[float] = field(default_factory=list)
    end: list[float] = field(default_factory=list)


class Engine:
    """Runs programs on a System; accumulates time, energy counts, memory and utilization."""

    def __init__(self, system: System, keep_records: bool = True) -> None:
        self.system = system
        self.env = simpy.Environment()
        self.net = FlowNetwork(self.env)
        self.keep_records = keep_records
        self.trace = Trace()
        self.mem: dict[str, Resource] = {}
        self.used_B: dict[str, float] = {}
        self.peak_B: dict[str, float] = {}
        self.mem_in: dict[str, Resource] = {}  # where DMA writes land (a separate port for storage)
        for name, comp in system.devices.items():
            if comp.memory_bandwidth_Bps > 0:
                self.mem[name] = self.mem_in[name] = Resource(
                    f"{name}.mem", comp.memory_bandwidth_Bps, kind="memory"
                )
                if comp.write_bandwidth_Bps != comp.memory_bandwidth_Bps:
                    self.mem_in[name] = Resource(f"{name}.mem_write", comp.write_bandwidth_Bps, kind="memory")
            self.used_B[name] = self.peak_B[name] = 0.0
        self.link_res: dict[tuple[str, str], Resource] = {}
        for link in system.links:
            for a, b in ((link.a, link.b), (link.b, link.a)):
                if (a, b) not in self.link_res:
                    edge = system.graph.edges[a, b]["link"]  # bundled
                    self.link_res[(a, b)] = Resource(f"{edge.type}:{a}->{b}", edge.bw_Bps)
        self.busy_group: Counter[tuple[str, ...]] = Counter()  # compute time per device group
        self.cost_counts: Counter[tuple[tuple[str, ...], OpCost]] = Counter()  # settled from runs
        self._distinct: dict[tuple[str, ...], list[Component]] = {}
        self.workspace_B: dict[str, float] = {}  # transient activations of the running program
        self.transfer_bytes: Counter[str] = Counter()  # DMA bytes read or written per device memory
        self._epa: dict[str, Mapping[str, float]] = {}
        self.runs: list[tuple[Program, bool]] = []  # every program run, and whether it ran alone
        self.steps_run = 0
        self._paths: dict[tuple, Any] = {}

    # ------------------------------------------------------------------------------------ memory
    def allocate(self, device: str, tensor: str, nbytes: float, workspace: float | None = None) -> None:
        """Make `tensor` resident on `device` (or, with `workspace`, set the transient reserve)."""
        if workspace is not None:
            self.workspace_B[device] = workspace
        cap = self.system.devices[device].memory_capacity_B
        reserve = self.workspace_B.get(device, 0.0)
        if workspace is not None and self.used_B[device] + reserve > cap:
            raise OutOfMemory(tensor, device, reserve, cap - self.used_B[device], cap)
        free = cap - self.used_B[device] - reserve
        if nbytes > free:
            raise OutOfMemory(tensor, device, nbytes, free, cap)
        self.used_B[device] += nbytes
        self.peak_B[device] = max(
            self.peak_B[device], self.used_B[device] + self.workspace_B.get(device, 0.0)
        )

    def _reserve_workspace(self, program: Program) -> None:
        """Set aside the largest op's activations per device for the program's duration, so peak memory
        counts them and a program whose activations do not fit ends as out-of-memory before it starts."""
        self.workspace_B.clear()
        for d, (nbytes, name) in program.workspace.items():
            self.allocate(d, f"activations of {name}", 0.0, workspace=nbytes)

    # -------------------------------------------------------------------------------------- paths
    def transfer_plan(self, op: Transfer) -> Plan:
        """Source memory, every link direction on the route, destination memory; latency of the hops and
        of the endpoints' first access; rate capped by what the endpoints' request queues sustain."""
        key = ("xfer", op.src, op.dst, op.request_B)
        if key not in self._paths:
            src, dst = self.system.devices[op.src], self.system.devices[op.dst]
            hops = self.system.route(op.src, op.dst)
            res = [self.mem[op.src]] if op.src in self.mem else []
            res += [self.link_res[(a, b)] for a, b, _ in hops]
            res += [self.mem_in[op.dst]] if op.dst in self.mem_in else []
            (lat_r, cap_r), (lat_w, cap_w) = src.access(op.request_B, False), dst.access(op.request_B, True)
            lat = sum(link.latency_s for _, _, link in hops) + lat_r + lat_w
            self._paths[key] = Plan.make(lat, tuple(res), 1.0, min(cap_r, cap_w))
        p = self._paths[key]
        return Plan.make(p.delay_s, p.path, op.nbytes, p.cap_Bps)

    def ring_path(self, group: tuple[str, ...]) -> tuple[tuple[Resource, ...], float]:
        """Every link direction a ring over `group` uses, and one hop's worst latency."""
        key = ("ring", group)
        if key not in self._paths:
            res: dict[str, Resource] = {}
            lat = 0.0
            for a, b in zip(group, group[1:] + group[:1], strict=True):
                hops = self.system.route(a, b)
                lat = max(lat, sum(link.latency_s for _, _, link in hops))
                for x, y, _ in hops:
                    r = self.link_res[(x, y)]
                    res[r.name] = r
            self._paths[key] = (tuple(res[k] for k in sorted(res)), lat)
        return self._paths[key]

    # ---------------------------------------------------------------------------------- execution
    def cost(self, step: Step) -> OpCost:
        """Lock-step group: the slowest distinct member sets the pace (identical devices costed once)."""
        comps = self._distinct.get(step.devices)
        if comps is None:
            seen: dict[int, Component] = {}
            for d in step.devices:
                c = self.system.devices[d]
                seen.setdefault(c.config_key, c)
            comps = self._distinct[step.devices] = list(seen.values())
        if len(comps) == 1:
            return comps[0].op_cost(step.op)
        return max((c.op_cost(step.op) for c in comps), key=lambda c: c.duration_s)

    def _plan(self, step: Step, cost: OpCost) -> Plan:
        """How a step occupies shared resources: a fixed delay, then `nbytes` over `path` (capped)."""
        op = step.op
        if isinstance(op, Collective) and len(step.devices) > 1:
            # the protocol's efficiency is modelled as more bytes on the wire at the links' rate
            path, lat = self.ring_path(step.devices)
            eff = cost.detail.get("wire_efficiency", 1.0)
            ring = Plan.make(
                cost.duration_s + op.ring_steps * lat, path, op.wire_bytes_per_device / eff, math.inf
            )
            if isinstance(op, AllReduce):  # like NCCL, take the faster of ring and tree
                tree = Plan.make(
                    cost.duration_s + op.tree_steps * lat, path, 2.0 * op.bytes_per_device / eff, math.inf
                )
                return min(ring, tree, key=lambda p: p.solo_s)
            return ring
        if cost.dram_bytes > 0 and step.devices[0] in self.mem:
            path = tuple(self.mem[d] for d in step.devices)
            return Plan.make(0.0, path, cost.dram_bytes, cost.dram_bytes / cost.duration_s)
        return Plan.make(cost.duration_s, (), 0.0, math.inf)

    def run(self, program: Program) -> float:
        """Run one program to completion; returns its makespan in seconds."""
        env = self.env
        t0 = env.now
        done = {i: env.event() for i in program.signals}
        pid = len(self.trace.programs)
        self.trace.programs.append(program)
        self._reserve_workspace(program)
        solo = len(program.lanes) == 1 and not self.net.active
        for idxs in program.lanes.values():
            if solo and not isinstance(program.steps[idxs[0]].op, Transfer):
                env.process(self._solo_lane(program, pid, idxs))
            else:
                env.process(self._lane(program, pid, idxs, done, solo))
        env.run()
        self.runs.append((program, solo))
        span = env.now - t0
        return span

    def _solo_lane(self, program: Program, pid: int, idxs: list[int]):
        """The only lane of a program, with no other traffic: no flow can be contended, so each op is one
        exact timeout of its solo duration (the hot path of long generations)."""
        env, steps, plans, keep = self.env, program.steps, program.plans, self.keep_records
        timeout, t0 = env.timeout, env.now
        rec_prog, rec_step, rec_start, rec_end = (self.trace.prog.append, self.trace.step.append,
                                                  self.trace.start.append, self.trace.end.append)  # fmt: skip
        for i in idxs:
            step = steps[i]
            if step.allocs:
                for t in step.allocs:
                    for dev in step.devices:
                        self.allocate(dev, t.name, t.bytes)
            plan = plans[i]
            if plan is None:
                program.costs[i] = cost = self.cost(step)
                plan = plans[i] = self._plan(step, cost)
            start = env.now
            yield timeout(plan.solo_s)
            if keep:
                rec_prog(pid)
                rec_step(i)
                rec_start(start)
                rec_end(start + plan.solo_s)
        self.steps_run += len(idxs)
        self.busy_group[steps[idxs[0]].devices] += env.now - t0

    def _lane(self, program: Program, pid: int, idxs: list[int], done: dict[int, simpy.Event], solo: bool):
        """Execute one lane's steps in order. With `solo` (a single lane and no other traffic) every flow
        would run alone at its own rate, so a step is one exact timeout and its bytes are booked directly."""
        env, steps, trace, keep = self.env, program.steps, self.trace, self.keep_records
        costs, plans = program.costs, program.plans
        busy_s = 0.0
        for i in idxs:
            step = steps[i]
            for d in step.deps:
                ev = done.get(d)
                if ev is not None and not ev.triggered:
                    yield ev
            for t in step.allocs:
                for dev in step.devices:
                    self.allocate(dev, t.name, t.bytes)
            start = env.now
            op = step.op
            if isinstance(op, Transfer):
                yield from self._transfer(op)
            else:
                cost = costs[i]
                if cost is None:
                    cost = costs[i] = self.cost(step)
                    plans[i] = self._plan(step, cost)
                plan = plans[i]
                if solo:
                    yield env.timeout(plan.solo_s)
                else:
                    if plan.delay_s:
                        yield env.timeout(plan.delay_s)
                    if plan.path:
                        yield self.net.start(plan.path, plan.nbytes, plan.cap_Bps)
                busy_s += env.now - start
            self.steps_run += 1
            if keep:
                trace.prog.append(pid)
                trace.step.append(i)
                trace.start.append(start)
                trace.end.append(env.now)
            ev = done.get(i)
            if ev is not None:
                ev.succeed()
        if busy_s:
            self.busy_group[steps[idxs[0]].devices] += busy_s

    def _transfer(self, op: Transfer):
        self.transfer_bytes[op.src] += op.nbytes  # read at the source, written at the destination
        self.transfer_bytes[op.dst] += op.nbytes
        plan = self.transfer_plan(op)
        if plan.delay_s:
            yield self.env.timeout(plan.delay_s)
        yield self.net.start(plan.path, op.nbytes, plan.cap_Bps)

    # -------------------------------------------------------------------------------------- energy
    def energy_breakdown_J(self) -> dict[str, dict[str, float]]:
        """Joules per component and action: op actions × energy per action, link bits, static power."""
        self._settle()
        out: dict[str, Counter[str]] = {}
        for (devices, cost), count in self.cost_counts.items():
            for dev in devices:
                acc = out.setdefault(dev, Counter())
                for action, j in self.op_energy_J(dev, cost).items():
                    acc[action] += j * count
        for dev, nbytes in self.transfer_bytes.items():
            j = self.energy_per_action(dev).get("dram.byte", 0.0)
            if j:
                out.setdefault(dev, Counter())["dram.byte"] += nbytes * j
        from hardware.links import link_energy_per_bit_J

        for (a, b), r in self.link_res.items():
            if r.bytes_carried:
                link = self.system.graph.edges[a, b]["link"]
                name = f"{link.type}:{min(a, b)}-{max(a, b)}"
                out.setdefault(name, Counter())["link.bit"] += (
                    r.bytes_carried * 8 * link_energy_per_bit_J(link)
                )
        total_t = self.env.now
        for dev, comp in self.system.devices.items():
            if comp.static_power_W:
                out.setdefault(dev, Counter())["static"] += comp.static_power_W * total_t
        return {k: dict(v) for k, v in out.items()}

    @property
    def busy_s(self) -> Counter[str]:
        """Compute-busy seconds per device."""
        out: Counter[str] = Counter()
        for group, t in self.busy_group.items():
            for d in group:
                out[d] += t
        return out

    def _settle(self) -> None:
        """Fold finished runs into the per-cost counts and, for runs that had the machine to themselves,
        book their bytes on the resources (contended runs booked them flow by flow)."""
        for program, solo in self.runs:
            t = program.tally()
            self.cost_counts.update(t.costs)
            if solo:
                for path, nbytes in t.path_bytes.items():
                    for r in path:
                        r.bytes_carried += nbytes
        self.runs.clear()

    def energy_per_action(self, device: str) -> Mapping[str, float]:
        epa = self._epa.get(device)
        if epa is None:
            epa = self._epa[device] = self.system.devices[device].energy_per_action_J()
        return epa

    def op_energy_J(self, device: str, cost: OpCost) -> dict[str, float]:
        """Dynamic joules per action of one op on one device (actions the device has no price for cost 0)."""
        from simcore.energy import energy_breakdown

        return dict(energy_breakdown(cost.actions, self.energy_per_action(device)).by_action_J)

    def utilization(self) -> dict[str, float]:
        self._settle()
        t = self.env.now or math.inf
        busy = self.busy_s
        util = {f"{d}.compute": busy[d] / t for d in self.system.devices if busy[d]}
        for name, r in self.mem.items():
            util[f"{name}.memory_bw"] = r.bytes_carried / (r.capacity_Bps * t)
            w = self.mem_in[name]
            if w is not r:
                util[f"{name}.write_bw"] = w.bytes_carried / (w.capacity_Bps * t)
        for r in self.link_res.values():
            if r.bytes_carried:
                util[r.name] = r.bytes_carried / (r.capacity_Bps * t)
        return util

    @property
    def events(self) -> int:
        """Timeouts and flow completions scheduled (SimPy events that advanced time)."""
        return self.steps_run + self.net.timeouts
