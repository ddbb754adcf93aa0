"""The expert-parallel mapper: `ep` ranks each run the pass on their share of the batch (attention and dense
layers data-parallel) and hold E/ep of every MoE layer's experts; around each layer's expert GEMMs, every
rank sends every other one the token rows routed to its experts (all-to-all dispatch) and gets the expert
outputs back (all-to-all combine).

An all-to-all is ep (ep - 1) point-to-point transfers over the topology, each a flow sharing the links
and memories it crosses with everything else in flight (a link between two ranks carries one transfer
each way; an NVSwitch port carries a rank's ep - 1 sends at once). A rank's next op waits for every
transfer addressed to it, so the slowest sender sets the pace, as in a real all-to-all.

With `plan.ep_chunks` = c > 1 each MoE layer's tokens are split into c chunks that form a pipeline, as
Comet (Zhang et al., MLSys 2025) and earlier chunked schemes (Tutel, FasterMoE) do: chunk j's dispatch,
its expert GEMMs and its combine wait only for each other, so the dispatch of chunk j + 1 crosses the links
while chunk j's GEMMs run and chunk j's combine overlaps chunk j + 1's GEMMs. The copies of one sender to
one receiver run in order on their copy lane (every dispatch chunk, then every combine chunk: the dispatches
run ahead), the GEMMs of one rank in order on its lane. A chunk's GEMMs are priced by the device model at
the chunk's shape (fewer rows per expert: less efficient tiles), and each chunk's transfers pay their own
latency. With c = 1 the mapping is the plain dispatch, experts, combine sequence, step for step.

Comet drives the all-to-all from thread blocks of its fused kernel, so while a pipelined layer's transfers
are in flight its expert GEMMs have only part of the SMs: with `plan.ep_comm_sm_share` = f the expert ops of
a layer split into more than one chunk are steps with `sm_share` = 1 - f (priced at max(t_sm / (1 - f),
t_mem) by the engine). A layer that runs as one chunk (f must then be 0, or its tokens are too few to
split) overlaps nothing and keeps every SM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from models.llm import LogicalOp, LogicalPass
from simcore.mapping.plan import ExecutionPlan, Placement
from simcore.mapping.steps import StepWriter
from simcore.ops import Op, Transfer
from simcore.program import Program, Step

Group = tuple[str, ...]
Ops = Sequence[tuple[int, LogicalOp]]


def map_expert_parallel(logical: LogicalPass, placement: Placement, plan: ExecutionPlan) -> Program:
    """Chain each rank's ops segment by segment; each MoE layer's dispatch, expert ops and combine as a
    pipeline of `plan.ep_chunks` token chunks."""
    w = StepWriter(logical, placement.hosts)
    ranks = placement.expert_groups
    ops = list(enumerate(logical.ops))
    cuts = [*logical.exchanges, (len(ops) - 1, 0.0)]
    arrived: dict[Group, list[int]] = {g: [] for g in ranks}
    twins: dict[tuple[Group, int, int], int] = {}  # (rank, op index in the pass, chunk) -> its step
    start, i = 0, 0
    while True:
        cut, dispatch_B = cuts[i]
        ends = {
            g: w.chain(ops[start : cut + 1], g, arrived[g], prefix=f"ep{r}.") for r, g in enumerate(ranks)
        }
        if cut + 1 >= len(ops):
            break
        last, combine_B = cuts[i + 1]  # exchanges come in pairs: after the permutation, after the experts
        routing = Routing.of(ops[start : cut + 1], len(ranks))
        layer = ExpertLayer(w, ranks, routing, ops[cut + 1 : last + 1], twins)
        arrived = layer.pipeline(ends, dispatch_B, combine_B, plan.ep_chunks, 1.0 - plan.ep_comm_sm_share)
        start, i = last + 1, i + 2
    return Program.compile(logical.name, w.steps)


@dataclass(frozen=True)
class Routing:
    """What one MoE layer routes on each rank: `tokens` tokens choosing `top_k` of `experts` experts each,
    the experts split over `ep` ranks."""

    tokens: int
    top_k: int
    experts: int
    ep: int

    @classmethod
    def of(cls, before: Ops, ep: int) -> Routing:
        """Read from the layer's router GEMM ([tokens, hidden] @ [hidden, experts]) and its permutation (the
        tokens' top-k rows gathered: tokens x k x hidden elements), the last of each in `before`."""
        by_name = {lop.name.rsplit(".", 1)[-1]: lop.op for _, lop in before}
        router, permute = by_name["router"], by_name["permute"]
        tokens, hidden, experts = router.m, router.k, router.n  # type: ignore[attr-defined]
        return cls(tokens, permute.elements // (tokens * hidden), experts, ep)  # type: ignore[attr-defined]

    def chunk_tokens(self, chunks: int) -> list[int]:
        """Tokens of each chunk: as even as whole tokens allow, at most one chunk per token."""
        c = min(chunks, self.tokens)
        base, extra = divmod(self.tokens, c)
        return [base + (1 if j < extra else 0) for j in range(c)]

    def expert_rows(self, tokens: int) -> tuple[int, int]:
        """(local experts hit, rows each) for `tokens` tokens on every rank, as models.llm.expert_rows: the
        E/ep local experts see ep x tokens tokens, hitting (E/ep)(1 - (1 - k/E)^(ep tokens)) of them, which
        share the tokens x k rows routed here."""
        e, k = self.experts, self.top_k
        local = e // self.ep
        active = max(1, min(local, round(e * (1.0 - (1.0 - k / e) ** (tokens * self.ep)) / self.ep)))
        return active, -(-tokens * k // active)


def _expert_gemm(op: Op, active: int, rows: int, whole: tuple[int, int]) -> Op:
    """A grouped expert GEMM over a chunk: `active` experts of `rows` rows each."""
    return replace(op, batch=active, m=rows)  # type: ignore[type-var]


def _per_row(op: Op, active: int, rows: int, whole: tuple[int, int]) -> Op:
    """An elementwise op over the experts' rows (the activation): its elements per row kept."""
    per = op.elements // (whole[0] * whole[1])  # type: ignore[attr-defined]
    return replace(op, elements=active * rows * per)  # type: ignore[type-var]


#: op kind of an expert op -> the op over a chunk's (experts hit, rows per expert), given the whole layer's
RESHAPE: dict[str, Callable[[Op, int, int, tuple[int, int]], Op]] = {
    "gemm": _expert_gemm,
    "elementwise": _per_row,
}


class ExpertLayer:
    """One MoE layer's all-to-all dispatch, expert ops and all-to-all combine over the ranks, as a pipeline
    of token chunks."""

    def __init__(self, w: StepWriter, ranks: Sequence[Group], routing: Routing, experts: Ops,
                 twins: dict[tuple[Group, int, int], int]) -> None:  # fmt: skip
        self.w, self.ranks, self.routing, self.experts, self.twins = w, ranks, routing, experts, twins
        name = experts[0][1].name
        self.layer = name.rsplit(".", 1)[0]  # "L3"
        gemm = experts[0][1].op
        self.whole = (gemm.batch, gemm.m)  # type: ignore[attr-defined]
        self.dtype = w.logical.ops[0].op.dtype

    def pipeline(self, after: dict[Group, int], dispatch_B: float, combine_B: float, chunks: int,
                 sm_share: float = 1.0) -> dict[Group, list[int]]:  # fmt: skip
        """Emit the layer's steps after each rank's step in `after`, the expert ops of more than one chunk on
        `sm_share` of the SMs; per rank, the combine transfers its next op waits for."""
        sizes = self.routing.chunk_tokens(chunks)
        tags = [""] if len(sizes) == 1 else [f".c{j}" for j in range(len(sizes))]
        sms = 1.0 if len(sizes) == 1 else sm_share
        share = [t / self.routing.tokens for t in sizes]
        # every dispatch chunk first: each sender-receiver copy lane runs them back to back, ahead of the GEMMs
        landed = [
            self.all_to_all(f"{self.layer}.dispatch{tag}", after, dispatch_B * s)
            for tag, s in zip(tags, share, strict=True)
        ]
        arrived: dict[Group, list[int]] = {g: [] for g in self.ranks}
        for j, (t, tag, s) in enumerate(zip(sizes, tags, share, strict=True)):
            ends = {g: self.chain(g, j, t, landed[j][g], tag, sms) for g in self.ranks}
            for g, steps in self.all_to_all(f"{self.layer}.combine{tag}", ends, combine_B * s).items():
                arrived[g] += steps
        return arrived

    def all_to_all(self, what: str, after: dict[Group, int], nbytes: float) -> dict[Group, list[int]]:
        """ep (ep - 1) transfers of `nbytes`, each after its sender's step in `after`; per receiver, the
        transfers into it."""
        w, ranks = self.w, self.ranks
        into: dict[Group, list[int]] = {g: [] for g in ranks}
        for a, src in enumerate(ranks):
            for b, dst in enumerate(ranks):
                if a != b:
                    op = Transfer(f"{what}_ep{a}_to_ep{b}", self.dtype, nbytes=nbytes, src=src[0], dst=dst[0])
                    into[dst].append(w.add(Step(op, src, (after[src],), w.logical.phase)))
        return into

    def chain(self, g: Group, j: int, tokens: int, landed: list[int], tag: str, sm_share: float) -> int:
        """Chunk j's expert ops on rank `g` on `sm_share` of its SMs, after the rank's previous op and chunk
        j's dispatch into it (one chunk: the layer's own ops, as StepWriter.chain places them)."""
        w, phase = self.w, self.w.logical.phase
        active, rows = self.routing.expert_rows(tokens) if tag else self.whole
        prefix = f"ep{self.ranks.index(g)}."
        deps: tuple[int, ...] = tuple(sorted([w.last[g], *landed]))
        for k, lop in self.experts:
            op = RESHAPE[lop.op.kind](lop.op, active, rows, self.whole) if tag else lop.op
            twin = self.twins.get((g, lop.twin if lop.twin >= 0 else k, j), -1)
            name = prefix + (lop.name or op.name) + tag
            step = w.add(Step(op, g, deps, phase, lop.allocs, twin, name, sm_share))
            self.twins.setdefault((g, k, j), step)
            w.placed.setdefault((g, k), step)
            deps = (step,)
        w.last[g] = deps[0]
        return deps[0]
