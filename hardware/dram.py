"""DRAM behind a memory port, in closed form: organization, JEDEC timings and an access pattern give the
sustained bandwidth, the unloaded and loaded latency and the energy per byte, with no per-command events.

Per pseudo-channel (a channel where the part has none), with access granularity A = width x BL / 8 bytes:

    t_burst = BL / data_rate                         bus time of one column access
    t_col   = max(t_burst, tCCD)                     tCCD_S when consecutive accesses alternate bank groups
                                                     (streaming), the BG-weighted mix of tCCD_S/L otherwise
    t_act   = max(tRRD, tFAW / 4, tRC / banks)       spacing of row activations (tRC = tRAS + tRP)
    per access: streaming   max(n x t_col, t_act) / n, n = row_size / A accesses per activation
                random      max(t_col, (1 - h) x t_act), h the row-hit rate
                strided     as random with h = 1 - 1 / floor(row_size / stride)
    turnaround (reads share r of accesses, writes drained in batches of W):
                eta_rw  = N t_a / (N t_a + (tWTR + CL) + 2 tCK),  N = W / (1 - r)
    refresh:    eta_ref = 1 - tRFC / tREFI          (all-bank refresh blocks the rank for tRFC)
    sustained = pseudo_channels x A / t_a x eta_rw x eta_ref;  peak = pseudo_channels x width x data_rate

Latency: a row hit costs CL + t_burst, an access to a precharged bank tRCD more, a row conflict tRP more;
a request meets a refresh with probability tRFC / tREFI and then waits tRFC / 2 on average. Under load a
pseudo-channel is an M/D/1 queue served at its sustained rate (`loaded_latency_s`).

Energy (DRAMPower / Micron TN-40-07 decomposition): an ACT+PRE pair per activation, array read or write
energy per bit, I/O energy per bit, and all-bank REF commands every tREFI (static power).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from simcore.component import Component, register
from simcore.config import Doc, Param, count, nonneg, positive
from simcore.errors import ConfigError

TECHNOLOGIES = ("ddr4", "ddr5", "lpddr5", "lpddr5x", "gddr6", "gddr6x", "gddr7", "hbm2", "hbm2e", "hbm3",
                "hbm3e")  # fmt: skip
PATTERNS = ("streaming", "strided", "random")

DRAM_SCHEMA: dict[str, Any] = {
    "abstract": Param("an architecture base, not a usable part", default=False, type=bool),
    "technology": Param(
        "DRAM standard (selects nothing by itself: every number is in the preset)",
        type=str,
        choices=TECHNOLOGIES,
    ),  # fmt: skip
    "capacity": positive(
        "capacity of one device: an HBM stack, a GDDR chip, a DIMM, an LPDDR package", "bytes"
    ),  # fmt: skip
    "data_rate": positive("data rate per pin, e.g. '6.4 Gbit/s'", "bandwidth"),
    "organization": {
        "channels": count("independent channels per device"),
        "pseudo_channels": count("pseudo-channels per channel, each with its own data bus (HBM2/3: 2)", 1),
        "channel_width": count("data pins (DQ) of one pseudo-channel", maximum=1024),
        "ranks": count("ranks (HBM: stack IDs) sharing one pseudo-channel's bus", 1, maximum=64),
        "bank_groups": count("bank groups per rank", maximum=64),
        "banks_per_group": count("banks per bank group", maximum=64),
        "row_size": positive(
            "bytes of one row (page) as a pseudo-channel sees it: across a rank's chips", "bytes"
        ),  # fmt: skip
        "burst_length": count(
            "bits each data pin carries per column access (beats x bits per beat)", maximum=1024
        ),  # fmt: skip
        "prefetch": count(
            "n-bit prefetch: bits per data pin the array delivers per column command", maximum=1024
        ),  # fmt: skip
    },
    "timing": {
        "tCK": positive("command clock period", "time"),
        "CL": positive("read latency: READ command to first data", "time"),
        "tRCD": positive("ACT to READ/WRITE", "time"),
        "tRP": positive("PRE to ACT (same bank)", "time"),
        "tRAS": positive("ACT to PRE (same bank)", "time"),
        "tCCD_S": positive("column command to column command, different bank groups", "time"),
        "tCCD_L": positive("column command to column command, same bank group", "time"),
        "tRRD_S": positive("ACT to ACT, different bank groups", "time"),
        "tRRD_L": positive("ACT to ACT, same bank group", "time"),
        "tFAW": positive("window in which at most four ACTs may issue", "time"),
        "tWTR": positive("end of write data to READ command (tWTR_S)", "time"),
        "tREFI": positive("interval between all-bank REF commands", "time"),
        "tRFC": positive("all-bank refresh cycle: the rank is busy this long per REF", "time"),
    },
    "access": {
        "pattern": Param(
            "how requests walk the address space", type=str, choices=PATTERNS, default="streaming"
        ),  # fmt: skip
        "stride": positive(
            "bytes between consecutive requests of a strided pattern", "bytes", default=256.0
        ),  # fmt: skip
        "row_hit_rate": nonneg("share of random accesses that find their row open", default=0.0, maximum=1.0),
        "read_fraction": nonneg(
            "share of accesses that are reads (the rest are writes)", default=1.0, maximum=1.0
        ),  # fmt: skip
        "write_batch": count(
            "writes the controller drains per read/write turnaround: Ramulator 2's "
            "generic controller switches at 80 % / 20 % of a 32-entry write buffer, "
            "0.6 x 32 = 19",
            19,
            maximum=4096,
        ),  # fmt: skip
    },
    "energy": {
        "activate": nonneg("one ACT + PRE pair: a row of one pseudo-channel rank", "energy"),
        "read": nonneg("array and on-die data path energy per bit read", "energy_per_bit"),
        "write": nonneg("array and on-die data path energy per bit written", "energy_per_bit"),
        "io": nonneg(
            "energy per bit on the channel: PHY, TSV and interposer or board trace", "energy_per_bit"
        ),
        "refresh": nonneg("one all-bank REF command of one pseudo-channel rank", "energy"),
    },
}


@dataclass(frozen=True)
class Pattern:
    """An access pattern: how requests walk memory and how reads and writes mix."""

    kind: str = "streaming"
    stride_B: float = 256.0
    row_hit_rate: float = 0.0
    read_fraction: float = 1.0


@register("dram")
class DRAM(Component):
    """A DRAM part (HBM stack, GDDR chip, DIMM, LPDDR package) as a memory: its bandwidth, latency and
    energy per byte follow from the organization and timings under the access pattern of `access:`."""

    SCHEMA = DRAM_SCHEMA
    ACTIONS = ("dram.byte",)

    def __init__(self, name: str, params: dict[str, Any], doc: Doc | None = None) -> None:
        super().__init__(name, params, doc)
        o, t = params["organization"], params["timing"]
        self.access_B: float = o["channel_width"] * o["burst_length"] / 8.0
        self.pseudo_channels: int = o["channels"] * o["pseudo_channels"]
        self.banks: int = o["ranks"] * o["bank_groups"] * o["banks_per_group"]
        self.t_burst_s: float = o["burst_length"] / (8.0 * params["data_rate"])
        self._check(o, t)
        a = params["access"]
        self.pattern = Pattern(a["pattern"], a["stride"], a["row_hit_rate"], a["read_fraction"])

    def _check(self, o: dict[str, Any], t: dict[str, Any]) -> None:
        """Refuse timings and shapes that have no steady state (named at the key that breaks it)."""
        if t["tRFC"] >= t["tREFI"]:
            self._fail(("timing", "tRFC"), f"tRFC ({t['tRFC']:.4g} s) must be shorter than tREFI "
                       f"({t['tREFI']:.4g} s): the rank would never leave refresh")  # fmt: skip
        if o["row_size"] < self.access_B:
            self._fail(("organization", "row_size"), f"a row ({o['row_size']:g} B) must hold at least one "
                       f"column access ({self.access_B:g} B = channel_width x burst_length / 8)")  # fmt: skip

    def _fail(self, path: tuple[str, ...], message: str) -> None:
        if self.doc is not None:
            raise self.doc.error(path, message)
        raise ConfigError(message, key=".".join(path))

    # ------------------------------------------------------------------------------------ bandwidth
    @property
    def peak_Bps(self) -> float:
        """Pins x data rate: every pseudo-channel's bus busy every cycle."""
        p = self.params
        return self.pseudo_channels * p["organization"]["channel_width"] * p["data_rate"]

    @property
    def refresh_efficiency(self) -> float:
        """Share of time a rank is not refreshing: 1 - tRFC / tREFI."""
        t = self.params["timing"]
        return 1.0 - t["tRFC"] / t["tREFI"]

    def _bg_mix(self, short: float, long: float) -> float:
        """A timing between two accesses whose bank groups are independent and uniform: the same group
        (probability 1 / bank_groups) pays the long constraint."""
        same = 1.0 / self.params["organization"]["bank_groups"]
        return same * long + (1.0 - same) * short

    def column_time_s(self, pattern: Pattern) -> float:
        """Bus time per column access: the burst, or the column-to-column spacing if longer."""
        t = self.params["timing"]
        if pattern.kind == "streaming" and self.params["organization"]["bank_groups"] > 1:
            ccd = t["tCCD_S"]  # consecutive bursts alternate bank groups
        elif pattern.kind == "streaming":
            ccd = t["tCCD_L"]
        else:
            ccd = self._bg_mix(t["tCCD_S"], t["tCCD_L"])
        return max(self.t_burst_s, ccd)

    def activation_time_s(self, pattern: Pattern) -> float:
        """Least spacing of row activations in one pseudo-channel: tRRD, a quarter of tFAW, or a bank's
        row cycle tRC spread over all its banks, whichever is longest."""
        t = self.params["timing"]
        if pattern.kind == "streaming" and self.params["organization"]["bank_groups"] > 1:
            rrd = t["tRRD_S"]
        elif pattern.kind == "streaming":
            rrd = t["tRRD_L"]
        else:
            rrd = self._bg_mix(t["tRRD_S"], t["tRRD_L"])
        return max(rrd, t["tFAW"] / 4.0, (t["tRAS"] + t["tRP"]) / self.banks)

    def row_hit_rate(self, pattern: Pattern) -> float:
        """Share of accesses that find their row open: all but one per row when streaming; one row per
        floor(row_size / stride) accesses when strided; as stated when random."""
        row = self.params["organization"]["row_size"]
        if pattern.kind == "random":
            return pattern.row_hit_rate
        step = self.access_B if pattern.kind == "streaming" else max(pattern.stride_B, self.access_B)
        return 1.0 - 1.0 / max(1.0, math.floor(row / step))

    def access_time_s(self, pattern: Pattern) -> float:
        """Average pseudo-channel time per column access, before turnarounds and refresh."""
        t_col, t_act = self.column_time_s(pattern), self.activation_time_s(pattern)
        miss = 1.0 - self.row_hit_rate(pattern)
        if pattern.kind == "streaming":
            n = 1.0 / miss  # accesses per activated row
            return max(n * t_col, t_act) / n
        return max(t_col, miss * t_act)

    def turnaround_efficiency(self, pattern: Pattern) -> float:
        """Share of bus time left by read/write turnarounds: the controller drains `write_batch` writes
        and serves the reads that came meanwhile; each write-to-read switch idles the bus tWTR + CL, each
        read-to-write switch 2 tCK (postamble and preamble)."""
        r = pattern.read_fraction
        if r <= 0.0 or r >= 1.0:
            return 1.0
        t = self.params["timing"]
        n = self.params["access"]["write_batch"] / (1.0 - r)  # accesses per turnaround cycle
        busy = n * self.access_time_s(pattern)
        return busy / (busy + t["tWTR"] + t["CL"] + 2.0 * t["tCK"])

    def sustained_Bps(self, pattern: Pattern | None = None) -> float:
        """Sustained bandwidth of the whole device under `pattern` (default: its `access:` block)."""
        pattern = pattern or self.pattern
        per_channel = self.access_B / self.access_time_s(pattern)
        eff = self.turnaround_efficiency(pattern) * self.refresh_efficiency
        return self.pseudo_channels * per_channel * eff

    # -------------------------------------------------------------------------------------- latency
    def unloaded_latency_s(self, pattern: Pattern | None = None) -> float:
        """Mean read latency of an isolated request: CL + burst on a row hit, + tRCD on a precharged
        bank (the next row of a stream), + tRP + tRCD on a row conflict (random), + refresh waits."""
        pattern = pattern or self.pattern
        t = self.params["timing"]
        hit = t["CL"] + self.t_burst_s
        h = self.row_hit_rate(pattern)
        miss = t["tRCD"] if pattern.kind == "streaming" else t["tRP"] + t["tRCD"]
        refresh = t["tRFC"] / t["tREFI"] * t["tRFC"] / 2.0
        return hit + (1.0 - h) * miss + refresh

    def loaded_latency_s(self, utilization: float, pattern: Pattern | None = None) -> float:
        """Mean latency when the offered load is `utilization` x the sustained bandwidth: each pseudo-channel
        an M/D/1 queue (Poisson arrivals, fixed service A / its sustained rate), Pollaczek-Khinchine wait
        rho S / (2 (1 - rho)) on top of the unloaded latency."""
        if not 0.0 <= utilization < 1.0:
            raise ConfigError(f"utilization must be in [0, 1), got {utilization!r}")
        pattern = pattern or self.pattern
        service = self.access_B * self.pseudo_channels / self.sustained_Bps(pattern)
        return self.unloaded_latency_s(pattern) + utilization * service / (2.0 * (1.0 - utilization))

    # --------------------------------------------------------------------------------------- energy
    def energy_per_byte_J(self, pattern: Pattern | None = None) -> float:
        """Dynamic energy per byte moved: array read/write (by the mix) + I/O, and one ACT+PRE per
        activated row shared by the accesses that hit it."""
        pattern = pattern or self.pattern
        e = self.params["energy"]
        r = pattern.read_fraction
        per_bit = r * e["read"] + (1.0 - r) * e["write"] + e["io"]
        act = (1.0 - self.row_hit_rate(pattern)) * e["activate"] / self.access_B
        return 8.0 * per_bit + act

    @property
    def refresh_power_W(self) -> float:
        """One REF per pseudo-channel rank every tREFI."""
        p = self.params
        ranks = self.pseudo_channels * p["organization"]["ranks"]
        return ranks * p["energy"]["refresh"] / p["timing"]["tREFI"]

    # ----------------------------------------------------------------------------- component protocol
    @property
    def memory_capacity_B(self) -> float:
        return self.params["capacity"]

    @property
    def memory_bandwidth_Bps(self) -> float:
        return self.sustained_Bps()

    @property
    def peak_memory_bandwidth_Bps(self) -> float:
        return self.peak_Bps

    @property
    def static_power_W(self) -> float:
        return self.refresh_power_W

    def energy_per_action_J(self) -> dict[str, float]:
        return {"dram.byte": self.energy_per_byte_J()}

    def derived(self) -> dict[str, tuple[float, str, str]]:
        s = Pattern("streaming")
        r = Pattern("random")
        return {
            "peak_bandwidth": (self.peak_Bps, "bandwidth", "channels x pseudo_channels x channel_width x data_rate"),
            "sustained_bandwidth": (self.sustained_Bps(), "bandwidth", "closed form under access:"),
            "streaming_bandwidth": (self.sustained_Bps(s), "bandwidth", "reads, streaming"),
            "random_bandwidth": (self.sustained_Bps(r), "bandwidth", "reads, random, no row hits"),
            "access_granularity": (self.access_B, "bytes", "channel_width x burst_length / 8"),
            "refresh_efficiency": (self.refresh_efficiency, "", "1 - tRFC / tREFI"),
            "unloaded_latency": (self.unloaded_latency_s(), "time", "CL + burst (+ tRCD, tRP on misses)"),
            "energy_per_byte": (self.energy_per_byte_J(), "energy_per_byte", "array + I/O + ACT share, under access:"),
            "refresh_power": (self.refresh_power_W, "power", "REF energy x ranks / tREFI"),
        }  # fmt: skip


def device_peak_and_capacity(params: dict[str, Any]) -> tuple[float, float]:
    """(peak bandwidth, capacity) of one device from validated DRAM parameters, without building it."""
    o = params["organization"]
    return o["channels"] * o["pseudo_channels"] * o["channel_width"] * params["data_rate"], params["capacity"]
