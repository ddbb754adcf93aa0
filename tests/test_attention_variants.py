"""Attention kernels as named implementations (hardware.gpu.ATTENTION_KERNELS): each kernel's schedule in
closed form, the selection rules, and each kernel's accuracy on the A100 forward+backward rows of
shared/calibration/attention_a100.csv (flash-attention's flash2_a100_fwd_bwd_benchmark.png, the A100
figure of the FlashAttention-2 paper): median |error| <= 8 % per kernel."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest

from hardware.gpu import ATTENTION_KERNELS, FA2, FlashKernel, UnfusedKernel, by_head_dim, num_splits_heuristic
from simcore.errors import ConfigError
from simcore.ops import Attention, AttentionGrad
from simcore.system import load_system
from simcore.validate.rows import Simulator, attention_kernel_of, load_rows

CSV = Path(__file__).resolve().parents[2] / "shared" / "calibration" / "attention_a100.csv"


@pytest.fixture(scope="module")
def a100() -> Any:
    return load_system("a100-sxm4-80gb").devices["gpu"]


@pytest.fixture(scope="module")
def h100() -> Any:
    return load_system("h100-sxm5-80gb").devices["gpu"]


def _pair(kernel: str, s: int = 2048, b: int = 8, h: int = 32, d: int = 64, causal: bool = False,
          dtype: str = "fp16") -> tuple[Attention, AttentionGrad]:  # fmt: skip
    shape = {"batch": b, "heads": h, "kv_heads": h, "q_len": s, "kv_len": s, "head_dim": d, "causal": causal}
    return (Attention("a", dtype, kernel=kernel, **shape), AttentionGrad("g", dtype, kernel=kernel, **shape))


# ---------------------------------------------------------------------------------------- registry


def test_every_kernel_is_named_once_with_its_sources_and_one_efficiency() -> None:
    assert {"fa2", "fa1", "triton", "xformers", "standard", "sdpa-math", "fa3"} <= set(ATTENTION_KERNELS)
    for name, k in ATTENTION_KERNELS.items():
        assert name == k.name or (name == "sdpa-math" and k.name == "standard")
        assert isinstance(k, FlashKernel | UnfusedKernel)
        assert k.source and k.efficiency_source
        assert 0.0 < k.efficiency <= 1.0
    assert ATTENTION_KERNELS["fa2"] is FA2 and FA2.efficiency == 1.0  # the model as it was


def test_the_default_kernel_is_flashattention_2(a100: Any) -> None:
    fwd, bwd = _pair("fa2")
    assert Attention("a").kernel == "fa2"
    plain = Attention("a", "fp16", batch=8, heads=32, kv_heads=32, q_len=2048, kv_len=2048, head_dim=64,
                      causal=False)  # fmt: skip
    assert plain.signature() == fwd.signature()  # one op, one cost
    assert fwd.with_kv_len(4096).kernel == "fa2"
    assert _pair("fa1")[0].with_kv_len(4096).kernel == "fa1"  # a decode template keeps its kernel


def test_unknown_kernel_and_fa3_before_hopper_are_one_line_errors(a100: Any, h100: Any) -> None:
    for name, words in (
        ("fa9", ("unknown attention kernel", "fa2")),
        ("fa3", ("needs a hopper GPU", "ampere")),
    ):
        fwd, _ = _pair(name)
        with pytest.raises(ConfigError) as e:
            a100.op_cost(fwd)
        assert e.value.key == "kernel" and "\n" not in str(e.value)
        assert all(w in str(e.value) for w in words)
    assert h100.op_cost(_pair("fa3", dtype="bf16")[0]).duration_s > 0


def test_decode_keeps_its_model_whatever_the_kernel(a100: Any) -> None:
    step = {"batch": 8, "heads": 32, "kv_heads": 8, "q_len": 1, "kv_len": 4096, "head_dim": 128}
    base = a100.op_cost(Attention("d", "fp16", **step))
    for name in ("fa1", "triton", "xformers", "standard"):
        cost = a100.op_cost(Attention("d", "fp16", kernel=name, **step))
        assert (cost.duration_s, cost.dram_bytes, cost.actions) == (
            base.duration_s,
            base.dram_bytes,
            base.actions,
        )


# ------------------------------------------------------------------------------------ closed forms


def test_standard_attention_writes_and_reads_the_score_matrix(a100: Any) -> None:
    b, h, s, d, e = 4, 32, 4096, 64, 2
    score_B = b * h * s * s * e
    fwd, bwd = _pair("standard", s=s, b=b, h=h, d=d)
    f, g = a100.op_cost(fwd), a100.op_cost(bwd)
    # forward: Q·Kᵀ writes S, the softmax reads S and writes P, P·V reads P: 4 passes over b·h·s² elements;
    # the rest (Q, K, V, O and their layout copies) is 6 % of S here (d / s = 1/64)
    assert 4 * score_B <= f.dram_bytes <= 4.4 * score_B
    # backward: dP written, P read by dV, P and dP read and dS written by the softmax backward, dS read by dQ
    # and by dK: 7 passes
    assert 7 * score_B <= g.dram_bytes <= 7.6 * score_B
    # a causal mask is added, not skipped: one more pass reading the scores and the mask, writing the sum
    fc = a100.op_cost(_pair("standard", s=s, b=b, h=h, d=d, causal=True)[0])
    assert fc.dram_bytes - f.dram_bytes == pytest.approx(3 * score_B, rel=1e-12)
    assert fc.actions["flop.fp16"] == f.actions["flop.fp16"]  # every (query, key) pair is computed
    # and it is memory-bound: slower than the fused kernels on the same shape
    assert f.duration_s > 3 * a100.op_cost(_pair("fa2", s=s, b=b, h=h, d=d)[0]).duration_s


def test_fa1_and_fa2_do_the_same_matmul_flops_fa1_more_bookkeeping_and_dram(a100: Any) -> None:
    b, h, s, d, e = 8, 32, 2048, 64, 2
    (f1, g1), (f2, g2) = _pair("fa1", s=s, b=b, h=h, d=d), _pair("fa2", s=s, b=b, h=h, d=d)
    c1, c2, d1, d2 = a100.op_cost(f1), a100.op_cost(f2), a100.op_cost(g1), a100.op_cost(g2)
    assert c1.actions["flop.fp16"] == c2.actions["flop.fp16"] == 4 * b * h * s * s * d
    assert d1.actions["flop.fp16"] == d2.actions["flop.fp16"] == 10 * b * h * s * s * d
    # backward bookkeeping: 7 fp32 FLOPs + 1 exp per pair against FlashAttention-2's 6 + 1 (m and l apart)
    assert d1.actions["flop.fp32"] / d2.actions["flop.fp32"] == pytest.approx(8 / 7)
    # forward: per extra rescale 2·d/Bk FLOPs per pair (256 keys per block at head_dim 64)
    assert c1.actions["flop.fp32"] - c2.actions["flop.fp32"] == pytest.approx(2 * d / 256 * b * h * s * s)
    # key blocks are the outer loop: every row's fp32 O (8·d bytes read and written), Q (d·e) and m, l (16)
    # move once per key block after the first (s / 256 = 8 blocks)
    blocks = s // 256
    assert c1.dram_bytes - c2.dram_bytes == pytest.approx(b * h * s * (blocks - 1) * (8 * d + 16 + d * e))
    # and FlashAttention v1 is the slower one, as its paper's successor measured
    assert c1.duration_s + d1.duration_s > 1.3 * (c2.duration_s + d2.duration_s)


def test_fa1_splits_each_head_along_the_queries_to_fill_whole_waves() -> None:
    # flash-attn v1 num_splits_heuristic_fwd: 48 (batch, head) CTAs on 108 SMs: 9 splits make 432 CTAs =
    # 4 whole waves (efficiency 1); no fewer splits reach 95 % of that (2: 0.89, 4: 0.89, 8: 0.89)
    assert num_splits_heuristic(48, 108, 1, 30) == 9
    assert num_splits_heuristic(216, 108, 2, 30) == 1  # already one whole wave


def test_block_tables_follow_the_kernels_tiles() -> None:
    assert [by_head_dim(FA2.block_q, d) for d in (64, 128, 256)] == [128, 128, 64]
    assert [by_head_dim(FA2.block_k, d) for d in (64, 128, 256)] == [128, 64, 64]
    fa1, fa3 = ATTENTION_KERNELS["fa1"], ATTENTION_KERNELS["fa3"]
    assert isinstance(fa1, FlashKernel) and isinstance(fa3, FlashKernel)
    assert [by_head_dim(fa1.block_k, d) for d in (64, 128)] == [256, 128]  # fmha_fwd_hdim64/128.cu
    assert [by_head_dim(fa3.block_q, d) for d in (64, 128, 256)] == [192, 128, 128]  # FA3 paper §4.1
    assert [by_head_dim(fa3.block_k, d) for d in (64, 128, 256)] == [128, 128, 80]


def test_fa3_on_hopper_overlaps_softmax_and_stays_under_its_published_peak(h100: Any) -> None:
    fwd3, bwd3 = _pair("fa3", s=16384, b=2, h=16, d=256, dtype="bf16")
    fwd2, bwd2 = _pair("fa2", s=16384, b=2, h=16, d=256, dtype="bf16")
    tflops = fwd3.flops / h100.op_cost(fwd3).duration_s / 1e12
    # FlashAttention-3 paper (Shah et al. 2024) abstract: up to 740 TFLOP/s FP16 forward on H100 SXM5
    assert tflops == pytest.approx(740, rel=0.03)
    assert h100.op_cost(fwd3).duration_s < 0.85 * h100.op_cost(fwd2).duration_s  # 1.5-2x in the paper
    assert h100.op_cost(bwd3).duration_s < h100.op_cost(bwd2).duration_s


# --------------------------------------------------------------------------- accuracy per kernel


def test_published_implementation_names_map_to_their_kernels() -> None:
    names = {"FlashAttention-2": "fa2", "Flash Attention 2.0": "fa2", "FlashAttention": "fa1",
             "FlashAttention Triton": "triton", "xformers": "xformers", "PyTorch": "standard",
             "Standard Attention(PyTorch)": "standard", "SDPA, flash backend (torch 2.4)": "fa2",
             "SDPA, backend chosen by PyTorch": "fa2", "SDPA, math backend": "standard",
             "SDPA, mem_efficient backend": "xformers", "FlashAttention-3": "fa3"}  # fmt: skip
    assert {n: attention_kernel_of(n) for n in names} == names
    assert attention_kernel_of("cuDNN fused attention") is None


@pytest.mark.skipif(not CSV.is_file(), reason="shared calibration data not present")
def test_each_kernel_meets_its_target_on_the_a100_rows() -> None:
    rows = load_rows(CSV, Simulator())
    errors: dict[str, list[float]] = {}
    for r in rows:
        if r.mapped and r.predict is not None:
            r.predicted, r.bound = r.predict()
            errors.setdefault(r.kernel, []).append(abs(r.error))
    # every implementation of the figure is simulated: 24 rows each, less the 4 PyTorch rows that ran out
    # of memory in the source and FlashAttention-2's hidden d128 s512 bar
    assert {k: len(v) for k, v in errors.items()} == {"fa2": 23, "fa1": 24, "triton": 24, "xformers": 24,
                                                      "standard": 20}  # fmt: skip
    medians = {k: statistics.median(v) for k, v in errors.items()}
    assert all(m <= 0.08 for m in medians.values()), medians  # issue 10: median <= 8 % per kernel
    assert medians["fa2"] == pytest.approx(0.049, abs=0.002)  # FlashAttention-2 as before the variants
    unmapped = {r.reason for r in rows if not r.mapped}
    assert unmapped == {"no measured value (out of memory in the source)",
                        "pass not stated in the source (its script reports fwd+bwd totals)"}  # fmt: skip
