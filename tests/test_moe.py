"""Mixture-of-experts and multi-head latent attention: shapes and parameter counts from the shipped HF
configs against the published sizes, the MoE layer's ops (router, top-k, permutation, grouped expert
GEMMs over the experts a batch hits, shared experts, combine), MLA's compressed KV cache, and the summary
of an MoE run."""

import json
from dataclasses import replace

import pytest

from models.llm import ExpertGemm, MoESpec, SeqGroup, build_pass, expert_rows, load_llm
from simcore.errors import ConfigError
from simcore.ops import Attention, Gemm

# name: (published total, published active, whether that active figure counts the input embedding (vocab x
# hidden: a lookup, not a GEMM), tolerance on active, source). Two-digit figures are compared within half a
# unit of their last digit where that is wider than 1 %.
PUBLISHED = {
    "mixtral-8x7b": (46.7e9, 12.9e9, True, 0.01, "Mistral AI, Mixtral announcement (Dec 2023): 46.7B total, 12.9B "
                     "per token; Jiang et al. 2024, arXiv 2401.04088: 47B / 13B"),
    "mixtral-8x22b": (141e9, 39e9, True, 0.01, "Mistral AI, Mixtral 8x22B announcement (Apr 2024): 39B active "
                      "of 141B"),
    # README_WEIGHTS says "36.7B (including 0.9B for Embedding and 0.9B for the output Head)"; the shapes give
    # 36.63B without the input embedding and 37.55B with it (the headline "37B" is within 1.5 % of that)
    "deepseek-v3": (671e9, 36.7e9, False, 0.01, "DeepSeek-AI 2024, DeepSeek-V3 README (671B total, 37B "
                    "activated, main model without the MTP module) and README_WEIGHTS.md (36.7B activated)"),
    # 2.45B without the input embedding: the card's "2.4B" is that figure cut to two digits
    "deepseek-v2-lite": (15.7e9, 2.4e9, False, 0.025, "deepseek-ai/DeepSeek-V2-Lite model card: 15.7B (16B) "
                         "total, 2.4B active"),
    "qwen2-57b-a14b": (57e9, 14e9, True, 0.01, "Yang et al. 2024, Qwen2 Technical Report, arXiv 2407.10671: 57B "
                       "parameters, 14B activated per token"),
    # 3.353B: the card's "3.3B" is 3.35B cut to two digits; its 29.9B non-embedding total is checked below
    "qwen3-30b-a3b": (30.5e9, 3.3e9, True, 0.02, "Qwen/Qwen3-30B-A3B model card: 30.5B in total and 3.3B "
                      "activated (29.9B non-embedding)"),
    "qwen3-235b-a22b": (235e9, 22e9, True, 0.01, "Qwen/Qwen3-235B-A22B model card: 235B in total, 22B activated"),
    "gpt-oss-20b": (20.9e9, 3.6e9, False, 0.01, "OpenAI 2025, gpt-oss model card (arXiv 2508.10925): 20.9B "
                    "total, 3.6B active; active counts the unembedding, not the input embedding"),
    "gpt-oss-120b": (116.8e9, 5.1e9, False, 0.01, "OpenAI 2025, gpt-oss model card: 116.8B total, 5.1B active"),
    "phi-3.5-moe": (41.9e9, 6.6e9, True, 0.01, "microsoft/Phi-3.5-MoE-instruct model card: 16x3.8B, 6.6B active "
                    "with 2 experts; 41.9B in the checkpoint's metadata"),
    "dbrx": (132e9, 36e9, True, 0.015, "Databricks, dbrx MODEL_CARD_dbrx_base.md: 132B total parameters of which "
             "36B are active on any input (36.47B: 36B is that figure cut to two digits)"),
}  # fmt: skip


def _tolerance(figure: float, at_least: float = 0.01) -> float:
    """`at_least`, or half a unit in the last of two significant digits ("141B": 140.5B..141.5B)."""
    unit = 10 ** (len(str(int(figure))) - 2)
    return max(at_least, 0.5 * unit / figure)


@pytest.mark.parametrize(("name", "total", "active", "with_input_embedding", "tol", "source"),
                         [(n, *v) for n, v in PUBLISHED.items()])  # fmt: skip
def test_total_and_active_parameters_match_the_published_figures(name, total, active, with_input_embedding, tol,
                                                                 source):  # fmt: skip
    s = load_llm(name)
    assert s.params == pytest.approx(total, rel=_tolerance(total)), source
    counted = s.active_params - (0 if with_input_embedding else s.vocab * s.hidden)
    assert counted == pytest.approx(active, rel=_tolerance(active, tol)), source


def test_qwen3_non_embedding_total_matches_its_card():
    s = load_llm("qwen3-30b-a3b")
    assert s.params - 2 * s.vocab * s.hidden == pytest.approx(29.9e9, rel=0.01)


def test_config_counts_are_exact_to_the_weight():
    """Counts of every tensor from the configs (embeddings, untied head, norms, routers, biases, sinks)."""
    assert load_llm("mixtral-8x7b").params == 46_702_792_704
    assert load_llm("qwen3-30b-a3b").params == 30_532_122_624
    assert load_llm("deepseek-v3").params == 671_026_419_200


def test_dense_models_have_active_params_equal_to_params_and_no_moe():
    s = load_llm("llama-3-8b")
    assert s.moe is None and s.mla is None and s.active_params == s.params


def test_shapes_read_from_each_moe_config():
    mx, q3, q2 = load_llm("mixtral-8x7b"), load_llm("qwen3-30b-a3b"), load_llm("qwen2-57b-a14b")
    ds, lite, oss = load_llm("deepseek-v3"), load_llm("deepseek-v2-lite"), load_llm("gpt-oss-20b")
    assert (mx.moe.experts, mx.moe.top_k, mx.moe.expert_ffn, mx.moe.shared_ffn) == (8, 2, 14336, 0)
    assert (q3.moe.experts, q3.moe.top_k, q3.moe.expert_ffn, q3.head_dim, q3.qk_norm) == (
        128,
        8,
        768,
        128,
        True,
    )
    assert (q2.moe.shared_ffn, q2.moe.shared_gate, q2.bias) == (20480, True, True)
    assert ds.moe.dense_layers == frozenset({0, 1, 2}) and (ds.moe.groups, ds.moe.topk_groups) == (8, 4)
    assert ds.moe.shared_ffn == 2048 and ds.moe.score_bias and ds.mla.q_lora_rank == 1536
    assert lite.mla.q_lora_rank is None and lite.moe.dense_layers == frozenset({0})
    assert oss.layer_window(0) == 128 and oss.layer_window(1) is None and oss.moe.expert_bias
    # the checkpoints' quantization_config, as the precision plan's format of the same bits
    assert (ds.checkpoint_format, oss.checkpoint_format, mx.checkpoint_format) == ("fp8", "mxfp4", None)


# ----------------------------------------------------------------------------------------- routing


def test_expected_active_experts_closed_form():
    moe = MoESpec(experts=128, top_k=8, expert_ffn=768)
    assert moe.active_experts(1) == pytest.approx(8)
    assert moe.active_experts(4) == pytest.approx(128 * (1 - (120 / 128) ** 4))
    assert moe.active_experts(10_000) == pytest.approx(128)
    s = load_llm("qwen3-30b-a3b")
    assert expert_rows(s, 1) == (8, 1)
    assert expert_rows(s, 4) == (29, 2)  # 29.1 experts expected; 32 rows spread over them, rounded up
    assert expert_rows(s, 4096) == (128, 256)  # a long prefill hits every expert


def _weight_bytes(p, per_layer=False):
    """Bytes of weights the pass's GEMMs read (expert GEMMs read each active expert's matrices)."""
    ops = [
        op for op in p.op_records if isinstance(op, Gemm) and (op.b_is_weight or isinstance(op, ExpertGemm))
    ]
    return sum(op.tensors()[1].bytes for op in ops)


def test_decode_reads_only_the_active_experts_weights():
    """Batch 1: the GEMMs read every parameter one token uses but the embedding table, norms and biases."""
    for name in ("qwen3-30b-a3b", "mixtral-8x7b", "qwen2-57b-a14b", "gpt-oss-20b", "deepseek-v2-lite"):
        s = load_llm(name)
        h, moe = s.hidden, s.moe
        norms = s.layers * (2 * h + (2 * s.head_dim if s.qk_norm else 0)) + h
        if s.mla is not None:  # q_a (if any) and kv_a norms
            norms += s.layers * (s.mla.kv_lora_rank + (s.mla.q_lora_rank or 0))
        biases = s.layers * (
            ((s.heads + 2 * s.kv_heads) * s.head_dim + h if s.bias else 0)
            + (s.heads if s.attn_sinks else 0)
            + (moe.top_k * (2 * moe.expert_ffn + h) if moe.expert_bias else 0)
            + (moe.experts if moe.router_bias else 0)
        )
        read = s.active_params - s.vocab * h - norms - biases
        assert _weight_bytes(build_pass(s, 1, 1, 1, 100)) == 2 * read, name


def test_decode_weight_bytes_at_batch_4_closed_form():
    """Batch 4 of Qwen3-30B-A3B: attention + router + the 29 experts four tokens hit, per layer, + LM head."""
    s = load_llm("qwen3-30b-a3b")
    h, f, d = s.hidden, s.moe.expert_ffn, s.head_dim
    attn = h * (s.heads + 2 * s.kv_heads) * d + s.heads * d * h
    layer = attn + h * s.moe.experts + 29 * 3 * h * f
    assert _weight_bytes(build_pass(s, 1, 4, 1, 100)) == 2 * (s.layers * layer + s.vocab * h)
    # Qwen2-57B-A14B adds its shared expert (a dense MLP of 20480) and the shared expert's sigmoid gate
    q2 = load_llm("qwen2-57b-a14b")
    p = build_pass(q2, 1, 1, 1, 100)
    names = {lop.name for lop in p.ops}
    assert {"L0.shared_gate_up", "L0.shared_down", "L0.shared_gate", "L0.router", "L0.combine"} <= names


def test_prefill_hits_every_expert_and_flops_are_two_per_active_parameter_per_token():
    s = load_llm("mixtral-8x7b")
    t = 2048
    p = build_pass(s, 1, 1, t, t, "bf16", "prefill")
    experts = [op for op in p.op_records if isinstance(op, ExpertGemm)]
    assert {op.batch for op in experts} == {8} and {op.m for op in experts} == {t * 2 // 8}
    flops = sum(op.flops for op in experts)
    assert flops == pytest.approx(2 * t * s.moe.top_k * 3 * s.hidden * s.moe.expert_ffn * s.layers, rel=1e-12)


def test_tensor_parallelism_splits_each_expert_and_replicates_the_router():
    s = load_llm("mixtral-8x7b")
    one, two = build_pass(s, 1, 1, 1, 100), build_pass(s, 2, 1, 1, 100)
    g1 = {lop.name: lop.op for lop in one.ops}
    g2 = {lop.name: lop.op for lop in two.ops}
    assert g2["L0.experts_gate_up"].n == g1["L0.experts_gate_up"].n // 2
    assert g2["L0.experts_down"].k == g1["L0.experts_down"].k // 2
    assert g2["L0.router"].n == g1["L0.router"].n == 8
    with pytest.raises(ConfigError, match="expert FFN width 768"):
        build_pass(load_llm("qwen3-30b-a3b"), 5, 1, 1, 10)


def test_deepseek_dense_layers_come_first_and_twin_their_own_kind():
    s = load_llm("deepseek-v2-lite")
    p = build_pass(s, 1, 1, 1, 100)
    names = [lop.name for lop in p.ops]
    assert "L0.gate_up" in names and "L0.router" not in names and "L1.router" in names
    # every MoE layer after the first is costed as a twin of layer 1's ops
    l2 = [lop for lop in p.ops if lop.block == 2]
    assert all(lop.twin >= 0 and p.ops[lop.twin].block == 1 for lop in l2)


# ------------------------------------------------------------------------------------------------- MLA


def test_mla_kv_cache_is_the_latent_per_token_and_layer():
    s = load_llm("deepseek-v3")
    assert s.kv_elements_per_token == 61 * (512 + 64)
    assert s.kv_bytes_per_token("bf16") == 61 * 576 * 2
    assert s.kv_split(8) == 1  # the latent is shared by every head: each rank keeps it whole


def test_mla_decode_attention_reads_the_latent_once_with_the_real_flops():
    s = load_llm("deepseek-v3")
    kv = 4096
    p = build_pass(s, 1, 2, 1, kv, kv_alloc_tokens=kv)
    attn = next(op for op in p.op_records if isinstance(op, Attention))
    k_b, v_b = attn.tensors()[1].bytes, attn.tensors()[2].bytes
    assert k_b + v_b == 2 * kv * 576 * 2  # batch 2, bf16: the latent cache, read once
    real = 2 * 128 * 2 * kv * (576 + 512)  # per head and key: q.k over latent + rope, p.v over the latent
    assert attn.flops == pytest.approx(real, rel=0.005)
    alloc = next(t for lop in p.ops for t in lop.allocs)
    assert alloc.bytes == 2 * kv * 576 * 2
    # absorbed up-projections: per head, q_nope into the latent and the latent out to v_head_dim
    ops = {lop.name: lop.op for lop in p.ops}
    assert (ops["L0.q_absorb"].batch, ops["L0.q_absorb"].k, ops["L0.q_absorb"].n) == (128, 128, 512)
    assert (ops["L0.v_absorb"].batch, ops["L0.v_absorb"].k, ops["L0.v_absorb"].n) == (128, 512, 128)


def test_mla_prefill_decompresses_and_runs_standard_attention_with_exact_flops():
    s = load_llm("deepseek-v2-lite")
    t = 1024
    p = build_pass(s, 1, 1, t, t, "bf16", "prefill")
    attn = next(op for op in p.op_records if isinstance(op, Attention))
    pairs = t * (t + 1) / 2
    assert attn.flops == pytest.approx(2 * 16 * pairs * (192 + 128), rel=1e-12)
    kv_b = next(lop.op for lop in p.ops if lop.name == "L0.kv_b")
    assert (kv_b.m, kv_b.n, kv_b.k) == (t, 16 * (128 + 128), 512)


# ------------------------------------------------------------------------------------- refusals


@pytest.fixture
def config(tmp_path):
    def write(name, **extra):
        cfg = json.loads(open(f"models/configs/{name}.json").read())
        cfg.update(extra)
        p = tmp_path / "config.json"
        p.write_text(json.dumps(cfg, indent=2))
        return p

    return write


@pytest.mark.parametrize(("name", "extra", "key"), [
    ("qwen3-30b-a3b", {"moe_router_mode": "expert_choice"}, "moe_router_mode"),
    ("mixtral-8x7b", {"num_experts_per_tok": 9}, "num_experts_per_tok"),
    ("deepseek-v3", {"topk_method": "random"}, "topk_method"),
    ("deepseek-v3", {"kv_lora_rank": 0}, "kv_lora_rank"),
    ("gpt-oss-20b", {"layer_types": ["sliding_attention"] * 3}, "layer_types"),
    ("qwen2-57b-a14b", {"mlp_only_layers": [99]}, "mlp_only_layers"),
    ("dbrx", {"ffn_config": {"ffn_hidden_size": 10752, "moe_num_experts": 16, "moe_top_k": 4, "moe_capacity": 1}},
     "moe_capacity"),
])  # fmt: skip
def test_keys_not_understood_or_impossible_are_refused_with_file_line_and_key(config, name, extra, key):
    p = config(name, **extra)
    with pytest.raises(ConfigError) as e:
        load_llm(str(p))
    assert e.value.key == key and str(e.value).startswith(f"{p}:")
    assert f'"{key}"' in p.read_text().splitlines()[e.value.line - 1]


def test_an_unknown_checkpoint_quantization_is_refused_by_name(config):
    p = config("gpt-oss-20b", quantization_config={"quant_method": "awq", "bits": 4})
    with pytest.raises(ConfigError, match="unsupported quant_method 'awq'"):
        load_llm(str(p))


def test_expert_parallelism_needs_experts_one_device_per_rank_and_a_batch_that_splits():
    from simcore.experiment import run
    from simcore.mapping import ExecutionPlan, place
    from simcore.system import load_system

    dgx = load_system("dgx-h100-8")
    with pytest.raises(ConfigError, match="needs a mixture-of-experts model") as e:
        place(dgx, load_llm("llama-3-8b"), ExecutionPlan(ep=2))
    assert e.value.key == "parallelism.ep"
    with pytest.raises(ConfigError, match="tp = pp = dp = 1"):
        place(dgx, load_llm("qwen3-30b-a3b"), ExecutionPlan(tp=2, ep=2))
    with pytest.raises(ConfigError, match="divide .* 8 experts"):
        place(dgx, load_llm("mixtral-8x7b"), ExecutionPlan(ep=3))
    doc = {"hardware": "dgx-h100-8", "model": "qwen3-30b-a3b", "parallelism": {"ep": 4},
           "scenario": {"kind": "decode", "batch": 6, "context_len": 128}}  # fmt: skip
    with pytest.raises(ConfigError, match="batch 6 does not split over ep=4") as e:
        run(doc, keep_records=False)
    assert e.value.key == "scenario.batch"


def test_expert_parallel_pass_sizes_the_local_experts_and_the_all_to_all():
    """ep ranks of T tokens each: a rank's E/ep experts see ep T tokens; it sends each other rank the
    T k / ep rows routed there before the experts (dispatch) and gets them back after (combine)."""
    s = load_llm("qwen3-30b-a3b")
    p = build_pass(s, 1, 4, 1, 100, ep=4)
    ops = {lop.name: lop.op for lop in p.ops}
    local = round(128 / 4 * (1 - (1 - 8 / 128) ** 16))  # 16 tokens over all ranks: 20.6 of 32 experts
    assert ops["L0.experts_gate_up"].batch == local == 21 and ops["L0.experts_gate_up"].m == -(-4 * 8 // 21)
    assert len(p.exchanges) == 2 * s.layers
    assert {b for _, b in p.exchanges} == {4 * 8 / 4 * s.hidden * 2}
    assert [p.ops[i].name for i, _ in p.exchanges[:2]] == ["L0.permute", "L0.experts_down"]
    assert s.layers_params(ep=4) == s.layers * (s.attn_params + 2 * s.hidden + s.moe.mlp_params(s.hidden, 32))


def test_expert_parallel_decode_runs_the_all_to_all_over_nvlink():
    from simcore.experiment import run

    doc = {"hardware": "dgx-h100-8", "model": "qwen3-30b-a3b", "dtype": "bf16", "parallelism": {"ep": 2},
           "scenario": {"kind": "decode", "batch": 8, "context_len": 1024}}  # fmt: skip
    r = run(doc, keep_records=True)
    s, summary = load_llm("qwen3-30b-a3b"), r.summary
    assert summary["ep"] == 2 and summary["expert_hit_rate"] == 1.0
    transfers = [rec for rec in r.records() if rec["kind"] == "transfer"]
    assert len(transfers) == 2 * s.layers * 2  # dispatch and combine, each rank to the other
    assert sum(rec["bytes"] for rec in transfers) == pytest.approx(
        2 * s.layers * 2 * (4 * 8 / 2) * s.hidden * 2 * 2
    )
    # each rank holds the attention, embeddings and half of every layer's experts
    weights = 2 * (s.outer_params + s.layers_params(ep=2))
    assert weights < summary["peak_memory_B"]["gpu0"] < weights + 2 * 2**30
    one = run({**doc, "parallelism": {"tp": 1}}, keep_records=False).summary
    assert summary["latency_s"] < one["latency_s"]  # each rank reads half the experts for half the batch


def test_an_expert_parallel_serving_iteration_is_each_ranks_share_of_the_decode() -> None:
    # A ragged iteration of one decode group over ep ranks is the decode pass of each rank's 1/ep of the
    # batch (the same ops, the same all-to-alls): the two programs take the same time to round-off; an odd
    # group gives the busiest rank the extra sequence.
    from models.llm import SeqGroup
    from simcore.mapping import ExecutionPlan
    from simcore.scenarios.base import LLMRun
    from simcore.system import load_system

    run = LLMRun(load_system("dgx-h100-8"), load_llm("qwen3-30b-a3b"), ExecutionPlan(tp=1, ep=2), False)
    (step,) = run.programs(8, 1, 1024, "decode")
    (ragged,) = run.iteration((SeqGroup(8, 1, 1024),))
    assert run.engine.run(ragged) == pytest.approx(run.engine.run(step), rel=1e-9)
    (odd,) = run.iteration((SeqGroup(9, 1, 1024),))
    assert sum(op.flops for op in (st.op for st in odd.steps) if op.kind == "attention") > sum(
        op.flops for op in (st.op for st in ragged.steps) if op.kind == "attention")  # fmt: skip


# ------------------------------------------------------------------------------------------- runs


def _dense_equivalent(s, experts):
    """The same model with a dense MLP as wide as `experts` experts (no router, no permutation)."""
    return replace(s, name=f"{s.name}-dense{experts}", moe=None, ffn=experts * s.moe.expert_ffn)


def test_moe_decode_latency_lies_between_its_active_and_total_dense_equivalents():
    """Decode is memory-bound: Qwen3-30B-A3B at batch 1 reads about its 3B active parameters, so it costs
    a little more than a dense model of 8 experts' width (the router, top-k, permutation and combine
    kernels) and far less than a dense model holding all 128 experts (30B)."""
    from simcore.experiment import Decode, simulate

    s = load_llm("qwen3-30b-a3b")
    sc = Decode(batch=1, context_len=1024)
    moe = simulate("h100-sxm5-80gb", s, sc, keep_records=False).summary
    lo = simulate("h100-sxm5-80gb", _dense_equivalent(s, s.moe.top_k), sc, keep_records=False).summary
    hi = simulate("h100-sxm5-80gb", _dense_equivalent(s, s.moe.experts), sc, keep_records=False).summary
    assert lo["latency_s"] < moe["latency_s"] < hi["latency_s"]
    assert moe["latency_s"] < 0.5 * hi["latency_s"]
    assert moe["active_params"] == s.active_params and moe["expert_hit_rate"] == 1.0
    assert moe["params"] == s.params


def test_summary_keys_and_the_offload_hit_rate():
    from simcore.experiment import Decode, simulate

    dense = simulate("h100-sxm5-80gb", "llama-3-8b", Decode(batch=1, context_len=128), keep_records=False)
    assert "expert_hit_rate" not in dense.summary and "active_params" not in dense.summary
    off = simulate("workstation-rtx4090", "deepseek-v2-lite", Decode(batch=1, context_len=128), keep_records=False,
                   offload_weights=True).summary  # fmt: skip
    assert off["expert_hit_rate"] == 0.0  # every layer's experts are copied in before it runs


def test_a_ragged_serving_pass_over_an_moe_mla_model():
    s = load_llm("deepseek-v2-lite")
    p = build_pass(s, 1, 0, 0, 0, groups=(SeqGroup(3, 1, 100), SeqGroup(1, 256, 768)))
    ops = {lop.name: lop.op for lop in p.ops}
    assert ops["L1.router"].m == 259 and ops["L0.attn1"].q_len == 256
    assert ops["L1.experts_gate_up"].batch == 64  # 259 tokens x 6 choices hit all 64 experts


def test_the_shipped_moe_experiment_runs_fast():
    import time

    from simcore.experiment import run

    t0 = time.perf_counter()
    r = run("configs/experiments/moe-qwen3-30b-a3b-h100.yaml", keep_records=False)
    assert time.perf_counter() - t0 < 5
    assert r.summary["active_params"] == load_llm("qwen3-30b-a3b").active_params


def test_gpt_oss_120b_fits_one_h100_only_with_its_mxfp4_experts():
    from simcore.errors import OutOfMemory
    from simcore.experiment import run

    path = "configs/experiments/gpt-oss-120b-mxfp4-h100.yaml"
    r = run(path, keep_records=False)
    spec = load_llm("gpt-oss-120b")
    weights_B = spec.routed_params() * 4.25 / 8 + (spec.params - spec.routed_params()) * 2
    assert r.summary["precision"]["experts"] == "mxfp4"
    assert weights_B < r.summary["peak_memory_B"]["gpu"] < 80 * 2**30  # weights plus KV and workspace
    # in bf16 they do not fit, and the error names the format the checkpoint ships them in
    with pytest.raises(
        OutOfMemory, match=r"gpt-oss-120b weights.*ships them as precision: \{experts: mxfp4\}"
    ):
        run(path, ["precision.experts=bf16"], keep_records=False)
    assert spec.checkpoint_precision == {"experts": "mxfp4"}
    assert load_llm("deepseek-v3").checkpoint_precision == {"weights": "fp8"}
    assert load_llm("llama-2-7b").checkpoint_precision == {}


def test_gpt_oss_alternates_sliding_window_and_full_attention_layers():
    s = load_llm("gpt-oss-20b")
    p = build_pass(s, 1, 1, 1, 4096)
    assert [op.kv_len for op in p.op_records if isinstance(op, Attention)] == [128, 4096] * 12
    assert s.kv_layer_tokens(4096) == 12 * 128 + 12 * 4096


def test_simcore_models_json_lists_total_and_active_parameters():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "simcore", "models", "--json"], capture_output=True, text=True
    )
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    q3 = rows["qwen3-30b-a3b"]
    assert (q3["params"], q3["active_params"], q3["experts"], q3["top_k"]) == (
        30_532_122_624,
        3_353_032_704,
        128,
        8,
    )
    assert rows["llama-2-7b"]["active_params"] == rows["llama-2-7b"]["params"]
