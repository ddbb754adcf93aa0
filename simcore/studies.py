"""Systolic-array case studies as plain functions (used by notebooks and benchmarks).

* `mobilenet_dataflow_study`: per-layer PE utilisation and latency of MobileNetV1 on a 64x64
  array under output-, weight- and input-stationary dataflows (the SCALE-Sim papers' question of
  which dataflow suits depthwise-separable layers).
* `array_size_study`: latency and energy of a network (ViT-Base, ResNet-50...) on a small and a
  large array, as in the SCALE-Sim v3 paper's 32x32 vs 128x128 comparison.

Layers run one after another on the array (no overlap between layers), which is how SCALE-Sim
reports a network: the sum of its layers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hardware.systolic import SystolicArray
from models.cnn import Conv2d, build
from simcore.energy import energy_breakdown
from simcore.ops import Attention, Gemm, Op, OpGraph
from simcore.system import load_system


@dataclass(frozen=True)
class LayerCost:
    """One op of a network on one array."""

    name: str
    kind: str
    macs: float
    cycles: float
    latency_s: float
    utilization: float
    mapping_efficiency: float
    energy_J: float
    bound: str


@dataclass
class NetworkCost:
    """A network run layer after layer on one array."""

    network: str
    array: str
    dataflow: str
    mode: str
    layers: list[LayerCost] = field(default_factory=list)
    energy_by_action_J: dict[str, float] = field(default_factory=dict)

    @property
    def latency_s(self) -> float:
        return sum(x.latency_s for x in self.layers)

    @property
    def cycles(self) -> float:
        return sum(x.cycles for x in self.layers)

    @property
    def energy_J(self) -> float:
        return sum(x.energy_J for x in self.layers)

    @property
    def macs(self) -> float:
        return sum(x.macs for x in self.layers)

    def utilization(self, pes: int) -> float:
        """MACs over (PEs x cycles) for the whole network."""
        return self.macs / (pes * self.cycles) if self.cycles else 0.0

    def rows(self) -> list[dict[str, Any]]:
        """One dict per layer (for a DataFrame or a CSV)."""
        return [x.__dict__.copy() for x in self.layers]


def _layer_kind(op: Op) -> str:
    if isinstance(op, Conv2d):
        if op.depthwise:
            return "depthwise"
        return "pointwise" if op.kernel == (1, 1) else "conv"
    if isinstance(op, Gemm):
        return "fc" if op.b_is_weight else "matmul"
    if isinstance(op, Attention):
        return "attention"
    return op.kind


def array(preset: str = "systolic-array", overrides: Iterable[str] = ()) -> SystolicArray:
    """The systolic array of a hardware preset, with `--set`-style overrides ("rows=128")."""
    system = load_system(preset, list(overrides))
    comp = next((c for c in system.devices.values() if isinstance(c, SystolicArray)), None)
    if comp is None:
        raise ValueError(f"preset {preset!r} has no systolic array")
    return comp


def network_cost(graph: OpGraph, hw: SystolicArray, gemm_only: bool = False) -> NetworkCost:
    """Cost every op of `graph` on `hw` (ops it cannot run are skipped; `gemm_only` also skips the
    vector-unit ops, as SCALE-Sim does)."""
    prices = hw.energy_per_action_J()
    out = NetworkCost(graph.name, f"{hw.rows}x{hw.cols}", hw.dataflow, hw.mode)
    for op in graph.ops():
        if not hw.supports(op):
            continue
        cost = hw.op_cost(op)
        if gemm_only and cost.detail.get("unit") == "vector":
            continue
        e = energy_breakdown(cost.actions, prices, hw.static_power_W, cost.duration_s)
        for a, j in e.by_action_J.items():
            out.energy_by_action_J[a] = out.energy_by_action_J.get(a, 0.0) + j
        out.energy_by_action_J["static"] = out.energy_by_action_J.get("static", 0.0) + e.static_J
        macs = cost.detail.get("macs", 0.0)
        out.layers.append(LayerCost(op.name, _layer_kind(op), macs, cost.detail["cycles"], cost.duration_s,
                                    cost.detail.get("utilization", 0.0), cost.detail.get("mapping_efficiency", 0.0),
                                    e.total_J, cost.bound))  # fmt: skip
    return out


def mobilenet_dataflow_study(rows: int = 64, cols: int = 64, mode: str = "scalesim", batch: int = 1,
                             preset: str = "array-64x64", dataflows: Sequence[str] = ("os", "ws", "is"),
                             overrides: Iterable[str] = ()) -> dict[str, NetworkCost]:  # fmt: skip
    """MobileNetV1 (224x224) on a rows x cols array under each dataflow; GEMM layers only (conv,
    depthwise, pointwise, FC), since the dataflow does not change the vector-unit ops."""
    graph = build("mobilenet_v1", batch=batch, dtype="int8")
    out = {}
    for df in dataflows:
        hw = array(preset, [f"rows={rows}", f"cols={cols}", f"dataflow={df}", f"mode={mode}", *overrides])
        out[df] = network_cost(graph, hw, gemm_only=True)
    return out


def utilization_by_kind(cost: NetworkCost) -> dict[str, float]:
    """MAC-weighted PE utilisation per layer kind (conv, depthwise, pointwise, fc)."""
    macs: dict[str, float] = {}
    slots: dict[str, float] = {}
    for x in cost.layers:
        if x.utilization <= 0:
            continue
        macs[x.kind] = macs.get(x.kind, 0.0) + x.macs
        slots[x.kind] = slots.get(x.kind, 0.0) + x.macs / x.utilization
    return {k: macs[k] / slots[k] for k in macs}


@dataclass(frozen=True)
class SizeComparison:
    """A network on a small and a large array: `speedup` = small latency / large latency,
    `energy_ratio` = large energy / small energy (> 1: the small array is more energy-efficient)."""

    small: NetworkCost
    large: NetworkCost

    @property
    def speedup(self) -> float:
        return self.small.latency_s / self.large.latency_s

    @property
    def energy_ratio(self) -> float:
        return self.large.energy_J / self.small.energy_J


def array_size_study(network: str = "vit_base", sizes: tuple[int, int] = (32, 128), dataflow: str = "ws",
                     mode: str = "scalesim", batch: int = 1, preset: str = "systolic-array",
                     overrides: Iterable[str] = (), gemm_only: bool = True,
                     pe_idle_fraction: float | None = None) -> SizeComparison:  # fmt: skip
    """`network` on square arrays of sizes[0] and sizes[1] PEs per side, everything else equal
    (SRAMs, DRAM, node, dtype of the preset). `pe_idle_fraction` re-prices an idle PE-cycle as
    that fraction of a MAC (1.0: PEs are never clock-gated, every PE-cycle costs a MAC)."""
    graph = build(network, batch=batch, dtype="int8")
    costs = []
    for s in sizes:
        hw = array(preset, [f"rows={s}", f"cols={s}", f"dataflow={dataflow}", f"mode={mode}", *overrides])
        if pe_idle_fraction is not None:
            mac = hw.energy_per_action_J()[f"mac.{hw.params['dtype']}"]
            hw.params["energy"] = {**hw.params["energy"], "pe.idle.cycle": pe_idle_fraction * mac}
        costs.append(network_cost(graph, hw, gemm_only=gemm_only))
    return SizeComparison(costs[0], costs[1])
