"""The pipeline mapper: layers split into stages over device groups (GPUs or nodes), the batch split
into micro-batches, each stage sending its hidden state to the next over the links between them.

Stage s runs micro-batch j once it has finished micro-batch j-1 and stage s-1 has sent j. For
forward-only passes GPipe and 1F1B issue the same order (1F1B differs only in where backward passes
interleave), so with equal stages the pipeline is idle for (p-1)/(m+p-1) of the time."""

from __future__ import annotations

from itertools import groupby

from models.llm import LogicalPass
from simcore.mapping.plan import ExecutionPlan, Placement
from simcore.mapping.steps import StepWriter
from simcore.program import Program


def map_pipeline(logical: LogicalPass, placement: Placement, plan: ExecutionPlan) -> Program:
    """`logical` is one micro-batch's pass; it runs `plan.microbatches` times through the stages."""
    w = StepWriter(logical, placement.hosts)
    stages = placement.stages
    numbered = enumerate(logical.ops)
    by_stage = {
        s: tuple(ops) for s, ops in groupby(numbered, key=lambda ko: placement.stage_of_layer(ko[1].block))
    }
    for j in range(plan.microbatches):
        prefix = f"mb{j}." if plan.microbatches > 1 else ""
        arrived: list[int] = []
        for s, group in enumerate(stages):
            end = w.chain(by_stage.get(s, ()), group, arrived, prefix)
            if s + 1 < len(stages):
                arrived = w.send(group, stages[s + 1], end, f"{prefix}send_s{s}")
    return Program.compile(logical.name, w.steps)
