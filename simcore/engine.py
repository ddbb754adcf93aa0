"""The engine: an executor that runs programs on a System, one event per op or transfer.

Work arrives while the engine runs: `submit(program)` returns an event that fires when the program
ends, so programs from different sources run concurrently and share memories, links and the devices'
compute (flows.py; kernels on one device time-slice it).
Within a program, ops on one device group run in order on that group's lane; transfers run on copy
lanes; a step waits only for its dependencies on other lanes. Memory is allocated and freed per memory
port (devices sharing one share its capacity); a tensor that does not fit raises OutOfMemory naming
tensor, device, needed and free bytes.

A program that nothing else can contend with (nothing in flight, nothing scheduled) runs as a single
event: one lane or one chain takes the closed-form sum of its steps, its bytes booked directly; lanes that
overlap are played out off the event loop first (replay.py: the same lanes, waits and fair sharing).

A program may be submitted on a partition of its devices' SMs (`partition=(name, fraction)`: Nexus,
NanoFlow and semi-PD run prefill and decode side by side that way). Its kernels then use a compute
resource of their own with `fraction` of the device's compute instead of the device's time-sliced one, and
still share its memory through the flow model: alone, a kernel takes max(t_sm / fraction, t_mem), where
t_sm is the part of its time the SMs set and t_mem the part its DRAM traffic sets (`partition_times`).
A single step may give up SMs too (`Step.sm_share`: Comet's expert GEMMs while thread blocks of the same
kernel drive the all-to-all): it is priced as the kernel on that share, max(t_sm / share, t_mem)
(`on_sm_share`), and otherwise runs as any kernel, on the device's time-sliced compute.
Coarse-event choice: a one-lane program on a partition runs as two flows, its SM-limited kernels then its
memory-limited ones (each pooled: bytes, SM time, memory time summed), after a delay for its collectives;
alone this is exactly the sum of its kernels' times, at two events instead of one per kernel. A program
compiled `coarse` pools the same way each run of kernels in a lane between synchronisation points (a wait
for another lane, a step another lane waits for, a transfer or collective): a scenario that writes a
program per decode step with copies beside it (expert offload) pays a few events per segment, not one per
kernel. Its steps keep their records, laid out in each segment in proportion to their times alone. A
writer may also chain kernels into one step itself (`ops.Chain`: priced as their sum, pooled as a segment
in a coarse program, recorded member by member), so a program written per token holds a step per stretch
of kernels rather than one per kernel.
"""

from __future__ import annotations

import gc
import math
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import simpy

from simcore.component import Component, OpCost, partition_times
from simcore.errors import OutOfMemory
from simcore.flows import FlowNetwork, Resource, solo_rate
from simcore.ledger import Compiled, Ledger, Plan, ResourceTally, RunRecord, Segment, Tally
from simcore.ops import Chain, Collective, Transfer
from simcore.program import Program, Step
from simcore.replay import Work, replay
from simcore.system import System

#: how a collective algorithm crosses the links: (latency s, link directions, units, bytes per unit on each
#: of them (empty: 1 each)); the flow runs at the rate of its tightest link
Wire = tuple[float, tuple[str, ...], float, tuple[float, ...]]

#: collective algorithms: name -> its wire over a group (None: it cannot run on that group)
ALGORITHMS: dict[str, Callable[[Engine, Collective, tuple[str, ...]], Wire | None]] = {
    "ring": lambda eng, op, g: eng.over_ring(g, op.ring_steps, op.wire_bytes_per_device),
    # reduce up and broadcast down a binary tree (NCCL's double binary tree): ~2x the buffer
    "tree": lambda eng, op, g: eng.over_ring(g, op.tree_steps, 2.0 * op.bytes_per_device),  # type: ignore[attr-defined]
    # every rank reads its peers' buffers over NVLink and reduces locally, in one synchronised step; the
    # bytes are counted as a ring's, at the kernel's measured share of the link rate
    "one-shot": lambda eng, op, g: eng.over_ring(g, 1, op.wire_bytes_per_device),
    # NVLink SHARP: each rank sends its buffer to the NVSwitch, which reduces, and receives the result: the
    # buffer crosses each rank's link once each way, two hops of latency; every rank on one switch
    "nvls": lambda eng, op, g: eng.over_ring(g, 2, op.bytes_per_device) if eng.one_nvlink_switch(g) else None,
    # a group spanning NVLink islands (nodes): reduce-scatter inside each, all-reduce of the 1/g shares
    # between the islands over every rail at once, all-gather inside each
    "hierarchical": lambda eng, op, g: eng.hierarchical(g, op.bytes_per_device),
}


@contextmanager
def few_collections() -> Iterator[None]:
    """Run a simulation with the cyclic garbage collector triggered less often: a run allocates millions of
    short-lived records (steps, plans, flows) and keeps its caches, which the default thresholds re-scan
    again and again (about 6 % of an expert-offload run). The thresholds are restored afterwards."""
    before = gc.get_threshold()
    gc.set_threshold(50_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*before)


class Engine:
    """Runs programs on a System and books what they did into a ledger."""

    def __init__(self, system: System, keep_records: bool = True, replay: bool = True) -> None:
        """`replay`: play a program that runs alone off the event loop (replay.py; False: always on it)."""
        self.system = system
        self.replay = replay
        self.env = simpy.Environment()
        self.net = FlowNetwork(self.env)
        self.keep_records = keep_records
        self.res: dict[str, Resource] = {}
        self.capacity_B: dict[str, float] = {}  # memory -> bytes it holds
        self._labels: dict[str, tuple[str, object]] = {}  # resource name -> (utilization label, link)
        self.mem: dict[str, str] = {}  # device -> memory resource it reads (and ops use)
        self.mem_in: dict[str, str] = {}  # device -> where DMA writes land (a separate port for storage)
        self.store: dict[str, str] = {}  # device -> the memory whose capacity its tensors take
        ports: dict[str, tuple[str, str]] = {}  # memory -> (read resource, write resource)
        for port in system.memories.values():
            read = write = self._resource(port.name, port.read_Bps, f"{port.owner}.memory_bw")
            if port.write_Bps != port.read_Bps:
                write = self._resource(f"{port.name}_write", port.write_Bps, f"{port.owner}.write_bw")
            ports[port.name] = (read, write)
            self.capacity_B[port.name] = port.capacity_B
        for name in system.devices:
            port = system.memory_of(name)
            if port is not None:
                self.mem[name], self.mem_in[name] = ports[port.name]
            self.store[name] = port.name if port is not None else name
            self.capacity_B.setdefault(self.store[name], 0.0)
        self.used_B = dict.fromkeys(self.capacity_B, 0.0)
        self.peak_B = dict.fromkeys(self.capacity_B, 0.0)
        self.workspace_B: Counter[str] = Counter()  # activations reserved by programs in flight
        self.compute: dict[str, str] = {}  # device -> its compute, shared by the kernels running on it
        for name in system.devices:
            self.compute[name] = f"{name}.compute"
            self.res[self.compute[name]] = Resource(self.compute[name], 1.0, kind="compute")
        self.link_res: dict[tuple[str, str], str] = {}
        for link in system.links:
            for a, b in ((link.a, link.b), (link.b, link.a)):
                if (a, b) not in self.link_res:
                    edge = system.graph.edges[a, b]["link"]  # bundled
                    name = f"{edge.type}:{a}->{b}"
                    self.link_res[(a, b)] = self._resource(name, edge.bw_Bps, name, edge)
        self.bw_Bps = {n: r.capacity_Bps for n, r in self.res.items()}  # resource -> bandwidth
        self._compiled: weakref.WeakKeyDictionary[Program, Compiled] = weakref.WeakKeyDictionary()
        self._distinct: dict[tuple[str, ...], list[Component]] = {}
        self._paths: dict[tuple, tuple] = {}
        #: (devices, cost on the whole device, SM share) -> (cost on the share, plan)
        self._plans: dict[tuple[tuple[str, ...], OpCost, float], tuple[OpCost, Plan]] = {}
        self._res_tuple: dict[tuple[str, ...], tuple[Resource, ...]] = {}
        self._shapes: dict[tuple, tuple[tuple[Resource, ...], tuple[float, ...], float]] = {}
        self._prepared: dict[int, tuple[tuple[Plan, ...], Work]] = {}  # id(segment flows) -> (them, work)
        self.runs: list[RunRecord] = []
        self.costs: Counter[tuple[tuple[str, ...], OpCost]] = Counter()
        self.dma_bytes: Counter[str] = Counter()
        self.busy_group: Counter[tuple[str, ...]] = Counter()
        self._partitioned: dict[tuple, Plan] = {}  # (devices, cost, partition) -> plan on the partition
        #: program -> partition -> (delay, pooled flows) of a one-lane program on a partition
        self._pooled: weakref.WeakKeyDictionary[Program, dict] = weakref.WeakKeyDictionary()
        self._pools: dict[tuple, tuple[Plan, ...]] = {}  # ([partition,] devices, *costs) -> a segment's flows
        self.in_flight = 0
        self.steps_run = 0
        self.solo_events = 0
        self.step_events = 0
        self.replayed_flows = 0  # flows of programs played out off the event loop (replay.py)

    def _resource(self, name: str, capacity_Bps: float, label: str, link: object = None) -> str:
        self.res[name] = Resource(name, capacity_Bps, kind="link" if link is not None else "memory")
        self._labels[name] = (label, link)
        return name

    # ------------------------------------------------------------------------------------ memory
    def allocate(self, device: str, tensor: str, nbytes: float) -> None:
        """Make `tensor` resident in `device`'s memory (shared with any device that uses the same) until
        freed."""
        m = self.store[device]
        cap = self.capacity_B[m]
        free = cap - self.used_B[m] - self.workspace_B[m]
        if nbytes > free:
            raise OutOfMemory(tensor, device, nbytes, free, cap)
        self.used_B[m] += nbytes
        self.peak_B[m] = max(self.peak_B[m], self.used_B[m] + self.workspace_B[m])

    def free(self, device: str, nbytes: float) -> None:
        """Release `nbytes` of resident tensors on `device` (a finished request's KV cache, an evicted expert)."""
        m = self.store[device]
        self.used_B[m] = max(0.0, self.used_B[m] - nbytes)

    def _reserve_workspace(self, program: Program, sign: int) -> None:
        """While a program runs, set aside its largest op's activations per device, so peak memory counts
        them and a program whose activations do not fit ends as out-of-memory before it starts."""
        for d, (nbytes, name) in program.workspace.items():
            m = self.store[d]
            if sign > 0:
                cap = self.capacity_B[m]
                free = cap - self.used_B[m] - self.workspace_B[m]
                if nbytes > free:
                    raise OutOfMemory(f"activations of {name}", d, nbytes, free, cap)
            self.workspace_B[m] += sign * nbytes
            if sign > 0:
                self.peak_B[m] = max(self.peak_B[m], self.used_B[m] + self.workspace_B[m])

    # ---------------------------------------------------------------------------------- pricing
    def cost(self, step: Step) -> OpCost:
        """Lock-step group: the slowest distinct member sets the pace (identical devices costed once)."""
        comps = self._distinct.get(step.devices)
        if comps is None:
            seen: dict[object, Component] = {}
            for d in step.devices:
                c = self.system.devices[d]
                seen.setdefault(c.config_key, c)
            comps = self._distinct[step.devices] = list(seen.values())
        if len(comps) == 1:
            return comps[0].op_cost(step.op)
        return max((c.op_cost(step.op) for c in comps), key=lambda c: c.duration_s)

    def transfer_plan(self, op: Transfer) -> Plan:
        """Source memory, every link direction on the route, destination memory; latency of the hops and
        of the endpoints' first access; rate capped by what the endpoints' request queues sustain."""
        src, dst = self.system.devices[op.src], self.system.devices[op.dst]
        key = ("xfer", op.src, op.dst, op.request_B, op.nbytes if dst.sized_writes else None)
        if key not in self._paths:
            hops = self.system.route(op.src, op.dst)
            res = [self.mem[op.src]] if op.src in self.mem else []
            res += [self.link_res[(a, b)] for a, b, _ in hops]
            res += [self.mem_in[op.dst]] if op.dst in self.mem_in else []
            (lat_r, cap_r), (lat_w, cap_w) = (
                src.access(op.request_B, False),
                dst.access(op.request_B, True, op.nbytes),
            )
            lat = sum(link.latency_s for _, _, link in hops) + lat_r + lat_w
            cap = min(cap_r, cap_w)
            self._paths[key] = (lat, tuple(res), cap, Plan.rate(tuple(res), cap, self.bw_Bps))
        lat, path, cap, rate = self._paths[key]
        return Plan(lat, path, op.nbytes, cap, lat + (op.nbytes / rate if path else 0.0))

    def one_nvlink_switch(self, group: tuple[str, ...]) -> bool:
        """Whether every rank of `group` reaches every other through one switch over NVLink links (what an
        in-switch reduction needs)."""
        key = ("switch", group)
        if key not in self._paths:
            hops = [self.system.route(a, b) for a, b in zip(group, group[1:] + group[:1], strict=True)]
            ok = all(len(h) == 2 and all(link.type == "nvlink" for _, _, link in h) for h in hops)
            mids = {h[0][1] for h in hops if h}
            self._paths[key] = (ok and len(mids) == 1 and mids <= set(self.system.switches), 0.0)
        return bool(self._paths[key][0])

    def over_ring(self, group: tuple[str, ...], steps: int, nbytes: float) -> Wire:
        """`nbytes` per rank over a ring of `group` (each link direction carrying one rank's), `steps` hops."""
        path, lat = self.ring_path(group)
        return steps * lat, path, nbytes, ()

    def islands(self, group: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
        """`group` split into the sets of ranks that reach each other over NVLink alone (one per node), in
        group order."""
        key = ("islands", group)
        if key not in self._paths:
            out: list[list[str]] = []
            for d in group:
                home = next((isl for isl in out if all(link.type == "nvlink" for _, _, link in
                                                       self.system.route(isl[0], d))), None)  # fmt: skip
                if home is None:
                    out.append([d])
                else:
                    home.append(d)
            self._paths[key] = (tuple(tuple(isl) for isl in out), 0.0)
        return self._paths[key][0]  # type: ignore[return-value]

    def hierarchical(self, group: tuple[str, ...], nbytes: float) -> Wire | None:
        """A 2-D all-reduce of `nbytes` per rank over n islands of g ranks each (NCCL's multi-node rings
        and trees use every rail this way): a ring reduce-scatter and all-gather inside each island
        (2 (g-1)/g of the buffer on each NVLink direction), and a ring all-reduce of the 1/g shares among
        the ranks of equal position in their islands, each over its own rail (2 (n-1)/(n g) on every link
        of those rings). None unless the group spans 2+ islands of equal size."""
        isl = self.islands(group)
        n, g = len(isl), len(isl[0])
        if n < 2 or any(len(i) != g for i in isl):
            return None
        path: list[str] = []
        weights: list[float] = []
        lat_in = lat_out = 0.0
        for inner in isl if g > 1 else ():
            p, lat = self.ring_path(inner)
            path += p
            weights += [2.0 * (g - 1) / g] * len(p)
            lat_in = max(lat_in, lat)
        for rank in range(g):
            p, lat = self.ring_path(tuple(i[rank] for i in isl))
            path += p
            weights += [2.0 * (n - 1) / (n * g)] * len(p)
            lat_out = max(lat_out, lat)
        return 2 * (g - 1) * lat_in + 2 * (n - 1) * lat_out, tuple(path), nbytes, tuple(weights)

    def ring_path(self, group: tuple[str, ...]) -> tuple[tuple[str, ...], float]:
        """Every link direction a ring over `group` uses, and one hop's worst latency."""
        key = ("ring", group)
        if key not in self._paths:
            res: set[str] = set()
            lat = 0.0
            for a, b in zip(group, group[1:] + group[:1], strict=True):
                hops = self.system.route(a, b)
                lat = max(lat, sum(link.latency_s for _, _, link in hops))
                res.update(self.link_res[(x, y)] for x, y, _ in hops)
            self._paths[key] = (tuple(sorted(res)), lat)
        return self._paths[key]

    def plan(self, step: Step, cost: OpCost) -> Plan:
        """How a step occupies shared resources: a fixed delay, then `nbytes` over `path` (capped)."""
        op = step.op
        if isinstance(op, Collective) and len(step.devices) > 1:
            # the protocol's efficiency is modelled as more bytes on the wire at the links' rate; an
            # all-reduce takes the fastest algorithm its library offers that can run on the group
            plans = []
            for name, fixed_s, eff in cost.detail.get("algorithms", (("ring", cost.duration_s, 1.0),)):
                wire = ALGORITHMS[name](self, op, step.devices)
                if wire is not None:
                    lat_s, path, units, weights = wire
                    plans.append(
                        Plan.make(fixed_s + lat_s, path, units / eff, math.inf, self.bw_Bps, weights)
                    )
            return min(plans, key=lambda p: p.solo_s)
        # A kernel occupies its devices' compute for its whole duration (two kernels on one device at once
        # progress at half speed each, as time-sliced streams do) and moves its DRAM bytes through their
        # memories: one unit of its flow is a byte, taking duration/bytes seconds of compute.
        compute = tuple(self.compute[d] for d in step.devices)
        if cost.dram_bytes > 0 and step.devices[0] in self.mem:
            path = tuple(self.mem[d] for d in step.devices) + compute
            weights = (1.0,) * len(step.devices) + (cost.duration_s / cost.dram_bytes,) * len(compute)
            return Plan.make(
                0.0, path, cost.dram_bytes, cost.dram_bytes / cost.duration_s, self.bw_Bps, weights
            )
        return Plan.make(0.0, compute, cost.duration_s, math.inf, self.bw_Bps)

    def partition_plan(self, step: Step, cost: OpCost, plan: Plan, partition: tuple[str, float]) -> Plan:
        """`plan` of a kernel run on a partition of its devices' SMs: its compute time scaled by the share,
        its DRAM bytes still over the shared memories (collectives and transfers keep their plans)."""
        if isinstance(step.op, Collective) and len(step.devices) > 1:
            return plan
        key = (step.devices, cost, partition)
        out = self._partitioned.get(key)
        if out is None:
            sms = list(self._sm_resources(step.devices, partition))
            t_sm, t_mem = partition_times(cost)
            if cost.dram_bytes > 0 and step.devices[0] in self.mem:
                if t_sm <= 0.0:  # the SMs set none of its time: only its memory traffic is shared
                    sms = []
                path = tuple(self.mem[d] for d in step.devices) + tuple(sms)
                weights = (1.0,) * len(step.devices) + (t_sm / cost.dram_bytes,) * len(sms)
                cap = cost.dram_bytes / t_mem if t_mem > 0 else math.inf
                out = Plan.make(0.0, path, cost.dram_bytes, cap, self.bw_Bps, weights)
            else:
                out = Plan.make(0.0, tuple(sms), cost.duration_s, math.inf, self.bw_Bps)
            self._partitioned[key] = out
        return out

    def _sm_resources(self, devices: tuple[str, ...], partition: tuple[str, float]) -> tuple[str, ...]:
        name, share = partition
        out = []
        for d in devices:
            r = f"{d}.sm[{name}]"
            if r not in self.res:
                self.res[r] = Resource(r, share, kind="compute")
                self.bw_Bps[r] = share
            out.append(r)
        return tuple(out)

    def pool(
        self, devices: tuple[str, ...], costs: list[OpCost], partition: tuple[str, float] | None
    ) -> list[Plan]:
        """Kernels on `devices` as at most two flows: the SM-limited ones, then the memory-limited ones (each
        pooled: bytes, SM time and memory time summed), on the devices' compute or on `partition`'s share of
        their SMs. Alone, exactly the sum of the kernels' durations."""
        share = partition[1] if partition is not None else 1.0
        has_mem = devices[0] in self.mem
        pools = {True: [0.0, 0.0, 0.0], False: [0.0, 0.0, 0.0]}  # sm-limited? -> [t_sm, t_mem, bytes]
        for cost in (part for c in costs for part in c.detail.get("parts", (c,))):  # a chain: its kernels
            t_sm, t_mem = partition_times(cost)
            pool = pools[t_sm / share >= t_mem]
            pool[0] += t_sm
            pool[1] += t_mem
            pool[2] += cost.dram_bytes if has_mem else 0.0
        sms = (
            self._sm_resources(devices, partition)
            if partition is not None
            else tuple(self.compute[d] for d in devices)
        )
        flows = []
        for sm_limited in (True, False):
            t_sm, t_mem, nbytes = pools[sm_limited]
            if nbytes > 0:
                use = sms if t_sm > 0 else ()
                path = tuple(self.mem[d] for d in devices) + use
                weights = (1.0,) * len(devices) + (t_sm / nbytes,) * len(use)
                cap = nbytes / t_mem if not sm_limited and t_mem > 0 else math.inf
                flows.append(Plan.make(0.0, path, nbytes, cap, self.bw_Bps, weights))
            elif max(t_sm, t_mem) > 0:  # no memory resource to share: the time alone, on the SMs
                flows.append(Plan.make(0.0, sms, max(t_sm, t_mem * share), math.inf, self.bw_Bps))
        return flows

    def pooled_flows(self, c: Compiled, partition: tuple[str, float]) -> tuple[float, list[Plan]]:
        """A one-lane program on a partition as (delay, flows): its collectives' and copies'
        solo time, then its kernels pooled (`pool`)."""
        per = self._pooled.setdefault(c.program, {})
        if partition not in per:
            delay, kernels, devices = 0.0, [], ()
            for step, cost, plan in zip(c.program.steps, c.costs, c.plans, strict=True):
                if cost is None or (isinstance(step.op, Collective) and len(step.devices) > 1):
                    delay += plan.solo_s
                else:
                    kernels.append(cost)
                    devices = step.devices
            per[partition] = (delay, self.pool(devices, kernels, partition) if kernels else [])
        return per[partition]

    def _segments(
        self, program: Program, costs: list[OpCost | None], plans: list[Plan]
    ) -> dict[int, Segment]:
        """A coarse program's runs of two or more kernels in a lane, cut where the lane waits for another,
        after a step another lane waits for, and at transfers and collectives (which keep their own plans)."""
        out: dict[int, Segment] = {}
        steps, signals = program.steps, program.signals
        for idxs in program.lanes.values():
            mine = set(idxs)
            run: list[int] = []
            for i in (*idxs, -1):
                step = steps[i] if i >= 0 else None
                kernel = (
                    step is not None
                    and costs[i] is not None
                    and not (isinstance(step.op, Collective) and len(step.devices) > 1)
                )
                if run and (not kernel or run[-1] in signals or any(d not in mine for d in step.deps)):  # type: ignore[union-attr]
                    if len(run) > 1 or isinstance(steps[run[0]].op, Chain):
                        flows = self._segment_pool(steps[run[0]].devices, [costs[j] for j in run])  # type: ignore[misc]
                        out[run[0]] = Segment(tuple(run), flows, tuple(plans[j].solo_s for j in run))
                    run = []
                if kernel:
                    run.append(i)
        return out

    def _resegment(self, base: Mapping[int, Segment], changed: tuple[int, ...], costs: list[OpCost | None],
                   plans: list[Plan], steps: tuple[Step, ...]) -> dict[int, Segment]:  # fmt: skip
        """A derived program's segments: its base's (same structure, so the same cuts), those holding a
        changed step pooled again from the new costs."""
        touched = set(changed)
        out = dict(base)
        for first, seg in base.items():
            if touched.isdisjoint(seg.steps):
                continue
            flows = self._segment_pool(steps[first].devices, [costs[j] for j in seg.steps])  # type: ignore[misc]
            out[first] = Segment(seg.steps, flows, tuple(plans[j].solo_s for j in seg.steps))
        return out

    def _segment_pool(self, devices: tuple[str, ...], costs: list[OpCost]) -> tuple[Plan, ...]:
        """A segment's pooled flows on the whole devices (`pool`), cached by its kernels' costs."""
        key = (devices, *costs)
        flows = self._pools.get(key)
        if flows is None:
            flows = self._pools[key] = tuple(self.pool(devices, costs, None))
        return flows

    def _price(self, step: Step) -> tuple[OpCost | None, Plan]:
        if isinstance(step.op, Transfer):
            return None, self.transfer_plan(step.op)
        cost = self.cost(step)
        key = (step.devices, cost, step.sm_share)  # equal costs come from equal op signatures: equal plans
        priced = self._plans.get(key)
        if priced is None:
            if step.sm_share != 1.0 and not (isinstance(step.op, Collective) and len(step.devices) > 1):
                cost = on_sm_share(cost, step.sm_share)
            priced = self._plans[key] = (cost, self.plan(step, cost))
        return priced

    def compile(self, program: Program) -> Compiled:
        """Costs, plans and tally of `program` on this engine's system; a program derived by replace_ops
        reuses its base's and reprices only the steps that changed."""
        c = self._compiled.get(program)
        if c is not None:
            return c
        if program.base is not None:
            b = self.compile(program.base)
            costs, plans, tally, solo = list(b.costs), list(b.plans), b.tally.copy(), b.solo_s
            old = program.base.steps
            swaps: dict[tuple, list] = {}  # identical layers change identically: tally them once
            for i in program.changed:
                before = (old[i], costs[i], plans[i])
                twin = program.steps[i].twin
                costs[i], plans[i] = (
                    (costs[twin], plans[twin]) if twin >= 0 else self._price(program.steps[i])
                )
                after = (program.steps[i], costs[i], plans[i])
                if costs[i] is None or before[1] is None:  # transfers tally their own bytes
                    tally.add(*before, -1)
                    tally.add(*after)
                    solo += after[2].solo_s - before[2].solo_s
                else:
                    key = (old[i].devices, id(before[1]), id(before[2]), id(after[1]), id(after[2]))
                    swaps.setdefault(key, [0, before, after])[0] += 1
            for n, before, after in swaps.values():
                tally.add(*before, -n)
                tally.add(*after, n)
                solo += n * (after[2].solo_s - before[2].solo_s)
        else:
            costs, plans, tally = [], [], Tally()
            same: dict[tuple, list] = {}  # (devices, cost, plan) -> [count, step]: twins tallied once
            for step in program.steps:
                cost, plan = (costs[step.twin], plans[step.twin]) if step.twin >= 0 else self._price(step)
                costs.append(cost)
                plans.append(plan)
                if cost is None:
                    tally.add(step, cost, plan)  # a transfer: its own bytes
                else:
                    same.setdefault((step.devices, id(cost), id(plan)), [0, step, cost, plan])[0] += 1
            for n, step, cost, plan in same.values():
                tally.add(step, cost, plan, n)
            solo = sum(p.solo_s for p in plans)
        allocs = (
            b.allocs
            if program.base is not None
            else tuple(
                (dev, t.name, t.bytes) for step in program.steps for t in step.allocs for dev in step.devices
            )
        )
        if not program.coarse:
            segments = {}
        elif program.base is not None and all(
            (costs[i] is None) == (b.costs[i] is None) for i in program.changed
        ):
            segments = self._resegment(b.segments, program.changed, costs, plans, program.steps)
        else:
            segments = self._segments(program, costs, plans)
        c = Compiled(program, costs, plans, tally, solo, allocs, segments)
        if program.base is None:  # derived programs are one-offs; their bases are the templates
            self._compiled[program] = c
        return c

    # -------------------------------------------------------------------------------- execution
    def submit(self, program: Program, partition: tuple[str, float] | None = None) -> simpy.Event:
        """Start `program` now; the returned event fires with its RunRecord when its last step ends.
        `partition` = (name, fraction): run its kernels on that named share of their devices' SMs."""
        compiled = self.compile(program)
        if partition is not None and not 0.0 < partition[1] <= 1.0:
            raise ValueError(f"an SM partition is a fraction in (0, 1], got {partition[1]!r}")
        self._reserve_workspace(program, +1)
        for dev, tensor, nbytes in compiled.allocs:
            self.allocate(dev, tensor, nbytes)
        self.in_flight += 1
        return self.env.process(self._run(compiled, partition))

    def run(self, program: Program) -> float:
        """Submit `program` and advance time until it ends; returns its makespan in seconds."""
        done = self.submit(program)
        self.env.run(until=done)
        rec: RunRecord = done.value
        return rec.end_s - rec.start_s

    def _run(self, c: Compiled, partition: tuple[str, float] | None = None):
        env, program = self.env, c.program
        start = env.now
        # Alone for sure: one lane or one chain, no flow, no other program, and nothing else scheduled that
        # could start one before this program ends (and on the whole device: a partition's times differ).
        solo = (partition is None and program.serial and not self.net.active and self.in_flight == 1
                and env.peek() == math.inf)  # fmt: skip
        rec = RunRecord(c, start, start, solo)
        if partition is not None and program.single_lane:
            delay, flows = self.pooled_flows(c, partition)
            if delay:
                yield env.timeout(delay)
            for f in flows:
                yield self.net.start(self._resources(f.path), f.nbytes, f.cap_Bps, f.weights)
            group = next((s.devices for s, cost in zip(program.steps, c.costs, strict=True) if cost), None)
            if group is not None:  # its share of the device, for the time its kernels ran
                self.busy_group[group] += (env.now - start - delay) * partition[1]
        elif solo:
            yield env.timeout(c.solo_s)
            self.solo_events += 1
            for (path, weights), nbytes in c.tally.path_bytes.items():
                for name, w in zip(path, weights or (1.0,) * len(path), strict=True):
                    self.res[name].bytes_carried += nbytes * w
            self.busy_group.update(c.tally.busy)
        elif (self.replay and partition is None and not self.net.active and self.in_flight == 1
              and env.peek() == math.inf):  # fmt: skip
            # alone for sure, with lanes that overlap: played out off the event loop, then one wait
            played = replay(c, start, self._work, self.keep_records)
            yield env.timeout(played.end_s - start)
            rec.steps = played.steps
            self.busy_group.update(played.busy_s)
            self.step_events += played.items
            self.replayed_flows += played.flows
        else:
            done = {i: env.event() for i in program.signals}
            lanes = [
                env.process(self._lane(c, idxs, done, rec, partition)) for idxs in program.lanes.values()
            ]
            yield env.all_of(lanes)
        self.steps_run += program.op_count
        self.costs.update(c.tally.costs)
        self.dma_bytes.update(c.tally.dma_bytes)
        rec.end_s = env.now
        if self.keep_records:
            self.runs.append(rec)
        self.in_flight -= 1
        self._reserve_workspace(program, -1)
        return rec

    def _resources(self, path: tuple[str, ...]) -> tuple[Resource, ...]:
        out = self._res_tuple.get(path)
        if out is None:
            out = self._res_tuple[path] = tuple(self.res[n] for n in path)
        return out

    def _work(self, plans: tuple[Plan, ...]) -> Work:
        """Plans as replay runs them: each one's delay, then its flow (resources, weights, rate alone, bytes,
        cap); a segment's, reused by every program that pools the same kernels, are prepared once."""
        cached = self._prepared.get(id(plans))
        if cached is not None and cached[0] is plans:
            return cached[1]
        work: list = []
        for p in plans:
            if p.delay_s:
                work.append(p.delay_s)
            if p.path and p.nbytes > 0:
                key = (p.path, p.weights, p.cap_Bps)
                shape = self._shapes.get(key)
                if shape is None:
                    path = self._resources(p.path)
                    weights = p.weights or (1.0,) * len(path)
                    shape = self._shapes[key] = (path, weights, solo_rate(path, weights, p.cap_Bps))
                work.append((*shape, p.nbytes, p.cap_Bps))
        out = tuple(work)
        if len(plans) > 1:  # a segment's pooled flows (one-step plans are mostly one-off copies)
            self._prepared[id(plans)] = (plans, out)
        return out

    def _lane(self, c: Compiled, idxs: tuple[int, ...], done: dict[int, simpy.Event], rec: RunRecord,
              partition: tuple[str, float] | None = None):  # fmt: skip
        """Execute one lane's steps in order, each a flow over the resources its plan names (a coarse
        program's segments: their pooled flows, one after the other)."""
        env, steps, plans, keep = self.env, c.program.steps, c.plans, self.keep_records
        busy_s = 0.0
        k = 0
        while k < len(idxs):
            i = idxs[k]
            step = steps[i]
            for d in step.deps:
                ev = done.get(d)
                if ev is not None and not ev.triggered:
                    yield ev
            start = env.now
            seg = c.segments.get(i)
            if seg is not None:
                flows = seg.flows if partition is None else self._segment_flows(seg, c, partition)
                k += len(seg.steps)
                last = seg.steps[-1]
            else:
                plan = plans[i]
                if partition is not None and c.costs[i] is not None:
                    plan = self.partition_plan(step, c.costs[i], plan, partition)
                flows = (plan,)
                k += 1
                last = i
            for plan in flows:
                if plan.delay_s:
                    yield env.timeout(plan.delay_s)
                if plan.path:
                    yield self.net.start(self._resources(plan.path), plan.nbytes, plan.cap_Bps, plan.weights)
            self.step_events += 1
            if c.costs[i] is not None:  # a partition's kernel keeps its share of the device busy
                busy_s += (env.now - start) * (partition[1] if partition is not None else 1.0)
            if keep:
                if seg is None:
                    rec.steps.append((i, start, env.now))
                else:  # each step's share of the segment's time, in proportion to its time alone
                    scale = (env.now - start) / (sum(seg.solo_s) or 1.0)
                    t = start
                    for j, solo in zip(seg.steps, seg.solo_s, strict=True):
                        rec.steps.append((j, t, t + solo * scale))
                        t += solo * scale
            ev = done.get(last)
            if ev is not None:
                ev.succeed()
        if busy_s:
            self.busy_group[steps[idxs[0]].devices] += busy_s

    def _segment_flows(self, seg: Segment, c: Compiled, partition: tuple[str, float]) -> tuple[Plan, ...]:
        """A segment's flows on a partition of its devices' SMs."""
        key = (partition, c.program.steps[seg.steps[0]].devices, *(c.costs[j] for j in seg.steps))
        flows = self._pools.get(key)
        if flows is None:
            costs = [c.costs[j] for j in seg.steps]
            flows = self._pools[key] = tuple(self.pool(key[1], costs, partition))  # type: ignore[arg-type]
        return flows

    # --------------------------------------------------------------------------------- the ledger
    @property
    def events(self) -> int:
        """Events that advanced time: one per solo program, per contended step and per flow completion (a
        replayed program's flows count as the event loop would have run them)."""
        return self.solo_events + self.step_events + self.net.timeouts + self.replayed_flows

    def ledger(self) -> Ledger:
        """What was booked so far, as a record that needs no engine."""
        busy: Counter[str] = Counter()
        for group, t in self.busy_group.items():
            for d in group:
                busy[d] += t
        resources = [ResourceTally(label, r.capacity_Bps, r.bytes_carried, link)
                     for r, (label, link) in ((self.res[n], self._labels[n]) for n in self._labels)]  # fmt: skip
        peak = {d: self.peak_B[m] for d, m in self.store.items()}  # per device: the memory it uses
        return Ledger(self.system, self.env.now, list(self.runs), Counter(self.costs), Counter(self.dma_bytes),
                      busy, resources, peak, self.events, self.steps_run)  # fmt: skip


def on_sm_share(cost: OpCost, share: float) -> OpCost:
    """A kernel's cost on `share` of its devices' SMs (a step's `sm_share`: the rest drive communication):
    max(t_sm / share, t_mem) (`partition_times`), the same DRAM bytes and actions; the cost itself where the
    SMs on the share still do not set its time. Unlike a partition it keeps the device's own compute
    resource, so it time-slices with the device's other kernels as a whole-device kernel does."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"an SM share is a fraction in (0, 1], got {share!r}")
    t_sm, t_mem = partition_times(cost)
    if t_sm / share <= cost.duration_s:
        return cost
    bound = "compute" if cost.bound == "memory" else cost.bound  # the SMs set its time now
    # t_dram_s: partition_times of the result are (t_sm / share, t_mem)
    detail = {**cost.detail, "t_dram_s": t_mem, "sm_share": share}
    return OpCost(t_sm / share, bound, cost.dram_bytes, cost.actions, detail)
