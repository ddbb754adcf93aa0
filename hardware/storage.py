"""NVMe SSD: an endpoint whose reads and writes are flows after one access latency, capped by what its queue
depth and request handling sustain for the request size.

Two ways to describe a drive. Rated: its spec sheet's sequential bandwidths, QD1 latencies and 4 KiB IOPS
(the basic model). Internals (a `flash:` block): channels x ways x dies x planes of NAND with page size,
tR / tPROG / tBERS and the channel bus rate, the controller's latency, command rate and mapping cache, the
host link (PCIe generation x lanes) -- and every figure follows in closed form (`FlashModel`):

    read array    D x planes x page / tR                      (D = channels x ways x dies)
    program       Dp x planes x page / (WA tPROG + (WA - 1) tR + WA tBERS / pages_per_block)
                  Dp = dies programming at once (power budget); WA = 1 sequential,
                  (1 + rho) / (2 rho) random (greedy garbage collection, uniform writes, spare rho)
    channels      channels x channel_rate, carrying (2 WA - 1) page transfers per page written
    host          PCIe raw rate x host_efficiency (TLP headers and DLLPs)
    sequential    min(array or program, channels, host); random by request size R: IOPS from
                  D x planes / (tR (pages + map misses)), channels / R, host / R, the controller's rate
    latency (QD1) controller + tR (1 + map miss) + R / channel rate + R / host  (reads);
                  controller + R / host (writes land in the power-loss-protected buffer)
    queue depth Q sustains min(Q / latency, the limits above) requests per second (Little's law)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hardware.links import pcie_raw_Bps
from hardware.memory import PCIE_SCHEMA
from simcore.component import Component, register
from simcore.config import Doc, Param, count, fraction, nonneg, positive
from simcore.errors import ConfigError

#: keys of the `flash:` block that must all be given when it is
FLASH_REQUIRED = ("channels", "ways", "dies", "planes", "page_size", "pages_per_block", "tR", "tPROG", "tBERS",
                  "channel_rate", "over_provisioning")  # fmt: skip
#: rated keys that the internals replace
RATED_KEYS = ("read_bandwidth", "write_bandwidth", "read_iops", "write_iops")

FLASH_SCHEMA: dict[str, Any] = {
    "channels": count("flash channels of the controller", None, maximum=1024),
    "ways": count("flash packages (chip enables) per channel", None, maximum=1024),
    "dies": count("dies per package", None, maximum=64),
    "planes": count("planes per die that read or program at once", None, maximum=16),
    "page_size": positive("bytes of one page of one plane", "bytes", default=None),
    "pages_per_block": count("pages of one erase block", None),
    "tR": positive("page read: array to the die's page register", "time", default=None),
    "tPROG": positive(
        "page program (a multi-plane program writes a page in every plane)", "time", default=None
    ),  # fmt: skip
    "tBERS": positive("block erase", "time", default=None),
    "channel_rate": positive(
        "bytes/s one channel's bus moves (ONFI / Toggle rate x 8 bit)", "bandwidth", default=None
    ),  # fmt: skip
    "over_provisioning": positive(
        "spare flash beyond the user capacity, as a fraction of it", default=None, maximum=10.0
    ),  # fmt: skip
    "program_dies": count("dies that program at once within the drive's power budget (default: all)", None),
}

CONTROLLER_SCHEMA: dict[str, Any] = {
    "latency": nonneg("firmware and queueing time per command (flash internals only)", "time", default=0.0),
    "iops": positive(
        "commands per second the controller handles (flash internals only; default: no limit)", default=None
    ),  # fmt: skip
    "map_cache": positive(
        "controller DRAM holding the logical-to-physical map (default: all of it)", "bytes", default=None
    ),  # fmt: skip
    "map_unit": positive("bytes one map entry covers", "bytes", default=4096.0),
    "map_entry": positive("bytes of one map entry", "bytes", default=4.0),
}

NVME_SCHEMA: dict[str, Any] = {
    "capacity": positive("user capacity", "bytes"),
    "read_bandwidth": positive(
        "sequential read bandwidth (rated; derived with flash:)", "bandwidth", default=None
    ),  # fmt: skip
    "write_bandwidth": positive(
        "sequential write bandwidth (rated; derived with flash:)", "bandwidth", default=None
    ),  # fmt: skip
    "read_latency": nonneg("4 KiB random-read latency at queue depth 1", "time", default=80e-6),
    "write_latency": nonneg("4 KiB random-write latency at queue depth 1", "time", default=20e-6),
    "read_iops": positive("4 KiB random-read IOPS at high queue depth", default=None),
    "write_iops": positive("4 KiB random-write IOPS at high queue depth", default=None),
    "queue_depth": positive("outstanding commands the host keeps in flight", type=int, default=64),
    "pcie": PCIE_SCHEMA,
    "power": {"idle": nonneg("idle power", "power", default=0.0)},
    "abstract": Param("an architecture base, not a usable part", default=False, type=bool),
    "flash": FLASH_SCHEMA,
    "controller": CONTROLLER_SCHEMA,
    "host_efficiency": fraction(
        "share of the PCIe raw rate left for data: 256 B payloads in 282 B of "
        "TLP header, framing, LCRC and DLLPs (flash internals only)",
        0.91,
    ),  # fmt: skip
    "sequential_from": positive(
        "requests at least this large count as sequential (the block size of "
        "spec sheets' sequential figures)",
        "bytes",
        default=131072.0,
    ),  # fmt: skip
}


@dataclass(frozen=True)
class FlashModel:
    """NAND internals of a drive, validated; every method is a closed form (see the module doc)."""

    p: dict[str, Any]

    @property
    def flash(self) -> dict[str, Any]:
        return self.p["flash"]

    @property
    def dies(self) -> int:
        f = self.flash
        return f["channels"] * f["ways"] * f["dies"]

    @property
    def host_Bps(self) -> float:
        return pcie_raw_Bps(self.p["pcie"]["generation"], self.p["pcie"]["lanes"]) * self.p["host_efficiency"]

    @property
    def channel_Bps(self) -> float:
        return self.flash["channels"] * self.flash["channel_rate"]

    @property
    def read_array_Bps(self) -> float:
        f = self.flash
        return self.dies * f["planes"] * f["page_size"] / f["tR"]

    @property
    def write_amplification_random(self) -> float:
        """Greedy garbage collection under uniform random writes: (1 + rho) / (2 rho) for spare rho, at
        least 1 (a large-drive approximation; Desnoyers, SYSTOR 2012, compares it with exact results)."""
        rho = self.flash["over_provisioning"]
        return max(1.0, (1.0 + rho) / (2.0 * rho))

    def program_Bps(self, wa: float) -> float:
        """Host bytes per second the dies absorb when each host page costs `wa` programs, wa - 1 reads of
        valid pages and wa / pages_per_block erases, limited by the dies that may program at once."""
        f = self.flash
        dies = min(self.dies, f["program_dies"] or self.dies)
        die_s = wa * f["tPROG"] + (wa - 1.0) * f["tR"] + wa * f["tBERS"] / f["pages_per_block"]
        array = dies * f["planes"] * f["page_size"] / die_s
        return min(array, self.channel_Bps / (2.0 * wa - 1.0), self.host_Bps)

    @property
    def sequential_read_Bps(self) -> float:
        return min(self.read_array_Bps, self.channel_Bps, self.host_Bps)

    @property
    def sequential_write_Bps(self) -> float:
        return self.program_Bps(1.0)

    @property
    def random_write_Bps(self) -> float:
        return self.program_Bps(self.write_amplification_random)

    @property
    def map_miss(self) -> float:
        """Share of random reads whose map entry is not in the controller's DRAM (one more flash read)."""
        c = self.p["controller"]
        if c["map_cache"] is None:
            return 0.0
        table = self.p["capacity"] / c["map_unit"] * c["map_entry"]
        return max(0.0, 1.0 - c["map_cache"] / table)

    def read_iops_limit(self, request_B: float) -> float:
        """Random reads per second the flash, the channels, the host link and the controller allow."""
        f = self.flash
        pages = math.ceil(request_B / f["page_size"]) + self.map_miss
        limits = [self.dies * f["planes"] / (f["tR"] * pages), self.channel_Bps / request_B,
                  self.host_Bps / request_B]  # fmt: skip
        if self.p["controller"]["iops"]:
            limits.append(self.p["controller"]["iops"])
        return min(limits)

    def write_iops_limit(self, request_B: float, sequential: bool) -> float:
        bw = self.sequential_write_Bps if sequential else self.random_write_Bps
        limits = [bw / request_B]
        if self.p["controller"]["iops"]:
            limits.append(self.p["controller"]["iops"])
        return min(limits)

    def latency_s(self, request_B: float, write: bool) -> float:
        """Queue-depth-1 latency of one request (see the module doc)."""
        f, c = self.flash, self.p["controller"]
        if write:
            return c["latency"] + request_B / self.host_Bps
        lanes = min(f["channels"], math.ceil(request_B / f["page_size"]))
        return (c["latency"] + f["tR"] * (1.0 + self.map_miss) + request_B / (lanes * f["channel_rate"])
                + request_B / self.host_Bps)  # fmt: skip


@register("nvme")
class NVMe(Component):
    PORTS = ("pcie",)
    SCHEMA = NVME_SCHEMA

    def __init__(self, name: str, params: dict[str, Any], doc: Doc | None = None) -> None:
        super().__init__(name, params, doc)
        self.flash: FlashModel | None = self._flash_model(params, doc)

    @staticmethod
    def _flash_model(params: dict[str, Any], doc: Doc | None) -> FlashModel | None:
        """The internals when a `flash:` block is given (all of its keys, and no rated figures); else the
        rated figures, which are then required."""
        f = params["flash"]

        def fail(path: tuple[str, ...], message: str) -> ConfigError:
            return doc.error(path, message) if doc is not None else ConfigError(message, key=".".join(path))

        given = [k for k in FLASH_SCHEMA if f.get(k) is not None]
        if not given:
            for key in ("read_bandwidth", "write_bandwidth"):
                if params[key] is None:
                    raise fail((), f"missing required key {key!r} (or describe the drive's internals in a "
                               "flash: block)")  # fmt: skip
            return None
        missing = [k for k in FLASH_REQUIRED if f.get(k) is None]
        if missing:
            raise fail(("flash",), f"missing required key {missing[0]!r}: a flash: block needs "
                       f"{', '.join(FLASH_REQUIRED)}")  # fmt: skip
        rated = [k for k in RATED_KEYS if params[k] is not None]
        if rated:
            raise fail((rated[0],), f"{rated[0]} is derived from the flash: block; give one or the other")
        return FlashModel(params)

    @property
    def memory_capacity_B(self) -> float:
        return self.params["capacity"]

    @property
    def memory_bandwidth_Bps(self) -> float:
        if self.flash is not None:
            return self.flash.sequential_read_Bps
        return self.params["read_bandwidth"]

    @property
    def static_power_W(self) -> float:
        return self.params["power"]["idle"]

    @property
    def write_bandwidth_Bps(self) -> float:
        if self.flash is not None:
            return self.flash.sequential_write_Bps
        return self.params["write_bandwidth"]

    def derived(self) -> dict[str, tuple[float, str, str]]:
        fm = self.flash
        if fm is None:
            return {}
        kib4 = 4096.0
        return {
            "flash.dies_total": (float(fm.dies), "", "channels x ways x dies"),
            "flash.read_array": (fm.read_array_Bps, "bandwidth", "dies x planes x page / tR"),
            "flash.channel_bandwidth": (fm.channel_Bps, "bandwidth", "channels x channel_rate"),
            "host_bandwidth": (fm.host_Bps, "bandwidth", "PCIe raw rate x host_efficiency"),
            "sequential_read": (fm.sequential_read_Bps, "bandwidth", "min(array, channels, host)"),
            "sequential_write": (fm.sequential_write_Bps, "bandwidth", "program rate at WA 1, channels, host"),
            "random_write_amplification": (fm.write_amplification_random, "", "(1 + OP) / (2 OP)"),
            "random_read_4k_iops": (self.iops(kib4, write=False), "", "QD queue_depth, Little's law and limits"),
            "random_write_4k_iops": (self.iops(kib4, write=True), "", "steady state, greedy GC"),
            "read_latency_4k": (fm.latency_s(kib4, False), "time", "controller + tR + transfers"),
        }  # fmt: skip

    def iops(self, request_B: float, write: bool) -> float:
        """Requests per second at the preset's queue depth for `request_B` requests (flash internals)."""
        lat, rate = self.access(request_B, write)
        return rate / request_B

    def access(self, request_B: float, write: bool) -> tuple[float, float]:
        """Latency of one request, and the rate the queue can sustain: Little's law gives queue_depth
        requests per latency, bounded by the rated IOPS (random 4 KiB figures, used for any size) or, with
        flash internals, by the closed-form limits for this request size."""
        p = self.params
        if self.flash is not None:
            fm = self.flash
            lat = fm.latency_s(request_B, write)
            sequential = request_B >= p["sequential_from"]
            if write:
                limit = fm.write_iops_limit(request_B, sequential)
            elif sequential:
                limit = fm.sequential_read_Bps / request_B
            else:
                limit = fm.read_iops_limit(request_B)
            iops = min(p["queue_depth"] / lat if lat > 0 else math.inf, limit)
            return lat, iops * request_B
        lat = p["write_latency"] if write else p["read_latency"]
        iops = p["queue_depth"] / lat if lat > 0 else float("inf")
        rated = p["write_iops"] if write else p["read_iops"]
        if rated:
            iops = min(iops, rated)
        return lat, iops * request_B
