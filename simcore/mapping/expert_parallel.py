"""The expert-parallel mapper: `ep` ranks each run the pass on their share of the batch (attention and dense
layers data-parallel) and hold E/ep of every MoE layer's experts; around each layer's expert GEMMs, every
rank sends every other one the token rows routed to its experts (all-to-all dispatch) and gets the expert
outputs back (all-to-all combine).

An all-to-all is ep (ep - 1) point-to-point transfers over the topology, each a flow sharing the links
and memories it crosses with everything else in flight (a link between two ranks carries one transfer
each way; an NVSwitch port carries a rank's ep - 1 sends at once). A rank's next op waits for every
transfer addressed to it, so the slowest sender sets the pace, as in a real all-to-all.
"""

from __future__ import annotations

from models.llm import LogicalPass
from simcore.mapping.plan import ExecutionPlan, Placement
from simcore.mapping.steps import StepWriter
from simcore.ops import Transfer
from simcore.program import Program, Step


def map_expert_parallel(logical: LogicalPass, placement: Placement, plan: ExecutionPlan) -> Program:
    """Chain each rank's ops segment by segment, with the all-to-all of `logical.exchanges` between them."""
    w = StepWriter(logical, placement.hosts)
    ranks = placement.expert_groups
    dtype = logical.ops[0].op.dtype
    ops = list(enumerate(logical.ops))
    cuts = [*logical.exchanges, (len(ops) - 1, 0.0)]
    arrived: dict[tuple[str, ...], list[int]] = {g: [] for g in ranks}
    start = 0
    for cut, nbytes in cuts:
        ends = {
            g: w.chain(ops[start : cut + 1], g, arrived[g], prefix=f"ep{r}.") for r, g in enumerate(ranks)
        }
        start = cut + 1
        if start >= len(ops):
            break
        arrived = {g: [] for g in ranks}
        name = logical.ops[cut].name
        what = name.rsplit(".", 1)[0] + (".dispatch" if name.endswith(".permute") else ".combine")
        for a, src in enumerate(ranks):
            for b, dst in enumerate(ranks):
                if a != b:
                    op = Transfer(f"{what}_ep{a}_to_ep{b}", dtype, nbytes=nbytes, src=src[0], dst=dst[0])
                    arrived[dst].append(w.add(Step(op, src, (ends[src],), logical.phase)))
    return Program.compile(logical.name, w.steps)
