"""The tensor-parallel mapper: the whole pass on one lock-step group (weights resident or streamed)."""

from __future__ import annotations

from models.llm import LogicalPass
from simcore.mapping.plan import ExecutionPlan, Placement
from simcore.mapping.steps import StepWriter
from simcore.program import Program


def map_tensor_parallel(logical: LogicalPass, placement: Placement, plan: ExecutionPlan) -> Program:
    w = StepWriter(logical, placement.hosts)
    w.chain(list(enumerate(logical.ops)), placement.stages[0])
    return Program.compile(logical.name, w.steps)
