"""Cost of one op on one device, as the `simcore op` commands report it."""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import yaml

from simcore.component import Component, OpCost
from simcore.config import CONFIG_ROOT
from simcore.energy import energy_breakdown
from simcore.errors import ConfigError, OutOfMemory
from simcore.ops import Op
from simcore.system import System

#: op kind -> the validation family whose residuals give its error bars (configs/validation/intervals.yaml)
INTERVAL_FAMILY = {"gemm": "gemm", "softmax": "softmax", "norm": "layernorm", "elementwise": "gelu"}


@cache
def _intervals() -> dict[str, Any]:
    path = CONFIG_ROOT / "validation" / "intervals.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def time_interval(op: Op, time_s: float) -> dict[str, Any]:
    """The op's time with its error bars: the band of predicted/measured its family kept on the
    validation rows (split conformal), turned around the prediction; {} for a family without rows."""
    table = _intervals()
    band = table.get("families", {}).get(INTERVAL_FAMILY.get(op.kind, ""))
    if band is None:
        return {}
    return {"time_low_s": time_s / math.exp(band["hi"]), "time_high_s": time_s / math.exp(band["lo"]),
            "interval_basis": f"{table['coverage']:.0%} band of {band['rows']} measured "
                              f"{INTERVAL_FAMILY[op.kind]} rows (held-out coverage {band['held_out_coverage']:.0%})"}  # fmt: skip


def device_for(system: System, op: Op) -> Component:
    for comp in system.devices.values():
        if comp.supports(op):
            return comp
    raise ConfigError(f"no device in {system.name!r} can run a {op.kind} op")


def op_energy_J(comp: Component, cost: OpCost) -> float:
    """The op's energy as it means everywhere (simcore.ledger): its actions × energy per action, the
    dynamic energy it adds to the device; static power is the device's, reported beside it."""
    return energy_breakdown(cost.actions, comp.energy_per_action_J()).total_J


def check_fits(system: System, comp: Component, op: Op) -> None:
    """The op's tensors (inputs, weights, outputs, each once) must fit in the memory its device computes
    from, else OutOfMemory naming their bytes against its capacity (a device without memory: unchecked)."""
    device = next((n for n, c in system.devices.items() if c is comp), comp.name)
    port = system.memory_of(device)
    if port is None:
        return
    tensors = op.tensors()
    needed = sum(t.bytes for t in tensors)
    if needed > port.capacity_B:
        names = "+".join(t.name for t in tensors)
        raise OutOfMemory(f"{op.kind} operands {names}", device, needed, port.capacity_B, port.capacity_B)


def op_report(system: System, op: Op) -> dict[str, Any]:
    comp = device_for(system, op)
    check_fits(system, comp, op)
    cost = comp.op_cost(op)
    out: dict[str, Any] = {
        "device": comp.name,
        "time_s": cost.duration_s,
        "energy_j": op_energy_J(comp, cost),
        "static_energy_j": (comp.static_power_W + comp.active_power_W) * cost.duration_s,
        "power_w": op_energy_J(comp, cost) / cost.duration_s + comp.static_power_W + comp.active_power_W,
        "flops": op.flops,
        "bytes": cost.dram_bytes,
        "bound": cost.bound,
        "achieved_flops": op.flops / cost.duration_s if cost.duration_s else 0.0,
    }
    out.update(time_interval(op, cost.duration_s))
    out.update({k: v for k, v in cost.detail.items() if k not in out})
    return out
