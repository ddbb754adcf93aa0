"""Attention/FFN disaggregation against closed forms: one micro-batch takes the GEMMs, the attention and
the two transfers per layer in turn; m >= 2 micro-batches overlap the sides (a layer's period is the
larger of m x GEMMs, m x attention and one round trip), plus the pipeline fill; and the serve scenario
keeps the KV cache on the attention devices and prices them."""

from __future__ import annotations

from typing import Any

import pytest

from models.llm import LLMSpec, SeqGroup, build_pass, load_llm
from simcore.engine import Engine
from simcore.errors import ConfigError
from simcore.experiment import load_experiment
from simcore.mapping import ExecutionPlan, place
from simcore.mapping.kv_offload import attention_io_B
from simcore.ops import Attention, Transfer
from simcore.serving.afd import (
    AttentionDisaggregation,
    attention_lanes,
    attention_pools,
    rank_slices,
    split_groups,
)
from simcore.system import System, load_system

SYSTEM, MODEL = "h100-h20-afd", "llama-3-8b"
GPU, ATTN = "node.gpu0", "h20gpu0"


@pytest.fixture(scope="module")
def setup() -> tuple[System, LLMSpec, ExecutionPlan, Any]:
    system, spec = load_system(SYSTEM), load_llm(MODEL)
    plan = ExecutionPlan(tp=1, devices=(GPU,))
    return system, spec, plan, place(system, spec, plan)


def step_s(setup: Any, n: int, kv_len: int, m: int) -> float:
    """A decode iteration of `n` sequences at `kv_len`, alone on an engine."""
    system, spec, plan, placement = setup
    pools = attention_pools(system, spec, plan, placement, [ATTN])
    prog = AttentionDisaggregation(spec, plan, placement, pools, m).iteration(
        0, (SeqGroup(n, 1, kv_len),), "decode"
    )
    return Engine(system, keep_records=False).run(prog[0])


def parts_s(setup: Any, n: int, kv_len: int) -> tuple[float, float, float, float]:
    """(GEMM side per layer, attention per layer, both transfers per layer, embedding + LM head) of one
    micro-batch of `n` sequences, from the devices' op costs and the route's transfer plan."""
    system, spec, plan, _ = setup
    lp = build_pass(spec, 1, n, 1, kv_len, plan.precision, "decode")
    eng = Engine(system, keep_records=False)
    gpu, attn, layers = system.devices[GPU], system.devices[ATTN], spec.layers
    body = [lo for lo in lp.ops if 0 <= lo.block < layers]
    outer = sum(gpu.op_cost(lo.op).duration_s for lo in lp.ops if not 0 <= lo.block < layers)
    f = sum(gpu.op_cost(lo.op).duration_s for lo in body if not isinstance(lo.op, Attention))
    a = sum(attn.op_cost(lo.op).duration_s for lo in body if isinstance(lo.op, Attention))
    t = 0.0
    for lo in body:
        if isinstance(lo.op, Attention):
            q_B, kv_B, o_B = attention_io_B(lo.op)
            t += eng.transfer_plan(Transfer("in", "bf16", nbytes=q_B + kv_B, src=GPU, dst=ATTN)).solo_s
            t += eng.transfer_plan(Transfer("out", "bf16", nbytes=o_B, src=ATTN, dst=GPU)).solo_s
    return f / layers, a / layers, t / layers, outer


@pytest.mark.parametrize("n, kv_len", [(1, 512), (8, 1024), (64, 2048)])
def test_one_microbatch_is_gemms_plus_attention_plus_two_transfers_per_layer(setup, n, kv_len):
    f, a, t, outer = parts_s(setup, n, kv_len)
    expected = setup[1].layers * (f + a + t) + outer
    # exact: nothing overlaps with one micro-batch, so the step is the sum of its parts (float rounding)
    assert step_s(setup, n, kv_len, 1) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("n, kv_len, m", [(8, 1024, 2), (64, 2048, 4), (512, 4096, 2), (512, 4096, 4)])
def test_microbatches_overlap_the_sides_up_to_the_pipeline_fill(setup, n, kv_len, m):
    """Per layer the period is max(m F, m A, F + A + 2T) for micro-batches of n/m sequences (F the GEMM
    side, A the attention, T a transfer): the group or the attention devices are always busy, or one
    micro-batch's round trip sets the pace; the embedding and LM head run once per micro-batch."""
    f, a, t, outer = parts_s(setup, n // m, kv_len)
    period = max(m * f, m * a, f + a + t)
    closed = setup[1].layers * period + m * outer
    sim = step_s(setup, n, kv_len, m)
    # the fill (the first micro-batch's GEMMs before any attention, the last one's drain: one round trip,
    # under 1 % of 32 layers) and the transfers' bytes sharing each device's HBM with its kernels: 2 %
    assert sim == pytest.approx(closed, rel=0.02)


def test_balanced_sides_approach_the_slower_side_and_beat_one_microbatch(setup):
    """512 sequences at 4,096 tokens: attention on the H20 (4.0 TB/s) is the slower side, so with
    micro-batches a step approaches the attention alone, hiding the GEMMs that one micro-batch adds."""
    f1, a1, t1, outer = parts_s(setup, 512, 4096)
    one, two = step_s(setup, 512, 4096, 1), step_s(setup, 512, 4096, 2)
    layers = setup[1].layers
    assert one == pytest.approx(layers * (f1 + a1 + t1) + outer, rel=1e-6)
    assert two < one - 0.8 * layers * f1  # most of the GEMM side is hidden
    assert two == pytest.approx(layers * a1, rel=0.06)  # the attention side's time, plus fill and heads


def test_split_groups_deals_sequences_round_robin():
    mbs = split_groups((SeqGroup(5, 1, 100), SeqGroup(2, 64, 64), SeqGroup(1, 1, 300)), 3)
    assert [sum(g.count for g in mb) for mb in mbs] == [3, 3, 2]  # sizes differ by at most one
    assert sorted(g for mb in mbs for g in mb if g.q_len == 64) == [SeqGroup(1, 64, 64)] * 2
    assert split_groups((SeqGroup(1, 1, 10),), 4) == [(SeqGroup(1, 1, 10),)]  # empty micro-batches dropped


def test_rank_slices_and_lock_step_lanes():
    group = ("g0", "g1")
    assert rank_slices(group, ("a0", "a1", "a2", "a3")) == {"g0": ("a0", "a1"), "g1": ("a2", "a3")}
    lanes = attention_lanes(group, rank_slices(group, ("a0", "a1", "a2", "a3")))
    assert [lane[1] for lane in lanes] == [("a0", "a2"), ("a1", "a3")]  # the d-th device of every rank
    shared = attention_lanes(group, rank_slices(group, ("a0",)))
    assert [lane[0] for lane in shared] == [(("g0", "a0"),), (("g1", "a0"),)]  # one device: rank by rank


# -------------------------------------------------------------------------------- the serve scenario


def serve(attention: dict | None, parallelism: dict | None = None, **scenario: Any) -> Any:
    doc = {"name": "t", "hardware": SYSTEM, "model": MODEL, "dtype": "bf16",
           "parallelism": parallelism or {"tp": 1, "devices": [GPU]},
           "scenario": {"kind": "serve", **scenario}}  # fmt: skip
    if attention is not None:
        doc["scenario"]["disaggregation"] = {"attention": attention}
    return load_experiment(doc).run(keep_records=False)


def test_at_low_load_a_request_decodes_at_the_closed_form_step(setup):
    """One request alone: every iteration is a batch-1 decode (one micro-batch, whatever m), so TPOT is the
    sequential closed form at its mean context (attention is linear in the context)."""
    prompt, out = 512, 64
    s = serve({"devices": [ATTN], "microbatches": 2},
              requests={"count": 1, "rate_per_s": 1, "prompt_len": prompt, "output_len": out}).summary  # fmt: skip
    f, a, t, outer = parts_s(setup, 1, prompt + out // 2)
    expected = setup[1].layers * (f + a + t) + outer
    assert s["tpot_p50_s"] == pytest.approx(expected, rel=0.02)  # the 2 % for low-load checks
    assert s["attention_devices"] == 1 and s["attention_microbatches"] == 2


def test_the_kv_cache_lives_on_the_attention_device_and_is_priced():
    stream = {"count": 8, "rate_per_s": 20, "prompt_len": 256, "output_len": 16}
    prices = {"node.*": 2.5, "h20*": 1.25}
    afd = serve({"devices": [ATTN]}, requests=stream, usd_per_gpu_hour=prices).summary
    alone = serve(None, requests=stream, usd_per_gpu_hour=prices).summary
    # KV blocks: what fits in 0.9 of the H20's 96 GiB (nothing else there) against 0.9 of the H100's 80 GiB
    # after 16 GB of weights and the profile run's activations
    assert afd["kv_cache_blocks"] > 1.4 * alone["kv_cache_blocks"]
    assert afd["peak_memory_B"][ATTN] > 0.85 * 96 * 2**30
    # cost: (2.5 + 1.25) $/h against 2.5 $/h over each run's span
    assert afd["cost_usd"] == pytest.approx(3.75 * afd["latency_s"] / 3600)
    assert alone["cost_usd"] == pytest.approx(2.5 * alone["latency_s"] / 3600)


def test_tensor_parallel_ranks_each_take_a_slice_of_the_attention_devices():
    stream = {"count": 4, "rate_per_s": 20, "prompt_len": 256, "output_len": 8}
    s = serve({"devices": ["h20gpu[0-3]"]}, {"tp": 2, "devices": ["node.gpu[01]"]}, requests=stream).summary
    one = serve({"devices": ["h20gpu0"]}, {"tp": 2, "devices": ["node.gpu[01]"]}, requests=stream).summary
    # four devices, two per rank, each block of a rank on one of its two: four times the blocks of one device
    # holding both ranks' heads (each of the four holds half a block's bytes, twice as many blocks of them)
    assert s["kv_cache_blocks"] == pytest.approx(4 * one["kv_cache_blocks"], rel=0.01)
    assert s["output_tokens"] == one["output_tokens"] == 32


@pytest.mark.parametrize("attention, parallelism, extra, key", [
    ({"devices": ["nosuch*"]}, None, {}, "scenario.disaggregation.attention.devices"),
    ({"devices": [GPU]}, None, {}, "scenario.disaggregation.attention.devices"),
    ({"devices": ["h20gpu[0-2]"]}, {"tp": 2, "devices": ["node.gpu[01]"]}, {},
     "scenario.disaggregation.attention.devices"),
    ({"devices": [ATTN]}, {"tp": 1, "pp": 2, "devices": ["node.gpu[01]"]}, {},
     "scenario.disaggregation.attention.devices"),
    ({"devices": [ATTN]}, {"tp": 1, "dp": 2, "devices": ["node.gpu[01]"]}, {"disaggregation": {"prefill_replicas": 1}},
     "scenario.disaggregation.prefill_replicas"),
    ({"devices": [ATTN]}, None, {"sharing": {"prefill_sm_fraction": 0.5}}, "scenario.sharing.prefill_sm_fraction"),
    ({"devices": [ATTN]}, None, {"scheduler": {"preemption": "swap"}}, "scenario.scheduler.preemption"),
    ({"devices": [ATTN], "microbatches": 0}, None, {}, "scenario.disaggregation.attention.microbatches"),
    ({"devices": 3}, None, {}, "scenario.disaggregation.attention.devices"),
])  # fmt: skip
def test_impossible_combinations_are_one_line_errors(attention, parallelism, extra, key):
    doc = {"name": "t", "hardware": SYSTEM, "model": MODEL, "dtype": "bf16",
           "parallelism": parallelism or {"tp": 1, "devices": [GPU]},
           "scenario": {"kind": "serve", "requests": {"count": 2, "prompt_len": 64, "output_len": 4}, **extra}}  # fmt: skip
    doc["scenario"].setdefault("disaggregation", {})["attention"] = attention
    with pytest.raises(ConfigError) as e:
        load_experiment(doc).run(keep_records=False)
    assert key in str(e.value) and "\n" not in str(e.value)


def test_replicas_each_take_their_share_of_the_attention_devices():
    stream = {"count": 8, "rate_per_s": 40, "prompt_len": 256, "output_len": 8}
    s = serve(
        {"devices": ["h20gpu[01]"]}, {"tp": 1, "dp": 2, "devices": ["node.gpu[01]"]}, requests=stream
    ).summary
    one = serve({"devices": ["h20gpu0"]}, requests={**stream, "count": 4}).summary
    # round-robin: each replica serves half the stream on its own H100 and H20, with one H20's KV pool
    assert s["kv_cache_blocks"] == 2 * one["kv_cache_blocks"] and s["attention_devices"] == 2
    assert all(s["peak_memory_B"][f"h20gpu{i}"] > 0.85 * 96 * 2**30 for i in (0, 1))
    assert s["output_tokens"] == 64
