"""Computational storage (hardware/csd.py): decode attention next to the flash, at internal flash bandwidth
rather than over the host link."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hardware.csd import CSD
from hardware.links import pcie_raw_Bps
from simcore.errors import ConfigError
from simcore.ops import Attention
from simcore.system import load_system

OP = Attention("a", "fp16", batch=8, heads=40, kv_heads=40, q_len=1, kv_len=4096, head_dim=128)  # 13B-like


def csd(name: str) -> CSD:
    return next(iter(load_system(name).devices.values()))


def test_instinfer_engine_reads_flash_faster_than_the_host_link():
    d = csd("instinfer-csd")
    assert d.flash_to_engine_Bps == pytest.approx(8 * 800e6)  # the channels (array: 84 GB/s)
    assert d.flash_to_engine_Bps > d.host_Bps == pytest.approx(pcie_raw_Bps(3, 4) * 0.91)


def test_smartssd_engine_reaches_the_flash_through_its_gen3_port():
    assert csd("smartssd").flash_to_engine_Bps == pytest.approx(pcie_raw_Bps(3, 4) * 0.91)


def test_decode_attention_closed_form():
    d = csd("instinfer-csd")
    kv = 2 * 8 * 40 * 4096 * 128 * 2  # K and V, fp16
    q_out = 2 * 8 * 40 * 128 * 2
    t = 50e-6 + kv / 6.4e9 + q_out / d.host_Bps  # flash-bound: the engine's DRAM and DSPs keep up
    cost = d.op_cost(OP)
    assert cost.bound == "flash"
    assert cost.detail["kv_bytes"] == kv
    assert cost.duration_s == pytest.approx(t, rel=1e-12)


def test_in_storage_attention_beats_moving_the_kv_cache_over_the_link():
    # FlexGen-style: the KV cache crosses the host link every step; InstInfer: only q and the output do
    d = csd("instinfer-csd")
    over_link = OP.bytes / d.host_Bps
    assert over_link / d.op_cost(OP).duration_s == pytest.approx(6.4e9 / d.host_Bps, rel=0.01)


def test_csd_refuses_prefill_and_unknown_dtypes():
    d = csd("smartssd")
    with pytest.raises(ConfigError, match="q_len 1"):
        d.op_cost(Attention("a", "fp16", heads=8, kv_heads=8, q_len=16, kv_len=64))
    with pytest.raises(ConfigError, match="no bf16 compute"):
        d.op_cost(Attention("a", "bf16", heads=8, kv_heads=8, q_len=1, kv_len=64))


def test_hw_params_csd_lists_drive_and_engine():
    out = subprocess.run([sys.executable, "-m", "simcore", "hw", "params", "csd", "--json"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    keys = {r["key"] for r in json.loads(out)}
    assert {
        "flash.channels",
        "flash.tR",
        "engine.peak.<key>",
        "engine.memory.bandwidth",
        "engine.link.lanes",
    } <= keys
