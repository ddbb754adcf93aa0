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
