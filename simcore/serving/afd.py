"""Attention/FFN disaggregation (Lamina, Chen et al. 2024; MegaScale-Infer, Zhu et al. 2025): a replica's
attention operators run next to the KV cache on attention devices (memory-rich, e.g. H20), everything with
weights (embedding, QKV and output projections, the dense FFN or the experts, the LM head) on the
replica's tensor-parallel group (compute-rich, e.g. H100).

Per layer and rank, q and the new tokens' k and v cross to the rank's attention devices, the attention
runs there over the KV cache, and its output crosses back: two transfers per layer, routed over the
system's links like any other copy. With one micro-batch a layer takes its GEMMs, then the two transfers
and the attention, in turn. With m micro-batches in flight (MegaScale-Infer's ping-pong pipeline) the
group runs micro-batch j + 1's GEMMs while j's attention runs, so with balanced sides a layer approaches
m x max(attention, GEMMs) of one micro-batch, plus the fill; the price is that every micro-batch reads the
weights again (a memory-bound decode pays it m times).

The attention side is data-parallel: rank r's attention devices each take an even share of the
sequences (whole sequences), for its heads; one attention device may serve every rank.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

from models.llm import LLMSpec, LogicalOp, LogicalPass, SeqGroup, build_pass
from simcore.config import Param, param_field, positive
from simcore.errors import ConfigError
from simcore.mapping.kv_offload import attention_io_B, split_batch
from simcore.mapping.plan import ExecutionPlan, Placement, probe_pass
from simcore.ops import Attention, Op, Transfer
from simcore.precision import PrecisionPlan
from simcore.program import Program, Step
from simcore.system import System

KEY = "scenario.disaggregation.attention"


def device_patterns(value: object) -> tuple[str, ...]:
    """A device name or pattern, or a list of them (ValueError says what is expected)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items or not all(isinstance(v, str) and v for v in items):
        raise ValueError(f"expected a device name or pattern, or a list of them, got {value!r}")
    return tuple(items)


@dataclass(frozen=True)
class AttentionSpec:
    """The `disaggregation.attention:` block: where each replica's attention runs, and how many
    micro-batches ping-pong between the two sides."""

    devices: tuple[str, ...] | None = param_field(Param(
        "devices (names or patterns) that run the attention next to the KV cache, split evenly over the "
        "parallelism.dp replicas; per replica one device, or a multiple of tp (rank r takes the r-th "
        "slice); none: attention runs with the GEMMs", type=device_patterns, default=None))  # fmt: skip
    microbatches: int = param_field(positive(
        "micro-batches of each iteration in flight between the attention devices and the GEMM group "
        "(ping-pong); 1: the sides take turns", type=int, default=2, maximum=64))  # fmt: skip

    @property
    def on(self) -> bool:
        return bool(self.devices)


def split_groups(groups: Sequence[SeqGroup], m: int) -> list[tuple[SeqGroup, ...]]:
    """An iteration's sequences dealt round-robin into at most `m` micro-batches (empty ones dropped):
    sizes differ by at most one sequence, and each keeps its groups' shapes."""
    out: list[list[SeqGroup]] = [[] for _ in range(m)]
    start = 0
    for g in groups:
        for j in range(m):
            n = len(range((j - start) % m, g.count, m))
            if n:
                out[j].append(SeqGroup(n, g.q_len, g.kv_len))
        start = (start + g.count) % m
    return [tuple(mb) for mb in out if mb]


def attention_pools(system: System, spec: LLMSpec, plan: ExecutionPlan, placement: Placement,
                    patterns: Sequence[str]) -> tuple[tuple[str, ...], ...]:  # fmt: skip
    """Each replica's attention devices, checked before t=0: they exist, run none of the GEMMs, split
    evenly over the replicas (one per replica, or a multiple of tp each) and run the model's attention."""
    devs = list(dict.fromkeys(d for pat in patterns for d in fnmatch.filter(system.devices, pat)))
    if not devs:
        raise ConfigError(f"no device of {system.name!r} matches {', '.join(patterns)}", key=f"{KEY}.devices")
    clash = sorted(set(devs) & set(placement.devices))
    if clash:
        raise ConfigError(f"{clash[0]!r} runs the replica's GEMMs; name attention devices apart from "
                          "parallelism.devices", key=f"{KEY}.devices")  # fmt: skip
    if plan.pp > 1:
        raise ConfigError(f"attention disaggregation with pp={plan.pp} is not modelled (one GEMM stage per "
                          "replica)", key=f"{KEY}.devices")  # fmt: skip
    dp, tp = len(placement.replicas), placement.tp
    per, extra = divmod(len(devs), dp)
    if extra or not (per == 1 or per % tp == 0):
        raise ConfigError(f"{len(devs)} attention device(s) for {dp} replica(s) of tp={tp}: each replica needs "
                          "one, or a multiple of tp", key=f"{KEY}.devices")  # fmt: skip
    attn = {lop.op for lop in probe_pass(spec, tp, plan.precision).ops if isinstance(lop.op, Attention)}
    for d in devs:
        comp = system.devices[d]
        try:
            for op in attn:
                comp.op_cost(op)
        except ConfigError as e:
            raise ConfigError(f"{comp.type_name} {d!r} cannot run the attention: {e.message}",
                              key=f"{KEY}.devices") from None  # fmt: skip
    return tuple(tuple(devs[r * per : (r + 1) * per]) for r in range(dp))


def rank_slices(group: tuple[str, ...], pool: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Each rank's attention devices: the r-th equal slice of the pool, or the pool's one device."""
    if len(pool) == 1:
        return dict.fromkeys(group, pool)
    k = len(pool) // len(group)
    return {gpu: pool[r * k : (r + 1) * k] for r, gpu in enumerate(group)}


def attention_lanes(group: tuple[str, ...], slices: Mapping[str, tuple[str, ...]]
                    ) -> list[tuple[tuple[tuple[str, str], ...], tuple[str, ...], int, int]]:  # fmt: skip
    """How the ranks' attention runs: [((rank, its attention device) pairs, the lock-step device group,
    the share d of `ways` of the sequences)]. With a slice per rank, the d-th devices of every slice run
    rank-parallel in lock-step (like the tensor-parallel group); one device serving every rank runs the
    ranks' attentions one after the other."""
    first = slices[group[0]]
    if len(group) > 1 and all(slices[g] == first for g in group):  # one device for every rank
        return [(((gpu, first[0]),), first, 0, 1) for gpu in group]
    ways = len(first)
    return [(tuple((gpu, slices[gpu][d]) for gpu in group), tuple(slices[gpu][d] for gpu in group), d, ways)
            for d in range(ways)]  # fmt: skip


@lru_cache(maxsize=256)
def _logical(spec: LLMSpec, tp: int, precision: PrecisionPlan, phase: str, groups: tuple[SeqGroup, ...]
             ) -> LogicalPass:  # fmt: skip
    return build_pass(spec, tp, 0, 0, 0, precision, phase, 0, groups)


def _segments(ops: Sequence[LogicalOp]) -> list[tuple[bool, list[tuple[int, LogicalOp]]]]:
    """The pass as [(is remote attention, [(index, op), ...])], alternating, one remote segment (maybe
    empty) per layer, so that micro-batches of different shapes align: a layer's decode attentions are
    remote; its prefill attentions (q_len > 1) stay with the GEMMs, before the cut."""
    out: list[tuple[bool, list[tuple[int, LogicalOp]]]] = [(False, [])]
    block = None
    for k, lop in enumerate(ops):
        if isinstance(lop.op, Attention):
            if lop.block != block:  # the layer's first attention: cut here
                block = lop.block
                out += [(True, []), (False, [])]
            if lop.op.q_len == 1:
                out[-2][1].append((k, lop))
            else:
                out[-3][1].append((k, lop))
            continue
        out[-1][1].append((k, lop))
    return out


def map_afd(passes: Sequence[LogicalPass], group: tuple[str, ...], slices: Mapping[str, tuple[str, ...]],
            name: str) -> Program:  # fmt: skip
    """One iteration of micro-batches `passes` (alike in structure), interleaved segment by segment so that
    the group runs one micro-batch's GEMMs while another's attention runs (see the module doc)."""
    steps: list[Step] = []
    last: dict[tuple[str, ...], int] = {}  # device group -> its latest step
    placed: dict[tuple[int, tuple[str, ...], int], int] = {}  # (pass, devices, op index) -> first step
    parts: dict[tuple[Op, int], Op] = {}  # (attention, sequences) -> one op object (twins stay twins)
    cuts = [_segments(lp.ops) for lp in passes]
    lanes = attention_lanes(group, slices)
    arrived: list[list[int]] = [[] for _ in passes]
    ends: list[int] = [-1] * len(passes)
    dtype = passes[0].ops[0].op.dtype

    def add(step: Step) -> int:
        steps.append(step)
        if not isinstance(step.op, Transfer):  # copies run on the DMA engines, beside the kernels
            last[step.devices] = len(steps) - 1
        return len(steps) - 1

    def run(lp: LogicalPass, j: int, k: int, lop: LogicalOp, op: Op, devices: tuple[str, ...],
            deps: list[int]) -> int:  # fmt: skip
        prev = last.get(devices)
        deps = sorted({*deps, *([prev] if prev is not None else [])})
        twin = placed.get((id(lp), devices, lop.twin if lop.twin >= 0 else k), -1)
        i = add(Step(op, devices, tuple(deps), lp.phase, lop.allocs, twin, f"mb{j}." + (lop.name or op.name)))
        placed.setdefault((id(lp), devices, k), i)
        return i

    def keep(lop: LogicalOp, j: int, after: int, phase: str) -> None:
        """Write a prefill attention's new K and V from each rank to its attention devices (each device
        its share of the sequences); nothing waits for the copies but the end of the iteration."""
        op = lop.op
        assert isinstance(op, Attention)
        for pairs, _, d, ways in lanes:
            n = split_batch(op.batch, ways)[d]
            if n:
                new_B = attention_io_B(replace(op, batch=n))[1]
                for gpu, dev in pairs:
                    add(Step(Transfer(f"mb{j}.{lop.name}.kv_to_{dev}", dtype, nbytes=new_B, src=gpu, dst=dev),
                             (gpu,), (after,), phase))  # fmt: skip

    for s in range(len(cuts[0])):
        for j, lp in enumerate(passes):
            is_attn, ops = cuts[j][s]
            if not is_attn:
                waits = arrived[j]
                for k, lop in ops:
                    ends[j] = run(lp, j, k, lop, lop.op, group, waits)
                    waits = []
                    if isinstance(lop.op, Attention):  # a prefill's new K and V go to the attention devices
                        keep(lop, j, ends[j], lp.phase)
                continue
            arrived[j] = []
            for pairs, devices, d, ways in lanes:
                mine = [(k, lop, parts.setdefault((lop.op, n), replace(lop.op, batch=n)))
                        for k, lop in ops if (n := split_batch(lop.op.batch, ways)[d])]  # fmt: skip
                if not mine:
                    continue
                io = [attention_io_B(op) for _, _, op in mine]  # type: ignore[arg-type]
                label = (ops[0][1].name or "attn").rsplit(".", 1)[0]
                sent = [add(Step(Transfer(f"mb{j}.{label}.qkv_to_{dev}", dtype, nbytes=sum(q + kv for q, kv, _ in io),
                                          src=gpu, dst=dev), (gpu,), (ends[j],), lp.phase))
                        for gpu, dev in pairs]  # fmt: skip
                for k, lop, op in mine:
                    a = run(lp, j, k, lop, op, devices, sent)
                    sent = [a]
                for gpu, dev in pairs:
                    out = Transfer(f"mb{j}.{label}.out_to_{gpu}", dtype, nbytes=sum(o for _, _, o in io),
                                   src=dev, dst=gpu)  # fmt: skip
                    arrived[j].append(add(Step(out, (dev,), (sent[0],), lp.phase)))
    return Program.compile(name, steps, coarse=True)


class AttentionDisaggregation:
    """Iteration programs of replicas whose attention runs on their attention pools."""

    def __init__(self, spec: LLMSpec, plan: ExecutionPlan, placement: Placement, pools: tuple[tuple[str, ...], ...],
                 microbatches: int) -> None:  # fmt: skip
        self.spec, self.plan, self.placement = spec, plan, placement
        self.pools, self.microbatches = pools, microbatches

    def iteration(self, replica: int, groups: tuple[SeqGroup, ...], phase: str = "mixed") -> list[Program]:
        """Replica `replica`'s pass over `groups`, split into the micro-batches (one program)."""
        group = self.placement.replicas[replica][0]
        tp, precision = self.placement.tp, self.plan.precision
        passes = [
            _logical(self.spec, tp, precision, phase, mb) for mb in split_groups(groups, self.microbatches)
        ]
        return [map_afd(passes, group, rank_slices(group, self.pools[replica]), passes[0].name)]

    def kv_ways(self, replica: int) -> int:
        """Attention devices per rank: a KV block lives on one of them, so the pool holds this many
        times the blocks one device fits."""
        pool = self.pools[replica]
        return 1 if len(pool) == 1 else len(pool) // self.placement.tp

    def block_bytes(self, replica: int, per_token_B: float, block_size: int) -> dict[str, float]:
        """Bytes one KV block takes on each attention device of the replica: its rank's heads, or every
        rank's on a device that serves them all."""
        pool = self.pools[replica]
        share = 1.0 if len(pool) == 1 else 1.0 / self.placement.tp
        return {d: block_size * per_token_B * share for d in pool}
