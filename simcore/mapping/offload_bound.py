"""An analytic throughput bound for offloaded decoding in the spirit of MoE-Lightning's Hierarchical
Roofline Model (Cao et al., ASPLOS 2025) and the first stage of MoE-Lens's model (Yuan et al., 2025).

Every resource a decode step uses -- each device's compute, each memory port, each link direction -- has a
capacity C_r and a work per step W_r. With perfect overlap (nothing ever waits for anything) the step
takes at least its busiest resource's work:

    T_step >= max_r W_r / C_r,        throughput <= batch / T_step

The works are the step's own costs on the system (`Engine.compile`): each kernel at its device's roofline,
min(peak x efficiency, memory bandwidth x intensity) -- the HRM's level of the device that runs it -- as
seconds on that device's compute and bytes on its memory; each copy as bytes on its source memory, every
link direction of its route and its destination memory -- the HRM's cross-level terms (CPU DRAM -> PCIe ->
GPU HBM). Bound and event run therefore share every number and differ only in the schedule: the event run
honours the program's dependencies (a layer's GEMMs wait for its attention on the CPU, which waits for the
GEMMs before it), latencies and max-min sharing. Where one resource is saturated and the rest hide under
it, the two agree; where the work of several resources is serial within a layer, the event run is slower.

The capacity stage (MoE-Lens's first stage): the largest batch whose KV cache the KV device's memory
holds beside what else is resident there (`kv_batch_limit`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from models.llm import LLMSpec, build_pass
from simcore.engine import Engine
from simcore.errors import ConfigError
from simcore.mapping import ExecutionPlan, map_pass, place
from simcore.ops import Attention
from simcore.program import Program
from simcore.system import System


@dataclass(frozen=True)
class ResourceLoad:
    """One resource's work in a step: seconds on a compute (capacity 1), bytes on a memory or link."""

    name: str  # the engine's resource: 'gpu.compute', 'cpu.mem', 'pcie:cpu->gpu'
    kind: str  # compute | memory | link
    work: float
    capacity: float

    @property
    def time_s(self) -> float:
        return self.work / self.capacity


@dataclass(frozen=True)
class StepBound:
    """The resources of one step, busiest first, and the throughput bound they give."""

    batch: int
    loads: tuple[ResourceLoad, ...]

    @property
    def step_s(self) -> float:
        return self.loads[0].time_s

    @property
    def binding(self) -> str:
        return self.loads[0].name

    @property
    def tokens_per_s(self) -> float:
        return self.batch / self.step_s

    def time_s(self, resource: str) -> float:
        """Seconds of work the step puts on `resource` (0 when it uses none)."""
        return next((x.time_s for x in self.loads if x.name == resource), 0.0)


def step_bound(engine: Engine, program: Program, batch: int) -> StepBound:
    """The HRM bound of `program` on `engine`'s system: per resource, the units its steps' plans put on it
    (a plan moves `nbytes` units, each taking `weight` of every resource on its path) over its capacity."""
    compiled = engine.compile(program)
    work: Counter[str] = Counter()
    for plan in compiled.plans:
        weights = plan.weights or (1.0,) * len(plan.path)
        for res, w in zip(plan.path, weights, strict=True):
            work[res] += plan.nbytes * w
    loads = [ResourceLoad(r, engine.res[r].kind, w, engine.bw_Bps[r]) for r, w in work.items() if w > 0]
    loads.sort(key=lambda x: -x.time_s)
    return StepBound(batch, tuple(loads))


def decode_program(
    system: System, spec: LLMSpec, plan: ExecutionPlan, batch: int, context_len: int
) -> Program:
    """The plan's program for one decode step of `batch` sequences with `context_len` tokens cached (the
    `offload-decode` scenario's)."""
    placement = place(system, spec, plan)
    logical = build_pass(spec, placement.tp, batch, 1, context_len + 1, plan.precision, "decode")
    return map_pass(logical, placement, plan)


def decode_bound(
    system: System, spec: LLMSpec, plan: ExecutionPlan, batch: int, context_len: int
) -> StepBound:
    """The HRM bound of one decode step under `plan` (weights streamed, KV near a host CPU, or any other)."""
    program = decode_program(system, spec, plan, batch, context_len)
    return step_bound(Engine(system, keep_records=False), program, batch)


def kv_batch_limit(system: System, spec: LLMSpec, plan: ExecutionPlan, tokens: int) -> int:
    """The capacity stage: sequences of `tokens` tokens whose KV cache (and working set of the attention
    over it) fits the KV device's memory beside the model's host copy when weights stream from there (0:
    not even one)."""
    if not plan.kv_devices:
        raise ConfigError("the capacity stage sizes a KV cache kept off the GPUs: set offload.kv",
                          key="offload.kv")  # fmt: skip
    placement = place(system, spec, plan)
    kv_dev = placement.kv[0]
    port = system.memory_of(kv_dev)
    if port is None:
        raise ConfigError(f"{kv_dev!r} has no memory to hold a KV cache", key="offload.kv")
    resident = 0.0
    if placement.hosts is not None and system.memory_of(next(iter(placement.hosts.values()))) is port:
        resident = plan.precision.weight_bytes(spec.params, spec.routed_params())
    # a sequence's KV cache, and its share of the attention's working set (q and output) while it runs
    probe = build_pass(spec, placement.tp, 1, 1, tokens, plan.precision, "decode")
    work_B = max(lop.op.activation_bytes for lop in probe.ops if isinstance(lop.op, Attention))
    per_seq = tokens * plan.precision.kv_bytes(spec.kv_elements_per_token) + work_B
    return max(0, int((port.capacity_B - resident) // per_seq))
