"""Decoder-only LLMs from a Hugging Face `config.json`: a normalized spec and operator graphs for
prefill and decode, tensor-parallel across a device group (Megatron-style column/row splits with an
all-reduce after attention and after the MLP).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from simcore.errors import ConfigError
from simcore.ops import (
    AllGather,
    AllReduce,
    Attention,
    Elementwise,
    Embedding,
    Gemm,
    Norm,
    Op,
    Tensor,
    dtype_bytes,
)
from simcore.precision import PrecisionPlan, tensor_format

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class LLMSpec:
    """The shape of a decoder-only transformer, independent of the HF field names it came from."""

    name: str
    family: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    gated_ffn: bool  # SwiGLU (gate, up, down) vs. two-matrix MLP
    norm: str  # rmsnorm | layernorm
    activation: str
    tie_embeddings: bool = False
    max_positions: int = 4096
    bias: bool = False
    #: sliding-window attention: layers `window_start`.. attend to at most the last `window` keys and keep
    #: only that many tokens of KV cache (a rolling buffer); None = full attention everywhere
    window: int | None = None
    window_start: int = 0

    def layer_window(self, layer: int) -> int | None:
        """The attention window of layer `layer` (None: full causal attention)."""
        return self.window if self.window is not None and layer >= self.window_start else None

    def kv_layer_tokens(self, tokens: int, first: int = 0, last: int | None = None) -> int:
        """Tokens of KV cache one sequence of `tokens` tokens keeps, summed over layers first..last-1
        (a windowed layer keeps at most its window)."""
        last = self.layers if last is None else last
        return sum(min(tokens, self.layer_window(i) or tokens) for i in range(first, last))

    def kv_fraction(self, tokens: int, first: int, last: int) -> float:
        """Share of a full-attention KV cache of `tokens` tokens that layers first..last-1 keep: their
        fraction of the layers, less what sliding windows drop."""
        if self.window is None or tokens <= self.window:
            return (last - first) / self.layers
        return self.kv_layer_tokens(tokens, first, last) / (tokens * self.layers)

    def check_positions(self, positions: int, needs: str, key: str | None = None) -> None:
        """Refuse a sequence of `positions` tokens longer than the model's maximum context; `needs` says
        how it adds up ("prompt 4000 + 200 new tokens needs 4200")."""
        if positions > self.max_positions:
            raise ConfigError(f"{self.name} accepts at most {self.max_positions} positions; {needs}", key=key)

    @property
    def layer_params(self) -> int:
        """Parameters of one transformer block (attention, MLP, norms, biases)."""
        h, d = self.hidden, self.head_dim
        attn = h * (self.heads * d) + 2 * h * (self.kv_heads * d) + (self.heads * d) * h
        mlp = (3 if self.gated_ffn else 2) * h * self.ffn
        norms = 2 * h * (2 if self.norm == "layernorm" else 1)
        bias = (self.heads + 2 * self.kv_heads) * d + h + self.ffn * (2 if self.gated_ffn else 1) + h
        return attn + mlp + norms + (bias if self.bias else 0)

    @property
    def params(self) -> int:
        """Parameter count (embeddings included; tied embeddings counted once)."""
        h = self.hidden
        emb = self.vocab * h * (1 if self.tie_embeddings else 2)
        pos = self.max_positions * h if self.family in ("opt", "gpt3") else 0
        return self.layers * self.layer_params + emb + pos + h

    @property
    def kv_elements_per_token(self) -> int:
        """K and V elements one token adds to the cache, over all layers."""
        return 2 * self.layers * self.kv_heads * self.head_dim

    def kv_bytes_per_token(self, dtype: str = "bf16") -> float:
        return self.kv_elements_per_token * dtype_bytes(dtype)


# ---------------------------------------------------------------------------------- HF config parsing

FAMILIES: dict[str, Callable[[str, Mapping[str, Any]], LLMSpec]] = {}
#: per model_type, the config keys its builder reads (any other key not in HARMLESS is refused)
FAMILY_KEYS: dict[str, frozenset[str]] = {}

#: keys that never change the shapes or costs modelled here: metadata, token ids, initialization,
#: dropout, norm epsilons and rotary-position settings (positions only, not shapes)
HARMLESS = frozenset({
    "model_type", "architectures", "torch_dtype", "transformers_version", "auto_map", "bos_token_id",
    "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id", "initializer_range", "init_std",
    "rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "rope_theta", "rope_scaling", "partial_rotary_factor",
    "original_max_position_embeddings", "attention_dropout", "dropout", "activation_dropout", "hidden_dropout",
    "attn_pdrop", "embd_pdrop", "resid_pdrop", "layerdrop", "use_cache", "tie_word_embeddings", "pretraining_tp",
    "is_decoder", "is_encoder_decoder", "return_dict", "output_attentions", "output_hidden_states",
    "torchscript", "use_return_dict", "chunk_size_feed_forward", "tokenizer_class", "prefix",
})  # fmt: skip

#: keys of features not modelled, with the reason given in the refusal
_UNSUPPORTED_HINTS = {
    **dict.fromkeys(("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size",
                     "num_experts_per_tok", "n_shared_experts", "shared_expert_intermediate_size",
                     "router_aux_loss_coef", "output_router_logits", "decoder_sparse_step", "moe_layer_freq",
                     "first_k_dense_replace", "router_jitter_noise", "topk_group", "n_group",
                     "routed_scaling_factor", "norm_topk_prob", "mlp_only_layers"),
                    "mixture-of-experts is not supported yet"),
    "quantization_config": "give the weight format with the experiment's precision: instead",
    "kv_lora_rank": "multi-head latent attention is not supported",
    "q_lora_rank": "multi-head latent attention is not supported",
    "attn_logit_softcapping": "Gemma-2 is not supported (model_type gemma2)",
    "final_logit_softcapping": "Gemma-2 is not supported (model_type gemma2)",
}  # fmt: skip


def family(*model_types: str, keys: tuple[str, ...] = ()) -> Callable:
    """Register a builder for `model_types`; `keys` are the config keys it reads."""

    def deco(fn: Callable[[str, Mapping[str, Any]], LLMSpec]) -> Callable:
        for t in model_types:
            FAMILIES[t] = fn
            FAMILY_KEYS[t] = frozenset(keys)
        return fn

    return deco


def _pos(c: Mapping[str, Any], key: str, default: Any = None) -> int:
    """A positive integer field (a missing one without default is a KeyError: reported as missing)."""
    v = c[key] if default is None else c.get(key, default)
    if v is None and default is not None:
        v = default
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"expected a positive integer, got {v!r}", key=key)
    return v


def _flag(c: Mapping[str, Any], key: str, default: bool = False) -> bool:
    v = c.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ConfigError(f"expected true or false, got {v!r}", key=key)
    return v


def _heads(c: Mapping[str, Any], hidden: int, heads_key: str, kv_key: str | None) -> tuple[int, int, int]:
    """(heads, kv_heads, head_dim), checked: kv heads divide the heads, head_dim given or hidden / heads."""
    heads = _pos(c, heads_key)
    kv = _pos(c, kv_key, heads) if kv_key else heads
    if heads % kv:
        raise ConfigError(f"{heads} attention heads are not a multiple of {kv} key/value heads", key=kv_key)
    if c.get("head_dim") is not None:
        d = _pos(c, "head_dim")
    elif hidden % heads:
        raise ConfigError(f"hidden size {hidden} is not a multiple of {heads} heads (give head_dim)",
                          key=heads_key)  # fmt: skip
    else:
        d = hidden // heads
    return heads, kv, d


def _window(c: Mapping[str, Any]) -> int | None:
    w = c.get("sliding_window")
    return None if w is None else _pos(c, "sliding_window")


_LLAMA_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
               "intermediate_size", "vocab_size", "hidden_act", "tie_word_embeddings", "max_position_embeddings",
               "attention_bias", "mlp_bias")  # fmt: skip


@family("llama", "yi", keys=_LLAMA_KEYS)
@family("mistral", keys=(*_LLAMA_KEYS, "sliding_window"))
@family("qwen2", keys=(*_LLAMA_KEYS, "sliding_window", "use_sliding_window", "max_window_layers"))
def _llama_like(name: str, c: Mapping[str, Any]) -> LLMSpec:
    mt, h = c["model_type"], _pos(c, "hidden_size")
    heads, kv, d = _heads(c, h, "num_attention_heads", "num_key_value_heads")
    layers = _pos(c, "num_hidden_layers")
    window, start = None, 0
    if mt == "mistral":
        window = _window(c)
    elif mt == "qwen2" and _flag(c, "use_sliding_window"):  # layers from max_window_layers on use the window
        window, start = _window(c), _pos(c, "max_window_layers", layers) if c.get("max_window_layers") else 0
    return LLMSpec(
        name, mt, h, layers, heads, kv, d, _pos(c, "intermediate_size"), _pos(c, "vocab_size"), True, "rmsnorm",
        c.get("hidden_act", "silu"), _flag(c, "tie_word_embeddings"), _pos(c, "max_position_embeddings", 4096),
        bias=mt == "qwen2" or _flag(c, "attention_bias") or _flag(c, "mlp_bias"), window=window, window_start=start,
    )  # fmt: skip


@family("gemma", keys=_LLAMA_KEYS + ("hidden_activation",))
def _gemma(name: str, c: Mapping[str, Any]) -> LLMSpec:
    """Gemma: GeGLU MLP, RMSNorm, rotary positions, tied embeddings, head_dim 256 (wider than hidden /
    heads for 7B), multi-query attention for 2B."""
    h = _pos(c, "hidden_size")
    heads, kv, d = _heads(c, h, "num_attention_heads", "num_key_value_heads")
    act = c.get("hidden_activation") or c.get("hidden_act") or "gelu_pytorch_tanh"
    return LLMSpec(name, "gemma", h, _pos(c, "num_hidden_layers"), heads, kv, d, _pos(c, "intermediate_size"),
                   _pos(c, "vocab_size"), True, "rmsnorm", act, _flag(c, "tie_word_embeddings", True),
                   _pos(c, "max_position_embeddings", 8192), bias=_flag(c, "attention_bias"))  # fmt: skip


@family("phi3", keys=(*_LLAMA_KEYS, "sliding_window"))
def _phi3(name: str, c: Mapping[str, Any]) -> LLMSpec:
    """Phi-3: the HF weights fuse q, k, v into qkv_proj and gate, up into gate_up_proj (the graph's GEMMs
    are fused that way already); SwiGLU, RMSNorm, rotary positions (LongRoPE for the 128k variants changes
    positions only). `sliding_window` applies to every layer."""
    h = _pos(c, "hidden_size")
    heads, kv, d = _heads(c, h, "num_attention_heads", "num_key_value_heads")
    return LLMSpec(name, "phi3", h, _pos(c, "num_hidden_layers"), heads, kv, d, _pos(c, "intermediate_size"),
                   _pos(c, "vocab_size"), True, "rmsnorm", c.get("hidden_act", "silu"),
                   _flag(c, "tie_word_embeddings"), _pos(c, "max_position_embeddings", 4096),
                   bias=_flag(c, "attention_bias"), window=_window(c))  # fmt: skip


@family("opt", keys=("hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim", "vocab_size",
                     "activation_function", "tie_word_embeddings", "max_position_embeddings",
                     "do_layer_norm_before", "word_embed_proj_dim", "enable_bias",
                     "layer_norm_elementwise_affine", "output_projection"))  # fmt: skip
def _opt(name: str, c: Mapping[str, Any]) -> LLMSpec:
    h = _pos(c, "hidden_size")
    heads, _, d = _heads(c, h, "num_attention_heads", None)
    if c.get("word_embed_proj_dim") not in (None, h):
        raise ConfigError(f"word_embed_proj_dim {c['word_embed_proj_dim']!r} != hidden_size {h}: projected "
                          "embeddings (OPT-350m) are not supported", key="word_embed_proj_dim")  # fmt: skip
    return LLMSpec(name, "opt", h, _pos(c, "num_hidden_layers"), heads, heads, d, _pos(c, "ffn_dim"),
                   _pos(c, "vocab_size"), False, "layernorm", c.get("activation_function", "relu"),
                   _flag(c, "tie_word_embeddings", True), _pos(c, "max_position_embeddings", 2048),
                   bias=_flag(c, "enable_bias", True))  # fmt: skip


@family("gpt2", "gpt3", keys=("n_embd", "n_head", "n_layer", "n_inner", "vocab_size", "activation_function",
                              "n_positions", "n_ctx", "tie_word_embeddings", "scale_attn_weights",
                              "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "summary_type",
                              "summary_use_proj", "summary_activation", "summary_proj_to_labels",
                              "summary_first_dropout", "task_specific_params"))  # fmt: skip
def _gpt(name: str, c: Mapping[str, Any]) -> LLMSpec:
    h = _pos(c, "n_embd")
    heads, _, d = _heads(c, h, "n_head", None)
    ffn = _pos(c, "n_inner") if c.get("n_inner") is not None else 4 * h
    return LLMSpec(name, "gpt3", h, _pos(c, "n_layer"), heads, heads, d, ffn, _pos(c, "vocab_size"), False,
                   "layernorm", c.get("activation_function", "gelu"), True, _pos(c, "n_positions", 2048),
                   bias=True)  # fmt: skip


def check_keys(model_type: str, cfg: Mapping[str, Any]) -> None:
    """Refuse, by name, a config key the builder of `model_type` neither reads nor knows to be harmless
    (keys starting with '_' are annotations)."""
    known = FAMILY_KEYS.get(model_type, frozenset()) | HARMLESS
    for key in cfg:
        if key.startswith("_") or key in known:
            continue
        hint = _UNSUPPORTED_HINTS.get(key)
        why = f" ({hint})" if hint else f" for model_type {model_type!r} (the builder would ignore it)"
        raise ConfigError(f"unsupported config key {key!r}{why}", key=key)


def model_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def _line_of(text: str, key: str | None) -> int | None:
    """The line on which `"key":` first appears in a JSON text."""
    if not key:
        return None
    m = re.search(r'"' + re.escape(key) + r'"\s*:', text)
    return text.count("\n", 0, m.start()) + 1 if m else None


def load_llm(ref: str | Path) -> LLMSpec:
    """A shipped model name (`llama-2-7b`) or a path to a Hugging Face config.json."""
    p = Path(ref)
    if not p.suffix:
        p = CONFIG_DIR / f"{ref}.json"
        if not p.exists():
            raise ConfigError(
                f"unknown model {str(ref)!r} (shipped: {', '.join(model_names())}; or give a config.json path)"
            )
    if not p.is_file():
        raise ConfigError("no such file", str(ref))
    try:
        text = p.read_text()
        cfg = json.loads(text)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read model config: {e}", str(p)) from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"malformed JSON: {e.msg}", str(p), e.lineno) from None
    except RecursionError:
        raise ConfigError("malformed JSON: nested too deeply", str(p)) from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"expected a JSON object, got {type(cfg).__name__}", str(p), 1)
    mt = cfg.get("model_type")
    if not isinstance(mt, str) or mt not in FAMILIES:
        raise ConfigError(f"unsupported model_type {mt!r} (supported: {', '.join(sorted(FAMILIES))})", str(p),
                          _line_of(text, "model_type"), key="model_type")  # fmt: skip
    try:
        check_keys(mt, cfg)
        return FAMILIES[mt](p.stem, cfg)
    except KeyError as e:
        raise ConfigError(
            f"missing field {e.args[0]!r} for model_type {mt!r}", str(p), key=e.args[0]
        ) from None
    except ConfigError as e:
        raise ConfigError(e.message, str(p), _line_of(text, e.key), e.key) from None


# ------------------------------------------------------------------------------------------ graphs


class LogicalOp(NamedTuple):
    """One op of a rank's pass: the block it belongs to (-1 embedding, 0..L-1 a layer, L the head) and
    the tensors it makes resident when it first runs (the layer's KV cache)."""

    op: Op
    block: int
    allocs: tuple[Tensor, ...] = ()
    twin: int = -1  # index of the identical op of the first layer (layers repeat: costed once)
    name: str = ""  # the op's name in this layer (identical layers share the first layer's op record)


@dataclass(frozen=True)
class LogicalPass:
    """One forward pass as a tensor-parallel rank runs it: a chain of ops, no device names, no transfers.
    A mapper places it (which GPUs, which pipeline stage, where weights live)."""

    name: str
    phase: str
    ops: tuple[LogicalOp, ...]
    layers: int
    tp: int
    layer_weight_B: float  # bytes of one layer's weights on one rank (what a weight stream moves)
    activation_B: float  # bytes of the hidden state between blocks on one rank (what a pipeline stage sends)

    @property
    def op_records(self) -> list[Op]:
        """The ops in order (identical layers repeat the same records)."""
        return [lop.op for lop in self.ops]


def weight_bytes_per_device(spec: LLMSpec, tp: int, dtype: str, resident_layers: int | None = None) -> float:
    """Weights each TP rank holds: layer matrices split tp ways, norms and embeddings split too; with
    `resident_layers`, only that many layers' buffers (weights streamed from the host)."""
    layers = spec.layers if resident_layers is None else min(resident_layers, spec.layers)
    return (spec.params - (spec.layers - layers) * spec.layer_params) * dtype_bytes(dtype) / tp


def check_tp(spec: LLMSpec, tp: int) -> None:
    if spec.heads % tp or spec.ffn % tp:
        raise ConfigError(f"tensor parallelism {tp} does not divide {spec.name}'s {spec.heads} heads "
                          f"and FFN width {spec.ffn}", key="parallelism.tp")  # fmt: skip


class SeqGroup(NamedTuple):
    """`count` sequences that each process `q_len` new tokens over `kv_len` tokens of context (the new
    ones included): a decode step is q_len 1, a prefill q_len == kv_len, a prefill chunk q_len < kv_len."""

    count: int
    q_len: int
    kv_len: int


def build_pass(spec: LLMSpec, tp: int, batch: int, q_len: int, kv_len: int,
               precision: PrecisionPlan | str = "bf16", phase: str = "decode",
               kv_alloc_tokens: int = 0, groups: tuple[SeqGroup, ...] = ()) -> LogicalPass:  # fmt: skip
    """One forward pass over `q_len` new tokens per sequence with `kv_len` tokens of context
    (prefill: q_len == kv_len; decode: q_len == 1), Megatron-style over `tp` ranks (column/row splits,
    an all-reduce after attention and after the MLP). `precision` (or one dtype for everything) sets the
    activations' dtype, the weights' and KV cache's storage formats and the collectives' dtype.
    `kv_alloc_tokens` > 0 allocates each layer's KV cache for that many tokens when the layer first runs.

    `groups` makes the pass a ragged batch (a serving iteration mixing decode steps and prefill chunks):
    `batch`, `q_len` and `kv_len` are then ignored, the GEMMs run over every group's tokens at once, and
    each group gets its own attention kernel (a varlen kernel launches once: the difference is a launch
    per extra group); logits are computed for one token per sequence."""
    check_tp(spec, tp)
    if not groups:
        groups = (SeqGroup(batch, q_len, kv_len),)
    batch = sum(g.count for g in groups)
    plan = PrecisionPlan.uniform(precision) if isinstance(precision, str) else precision
    dtype, comm = plan.activations, plan.communication
    e, ce = dtype_bytes(dtype), dtype_bytes(comm)
    kv_dtype = plan.attention_kv_dtype

    def weights(tensor: str, layer: int | None = None) -> str | None:
        """`Gemm.weight_dtype` of one weight matrix (a mixture such as q4_k_m varies by tensor and layer)."""
        w = plan.gemm_weight_dtype
        return tensor_format(w, tensor, layer, spec.layers) if w is not None else None

    h, d, T = spec.hidden, spec.head_dim, sum(g.count * g.q_len for g in groups)
    heads, kvh = spec.heads // tp, max(1, spec.kv_heads // tp)
    ffn = spec.ffn // tp
    kv_B = plan.kv_bytes(2 * batch * kvh * kv_alloc_tokens * d)

    def kv_alloc_B(i: int) -> float:
        """Layer i's KV cache: `kv_alloc_tokens` tokens, or its window (a rolling buffer) if shorter."""
        w = spec.layer_window(i)
        if w is None or kv_alloc_tokens <= w:
            return kv_B
        return plan.kv_bytes(2 * batch * kvh * w * d)

    def layer(i: int) -> list[Op]:
        """Layer i's ops, in order (the attention is the one that allocates the KV cache). A windowed
        layer's decode step reads only the last `window` tokens; its prefill masks the older ones."""
        p = f"L{i}."
        window = spec.layer_window(i)

        def attention(j: int, g: SeqGroup) -> Attention:
            kv = min(g.kv_len, window) if window is not None and g.q_len == 1 else g.kv_len
            return Attention(p + ("attn" if j == 0 else f"attn{j}"), dtype, batch=g.count, heads=heads,
                             kv_heads=kvh, q_len=g.q_len, kv_len=kv, head_dim=d, causal=True,
                             kv_dtype=kv_dtype, window=window)  # fmt: skip

        out: list[Op] = [
            Norm(p + "norm1", dtype, rows=T, cols=h, function=spec.norm),
            Gemm(p + "qkv", dtype, m=T, n=(heads + 2 * kvh) * d, k=h, weight_dtype=weights("attn_qkv", i)),
        ]
        if spec.family != "opt" and spec.family != "gpt3":
            out.append(Elementwise(p + "rope", dtype, elements=T * (heads + kvh) * d, inputs=1,
                                   flops_per_element=3, function="rope"))  # fmt: skip
        out += [attention(j, g) for j, g in enumerate(groups)]
        out.append(Gemm(p + "o_proj", dtype, m=T, n=h, k=heads * d, weight_dtype=weights("attn_output", i)))
        if tp > 1:
            out.append(AllReduce(p + "allreduce_attn", comm, bytes_per_device=T * h * ce, group=tp))
        out += [Elementwise(p + "residual1", dtype, elements=T * h, inputs=2),
                Norm(p + "norm2", dtype, rows=T, cols=h, function=spec.norm)]  # fmt: skip
        if spec.gated_ffn:
            out += [Gemm(p + "gate_up", dtype, m=T, n=2 * ffn, k=h, weight_dtype=weights("ffn_up", i)),
                    Elementwise(p + "act_mul", dtype, elements=T * ffn, inputs=2, flops_per_element=5,
                                function=spec.activation)]  # fmt: skip
        else:
            out += [Gemm(p + "fc1", dtype, m=T, n=ffn, k=h, weight_dtype=weights("ffn_up", i)),
                    Elementwise(p + "act", dtype, elements=T * ffn, inputs=1, flops_per_element=8,
                                function=spec.activation)]  # fmt: skip
        out.append(Gemm(p + "down", dtype, m=T, n=h, k=ffn, weight_dtype=weights("ffn_down", i)))
        if tp > 1:
            out.append(AllReduce(p + "allreduce_mlp", comm, bytes_per_device=T * h * ce, group=tp))
        out.append(Elementwise(p + "residual2", dtype, elements=T * h, inputs=2))
        return out

    def formats(i: int) -> tuple[Any, ...]:
        """What can differ between layers: the storage format of each weight (GGUF mixtures) and the
        attention window."""
        return (
            *(weights(t, i) for t in ("attn_qkv", "attn_output", "ffn_up", "ffn_down")),
            spec.layer_window(i),
        )

    ops: list[LogicalOp] = [LogicalOp(Embedding("embed", dtype, tokens=T, hidden=h, vocab=spec.vocab), -1)]
    first = layer(0)
    start_attn = next(j for j, op in enumerate(first) if op.kind == "attention")
    start, suffixes = len(ops), [op.name[len("L0.") :] for op in first]
    first_formats = formats(0)
    for i in range(spec.layers):
        p = f"L{i}."
        same = i > 0 and formats(i) == first_formats
        for j, op in enumerate(first if same or i == 0 else layer(i)):
            allocs = (
                (Tensor(p + "kv_cache", kv_alloc_B(i)),)
                if kv_alloc_tokens and op.kind == "attention" and j == start_attn
                else ()
            )
            twin = start + j if i > 0 and (same or op.signature() == first[j].signature()) else -1
            ops.append(LogicalOp(op, i, allocs, twin, p + suffixes[j]))
    head: list[Op] = [Norm("final_norm", dtype, rows=batch, cols=h, function=spec.norm),
                      Gemm("lm_head", dtype, m=batch, n=spec.vocab // tp, k=h, weight_dtype=weights("output"))]  # fmt: skip
    if tp > 1:
        head.append(
            AllGather("logits_allgather", comm, bytes_per_device=batch * (spec.vocab // tp) * ce, group=tp)
        )
    ops += [LogicalOp(op, spec.layers) for op in head]
    return LogicalPass(f"{spec.name}-{phase}", phase, tuple(ops), spec.layers, tp,
                       plan.weight_bytes(spec.layer_params) / tp, T * h * e / tp)  # fmt: skip
