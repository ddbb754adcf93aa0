"""The GPU model's own decompositions, executed on real numbers with the native reference kernels.

The cost model only counts tiles, waves, split-K chunks and flash work units; these tests make it *run*
them. The GEMM plan the model picks (GPU.gemm_plan: tile_m, tile_n, split_k) is replayed CTA by CTA in
dispatch order, wave by wave, each CTA writing its K-chunk's partial tile with native.gemm_tile; a counter
array records every write. The partials must sum to numpy's product and every output element must be
written exactly once per K-chunk, so an off-by-one in the tiling (a missed remainder tile, an overlapping
or short K-chunk) shows up as a wrong matrix or a count other than one. Likewise the flash-attention
blocking the model costs (block_q rows per unit, units = batch x heads x query blocks) is replayed unit by
unit with native.flash_attention_unit and must equal plain attention, each query row written once.

Work is done in float64 so the only difference from numpy is summation order: ~sqrt(K)·eps relative.
"""

from __future__ import annotations

import numpy as np
import pytest

from simcore import native
from simcore.ops import Attention, Gemm, ceil_div
from simcore.system import load_system


def gpu(preset: str):
    return next(iter(load_system(preset).devices.values()))


# Small shapes that make the model pick, between them, remainder tiles on both edges, several waves (on
# the 16-SM Orin and the 40-SM T4) and split-K (a long K with a single output tile).
GEMM_CASES = [
    ("a100-sxm4-80gb", 333, 257, 1025),
    ("a100-sxm4-80gb", 64, 64, 16384),
    ("a100-sxm4-80gb", 8, 1000, 2048),
    ("t4", 1100, 700, 96),
    ("jetson-agx-orin-64gb", 1100, 900, 200),
    ("h100-sxm5-80gb", 129, 4097, 256),
]


def replay_gemm(plan, a: np.ndarray, b: np.ndarray, slots: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Run every CTA of `plan` (dispatch order: K-chunk, then tile row, then tile column), wave by wave."""
    (m, k), n = a.shape, b.shape[1]
    tm, tn, split = plan.tile_m, plan.tile_n, plan.split_k
    k_cta = ceil_div(k, split)
    ctas = [(s, i, j) for s in range(split) for i in range(ceil_div(m, tm)) for j in range(ceil_div(n, tn))]
    partials = np.full((split, m, n), np.nan)  # poisoned: an element no CTA writes stays NaN
    writes = np.zeros((split, m, n), dtype=np.int64)
    k_cover = np.zeros(k, dtype=np.int64)
    wave_sizes = []
    for w in range(ceil_div(len(ctas), slots)):
        wave = ctas[w * slots : (w + 1) * slots]
        wave_sizes.append(len(wave))
        for s, i, j in wave:
            m0, m1 = i * tm, min((i + 1) * tm, m)
            n0, n1 = j * tn, min((j + 1) * tn, n)
            k0, k1 = s * k_cta, min((s + 1) * k_cta, k)
            native.gemm_tile(a, b, partials[s], m0, m1, n0, n1, k0, k1, accumulate=False)
            writes[s, m0:m1, n0:n1] += 1
            if i == 0 and j == 0:
                k_cover[k0:k1] += 1
    assert (k_cover == 1).all(), "the K-chunks must cover [0, K) exactly once"
    return partials.sum(axis=0), writes, wave_sizes


@pytest.mark.parametrize(("preset", "m", "n", "k"), GEMM_CASES)
def test_the_gemm_plan_replayed_tile_by_tile_is_the_product(preset: str, m: int, n: int, k: int) -> None:
    dev = gpu(preset)
    plan = dev.gemm_plan(Gemm("g", "fp16", m=m, n=n, k=k))
    rng = np.random.default_rng(m * 7919 + n * 31 + k)
    a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    c, writes, wave_sizes = replay_gemm(plan, a, b, plan.slots)
    what = f"{preset} {m}x{n}x{k}: tile {plan.tile_m}x{plan.tile_n}, split-K {plan.split_k}"
    # the plan's own counts are the ones the replay enumerated
    assert plan.ctas == len(writes) * ceil_div(m, plan.tile_m) * ceil_div(n, plan.tile_n), what
    assert plan.waves == len(wave_sizes), what
    assert all(0 < size <= plan.slots for size in wave_sizes), what
    assert (writes == 1).all(), f"{what}: each element must be written exactly once per K-chunk"
    np.testing.assert_allclose(c, a @ b, rtol=1e-10, atol=1e-10 * np.sqrt(k), err_msg=what)


def test_the_cases_exercise_remainders_waves_and_split_k() -> None:
    plans = [(gpu(p).gemm_plan(Gemm("g", "fp16", m=m, n=n, k=k)), m, n) for p, m, n, k in GEMM_CASES]
    assert any(p.split_k > 1 for p, _, _ in plans)
    assert any(p.waves > 1 for p, _, _ in plans)
    assert any(m % p.tile_m and n % p.tile_n for p, m, n in plans)


def test_the_busiest_sm_gets_ceil_ctas_over_sms() -> None:
    # The compute time charges the busiest SM ceil(CTAs / SMs) tiles: what a scheduler that always hands the
    # next CTA to the least-loaded SM produces.
    for preset, m, n, k in GEMM_CASES:
        dev = gpu(preset)
        plan = dev.gemm_plan(Gemm("g", "fp16", m=m, n=n, k=k))
        load = np.zeros(dev.sms, dtype=np.int64)
        for _ in range(plan.ctas):
            load[np.argmin(load)] += 1
        assert load.max() == ceil_div(plan.ctas, dev.sms)
        assert load.sum() == plan.ctas


# ------------------------------------------------------------------------------------------- attention

ATTENTION_CASES = [
    # (preset, batch, heads, kv_heads, q_len, kv_len, head_dim, causal)
    ("a100-sxm4-80gb", 2, 4, 2, 300, 300, 64, True),  # GQA, 3 query blocks of 128 (the last one partial)
    ("a100-sxm4-80gb", 1, 2, 2, 200, 260, 32, True),  # causal mask aligned to the end of a longer kv
    ("h100-sxm5-80gb", 1, 3, 1, 130, 130, 160, False),  # head_dim > 128: blocks of 64
]


@pytest.mark.parametrize(
    ("preset", "batch", "heads", "kv_heads", "q_len", "kv_len", "d", "causal"), ATTENTION_CASES
)
def test_the_flash_blocking_replayed_unit_by_unit_is_attention(
    preset: str, batch: int, heads: int, kv_heads: int, q_len: int, kv_len: int, d: int, causal: bool
) -> None:
    dev = gpu(preset)
    op = Attention("a", "fp16", batch=batch, heads=heads, kv_heads=kv_heads, q_len=q_len, kv_len=kv_len,
                   head_dim=d, causal=causal)  # fmt: skip
    block_q = dev.flash_block_q(op)
    cost = dev.op_cost(op)
    q_blocks = ceil_div(q_len, block_q)
    assert cost.detail["block_q"] == block_q
    assert cost.detail["units"] == batch * heads * q_blocks
    rng = np.random.default_rng(q_len * 131 + kv_len)
    q = rng.standard_normal((batch, heads, q_len, d))
    k = rng.standard_normal((batch, kv_heads, kv_len, d))
    v = rng.standard_normal((batch, kv_heads, kv_len, d))
    out = np.full_like(q, np.nan)
    writes = np.zeros((batch, heads, q_len), dtype=np.int64)
    for bi in range(batch):
        for h in range(heads):
            for qb in range(q_blocks):
                scratch = np.full_like(q, np.nan)
                native.flash_attention_unit(
                    q, k, v, scratch, bi, h, qb, causal=causal, block_q=block_q, block_k=64
                )
                written = ~np.isnan(scratch).all(axis=-1)
                rows = np.zeros_like(written)
                rows[bi, h, qb * block_q : min((qb + 1) * block_q, q_len)] = True
                assert (written == rows).all(), (
                    f"unit ({bi}, {h}, {qb}) must write exactly its {block_q} rows"
                )
                writes += written
                out[written] = scratch[written]
    assert (writes == 1).all()
    ref = native.attention(q, k, v, causal=causal)
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)
