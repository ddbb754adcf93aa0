"""Processing in memory: MAC units beside the DRAM banks (Samsung HBM-PIM, SK hynix AiM, AttAcc's HBM3-PIM),
costed on the DRAM model of the part they sit in.

All banks with a unit are activated together; then every MAC step (one all-bank column command, tCCD_L
apart unless the part states otherwise) each unit reads one column access from its bank and multiplies
`lanes` elements of it with the input vector held in its registers. A GEMV y = W x (W: n x k, in the
banks) over P units of L lanes, with k split s ways when n < P L (s = min(k, floor(P L / n))):

    lane_rows = ceil(n s / (P L)),  steps = lane_rows x ceil(k / s)
    rows      = ceil(steps x L x e / row_size)                       rows each unit's bank opens
    t         = t_in + steps x t_step + rows x (tRP + tRCD) + t_out  per input vector (m of them)
    t_in      = input bytes per pseudo-channel / pin rate x width     (all-bank broadcast write)
    t_out     = n s e / external bandwidth                           (partial sums read by the host)

A batch of m vectors is m GEMVs: a bank-level unit has no room to reuse weights; the op adds one
`mode_switch` (below) to the m passes. Decode attention (q_len 1)
is two such GEMVs per KV head group (scores over K, outputs over V) with the softmax in between on the
unit beside the stack (AttAcc: the buffer die), streaming the scores at `softmax.bandwidth`.

Mode switching: every op enters all-bank PIM mode and leaves it again, a fixed `mode_switch` added to its
duration. HBM-PIM (Lee et al., ISCA 2021, its SB / AB / AB-PIM modes) switches with ordinary DRAM commands
to reserved addresses, so an unmodified memory controller can issue them; Samsung's PIMSimulator
(PIMKernel::changePIMMode) writes the ABMR row (SB -> AB), the PIM_OP_MODE register (AB -> AB-PIM), that
register again (AB-PIM -> AB) and the SBMR row (AB -> SB): four transitions, each an ACT, a write and a
PRE, so at least a row cycle tRAS + tRP. The default is that lower bound, 4 (tRAS + tRP) of the part; the
same protocol is assumed for AiM and AttAcc, which publish none.

Sharing with a host: while the banks compute, the host can use none of the memory's bandwidth (mode
switching, as HBM-PIM's SB / AB / AB-PIM modes): an op's `dram_bytes` is its duration x the memory's
sustained bandwidth (`memory.bandwidth`: the host's port when the units sit in a host's memory via
`memory_of:`), so a host kernel flowing over the same memory port at once slows it and is slowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hardware.dram import DRAM
from hardware.memory import load_dram, parts_count
from simcore.component import Component, OpCost, register
from simcore.config import Doc, Param, count, fraction, nonneg, positive
from simcore.energy import energy_table
from simcore.errors import ConfigError
from simcore.ops import Attention, Gemm, ceil_div, dtype_bytes

PIM_DTYPES = ("fp16", "bf16", "int8")

#: mode transitions per op, each a row cycle of a reserved row: SB -> AB (ABMR), AB -> AB-PIM and back
#: (PIM_OP_MODE), AB -> SB (SBMR) -- Lee et al. ISCA 2021; Samsung PIMSimulator PIMKernel::changePIMMode
MODE_TRANSITIONS = 4

PIM_SCHEMA: dict[str, Any] = {
    "abstract": Param("an architecture base, not a usable part", default=False, type=bool),
    "memory": {
        "dram": Param("DRAM preset (or YAML path) the units sit in", type=str),
        "count": count("parts of that DRAM preset: HBM stacks or GDDR chips", 1),
        "capacity": positive(
            "capacity if not the DRAM part's x count (PIM dies hold less)", "bytes", default=None
        ),  # fmt: skip
        "bandwidth": positive(
            "sustained bandwidth of the memory as its host sees it, which a PIM op holds while it runs; "
            "default the DRAM part's x count (set it to the host's when the units sit in its memory)",
            "bandwidth",
            default=None,
        ),  # fmt: skip
    },
    "banks_per_unit": count("banks one processing unit serves (HBM-PIM: 2; AiM, AttAcc: 1)", maximum=64),
    "bank_fraction": fraction(
        "share of the part's banks that have a unit (HBM-PIM: its 4 PIM dies of 8)", 1.0
    ),
    "lanes": count(
        "multiply-accumulate lanes per unit: elements of one column access used per step", maximum=1024
    ),  # fmt: skip
    "dtype": Param("number format the lanes multiply", type=str, choices=PIM_DTYPES),
    "step": positive(
        "time of one MAC step, the all-bank column command interval; default the DRAM's tCCD_L",
        "time",
        default=None,
    ),  # fmt: skip
    "row_switch": positive(
        "time to move every bank to its next row; default the DRAM's tRP + tRCD", "time", default=None
    ),  # fmt: skip
    "mode_switch": nonneg(
        "time to enter all-bank PIM mode and leave it again, charged once per op; default "
        "4 x (the DRAM's tRAS + tRP): HBM-PIM's SB -> AB -> AB-PIM -> AB -> SB, a row cycle each",
        "time",
        default=None,
    ),  # fmt: skip
    "softmax": {
        "bandwidth": positive(
            "bytes/s the softmax unit beside the stack streams (none: attention runs "
            "its softmax on the host, so this device takes GEMVs only)",
            "bandwidth",
            default=None,
        ),  # fmt: skip
    },
    "energy": {
        "tech_node": positive("process node of the unit's logic in nm (MAC energy scaling)", default=20.0),
        "mac": nonneg(
            "energy of one MAC; default the energy table's at tech_node", "energy_per_op", default=None
        ),  # fmt: skip
        "bank_read": nonneg(
            "energy per bit a unit reads from its bank (no global I/O); default the DRAM's read energy",
            "energy_per_bit",
            default=None,
        ),  # fmt: skip
    },
    "power": {"idle": nonneg("idle power of the units", "power", default=0.0)},
}


@dataclass(frozen=True)
class GemvPlan:
    """One GEMV pass laid over the units, with the time of each phase (seconds, per input vector)."""

    splits: int
    lane_rows: int
    steps: int
    rows: int
    t_in_s: float
    t_mac_s: float
    t_row_s: float
    t_out_s: float
    in_B: float
    out_B: float

    @property
    def time_s(self) -> float:
        return self.t_in_s + self.t_mac_s + self.t_row_s + self.t_out_s


@register("pim")
class PIM(Component):
    """Bank-level MAC units in a DRAM part: GEMV and decode attention at the bank-parallel closed form."""

    SCHEMA = PIM_SCHEMA
    COSTS = {"gemm": "gemv_cost", "attention": "attention_cost"}
    ACTIONS = ("mac.{dtype}", "pim.bank.byte", "pim.act", "dram.byte")
    ACTION_DTYPES = ("dtype",)

    def __init__(self, name: str, params: dict[str, Any], doc: Doc | None = None) -> None:
        super().__init__(name, params, doc)
        mem = params["memory"]
        at = doc if doc is not None else Doc({"memory": dict(mem)}, {}, "<params>")
        self.dram: DRAM = load_dram(mem["dram"], at, ("memory", "dram"))
        self.parts: int = parts_count(mem, at, ("memory", "count"))
        d = self.dram
        banks = d.pseudo_channels * d.banks * params["bank_fraction"] / params["banks_per_unit"]
        self.units_per_part: int = int(banks)
        if self.units_per_part < 1:
            raise at.error(("banks_per_unit",), f"{banks:g} units per part: fewer banks than banks_per_unit")
        if params["lanes"] * dtype_bytes(params["dtype"]) > d.access_B:
            raise at.error(("lanes",), f"{params['lanes']} {params['dtype']} lanes need more than one column "
                           f"access ({d.access_B:g} B) per step")  # fmt: skip
        t = d.params["timing"]
        self.step_s: float = params["step"] or t["tCCD_L"]
        self.row_switch_s: float = params["row_switch"] or t["tRP"] + t["tRCD"]
        switch = params["mode_switch"]
        self.mode_switch_s: float = MODE_TRANSITIONS * (t["tRAS"] + t["tRP"]) if switch is None else switch

    # ---------------------------------------------------------------------------------- figures
    @property
    def units(self) -> int:
        return self.units_per_part * self.parts

    @property
    def pseudo_channels(self) -> int:
        return self.dram.pseudo_channels * self.parts

    @property
    def peak_flops(self) -> float:
        """Every lane of every unit does one MAC (2 FLOPs) per step."""
        return 2.0 * self.units * self.params["lanes"] / self.step_s

    @property
    def internal_Bps(self) -> float:
        """Bytes the units read from their banks per second, row switches included (streaming rows)."""
        d, lanes = self.dram, self.params["lanes"]
        step_B = lanes * dtype_bytes(self.params["dtype"])
        steps_per_row = d.params["organization"]["row_size"] / step_B
        per_row = steps_per_row * self.step_s + self.row_switch_s
        return self.units * step_B * steps_per_row / per_row

    @property
    def external_Bps(self) -> float:
        """Pin bandwidth to the host: every part's pseudo-channels at their data rate."""
        return self.dram.peak_Bps * self.parts

    # ---------------------------------------------------------------------------------- GEMV
    def _check_dtype(self, dtype: str, what: str) -> None:
        if dtype != self.params["dtype"]:
            raise ConfigError(f"pim {self.name!r} multiplies {self.params['dtype']} only; the {what} is {dtype} "
                              f"(use --dtype {self.params['dtype']})")  # fmt: skip

    def gemv_plan(self, n: int, k: int, elem_B: float, in_per_pc_B: float | None = None) -> GemvPlan:
        """The bank-parallel closed form of one n x k GEMV pass (see the module doc); `in_per_pc_B` is the
        input each pseudo-channel receives (default: the whole vector, broadcast)."""
        P, L = self.units, self.params["lanes"]
        d = self.dram
        splits = max(1, min(k, (P * L) // n)) if n < P * L else 1
        lane_rows = ceil_div(n * splits, P * L)
        steps = lane_rows * ceil_div(k, splits)
        rows = math.ceil(steps * L * elem_B / d.params["organization"]["row_size"])
        in_B = k * elem_B if in_per_pc_B is None else in_per_pc_B
        pc_Bps = d.params["organization"]["channel_width"] * d.params["data_rate"]
        out_B = n * splits * elem_B
        return GemvPlan(splits, lane_rows, steps, rows, in_B / pc_Bps, steps * self.step_s,
                        rows * self.row_switch_s, out_B / self.external_Bps, in_B * self.pseudo_channels,
                        out_B)  # fmt: skip

    def _actions(self, plans: list[tuple[GemvPlan, float]], macs: float, elem_B: float) -> dict[str, float]:
        """Energy actions of GEMV passes (plan, passes): MACs, bank bytes, row activations, pin bytes."""
        L = self.params["lanes"]
        bank_B = sum(p.steps * L * elem_B * self.units * n for p, n in plans)
        acts = sum(p.rows * self.units * n for p, n in plans)
        io = sum((p.in_B + p.out_B) * n for p, n in plans)
        return {
            f"mac.{self.params['dtype']}": macs,
            "pim.bank.byte": bank_B,
            "pim.act": acts,
            "dram.byte": io,
        }

    def _cost(self, compute_s: float, actions: dict[str, float], detail: dict[str, Any]) -> OpCost:
        """The op enters PIM mode, computes for `compute_s` and leaves it; it holds the banks throughout,
        so the memory carries no host traffic meanwhile."""
        time_s = compute_s + self.mode_switch_s
        detail = {**detail, "t_mode_s": self.mode_switch_s}
        return OpCost(time_s, "memory", time_s * self.memory_bandwidth_Bps, actions, detail)

    def gemv_cost(self, op: Gemm) -> OpCost:
        """A GEMM as batch x m GEMVs over its weight B (n x k) held in the banks."""
        self._check_dtype(op.dtype, "gemm")
        if op.weight_dtype is not None:
            raise ConfigError(f"pim {self.name!r} reads weights in {self.params['dtype']}, not "
                              f"{op.weight_dtype}")  # fmt: skip
        e = op.elem_bytes
        plan = self.gemv_plan(op.n, op.k, e)
        passes = op.m * op.batch
        actions = self._actions([(plan, passes)], float(op.m * op.n * op.k * op.batch), e)
        detail = {"units": self.units, "splits": plan.splits, "steps": plan.steps, "row_switches": plan.rows,
                  "t_mac_s": plan.t_mac_s * passes, "t_row_s": plan.t_row_s * passes,
                  "t_io_s": (plan.t_in_s + plan.t_out_s) * passes, "host_adds": op.m * op.n * (plan.splits - 1)}  # fmt: skip
        return self._cost(plan.time_s * passes, actions, detail)

    # ----------------------------------------------------------------------------- attention
    def attention_cost(self, op: Attention) -> OpCost:
        """Decode attention: scores q K^T (n = instances x keys, k = head_dim), softmax on the unit beside
        the stack, outputs p V (n = instances x head_dim, k = keys); each of the heads / kv_heads queries
        sharing a KV head is one pass. Instances are (sequence, KV head) pairs; each one's input goes only to
        the pseudo-channels that hold its K or V."""
        if op.q_len != 1:
            raise ConfigError(f"pim {self.name!r} runs decode attention (q_len 1) only, got q_len {op.q_len}")
        if op.kv_dtype is not None:
            raise ConfigError(
                f"pim {self.name!r} reads its KV cache in {self.params['dtype']}, not {op.kv_dtype}"
            )
        self._check_dtype(op.dtype, "attention")
        sm_Bps = self.params["softmax"]["bandwidth"]
        if sm_Bps is None:
            raise ConfigError(f"pim {self.name!r} has no softmax unit (softmax.bandwidth): run the score and value "
                              "GEMVs as gemm ops and the softmax on the host")  # fmt: skip
        e, d, keys = op.elem_bytes, op.head_dim, op.keys_read
        inst = op.batch * op.kv_heads
        group = op.heads // op.kv_heads
        pcs = self.pseudo_channels
        score = self.gemv_plan(inst * keys, d, e, max(d * e, inst * d * e / pcs))
        value = self.gemv_plan(inst * d, keys, e, max(keys * e, inst * keys * e / pcs))
        scores = op.batch * op.heads * keys
        t_softmax = 2.0 * scores * e / sm_Bps  # read the scores, write the probabilities
        time_s = group * (score.time_s + value.time_s) + t_softmax
        macs = 2.0 * op.batch * op.heads * keys * d
        actions = self._actions([(score, group), (value, group)], macs, e)
        detail = {"units": self.units, "t_score_s": group * score.time_s, "t_value_s": group * value.time_s,
                  "t_softmax_s": t_softmax, "row_switches": group * (score.rows + value.rows)}  # fmt: skip
        return self._cost(time_s, actions, detail)

    # ------------------------------------------------------------------------ component protocol
    @property
    def memory_capacity_B(self) -> float:
        return self.params["memory"]["capacity"] or self.dram.memory_capacity_B * self.parts

    @property
    def memory_bandwidth_Bps(self) -> float:
        return self.params["memory"]["bandwidth"] or self.dram.memory_bandwidth_Bps * self.parts

    @property
    def peak_memory_bandwidth_Bps(self) -> float:
        return self.external_Bps

    @property
    def static_power_W(self) -> float:
        return self.params["power"]["idle"] + self.dram.static_power_W * self.parts

    def dense_peak_flops(self, dtype: str) -> float:
        return self.peak_flops if dtype == self.params["dtype"] else 0.0

    def energy_per_action_J(self) -> dict[str, float]:
        """MACs from the energy table at the unit's node (or stated); bank reads without the global I/O;
        an all-bank activation is one ACT per bank; pin bytes at the DRAM's energy per byte."""
        en, de = self.params["energy"], self.dram.params["energy"]
        dt = self.params["dtype"]
        mac = en["mac"] if en["mac"] is not None else energy_table(en["tech_node"]).mac_J(dt)
        bank = en["bank_read"] if en["bank_read"] is not None else de["read"]
        return {f"mac.{dt}": mac, "pim.bank.byte": 8.0 * bank, "pim.act": de["activate"],
                "dram.byte": self.dram.energy_per_byte_J()}  # fmt: skip

    def derived(self) -> dict[str, tuple[float, str, str]]:
        return {
            "units": (float(self.units), "", "pseudo-channels x banks x bank_fraction / banks_per_unit x count"),
            "peak_flops": (self.peak_flops, "flops", "2 x units x lanes / step"),
            "internal_bandwidth": (self.internal_Bps, "bandwidth", "bank reads per second, row switches included"),
            "external_bandwidth": (self.external_Bps, "bandwidth", "pins x data rate x count"),
            "step": (self.step_s, "time", "step, or the DRAM's tCCD_L"),
            "row_switch": (self.row_switch_s, "time", "row_switch, or the DRAM's tRP + tRCD"),
            "mode_switch": (self.mode_switch_s, "time", "mode_switch, or 4 x the DRAM's (tRAS + tRP)"),
        }  # fmt: skip
