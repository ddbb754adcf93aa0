"""Computational storage drive: an NVMe drive with a compute engine beside its flash (an FPGA or ARM cores with
their own DRAM) that runs decode attention over a KV cache kept in flash, InstInfer-style.

The engine reads the flash at its internal rate -- the flash array and channels, and the drive's internal
link where the engine reaches the flash through one (SmartSSD: a PCIe Gen3 x4 switch port in the FPGA) --
which can exceed the host link. KV pages stream through the engine's DRAM (written, then read by the
kernel) while it computes; the three overlap, so a decode attention takes

    tR + max(KV / flash_to_engine, 2 KV / engine DRAM bandwidth, FLOPs / (peak x efficiency))
       + (q + output) / host link

with FLOPs the two matmuls (4 d per score) and the softmax (`softmax_flops` per score). Only q, the new
K/V row and the output cross the host link; the KV cache never does.
"""

from __future__ import annotations

from typing import Any

from hardware.links import pcie_raw_Bps
from hardware.memory import MEMORY_TYPES
from hardware.power import default_action_energy
from hardware.storage import NVME_SCHEMA, NVMe
from simcore.component import OpCost, register
from simcore.config import MapOf, Param, fraction, positive
from simcore.energy import energy_table
from simcore.errors import ConfigError
from simcore.ops import Attention

ENGINE_DTYPES = ("fp32", "fp16", "bf16", "int8")

CSD_SCHEMA: dict[str, Any] = {
    **NVME_SCHEMA,
    "engine": {
        "peak": MapOf(positive("", "flops"), "the engine's peak FLOP/s by dtype", ENGINE_DTYPES),
        "efficiency": fraction("achievable fraction of the peak in the attention kernel", 1.0),
        "softmax_flops": positive(
            "FLOPs per score for the softmax: exp, max, subtract, sum, scale", default=5.0
        ),
        "memory": {
            "capacity": positive("engine DRAM capacity", "bytes", default=None),
            "bandwidth": positive("engine DRAM bandwidth", "bandwidth", default=None),
            "type": Param(
                "engine DRAM technology (its energy per bit)", type=str, choices=MEMORY_TYPES, default="ddr4"
            ),
        },
        "link": {
            "generation": Param(
                "PCIe generation of the engine's internal path to the flash (none: the "
                "engine sits on the flash channels)",
                type=int,
                choices=(3, 4, 5, 6),
                default=None,
            ),  # fmt: skip
            "lanes": positive("lanes of that path", type=int, default=None),
        },
        "tech_node": positive("process node of the engine in nm (FLOP energy)", default=16.0),
        "energy_overhead": positive(
            "energy of an engine FLOP over the energy table's ASIC FLOP at its node: "
            "12 for an FPGA (Kuon and Rose, IEEE TCAD 2007: dynamic power gap)",
            default=1.0,
        ),  # fmt: skip
    },
}


@register("csd")
class CSD(NVMe):
    """An NVMe drive (rated or flash internals) plus a compute engine next to the flash."""

    SCHEMA = CSD_SCHEMA
    COSTS = {"attention": "attention_cost"}
    ACTIONS = ("flop.{dtype}", "dram.byte")
    ACTION_DTYPES = ("engine_dtypes",)

    def __init__(self, name: str, params: dict[str, Any], doc: Any = None) -> None:
        super().__init__(name, params, doc)
        eng = params["engine"]
        missing = [k for k in ("capacity", "bandwidth") if eng["memory"][k] is None]
        if not eng["peak"] or missing:
            what = "engine.peak" if not eng["peak"] else f"engine.memory.{missing[0]}"
            raise (
                doc.error(("engine",), f"missing {what}")
                if doc is not None
                else ConfigError(f"missing {what}")
            )
        link = eng["link"]
        if (link["generation"] is None) != (link["lanes"] is None):
            msg = "engine.link needs both generation and lanes (or neither)"
            raise doc.error(("engine", "link"), msg) if doc is not None else ConfigError(msg)
        params.setdefault("engine_dtypes", dict(eng["peak"]))  # the dtypes its FLOP actions come in

    # ------------------------------------------------------------------------------------- figures
    @property
    def flash_to_engine_Bps(self) -> float:
        """What the engine reads from flash per second: the array and channels (flash internals) or the
        rated sequential read, and the internal link if the engine reaches the flash through one."""
        fm = self.flash
        rate = min(fm.read_array_Bps, fm.channel_Bps) if fm is not None else self.params["read_bandwidth"]
        link = self.params["engine"]["link"]
        if link["generation"] is not None:
            rate = min(rate, pcie_raw_Bps(link["generation"], link["lanes"]) * self.params["host_efficiency"])
        return rate

    @property
    def host_Bps(self) -> float:
        p = self.params
        if self.flash is not None:
            return self.flash.host_Bps
        return pcie_raw_Bps(p["pcie"]["generation"], p["pcie"]["lanes"]) * p["host_efficiency"]

    def first_page_s(self) -> float:
        return self.flash.flash["tR"] if self.flash is not None else self.params["read_latency"]

    # ----------------------------------------------------------------------------------- attention
    def attention_cost(self, op: Attention) -> OpCost:
        """Decode attention (q_len 1) over K and V in flash: the module doc's closed form."""
        if op.q_len != 1:
            raise ConfigError(f"csd {self.name!r} runs decode attention (q_len 1) only, got q_len {op.q_len}")
        eng = self.params["engine"]
        peak = eng["peak"].get(op.dtype)
        if not peak:
            raise ConfigError(f"csd {self.name!r} has no {op.dtype} compute (engine.peak: "
                              f"{', '.join(eng['peak'])})")  # fmt: skip
        q_out = sum(t.bytes for t in op.tensors() if t.name in ("Q", "O"))
        kv = op.bytes - q_out
        scores = op.batch * op.heads * op.score_pairs
        flops = op.flops + eng["softmax_flops"] * scores
        t_flash = kv / self.flash_to_engine_Bps
        t_dram = 2.0 * kv / eng["memory"]["bandwidth"]
        t_compute = flops / (peak * eng["efficiency"])
        t_host = q_out / self.host_Bps
        parts = {"flash": t_flash, "engine-memory": t_dram, "compute": t_compute}
        bound = max(parts, key=parts.__getitem__)
        duration = self.first_page_s() + parts[bound] + t_host
        actions = {f"flop.{op.dtype}": flops, "dram.byte": 2.0 * kv}
        detail = {"kv_bytes": kv, "t_flash_s": t_flash, "t_engine_memory_s": t_dram, "t_compute_s": t_compute,
                  "t_host_s": t_host, "flash_to_engine_Bps": self.flash_to_engine_Bps}  # fmt: skip
        return OpCost(duration, bound, kv, actions, detail)

    # --------------------------------------------------------------------------- component protocol
    @property
    def memory_bandwidth_Bps(self) -> float:
        """The flash as the engine sees it; the host sees it through its PCIe link, a separate resource."""
        return self.flash_to_engine_Bps

    def dense_peak_flops(self, dtype: str) -> float:
        return self.params["engine"]["peak"].get(dtype, 0.0)

    def energy_per_action_J(self) -> dict[str, float]:
        """Engine FLOPs: the energy table's at the engine's node x energy_overhead; staging bytes at the
        engine DRAM's energy per byte."""
        eng = self.params["engine"]
        table = energy_table(eng["tech_node"])
        out = {f"flop.{d}": table.flop_J(d) * eng["energy_overhead"] for d in eng["peak"]
               if f"mac.{d}" in table.compute_actions()}  # fmt: skip
        out["dram.byte"] = default_action_energy({"tech_node": eng["tech_node"]}, eng["memory"]["type"])[
            "dram.byte"
        ]
        return out

    def derived(self) -> dict[str, tuple[float, str, str]]:
        out = super().derived()
        out["engine.flash_to_engine"] = (self.flash_to_engine_Bps, "bandwidth",
                                         "min(array, channels, engine link)")  # fmt: skip
        out["engine.host_link"] = (self.host_Bps, "bandwidth", "PCIe raw rate x host_efficiency")
        return out
