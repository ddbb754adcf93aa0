"""Host CPU: cores × SIMD FLOPs per cycle × clock for compute, DDR bandwidth for everything else.

GEMMs cost their FLOPs at the SIMD FMA rate. Attention adds its softmax: per (query, key) pair the two
matmuls' 4·head_dim FLOPs plus one exp and SOFTMAX_FLOPS_PER_PAIR other FLOPs, all on the SIMD units (a
CPU has no separate exp unit, so the exponentials are not hidden behind the matmuls as on a GPU).
"""

from __future__ import annotations

from typing import Any

from hardware.gpu import DTYPES
from hardware.memory import MEMORY_SCHEMA, PCIE_SCHEMA, POWER_SCHEMA
from hardware.power import default_action_energy, tdp_flop_energy
from simcore.component import Component, OpCost, register
from simcore.config import REQUIRED, MapOf, Param, fraction, nonneg, positive
from simcore.ops import Attention, Gemm, Op, ceil_div
from simcore.precision import Dequant, dequant_work

#: Softmax FLOPs per (query, key) pair besides the exp: scale the score, fold it into the row max,
#: subtract the max, add the exp to the row sum (the per-row normalisation is amortised over the keys).
SOFTMAX_FLOPS_PER_PAIR = 4.0
#: Rows of A (queries) sharing one dequantized copy of a weight (KV) block: the M (query) block of a blocked
#: kernel, 64 as in the native reference kernels (simcore/native/refkernels.c).
DEQUANT_ROWS = 64

CPU_SCHEMA: dict[str, Any] = {
    "abstract": Param("an architecture base, not a usable part", default=False, type=bool),
    "cores": positive("cores per socket", type=int),
    "clock": positive("all-core sustained clock", "frequency"),
    "simd_width": positive("SIMD register width in bits", type=int),
    "flops_per_cycle": MapOf(positive(""), "FLOPs per cycle per core by dtype", DTYPES, default=REQUIRED),
    "llc": positive("last-level cache", "bytes", default=32 * 2**20),
    "exp_flops": positive(
        "FLOPs-equivalent of one vectorised exp: range reduction 8 + degree-7 polynomial 14 + exponent "
        "insertion and underflow select 4, refk_exp_neg in simcore/native/refkernels.c (an FMA counts 2)",
        default=26.0,
    ),
    "memory": MEMORY_SCHEMA,
    "pcie": PCIE_SCHEMA,
    "power": POWER_SCHEMA,
    "efficiency": {
        "compute": fraction("achievable fraction of SIMD peak in a blocked GEMM", default=0.7),
        "memory": fraction("achievable fraction of DRAM bandwidth (STREAM triad / peak)", default=0.75),
    },
    "launch_overhead": nonneg("per-op dispatch overhead (framework + threading)", "time", default=5e-6),
    "energy": {
        "tech_node": positive("process node in nm", default=7.0),
        "flop": MapOf(nonneg("", "energy_per_op"), "energy per FLOP by dtype; default from TDP", DTYPES),
        "compute_share": fraction(
            "share of (TDP - idle) the cores draw at SIMD peak (the rest is uncore and memory)", default=0.7
        ),
        "dram_per_byte": nonneg("DRAM energy; default from memory type", "energy_per_byte", default=None),
    },
}


@register("cpu")
class CPU(Component):
    PORTS = ("pcie", "network")
    SCHEMA = CPU_SCHEMA
    FORWARDS = True  # the root complex routes peer-to-peer PCIe between root ports and over the socket link
    ACTIONS = ("flop.{dtype}", "flop.fp32", "dram.byte")
    ACTION_DTYPES = ("flops_per_cycle",)
    COSTS = {"gemm": "compute_cost", "attention": "attention_cost"} | {
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

    @property
    def peak_memory_bandwidth_Bps(self) -> float:
        return self.params["memory"]["bandwidth"]

    def dense_peak_flops(self, dtype: str) -> float:
        return self.peak_flops(dtype)

    def peak_flops(self, dtype: str) -> float:
        fpc = self.params["flops_per_cycle"]
        per_core = fpc.get(dtype, fpc.get("fp32", 0.0))
        return self.params["cores"] * self.params["clock"] * per_core

    def dequant_s(self, work: Dequant, elements: float) -> float:
        """Seconds to dequantize `elements` stored elements: one SIMD lane operation per integer or
        floating element-op, at the fp32 lane rate (FMA peak / 2) and the blocked-GEMM efficiency, on the
        same pipes as the matmul (so serial with it)."""
        lanes_per_s = self.peak_flops("fp32") / 2.0 * self.params["efficiency"]["compute"]
        return elements * work.ops / lanes_per_s

    def compute_cost(self, op: Gemm) -> OpCost:
        """GEMM: FLOPs at the blocked-GEMM fraction of SIMD peak, or DRAM traffic, whichever takes longer.
        A quantized B (`weight_dtype`) is read at its bits and dequantized once per block of DEQUANT_ROWS
        rows of A, serially with the FLOPs."""
        t_compute = op.flops / (self.peak_flops(op.dtype) * self.params["efficiency"]["compute"])
        t_mem = op.bytes / self.memory_bandwidth_Bps
        work = dequant_work(op.weight_dtype, op.dtype) if op.weight_dtype is not None else None
        elements = 0.0
        if work is not None:
            elements = op.batch * op.n * op.k * ceil_div(op.m, DEQUANT_ROWS)
            t_compute += self.dequant_s(work, elements)
        actions = {f"flop.{op.dtype}": op.flops, "dram.byte": op.bytes}
        return self._cost(op, t_compute, t_mem, actions, work, elements, "weight_dtype")

    def softmax_flops(self, op: Attention) -> float:
        """Exp and softmax FLOPs of an attention op: per computed (query, key) pair, causal half skipped."""
        pairs = op.batch * op.heads * op.score_pairs
        return pairs * (self.params["exp_flops"] + SOFTMAX_FLOPS_PER_PAIR)

    def attention_cost(self, op: Attention) -> OpCost:
        """QKᵀ and PV (4·d FLOPs per pair) plus the softmax, both at the GEMM's fraction of SIMD peak.

        The softmax runs in fp32 (fp64 for fp64 attention) whatever the matmuls' dtype, as CPU kernels
        upcast bf16/int8 scores; it is serial with the matmuls, since both use the same SIMD pipes.
        """
        eff = self.params["efficiency"]["compute"]
        sm_dtype = "fp64" if op.dtype == "fp64" else "fp32"
        sm_flops = self.softmax_flops(op)
        t_matmul = op.flops / (self.peak_flops(op.dtype) * eff)
        t_softmax = sm_flops / (self.peak_flops(sm_dtype) * eff)
        t_compute = t_matmul + t_softmax
        work = dequant_work(op.kv_dtype, op.dtype) if op.kv_dtype is not None else None
        elements = 0.0
        if work is not None:
            # K and V dequantized once per query block (decode: per group of query heads sharing a KV head)
            rows = min(op.q_len * (op.heads // op.kv_heads), DEQUANT_ROWS) if op.q_len <= 16 else \
                min(op.q_len, DEQUANT_ROWS)  # fmt: skip
            elements = 2.0 * op.head_dim * op.batch * op.heads * op.score_pairs / rows
            t_compute += self.dequant_s(work, elements)
        t_mem = op.bytes / self.memory_bandwidth_Bps
        actions = {f"flop.{op.dtype}": op.flops, "dram.byte": op.bytes}
        actions[f"flop.{sm_dtype}"] = actions.get(f"flop.{sm_dtype}", 0.0) + sm_flops
        return self._cost(op, t_compute, t_mem, actions, work, elements, "kv_dtype")

    def _cost(self, op: Op, t_compute: float, t_mem: float, actions: dict[str, float], work: Dequant | None,
              elements: float, fmt_field: str) -> OpCost:  # fmt: skip
        """Compute and memory overlap (the slower bounds the op); dequantization, if any, adds its lane
        instructions to the actions and names the stored format in the detail."""
        detail = {}
        if work is not None:
            actions["vector.op"] = elements * work.ops
            detail = {fmt_field: getattr(op, fmt_field), "dequant_elements": elements}
        bound = "compute" if t_compute >= t_mem else "memory"
        return OpCost(
            max(t_compute, t_mem) + self.params["launch_overhead"], bound, op.bytes, actions, detail
        )

    def stream_cost(self, op: Op) -> OpCost:
        t_mem = op.bytes / self.memory_bandwidth_Bps
        t_compute = op.flops / (self.peak_flops("fp32") * self.params["efficiency"]["compute"])
        bound = "memory" if t_mem >= t_compute else "compute"
        actions = {"flop.fp32": op.flops, "dram.byte": op.bytes}
        return OpCost(max(t_mem, t_compute) + self.params["launch_overhead"], bound, op.bytes, actions, {})

    def energy_per_action_J(self) -> dict[str, float]:
        """Memory actions from the energy tables; FLOPs from the TDP (`tdp_flop_energy`)."""
        p, en = self.params, self.params["energy"]
        out = default_action_energy(en, p["memory"]["type"])
        peaks = {d: self.peak_flops(d) for d in p["flops_per_cycle"]}
        out.update(
            tdp_flop_energy(p["power"]["tdp"], p["power"]["idle"], en["compute_share"], peaks, en["flop"])
        )
        if "flop.fp32" in out:  # one SIMD lane operation (dequantization) ~ an fp32 FMA lane: 2 FLOPs
            out["vector.op"] = 2.0 * out["flop.fp32"]
        return out
