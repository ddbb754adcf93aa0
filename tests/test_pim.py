"""Processing in memory (hardware/pim.py): the bank-parallel closed form of a GEMV and of decode attention,
the mode switch each op pays, the presets' peak figures against their papers, and the sharing rule with a
host."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from hardware.pim import PIM
from simcore.errors import ConfigError
from simcore.ops import Attention, Gemm
from simcore.system import load_system


def pim(name: str, *overrides: str) -> PIM:
    return next(iter(load_system(name, overrides).devices.values()))


#: HBM-PIM's mode switch per op: SB -> AB -> AB-PIM -> AB -> SB, four ACT / write / PRE cycles to reserved
#: rows (Lee et al. ISCA 2021; Samsung PIMSimulator PIMKernel::changePIMMode), each at least a row cycle
#: tRAS + tRP of the HBM2 part (DRAMsim3 HBM2_8Gb_x128.ini: tRAS 34 ns, tRP 14 ns)
HBM_PIM_SWITCH_S = 4 * (34e-9 + 14e-9)


def test_hbm_pim_has_128_units_and_1_2_tflops():
    # Kwon et al. ISSCC 2021: 128 PCUs (one per two banks of the 4 PIM dies), 16 FP16 lanes, 300 MHz,
    # "1.2 TFLOPS"; the step is the HBM2's tCCD_L at 2.4 Gbps (4 tCK = 3.33 ns)
    p = pim("hbm-pim")
    assert p.units == 128
    assert p.peak_flops == pytest.approx(1.2e12, rel=0.03)


def test_aim_has_one_tflops_per_chip():
    # Lee et al. ISSCC 2022: 32 banks x 16 BF16 MACs at 1 GHz, "1TFLOPS"
    p = pim("gddr6-aim")
    assert p.units == 32
    assert p.peak_flops == pytest.approx(1.0e12, rel=0.03)


def test_attacc_bank_pim_reads_9x_the_external_bandwidth():
    # AttAcc simulator src/config.py: BW_SCALE[power_constraint][BA] = 9 (bank-level PIM with the
    # power-constrained all-bank MAC interval); ours: 32 banks per pseudo-channel, a 32 B column every
    # nCCDAB = 4.615 ns, a 28.8 ns row switch every 32 columns
    p = pim("attacc-hbm3-pim")
    assert p.internal_Bps / p.external_Bps == pytest.approx(9.0, rel=0.02)


def test_gemv_time_is_the_bank_parallel_closed_form_exactly():
    p = pim("hbm-pim")
    n = k = 4096
    steps = math.ceil(n / (128 * 16)) * k  # 2 rows per lane, all of k
    rows = math.ceil(steps * 16 * 2 / 1024)  # 1 KiB rows of 16 x fp16 columns
    t_in = k * 2 / (64 * 0.3e9)  # x broadcast to every pseudo-channel: 64 pins at 2.4 Gbit/s
    t_out = n * 2 / 307.2e9
    closed = t_in + steps * p.step_s + rows * (14e-9 + 14e-9) + t_out  # step tCCD_L, switch tRP + tRCD
    cost = p.op_cost(Gemm("w", "fp16", m=1, n=n, k=k))
    assert (steps, rows) == (8192, 256)
    assert p.step_s == pytest.approx(3.3333e-9, rel=1e-4)
    assert p.mode_switch_s == pytest.approx(HBM_PIM_SWITCH_S, rel=1e-12)  # 192 ns
    assert cost.duration_s == pytest.approx(closed + HBM_PIM_SWITCH_S, rel=1e-12)
    assert cost.detail["t_mode_s"] == pytest.approx(HBM_PIM_SWITCH_S, rel=1e-12)
    assert cost.actions["mac.fp16"] == n * k


@pytest.mark.parametrize(
    ("preset", "dtype", "tras_trp_s"),
    [
        ("hbm-pim", "fp16", 34e-9 + 14e-9),  # hbm2.yaml (DRAMsim3 HBM2_8Gb_x128.ini)
        (
            "gddr6-aim",
            "bf16",
            30.21e-9 + 14.82e-9,
        ),  # gddr6.yaml (Ramulator 2 GDDR6 nRAS 53, nRP 26 x 0.570 ns)
        ("attacc-hbm3-pim", "fp16", 34.38e-9 + 14.38e-9),  # hbm3.yaml (AttAcc HBM3-PIM.cpp nRAS 55, nRP 23)
    ],
)
def test_each_op_pays_one_mode_switch_and_zero_gives_the_bare_closed_form(
    preset: str, dtype: str, tras_trp_s: float
) -> None:
    """The switch defaults to four row cycles of the preset's DRAM; one op pays it once whatever its batch
    (the m GEMVs run in one PIM-mode session); `mode_switch: 0 ns` gives the bank-parallel closed form alone,
    bit for bit."""
    p, bare = pim(preset), pim(preset, "mode_switch=0 ns")
    assert p.mode_switch_s == pytest.approx(4 * tras_trp_s, rel=1e-12)
    assert bare.mode_switch_s == 0.0
    for m in (1, 8):
        op = Gemm("w", dtype, m=m, n=4096, k=1024)
        plan = p.gemv_plan(4096, 1024, 2)
        assert bare.op_cost(op).duration_s == plan.time_s * m  # exactly: nothing else is added
        cost = p.op_cost(op)
        assert cost.duration_s == pytest.approx(plan.time_s * m + 4 * tras_trp_s, rel=1e-12)
        # the banks are the host's no longer from entering PIM mode to leaving it
        assert cost.dram_bytes == pytest.approx(cost.duration_s * p.memory_bandwidth_Bps, rel=1e-12)
        assert cost.actions == bare.op_cost(op).actions


def test_mode_switch_is_stated_or_refused_in_one_line() -> None:
    assert pim("hbm-pim", "mode_switch=1 us").mode_switch_s == pytest.approx(1e-6)
    with pytest.raises(ConfigError, match="mode_switch"):
        pim("hbm-pim", "mode_switch=-5 ns")
    with pytest.raises(ConfigError, match="mode_switch"):
        pim("hbm-pim", "mode_switch=200")  # a bare number: the unit is required


def test_a_batch_of_vectors_is_that_many_gemvs():
    p = pim("gddr6-aim")
    one = p.op_cost(Gemm("w", "bf16", m=1, n=1024, k=1024)).duration_s - p.mode_switch_s
    eight = p.op_cost(Gemm("w", "bf16", m=8, n=1024, k=1024)).duration_s
    assert eight == pytest.approx(8 * one + p.mode_switch_s)  # one mode switch for the whole batch


def test_short_outputs_split_k_and_leave_partial_sums_to_the_host():
    p = pim("hbm-pim")
    plan = p.gemv_plan(n=64, k=4096, elem_B=2)
    assert plan.splits == 128 * 16 // 64
    assert plan.out_B == 64 * plan.splits * 2


def test_decode_attention_is_two_gemvs_and_a_softmax():
    p = pim("attacc-hbm3-pim")
    op = Attention("a", "fp16", batch=4, heads=32, kv_heads=8, q_len=1, kv_len=2048, head_dim=128)
    inst, pcs = 4 * 8, p.pseudo_channels
    score = p.gemv_plan(inst * 2048, 128, 2, max(128 * 2, inst * 128 * 2 / pcs))
    value = p.gemv_plan(inst * 128, 2048, 2, max(2048 * 2, inst * 2048 * 2 / pcs))
    softmax = 2 * 4 * 32 * 2048 * 2 / 3.352e12
    switch = 4 * (34.38e-9 + 14.38e-9)  # one mode switch for the op: 4 row cycles of hbm3.yaml
    cost = p.op_cost(op)
    assert cost.duration_s == pytest.approx(4 * (score.time_s + value.time_s) + softmax + switch, rel=1e-12)
    assert cost.actions["mac.fp16"] == 2 * 4 * 32 * 2048 * 128


def test_pim_holds_the_memory_while_it_computes():
    # mode switching: an op's DRAM traffic is its duration at the memory's sustained bandwidth, so a host
    # kernel on the same memory port shares it with the PIM op (flows, max-min fair)
    p = pim("hbm-pim")
    cost = p.op_cost(Gemm("w", "fp16", m=1, n=4096, k=4096))
    assert cost.dram_bytes == pytest.approx(cost.duration_s * p.memory_bandwidth_Bps)


def test_pim_refuses_what_it_cannot_run():
    with pytest.raises(ConfigError, match="fp16 only"):
        pim("hbm-pim").op_cost(Gemm("w", "bf16", m=1, n=64, k=64))
    with pytest.raises(ConfigError, match="no softmax unit"):
        pim("hbm-pim").op_cost(Attention("a", "fp16", heads=8, kv_heads=8, q_len=1, kv_len=64))
    with pytest.raises(ConfigError, match="q_len 1"):
        pim("attacc-hbm3-pim").op_cost(Attention("a", "fp16", heads=8, kv_heads=8, q_len=4, kv_len=64))


def test_energy_prices_every_action():
    p = pim("attacc-hbm3-pim")
    prices = p.energy_per_action_J()
    assert prices["pim.bank.byte"] == pytest.approx(8 * 0.37e-12)
    assert prices["pim.act"] == pytest.approx(0.75e-9)
    assert prices["mac.fp16"] > 0


def _simcore(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simcore", *args], capture_output=True, text=True)


def test_cli_gemv_on_hbm_pim_and_params():
    r = _simcore("op", "gemm", "--hw", "hbm-pim", "-m", "1", "-n", "4096", "-k", "4096", "--dtype", "fp16",
                 "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bound"] == "memory"
    r = _simcore("op", "gemm", "--hw", "hbm-pim", "-m", "1", "-n", "4096", "-k", "4096")  # bf16 default
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    keys = [row["key"] for row in json.loads(_simcore("hw", "params", "pim", "--json").stdout)]
    assert {"memory.dram", "banks_per_unit", "lanes", "step", "mode_switch", "softmax.bandwidth"} <= set(keys)
