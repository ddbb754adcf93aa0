"""CPU cost model: the closed forms GEMM and attention must reduce to.

Attention on a CPU is costed per computed (query, key) pair:

    time = pairs · (4·d / peak(dtype) + (exp_flops + 4) / peak(fp32)) / eff + launch_overhead

with pairs = batch · heads · score_pairs (the causal mask skips the upper triangle), peak(x) = cores ·
clock · flops_per_cycle[x], eff = efficiency.compute, and the 4 the softmax's other FLOPs per pair (scale,
max, subtract, sum). For fp32 it is pairs · (4·d + exp_flops + 4) / (cores · clock · flops_per_cycle · eff).
"""

from __future__ import annotations

from typing import Any

import pytest

from hardware.cpu import SOFTMAX_FLOPS_PER_PAIR
from simcore import validate
from simcore.ops import Attention, Gemm
from simcore.system import load_system


def cpu(name: str, *overrides: str) -> Any:
    devices = load_system(name, overrides).devices
    assert len(devices) == 1
    return next(iter(devices.values()))


@pytest.fixture(scope="module")
def epyc() -> Any:
    return cpu("epyc-7742")


def test_presets_load_with_the_default_exp_cost(epyc: Any) -> None:
    # the default is the FLOP count of the native kernels' exp, which validate host uses too
    assert epyc.params["exp_flops"] == 26 == validate.NATIVE_EXP_FLOPS
    assert cpu("xeon-8480").params["exp_flops"] == 26
    assert SOFTMAX_FLOPS_PER_PAIR == 4


def test_fp32_attention_closed_form(epyc: Any) -> None:
    b, h, s, d = 2, 16, 4096, 128
    op = Attention("a", "fp32", batch=b, heads=h, kv_heads=h, q_len=s, kv_len=s, head_dim=d, causal=False)
    p = epyc.params
    rate = p["cores"] * p["clock"] * p["flops_per_cycle"]["fp32"] * p["efficiency"]["compute"]
    pairs = b * h * s * s
    cost = epyc.op_cost(op)
    assert cost.bound == "compute"
    expected = pairs * (4 * d + p["exp_flops"] + 4) / rate + p["launch_overhead"]
    assert cost.duration_s == pytest.approx(expected, rel=1e-12)
    # the softmax makes attention slower than its matmul FLOPs alone would be at the GEMM rate
    assert cost.duration_s > op.flops / rate
    assert cost.actions["flop.fp32"] == pytest.approx(pairs * (4 * d + 26 + 4))


def test_causal_attention_counts_only_the_visible_pairs(epyc: Any) -> None:
    s, d = 2048, 64
    full, causal = (
        Attention("a", "fp32", heads=8, kv_heads=8, q_len=s, kv_len=s, head_dim=d, causal=c)
        for c in (False, True)
    )
    p = epyc.params
    rate = p["cores"] * p["clock"] * p["flops_per_cycle"]["fp32"] * p["efficiency"]["compute"]
    t = {op.causal: epyc.op_cost(op).duration_s - p["launch_overhead"] for op in (full, causal)}
    assert t[True] == pytest.approx(8 * s * (s + 1) / 2 * (4 * d + 26 + 4) / rate, rel=1e-12)
    assert t[True] / t[False] == pytest.approx((s + 1) / (2 * s))


def test_exp_flops_is_a_per_architecture_parameter(epyc: Any) -> None:
    op = Attention("a", "fp32", heads=8, kv_heads=8, q_len=1024, kv_len=1024, head_dim=64, causal=False)
    slow = cpu("epyc-7742", "exp_flops=46")
    p = epyc.params
    rate = p["cores"] * p["clock"] * p["flops_per_cycle"]["fp32"] * p["efficiency"]["compute"]
    extra = slow.op_cost(op).duration_s - epyc.op_cost(op).duration_s
    assert extra == pytest.approx(8 * 1024 * 1024 * 20 / rate, rel=1e-9)


def test_bf16_matmuls_use_amx_and_the_softmax_stays_on_fp32_simd() -> None:
    xeon = cpu("xeon-8480")
    b, h, s, d = 4, 32, 2048, 128
    op = Attention("a", "bf16", batch=b, heads=h, kv_heads=8, q_len=s, kv_len=s, head_dim=d, causal=False)
    p = xeon.params
    base = p["cores"] * p["clock"] * p["efficiency"]["compute"]
    pairs = b * h * s * s
    matmul = pairs * 4 * d / (base * p["flops_per_cycle"]["bf16"])
    softmax = pairs * (p["exp_flops"] + 4) / (base * p["flops_per_cycle"]["fp32"])
    cost = xeon.op_cost(op)
    assert cost.duration_s == pytest.approx(matmul + softmax + p["launch_overhead"], rel=1e-12)
    assert cost.actions["flop.bf16"] == pytest.approx(pairs * 4 * d)
    assert cost.actions["flop.fp32"] == pytest.approx(pairs * (p["exp_flops"] + 4))


def test_decode_attention_is_memory_bound(epyc: Any) -> None:
    op = Attention("a", "fp32", batch=1, heads=32, kv_heads=8, q_len=1, kv_len=32768, head_dim=128)
    cost = epyc.op_cost(op)
    assert cost.bound == "memory"
    assert cost.duration_s == pytest.approx(
        op.bytes / epyc.memory_bandwidth_Bps + epyc.params["launch_overhead"]
    )


def test_gemm_keeps_its_closed_form(epyc: Any) -> None:
    op = Gemm("g", "fp32", m=4096, n=4096, k=4096)
    p = epyc.params
    rate = p["cores"] * p["clock"] * p["flops_per_cycle"]["fp32"] * p["efficiency"]["compute"]
    cost = epyc.op_cost(op)
    assert cost.bound == "compute"
    assert cost.duration_s == pytest.approx(2 * 4096**3 / rate + p["launch_overhead"], rel=1e-12)


def test_a_compute_bound_cpu_gemm_draws_most_of_the_tdp() -> None:
    # As for GPUs: at its SIMD peak a CPU is power-limited near its TDP (spec sheet); at the achievable
    # fraction of peak the average power must land between a third of TDP and TDP.
    from simcore.oprun import op_report
    from simcore.ops import Gemm
    from simcore.system import load_system

    cpu = load_system("xeon-8480").devices["cpu"]
    watts = op_report(load_system("xeon-8480"), Gemm("g", "fp32", m=4096, n=4096, k=4096))["power_w"]
    assert cpu.params["power"]["tdp"] / 3 < watts <= cpu.params["power"]["tdp"]
