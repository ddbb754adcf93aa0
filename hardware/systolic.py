"""Systolic arrays (TPU MXU, Eyeriss-like, SCALE-Sim's array) as closed-form cost functions.

A GEMM is laid onto an R x C array in *folds* (tiles of the spatial dimensions). Which GEMM dimension
is spatial depends on the dataflow, following SCALE-Sim's operand-matrix convention
(Sr x Sc spatial, T streamed through time):

    os (output stationary):  Sr = M (ofmap pixels), Sc = N (filters), T = K (window)
    ws (weight stationary):  Sr = K,                Sc = N,           T = M
    is (input stationary):   Sr = K,                Sc = M,           T = N

Two timing conventions:

* `scalesim` reproduces SCALE-Sim v2/v3's stall-free compute cycles exactly. SCALE-Sim builds one
  demand matrix per fold, each fold adding the streamed length plus fill and drain skew:
  os: T + R + C - 2 rows; ws and is: 2R + C + T - 2 (R extra for loading the stationary operand).
  Its reported cycle count is the index of the last ofmap demand row, i.e. folds x per_fold - 1.
* `physical` (default) adds what a real array meets: with double-buffered PEs (shadow weight /
  result registers, as in the TPU's MXU) consecutive folds pipeline, each costing max(T, R) with the
  fill/drain skew paid once per GEMM; on-chip SRAM capacity (operands that do not fit are
  re-fetched, partial sums spill), and DRAM bandwidth stalls when the next fold's prefetch and the
  previous fold's write-back take longer than the current fold's compute. Several arrays (`cores`)
  split the fold grid and share the DRAM bandwidth.

Both count SRAM and DRAM traffic as energy actions; non-GEMM ops run on a vector unit.
Everything is a sum over at most nine classes of folds, never a loop over folds or cycles.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from simcore.component import Component, OpCost, register
from simcore.config import MapOf, Param, nonneg, positive
from simcore.energy import energy_table
from simcore.ops import Attention, Gemm, Op, Softmax, ceil_div, dtype_bytes
from simcore.precision import DTYPE_BYTES

DATAFLOWS = ("os", "ws", "is")
MODES = ("scalesim", "physical")


def _node_nm(value: Any) -> float:
    """Technology node: '7 nm', '7nm' or a bare number of nanometres."""
    if isinstance(value, bool):
        raise ValueError(f"expected a technology node like '7 nm', got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    s = str(value).strip().lower().removesuffix("nm").strip()
    try:
        return float(s)
    except ValueError:
        raise ValueError(f"expected a technology node like '7 nm', got {value!r}") from None


# ------------------------------------------------------------------------------- SCALE-Sim closed form


def spatiotemporal(dataflow: str, m: int, n: int, k: int) -> tuple[int, int, int]:
    """(Sr, Sc, T) of GEMM [m x k] @ [k x n] for a dataflow (SCALE-Sim's mapping)."""
    if dataflow == "os":
        return m, n, k
    if dataflow == "ws":
        return k, n, m
    if dataflow == "is":
        return k, m, n
    raise ValueError(f"unknown dataflow {dataflow!r} (one of {', '.join(DATAFLOWS)})")


def _gemm_from_st(dataflow: str, sr: int, sc: int, t: int) -> tuple[int, int, int]:
    """Inverse of `spatiotemporal`: (m, n, k) from (Sr, Sc, T)."""
    return {"os": (sr, sc, t), "ws": (t, sc, sr), "is": (sc, t, sr)}[dataflow]


@dataclass(frozen=True, slots=True)
class FoldReport:
    """SCALE-Sim's compute report for one layer (stall-free)."""

    cycles: int
    folds: int
    row_folds: int
    col_folds: int
    mapping_efficiency: float  # mean over folds of used PEs / all PEs
    compute_util: float  # SCALE-Sim's "Compute Util": mean per-fold busy fraction
    overall_util: float  # MACs / (cycles x PEs)
    macs: int


def scalesim_gemm(rows: int, cols: int, dataflow: str, m: int, n: int, k: int) -> FoldReport:
    """SCALE-Sim v2/v3 stall-free cycles of GEMM (m, n, k) on a rows x cols array, exactly.

    Per fold the demand matrices are T + R + C - 2 rows long (os) or 2R + C + T - 2 (ws, is: the
    stationary operand is shifted in over R cycles first); the report is the last row's index.
    Its per-fold utilisation divides by the fold's demand rows plus C - 1 for ws/is (ofmap skew).
    """
    if min(rows, cols, m, n, k) < 1:
        raise ValueError(f"array and GEMM dimensions must be >= 1, got {rows}x{cols}, m={m} n={n} k={k}")
    sr, sc, t = spatiotemporal(dataflow, m, n, k)
    rf, cf = ceil_div(sr, rows), ceil_div(sc, cols)
    folds = rf * cf
    if dataflow == "os":
        per_fold, util_cycles = t + rows + cols - 2, t + rows + cols - 2
    else:
        per_fold, util_cycles = 2 * rows + cols + t - 2, 2 * rows + 2 * cols + t - 3
    cycles = folds * per_fold - 1
    mapping = sr * sc / (folds * rows * cols)
    macs = m * n * k
    return FoldReport(
        cycles, folds, rf, cf, mapping, mapping * t / util_cycles, macs / (cycles * rows * cols), macs
    )


def scalesim_conv(rows: int, cols: int, dataflow: str, ifmap_h: int, ifmap_w: int, filt_h: int, filt_w: int,
                  channels: int, num_filters: int, stride: int | tuple[int, int] = 1) -> FoldReport:  # fmt: skip
    """A SCALE-Sim topology row (no padding: give the padded input size; batch 1).

    Its lowering: ofmap = ceil((ifmap - filter + stride) / stride) per side, Sr/Sc/T from
    M = ofmap pixels, N = filters, K = filter_h x filter_w x channels.
    """
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    if filt_h > ifmap_h or filt_w > ifmap_w:
        raise ValueError("filter larger than the input map")
    oh = ceil_div(ifmap_h - filt_h + sh, sh)
    ow = ceil_div(ifmap_w - filt_w + sw, sw)
    return scalesim_gemm(rows, cols, dataflow, oh * ow, num_filters, filt_h * filt_w * channels)


# ---------------------------------------------------------------------------------- physical model


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """What the physical fold model needs to know about one array and its share of memory."""

    rows: int
    cols: int
    dataflow: str
    elem_B: float
    acc_B: float
    ifmap_B: float
    filter_B: float
    ofmap_B: float
    dram_B_per_cycle: float  # this array's share of DRAM bandwidth
    double_buffered_pes: bool


@dataclass
class GemmRun:
    """Cycles, traffic and occupancy of GEMM work on one or more arrays."""

    cycles: float = 0.0
    compute_cycles: float = 0.0
    folds: int = 0
    row_folds: int = 0
    col_folds: int = 0
    macs: float = 0.0
    pe_slots: float = 0.0  # sum over folds of used PEs (for mapping efficiency)
    dram_read_B: dict[str, float] = field(default_factory=lambda: {"ifmap": 0.0, "filter": 0.0, "ofmap": 0.0})
    dram_write_B: float = 0.0
    sram_read_B: float = 0.0
    sram_write_B: float = 0.0

    @property
    def dram_B(self) -> float:
        return sum(self.dram_read_B.values()) + self.dram_write_B

    def add(self, other: GemmRun, count: int = 1, parallel: bool = False) -> None:
        """Append `count` copies of `other`: one after another (time and traffic add up) or, with
        `parallel`, side by side on other cores (time is the longest, traffic adds up)."""
        if parallel:
            self.cycles = max(self.cycles, other.cycles)
            self.compute_cycles = max(self.compute_cycles, other.compute_cycles)
        else:
            self.cycles += other.cycles * count
            self.compute_cycles += other.compute_cycles * count
            self.row_folds, self.col_folds = (
                max(self.row_folds, other.row_folds),
                max(self.col_folds, other.col_folds),
            )
        self.folds += other.folds * count
        self.macs += other.macs * count
        self.pe_slots += other.pe_slots * count
        for key, b in other.dram_read_B.items():
            self.dram_read_B[key] += b * count
        self.dram_write_B += other.dram_write_B * count
        self.sram_read_B += other.sram_read_B * count
        self.sram_write_B += other.sram_write_B * count

    def scaled(self, k: float, time_k: float) -> GemmRun:
        """`k` copies of this run (traffic x k) taking `time_k` times as long."""
        return GemmRun(self.cycles * time_k, self.compute_cycles * time_k, int(self.folds * k), self.row_folds,
                       self.col_folds, self.macs * k, self.pe_slots * k,
                       {n: b * k for n, b in self.dram_read_B.items()}, self.dram_write_B * k,
                       self.sram_read_B * k, self.sram_write_B * k)  # fmt: skip


def _groups(n: int) -> list[tuple[int, int]]:
    """Fold positions as (representative index, count): first, the middle ones, last."""
    if n == 1:
        return [(0, 1)]
    if n == 2:
        return [(0, 1), (1, 1)]
    return [(0, 1), (1, n - 2), (n - 1, 1)]


def physical_gemm(spec: ArraySpec, m: int, n: int, k: int, a_dram_scale: float = 1.0) -> GemmRun:
    """One GEMM on one array with double-buffered SRAMs and a DRAM of `dram_B_per_cycle`.

    Folds run column-fold outer, row-fold inner (as SCALE-Sim). Per fold the array reads a
    row-indexed stream P (r x T), a column-indexed operand Q (T x c) and a per-fold tile S (r x c):

        os: P = A, Q = B (reused across the inner loop), S = C written when the fold ends
        ws: P = A, S = B (stationary), Q = C partial sums accumulated across K-folds
        is: P = B, S = A (stationary), Q = C partial sums accumulated across K-folds

    An operand is fetched from DRAM once if it fits in half its SRAM (the other half prefetches),
    otherwise again on every pass that needs it; partial sums that do not fit spill to DRAM.
    `a_dram_scale` < 1 is an implicit-GEMM convolution: A's DRAM bytes are the input tensor's, not
    the im2col matrix's.
    """
    R, C, df, e, acc = spec.rows, spec.cols, spec.dataflow, spec.elem_B, spec.acc_B
    sr, sc, t = spatiotemporal(df, m, n, k)
    rf, cf = ceil_div(sr, R), ceil_div(sc, C)
    r_last, c_last = sr - (rf - 1) * R, sc - (cf - 1) * C
    if df == "os":
        buf_p, buf_q, p_scale, s_scale = spec.ifmap_B, spec.filter_B, a_dram_scale, 1.0
    elif df == "ws":
        buf_p, buf_q, p_scale, s_scale = spec.ifmap_B, spec.ofmap_B, a_dram_scale, 1.0
    else:
        buf_p, buf_q, p_scale, s_scale = spec.filter_B, spec.ofmap_B, 1.0, a_dram_scale
    p_resident = sr * t * e * p_scale <= buf_p / 2
    fill_drain = R + C - 2
    if spec.double_buffered_pes:
        # the next fold's stationary operand shifts in (ws, is) or the last results shift out (os)
        # over R cycles behind the current fold's stream; the skew is paid once, plus one exposed R
        per_fold_compute, once = max(t, R), fill_drain + R
    else:  # SCALE-Sim's fold: stream + skew, after an exposed R-cycle preload for ws / is
        per_fold_compute, once = t + fill_drain + (R if df != "os" else 0), 0
    bpc = spec.dram_B_per_cycle

    run = GemmRun(folds=rf * cf, row_folds=rf, col_folds=cf, macs=float(m) * n * k)
    rd_key = {"os": ("ifmap", "filter"), "ws": ("ifmap", "filter"), "is": ("filter", "ifmap")}[df]
    steady = 0.0
    first_rd = last_wr = 0.0
    for fc, nc in _groups(cf):
        c = c_last if fc == cf - 1 else C
        for fr, nr in _groups(rf):
            r = r_last if fr == rf - 1 else R
            count = nc * nr
            first_r, last_r = fr == 0, fr == rf - 1
            # DRAM traffic of one fold of this class
            p_rd = 0.0 if (p_resident and fc > 0) else r * t * e * p_scale
            if df == "os":
                q_fits = t * c * e <= buf_q / 2
                q_rd = t * c * e if (first_r or not q_fits) else 0.0
                s_rd, wr, q_psum_rd = 0.0, r * c * e, 0.0
                sram_rd = (r * t + t * c) * e
                sram_wr = r * c * e
            else:
                q_rd = 0.0
                s_rd = r * c * e * s_scale
                q_fits = t * c * acc <= buf_q / 2
                if q_fits:
                    wr, q_psum_rd = (t * c * e if last_r else 0.0), 0.0
                else:
                    wr = t * c * (e if last_r else acc)
                    q_psum_rd = 0.0 if first_r else t * c * acc
                sram_rd = (t * r + r * c) * e + (0.0 if first_r else t * c * acc)
                sram_wr = t * c * (e if last_r else acc)
            rd = p_rd + q_rd + s_rd + q_psum_rd
            run.dram_read_B[rd_key[0]] += count * p_rd
            if df == "os":
                run.dram_read_B["filter"] += count * q_rd
            else:
                run.dram_read_B[rd_key[1]] += count * s_rd
                run.dram_read_B["ofmap"] += count * q_psum_rd
            run.dram_write_B += count * wr
            run.sram_read_B += count * (sram_rd + wr)  # write-backs are read out of SRAM
            run.sram_write_B += count * (sram_wr + rd)  # DRAM fills are written into SRAM
            run.pe_slots += count * r * c
            # time: fold i computes while fold i+1 prefetches and fold i-1 writes back
            is_first = fc == 0 and fr == 0
            is_last = fc == cf - 1 and fr == rf - 1
            rd_overlap = 0.0 if is_first else rd
            wr_overlap = 0.0 if is_last else wr
            if is_first:
                first_rd = rd
            if is_last:
                last_wr = wr
            steady += count * max(per_fold_compute, (rd_overlap + wr_overlap) / bpc if bpc > 0 else 0.0)
    run.compute_cycles = rf * cf * per_fold_compute + once
    exposed = (first_rd + last_wr) / bpc if bpc > 0 else 0.0
    run.cycles = steady + once + exposed
    return run


def tiled_gemm(spec: ArraySpec, m: int, n: int, k: int, a_dram_scale: float = 1.0,
               by_time: bool = True) -> GemmRun:  # fmt: skip
    """The GEMM cut into outer chunks when that avoids re-fetching: the cheapest of running it whole
    or in chunks of the non-reduction dimension sized so that an operand (or the partial sums) stays
    in its SRAM half. os chunks M (A stays for all column folds); ws chunks M = T (A chunk or
    partial sums fit); is chunks N = T (B chunk or partial sums fit). Cheapest is fewest cycles and,
    among schedules within 2% of the fastest, fewest DRAM bytes (`by_time`); for SCALE-Sim timing,
    fewest DRAM bytes."""
    e, acc, R, C = spec.elem_B, spec.acc_B, spec.rows, spec.cols
    cands: set[tuple[str, int]] = set()
    if spec.dataflow == "os":
        mc = int(spec.ifmap_B / 2 // (k * e * a_dram_scale)) // R * R
        cands.add(("m", mc))
    else:
        dim, extent = ("m", m) if spec.dataflow == "ws" else ("n", n)
        t_psum = int(spec.ofmap_B / 2 // (min(C, n if spec.dataflow == "ws" else m) * acc))
        buf, scale = (spec.ifmap_B, a_dram_scale) if spec.dataflow == "ws" else (spec.filter_B, 1.0)
        t_in = int(buf / 2 // (k * e * scale))
        for tc in (t_psum, t_in, min(t_psum, t_in)):
            cands.add((dim, tc))
    runs = [physical_gemm(spec, m, n, k, a_dram_scale)]
    for dim, size in sorted(cands):
        extent = m if dim == "m" else n
        if not 1 <= size < extent:
            continue
        full, rem = divmod(extent, size)
        run = GemmRun()
        for cnt, sz in ((full, size), (1 if rem else 0, rem)):
            if cnt:
                mm, nn = (sz, n) if dim == "m" else (m, sz)
                run.add(physical_gemm(spec, mm, nn, k, a_dram_scale), cnt)
        run.row_folds, run.col_folds = runs[0].row_folds, runs[0].col_folds
        runs.append(run)
    if by_time:  # fastest, and among schedules within 2% of it the one that moves the fewest bytes
        fastest = min(r.cycles for r in runs)
        return min((r for r in runs if r.cycles <= 1.02 * fastest), key=lambda r: (r.dram_B, r.cycles))
    return min(runs, key=lambda r: (r.dram_B, r.cycles))


# ------------------------------------------------------------------------------------------- component


@register("systolic")
class SystolicArray(Component):
    """One or more R x C systolic arrays with ifmap/filter/ofmap SRAMs, a DRAM and a vector unit."""

    PORTS = ("pcie",)

    ACTIONS = ("mac.{dtype}", "flop.{dtype}", "pe.idle.cycle", "sram.read.byte", "sram.write.byte",
               "dram.byte")  # fmt: skip
    ACTION_DTYPES = ("dtype",)
    SCHEMA = {
        "rows": positive("PE rows of one array", type=int, default=32),
        "cols": positive("PE columns of one array", type=int, default=32),
        "dataflow": Param("os (output), ws (weight) or is (input) stationary", default="os", type=str,
                          choices=DATAFLOWS),
        "mode": Param("scalesim: SCALE-Sim's stall-free fold count; physical: SRAM/DRAM limits and "
                      "double-buffered PEs", default="physical", type=str, choices=MODES),
        "clock": positive("array clock", "frequency", default=1e9),
        "cores": positive("arrays that split the work (TPU MXUs), each with its own SRAMs", type=int, default=1),
        "ifmap_sram": positive("input SRAM per array (double-buffered: half computes, half prefetches)",
                               "bytes", default=64 * 1024),
        "filter_sram": positive("weight SRAM per array (double-buffered)", "bytes", default=64 * 1024),
        "ofmap_sram": positive("output / partial-sum SRAM per array (double-buffered)", "bytes", default=64 * 1024),
        "dtype": Param("datapath type; operands are converted to it, so element size and MAC energy follow it",
                       default="int8", type=str, choices=tuple(DTYPE_BYTES)),
        "acc_bytes": positive("bytes of a partial sum kept between K-folds", default=4.0),
        "double_buffered_pes": Param("physical mode: PEs hold a shadow copy of the stationary operand / result, "
                                     "so folds pipeline (max(T, R) each, fill/drain once)", default=True,
                                 type=bool),
        "tech_node": Param("process node (nm) the energy tables are scaled to", default=45.0, type=_node_nm,
                           minimum=0),
        "dram": {
            "type": Param("DRAM kind for energy (ddr4, lpddr4, hbm2, ...)", default="ddr4", type=str),
            "bandwidth": positive("DRAM bandwidth shared by all arrays", "bandwidth", default=10e9),
            "capacity": positive("DRAM capacity", "bytes", default=8 * 2.0**30),
        },
        "vector_unit": {
            "lanes": positive("vector lanes per array for non-GEMM ops", type=int, default=32),
            "flops_per_lane": positive("operations per lane per cycle", default=1.0),
        },
        "power": {
            "static": nonneg("static (leakage + clock tree) power of the whole accelerator", "power", default=0.0),
        },
        "energy": MapOf(positive("override, J per action", "energy"), "per-action energy overrides "
                        "(e.g. mac.int8: 0.2 pJ); the rest comes from configs/energy scaled to tech_node"),
    }  # fmt: skip
    COSTS = {
        "gemm": "_gemm_cost",
        "conv2d": "_conv_cost",
        "attention": "_attention_cost",
        "elementwise": "_vector_cost",
        "pool": "_vector_cost",
        "norm": "_vector_cost",
        "softmax": "_vector_cost",
    }

    def __init__(self, name: str, params: dict[str, Any], doc: Any = None) -> None:
        super().__init__(name, params, doc)
        p = params
        self.rows, self.cols, self.cores = p["rows"], p["cols"], p["cores"]
        self.dataflow, self.mode, self.clock_Hz = p["dataflow"], p["mode"], p["clock"]
        self.elem_B = dtype_bytes(p["dtype"])
        self._energy = energy_table(p["tech_node"])

    @classmethod
    def build(cls, name: str = "systolic", **params: Any) -> SystolicArray:
        """Construct from keyword parameters (strings with units allowed), e.g. in tests and studies."""
        from simcore.config import Doc, validate

        return cls(name, validate(Doc(params), cls.SCHEMA))

    # ------------------------------------------------------------------------------ properties
    @property
    def peak_macs_per_s(self) -> float:
        return self.rows * self.cols * self.cores * self.clock_Hz

    def dense_peak_flops(self, dtype: str) -> float:
        return 2.0 * self.peak_macs_per_s

    @property
    def static_power_W(self) -> float:
        return self.params["power"]["static"]

    @property
    def memory_capacity_B(self) -> float:
        return self.params["dram"]["capacity"]

    @property
    def memory_bandwidth_Bps(self) -> float:
        return self.params["dram"]["bandwidth"]

    def energy_per_action_J(self) -> dict[str, float]:
        """MACs and FLOPs from the dtype table, idle PE-cycles (clocked PEs without a MAC: fill,
        drain, unused rows and columns, stalls), SRAM per byte at the arrays' mean buffer size, DRAM
        by type, all at `tech_node`; `energy:` entries in the YAML override."""
        t = self._energy
        p = self.params
        sizes = [p["ifmap_sram"], p["filter_sram"], p["ofmap_sram"]]
        mean_size = math.exp(sum(math.log(s) for s in sizes) / len(sizes))
        out = {
            **t.compute_actions(),
            "pe.idle.cycle": t.pe_idle_J(p["dtype"]),
            "sram.read.byte": t.sram_J_per_byte(mean_size),
            "sram.write.byte": t.sram_J_per_byte(mean_size, write=True),
            "dram.byte": t.dram_J_per_byte(p["dram"]["type"]),
        }
        out.update(p["energy"])
        return out

    def _spec(self, active_cores: int) -> ArraySpec:
        p = self.params
        bpc = p["dram"]["bandwidth"] / self.clock_Hz / max(1, active_cores)
        return ArraySpec(self.rows, self.cols, self.dataflow, self.elem_B, p["acc_bytes"], p["ifmap_sram"],
                         p["filter_sram"], p["ofmap_sram"], bpc, p["double_buffered_pes"])  # fmt: skip

    # ---------------------------------------------------------------------------- GEMM engine
    def _one_gemm(self, m: int, n: int, k: int, cores: int, a_scale: float, concurrent: int) -> GemmRun:
        """One GEMM split over `cores` arrays without splitting the reduction (K): os splits the
        longer of its fold grid's sides (M or N), ws / is split the column folds when there are
        enough of them, else the streamed dimension T. `concurrent` arrays share the DRAM meanwhile."""
        spec = self._spec(concurrent)
        df, R, C = self.dataflow, self.rows, self.cols
        sr, sc, t = spatiotemporal(df, m, n, k)
        rf, cf = ceil_div(sr, R), ceil_div(sc, C)
        if df == "os":
            axis = "sc" if cf >= rf else "sr"
        else:
            axis = "sc" if cf >= cores or t < cores else "t"
        extent, unit = {"sc": (sc, C), "sr": (sr, R), "t": (t, 1)}[axis]
        chunks = ceil_div(extent, unit)
        q, rem = divmod(chunks, cores)
        sizes: list[int] = []
        left = extent
        for i in range(min(cores, chunks)):
            take = min(left, (q + (1 if i < rem else 0)) * unit)
            sizes.append(take)
            left -= take
        total = GemmRun(row_folds=rf, col_folds=cf)
        for size, cnt in Counter(sizes).items():
            dims = {"sr": sr, "sc": sc, "t": t}
            dims[axis] = size
            mm, nn, kk = _gemm_from_st(df, dims["sr"], dims["sc"], dims["t"])
            part = tiled_gemm(spec, mm, nn, kk, a_scale, by_time=self.mode == "physical")
            if self.mode == "scalesim":  # SCALE-Sim's timing; traffic still from the buffer model
                part.cycles = part.compute_cycles = float(scalesim_gemm(R, C, df, mm, nn, kk).cycles)
            total.add(part, cnt, parallel=True)
        return total

    def gemm_run(self, m: int, n: int, k: int, groups: int = 1, a_scale: float = 1.0) -> GemmRun:
        """`groups` independent (m, n, k) GEMMs spread over the arrays in waves."""
        cores_per = max(1, self.cores // groups)
        concurrent = min(groups, self.cores // cores_per)
        waves = ceil_div(groups, concurrent)
        one = self._one_gemm(m, n, k, cores_per, a_scale, concurrent * cores_per)
        return one.scaled(groups, waves)

    def _cost_from_run(self, run: GemmRun, dtype_macs: str, extra: dict[str, Any] | None = None) -> OpCost:
        pes = self.rows * self.cols
        cycles = run.cycles
        if self.mode == "scalesim":  # SCALE-Sim counts whole cycles
            run.cycles = cycles = int(round(cycles))
            run.compute_cycles = int(round(run.compute_cycles))
        t = cycles / self.clock_Hz
        t_mem = run.dram_B / self.params["dram"]["bandwidth"]
        bound = "memory" if t_mem > run.compute_cycles / self.clock_Hz else "compute"
        actions = {
            f"mac.{dtype_macs}": run.macs,
            "pe.idle.cycle": max(0.0, cycles * pes * self.cores - run.macs),
            "sram.read.byte": run.sram_read_B,
            "sram.write.byte": run.sram_write_B,
            "dram.byte": run.dram_B,
        }
        detail: dict[str, Any] = {
            "cycles": cycles,
            "compute_cycles": run.compute_cycles,
            "stall_cycles": max(0.0, cycles - run.compute_cycles),
            "utilization": run.macs / (cycles * pes * self.cores) if cycles else 0.0,
            "mapping_efficiency": run.pe_slots / (run.folds * pes) if run.folds else 0.0,
            "folds": run.folds,
            "row_folds": run.row_folds,
            "col_folds": run.col_folds,
            "macs": run.macs,
            "dataflow": self.dataflow,
            "mode": self.mode,
            "array": f"{self.rows}x{self.cols}" + (f" x{self.cores}" if self.cores > 1 else ""),
            "dram_read_bytes": dict(run.dram_read_B),
            "dram_write_bytes": run.dram_write_B,
        }
        if extra:
            detail.update(extra)
        return OpCost(t, bound, run.dram_B, actions, detail)

    # ------------------------------------------------------------------------------- op costs
    def _dtype(self) -> str:
        return self.params["dtype"]

    def _gemm_cost(self, op: Gemm) -> OpCost:
        """Shared weights fold the batch into M; per-sample B makes `batch` independent GEMMs."""
        if op.b_is_weight:
            run = self.gemm_run(op.batch * op.m, op.n, op.k)
        else:
            run = self.gemm_run(op.m, op.n, op.k, groups=op.batch)
        return self._cost_from_run(run, self._dtype())

    def _conv_cost(self, op: Any) -> OpCost:
        """scalesim: what SCALE-Sim reports for this layer written as its topology row (the padded
        input size, batch 1, one layer per image and per group as its "DP" rows): its output size is
        ceil((H + 2p - k_eff + s) / s), which counts a last partial window where frameworks floor.
        physical: the implicit GEMM of the real output size, batch folded into M."""
        kh, kw = op.kernel
        g = op.groups
        cin, cout = op.c_in // g, op.c_out // g
        if self.mode == "scalesim":
            (sh, sw), (ph, pw), (dh, dw) = op.stride, op.padding, op.dilation
            oh = ceil_div(op.h + 2 * ph - (dh * (kh - 1) + 1) + sh, sh)
            ow = ceil_div(op.w + 2 * pw - (dw * (kw - 1) + 1) + sw, sw)
            m = oh * ow
            run = self.gemm_run(m, cout, kh * kw * cin, groups=op.batch * g)
            m *= op.batch
        else:
            m, k = op.batch * op.h_out * op.w_out, kh * kw * cin
            a_scale = min(1.0, op.batch * op.h * op.w * cin / (m * k))
            run = self.gemm_run(m, cout, k, groups=g, a_scale=a_scale)
        extra = {"gemm_m": m, "gemm_n": cout, "gemm_k": kh * kw * cin, "groups": g}
        return self._cost_from_run(run, self._dtype(), extra)

    def _attention_cost(self, op: Attention) -> OpCost:
        """Q·K^T and P·V as batched GEMMs on the array, softmax on the vector unit (no causal skip:
        a systolic fold computes masked entries too)."""
        bh = op.batch * op.heads
        qk = self.gemm_run(op.q_len, op.kv_len, op.head_dim, groups=bh)
        pv = self.gemm_run(op.q_len, op.head_dim, op.kv_len, groups=bh)
        sm = self._vector_cost(Softmax(name="", dtype=op.dtype, rows=bh * op.q_len, cols=op.kv_len))
        run = GemmRun(
            qk.cycles + pv.cycles, qk.compute_cycles + pv.compute_cycles, qk.folds + pv.folds, 0, 0,
            qk.macs + pv.macs, qk.pe_slots + pv.pe_slots,
            {key: qk.dram_read_B[key] + pv.dram_read_B[key] for key in qk.dram_read_B},
            qk.dram_write_B + pv.dram_write_B, qk.sram_read_B + pv.sram_read_B, qk.sram_write_B + pv.sram_write_B,
        )  # fmt: skip
        cost = self._cost_from_run(run, self._dtype())
        actions = dict(cost.actions)
        for a, v in sm.actions.items():
            actions[a] = actions.get(a, 0.0) + v
        detail = dict(cost.detail)
        detail["softmax_s"] = sm.duration_s
        return OpCost(
            cost.duration_s + sm.duration_s, cost.bound, cost.dram_bytes + sm.dram_bytes, actions, detail
        )

    def _vector_cost(self, op: Op) -> OpCost:
        """Element-wise work on the vector lanes of every array, limited by DRAM for its tensors
        (a fused epilogue has none)."""
        vu = self.params["vector_unit"]
        rate = vu["lanes"] * vu["flops_per_lane"] * self.cores * self.clock_Hz
        ops_count = max(op.flops, 1.0)
        t_c = ops_count / rate
        t_m = op.bytes / self.params["dram"]["bandwidth"]
        dt = self._dtype()
        actions = {f"flop.{dt}": op.flops, "dram.byte": op.bytes, "sram.read.byte": op.bytes_read,
                   "sram.write.byte": op.bytes_written}  # fmt: skip
        t = max(t_c, t_m)
        detail = {"cycles": t * self.clock_Hz, "compute_cycles": t_c * self.clock_Hz, "utilization": 0.0,
                  "unit": "vector"}  # fmt: skip
        return OpCost(t, "memory" if t_m > t_c else "compute", op.bytes, actions, detail)
