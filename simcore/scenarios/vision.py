"""Vision inference: one forward pass of a CNN or ViT over `batch` frames on the first device that runs
every op of the network (a GPU or a systolic array), weights resident in its memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.cnn import build, param_count
from models.onnx_import import load_onnx
from simcore.config import param_field, positive
from simcore.engine import Engine
from simcore.errors import ConfigError
from simcore.mapping import ExecutionPlan
from simcore.ops import dtype_bytes
from simcore.program import Program
from simcore.results import Result
from simcore.scenarios.base import Scenario, account, register
from simcore.system import System


@register("inference")
@dataclass(frozen=True)
class Inference(Scenario):
    workload = "vision"
    batch: int = param_field(positive("frames in the batch", type=int, default=1))

    def run(self, system: System, model: str, plan: ExecutionPlan, keep_records: bool) -> Result:
        network, dtype = model, plan.dtype
        try:
            if network.lower().endswith(".onnx"):  # an ONNX file (models/onnx_import.py)
                graph = load_onnx(network, self.batch, dtype=dtype)
            else:
                graph = build(network, self.batch, dtype=dtype)
        except ValueError as e:
            raise ConfigError(str(e), key="model") from None
        kinds = {op.kind for op in graph.ops()}
        device = next((n for n, c in system.devices.items() if all(k in c.COSTS for k in kinds)), None)
        if device is None:
            raise ConfigError(
                f"no device in {system.name!r} runs every op of {network} ({', '.join(sorted(kinds))})"
            )
        eng = Engine(system, keep_records=keep_records)
        eng.allocate(device, f"{network} weights", param_count(graph) * dtype_bytes(dtype))
        t = eng.run(Program.from_graph(graph, (device,)))
        summary: dict[str, Any] = {"latency_s": t, "frames_per_s": self.batch / t, "model": network,
                                   "batch": self.batch, "dtype": dtype, "device": device}  # fmt: skip
        return account(eng.ledger(), (device,), summary, "frame", self.batch)
