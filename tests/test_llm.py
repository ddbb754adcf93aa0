"""LLM builder: shapes from HF configs, parameter counts against the published sizes, FLOPs and TP."""

import json

import pytest

from models.llm import build_pass, load_llm
from simcore.errors import ConfigError
from simcore.ops import AllReduce, Attention, Gemm

# Published parameter counts (model cards / papers).
PUBLISHED = {
    "llama-2-7b": 6.74e9, "llama-2-13b": 13.02e9, "llama-2-70b": 68.98e9, "llama-3-8b": 8.03e9,
    "llama-3-70b": 70.55e9, "mistral-7b": 7.24e9, "qwen2-7b": 7.62e9, "yi-34b": 34.39e9, "opt-13b": 12.85e9,
    "gpt3-175b": 175e9,
}  # fmt: skip


@pytest.mark.parametrize(("name", "params"), PUBLISHED.items())
def test_parameter_count_matches_the_published_size(name, params):
    assert load_llm(name).params == pytest.approx(params, rel=0.01)


def test_gqa_shapes():
    s = load_llm("llama-3-8b")
    assert (s.heads, s.kv_heads, s.head_dim, s.ffn) == (32, 8, 128, 14336)
    assert s.kv_bytes_per_token("bf16") == 2 * 32 * 8 * 128 * 2


def test_prefill_flops_are_two_per_parameter_per_token_plus_attention():
    s = load_llm("llama-2-7b")
    b, t = 2, 1024
    g = build_pass(s, 1, b, t, t, "bf16", "prefill")
    gemm_flops = sum(op.flops for op in g.op_records if isinstance(op, Gemm))
    # every linear layer: 2 FLOPs per weight per token; lm_head only for the last token of each sequence
    linear = s.params - 2 * s.vocab * s.hidden - s.hidden * (2 * s.layers + 1)
    assert gemm_flops == pytest.approx(2 * linear * b * t + 2 * s.vocab * s.hidden * b, rel=1e-9)
    attn = sum(op.flops for op in g.op_records if isinstance(op, Attention))
    assert attn == pytest.approx(s.layers * 4 * b * s.heads * s.head_dim * t * (t + 1) / 2, rel=1e-9)


def test_tensor_parallel_splits_and_all_reduces():
    s = load_llm("llama-2-13b")
    one = build_pass(s, 1, 1, 1, 100)
    tp4 = build_pass(s, 4, 1, 1, 100)
    f1 = sum(op.flops for op in one.op_records if isinstance(op, Gemm))
    f4 = sum(op.flops for op in tp4.op_records if isinstance(op, Gemm))
    assert f4 == pytest.approx(f1 / 4, rel=1e-9)
    reduces = [op for op in tp4.op_records if isinstance(op, AllReduce)]
    assert len(reduces) == 2 * s.layers and all(r.group == 4 for r in reduces)
    with pytest.raises(ConfigError, match="does not divide"):
        build_pass(s, 3, 1, 1, 10)


def test_config_json_from_a_path_and_its_errors(tmp_path):
    cfg = json.loads(open("models/configs/mistral-7b.json").read())
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    assert load_llm(str(p)).kv_heads == 8
    p.write_text(json.dumps({**cfg, "model_type": "mamba"}))
    with pytest.raises(ConfigError, match="unsupported model_type 'mamba'"):
        load_llm(str(p))
    del cfg["hidden_size"]
    p.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="missing field 'hidden_size'"):
        load_llm(str(p))
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="config.json:1: malformed JSON"):
        load_llm(str(p))


# ------------------------------------------------------------------------- maximum context (positions)


def test_a_context_longer_than_the_model_is_refused_at_load_with_file_line_and_key(tmp_path):
    from simcore.experiment import load_experiment

    p = tmp_path / "long.yaml"
    p.write_text("hardware: a100-sxm4-80gb\nmodel: llama-2-7b\n"
                 "scenario:\n  kind: generate\n  prompt_len: 4000\n  new_tokens: 200\n")  # fmt: skip
    with pytest.raises(ConfigError) as e:
        load_experiment(p)
    assert str(e.value).endswith(":5: scenario.prompt_len: llama-2-7b accepts at most 4096 positions; "
                                 "prompt 4000 + 200 new tokens needs 4200")  # fmt: skip
    load_experiment(p, ["scenario.new_tokens=96"])  # 4096 fits
    with pytest.raises(ConfigError, match="context 4096 \\+ 1 new token needs 4097") as e:
        load_experiment(p, ["scenario.kind=decode", "scenario.context_len=4096"])
    assert e.value.key.endswith("scenario.context_len")  # the override that set it
    with pytest.raises(ConfigError, match="a prompt of 4097 tokens"):
        load_experiment(p, ["scenario.kind=prefill", "scenario.prompt_len=4097"])
    load_experiment(p, ["scenario.kind=prefill", "scenario.prompt_len=4096"])  # a full-context prompt


def test_simulate_refuses_a_context_longer_than_the_model_before_time_zero():
    from simcore.experiment import Decode, Generate, simulate

    with pytest.raises(ConfigError, match="llama-3-8b accepts at most 8192 positions") as e:
        simulate("a100-sxm4-80gb", "llama-3-8b", Decode(batch=1, context_len=8192))
    assert e.value.key == "scenario.context_len"
    with pytest.raises(ConfigError, match="prompt 2000 \\+ 100 new tokens needs 2100"):
        simulate("dgx-a100-8", "opt-13b", Generate(batch=1, prompt_len=2000, new_tokens=100), tp=8)
    assert (
        simulate("a100-sxm4-80gb", "llama-3-8b", Decode(batch=1, context_len=8191)).summary["latency_s"] > 0
    )


# ------------------------------------------------------------------------------ sliding-window attention


def _brute_pairs(q, kv, w):
    """Reference: query i (aligned to the end) sees keys max(0, p - w + 1)..p, p = kv - q + i."""
    return sum(min(w, kv - q + i + 1) for i in range(q))


@pytest.mark.parametrize(("q", "kv", "w"), [(10, 10, 3), (10, 10, 10), (10, 10, 20), (1, 50, 7), (5, 50, 7),
                                            (64, 64, 1), (7, 9, 4), (100, 300, 150)])  # fmt: skip
def test_windowed_score_pairs_match_the_brute_force_count(q, kv, w):
    a = Attention("a", "bf16", q_len=q, kv_len=kv, window=w)
    assert a.score_pairs == _brute_pairs(q, kv, w)
    plain = Attention("a", "bf16", q_len=q, kv_len=kv)
    if w >= kv:  # a window that does not bind is plain attention, bit for bit
        assert (a.score_pairs, a.flops, a.bytes) == (plain.score_pairs, plain.flops, plain.bytes)
    else:
        assert a.score_pairs < plain.score_pairs


def test_a_decode_step_reads_only_the_window_and_the_gpu_skips_masked_key_blocks():
    from simcore.system import load_system

    a = Attention("a", "bf16", heads=32, kv_heads=8, q_len=1, kv_len=100, window=64)
    assert a.with_kv_len(5000).kv_len == 64 and a.with_kv_len(50).kv_len == 50
    gpu = load_system("h100-sxm5-80gb").devices["gpu"]
    long = Attention("a", "bf16", batch=1, heads=32, kv_heads=8, q_len=16384, kv_len=16384)
    win = Attention("a", "bf16", batch=1, heads=32, kv_heads=8, q_len=16384, kv_len=16384, window=4096)
    assert gpu.flash_pairs(win) < 0.5 * gpu.flash_pairs(long)
    assert gpu.flash_pairs(win) >= 32 * win.score_pairs  # whole key blocks: never fewer than the exact pairs
    assert gpu.op_cost(win).duration_s < 0.6 * gpu.op_cost(long).duration_s
    short = gpu.op_cost(Attention("a", "bf16", heads=32, kv_heads=8, q_len=4096, kv_len=4096))
    edge = gpu.op_cost(Attention("a", "bf16", heads=32, kv_heads=8, q_len=4096, kv_len=4096, window=4096))
    assert (short.duration_s, short.dram_bytes, short.actions) == (
        edge.duration_s,
        edge.dram_bytes,
        edge.actions,
    )


def test_mistral_reads_its_sliding_window_and_decode_past_it_costs_as_at_the_window():
    from simcore.experiment import Decode, simulate

    s = load_llm("mistral-7b")
    assert (s.window, s.window_start, s.max_positions) == (4096, 0, 32768)
    g = build_pass(s, 1, 2, 1, 10000)
    assert {op.kv_len for op in g.op_records if isinstance(op, Attention)} == {4096}
    far = simulate("h100-sxm5-80gb", s, Decode(batch=2, context_len=10000), keep_records=False).summary
    edge = simulate("h100-sxm5-80gb", s, Decode(batch=2, context_len=4095), keep_records=False).summary
    assert far["latency_s"] == pytest.approx(edge["latency_s"], rel=1e-12)
    # the KV cache is a rolling buffer of 4096 tokens per sequence, however long the context
    at = simulate("h100-sxm5-80gb", s, Decode(batch=2, context_len=4096), keep_records=False).summary
    assert far["peak_memory_B"] == at["peak_memory_B"]


def test_prefill_allocates_a_rolling_kv_buffer_per_windowed_layer():
    s = load_llm("mistral-7b")
    g = build_pass(s, 1, 1, 8192, 8192, "bf16", "prefill", kv_alloc_tokens=8192 + 16)
    kv = [t.bytes for lop in g.ops for t in lop.allocs]
    assert len(kv) == s.layers and set(kv) == {2 * 8 * 4096 * 128 * 2}
    attn = [op for op in g.op_records if isinstance(op, Attention)]
    assert all(a.window == 4096 and a.kv_len == 8192 for a in attn)
    assert attn[0].score_pairs == _brute_pairs(8192, 8192, 4096)


def test_qwen2_sliding_window_applies_from_max_window_layers_on(tmp_path):
    cfg = json.loads(open("models/configs/qwen2-7b.json").read())
    assert load_llm("qwen2-7b").window is None  # use_sliding_window: false
    p = tmp_path / "qwen2-swa.json"
    p.write_text(
        json.dumps({**cfg, "use_sliding_window": True, "sliding_window": 1024, "max_window_layers": 20})
    )
    s = load_llm(str(p))
    assert [s.layer_window(i) for i in (0, 19, 20, 27)] == [None, None, 1024, 1024]
    g = build_pass(s, 1, 1, 1, 3000)
    kv = [op.kv_len for op in g.op_records if isinstance(op, Attention)]
    assert kv == [3000] * 20 + [1024] * 8
    assert s.kv_layer_tokens(3000) == 20 * 3000 + 8 * 1024
    assert s.kv_fraction(3000, 0, 14) + s.kv_fraction(3000, 14, 28) == pytest.approx(
        s.kv_layer_tokens(3000) / (3000 * 28)
    )


def test_a_ragged_pass_runs_every_token_through_the_gemms_once_and_each_group_through_its_own_attention():
    from models.llm import SeqGroup

    s = load_llm("llama-2-7b")
    uniform = build_pass(s, 1, 4, 1, 100)
    assert build_pass(s, 1, 0, 0, 0, groups=(SeqGroup(4, 1, 100),)).op_records == uniform.op_records
    # three decode steps at context 100 and one 256-token prefill chunk after 512 tokens of context
    mixed = build_pass(s, 1, 0, 0, 0, groups=(SeqGroup(3, 1, 100), SeqGroup(1, 256, 768)))
    ops = {lop.name or lop.op.name: lop.op for lop in mixed.ops}
    assert ops["L0.qkv"].m == 3 + 256 and ops["L31.down"].m == 259
    assert ops["lm_head"].m == 4  # one token's logits per sequence
    a0, a1 = ops["L0.attn"], ops["L0.attn1"]
    assert (a0.batch, a0.q_len, a0.kv_len) == (3, 1, 100) and (a1.batch, a1.q_len, a1.kv_len) == (1, 256, 768)
    # the GEMM FLOPs are those of 259 tokens: 2 per weight per token (closed form, layer matrices)
    gemm_flops = sum(op.flops for op in mixed.op_records if isinstance(op, Gemm) and op.name != "lm_head")
    h, f = s.hidden, s.ffn
    per_token = s.layers * (4 * h * h + 3 * h * f)  # llama-2-7b: MHA (q, k, v, o) and a gated MLP
    assert gemm_flops == pytest.approx(2 * 259 * per_token, rel=1e-12)
