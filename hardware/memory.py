"""Memory descriptions shared by every device that owns DRAM (HBM, GDDR, DDR, LPDDR)."""

from __future__ import annotations

from simcore.config import Param, nonneg, positive

MEMORY_TYPES = ("hbm2", "hbm2e", "hbm3", "hbm3e", "gddr6", "gddr6x", "lpddr4", "lpddr5", "ddr4", "ddr5")

MEMORY_SCHEMA = {
    "type": Param("DRAM technology (selects energy per bit)", type=str, choices=MEMORY_TYPES),
    "capacity": positive("capacity usable for tensors", "bytes"),
    "bandwidth": positive("peak bandwidth (spec sheet)", "bandwidth"),
    "latency": nonneg("load-to-use latency of a DRAM access", "time", default=500e-9),
}

PCIE_SCHEMA = {
    "generation": Param("PCIe generation", type=int, choices=(3, 4, 5, 6)),
    "lanes": positive("lane count", type=int),
}

POWER_SCHEMA = {
    "tdp": positive("thermal design power", "power", default=None),
    "idle": nonneg("idle (static) power drawn whenever the device is on", "power", default=0.0),
}
