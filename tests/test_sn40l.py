"""SN40L-style model switching (Prabhakar et al., MICRO 2024): the SN40L socket and node presets, the
`model-switch` scenario's copies against their closed forms, and the DDR-tier speed-up against the
published 15-31x (docs/long-context-and-tiers.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hardware.links import pcie_raw_Bps
from simcore.errors import ConfigError, OutOfMemory
from simcore.experiment import load_experiment
from simcore.system import load_system

EXP = Path(__file__).resolve().parent.parent / "configs" / "experiments"
GiB, TiB = 2.0**30, 2.0**40
SHARD_B = 1.348e10 / 8  # bf16 Llama-2-7B (6.74e9 parameters x 2 B) over 8 tensor-parallel ranks


def run(name: str, *overrides: str) -> dict:
    return load_experiment(EXP / f"{name}.yaml", overrides).run(keep_records=False).summary


def test_socket_and_node_carry_the_published_figures() -> None:
    # MICRO 2024: 638 BF16 TFLOP/s, 1040 PCUs, 520 MiB SRAM, 64 GiB HBM, up to 1.5 TiB DDR per socket, 8 sockets
    node = load_system("sn40l-node-8")
    rdu = node.devices["socket0.rdu"]
    assert rdu.params["tensor_peak"]["bf16"] == pytest.approx(638e12)
    assert rdu.params["sms"] == 1040
    assert rdu.params["l2"]["size"] == 520 * 2**20
    assert rdu.memory_capacity_B == 64 * GiB
    ddr = [d for d in node.devices if d.startswith("socket0.ddr")]
    assert sum(node.memory_of(d).capacity_B for d in ddr) == pytest.approx(1.5 * TiB)
    assert len(node.of_type("gpu")) == 8
    # the 8 sockets' DDR channels together: "over 1 TB/s" DDR -> HBM per node (IISc seminar abstract, 2024)
    assert 8 * sum(node.memory_of(d).read_Bps for d in ddr) > 1e12


def test_ddr_switch_is_the_ddr_channels_closed_form() -> None:
    # each socket reads its shard from its 6 DDR5-4800 channels at once: shard / (6 x the channel's sustained
    # rate, hardware/dram.py closed form); the 38.4 GB/s channel links and the HBM do not bind
    node = load_system("sn40l-node-8")
    ddr_Bps = sum(node.memory_of(f"socket0.ddr{i}").read_Bps for i in range(6))
    s = run("sn40l-coe-ddr")
    assert s["switches"] == 8
    assert s["switch_time_s"] == pytest.approx(SHARD_B / ddr_Bps, rel=0.01)


def test_host_switch_is_the_pcie_closed_form() -> None:
    # SN40L node from host memory: every socket's Gen5 x16 link at 0.8 of its encoded rate (hardware/links.py);
    # four sockets per CPU draw 4 x 50.4 GB/s, under a Xeon 8480's 0.75 x 307.2 GB/s
    s = run("sn40l-coe-host")
    assert s["switch_time_s"] == pytest.approx(SHARD_B / (0.8 * pcie_raw_Bps(5, 16)), rel=0.01)
    # DGX A100: two GPUs share each PCIe switch's Gen4 x16 uplink to the CPU
    a100 = run("sn40l-coe-dgx-a100")
    assert a100["switch_time_s"] == pytest.approx(2 * SHARD_B / (0.8 * pcie_raw_Bps(4, 16)), rel=0.01)


def test_switching_speedups_against_the_published_15_to_31x() -> None:
    ddr = run("sn40l-coe-ddr")["switch_time_s"]
    a100 = run("sn40l-coe-dgx-a100")["switch_time_s"]
    h100 = run("sn40l-coe-dgx-a100", "hardware=dgx-h100-8")["switch_time_s"]
    # published: 31x over DGX A100, 15x over DGX H100 (MICRO 2024 abstract); ours is about half of each (the
    # docs page says why), but the A100 / H100 ratio is the PCIe Gen4 / Gen5 ratio in both: 31 / 15 = 2.07
    assert a100 / h100 == pytest.approx(31 / 15, rel=0.05)
    assert a100 / ddr == pytest.approx(31 / 2, rel=0.15)
    assert h100 / ddr == pytest.approx(15 / 2, rel=0.15)


def test_resident_experts_switch_only_on_cold_misses() -> None:
    # LRU over 4 slots with 4 experts round-robin: each expert is copied once
    s = run("sn40l-coe-ddr", "scenario.coe.experts=4", "scenario.coe.resident=4")
    assert s["switches"] == 4
    # one slot, random order: a switch whenever the expert changes
    seq = load_experiment(EXP / "sn40l-coe-ddr.yaml", ["scenario.coe.order=random", "scenario.coe.seed=3"])
    order = seq.scenario.coe.sequence()
    changes = 1 + sum(a != b for a, b in zip(order, order[1:], strict=False))
    assert seq.run(keep_records=False).summary["switches"] == changes


def test_host_memory_cannot_hold_a_samba_coe_but_the_ddr_tier_can() -> None:
    # 150 experts (Samba-CoE) x 13.5 GB = 2 TB: more than the host's 2 x 512 GiB, well within 8 x 1.5 TiB of DDR
    with pytest.raises(OutOfMemory):
        run("sn40l-coe-host", "scenario.coe.experts=150", "scenario.coe.requests=1")
    assert run("sn40l-coe-ddr", "scenario.coe.experts=150", "scenario.coe.requests=1")["switches"] == 1


def test_a_store_that_matches_nothing_is_one_config_error() -> None:
    with pytest.raises(ConfigError, match="scenario.coe.store|no device matching"):
        run("sn40l-coe-ddr", "scenario.coe.store=ssd*")
    with pytest.raises(ConfigError, match="order"):
        load_experiment(EXP / "sn40l-coe-ddr.yaml", ["scenario.coe.order=fifo"])
