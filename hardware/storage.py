"""NVMe SSD (basic model): a memory-like endpoint whose reads and writes are flows at its rated
bandwidth after an access latency, limited by queue depth for small requests."""

from __future__ import annotations

from typing import Any

from hardware.base import Component, register
from hardware.memory import PCIE_SCHEMA
from simcore.config import Param, nonneg, positive

NVME_SCHEMA: dict[str, Any] = {
    "capacity": positive("user capacity", "bytes"),
    "read_bandwidth": positive("sequential read bandwidth", "bandwidth"),
    "write_bandwidth": positive("sequential write bandwidth", "bandwidth"),
    "read_latency": nonneg("4 KiB random-read latency at queue depth 1", "time", default=80e-6),
    "write_latency": nonneg("4 KiB random-write latency at queue depth 1", "time", default=20e-6),
    "read_iops": positive("4 KiB random-read IOPS at high queue depth", default=None),
    "write_iops": positive("4 KiB random-write IOPS at high queue depth", default=None),
    "queue_depth": positive("outstanding commands the host keeps in flight", type=int, default=64),
    "pcie": PCIE_SCHEMA,
    "power": {
        "active": nonneg("power while transferring", "power", default=None),
        "idle": nonneg("idle power", "power", default=0.0),
    },
    "abstract": Param("an architecture base, not a usable part", default=False, type=bool),
}


@register("nvme")
class NVMe(Component):
    SCHEMA = NVME_SCHEMA

    @property
    def memory_capacity_B(self) -> float:
        return self.params["capacity"]

    @property
    def memory_bandwidth_Bps(self) -> float:
        return self.params["read_bandwidth"]

    @property
    def static_power_W(self) -> float:
        return self.params["power"]["idle"]

    def read_time_s(self, nbytes: float, request_B: float = 128 * 1024) -> float:
        """Time to read `nbytes` in `request_B` requests: latency, then the slower of bandwidth and
        queue-depth-limited IOPS (Little's law: QD requests per latency)."""
        p = self.params
        requests = max(1.0, nbytes / request_B)
        iops = p["queue_depth"] / p["read_latency"] if p["read_latency"] > 0 else float("inf")
        if p["read_iops"]:
            iops = min(iops, p["read_iops"])
        return p["read_latency"] + max(nbytes / p["read_bandwidth"], requests / iops)
