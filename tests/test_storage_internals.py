"""NVMe flash internals (hardware/storage.py FlashModel): closed forms, the host-link cap, the presets against
their spec sheets, and the rated presets left exactly as they were."""

from __future__ import annotations

import pytest

from hardware.links import pcie_raw_Bps
from hardware.storage import NVMe
from simcore.config import parse_yaml
from simcore.errors import ConfigError
from simcore.system import load_system


def ssd(name: str) -> NVMe:
    return next(iter(load_system(name).devices.values()))


def test_rated_presets_keep_their_numbers():
    # the basic model: rated bandwidths, Little's law on the QD1 latency capped by the rated IOPS
    d = ssd("samsung-pm1733")
    p = d.params
    assert d.flash is None
    assert (d.memory_bandwidth_Bps, d.write_bandwidth_Bps) == (7e9, 3.8e9)
    rl, wl = p["read_latency"], p["write_latency"]  # 80 us, 20 us
    assert d.access(4096, False) == (rl, min(128 / rl, 1.5e6) * 4096)
    assert d.access(4096, True) == (wl, min(128 / wl, 135e3) * 4096)
    o = ssd("intel-p5800x")
    ol = o.params["read_latency"]
    assert o.access(1 << 20, False) == (ol, min(32 / ol, 1.5e6) * (1 << 20))


def test_mqsim_default_closed_forms():
    d = ssd("mqsim-default")
    fm = d.flash
    assert fm.dies == 64
    assert fm.sequential_read_Bps == pytest.approx(8 * 333e6)  # channel-bound (array: 14 GB/s)
    program = 64 * 2 * 8192 / (750e-6 + 3.8e-3 / 256)
    assert fm.sequential_write_Bps == pytest.approx(program)
    assert fm.write_amplification_random == pytest.approx(1.07 / 0.14)
    # 2 MiB of cached map for 239 MiB of 4 B page entries: almost every random read reads a map page first
    miss = 1 - 2 * 2**20 / (d.params["capacity"] / 8192 * 4)
    assert fm.map_miss == pytest.approx(miss)
    lat = 75e-6 * (1 + miss) + 4096 / 333e6 + 4096 / fm.host_Bps
    assert fm.latency_s(4096, write=False) == pytest.approx(lat)
    assert d.iops(4096, write=False) == pytest.approx(
        min(64 / lat, 64 * 2 / (75e-6 * (1 + miss)), 333e6 * 8 / 4096)
    )


def test_host_link_caps_sequential_reads():
    d = ssd("samsung-pm9a3")
    assert d.flash.host_Bps == pytest.approx(pcie_raw_Bps(4, 4) * 0.91)
    assert d.memory_bandwidth_Bps == d.flash.host_Bps  # flash (186 GB/s) and channels (9.6 GB/s) allow more


def test_queue_depth_one_is_one_request_per_latency():
    d = ssd("samsung-pm9a3")
    qd1 = next(
        iter(load_system(parse_yaml("base: samsung-pm9a3\nqueue_depth: 1\n", "qd1.yaml")).devices.values())
    )
    lat, rate = qd1.access(4096, write=False)
    assert lat == pytest.approx(10e-6 + 45e-6 + 4096 / 1.2e9 + 4096 / d.flash.host_Bps)
    assert rate == pytest.approx(4096 / lat)


#: (preset, figure, published value, tolerance, where it comes from); writes marked fitted set program_dies
PUBLISHED = [
    ("samsung-pm9a3", "seq_read", 6.5e9, 0.15, "Samsung 2020 (heise 4720224): 6,500 MB/s"),
    ("samsung-pm9a3", "seq_write", 3.5e9, 0.15, "3,500 MB/s (fitted: program_dies)"),
    ("samsung-pm9a3", "rand_read", 900e3, 0.15, "900K IOPS (the controller's command rate)"),
    ("samsung-pm9a3", "rand_write", 200e3, 0.15, "200K IOPS: predicted from WA of greedy GC at 14.5 % OP"),
    ("samsung-pm1743", "seq_read", 13.0e9, 0.15, "Samsung newsroom Dec 2021: 13,000 MB/s"),
    ("samsung-pm1743", "seq_write", 6.6e9, 0.15, "6,600 MB/s (fitted: program_dies)"),
    ("samsung-pm1743", "rand_read", 2.5e6, 0.15, "2,500K IOPS (the controller's command rate)"),
    ("samsung-980-pro-1tb", "seq_read", 7.0e9, 0.15, "Samsung 980 PRO data sheet: 7,000 MB/s"),
    ("samsung-980-pro-1tb", "rand_read", 1.0e6, 0.15, "1,000K IOPS at QD32 x 16 threads"),
    ("smartssd", "seq_read", 3.2e9, 0.15, "Samsung PM983 3.84 TB data sheet: 3,200 MB/s"),
    ("smartssd", "seq_write", 2.0e9, 0.15, "2,000 MB/s (fitted: program_dies)"),
    ("smartssd", "rand_read", 540e3, 0.15, "540K IOPS (the controller's command rate)"),
]


@pytest.mark.parametrize(("name", "figure", "value", "tol", "source"), PUBLISHED)
def test_presets_match_their_spec_sheets(name, figure, value, tol, source):
    d = ssd(name)
    got = {"seq_read": lambda: d.memory_bandwidth_Bps, "seq_write": lambda: d.write_bandwidth_Bps,
           "rand_read": lambda: d.iops(4096, write=False), "rand_write": lambda: d.iops(4096, write=True)}[figure]()  # fmt: skip
    assert got == pytest.approx(value, rel=tol), source


def test_random_writes_pay_write_amplification():
    fm = ssd("samsung-pm9a3").flash
    wa = fm.write_amplification_random
    die_s = wa * 450e-6 + (wa - 1) * 45e-6 + wa * 3.5e-3 / 1152
    assert fm.random_write_Bps == pytest.approx(48 * 2 * 16384 / die_s)
    assert fm.random_write_Bps < fm.sequential_write_Bps


def test_incomplete_or_conflicting_flash_blocks_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"x.yaml:2: flash: missing required key 'ways'"):
        load_system(parse_yaml("base: mqsim-default\nflash: {ways: null}\n", "x.yaml"))
    with pytest.raises(ConfigError, match=r"x.yaml:2: read_bandwidth: .*derived from the flash"):
        load_system(parse_yaml("base: mqsim-default\nread_bandwidth: 3 GB/s\n", "x.yaml"))
    with pytest.raises(ConfigError, match="missing required key 'read_bandwidth'"):
        load_system(parse_yaml("type: nvme\ncapacity: 1 TB\nwrite_bandwidth: 1 GB/s\npcie: {generation: 4, "
                               "lanes: 4}\n", "x.yaml"))  # fmt: skip
