"""Model families and inputs: Gemma and Phi-3 builders, HF config keys refused by name, every shipped
config loading, and ONNX graphs run from an experiment and from `simcore run`."""

import json
import subprocess
import sys

import pytest

from models.llm import build_pass, load_llm, model_names
from simcore.errors import ConfigError
from simcore.ops import Gemm

PUBLISHED = {
    "gemma-2b": 2.51e9,
    "gemma-7b": 8.54e9,
    "phi-3-mini-4k": 3.82e9,
    "phi-3-mini-128k": 3.82e9,
    "qwen3-8b": 8.2e9,
    "qwen3-14b": 14.8e9,
    "qwen3-32b": 32.8e9,
    "llama-3.1-405b": 405e9,
    "gpt-j-6b": 6.053e9,
    "falcon-180b": 180e9,
}


@pytest.mark.parametrize(("name", "params"), PUBLISHED.items())
def test_parameter_counts_match_the_published_sizes(name, params):
    """Sources. Gemma: the google/gemma-2b and google/gemma-7b model cards and config.json files (Gemma
    team 2024, "Gemma: Open Models Based on Gemini Research and Technology", table 1 and table 2: 2B has
    2,506,172,416 parameters with embeddings, 7B has 8,537,680,896: "2.51B" and "8.54B"). Phi-3: the
    microsoft/Phi-3-mini-4k-instruct and Phi-3-mini-128k-instruct model cards and config.json files (Abdin et
    al. 2024, "Phi-3 Technical Report": phi-3-mini, 3.8B parameters; 3,821,079,552 in the checkpoint). Qwen3:
    the Qwen/Qwen3-8B, -14B and -32B model cards ("Number of Parameters: 8.2B / 14.8B / 32.8B"). Llama 3.1:
    The Llama 3 Herd of Models (Dubey et al., 2024), "405B parameters". GPT-J: the EleutherAI/gpt-j-6b model card
    (6,053,381,344 parameters). Falcon: the tiiuae/falcon-180B model card ("180B parameters")."""
    assert load_llm(name).params == pytest.approx(params, rel=0.01)


def test_gemma_shapes_head_dim_256_mqa_tied_geglu():
    g7, g2 = load_llm("gemma-7b"), load_llm("gemma-2b")
    assert (g7.heads, g7.kv_heads, g7.head_dim, g7.hidden) == (16, 16, 256, 3072)  # heads x 256 != hidden
    assert (g2.heads, g2.kv_heads, g2.head_dim) == (8, 1, 256)  # multi-query
    assert g7.tie_embeddings and g7.gated_ffn and g7.norm == "rmsnorm" and g7.activation.startswith("gelu")
    p = build_pass(g7, 1, 1, 1, 100)
    qkv = next(op for op in p.op_records if op.name == "L0.qkv")
    assert (qkv.n, qkv.k) == (3 * 16 * 256, 3072)
    o = next(op for op in p.op_records if op.name == "L0.o_proj")
    assert (o.n, o.k) == (3072, 4096)


def test_phi3_fused_projections_and_its_context_variants():
    short, long = load_llm("phi-3-mini-4k"), load_llm("phi-3-mini-128k")
    assert (short.hidden, short.layers, short.heads, short.kv_heads, short.ffn) == (3072, 32, 32, 32, 8192)
    assert short.params == long.params  # LongRoPE changes positions, not shapes
    assert (short.max_positions, long.max_positions) == (4096, 131072)
    assert short.window == 2047 and long.window == 262144
    gemms = {op.name: op for op in build_pass(short, 1, 1, 1, 10).op_records if isinstance(op, Gemm)}
    assert gemms["L0.qkv"].n == 3 * 3072 and gemms["L0.gate_up"].n == 2 * 8192


def test_every_shipped_config_loads_and_simcore_models_lists_it():
    names = model_names()
    assert {"gemma-2b", "gemma-7b", "phi-3-mini-4k", "phi-3-mini-128k", "mistral-7b"} <= set(names)
    for n in names:
        assert load_llm(n).params > 0
    out = subprocess.run([sys.executable, "-m", "simcore", "models"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert all(n in out.stdout for n in names)


@pytest.fixture
def mistral_cfg(tmp_path):
    cfg = json.loads(open("models/configs/mistral-7b.json").read())

    def write(**extra):
        p = tmp_path / "config.json"
        p.write_text(json.dumps({**cfg, **extra}, indent=2))
        return p

    return write


def test_moe_keys_under_a_dense_model_type_are_refused_by_name(mistral_cfg):
    p = mistral_cfg(num_local_experts=8, num_experts_per_tok=2)
    with pytest.raises(ConfigError) as e:
        load_llm(str(p))
    msg = str(e.value)
    assert msg.startswith(f"{p}:") and e.value.key == "num_local_experts"
    assert (
        "unsupported config key 'num_local_experts' (mixture-of-experts keys need a mixture-of-experts "
        "model_type: dbrx, deepseek_v2, deepseek_v3, gpt_oss, mixtral, phimoe, qwen2_moe, qwen3_moe)" in msg
    )
    line = e.value.line
    assert '"num_local_experts"' in p.read_text().splitlines()[line - 1]


@pytest.mark.parametrize("key", ["n_routed_experts", "moe_intermediate_size", "num_experts"])
def test_other_moe_keys_are_refused_too(mistral_cfg, key):
    with pytest.raises(ConfigError, match=f"'{key}' \\(mixture-of-experts"):
        load_llm(str(mistral_cfg(**{key: 64})))


def test_unknown_keys_are_refused_and_harmless_ones_and_annotations_pass(mistral_cfg):
    with pytest.raises(ConfigError, match="unsupported config key 'logit_scale' for model_type 'mistral'"):
        load_llm(str(mistral_cfg(logit_scale=0.5)))
    with pytest.raises(ConfigError, match="'quantization_config' \\(give the weight format"):
        load_llm(str(mistral_cfg(quantization_config={"bits": 4})))
    ok = load_llm(str(mistral_cfg(_comment="mine", transformers_version="4.40", pad_token_id=0,
                                  attention_dropout=0.0, rope_scaling=None)))  # fmt: skip
    assert ok.kv_heads == 8


@pytest.mark.parametrize(("extra", "key"), [({"hidden_size": 0}, "hidden_size"),
                                             ({"num_key_value_heads": 5}, "num_key_value_heads"),
                                             ({"num_hidden_layers": "32"}, "num_hidden_layers"),
                                             ({"sliding_window": -1}, "sliding_window")])  # fmt: skip
def test_impossible_shape_values_are_refused_with_their_key(mistral_cfg, extra, key):
    with pytest.raises(ConfigError) as e:
        load_llm(str(mistral_cfg(**extra)))
    assert e.value.key == key and e.value.line


def test_a_config_that_is_not_an_object_is_refused(tmp_path):
    p = tmp_path / "config.json"
    p.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        load_llm(str(p))


# ---------------------------------------------------------------------------------------------- ONNX


def _tiny_onnx(path):
    """x[N, 64] -> MatMul(64x128) -> Relu -> Gemm(128x10) -> Softmax, batch dimension dynamic."""
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((64, 128)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((128, 10)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(np.zeros(10, np.float32), "b2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu"),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["z"], name="fc2"),
             helper.make_node("Softmax", ["z"], ["y"], name="softmax", axis=-1)]  # fmt: skip
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], [w1, w2, b2])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_an_onnx_model_runs_from_an_experiment(tmp_path):
    from simcore.experiment import load_experiment, run

    net = _tiny_onnx(tmp_path / "tiny.onnx")
    spec = {"hardware": "a100-sxm4-80gb", "model": str(net), "dtype": "fp16",
            "scenario": {"kind": "inference", "batch": 32}}  # fmt: skip
    s = run(spec, keep_records=False).summary
    assert s["batch"] == 32 and s["latency_s"] > 0 and s["frames_per_s"] == pytest.approx(32 / s["latency_s"])
    assert s["model"] == str(net) and s["dtype"] == "fp16"
    # a relative path resolves beside the experiment file
    exp = tmp_path / "exp.yaml"
    exp.write_text("hardware: a100-sxm4-80gb\nmodel: tiny.onnx\nscenario: {kind: inference, batch: 4}\n")
    assert load_experiment(exp).model == str(net)
    assert run(exp, keep_records=False).summary["batch"] == 4
    with pytest.raises(ConfigError, match="runs under scenario kind 'inference'") as e:
        load_experiment(exp, ["scenario.kind=decode"])
    assert e.value.key.endswith("scenario.kind")
    exp.write_text("hardware: a100-sxm4-80gb\nmodel: missing.onnx\nscenario: {kind: inference}\n")
    with pytest.raises(ConfigError, match="exp.yaml:2: model: no such ONNX file 'missing.onnx'"):
        load_experiment(exp)


def test_an_onnx_model_runs_from_simcore_run(tmp_path):
    net = _tiny_onnx(tmp_path / "tiny.onnx")
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"hardware: h100-sxm5-80gb\nmodel: {net}\nscenario: {{kind: inference, batch: 8}}\n")
    p = subprocess.run(
        [sys.executable, "-m", "simcore", "run", str(exp), "--json"], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["batch"] == 8


def test_unsupported_onnx_ops_and_a_missing_onnx_package_are_one_line_errors(tmp_path, monkeypatch):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from simcore.experiment import load_experiment

    bad = tmp_path / "bad.onnx"
    node = helper.make_node("Einsum", ["x", "x"], ["y"], equation="ij,ij->ij")
    g = helper.make_graph([node], "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])  # fmt: skip
    onnx.save(helper.make_model(g), str(bad))
    spec = {"hardware": "a100-sxm4-80gb", "model": str(bad), "scenario": {"kind": "inference"}}
    with pytest.raises(ConfigError, match="unsupported ONNX ops: Einsum"):
        load_experiment(spec)
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if it were not installed
    with pytest.raises(ConfigError, match="need the optional 'onnx' package: pip install onnx") as e:
        load_experiment(spec)
    assert "\n" not in str(e.value)
