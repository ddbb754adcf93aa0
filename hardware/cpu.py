"""Host CPU: cores × SIMD FLOPs per cycle × clock for compute, DDR bandwidth for everything else."""

from __future__ import annotations

from typing import Any

from hardware.base import Component, OpCost, register
from hardware.gpu import DTYPES
from hardware.memory import MEMORY_SCHEMA, PCIE_SCHEMA, POWER_SCHEMA
from simcore.config import MapOf, Param, nonneg, positive
from simcore.ops import Attention, Gemm, Op

CPU_SCHEMA: dict[str, Any] = {
    "abstract": Param("an architecture base, not a usable part", default=False, type=bool),
    "cores": positive("cores per socket", type=int),
    "clock": positive("all-core sustained clock", "frequency"),
    "simd_width": positive("SIMD register width in bits", type=int),
    "flops_per_cycle": MapOf(positive(""), "FLOPs per cycle per core by dtype", DTYPES),
    "llc": positive("last-level cache", "bytes", default=32 * 2**20),
    "memory": MEMORY_SCHEMA,
    "pcie": PCIE_SCHEMA,
    "power": POWER_SCHEMA,
    "efficiency": {
        "compute": positive("achievable fraction of SIMD peak in a blocked GEMM", default=0.7),
        "memory": positive("achievable fraction of DRAM bandwidth (STREAM triad / peak)", default=0.75),
    },
    "launch_overhead": nonneg("per-op dispatch overhead (framework + threading)", "time", default=5e-6),
    "energy": {
        "tech_node": positive("process node in nm", default=7.0),
        "flop": MapOf(nonneg("", "energy_per_op"), "energy per FLOP by dtype", DTYPES),
        "dram_per_byte": nonneg("DRAM energy; default from memory type", "energy_per_byte", default=None),
    },
}


@register("cpu")
class CPU(Component):
    SCHEMA = CPU_SCHEMA
    COSTS = {k: "compute_cost" for k in ("gemm", "attention")} | {
        k: "stream_cost" for k in ("elementwise", "norm", "softmax", "embedding")
    }

    @property
    def memory_capacity_B(self) -> float:
        return self.params["memory"]["capacity"]

    @property
    def memory_bandwidth_Bps(self) -> float:
        return self.params["memory"]["bandwidth"] * self.params["efficiency"]["memory"]

    @property
    def static_power_W(self) -> float:
        return self.params["power"]["idle"]

    def peak_flops(self, dtype: str) -> float:
        fpc = self.params["flops_per_cycle"]
        per_core = fpc.get(dtype, fpc.get("fp32", 0.0))
        return self.params["cores"] * self.params["clock"] * per_core

    def compute_cost(self, op: Gemm | Attention) -> OpCost:
        t_compute = op.flops / (self.peak_flops(op.dtype) * self.params["efficiency"]["compute"])
        t_mem = op.bytes / self.memory_bandwidth_Bps
        bound = "compute" if t_compute >= t_mem else "memory"
        actions = {f"flop.{op.dtype}": op.flops, "dram.byte": op.bytes}
        return OpCost(max(t_compute, t_mem) + self.params["launch_overhead"], bound, op.bytes, actions, {})

    def stream_cost(self, op: Op) -> OpCost:
        t_mem = op.bytes / self.memory_bandwidth_Bps
        t_compute = op.flops / (self.peak_flops("fp32") * self.params["efficiency"]["compute"])
        bound = "memory" if t_mem >= t_compute else "compute"
        actions = {"flop.fp32": op.flops, "dram.byte": op.bytes}
        return OpCost(max(t_mem, t_compute) + self.params["launch_overhead"], bound, op.bytes, actions, {})

    def energy_per_action_J(self) -> dict[str, float]:
        from hardware.base import default_action_energy

        return default_action_energy(self.params["energy"], self.params["memory"]["type"])
