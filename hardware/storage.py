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

The spare rho is the raw flash over the user capacity, less one: `over_provisioning`, or derived from
`die_capacity` as D x die_capacity / capacity - 1. Greedy victim choice gives the lowest WA under uniform
random writes (Van Houdt, SIGMETRICS 2013: the limit of the d-choices family), so with the whole spare
free for garbage collection the random-write figure bounds a drive's rating from above.

A client drive's SLC write cache (`slc:`, `SLCCache`): part of the flash programmed one bit per cell, written
at Dp x planes x page / tPROG_slc (pre-erased blocks; channels and host cap it) until `static + dynamic`
bytes are in it, then at the sustained rate of the TLC flash:

    write of N bytes   min(N, free) / fast + max(0, N - free) / slow,   free = cache - bytes cached
    idle time t        folds min(cached, t x sequential TLC program rate) back into TLC

`access(request_B, write, nbytes, cached_B)` prices a write of `nbytes` at the average rate of that closed
form (the cache holding `cached_B` at its start: 0 when it folded in the idle time before); without
`nbytes` a write is priced as long past the cache, at the sustained rate.
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
                  "channel_rate")  # fmt: skip
#: one of these gives the spare flash (the other is derived from it)
SPARE_KEYS = ("over_provisioning", "die_capacity")
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
        "spare flash beyond the user capacity, as a fraction of it (or give die_capacity)",
        default=None,
        maximum=10.0,
    ),  # fmt: skip
    "die_capacity": positive(
        "bytes of one die (256 Gbit = 32 GiB); over_provisioning = dies x die_capacity / capacity - 1",
        "bytes",
        default=None,
    ),  # fmt: skip
    "program_dies": count("dies that program at once within the drive's power budget (default: all)", None),
}

SLC_SCHEMA: dict[str, Any] = {
    "static": nonneg("SLC write cache kept at every fill level (flash internals only)", "bytes", default=0.0),
    "dynamic": nonneg(
        "SLC write cache taken from free TLC blocks, its size on an empty drive", "bytes", default=0.0
    ),  # fmt: skip
    "tPROG": positive(
        "page program in SLC mode, one bit per cell: the cache's write rate (none: no SLC cache)",
        "time",
        default=None,
    ),  # fmt: skip
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
    "slc": SLC_SCHEMA,
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
    def over_provisioning(self) -> float:
        """Spare flash over the user capacity: given, or raw flash (dies x die_capacity) / capacity - 1."""
        f = self.flash
        if f["over_provisioning"] is not None:
            return f["over_provisioning"]
        return self.dies * f["die_capacity"] / self.p["capacity"] - 1.0

    @property
    def write_amplification_random(self) -> float:
        """Greedy garbage collection under uniform random writes: (1 + rho) / (2 rho) for spare rho, at
        least 1 (a large-drive approximation; Desnoyers, SYSTOR 2012, compares it with exact results)."""
        rho = self.over_provisioning
        return max(1.0, (1.0 + rho) / (2.0 * rho))

    @property
    def program_dies(self) -> int:
        return min(self.dies, self.flash["program_dies"] or self.dies)

    @property
    def slc_write_Bps(self) -> float | None:
        """Host bytes per second into the SLC cache: the dies that may program at once, one page per plane
        per SLC tPROG into pre-erased blocks (erased while the cache folds), capped by channels and host;
        None without a cache."""
        t = self.p["slc"]["tPROG"]
        if t is None:
            return None
        f = self.flash
        return min(self.program_dies * f["planes"] * f["page_size"] / t, self.channel_Bps, self.host_Bps)

    def program_Bps(self, wa: float) -> float:
        """Host bytes per second the dies absorb when each host page costs `wa` programs, wa - 1 reads of
        valid pages and wa / pages_per_block erases, limited by the dies that may program at once."""
        f = self.flash
        die_s = wa * f["tPROG"] + (wa - 1.0) * f["tR"] + wa * f["tBERS"] / f["pages_per_block"]
        array = self.program_dies * f["planes"] * f["page_size"] / die_s
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

    def write_iops_limit(self, request_B: float, sequential: bool, in_cache: bool = False) -> float:
        """Writes per second: into the SLC cache (no garbage collection there), else the flash at WA 1
        (sequential) or greedy GC's WA (random, steady state); and the controller's command rate."""
        if in_cache and self.slc_write_Bps is not None:
            bw = self.slc_write_Bps
        else:
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


@dataclass(frozen=True)
class SLCCache:
    """An SLC write cache for one request size: `size_B` written at `fast_Bps`, the rest at `slow_Bps`;
    idle time folds it into TLC at `fold_Bps`. The closed forms of the module doc."""

    size_B: float
    fast_Bps: float
    slow_Bps: float
    fold_Bps: float

    def write_s(self, nbytes: float, cached_B: float = 0.0) -> float:
        """Seconds to write `nbytes` when the cache already holds `cached_B`."""
        fast = min(nbytes, max(0.0, self.size_B - cached_B))
        return fast / self.fast_Bps + (nbytes - fast) / self.slow_Bps

    def cached_after(self, nbytes: float, cached_B: float = 0.0) -> float:
        """Bytes in the cache after that write (a write past the cache goes straight to TLC)."""
        return min(self.size_B, cached_B + nbytes)

    def fold(self, cached_B: float, idle_s: float) -> float:
        """Bytes left in the cache after `idle_s` idle seconds: folding reads the SLC pages and programs
        them into TLC at the sequential program rate (tR is small beside tPROG)."""
        return max(0.0, cached_B - idle_s * self.fold_Bps)


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
        rated figures, which are then required. An `slc:` block needs the internals and a cache size."""
        f, slc = params["flash"], params["slc"]

        def fail(path: tuple[str, ...], message: str) -> ConfigError:
            return doc.error(path, message) if doc is not None else ConfigError(message, key=".".join(path))

        given = [k for k in FLASH_SCHEMA if f.get(k) is not None]
        slc_given = slc["tPROG"] is not None or slc["static"] > 0 or slc["dynamic"] > 0
        if not given:
            if slc_given:
                raise fail(("slc",), "an SLC cache needs the drive's flash: block (its dies program it)")
            for key in ("read_bandwidth", "write_bandwidth"):
                if params[key] is None:
                    raise fail((), f"missing required key {key!r} (or describe the drive's internals in a "
                               "flash: block)")  # fmt: skip
            return None
        missing = [k for k in FLASH_REQUIRED if f.get(k) is None]
        if missing:
            raise fail(("flash",), f"missing required key {missing[0]!r}: a flash: block needs "
                       f"{', '.join(FLASH_REQUIRED)}")  # fmt: skip
        spare = [k for k in SPARE_KEYS if f.get(k) is not None]
        if len(spare) != 1:
            what = "missing required key 'over_provisioning' (or die_capacity)" if not spare else (
                "over_provisioning and die_capacity both given (one derives the other); give one")  # fmt: skip
            raise fail(("flash", spare[-1] if spare else "over_provisioning"), what)
        rated = [k for k in RATED_KEYS if params[k] is not None]
        if rated:
            raise fail((rated[0],), f"{rated[0]} is derived from the flash: block; give one or the other")
        fm = FlashModel(params)
        if fm.over_provisioning <= 0.0:
            raise fail(("flash", "die_capacity"), f"dies x die_capacity ({fm.dies} dies) leave no spare "
                       "flash beyond the user capacity")  # fmt: skip
        if slc_given and (slc["tPROG"] is None or slc["static"] + slc["dynamic"] <= 0.0):
            key = "tPROG" if slc["tPROG"] is None else "static"
            raise fail(("slc", key), "an SLC cache needs its tPROG and a size (static, dynamic or both)")
        return fm

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
        """Sequential writes: into the SLC cache where there is one (the rate the data sheet quotes; a
        transfer's own cap from `access` slows it once the cache is full), else into the flash."""
        if self.flash is not None:
            return self.flash.slc_write_Bps or self.flash.sequential_write_Bps
        return self.params["write_bandwidth"]

    @property
    def sized_writes(self) -> bool:  # type: ignore[override]
        """A drive with an SLC cache writes a short burst faster than a long one."""
        return self.flash is not None and self.flash.slc_write_Bps is not None

    def slc_cache(self, request_B: float) -> SLCCache | None:
        """The SLC cache as seen by writes of `request_B` (None without one): its size, the in-cache and
        sustained rates for that request size, and the fold rate."""
        fm = self.flash
        if fm is None or fm.slc_write_Bps is None:
            return None
        slc = self.params["slc"]
        sequential = request_B >= self.params["sequential_from"]
        fast = fm.write_iops_limit(request_B, sequential, in_cache=True) * request_B
        slow = fm.write_iops_limit(request_B, sequential) * request_B
        return SLCCache(slc["static"] + slc["dynamic"], fast, slow, fm.sequential_write_Bps)

    def derived(self) -> dict[str, tuple[float, str, str]]:
        fm = self.flash
        if fm is None:
            return {}
        kib4 = 4096.0
        out = {
            "flash.dies_total": (float(fm.dies), "", "channels x ways x dies"),
            "flash.over_provisioning": (fm.over_provisioning, "", "given, or dies x die_capacity / capacity - 1"),
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
        cache = self.slc_cache(self.params["sequential_from"])
        if cache is not None:
            out |= {
                "slc.size": (cache.size_B, "bytes", "static + dynamic"),
                "slc.sequential_write": (cache.fast_Bps, "bandwidth", "program dies x planes x page / tPROG"),
                "slc.random_write_4k_iops": (self.iops(kib4, write=True, nbytes=kib4), "", "in the cache"),
                "slc.fill_time": (cache.write_s(cache.size_B), "time", "size / in-cache rate"),
            }  # fmt: skip
        return out

    def iops(self, request_B: float, write: bool, nbytes: float | None = None) -> float:
        """Requests per second at the preset's queue depth for `request_B` requests (flash internals); a
        write of `nbytes` in all on a drive with an SLC cache averages over the closed form."""
        lat, rate = self.access(request_B, write, nbytes)
        return rate / request_B

    def access(
        self, request_B: float, write: bool, nbytes: float | None = None, cached_B: float = 0.0
    ) -> tuple[float, float]:
        """Latency of one request, and the rate the queue can sustain: Little's law gives queue_depth
        requests per latency, bounded by the rated IOPS (random 4 KiB figures, used for any size) or, with
        flash internals, by the closed-form limits for this request size. With an SLC cache, a write of
        `nbytes` in all, starting with `cached_B` in the cache, runs at nbytes / SLCCache.write_s; without
        `nbytes` it is priced as long past the cache (the sustained rate)."""
        p = self.params
        if self.flash is not None:
            fm = self.flash
            lat = fm.latency_s(request_B, write)
            sequential = request_B >= p["sequential_from"]
            cache = self.slc_cache(request_B) if write else None
            if cache is not None and nbytes is not None:
                limit = nbytes / cache.write_s(nbytes, cached_B) / request_B if nbytes > 0 else math.inf
            elif write:
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
