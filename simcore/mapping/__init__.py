"""Map: an execution plan and a registry of mappers that turn a rank's logical pass into a program.

A mapper is a function (logical pass, placement, plan) -> Program; a new one is a file plus a line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from hardware.gpu import GPU
from models.llm import LogicalPass
from simcore.mapping.expert_parallel import map_expert_parallel
from simcore.mapping.frameworks import FALLBACK_ATTENTION, FRAMEWORKS, Framework, choose_attention
from simcore.mapping.kv_offload import map_kv_offload
from simcore.mapping.pipeline import map_pipeline
from simcore.mapping.plan import ExecutionPlan, Placement, place
from simcore.mapping.tensor_parallel import map_tensor_parallel
from simcore.program import Program
from simcore.system import System

Mapper = Callable[[LogicalPass, Placement, ExecutionPlan], Program]

MAPPERS: dict[str, Mapper] = {
    "tensor": map_tensor_parallel,
    "pipeline": map_pipeline,
    "kv-offload": map_kv_offload,
    "expert": map_expert_parallel,
}


def with_kernels(system: System, placement: Placement, plan: ExecutionPlan,
                 attention: str | None = None) -> ExecutionPlan:  # fmt: skip
    """`plan` with its attention kernel chosen for the GPUs of `placement` (architecture: the `architecture`
    parameter of a GPU; devices without one price attention their own way): `attention` if given, checked
    against every placed GPU, else the framework's default there."""
    placed = (
        system.devices[d] for d in {*placement.devices, *(d for g in placement.expert_groups for d in g)}
    )
    archs = (c.params["architecture"] if isinstance(c, GPU) else None for c in placed)
    kernel = choose_attention(plan.framework, attention, archs)
    return replace(plan, attention=kernel)


def map_pass(logical: LogicalPass, placement: Placement, plan: ExecutionPlan) -> Program:
    """The mapper's program, with the plan's framework applied: the library its all-reduces call and the
    kernel its attentions run (a decode step is flash-decoding whatever the kernel: the GPU decides)."""
    program = MAPPERS[plan.mapper](logical, placement, plan)
    library = FRAMEWORKS[plan.framework].allreduce
    if library != "nccl":
        program = program.replace_ops(lambda op: replace(op, library=library),
                                      only=program.indices_of("allreduce"), uniform=True)  # fmt: skip
    kernel = plan.attention
    if kernel != FALLBACK_ATTENTION:
        program = program.replace_ops(lambda op: replace(op, kernel=kernel),
                                      only=program.indices_of("attention"), uniform=True)  # fmt: skip
    return program


__all__ = [
    "FRAMEWORKS",
    "MAPPERS",
    "ExecutionPlan",
    "Framework",
    "Placement",
    "map_pass",
    "place",
    "with_kernels",
]
