"""DRAM timing model (hardware/dram.py): closed forms of bandwidth, latency and energy, the presets against
their spec sheets, and a device memory built from a DRAM preset."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hardware.dram import DRAM, Pattern
from simcore.config import parse_yaml
from simcore.energy import energy_table
from simcore.errors import ConfigError
from simcore.system import load_system

#: preset -> spec-sheet peak per device (pins x data rate): JEDEC / vendor figures quoted in each preset
PEAKS_GBPS = {"ddr4-3200": 25.6, "ddr5-4800": 38.4, "ddr5-5600": 44.8, "lpddr5-6400": 51.2,
              "lpddr5x-8533": 68.264, "gddr6": 64.0, "gddr6x": 84.0, "gddr7": 128.0, "hbm2": 307.2,
              "hbm2e": 409.6, "hbm3": 819.2, "hbm3-5.2g": 665.6, "hbm3e": 1228.8}  # fmt: skip


def dram(name: str) -> DRAM:
    return next(iter(load_system(name).devices.values()))


@pytest.mark.parametrize("name", sorted(PEAKS_GBPS))
def test_streaming_peak_is_pins_times_data_rate(name):
    assert dram(name).peak_Bps == pytest.approx(PEAKS_GBPS[name] * 1e9, rel=1e-4)


@pytest.mark.parametrize("name", sorted(PEAKS_GBPS))
def test_streaming_reads_lose_only_refresh(name):
    # every preset's column spacing tCCD_S is one burst, and a row holds enough bursts to hide tFAW: the
    # bus is busy but for all-bank refresh, 1 - tRFC / tREFI of the peak (within 5 %, the promised tolerance;
    # the presets round tCCD_S to 4 digits, hence 0.2 %)
    d = dram(name)
    t = d.params["timing"]
    closed = d.peak_Bps * (1 - t["tRFC"] / t["tREFI"])
    assert d.sustained_Bps(Pattern("streaming")) == pytest.approx(closed, rel=2e-3)


def test_refresh_overhead_of_ddr4_is_trfc_over_trefi():
    assert dram("ddr4-3200").refresh_efficiency == pytest.approx(1 - 350 / 7800)


def test_random_access_is_bounded_by_tfaw():
    # DDR4-3200 single rank: four ACTs per tFAW = 21.25 ns, one 64 B access each (no row hits)
    d = dram("ddr4-3200")
    expect = 64 / (21.25e-9 / 4) * (1 - 350 / 7800)
    assert d.sustained_Bps(Pattern("random")) == pytest.approx(expect, rel=1e-9)


def test_random_access_of_hbm3_is_bounded_by_tfaw_per_pseudo_channel():
    d = dram("hbm3")
    expect = 32 * 32 / (30e-9 / 4) * d.refresh_efficiency  # 32 pseudo-channels, 32 B per ACT
    assert d.sustained_Bps(Pattern("random")) == pytest.approx(expect, rel=1e-9)


@pytest.mark.parametrize("name", sorted(PEAKS_GBPS))
def test_random_is_slower_than_streaming_and_row_hits_help(name):
    d = dram(name)
    rand = d.sustained_Bps(Pattern("random"))
    assert rand < d.sustained_Bps(Pattern("streaming"))
    assert d.sustained_Bps(Pattern("random", row_hit_rate=0.9)) >= rand
    assert d.unloaded_latency_s(Pattern("random")) > d.unloaded_latency_s(Pattern("streaming"))


def test_strided_access_opens_a_row_per_row_size_over_stride():
    d = dram("ddr4-3200")  # 8 KiB rows: a 4 KiB stride hits every other access
    assert d.row_hit_rate(Pattern("strided", stride_B=4096)) == pytest.approx(0.5)
    assert d.row_hit_rate(Pattern("strided", stride_B=16384)) == 0.0


def test_write_to_read_turnaround_closed_form():
    # half reads: the controller drains 19 writes and serves 19 reads per cycle, each cycle idling the bus
    # tWTR + CL (write to read) + 2 tCK (read to write)
    d = dram("ddr4-3200")
    t_a = d.access_time_s(Pattern("streaming", read_fraction=0.5))
    busy = 38 * t_a
    eta = busy / (busy + 2.5e-9 + 13.75e-9 + 2 * 0.625e-9)
    assert d.turnaround_efficiency(Pattern("streaming", read_fraction=0.5)) == pytest.approx(eta, rel=1e-12)


def test_hbm_streaming_efficiency_matches_the_measured_median():
    # configs/hardware/arch/arch-*.yaml: streaming kernels reach 0.85 of HBM peak (median of 39 measured
    # rows); the read-streaming closed form of the HBM2E and HBM3 presets lands within 5 % of it
    for name in ("hbm2e", "hbm3-5.2g"):
        d = dram(name)
        assert d.sustained_Bps(Pattern("streaming")) / d.peak_Bps == pytest.approx(0.85, rel=0.05)


def test_latency_closed_forms():
    d = dram("ddr4-3200")
    t = d.params["timing"]
    refresh = t["tRFC"] / t["tREFI"] * t["tRFC"] / 2
    conflict = t["tRP"] + t["tRCD"] + t["CL"] + d.t_burst_s + refresh
    assert d.unloaded_latency_s(Pattern("random")) == pytest.approx(conflict)
    service = 64 / d.sustained_Bps(Pattern("random"))  # one pseudo-channel
    assert d.loaded_latency_s(0.5, Pattern("random")) == pytest.approx(conflict + 0.5 * service)
    with pytest.raises(ConfigError, match="utilization"):
        d.loaded_latency_s(1.0)


@pytest.mark.parametrize("name", sorted(PEAKS_GBPS))
def test_streaming_read_energy_matches_the_energy_table(name):
    # each preset splits configs/energy/dram.yaml's pJ/bit figure for its technology into ACT, array and
    # I/O parts (sources in the presets); streaming reads put them back together (within 10 %: HBM2's
    # FGDRAM parts sum to 3.59 pJ/bit against the table's 3.9)
    d = dram(name)
    table = energy_table().dram_J_per_bit(d.params["technology"])
    assert d.energy_per_byte_J(Pattern("streaming")) / 8 == pytest.approx(table, rel=0.10)


def test_random_access_pays_an_activation_per_access():
    d = dram("hbm3")
    e = d.params["energy"]
    per_byte = 8 * (e["read"] + e["io"]) + e["activate"] / 32
    assert d.energy_per_byte_J(Pattern("random")) == pytest.approx(per_byte)


def test_refresh_power_is_ref_energy_per_trefi():
    d = dram("ddr4-3200")
    assert d.static_power_W == pytest.approx(665e-9 / 7.8e-6)


def test_a_gpu_memory_can_name_a_dram_preset(tmp_path):
    f = tmp_path / "h100-like.yaml"
    f.write_text("base: h100-sxm5-80gb\nmemory: {dram: hbm3-5.2g, count: 5, capacity: 80 GiB}\n")
    gpu = next(iter(load_system(str(f)).devices.values()))
    assert gpu.params["memory"]["bandwidth"] == pytest.approx(5 * 665.6e9)
    assert gpu.params["memory"]["capacity"] == 80 * 2**30  # written beside dram: wins
    assert gpu.params["memory"]["type"] == "hbm3"


def test_bad_dram_references_are_one_line_errors(tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text("base: h100-sxm5-80gb\nmemory:\n  dram: t4\n")
    with pytest.raises(ConfigError, match=r"g.yaml:3: memory.dram: 't4' is a gpu preset"):
        load_system(str(f))
    f.write_text("base: h100-sxm5-80gb\nmemory:\n  dram: hbm3\n  count: 0\n")
    with pytest.raises(ConfigError, match=r"g.yaml:4: memory.count"):
        load_system(str(f))


def test_timings_without_a_steady_state_are_refused():
    doc = parse_yaml("base: ddr4-3200\ntiming: {tRFC: 8 us}\n", "bad.yaml")
    with pytest.raises(ConfigError, match=r"bad.yaml:2: timing.tRFC: .*shorter than tREFI"):
        load_system(doc)


def test_hw_params_dram_lists_every_parameter():
    out = subprocess.run([sys.executable, "-m", "simcore", "hw", "params", "dram", "--json"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    keys = [r["key"] for r in json.loads(out)]
    for key in ("organization.bank_groups", "timing.tFAW", "timing.tRFC", "access.read_fraction",
                "energy.activate", "energy.refresh"):  # fmt: skip
        assert key in keys
