"""Energy tables: published anchors come back exactly, scaling follows the node table."""

from __future__ import annotations

import math

import pytest

from simcore.energy import EnergyTable, energy_breakdown, energy_table, load_energy_table
from simcore.errors import ConfigError

PJ = 1e-12


@pytest.fixture(scope="module")
def t45() -> EnergyTable:
    return energy_table()


def test_table_is_stated_at_45nm_with_horowitz_mac_energies(t45: EnergyTable) -> None:
    # Horowitz ISSCC'14: fp32 mult 3.7 pJ + fp32 add 0.9 pJ; int8 mult 0.2 pJ + int32 add 0.1 pJ
    assert t45.node_nm == 45
    assert t45.mac_J("fp32") == pytest.approx(4.6 * PJ)
    assert t45.mac_J("int8") == pytest.approx(0.3 * PJ)
    assert t45.flop_J("fp16") == pytest.approx(t45.mac_J("fp16") / 2)
    # narrower formats cost less: the multiplier shrinks with the significand width
    order = ["fp32", "tf32", "fp16", "bf16", "fp8"]
    macs = [t45.mac_J(d) for d in order]
    assert macs[0] > macs[1] >= macs[2] > macs[3] > macs[4] > t45.mac_J("int8") * 0.5


def test_unknown_dtype_is_a_one_line_error(t45: EnergyTable) -> None:
    with pytest.raises(ConfigError, match="known: fp32"):
        t45.mac_J("fp7")


def test_sram_log_interpolation_hits_anchors_exactly(t45: EnergyTable) -> None:
    # Horowitz ISSCC'14 64-bit reads: 8 KB 10 pJ, 32 KB 20 pJ, 1 MB 100 pJ -> per byte / 8
    for size, pj in [(8 * 1024, 10), (32 * 1024, 20), (1024 * 1024, 100)]:
        assert t45.sram_J_per_byte(size) == pytest.approx(pj / 8 * PJ, rel=1e-12)
    # halfway in log(size) between 8 and 32 KiB is the geometric mean of the two energies
    assert t45.sram_J_per_byte(16 * 1024) == pytest.approx(math.sqrt(1.25 * 2.5) * PJ)
    # writes cost more than reads; bigger arrays cost more per byte, also outside the anchors
    assert t45.sram_J_per_byte(32 * 1024, write=True) > t45.sram_J_per_byte(32 * 1024)
    sizes = [512, 8 * 1024, 100 * 1024, 1 << 20, 32 << 20]
    e = [t45.sram_J_per_byte(s) for s in sizes]
    assert e == sorted(e)
    # below the first anchor the 8->32 KiB slope (energy ~ sqrt(size)) continues
    assert t45.sram_J_per_byte(2 * 1024) == pytest.approx(1.25 / 2 * PJ)


def test_dram_and_link_tables(t45: EnergyTable) -> None:
    assert t45.dram_J_per_byte("hbm2") == pytest.approx(8 * 3.9 * PJ)  # O'Connor et al. MICRO'17
    assert t45.dram_J_per_byte("GDDR6") == pytest.approx(8 * 7.5 * PJ)
    for t in ["ddr4", "ddr5", "lpddr4", "lpddr5", "gddr6", "gddr6x", "hbm2", "hbm2e", "hbm3", "hbm3e"]:
        assert t45.dram_J_per_byte(t) > 0
    # newer generations of a family move a bit for less
    assert t45.dram_J_per_byte("hbm3e") < t45.dram_J_per_byte("hbm3") < t45.dram_J_per_byte("hbm2")
    assert t45.dram_J_per_byte("hbm3") < t45.dram_J_per_byte("gddr6") < t45.dram_J_per_byte("ddr4")
    for t in ["pcie3", "pcie4", "pcie5", "pcie6", "nvlink2", "nvlink3", "nvlink4", "nvlink5", "on_package"]:
        assert t45.link_J_per_bit(t) > 0
    assert t45.link_J_per_bit("on-package") < t45.link_J_per_bit("nvlink4") < t45.link_J_per_bit("pcie4")
    with pytest.raises(ConfigError, match="memory type"):
        t45.dram_J_per_byte("sdram")


def stillmaker(a: tuple[float, float, float], v: float) -> float:
    return a[0] * v * v + a[1] * v + a[2]


def test_scaling_45_to_7nm_uses_the_stillmaker_baas_factor(t45: EnergyTable) -> None:
    # Stillmaker & Baas 2017 Table 5 energy polynomials at nominal Vdd (node_scaling.yaml)
    f = stillmaker((0.1776, -0.09097, 0.02447), 0.80) / stillmaker((1.018, -0.3107, 0.1539), 1.10)
    t7 = t45.scaled(7)
    assert t7.node_nm == 7
    assert t45.node_factor(7) == pytest.approx(f)
    assert t7.mac_J("bf16") == pytest.approx(t45.mac_J("bf16") * f)
    assert t7.sram_J_per_byte(64 * 1024) == pytest.approx(t45.sram_J_per_byte(64 * 1024) * f)
    assert t7.regfile_J_per_byte() == pytest.approx(t45.regfile_J_per_byte() * f)
    # off-chip memory and links belong to their own generation: unchanged
    assert t7.dram_J_per_byte("hbm2") == t45.dram_J_per_byte("hbm2")
    assert t7.link_J_per_bit("pcie4") == t45.link_J_per_bit("pcie4")
    # scaling composes: 45 -> 16 -> 7 equals 45 -> 7
    assert t45.scaled(16).scaled(7).mac_J("fp16") == pytest.approx(t7.mac_J("fp16"))


def test_scaling_below_7nm_and_between_nodes(t45: EnergyTable) -> None:
    # TSMC claims: N5 = 0.70 x N7, N4P = 0.78 x N5
    assert t45.node_factor(5) == pytest.approx(t45.node_factor(7) * 0.70)
    assert t45.node_factor(4) == pytest.approx(t45.node_factor(7) * 0.70 * 0.78)
    # 28 nm lies between 32 and 20 nm on a log-log line; 12 nm between 14 and 10
    f = [t45.node_factor(n) for n in (45, 32, 28, 20, 16, 12, 7, 5, 4)]
    assert f == sorted(f, reverse=True)
    assert f[0] == 1.0
    with pytest.raises(ConfigError, match="outside"):
        t45.node_factor(1)


def test_energy_table_cache_returns_scaled_tables() -> None:
    assert energy_table(7) is energy_table(7.0)
    assert energy_table(7).mac_J("fp16") == pytest.approx(energy_table().scaled(7).mac_J("fp16"))


def test_breakdown_multiplies_counts_by_prices(t45: EnergyTable) -> None:
    prices = {**t45.compute_actions(), "dram.byte": t45.dram_J_per_byte("hbm2")}
    actions = {"mac.bf16": 1e9, "dram.byte": 1e6, "link.bit": 8.0}
    b = energy_breakdown(actions, prices, static_W=10.0, duration_s=1e-3)
    assert b.by_action_J["mac.bf16"] == pytest.approx(1e9 * t45.mac_J("bf16"))
    assert b.by_action_J["dram.byte"] == pytest.approx(1e6 * 31.2 * PJ)
    assert b.unpriced == ("link.bit",)
    assert b.static_J == pytest.approx(1e-2)
    assert b.total_J == pytest.approx(b.dynamic_J + 1e-2)


def test_broken_table_names_file_and_key(tmp_path) -> None:
    import shutil

    from simcore.energy import ENERGY_DIR

    for p in ENERGY_DIR.glob("*.yaml"):
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "dram.yaml").write_text("hbm2: -3.9\n")
    with pytest.raises(ConfigError, match=r"dram.yaml:1: hbm2: expected a positive number"):
        load_energy_table(tmp_path)


def test_idle_pe_cycle_is_a_stated_fraction_of_a_mac(t45: EnergyTable) -> None:
    # compute.yaml: pe_idle_fraction_of_mac (clocked registers of a gated PE)
    assert t45.pe_idle_J("int8") == pytest.approx(t45.pe_idle_fraction * t45.mac_J("int8"))
    assert 0 < t45.pe_idle_fraction < 1
    assert t45.scaled(7).pe_idle_J("bf16") == pytest.approx(t45.pe_idle_J("bf16") * t45.node_factor(7))
