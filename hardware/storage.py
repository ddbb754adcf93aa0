"""NVMe SSD (basic model): an endpoint whose reads and writes are flows at its rated sequential bandwidth
after one access latency, capped by what its queue depth and IOPS sustain for the request size."""

from __future__ import annotations

from typing import Any

from hardware.memory import PCIE_SCHEMA
from simcore.component import Component, register
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
    "power": {"idle": nonneg("idle power", "power", default=0.0)},
    "abstract": Param("an architecture base, not a usable part", default=False, type=bool),
}


@register("nvme")
class NVMe(Component):
    PORTS = ("pcie",)
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

    @property
    def write_bandwidth_Bps(self) -> float:
        return self.params["write_bandwidth"]

    def access(self, request_B: float, write: bool) -> tuple[float, float]:
        """Latency of one request, and the rate the queue can sustain: Little's law gives queue_depth
        requests per latency, bounded by the rated IOPS (random 4 KiB figures, used for any size)."""
        p = self.params
        lat = p["write_latency"] if write else p["read_latency"]
        iops = p["queue_depth"] / lat if lat > 0 else float("inf")
        rated = p["write_iops"] if write else p["read_iops"]
        if rated:
            iops = min(iops, rated)
        return lat, iops * request_B
