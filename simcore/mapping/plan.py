"""The execution plan and where it puts things: how a model is split over devices, checked before t=0.

The plan (`parallelism: {tp, pp, ep, dp, microbatches}`, offload policy, precision) is separate from the
hardware description; `place` turns plan + system into a Placement — the tensor-parallel group of
every pipeline stage, the host that holds streamed weights — and refuses, with the experiment key to
blame, anything that would fail after time zero: too few devices, a group that mixes device types, a
device that cannot run an op kind of the workload or compute its dtype.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

from models.llm import LLMSpec, LogicalPass, build_pass, check_tp
from simcore.errors import ConfigError
from simcore.ops import Op
from simcore.precision import PrecisionPlan
from simcore.system import System

SCHEDULES = ("gpipe", "1f1b")


@dataclass(frozen=True)
class ExecutionPlan:
    """How a model runs on a system: parallel degrees, micro-batches, offload and number formats."""

    tp: int | None = None  # tensor-parallel degree (default: every accelerator, over pp stages)
    pp: int = 1  # pipeline stages
    ep: int = 1  # expert-parallel degree (MoE): experts split over this many ranks
    #: token chunks of each MoE layer whose all-to-all overlaps the expert GEMMs of the others (1: dispatch,
    #: experts and combine one after the other)
    ep_chunks: int = 1
    #: share of every SM the all-to-all of a chunked MoE layer takes while it overlaps the expert ops (Comet
    #: drives it from thread blocks of its fused kernel): those ops run on 1 - this of the SMs
    ep_comm_sm_share: float = 0.0
    dp: int = 1  # data-parallel replicas
    microbatches: int = 1
    schedule: str = "1f1b"  # forward-only passes run the same order under both (no backward to interleave)
    devices: tuple[str, ...] = ()  # names or patterns of the accelerators to use, in order
    offload_weights: bool = False
    precision: PrecisionPlan = field(default_factory=PrecisionPlan)
    framework: str = "pytorch"  # a key of simcore.mapping.frameworks.FRAMEWORKS
    #: the prefill attention kernel (hardware.gpu.ATTENTION_KERNELS): the framework's for the placed GPUs'
    #: architecture or the experiment's `kernels.attention` (mapping.with_kernels)
    attention: str = "fa2"
    kv_devices: tuple[str, ...] = ()  # where the KV cache lives (offload.kv): one device, or a multiple of tp
    kv_attention: str = "near"  # near: decode attention runs on the KV device; stream: KV copied in per step

    @property
    def dtype(self) -> str:
        """The compute dtype of activations (the experiment's `dtype:` unless `precision:` says otherwise)."""
        return self.precision.activations

    @property
    def mapper(self) -> str:
        if self.ep > 1:
            return "expert"
        if self.kv_devices:
            return "kv-offload"
        return "pipeline" if self.pp > 1 else "tensor"


@dataclass(frozen=True)
class Placement:
    """Devices chosen for a plan: one tensor-parallel group per pipeline stage (per replica)."""

    stages: tuple[tuple[str, ...], ...]
    replicas: tuple[tuple[tuple[str, ...], ...], ...] = ()  # data-parallel copies of `stages`
    hosts: Mapping[str, str] | None = None  # accelerator -> host holding its streamed weights
    layer_bounds: tuple[int, ...] = ()  # stage s runs layers [bounds[s], bounds[s + 1])
    #: hook for expert parallelism: the ranks that each hold a share of every MoE layer's experts
    expert_groups: tuple[tuple[str, ...], ...] = field(default=())
    kv: tuple[str, ...] = ()  # the devices holding the KV cache (offload.kv): rank r's are the r-th slice

    @property
    def tp(self) -> int:
        return len(self.stages[0])

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(d for rep in (self.replicas or (self.stages,)) for st in rep for d in st)

    def stage_of_layer(self, layer: int) -> int:
        """The stage a block runs on (-1, the embedding, on the first; `layers`, the head, on the last)."""
        for s in range(len(self.stages)):
            if layer < self.layer_bounds[s + 1]:
                return s
        return len(self.stages) - 1


def split_layers(layers: int, stages: int) -> tuple[int, ...]:
    """Even split: the first `layers % stages` stages take one layer more."""
    base, extra = divmod(layers, stages)
    bounds = [0]
    for s in range(stages):
        bounds.append(bounds[-1] + base + (1 if s < extra else 0))
    return tuple(bounds)


def accelerators(system: System, patterns: Sequence[str] = ()) -> list[str]:
    """The devices a plan may use: named ones (patterns reach into nested systems), else every GPU,
    else every device."""
    if patterns:
        out: list[str] = []
        for pat in patterns:
            hits = [n for n in system.devices if fnmatch.fnmatchcase(n, pat) and n not in out]
            if not hits:
                raise ConfigError(f"no device matches {pat!r} in {system.name!r}", key="parallelism.devices")
            out += hits
        return out
    return system.of_type("gpu") or list(system.devices)


def place(system: System, spec: LLMSpec, plan: ExecutionPlan) -> Placement:
    """Choose and check the devices: every device of the placement must run every op kind of the
    workload in the plan's dtype (probed on a one-layer pass of the same model)."""
    pool = accelerators(system, plan.devices)
    if plan.ep_chunks > 1 and plan.ep == 1:
        raise ConfigError(f"ep_chunks={plan.ep_chunks} splits the all-to-all of expert parallelism; it needs "
                          "ep > 1", key="parallelism.ep_chunks")  # fmt: skip
    if not 0.0 <= plan.ep_comm_sm_share < 1.0:
        raise ConfigError(f"ep_comm_sm_share={plan.ep_comm_sm_share!r} is a share of the SMs in [0, 1)",
                          key="parallelism.ep_comm_sm_share")  # fmt: skip
    if plan.ep_comm_sm_share > 0.0 and plan.ep_chunks == 1:
        raise ConfigError(f"ep_comm_sm_share={plan.ep_comm_sm_share:g} is the SMs the all-to-all takes "
                          "while it overlaps the expert ops; it needs ep_chunks > 1",
                          key="parallelism.ep_comm_sm_share")  # fmt: skip
    if plan.ep > 1:
        return place_experts(system, spec, plan, pool)
    per_copy = len(pool) // (plan.pp * plan.dp)
    tp = plan.tp or per_copy
    need = tp * plan.pp * plan.dp
    if tp < 1 or need > len(pool):
        raise ConfigError(f"tp={tp} × pp={plan.pp} × dp={plan.dp} needs {need} devices but "
                          f"{system.name!r} offers {len(pool)}", key="parallelism.tp")  # fmt: skip
    check_tp(spec, tp)
    if plan.pp > spec.layers:
        raise ConfigError(f"pp={plan.pp} exceeds {spec.name}'s {spec.layers} layers", key="parallelism.pp")
    groups = [tuple(pool[i * tp : (i + 1) * tp]) for i in range(plan.pp * plan.dp)]
    replicas = tuple(tuple(groups[r * plan.pp : (r + 1) * plan.pp]) for r in range(plan.dp))
    blame = "parallelism.devices" if plan.devices else "hardware"
    for group in groups:
        check_group(system, group, probe_pass(spec, tp, plan.precision), blame)
    hosts = nearest_hosts(system, [d for g in groups for d in g]) if plan.offload_weights else None
    kv = (
        kv_placement(system, plan, groups[0], probe_pass(spec, tp, plan.precision)) if plan.kv_devices else ()
    )
    return Placement(replicas[0], replicas, hosts, split_layers(spec.layers, plan.pp), kv=kv)


def kv_placement(
    system: System, plan: ExecutionPlan, group: tuple[str, ...], probe: LogicalPass
) -> tuple[str, ...]:
    """The KV devices of the ranks (offload.kv) on a single-stage plan: with as many devices as ranks or a
    multiple, rank r takes the r-th equal slice (its sequences split over its slice); with fewer (one for
    all, two host CPUs for eight GPUs), each rank its nearest device, each device as many ranks. With
    attention near the KV, each must run the workload's decode attention."""
    devs = list(dict.fromkeys(d for pat in plan.kv_devices for d in fnmatch.filter(system.devices, pat)))
    if set(devs) & set(group):
        raise ConfigError(f"offload.kv names {sorted(set(devs) & set(group))[0]!r}, which runs the GEMMs: name "
                          "the devices that hold the KV cache apart from it", key="offload.kv")  # fmt: skip
    if not devs or plan.pp > 1 or plan.dp > 1 or (len(devs) % len(group) and len(group) % len(devs)):
        raise ConfigError(f"offload.kv names {len(devs)} device(s) of {system.name!r} for {len(group)} rank(s) "
                          "(need a divisor or a multiple of the ranks, and pp = dp = 1)", key="offload.kv")  # fmt: skip
    if len(devs) >= len(group):
        kv = tuple(devs)
    else:  # fewer KV devices than ranks: each rank takes its nearest one that has room (even shares)
        room = dict.fromkeys(devs, len(group) // len(devs))
        picks = []
        for rank in group:
            d = min((d for d in devs if room[d]),
                    key=lambda d: (sum(link.latency_s for _, _, link in system.route(rank, d)), devs.index(d)))  # fmt: skip
            room[d] -= 1
            picks.append(d)
        kv = tuple(picks)
    attn = [lop.op for lop in probe.ops if lop.op.kind == "attention"]
    for d in dict.fromkeys(kv) if plan.kv_attention == "near" else ():
        comp = system.devices[d]
        try:
            for op in attn:
                comp.op_cost(op)
        except ConfigError as e:
            raise ConfigError(f"{comp.type_name} {d!r} cannot run the decode attention near the KV cache: "
                              f"{e.message}", key="offload.kv") from None  # fmt: skip
    return kv


def place_experts(system: System, spec: LLMSpec, plan: ExecutionPlan, pool: list[str]) -> Placement:
    """Expert parallelism: `ep` ranks of one device each (attention data-parallel, E/ep experts per rank),
    the first `ep` accelerators; each rank is a replica of the whole pass and an expert group."""
    if spec.moe is None:
        raise ConfigError(f"expert parallelism needs a mixture-of-experts model; {spec.name} is dense",
                          key="parallelism.ep")  # fmt: skip
    if (plan.tp or 1) != 1 or plan.pp != 1 or plan.dp != 1 or plan.offload_weights or plan.kv_devices:
        raise ConfigError(f"expert parallelism (ep={plan.ep}) runs one device per rank with tp = pp = dp = 1 and "
                          "nothing offloaded; combining it with those is not modelled yet", key="parallelism.ep")  # fmt: skip
    if spec.moe.experts % plan.ep or plan.ep > len(pool):
        raise ConfigError(f"ep={plan.ep} needs {plan.ep} devices ({system.name!r} offers {len(pool)}) and must "
                          f"divide {spec.name}'s {spec.moe.experts} experts", key="parallelism.ep")  # fmt: skip
    ranks = tuple((d,) for d in pool[: plan.ep])
    probe = probe_pass(spec, 1, plan.precision)
    for group in ranks:
        check_group(system, group, probe, "parallelism.devices" if plan.devices else "hardware")
    return Placement(
        (ranks[0],), tuple((g,) for g in ranks), None, split_layers(spec.layers, 1), expert_groups=ranks
    )


@lru_cache(maxsize=64)
def probe_pass(spec: LLMSpec, tp: int, precision: PrecisionPlan) -> LogicalPass:
    """A one-token pass of the model's first layers, one of each kind (dense, MoE): every op kind and
    format it has, cheaply."""
    return build_pass(replace(spec, layers=spec.probe_layers), tp, 1, 1, 2, precision)


def check_group(system: System, group: Iterable[str], probe: LogicalPass, blame: str) -> None:
    """A lock-step group is one device type, and each member runs every op kind of the workload."""
    group = tuple(group)
    types = {system.devices[d].type_name for d in group}
    if len(types) > 1:
        raise ConfigError(f"tensor-parallel group {', '.join(group)} mixes device types "
                          f"({', '.join(sorted(types))}); a group runs in lock-step on one kind of device",
                          key=blame)  # fmt: skip
    kinds: dict[tuple, Op] = {}  # one op per kind and dtype/format combination
    for lop in probe.ops:
        op = lop.op
        kinds.setdefault(
            (op.kind, op.dtype, getattr(op, "weight_dtype", None), getattr(op, "kv_dtype", None)), op
        )
    for d in group:
        comp = system.devices[d]
        for op in kinds.values():
            if not comp.supports(op):
                raise ConfigError(f"{comp.type_name} {d!r} cannot run the workload's {op.kind} ops "
                                  f"(it runs: {', '.join(sorted(comp.COSTS))})", key=blame)  # fmt: skip
            try:
                comp.op_cost(op)
            except ConfigError as e:
                raise ConfigError(e.message, key=e.key or "dtype") from None


def nearest_hosts(system: System, gpus: Iterable[str]) -> dict[str, str]:
    """Each GPU's closest CPU (lowest-latency route): where its offloaded weights live."""
    cpus = system.of_type("cpu")
    if not cpus:
        raise ConfigError(f"weight offload needs a host CPU linked to the GPUs; {system.name!r} has none "
                          "(use a system preset such as workstation-rtx4090 or dgx-a100-8)", key="offload.weights")  # fmt: skip

    def latency(gpu: str, cpu: str) -> float:
        return sum(link.latency_s for _, _, link in system.route(gpu, cpu))

    return {gpu: min(cpus, key=lambda cpu: (latency(gpu, cpu), cpu)) for gpu in gpus}


def weight_bytes(spec: LLMSpec, placement: Placement, stage: int, precision: PrecisionPlan) -> float:
    """Weights one rank of `stage` holds: its layers split tp ways (only two layer buffers, each the size
    of the largest layer, when weights stream from the host), the embedding on the first stage, final
    norm and LM head on the last. An MoE layer holds all its experts."""
    tp = placement.tp
    lo, hi = placement.layer_bounds[stage], placement.layer_bounds[stage + 1]
    ep = len(placement.expert_groups) or 1  # an expert-parallel rank holds 1/ep of the routed experts
    if placement.hosts is None:
        blocks, routed = spec.layers_params(lo, hi, ep=ep), spec.routed_params(lo, hi, ep)
    else:  # two buffers of the largest layer
        blocks = min(2, hi - lo) * spec.layer_params
        routed = min(2, hi - lo) * max(spec.routed_params(i, i + 1) for i in range(spec.layers))
    if len(placement.stages) == 1:  # one stage holds everything; tied embeddings counted once
        return precision.weight_bytes(spec.outer_params + blocks, routed) / tp
    h = spec.hidden
    outer = 0.0
    if stage == 0:
        outer += spec.vocab * h + (spec.max_positions * h if spec.family in ("opt", "gpt3") else 0)
    if stage == len(placement.stages) - 1:
        outer += spec.vocab * h + h  # a pipeline's last stage keeps its own LM head, tied or not
    return precision.weight_bytes(blocks + outer, routed) / tp
