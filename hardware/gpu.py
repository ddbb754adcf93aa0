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
from simcore.component import Component, OpCost, chain_cost, register, ridge_point
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


# ----------------------------------------------------------------------------------- attention kernels
ANY_HEAD_DIM = 1 << 30  # the last row of a (largest head_dim, value) table
#: Winograd output tiles m of F(m x m, 3 x 3) the convolution library has (cuDNN's non-fused Winograd)
WINOGRAD_TILES = (2, 4)

#: queries at or below which an attention is a decode step (flash-decoding, whatever the kernel)
DECODE_Q_LEN = 16
FA1_MAX_SPLITS = 30  # flash-attn v1.0 fmha_fwd_launch_template.h: at most 30 query splits per (batch, head)
BlockTable = tuple[tuple[int, int], ...]


def by_head_dim(table: BlockTable, head_dim: int) -> int:
    """The value of the first (largest head_dim, value) row of `table` that covers `head_dim`."""
    return next(v for d, v in table if head_dim <= d)


def num_splits_heuristic(units: int, sms: int, ctas_per_sm: int, max_splits: int) -> int:
    """FlashAttention v1's split of each (batch, head) along the queries (csrc/flash_attn/src/
    fmha_fwd_launch_template.h, num_splits_heuristic_fwd): the fewest splits whose wave efficiency
    (waves / ceil(waves)) is within 95 % of the best up to `max_splits`."""
    effs = []
    for n in range(1, max_splits + 1):
        waves = units * n / (sms * ctas_per_sm)
        effs.append(waves / math.ceil(waves))
    best = max(effs)
    return next(n for n, e in enumerate(effs, 1) if e > 0.95 * best)


@dataclass(frozen=True, slots=True)
class FlashKernel:
    """A fused attention kernel: scores stay on chip. Kernels differ by their schedule (work units and
    blocks, what the warps exchange through shared memory, what goes back to DRAM between key blocks, how
    the backward sums dQ, whether softmax overlaps the matmuls) and by one efficiency constant (calibrated
    on the A100 rows, with its source)."""

    name: str
    source: str
    #: share of its schedule's per-pair rate the kernel's main loop reaches (work the schedule does not
    #: count: address arithmetic, masking, register spills); its per-pair time is divided by it
    efficiency: float = 1.0
    efficiency_source: str = "FlashAttention-2 defines the model (efficiency.tensor of the part)"
    #: (architecture, efficiency) where a measurement of the kernel on that architecture sets another
    arch_efficiency: tuple[tuple[str, float], ...] = ()
    arch_efficiency_source: str = ""
    #: forward work unit: query rows (FlashAttention-2 tiles: 128 up to head_dim 128, else 64)
    block_q: BlockTable = ((128, 128), (ANY_HEAD_DIM, 64))
    #: keys per inner-loop block (FlashAttention-2: 128 up to head_dim 64, else 64)
    block_k: BlockTable = ((64, 128), (ANY_HEAD_DIM, 64))
    #: backward work unit: keys (None: block_q, as FlashAttention-2's 128-key units)
    bwd_block: BlockTable | None = None
    #: keys a backward unit owns: its dQ contributions are added once per query row and key block
    bwd_keys: BlockTable = ((ANY_HEAD_DIM, 128),)
    #: query rows one warp computes against each K and V element it reads from shared memory (forward)
    warp_rows: BlockTable = ((ANY_HEAD_DIM, 32),)
    #: warps splitting a key block ("split-K"): their partial O (fp32) is summed through shared memory
    key_warps: int = 1
    #: forward units are (batch, head) pairs split along the queries to fill the SMs (FlashAttention v1)
    heads_split: bool = False
    #: the running output is kept in DRAM in fp32 and re-read and re-written with Q and the row statistics
    #: for every key block (FlashAttention v1: key blocks are the outer loop)
    o_in_dram: bool = False
    #: shared-memory operand loads overlap the MMAs (hand-pipelined kernels); else they add to them
    smem_overlap: bool = True
    #: fp32 bookkeeping FLOPs per (query, key) pair, forward and backward (scale, max, sum; dS)
    fwd_fp32_per_pair: float = 4.0
    bwd_fp32_per_pair: float = 6.0
    #: fp32 FLOPs per output element (query row x head_dim) and key block that rescale the running output
    #: beyond FlashAttention-2's (v1 rescales by diag(l)^-1 at every block, v2 once at the end: FA2 §3.1.1)
    fwd_rescale_per_row_block: float = 0.0
    #: the backward sums dQ as per-key-block replicas (a sum kernel after) or per head, whichever is faster
    #: (Triton's sequence_parallel switch, both timed by the benchmark); else fp32 atomics in L2
    dq_replicas: bool = False
    #: softmax overlapped with asynchronous matmuls (warp specialization, Hopper WGMMA)
    overlap: bool = False
    #: architectures that can run it (empty: all)
    architectures: tuple[str, ...] = ()

    def check(self, gpu: GPU) -> None:
        arch = gpu.params["architecture"]
        if self.architectures and arch not in self.architectures:
            raise ConfigError(f"attention kernel {self.name!r} needs a {' or '.join(self.architectures)} GPU; "
                              f"{gpu.name} is {arch}", key="kernel")  # fmt: skip

    def forward(self, gpu: GPU, op: Attention) -> OpCost:
        return gpu.flash_forward(op, self)

    def backward(self, gpu: GPU, op: AttentionGrad) -> OpCost:
        return gpu.flash_backward(op, self)


@dataclass(frozen=True, slots=True)
class UnfusedKernel:
    """PyTorch's math path (standard attention): S = scale·Q·Kᵀ as a batched GEMM that writes the b·h·s²
    score matrix to DRAM, the causal mask added to it, softmax reading and writing it, then P·V; backward
    dP = dO·Vᵀ, dV = Pᵀ·dO, the softmax backward, dQ = dS·K, dK = dSᵀ·Q. Every piece is priced by the
    GPU's own GEMM, row and streaming costs: materialising the matrix is what makes it slow."""

    name: str
    source: str
    #: share of the composed kernels' model rate that the eager chain reaches (its time is divided by it)
    efficiency: float = 1.0
    efficiency_source: str = "none: the composed costs as they are"
    architectures: tuple[str, ...] = ()

    def check(self, gpu: GPU) -> None:
        return None

    def forward(self, gpu: GPU, op: Attention) -> OpCost:
        return gpu.unfused_cost(op, backward=False)

    def backward(self, gpu: GPU, op: AttentionGrad) -> OpCost:
        return gpu.unfused_cost(op, backward=True)


FA2 = FlashKernel("fa2", "Dao 2023, FlashAttention-2 (arXiv 2307.08691): query blocks over SMs, one rescale at "
                  "the end, backward over key blocks with dQ by fp32 atomics",
                  arch_efficiency=(("hopper", 0.68),),
                  arch_efficiency_source="Shah et al. 2024, FlashAttention-3 (arXiv 2407.08608), abstract: "
                  "FlashAttention-2 reaches 35% of H100 peak (346 TFLOP/s fp16); the schedule alone reaches 506 "
                  "(head_dim 128 forward, 16K tokens): 346 / 506 = 0.68. Its mma.sync loop does not use "
                  "Hopper's asynchronous WGMMA and TMA, which FA3 adds")  # fmt: skip
STANDARD = UnfusedKernel(
    "standard",
    "flash-attention benchmarks/benchmark_flash_attention.py attention_pytorch: baddbmm, causal mask add, "
    "torch.softmax, einsum (dropout 0: no kernel); torch.nn.functional.scaled_dot_product_attention's math "
    "backend runs the same ops",
    efficiency=0.65,
    efficiency_source="calibrated: zero median signed error on the 20 PyTorch rows of attention_a100.csv; the "
    "ratio is flat over s, d and causal (2.9% median |err| after)",
)

#: every attention kernel by the name an op carries (`Attention.kernel`)
ATTENTION_KERNELS: dict[str, FlashKernel | UnfusedKernel] = {
    k.name: k
    for k in (
        FA2,
        FlashKernel(
            "fa1",
            "Dao et al. 2022, FlashAttention (arXiv 2205.14135) Algorithm 1, as flash-attn v1.0 runs it "
            "(csrc/flash_attn/src/fmha_fwd_hdim*.cu, fmha_fprop_kernel_1xN.h): key blocks outer (256 keys "
            "up to head_dim 64, else 128) over 16-row query steps, 4 warps splitting each key block, the "
            "running O in fp32 in DRAM; CTAs per (batch, head) split along the queries to fill the SMs. "
            "FA2 paper §3.1-3.3: rescaling every block, m and l kept apart, split-K warps",
            efficiency=0.73,
            efficiency_source="calibrated: zero median signed error on the 24 FlashAttention rows of "
            "attention_a100.csv (flash2_a100_fwd_bwd_benchmark.png, the FA2 paper's A100 fwd+bwd figure); "
            "4.5% median |err| after",
            block_q=((ANY_HEAD_DIM, 16),),
            block_k=((64, 256), (ANY_HEAD_DIM, 128)),
            bwd_block=((ANY_HEAD_DIM, 128),),
            warp_rows=((ANY_HEAD_DIM, 16),),
            key_warps=4,
            heads_split=True,
            o_in_dram=True,
            bwd_fp32_per_pair=7.0,
            fwd_rescale_per_row_block=2.0,
        ),
        FlashKernel(
            "triton",
            "OpenAI Triton fused-attention tutorial (triton.ops.flash_attention, 2023): forward 128 queries x "
            "64 keys, 4 warps up to head_dim 64 else 8; backward 128 x 128, per head or sequence-parallel with "
            "dQ replicas summed after (the flash-attention benchmark times both and keeps the faster)",
            efficiency=0.61,
            efficiency_source="calibrated: zero median signed error on the 24 FlashAttention Triton rows of "
            "attention_a100.csv; 6.5% median |err| after",
            block_q=((ANY_HEAD_DIM, 128),),
            block_k=((ANY_HEAD_DIM, 64),),
            bwd_block=((ANY_HEAD_DIM, 128),),
            warp_rows=((64, 32), (ANY_HEAD_DIM, 16)),
            smem_overlap=False,
            dq_replicas=True,
        ),
        FlashKernel(
            "xformers",
            "xformers memory-efficient attention, cutlass kernels (xformers/csrc/attention/cuda/fmha "
            "kernel_forward.h, kernel_backward.h, Sm80): forward 64 queries x 64 keys up to head_dim 64, else "
            "32 x 128; backward over 64-key blocks, dQ summed in fp32",
            efficiency=0.47,
            efficiency_source="calibrated: zero median signed error on the 24 xformers rows of "
            "attention_a100.csv; 5.1% median |err| after",
            block_q=((64, 64), (ANY_HEAD_DIM, 32)),
            block_k=((64, 64), (ANY_HEAD_DIM, 128)),
            bwd_block=((ANY_HEAD_DIM, 64),),
            warp_rows=((ANY_HEAD_DIM, 32),),
        ),
        STANDARD,
        FlashKernel(
            "fa3",
            "Shah et al. 2024, FlashAttention-3 (arXiv 2407.08608) §3: warp-specialized producer/consumer "
            "warpgroups, asynchronous WGMMA with softmax overlapped (ping-pong), blocks 192 x 128 at head_dim "
            "64, 128 x 128 at 128, 128 x 80 at 256 (§4.1)",
            efficiency=0.96,
            efficiency_source="FA3 paper abstract: up to 740 TFLOP/s FP16 forward on H100 SXM5 (75% of peak); "
            "0.96 puts the model's best forward (head_dim 256, 16k keys, 767 TFLOP/s at 1.0) there. No "
            "calibration rows: FA3 does not run on the A100",
            block_q=((64, 192), (ANY_HEAD_DIM, 128)),
            block_k=((128, 128), (ANY_HEAD_DIM, 80)),
            warp_rows=((ANY_HEAD_DIM, 64),),
            overlap=True,
            architectures=("hopper",),
        ),
    )
}
ATTENTION_KERNELS["sdpa-math"] = STANDARD  # PyTorch SDPA's math backend: the same unfused ops


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
        """The algorithm the op names (`Conv2d.algo`), or with `auto` the fastest the library has, as cuDNN's
        benchmark mode times them and keeps the fastest: implicit GEMM, and for a 3x3 stride-1 filter
        non-fused Winograd F(2x2) or F(4x4) (`Conv2d.winograd`, its kernels back to back).
        `detail["algo"]` names the choice."""
        implicit = self.implicit_gemm_cost(op)
        best = None if op.algo == "winograd" else implicit
        for m in WINOGRAD_TILES:
            parts = op.winograd(m)
            if parts is not None:
                costs = [self.op_cost(p) for p in parts]
                cost = chain_cost(costs)
                if best is None or cost.duration_s < best.duration_s:
                    kernels = " + ".join(f"{p.name.rsplit('_', 1)[-1]} {c.duration_s * 1e6:.1f} us"
                                         for p, c in zip(parts, costs, strict=True))  # fmt: skip
                    detail = {"t_compute_s": cost.detail["t_compute_s"], "t_dram_s": cost.detail["t_dram_s"],
                              "algo": f"winograd F({m}x{m},3x3)", "kernels": kernels}  # fmt: skip
                    best = replace(cost, detail=detail)
        return best or implicit

    def implicit_gemm_cost(self, op: Op) -> OpCost:
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
        detail = {**cost.detail, "t_dram_s": t_dram, "gemm_m": g.m, "gemm_n": g.n, "gemm_k": g.k,
                  "algo": "implicit gemm"}  # fmt: skip
        return OpCost(t, bound, dram, actions, detail)

    # ----------------------------------------------------------------------------------- attention
    def attention_kernel(self, op: Attention) -> FlashKernel | UnfusedKernel:
        """The kernel `op` names (`ATTENTION_KERNELS`), refused in one line if unknown or if this part's
        architecture cannot run it."""
        kernel = ATTENTION_KERNELS.get(op.kernel)
        if kernel is None:
            raise ConfigError(f"unknown attention kernel {op.kernel!r} (known: {', '.join(ATTENTION_KERNELS)})",
                              key="kernel")  # fmt: skip
        kernel.check(self)
        return kernel

    def flash_kernel(self, op: Attention) -> FlashKernel:
        """The fused schedule whose blocks `op` runs in: its kernel's, FlashAttention-2's for a decode step
        (flash-decoding, whatever kernel runs the prefill) and for the unfused kernel (which has none)."""
        kernel = self.attention_kernel(op)
        return kernel if isinstance(kernel, FlashKernel) and op.q_len > DECODE_Q_LEN else FA2

    def flash_block_k(self, op: Attention) -> int:
        """Key rows per inner-loop block (FlashAttention-2: 128 up to head_dim 64, else 64)."""
        return by_head_dim(self.flash_kernel(op).block_k, op.head_dim)

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
        return by_head_dim(self.flash_kernel(op).block_q, op.head_dim)

    def attention_cost(self, op: Attention) -> OpCost:
        """The forward of the kernel `op` names (`Attention.kernel`); a decode step is flash-decoding."""
        kernel = self.attention_kernel(op)
        return (kernel if op.q_len > DECODE_Q_LEN else FA2).forward(self, op)

    def attention_grad_cost(self, op: AttentionGrad) -> OpCost:
        """The backward of the kernel `op` names."""
        kernel = self.attention_kernel(op)
        return (kernel if op.q_len > DECODE_Q_LEN else FA2).backward(self, op)

    def flash_forward(self, op: Attention, kernel: FlashKernel) -> OpCost:
        """Flash forward: per (query, key) pair 4·d matmul FLOPs on tensor cores, one exp on the SFUs and
        ~4 fp32 FLOPs of scaling/max/sum bookkeeping, which FlashAttention-2 does not overlap with the
        matmuls; query blocks spread over SMs (decode splits the KV sequence instead). Shared memory bounds
        a pair at the K and V bytes each warp reads for its rows plus split-K partial sums; a kernel that
        keeps the running output in DRAM moves it (fp32), Q and the row statistics once per key block."""
        d, e = op.head_dim, op.elem_bytes
        bk = self.flash_block_k(op)
        fp32 = kernel.fwd_fp32_per_pair + kernel.fwd_rescale_per_row_block * d / bk
        smem = 2.0 * d * e / by_head_dim(kernel.warp_rows, d)
        exchange = 0.0
        if kernel.key_warps > 1:
            # split-K warps: each re-reads the query step and writes its partial O (fp32), which are summed
            exchange = kernel.key_warps * d * (e + 8.0) / bk
        serial_B, splits, per_sm = 0.0, 0, 1
        if kernel.o_in_dram:
            # every key block but the first reads, and every one but the last writes, O (fp32), l and m; Q again
            per_row_B = 8.0 * d + 16.0 + d * e
            serial_B = max(0.0, self.flash_pairs(op) / bk - op.batch * op.heads * op.q_len) * per_row_B
        if kernel.heads_split:
            # CTAs of K and V tiles and the split-K buffer, as many per SM as shared memory holds
            cta_B = 2.0 * bk * d * e + kernel.key_warps * self.flash_block_q(op) * d * 4.0
            per_sm = max(1, int(self.params["smem_per_sm"] // cta_B))
            max_splits = min(FA1_MAX_SPLITS, ceil_div(op.q_len, self.flash_block_q(op)))
            splits = num_splits_heuristic(op.batch * op.heads, self.sms, per_sm, max_splits)
        return self._flash_cost(op, kernel, self.flash_block_q(op), 4.0 * d, fp32, 0.0, smem + exchange,
                                exchange_B_per_pair=exchange, serial_B=serial_B, head_splits=splits,
                                ctas_per_sm=per_sm)  # fmt: skip

    def flash_backward(self, op: AttentionGrad, kernel: FlashKernel) -> OpCost:
        """Flash backward: 10·d matmul FLOPs per pair (five matmuls), the exp recomputed, ~6 fp32 FLOPs for
        dS = P∘(dP − rowsum(dO∘O)); work units own key blocks and add their dQ contributions into an fp32
        buffer with L2 atomics: head_dim × 4 bytes per query row and key block. Around it, D = rowsum(dO∘O)
        before (reads O, dO) and, after, the fp32 dQ accumulator (zeroed beforehand) read and written back
        as dQ in the input dtype. A kernel with dQ replicas (Triton) runs the faster of its two launches."""
        if kernel.dq_replicas:
            return min(self._replica_backward(op, kernel, True), self._replica_backward(op, kernel, False),
                       key=lambda c: c.duration_s)  # fmt: skip
        d = op.head_dim
        block = by_head_dim(kernel.bwd_block or kernel.block_q, d)
        cost = self._flash_cost(op, kernel, block, 10.0 * d, kernel.bwd_fp32_per_pair,
                                4.0 * d / by_head_dim(kernel.bwd_keys, d))  # fmt: skip
        q_B = op.batch * op.heads * op.q_len * d * op.elem_bytes
        acc_B = q_B * 4 / op.elem_bytes  # the fp32 dQ accumulator
        extra_B = 2 * q_B + 2 * acc_B + q_B  # read O and dO; zero and re-read the accumulator; write dQ
        return self._around(cost, 2, extra_B)

    def _replica_backward(self, op: AttentionGrad, kernel: FlashKernel, parallel: bool) -> OpCost:
        """Triton's backward: sequence-parallel (a unit per key block, each writing its own dQ replica, zeroed
        before and summed by a kernel after) or per head (one unit loops over all key blocks, reading and
        writing dQ for every one)."""
        d, e = op.head_dim, op.elem_bytes
        bk = by_head_dim(kernel.bwd_keys, d)
        q_B = op.batch * op.heads * op.q_len * d * e
        replicas = ceil_div(op.kv_len, bk)
        if parallel:
            cost = self._flash_cost(op, kernel, by_head_dim(kernel.bwd_block or kernel.block_q, d), 10.0 * d,
                                    kernel.bwd_fp32_per_pair, 0.0, extra_B=replicas * q_B)  # fmt: skip
            return self._around(cost, 3, 2 * q_B + 2 * replicas * q_B + q_B)  # D; zero; sum the replicas
        rmw_per_pair = 2.0 * d * e / bk  # dQ read and written per query row and key block, through L2
        cost = self._flash_cost(op, kernel, op.q_len, 10.0 * d, kernel.bwd_fp32_per_pair, rmw_per_pair,
                                extra_B=rmw_per_pair * self.flash_pairs(op), head_splits=1)  # fmt: skip
        return self._around(cost, 2, 3 * q_B)  # D (reads O, dO); zero dQ

    def _around(self, cost: OpCost, kernels: int, extra_B: float) -> OpCost:
        """`cost` plus `kernels` streaming kernels around it that move `extra_B` bytes."""
        t_extra = kernels * self.launch_s + extra_B / self.memory_bandwidth_Bps
        actions = {**cost.actions, "dram.byte": cost.dram_bytes + extra_B}
        return OpCost(cost.duration_s + t_extra, cost.bound, cost.dram_bytes + extra_B, actions, cost.detail)

    def _flash_cost(self, op: Attention, kernel: FlashKernel, block_q: int, mm_per_pair: float,
                    fp32_per_pair: float, atomic_B_per_pair: float, smem_B_per_pair: float = 0.0,
                    extra_B: float = 0.0, exchange_B_per_pair: float = 0.0, serial_B: float = 0.0,
                    head_splits: int = 0, ctas_per_sm: int = 1) -> OpCost:  # fmt: skip
        """A fused attention kernel's time: the slower of its work units on the SMs (per-pair tensor, SFU,
        fp32, L2-atomic and shared-memory time) and its DRAM traffic (`extra_B` on top of the op's tensors),
        plus `serial_B` bytes that its CTAs move between steps with nothing to overlap them. Work units are
        query blocks of `block_q` rows, or with `head_splits` each (batch, head) split into that many equal
        parts (rows strided: equal even when causal), `ctas_per_sm` of them sharing an SM."""
        peak, unit = self.matmul_peak(op.dtype)
        eff = self.eff["tensor"] if unit == "tensor" else self.eff["vector"]
        sm_mm = peak * eff / self.sms
        sm_sfu = self.params["sfu_per_sm_per_clk"] * self.clock_Hz
        sm_fma = self.vector_peak("fp32") * self.eff["vector"] / self.sms
        sm_l2 = self.l2_bw_Bps / self.sms
        t_mm, t_simt = mm_per_pair / sm_mm, 1.0 / sm_sfu + fp32_per_pair / sm_fma
        if kernel.overlap:  # softmax of one block runs while the tensor cores multiply another
            t_pair = max(t_mm, t_simt) + atomic_B_per_pair / sm_l2
        else:
            t_pair = t_mm + 1.0 / sm_sfu + fp32_per_pair / sm_fma + atomic_B_per_pair / sm_l2
        t_smem = smem_B_per_pair / (self.params["smem_bytes_per_clk"] * self.clock_Hz)
        efficiency = dict(kernel.arch_efficiency).get(self.params["architecture"], kernel.efficiency)
        t_pair = (max(t_pair, t_smem) if kernel.smem_overlap else t_pair + t_smem) / efficiency
        kv_work = dequant_work(op.kv_dtype, op.dtype) if op.kv_dtype is not None else None
        kv_per_pair = 0.0
        if kv_work is not None:
            # a quantized KV cache is dequantized as each work unit loads it: 2 x head_dim elements per key
            # and query block. Decode kernels (flash-decoding with GQA packing: TensorRT-LLM XQA, FlashInfer,
            # QServe) load a key once for all query heads of its group.
            rows = (
                min(op.q_len * (op.heads // op.kv_heads), block_q)
                if op.q_len <= DECODE_Q_LEN
                else min(op.q_len, block_q)
            )
            kv_per_pair = 2.0 * op.head_dim / rows
            t_pair += kv_per_pair * self.dequant_s_per_element(kv_work, op.dtype)
        q_blocks = ceil_div(op.q_len, block_q)
        units = op.batch * op.heads * q_blocks
        splits = 1
        if (
            op.q_len <= DECODE_Q_LEN
        ):  # decode: split the KV sequence across SMs (flash-decoding) to fill the chip
            splits = max(1, min(ceil_div(op.kv_len, 256), ceil_div(self.sms * 2, units)))
            units *= splits
        pairs_total = self.flash_pairs(op)
        # the largest work unit: the last query block, which (causal) sees the whole kv length
        unit_keys = op.kv_len  # a sliding window caps a unit's keys at its rows' windows, block-aligned
        if op.window_binds and op.window is not None:
            unit_keys = min(op.kv_len, op.window + min(op.q_len, block_q) - 1 + self.flash_block_k(op))
        unit_pairs = min(op.q_len, block_q) * unit_keys / splits
        t_compute = max(pairs_total * t_pair / self.sms, unit_pairs * t_pair)
        if op.q_len > DECODE_Q_LEN and not op.causal:  # equal units: whole rounds over the SMs
            t_compute = ceil_div(units, self.sms) * unit_pairs * t_pair
        if head_splits and op.q_len > DECODE_Q_LEN:
            units = op.batch * op.heads * head_splits
            unit_pairs = pairs_total / units
            t_compute = ceil_div(units, self.sms) * unit_pairs * t_pair
            if serial_B:  # each step of block_q rows also waits for its synchronous loads (the running O): a
                # memory latency that only the other CTAs on the SM hide
                steps = unit_pairs / (block_q * self.flash_block_k(op))
                t_compute += ceil_div(units, self.sms) * steps * self.mem_latency_s / ctas_per_sm
        dram = op.bytes + extra_B
        t_mem = self.dram_time_s(dram, ceil_div(units, self.sms), dram / units)
        t_serial = serial_B / self.memory_bandwidth_Bps
        dram += serial_B
        bound = "compute" if t_compute >= t_mem else "memory"
        actions = {f"flop.{op.dtype}": op.flops, "flop.fp32": (fp32_per_pair + 1) * pairs_total,
                   "dram.byte": dram, "smem.byte": 2 * dram + exchange_B_per_pair * pairs_total,
                   "l2.byte": atomic_B_per_pair * pairs_total}  # fmt: skip
        detail = {"units": units, "block_q": block_q, "t_compute_s": t_compute, "t_dram_s": t_mem}
        if kernel is not FA2:
            detail = {**detail, "kernel": kernel.name, "t_serial_s": t_serial}
        if kv_work is not None:
            elements = kv_per_pair * pairs_total
            actions["vector.op"] = elements * self.simt_instructions(kv_work, op.dtype)
            detail = {**detail, "kv_dtype": op.kv_dtype, "dequant_elements": elements}
        return OpCost(
            max(t_compute, t_mem) + t_serial + self.launch_s + self.mem_latency_s,
            bound,
            dram,
            actions,
            detail,
        )

    def unfused_cost(self, op: Attention, backward: bool) -> OpCost:
        """Standard attention as the kernels PyTorch launches one after another (`UnfusedKernel`), each
        priced by this GPU's own GEMM and streaming costs: the b·h·s² score matrix is written by one GEMM
        and read back by the softmax and by the next GEMM. The softmax streams its rows once from DRAM:
        a CTA's re-reads of a row it has just read hit L2 (LLMCompass's A100 softmax over 32768 x 4096 fp16
        runs at 279 G elements/s, 2.2 TB/s if every pass went to DRAM: more than the part has).
        Q, K, V (forward) and dO, dQ, dK, dV (backward) are also copied between the (batch, seq, head) and
        (batch·head, seq) layouts. Every (query, key) pair is computed: a causal mask is added, not skipped."""
        bh, sq, skv, d, dt = op.batch * op.heads, op.q_len, op.kv_len, op.head_dim, op.dtype
        scores = bh * sq * skv

        def bmm(name: str, m: int, n: int, k: int) -> OpCost:
            return self.gemm_cost(Gemm(name, dt, m=m, n=n, k=k, batch=bh, b_is_weight=False))

        def stream(name: str, elements: int, inputs: int, flops: float = 0.0) -> OpCost:
            return self.stream_cost(
                Elementwise(name, dt, elements=elements, inputs=inputs, flops_per_element=flops)
            )

        if not backward:
            parts = [stream("to_heads", 3 * bh * sq * d, 1), bmm("scores", sq, skv, d)]
            if op.causal or op.window_binds:  # the mask tensor and the scores read, the scores written
                parts.append(stream("mask", scores, 2, 1.0))
            parts += [stream("softmax", scores, 1, 5.0), bmm("pv", sq, d, skv)]
        else:
            # dS = P∘(dP − rowsum(dP∘P)): P and dP read, dS written
            parts = [stream("do_to_heads", bh * sq * d, 1), bmm("dp", sq, skv, d), bmm("dv", skv, d, sq),
                     stream("softmax_grad", scores, 2, 3.0), bmm("dq", sq, d, skv), bmm("dk", skv, d, sq),
                     stream("grads_from_heads", 3 * bh * sq * d, 1)]  # fmt: skip
        actions: dict[str, float] = {}
        for c in parts:
            for a, n in c.actions.items():
                actions[a] = actions.get(a, 0.0) + n
        slowest = max(parts, key=lambda c: c.duration_s)
        duration_s = sum(c.duration_s for c in parts) / self.attention_kernel(op).efficiency
        dram = sum(c.dram_bytes for c in parts)
        detail = {"kernel": "standard", "kernels": len(parts), "score_bytes": scores * op.elem_bytes}
        return OpCost(duration_s, slowest.bound, dram, actions, detail)

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
            algorithms += (("tree", nccl, coll["efficiency"]), ("hierarchical", nccl, coll["efficiency"]))
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
