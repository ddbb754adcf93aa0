"""Map: an execution plan and a registry of mappers that turn a rank's logical pass into a program.

A mapper is a function (logical pass, placement, plan) -> Program; a new one is a file plus a line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from models.llm import LogicalPass
from simcore.mapping.expert_parallel import map_expert_parallel
from simcore.mapping.frameworks import FRAMEWORKS, Framework
from simcore.mapping.kv_offload import map_kv_offload
from simcore.mapping.pipeline import map_pipeline
from simcore.mapping.plan import ExecutionPlan, Placement, place
from simcore.mapping.tensor_parallel import map_tensor_parallel
from simcore.program import Program

Mapper = Callable[[LogicalPass, Placement, ExecutionPlan], Program]

MAPPERS: dict[str, Mapper] = {
    "tensor": map_tensor_parallel,
    "pipeline": map_pipeline,
    "kv-offload": map_kv_offload,
    "expert": map_expert_parallel,
}


def map_pass(logical: LogicalPass, placement: Placement, plan: ExecutionPlan) -> Program:
    """The mapper's program, with the plan's framework applied (the library its all-reduces call)."""
    program = MAPPERS[plan.mapper](logical, placement, plan)
    library = FRAMEWORKS[plan.framework].allreduce
    if library != "nccl":
        program = program.replace_ops(lambda op: replace(op, library=library),
                                      only=program.indices_of("allreduce"), uniform=True)  # fmt: skip
    return program


__all__ = ["FRAMEWORKS", "MAPPERS", "ExecutionPlan", "Framework", "Placement", "map_pass", "place"]
