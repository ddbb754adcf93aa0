"""Energy rules shared by the hardware models: action prices from the energy tables, FLOP energy from TDP."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from simcore.energy import energy_table


def default_action_energy(energy: Mapping[str, Any], mem_type: str,
                          sram_B: Mapping[str, float] | None = None) -> dict[str, float]:  # fmt: skip
    """Joules per action for a device: explicit values from its `energy:` block win; the rest come from
    the default energy table scaled to the device's technology node.

    `sram_B` maps on-chip memory actions (e.g. "l2.byte") to the array size that serves them.
    """
    table = energy_table(energy.get("tech_node"))
    out = table.compute_actions()
    out.update({f"flop.{k}": v for k, v in (energy.get("flop") or {}).items()})
    out["dram.byte"] = energy.get("dram_per_byte") or table.dram_J_per_byte(mem_type)
    for action, size in (sram_B or {}).items():
        own = energy.get(action.replace(".byte", "_per_byte"))
        out[action] = own if own is not None else table.sram_J_per_byte(size)
    return out


def tdp_flop_energy(tdp_W: float | None, idle_W: float, compute_share: float,
                    peaks: Mapping[str, float], stated: Mapping[str, float]) -> dict[str, float]:  # fmt: skip
    """Joules per FLOP (and MAC) from the spec sheet: a chip running its peak in a dtype draws its TDP, of
    which `compute_share` of the dynamic part goes to the compute units. That energy includes operand
    delivery, register files and instruction issue, which dwarf the bare multiply-add of the energy tables.
    Dtypes with a `stated` energy keep it."""
    out: dict[str, float] = {}
    if not tdp_W:
        return out
    for dtype, peak in peaks.items():
        if peak and dtype not in stated:
            j = compute_share * (tdp_W - idle_W) / peak
            out[f"flop.{dtype}"], out[f"mac.{dtype}"] = j, 2 * j
    return out
