"""GPU: SMs with tensor cores, an L2, and HBM/GDDR, costed from tiles, waves and bytes per level.

GEMMs are tiled onto SMs in waves (CUTLASS-style output tiles, optional split-K); each tile streams its
A and B panels through L2 and shared memory. The time of a kernel is the slowest of tensor-core work
(quantized per SM: the busiest SM runs ceil(CTAs / SMs) tiles), DRAM traffic (with L2 reuse within a
wave; a partial last wave has fewer SMs issuing loads), L2 traffic and shared-memory traffic (each warp
reads its own operand fragments), plus a fixed launch overhead and, for split-K, the reduction kernel.
Attention is flash-style: query blocks over SMs, matmul FLOPs on tensor cores plus exponentials on the
special-function units. Softmax and norms are row-parallel (a warp or a CTA per row, one DRAM pass per
reduction when the row does not stay on chip). Everything else streams bytes through DRAM.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from hardware.memory import MEMORY_SCHEMA, PCIE_SCHEMA, POWER_SCHEMA
from hardware.power import default_action_energy, tdp_flop_energy
from simcore.component import Component, OpCost, register, ridge_point
from simcore.config import MapOf, Param, count, fraction, nonneg, positive
from simcore.errors import ConfigError
from simcore.ops import (
    Attention,
    AttentionGrad,
    Collective,
    Elementwise,
    Embedding,
    Gemm,
    Norm,
    Op,
    Softmax,
    ceil_div,
)
from simcore.precision import Dequant, dequant_work

DTYPES = ("fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4")

# Output-tile shapes the kernel library offers (CUTLASS/cuBLAS threadblock tiles for tensor cores).
TILES = ((256, 128), (128, 256), (128, 128), (128, 64), (64, 128), (64, 64))
# Mixed-input (weight-dequantizing) kernels also tile M in multiples of the m16n8k16 MMA's 16 rows for small
# batches (Marlin, arXiv 2408.11743: 16-64-row thread blocks; TensorRT-LLM fpA_intB), with all warps along N.
SMALL_M_TILES = ((16, 256), (16, 128), (32, 256), (32, 128))
SPLIT_K = (1, 2, 3, 4, 6, 8, 12, 16)
STRIPE_K = 64  # k-depth of one unit of work in a striped (Marlin) schedule: its 64-deep k-tile
K_STEP_BYTES = 64  # bytes of K per pipeline stage per row (32 x 16-bit, 64 x 8-bit)
PIPELINE_STAGES = 3  # multistage (cp.async / TMA) pipeline depth of the tensor-core GEMM main loop
WARP_TILE = 64  # largest warp tile edge: CUTLASS lays a CTA tile out as >= 2 x 2 warps of <= 64 x 64
# Row-wise reductions as the framework kernels run them (PyTorch softmax, fused/compiled layer norms):
# a softmax row of up to 1024 elements lives in one warp's registers (32 lanes x 32 values) and is read
# once; a longer row gets a CTA that streams it from memory once per pass: max, sum of exp, normalize.
# A norm row stays in its CTA's registers up to 8192 elements (32 KB of fp32, an eighth of the register
# file so that several CTAs share an SM); longer rows take two passes (Welford statistics, normalize).
SOFTMAX_WARP_ROW = 1024
SOFTMAX_PASSES = 3
NORM_CTA_ROW = 8192
NORM_PASSES = 2
WARPS_PER_ROW_CTA = 4  # warp-per-row kernels pack 4 rows (128 threads) into a CTA
# SIMT issue and integer rates for dequantization in GEMM main loops and attention (CUDA C programming
# guide, arithmetic-instruction throughput table, compute capability 7.0-9.0): 32-bit integer add/logic/
# shift/LOP3/PRMT run at 64 results per SM per clock, and four warp schedulers issue 4 x 32 lane
# instructions per clock; packed half2 arithmetic runs at the part's `vector_peak` for its dtype.
SIMT_INT32_PER_SM_PER_CLK = 64
SIMT_ISSUE_PER_SM_PER_CLK = 128

GPU_SCHEMA: dict[str, Any] = {
    "abstract": Param("an architecture base, not a usable part", default=False, type=bool),
    "architecture": Param("micro-architecture family", type=str, default="generic"),
    "sms": positive("streaming multiprocessors", type=int),
    "clock": positive("boost clock at which the peaks are quoted", "frequency"),
    "tensor_peak": MapOf(positive("", "flops"), "dense tensor-core peak per dtype, whole chip", DTYPES),
    "vector_peak": MapOf(positive("", "flops"), "CUDA-core (non-tensor) peak per dtype, whole chip", DTYPES),
    "sfu_per_sm_per_clk": positive("special-function (exp) results per SM per clock", default=16.0),
    "l2": {
        "size": positive("L2 cache capacity", "bytes"),
        "bandwidth": positive("L2 read bandwidth, whole chip", "bandwidth"),
    },
    "smem_per_sm": positive("shared memory one block may use", "bytes"),
    "smem_bytes_per_clk": positive("shared-memory bandwidth per SM", default=128.0),
    "l2_multicast": positive(
        "CTAs served by one L2 read of a shared operand panel (Hopper TMA multicast "
        "within a thread-block cluster: 2)",
        default=1.0,
    ),
    "registers_per_sm": positive("register file per SM", "bytes", default=256 * 1024),
    "launch_overhead": nonneg(
        "kernel launch + tail latency seen by back-to-back kernels", "time", default=4e-6
    ),
    "memory": MEMORY_SCHEMA,
    "pcie": {k: replace(v, default=None) for k, v in PCIE_SCHEMA.items()},
    "nvlink": {
        "generation": count("NVLink generation", default=None),
        "links": count("NVLink links", default=None),
        "bandwidth": positive(
            "per-direction total, where the part's links run slower than the generation's "
            "standard rate (e.g. GA102 bridges)",
            "bandwidth",
            default=None,
        ),
    },
    "power": POWER_SCHEMA,
    "collective": {
        "latency": nonneg(
            "fixed software latency of a collective (library setup, peer synchronisation)",
            "time",
            default=0.0,
        ),  # fmt: skip
        "efficiency": fraction(
            "fraction of the links' achievable rate a collective's protocol delivers", default=1.0
        ),  # fmt: skip
        "custom_latency": nonneg(
            "fixed latency of a framework's one-shot peer-to-peer all-reduce kernel (no value: none)",
            "time",
            default=None,
        ),  # fmt: skip
        "custom_efficiency": fraction(
            "fraction of the links' achievable rate that kernel delivers (bus bandwidth / link rate)",
            default=None,
        ),  # fmt: skip
        "custom_max": positive(
            "largest buffer the framework hands that kernel (larger ones go to NCCL)",
            "bytes",
            default=8388608.0,
        ),  # fmt: skip
        "nvls_efficiency": fraction(
            "NVLink SHARP all-reduce (the NVSwitch reduces): share of the link rate each rank's buffer crosses "
            "its link at, once each way (no value: the switches cannot reduce)",
            default=None,
        ),  # fmt: skip
    },
    "dram_inflight_per_cta": positive(
        "DRAM load bytes one CTA keeps outstanding: by Little's law a kernel draws min(bandwidth, unique "
        "bytes in flight / memory latency)",
        "bytes",
        default=16384,
    ),  # fmt: skip
    "gemm_inflight_stages": positive(
        "K steps of its A and B tiles a GEMM CTA's load pipeline keeps in flight (a cp.async pipeline of 3 "
        "stages: 2; TMA pipelines are deeper)",
        type=int,
        default=PIPELINE_STAGES - 1,
    ),  # fmt: skip
    "efficiency": {
        "tensor": fraction("achievable fraction of tensor peak in a large GEMM's main loop", default=0.85),
        "vector": fraction("achievable fraction of vector peak", default=0.8),
        "memory": fraction("achievable fraction of DRAM bandwidth for streaming kernels", default=0.9),
        "l2": fraction("achievable fraction of L2 bandwidth", default=0.8),
    },
    "energy": {
        "tech_node": positive("process node in nm (energy scaling)", default=7.0),
        "flop": MapOf(
            nonneg("", "energy_per_op"), "energy per tensor/vector FLOP by dtype; default from TDP", DTYPES
        ),
        "compute_share": fraction(
            "share of (TDP - idle) the SMs draw at dense peak (the rest feeds L2/DRAM); sets the default FLOP energy",
            default=0.75,
        ),
        "active_share": fraction(
            "share of (TDP - idle) drawn whenever a kernel runs, whatever it computes (active clocks and "
            "voltage, clock tree, schedulers); 0 prices only actions and idle power",
            default=None,
        ),  # fmt: skip
        "l2_per_byte": nonneg("L2 access energy", "energy_per_byte", default=None),
        "smem_per_byte": nonneg("shared-memory/register-file access energy", "energy_per_byte", default=None),
        "dram_per_byte": nonneg(
            "DRAM energy incl. I/O; default from memory type", "energy_per_byte", default=None
        ),
    },
}


#: (GPU parameters but memory bandwidth, op signature) -> the GEMM plans to choose from, each with its
#: latency-bound DRAM time and its power-capped time floor (see gemm_plan)
_GEMM_CANDIDATES: dict[tuple[str, tuple], list[tuple[GemmPlan, float, float]]] = {}


@dataclass(frozen=True, slots=True)
class GemmPlan:
    """The kernel configuration the model picks for a GEMM (the fastest, like a library heuristic)."""

    tile_m: int
    tile_n: int
    split_k: int
    ctas: int
    slots: int
    waves: int
    t_compute_s: float
    t_dram_s: float
    t_l2_s: float
    t_smem_s: float
    dram_bytes: float
    l2_bytes: float
    smem_bytes: float
    t_fixed_s: float = 0.0  # not overlapped with the main loop: split-K's reduction kernel
    t_dequant_s: float = 0.0  # the busiest SM's weight dequantization, serial with its MMAs
    striped: bool = False  # Marlin-style striped partitioning over persistent CTAs (mixed-input kernels)

    @property
    def t_s(self) -> float:
        return (
            max(self.t_compute_s + self.t_dequant_s, self.t_dram_s, self.t_l2_s, self.t_smem_s)
            + self.t_fixed_s
        )

    @property
    def bound(self) -> str:
        t = {"compute": self.t_compute_s + self.t_dequant_s, "memory": self.t_dram_s, "l2": self.t_l2_s,
             "smem": self.t_smem_s}  # fmt: skip
        return max(t, key=t.__getitem__)


@register("gpu")
class GPU(Component):
    PORTS = ("pcie", "nvlink")
    SCHEMA = GPU_SCHEMA
    ACTIONS = ("flop.{dtype}", "flop.fp32", "dram.byte", "l2.byte", "smem.byte")
    ACTION_DTYPES = ("tensor_peak", "vector_peak")
    COSTS = {
        "gemm": "gemm_cost",
        "attention": "attention_cost",
        "attention_grad": "attention_grad_cost",
        "elementwise": "stream_cost",
        "norm": "row_cost",
        "softmax": "row_cost",
        "embedding": "stream_cost",
        "pool": "stream_cost",
        "conv2d": "conv2d_cost",
        "allreduce": "collective_cost",
        "allgather": "collective_cost",
        "sendrecv": "collective_cost",
    }

    def __init__(self, name: str, params: dict[str, Any], doc: Any = None) -> None:
        super().__init__(name, params, doc)
        p = params
        self.sms: int = p["sms"]
        self.clock_Hz: float = p["clock"]
        self.eff = p["efficiency"]
        self.mem_bw_Bps: float = p["memory"]["bandwidth"]
        self.l2_size_B: float = p["l2"]["size"]
        self.l2_bw_Bps: float = p["l2"]["bandwidth"] * self.eff["l2"]
        self.launch_s: float = p["launch_overhead"]
        self.mem_latency_s: float = p["memory"]["latency"]
        self.inflight_per_cta_B: float = p["dram_inflight_per_cta"]

    # ------------------------------------------------------------------------------ derived figures
    @property
    def memory_capacity_B(self) -> float:
        return self.params["memory"]["capacity"]

    @property
    def memory_bandwidth_Bps(self) -> float:
        return self.mem_bw_Bps * self.eff["memory"]

    def latency_bound_s(self, rounds: int, cta_B: float, inflight_B: float | None = None) -> float:
        """DRAM time when too few CTAs are in flight to saturate it (Little's law): a CTA with `inflight_B`
        bytes of loads outstanding (default `dram_inflight_per_cta`) takes cta_B / inflight_B latencies for
        its `cta_B` bytes, and the busiest SM runs `rounds` CTAs one after another. No SM count enters (more
        SMs never slow a kernel); CTAs re-reading another's panel through L2 add loads but no DRAM bytes
        (misses to a line merge in L2)."""
        inflight = self.inflight_per_cta_B if inflight_B is None else inflight_B
        return rounds * cta_B * self.mem_latency_s / inflight

    def dram_time_s(self, dram_B: float, rounds: int, cta_B: float) -> float:
        """DRAM time of a kernel moving `dram_B` distinct bytes: the achievable bandwidth's, or the latency
        bound's when its CTAs cannot saturate DRAM."""
        return max(dram_B / self.memory_bandwidth_Bps, self.latency_bound_s(rounds, cta_B))

    def gemm_inflight_B(self, tile_m: int, tile_n: int) -> float:
        """Load bytes a GEMM CTA keeps outstanding: `gemm_inflight_stages` K steps of its A and B tiles (large
        tiles), at least `dram_inflight_per_cta`."""
        stages = self.params["gemm_inflight_stages"]
        return max(self.inflight_per_cta_B, stages * (tile_m + tile_n) * K_STEP_BYTES)

    @property
    def peak_memory_bandwidth_Bps(self) -> float:
        return self.mem_bw_Bps

    def dense_peak_flops(self, dtype: str) -> float:
        try:
            return self.matmul_peak(dtype)[0]
        except ConfigError:
            return 0.0

    @property
    def static_power_W(self) -> float:
        return self.params["power"]["idle"]

    @property
    def active_power_W(self) -> float:
        p = self.params["power"]
        share = self.params["energy"]["active_share"]
        return share * (p["tdp"] - p["idle"]) if share and p["tdp"] else 0.0

    def power_capped(self, cost: OpCost) -> OpCost:
        """Above its TDP a GPU lowers its clock until it fits (power capping): the op's dynamic energy is
        spent at TDP - idle - active power, so it takes longer and costs the same dynamic joules."""
        headroom_W = self.power_headroom_W
        if (
            not headroom_W or cost.duration_s <= 0 or cost.bound == "network"
        ):  # the engine adds a collective's
            return cost  # wire time: its device-side duration is not the op's
        dynamic_J = self.dynamic_J(cost.actions)
        if dynamic_J <= headroom_W * cost.duration_s:
            return cost
        capped_s = dynamic_J / headroom_W
        detail = {**cost.detail, "clock_fraction": cost.duration_s / capped_s}
        return replace(cost, duration_s=capped_s, bound="power", detail=detail)

    @cached_property
    def power_headroom_W(self) -> float:
        """Dynamic power the part may draw above idle and active power before it must lower its clock (0:
        no TDP given, or none left)."""
        tdp = self.params["power"]["tdp"]
        return max(0.0, tdp - self.static_power_W - self.active_power_W) if tdp else 0.0

    def dynamic_J(self, actions: Mapping[str, float]) -> float:
        prices = self._action_prices
        return sum(n * prices.get(a, 0.0) for a, n in actions.items())

    @cached_property
    def _action_prices(self) -> dict[str, float]:
        return self.energy_per_action_J()

    def derived(self) -> dict[str, tuple[float, str, str]]:
        out = {f"tensor_peak_per_sm.{d}": (v / self.sms, "flops", "tensor_peak / sms")
               for d, v in self.params["tensor_peak"].items()}  # fmt: skip
        out["memory.achievable_bandwidth"] = (
            self.memory_bandwidth_Bps,
            "bandwidth",
            "bandwidth x efficiency.memory",
        )
        out["ridge_point_spec.bf16"] = (ridge_point(self, "bf16") if "bf16" in self.params["tensor_peak"] else 0.0,
                                        "", "spec tensor_peak.bf16 / spec memory.bandwidth (FLOP per DRAM byte)")  # fmt: skip
        return out

    def matmul_peak(self, dtype: str) -> tuple[float, str]:
        """Chip FLOP/s for a matmul in `dtype` and the unit that does it (fp32 GEMMs use CUDA cores)."""
        tp, vp = self.params["tensor_peak"], self.params["vector_peak"]
        if dtype in tp and dtype != "fp32":
            return tp[dtype], "tensor"
        if dtype in vp:
            return vp[dtype], "vector"
        if dtype in tp:
            return tp[dtype], "tensor"
        raise ConfigError(
            f"{self.name} has no {dtype} compute (tensor: {', '.join(tp) or '-'}; vector: {', '.join(vp) or '-'})"
        )

    def vector_peak(self, dtype: str = "fp32") -> float:
        vp = self.params["vector_peak"]
        return vp.get(dtype) or vp.get("fp32") or self.matmul_peak(dtype)[0] / 16

    def dequant_s_per_element(self, work: Dequant, dtype: str) -> float:
        """Seconds one SM spends turning one stored element into `dtype` (`work` from simcore.precision):
        the slowest of the integer pipe, the `dtype` vector pipe (packed two-wide for 16-bit dtypes) and
        instruction issue, at `efficiency.vector`."""
        rate = self.clock_Hz * self.eff["vector"]  # SM clocks per second, derated like other vector work
        t_int = work.int_ops / (SIMT_INT32_PER_SM_PER_CLK * rate)
        t_fp = 0.0
        pack = 2.0 if dtype in ("fp16", "bf16") else 1.0
        if work.fp_ops:
            t_fp = work.fp_ops / (self.vector_peak(dtype) / 2.0 / self.sms * self.eff["vector"])
        t_issue = (work.int_ops + work.fp_ops / pack) / (SIMT_ISSUE_PER_SM_PER_CLK * rate)
        return max(t_int, t_fp, t_issue)

    @staticmethod
    def simt_instructions(work: Dequant, dtype: str) -> float:
        """Lane instructions per element of `work` (packed half2 arithmetic does two elements)."""
        return work.int_ops + work.fp_ops / (2.0 if dtype in ("fp16", "bf16") else 1.0)

    # ---------------------------------------------------------------------------------------- GEMM
    def gemm_plan(self, op: Gemm) -> GemmPlan:
        """The fastest tile shape and split-K for `op`, with the time each resource needs under it.

        Only the candidates' DRAM times depend on the bandwidth, so they are enumerated
        once per op shape and GPU apart from its memory bandwidth (a sweep over bandwidth, or over
        parts that differ only there, reuses them) and priced at this GPU's bandwidth."""
        key = (self._bandwidth_free_key, op.signature())
        cands = _GEMM_CANDIDATES.get(key)
        if cands is None:
            if len(_GEMM_CANDIDATES) >= 1024:
                _GEMM_CANDIDATES.clear()
            # as the part runs them: an autotuner times kernels under the power limit, so each candidate
            # takes at least its dynamic energy / the power headroom (bandwidth-free too)
            headroom_W = self.power_headroom_W
            cands = _GEMM_CANDIDATES[key] = [
                (plan, latency_bound_s,
                 self.dynamic_J(self._gemm_actions(op, plan)) / headroom_W - self.launch_s if headroom_W else 0.0)
                for plan, latency_bound_s in self._gemm_candidates(op)
            ]  # fmt: skip
        bw = self.memory_bandwidth_Bps
        best, best_t, best_dram = cands[0][0], math.inf, 0.0
        for plan, latency_bound_s, power_floor_s in cands:  # the first fastest, in the library's order
            t_dram = max(plan.dram_bytes / bw, latency_bound_s)
            t = max(plan.t_compute_s + plan.t_dequant_s, t_dram, plan.t_l2_s, plan.t_smem_s) + plan.t_fixed_s
            t = max(t, power_floor_s)
            if t < best_t:
                best, best_t, best_dram = plan, t, t_dram
        return replace(best, t_dram_s=best_dram)

    @cached_property
    def _bandwidth_free_key(self) -> str:
        params = dict(self.params)
        params["memory"] = {k: v for k, v in params["memory"].items() if k != "bandwidth"}
        return repr(sorted(params.items()))

    def _gemm_candidates(self, op: Gemm) -> list[tuple[GemmPlan, float]]:
        """Every tile shape and split-K the library could pick, each with the DRAM time it needs whatever
        the bandwidth (Little's law on its busiest SM: see latency_bound_s)."""
        m, n, k, batch, e = op.m, op.n, op.k, op.batch, op.elem_bytes
        peak, unit = self.matmul_peak(op.dtype)
        eff = self.eff["tensor"] if unit == "tensor" else self.eff["vector"]
        sm_flops = peak * eff / self.sms
        smem_Bps = self.params["smem_bytes_per_clk"] * self.clock_Hz
        # B in its storage format: read from DRAM, L2 and shared memory at the format's bits, then each CTA
        # dequantizes its tile_n x k_cta slice of B in registers on the CUDA cores, once per M tile.
        eb = op.weight_elem_bytes
        work = dequant_work(op.weight_dtype, op.dtype) if op.weight_dtype is not None else None
        t_elem = self.dequant_s_per_element(work, op.dtype) if work is not None else 0.0
        striped = work is not None and op.dtype in ("fp16", "bf16")
        a_B, b_B = batch * m * k * e, (1 if op.b_is_weight else batch) * k * n * eb
        c_B = batch * m * n * e
        cands: list[tuple[GemmPlan, float]] = []
        for tm, tn in TILES if work is None else TILES + SMALL_M_TILES:
            # CTAs per SM: limited by shared memory (multistage pipeline) and by the fp32 accumulators.
            smem_cta = PIPELINE_STAGES * (tm + tn) * K_STEP_BYTES
            per_sm = max(1, int(min(self.params["smem_per_sm"] // smem_cta,
                                    self.params["registers_per_sm"] // (tm * tn * 4 * 2), 4)))  # fmt: skip
            slots = self.sms * per_sm
            grid_m, grid_n = ceil_div(m, tm), ceil_div(n, tn)
            tiles = grid_m * grid_n * batch
            # each warp reads its own A rows and B columns from shared memory: A once per warp column
            warps_m, warps_n = max(1 if tm < WARP_TILE else 2, tm // WARP_TILE), max(2, tn // WARP_TILE)
            for split in SPLIT_K:
                if split > 1 and (tiles >= self.sms or k // split < 128):
                    break
                ctas = tiles * split
                waves = ceil_div(ctas, slots)
                k_cta = ceil_div(k, split)
                # The block scheduler hands CTAs to SMs as they free up, so the busiest SM runs
                # ceil(ctas / sms) of them at its full rate (padding of edge tiles is computed too),
                # plus one pipeline fill per round of co-resident CTAs.
                busiest = ceil_div(ctas, self.sms)
                t_compute = busiest * 2.0 * tm * tn * k_cta / sm_flops
                t_compute += ceil_div(busiest, per_sm) * self.mem_latency_s
                # DRAM: inside one wave the concurrent tiles share panels through L2 (square raster).
                dram = self._panel_dram(a_B, b_B, c_B, ctas, min(ctas, slots), grid_m, grid_n, tm, tn,
                                        e * k_cta, eb * k_cta)  # fmt: skip
                if split > 1:  # fp32 partials written and read back by the reduction
                    dram += 2 * batch * m * n * 4 * split
                # too few CTAs in flight (a small grid) cannot keep enough loads outstanding to saturate DRAM
                # (a CTA's loads: A and B panels; stores and split-K partials need no round trip)
                latency_bound = self.latency_bound_s(ceil_div(busiest, per_sm), (tm * e + tn * eb) * k_cta,
                                                     self.gemm_inflight_B(tm, tn))  # fmt: skip
                l2_B = ctas * (tm * e + tn * eb) * k_cta / self.params["l2_multicast"]
                t_l2 = l2_B / self.l2_bw_Bps
                smem_B = (tm * warps_n * e + tn * warps_m * eb) * k_cta
                t_smem = busiest * smem_B / smem_Bps
                # split-K partials are summed by a second kernel: its launch and one DRAM round trip
                t_fixed = self.launch_s + self.mem_latency_s if split > 1 else 0.0
                # dequantization is serial with the MMAs of the same k-step (QServe §4: on A100 the CUDA-core
                # dequantization of W4A8 / W4A4 main loops is the bottleneck, not hidden by the tensor cores)
                t_dequant = busiest * tn * k_cta * t_elem
                plan = GemmPlan(tm, tn, split, ctas, slots, waves, t_compute, 0.0, t_l2, t_smem, dram, l2_B,
                                ctas * smem_B, t_fixed, t_dequant)  # fmt: skip
                cands.append((plan, latency_bound))
            if striped:
                cands.append(
                    self._striped_plan(op, tm, tn, tiles, grid_m, grid_n, warps_m, warps_n, sm_flops, t_elem)
                )
        return cands

    def _panel_dram(self, a_B: float, b_B: float, c_B: float, ctas: int, conc: int, grid_m: int, grid_n: int,
                    tm: int, tn: int, a_row_B: float, b_col_B: float) -> float:  # fmt: skip
        """DRAM bytes of a GEMM whose `conc` concurrent tiles share A and B panels through L2 (square raster;
        `a_row_B`/`b_col_B`: bytes of one row of A / column of B over the K a tile covers). Operands that
        fit in half the L2 are read once; otherwise each wave reads its panels, a partial last wave only
        its own share."""
        if a_B + b_B <= self.l2_size_B / 2:
            return a_B + b_B + c_B
        # the raster that reads the fewest panel bytes for `conc` tiles (rows x cols = conc, within the
        # grid): continuous, so more concurrent tiles never read more per tile
        rows = min(float(grid_m), max(1.0, math.sqrt(conc * tn * b_col_B / (tm * a_row_B))))
        cols = min(float(grid_n), max(1.0, conc / rows))
        wave_B = rows * tm * a_row_B + cols * tn * b_col_B
        return max(a_B + b_B, min(ctas / conc * wave_B, a_B * grid_n + b_B * grid_m)) + c_B

    def _striped_plan(self, op: Gemm, tm: int, tn: int, tiles: int, grid_m: int, grid_n: int, warps_m: int,
                      warps_n: int, sm_flops: float, t_elem: float
                      ) -> tuple[GemmPlan, float]:  # fmt: skip
        """Marlin's striped partitioning (arXiv 2408.11743) for 16-bit-activation mixed-input GEMMs: one
        persistent CTA per SM walks an equal share of all (tile, 64-deep k-step) units, so no SM runs more
        than ceil(units / SMs) of them (no wave quantization); tiles split between two SMs are summed
        through L2 as fp32 partials (at most one split tile per SM)."""
        m, n, k, batch, e, eb = op.m, op.n, op.k, op.batch, op.elem_bytes, op.weight_elem_bytes
        k_iters = ceil_div(k, STRIPE_K)
        units = tiles * k_iters
        busiest = ceil_div(units, self.sms) / k_iters  # output tiles' worth of main loop on the busiest SM
        active = min(self.sms, units)
        t_compute = busiest * 2.0 * tm * tn * k / sm_flops + math.ceil(busiest) * self.mem_latency_s
        a_B, b_B, c_B = batch * m * k * e, (1 if op.b_is_weight else batch) * k * n * eb, batch * m * n * e
        dram = self._panel_dram(
            a_B, b_B, c_B, tiles, min(tiles, active), grid_m, grid_n, tm, tn, e * k, eb * k
        )
        latency_bound = self.latency_bound_s(
            1, busiest * (tm * e + tn * eb) * k, self.gemm_inflight_B(tm, tn)
        )
        # a stripe boundary inside a tile (the busiest share is not whole tiles) splits it between two SMs
        per_sm_units = ceil_div(units, self.sms)
        reduce_B = 2.0 * active * tm * tn * 4 if active > 1 and per_sm_units % k_iters else 0.0
        l2_B = tiles * (tm * e + tn * eb) * k / self.params["l2_multicast"] + reduce_B
        smem_B = (tm * warps_n * e + tn * warps_m * eb) * k
        t_smem = busiest * smem_B / (self.params["smem_bytes_per_clk"] * self.clock_Hz)
        t_dequant = busiest * tn * k * t_elem
        plan = GemmPlan(tm, tn, 1, active, self.sms, 1, t_compute, 0.0, l2_B / self.l2_bw_Bps, t_smem, dram, l2_B,
                        tiles * smem_B, 0.0, t_dequant, striped=True)  # fmt: skip
        return plan, latency_bound

    def _gemm_actions(self, op: Gemm, plan: GemmPlan) -> dict[str, float]:
        """What `op` run under `plan` does, for the energy model."""
        actions = {f"flop.{op.dtype}": op.flops, "dram.byte": plan.dram_bytes, "l2.byte": plan.l2_bytes,
                   "smem.byte": plan.smem_bytes}  # fmt: skip
        work = dequant_work(op.weight_dtype, op.dtype) if op.weight_dtype is not None else None
        if work is not None:
            actions["vector.op"] = self._dequant_elements(op, plan) * self.simt_instructions(work, op.dtype)
        return actions

    @staticmethod
    def _dequant_elements(op: Gemm, plan: GemmPlan) -> int:
        """Every CTA dequantizes its B slice once: n x k x ceil(m / tile_m) elements per batch entry."""
        return op.batch * op.n * op.k * ceil_div(op.m, plan.tile_m)

    def gemm_cost(self, op: Gemm) -> OpCost:
        plan = self.gemm_plan(op)
        actions = self._gemm_actions(op, plan)
        detail = {"tile": f"{plan.tile_m}x{plan.tile_n}", "split_k": plan.split_k, "ctas": plan.ctas,
                  "waves": plan.waves, "t_compute_s": plan.t_compute_s, "t_dram_s": plan.t_dram_s,
                  "t_l2_s": plan.t_l2_s}  # fmt: skip
        if "vector.op" in actions:
            detail = {**detail, "weight_dtype": op.weight_dtype, "t_dequant_s": plan.t_dequant_s,
                      "dequant_elements": self._dequant_elements(op, plan), "striped": plan.striped}  # fmt: skip
        return OpCost(plan.t_s + self.launch_s, plan.bound, plan.dram_bytes, actions, detail)

    def conv2d_cost(self, op: Op) -> OpCost:
        """Implicit GEMM (im2col done on chip): the lowered GEMM's tiles and waves, but the input is read
        from DRAM once rather than once per filter tap. Convolutions too thin for tensor-core tiles
        (depthwise: one output channel per group) run as direct kernels that stream their tensors."""
        g = op.gemm()
        if g.n < 16 or g.k < 16:
            return self.stream_cost(op)
        lowered = Gemm(op.name, op.dtype, m=g.m, n=g.n, k=g.k, batch=g.groups)
        cost = self.gemm_cost(lowered)
        im2col_B = g.groups * g.m * g.k * op.elem_bytes
        input_B = next(t.bytes for t in op.tensors() if t.role == "in")
        dram = max(op.bytes, cost.dram_bytes - im2col_B + input_B)
        plan = self.gemm_plan(lowered)
        t_dram = plan.t_dram_s * dram / plan.dram_bytes
        t = max(plan.t_compute_s, t_dram, plan.t_l2_s, plan.t_smem_s) + self.launch_s
        bound = "memory" if t_dram >= max(plan.t_compute_s, plan.t_l2_s, plan.t_smem_s) else cost.bound
        actions = {**cost.actions, "dram.byte": dram}
        detail = {**cost.detail, "t_dram_s": t_dram, "gemm_m": g.m, "gemm_n": g.n, "gemm_k": g.k}
        return OpCost(t, bound, dram, actions, detail)

    # ----------------------------------------------------------------------------------- attention
    def flash_block_k(self, op: Attention) -> int:
        """Key rows per inner-loop block (FlashAttention-2: 128 up to head_dim 64, else 64)."""
        return 128 if op.head_dim <= 64 else 64

    def flash_pairs(self, op: Attention) -> float:
        """(query, key) pairs actually computed: causal masking skips whole key blocks only, so the
        diagonal blocks are computed in full."""
        if not op.causal or op.q_len == 1:
            return op.batch * op.heads * op.score_pairs
        bq, bk, offset = self.flash_block_q(op), self.flash_block_k(op), op.kv_len - op.q_len
        pairs = 0
        window = op.window if op.window_binds else None
        for start in range(0, op.q_len, bq):
            rows = min(bq, op.q_len - start)
            visible = offset + start + rows  # keys the block's last row sees
            keys = min(op.kv_len, ceil_div(visible, bk) * bk)
            if window is not None:  # key blocks wholly before the block's first row's window are skipped
                keys -= max(0, offset + start + 1 - window) // bk * bk
            pairs += rows * keys
        return float(op.batch * op.heads * pairs)

    def flash_block_q(self, op: Attention) -> int:
        """Query rows per flash work unit (FlashAttention-2 forward tiles: 128 rows up to head_dim 128)."""
        return 128 if op.head_dim <= 128 else 64

    def attention_cost(self, op: Attention) -> OpCost:
        """Flash forward: per (query, key) pair 4·d matmul FLOPs on tensor cores, one exp on the SFUs and
        ~4 fp32 FLOPs of scaling/max/sum bookkeeping, which FlashAttention-2 does not overlap with the
        matmuls; query blocks spread over SMs (decode splits the KV sequence instead)."""
        return self._flash_cost(op, 4.0 * op.head_dim, fp32_per_pair=4.0, atomic_B_per_pair=0.0)

    def attention_grad_cost(self, op: AttentionGrad) -> OpCost:
        """Flash backward: 10·d matmul FLOPs per pair (five matmuls), the exp recomputed, ~6 fp32 FLOPs for
        dS = P∘(dP − rowsum(dO∘O)); work units own 128-key blocks and add their dQ contributions into an
        fp32 buffer with L2 atomics: head_dim × 4 bytes per query row and key block, 4·d/128 per pair."""
        cost = self._flash_cost(
            op, 10.0 * op.head_dim, fp32_per_pair=6.0, atomic_B_per_pair=4.0 * op.head_dim / 128
        )
        # two more kernels: D = rowsum(dO∘O) before (reads O, dO), and after, the fp32 dQ accumulator
        # (zeroed beforehand) is read and written back as dQ in the input dtype
        q_B = op.batch * op.heads * op.q_len * op.head_dim * op.elem_bytes
        acc_B = q_B * 4 / op.elem_bytes  # the fp32 dQ accumulator
        extra_B = 2 * q_B + 2 * acc_B + q_B  # read O and dO; zero and re-read the accumulator; write dQ
        t_extra = 2 * self.launch_s + extra_B / self.memory_bandwidth_Bps
        actions = {**cost.actions, "dram.byte": cost.dram_bytes + extra_B}
        return OpCost(cost.duration_s + t_extra, cost.bound, cost.dram_bytes + extra_B, actions, cost.detail)

    def _flash_cost(
        self, op: Attention, mm_per_pair: float, fp32_per_pair: float, atomic_B_per_pair: float
    ) -> OpCost:
        peak, unit = self.matmul_peak(op.dtype)
        eff = self.eff["tensor"] if unit == "tensor" else self.eff["vector"]
        sm_mm = peak * eff / self.sms
        sm_sfu = self.params["sfu_per_sm_per_clk"] * self.clock_Hz
        sm_fma = self.vector_peak("fp32") * self.eff["vector"] / self.sms
        sm_l2 = self.l2_bw_Bps / self.sms
        t_pair = mm_per_pair / sm_mm + 1.0 / sm_sfu + fp32_per_pair / sm_fma + atomic_B_per_pair / sm_l2
        block_q = self.flash_block_q(op)
        kv_work = dequant_work(op.kv_dtype, op.dtype) if op.kv_dtype is not None else None
        kv_per_pair = 0.0
        if kv_work is not None:
            # a quantized KV cache is dequantized as each work unit loads it: 2 x head_dim elements per key
            # and query block. Decode kernels (flash-decoding with GQA packing: TensorRT-LLM XQA, FlashInfer,
            # QServe) load a key once for all query heads of its group.
            rows = (
                min(op.q_len * (op.heads // op.kv_heads), block_q)
                if op.q_len <= 16
                else min(op.q_len, block_q)
            )
            kv_per_pair = 2.0 * op.head_dim / rows
            t_pair += kv_per_pair * self.dequant_s_per_element(kv_work, op.dtype)
        q_blocks = ceil_div(op.q_len, block_q)
        units = op.batch * op.heads * q_blocks
        splits = 1
        if op.q_len <= 16:  # decode: split the KV sequence across SMs (flash-decoding) to fill the chip
            splits = max(1, min(ceil_div(op.kv_len, 256), ceil_div(self.sms * 2, units)))
            units *= splits
        pairs_total = self.flash_pairs(op)
        # the largest work unit: the last query block, which (causal) sees the whole kv length
        unit_keys = op.kv_len  # a sliding window caps a unit's keys at its rows' windows, block-aligned
        if op.window_binds and op.window is not None:
            unit_keys = min(op.kv_len, op.window + min(op.q_len, block_q) - 1 + self.flash_block_k(op))
        unit_pairs = min(op.q_len, block_q) * unit_keys / splits
        t_compute = max(pairs_total * t_pair / self.sms, unit_pairs * t_pair)
        if op.q_len > 16 and not op.causal:  # equal units: whole rounds over the SMs
            t_compute = ceil_div(units, self.sms) * unit_pairs * t_pair
        dram = op.bytes
        t_mem = self.dram_time_s(dram, ceil_div(units, self.sms), dram / units)
        bound = "compute" if t_compute >= t_mem else "memory"
        actions = {f"flop.{op.dtype}": op.flops, "flop.fp32": (fp32_per_pair + 1) * pairs_total,
                   "dram.byte": dram, "smem.byte": 2 * dram, "l2.byte": atomic_B_per_pair * pairs_total}  # fmt: skip
        detail = {"units": units, "block_q": block_q, "t_compute_s": t_compute, "t_dram_s": t_mem}
        if kv_work is not None:
            elements = kv_per_pair * pairs_total
            actions["vector.op"] = elements * self.simt_instructions(kv_work, op.dtype)
            detail = {**detail, "kv_dtype": op.kv_dtype, "dequant_elements": elements}
        return OpCost(
            max(t_compute, t_mem) + self.launch_s + self.mem_latency_s, bound, dram, actions, detail
        )

    # ------------------------------------------------------------------------------ memory-bound ops
    def stream_cost(self, op: Elementwise | Norm | Softmax | Embedding | Op) -> OpCost:
        """Bytes through DRAM at the achievable rate after one access latency; FLOPs on CUDA cores."""
        dram = op.bytes
        t_mem = self.mem_latency_s + dram / self.memory_bandwidth_Bps
        t_compute = op.flops / (self.vector_peak("fp32") * self.eff["vector"])
        bound = "memory" if t_mem >= t_compute else "compute"
        actions = {"flop.fp32": op.flops, "dram.byte": dram}
        return OpCost(max(t_mem, t_compute) + self.launch_s, bound, dram, actions, {})

    def row_cost(self, op: Softmax | Norm) -> OpCost:
        """Row-parallel reduction: rows on warps or CTAs, one DRAM read per pass a row needs.

        A row that stays on chip is read once; a longer one is re-read for every reduction pass, since
        each pass starts only after the previous one's block-wide reduction. Few rows mean few CTAs,
        which cannot keep enough loads in flight to saturate DRAM (as for GEMMs).
        """
        e, rows, cols = op.elem_bytes, op.rows, op.cols
        if isinstance(op, Softmax):
            on_chip, passes = cols <= SOFTMAX_WARP_ROW, SOFTMAX_PASSES
            ctas = ceil_div(rows, WARPS_PER_ROW_CTA) if on_chip else rows
        else:
            on_chip, passes = cols <= NORM_CTA_ROW, NORM_PASSES
            ctas = rows
        x_B = rows * cols * e
        reads = 1 if on_chip else passes
        dram = op.bytes + (reads - 1) * x_B
        # each CTA loads its rows and the whole of what every row shares (a norm's weights)
        shared_B = max(0.0, op.bytes - 2.0 * x_B)
        cta_B = (dram - shared_B) / ctas + shared_B
        t_mem = self.mem_latency_s + self.dram_time_s(dram, ceil_div(ctas, self.sms), cta_B)
        t_compute = op.flops / (self.vector_peak("fp32") * self.eff["vector"])
        bound = "memory" if t_mem >= t_compute else "compute"
        actions = {"flop.fp32": op.flops, "dram.byte": dram}
        detail = {"passes": reads, "ctas": ctas}
        return OpCost(max(t_mem, t_compute) + self.launch_s, bound, dram, actions, detail)

    def collective_cost(self, op: Collective) -> OpCost:
        """The device side of a collective: reading/writing its buffers and the reduction FLOPs.

        The wire time is added by the engine from the links the collective crosses.
        """
        dram = 2.0 * op.bytes_per_device
        actions = {"flop.fp32": op.flops, "dram.byte": dram}
        coll = self.params["collective"]
        # the algorithms on offer: (name, fixed seconds, share of the link rate); the engine takes the fastest
        nccl = self.launch_s + coll["latency"]
        algorithms: tuple[tuple[str, float, float], ...] = (("ring", nccl, coll["efficiency"]),)
        if op.kind == "allreduce":
            algorithms += (("tree", nccl, coll["efficiency"]),)
            if coll["nvls_efficiency"] is not None:  # offered; the engine takes it only on an NVSwitch
                algorithms += (("nvls", nccl, coll["nvls_efficiency"]),)
            if (op.library == "custom" and coll["custom_latency"] is not None
                    and op.bytes_per_device <= coll["custom_max"]):  # fmt: skip
                custom = self.launch_s + coll["custom_latency"]
                algorithms += (("one-shot", custom, coll["custom_efficiency"] or 1.0),)
        return OpCost(nccl, "network", dram, actions, {"algorithms": algorithms})

    # ---------------------------------------------------------------------------------------- energy
    def energy_per_action_J(self) -> dict[str, float]:
        """Memory actions from the energy tables; FLOPs from the TDP (`tdp_flop_energy`)."""
        p, en = self.params, self.params["energy"]
        sram = {"l2.byte": self.l2_size_B, "smem.byte": p["smem_per_sm"]}
        out = default_action_energy(en, p["memory"]["type"], sram)
        peaks = {**p["vector_peak"], **{d: v for d, v in p["tensor_peak"].items() if d != "fp32"}}
        out.update(
            tdp_flop_energy(p["power"]["tdp"], p["power"]["idle"], en["compute_share"], peaks, en["flop"])
        )
        if "flop.fp32" in out:  # one CUDA-core lane instruction (dequantization) ~ an fp32 FMA lane: 2 FLOPs
            out["vector.op"] = 2.0 * out["flop.fp32"]
        return out
