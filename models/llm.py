"""Decoder-only LLMs from a Hugging Face `config.json`: a normalized spec and operator graphs for
prefill and decode, tensor-parallel across a device group (Megatron-style column/row splits with an
all-reduce after attention and after the MLP).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
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
    Softmax,
    Tensor,
    dtype_bytes,
)
from simcore.precision import PrecisionPlan, tensor_format

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class MoESpec:
    """The mixture-of-experts MLP of a model: `experts` routed experts of FFN width `expert_ffn`, `top_k`
    chosen per token, plus always-on shared experts (total width `shared_ffn`). Layers in `dense_layers`
    keep a dense MLP of the model's `ffn` width instead (DeepSeek's first_k_dense_replace, Qwen's
    mlp_only_layers / decoder_sparse_step)."""

    experts: int
    top_k: int
    expert_ffn: int
    shared_ffn: int = 0
    shared_gate: bool = False  # Qwen2-MoE: sigmoid(x @ w_gate[h, 1]) scales the shared expert's output
    dense_layers: frozenset[int] = frozenset()
    router_bias: bool = False  # gpt-oss: the router has a bias
    expert_bias: bool = False  # gpt-oss: gate_up (2 f) and down (h) biases per expert
    score_bias: bool = False  # DeepSeek-V3 noaux_tc: a per-expert bias added to scores for selection
    groups: int = 1  # grouped top-k (DeepSeek): experts in `groups` groups, the best `topk_groups` searched
    topk_groups: int = 1

    def is_moe(self, layer: int) -> bool:
        return layer not in self.dense_layers

    def active_experts(self, tokens: int) -> float:
        """Expected distinct experts hit by `tokens` tokens choosing `top_k` each under uniform routing:
        E (1 - (1 - k/E)^T) (each expert is missed by one token with probability 1 - k/E)."""
        e, k = self.experts, self.top_k
        return e * (1.0 - (1.0 - k / e) ** tokens)

    def expert_params(self, hidden: int) -> int:
        """One routed expert: a gated MLP (gate, up, down) and its biases if any."""
        f = self.expert_ffn
        return 3 * hidden * f + ((2 * f + hidden) if self.expert_bias else 0)

    def router_params(self, hidden: int) -> int:
        e = self.experts
        return hidden * e + (e if self.router_bias else 0) + (e if self.score_bias else 0)

    def shared_params(self, hidden: int) -> int:
        return 3 * hidden * self.shared_ffn + (hidden if self.shared_gate else 0)

    def mlp_params(self, hidden: int, experts: int | None = None) -> int:
        """An MoE layer's MLP: router, `experts` routed experts (default: all) and the shared ones."""
        n = self.experts if experts is None else experts
        return self.router_params(hidden) + n * self.expert_params(hidden) + self.shared_params(hidden)


@dataclass(frozen=True)
class MLASpec:
    """Multi-head latent attention (DeepSeek-V2/V3): queries through an optional low-rank `q_lora_rank`
    bottleneck, keys and values from one shared latent of `kv_lora_rank` elements plus a decoupled rotary
    key of `qk_rope_dim` elements; the cache keeps only those (latent + rope) per token and layer."""

    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_dim: int
    qk_rope_dim: int
    v_dim: int

    @property
    def qk_dim(self) -> int:
        return self.qk_nope_dim + self.qk_rope_dim

    @property
    def latent_dim(self) -> int:
        """Cached elements per token and layer, shared by every head."""
        return self.kv_lora_rank + self.qk_rope_dim

    def params(self, hidden: int, heads: int) -> int:
        """q (direct, or down-projection + norm + up-projection), kv_a (latent + rope key), its norm,
        kv_b (the latent to per-head no-rope keys and values) and the output projection."""
        q = (hidden * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * heads * self.qk_dim
             if self.q_lora_rank else hidden * heads * self.qk_dim)  # fmt: skip
        kv = (
            hidden * self.latent_dim
            + self.kv_lora_rank
            + self.kv_lora_rank * heads * (self.qk_nope_dim + self.v_dim)
        )
        return q + kv + heads * self.v_dim * hidden


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
    #: the windowed layers when they are not a suffix (gpt-oss alternates sliding and full layers)
    window_layers: frozenset[int] | None = None
    moe: MoESpec | None = None
    mla: MLASpec | None = None
    qk_norm: bool = False  # Qwen3: an RMSNorm over each head's q and k (head_dim weights each)
    attn_sinks: bool = False  # gpt-oss: one learned sink logit per head (params only; its compute is tiny)
    head_bias: bool = False  # Phi-3.5-MoE: the LM head has a bias (vocab parameters)
    norm_bias: bool = True  # a LayerNorm's bias (DBRX's LayerNorms have none); RMSNorm has none anyway
    #: the weight format the checkpoint ships in (its quantization_config, as the precision plan's format
    #: with the same bits); the experiment's precision decides what a run uses
    checkpoint_format: str | None = None

    @property
    def checkpoint_precision(self) -> dict[str, str]:
        """The precision-plan entry that stores the weights as the checkpoint ships them ({}: unquantized):
        DeepSeek's FP8 blocks cover every linear layer (`weights`), gpt-oss's MXFP4 only the routed experts
        (`experts`; its quantization_config's modules_to_not_convert lists the rest)."""
        fmt = self.checkpoint_format
        return {CHECKPOINT_FORMATS[fmt][2]: fmt} if fmt else {}

    def layer_window(self, layer: int) -> int | None:
        """The attention window of layer `layer` (None: full causal attention)."""
        if self.window is None:
            return None
        if self.window_layers is not None:
            return self.window if layer in self.window_layers else None
        return self.window if layer >= self.window_start else None

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
    def attn_params(self) -> int:
        """One layer's attention: projections (or MLA's), their biases, q/k norms, sinks."""
        h, d = self.hidden, self.head_dim
        if self.mla is not None:
            return self.mla.params(h, self.heads)
        attn = h * (self.heads * d) + 2 * h * (self.kv_heads * d) + (self.heads * d) * h
        if self.bias:
            attn += (self.heads + 2 * self.kv_heads) * d + h
        return attn + (2 * d if self.qk_norm else 0) + (self.heads if self.attn_sinks else 0)

    @property
    def dense_mlp_params(self) -> int:
        h, f = self.hidden, self.ffn
        mlp = (3 if self.gated_ffn else 2) * h * f
        return mlp + ((f * (2 if self.gated_ffn else 1) + h) if self.bias else 0)

    def layer_params_of(self, layer: int, active: bool = False, ep: int = 1) -> int:
        """Parameters of block `layer`; `active`: only those one token uses (top_k routed experts); `ep`:
        the share one of `ep` expert-parallel ranks holds (its 1/ep of the routed experts)."""
        norms = 2 * self.hidden * (2 if self.norm == "layernorm" and self.norm_bias else 1)
        if self.moe is not None and self.moe.is_moe(layer):
            mlp = self.moe.mlp_params(self.hidden, self.moe.top_k if active else self.moe.experts // ep)
        else:
            mlp = self.dense_mlp_params
        return self.attn_params + mlp + norms

    def layers_params(
        self, first: int = 0, last: int | None = None, active: bool = False, ep: int = 1
    ) -> int:
        """Parameters of blocks first..last-1 (a pipeline stage's layers; one expert-parallel rank's share)."""
        last = self.layers if last is None else last
        if self.moe is None:
            return (last - first) * self.layer_params_of(0)
        return sum(self.layer_params_of(i, active, ep) for i in range(first, last))

    def routed_params(self, first: int = 0, last: int | None = None, ep: int = 1) -> int:
        """Routed-expert parameters of blocks first..last-1 (one expert-parallel rank's 1/ep of them): the
        weights a precision plan's `experts` format stores."""
        moe = self.moe
        if moe is None:
            return 0
        last = self.layers if last is None else last
        n = sum(1 for i in range(first, last) if moe.is_moe(i))
        return n * (moe.experts // ep) * moe.expert_params(self.hidden)

    @property
    def layer_params(self) -> int:
        """Parameters of the largest transformer block (attention, MLP or every expert, norms, biases):
        every block of a dense model; the buffer a streamed layer needs."""
        if self.moe is None:
            return self.layer_params_of(0)
        return max(self.layer_params_of(i) for i in range(self.layers))

    @property
    def outer_params(self) -> int:
        """Parameters outside the blocks: embeddings (tied counted once), learned positions, final norm."""
        h = self.hidden
        emb = self.vocab * h * (1 if self.tie_embeddings else 2)
        pos = self.max_positions * h if self.family in ("opt", "gpt3") else 0
        return emb + pos + h + (self.vocab if self.head_bias else 0)

    @property
    def params(self) -> int:
        """Parameter count (embeddings included; tied embeddings counted once)."""
        return self.layers_params() + self.outer_params

    @property
    def active_params(self) -> int:
        """Parameters one token uses: every block's attention, dense or shared MLP, router and top_k
        routed experts, plus embeddings as `params` counts them (= params for a dense model)."""
        return self.layers_params(active=True) + self.outer_params

    @property
    def probe_layers(self) -> int:
        """The fewest leading layers that hold one of every kind of layer (dense and MoE): what a probe
        pass of every op kind builds."""
        kinds: dict[tuple, int] = {}
        for i in range(self.layers):
            kinds.setdefault(self.moe is not None and self.moe.is_moe(i), i)
        return max(kinds.values()) + 1

    @property
    def kv_elements_per_layer_token(self) -> int:
        """Cached elements per token and layer: K and V of every KV head, or MLA's shared latent."""
        return self.mla.latent_dim if self.mla is not None else 2 * self.kv_heads * self.head_dim

    @property
    def kv_elements_per_token(self) -> int:
        """K and V elements one token adds to the cache, over all layers."""
        return self.layers * self.kv_elements_per_layer_token

    def kv_split(self, tp: int) -> int:
        """Ways the KV cache splits over `tp` ranks: by KV heads, but MLA's latent is one tensor every rank
        keeps whole."""
        return 1 if self.mla is not None else tp

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

#: model types whose builders read mixture-of-experts keys
MOE_MODEL_TYPES = (
    "dbrx",
    "deepseek_v2",
    "deepseek_v3",
    "gpt_oss",
    "mixtral",
    "phimoe",
    "qwen2_moe",
    "qwen3_moe",
)

#: keys of features not modelled under the model_type at hand, with the reason given in the refusal
_UNSUPPORTED_HINTS = {
    **dict.fromkeys(("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size",
                     "num_experts_per_tok", "experts_per_token", "n_shared_experts",
                     "shared_expert_intermediate_size", "router_aux_loss_coef", "output_router_logits",
                     "decoder_sparse_step", "moe_layer_freq", "first_k_dense_replace", "router_jitter_noise",
                     "topk_group", "n_group", "routed_scaling_factor", "norm_topk_prob", "mlp_only_layers",
                     "topk_method", "scoring_func"),
                    "mixture-of-experts keys need a mixture-of-experts model_type: " + ", ".join(MOE_MODEL_TYPES)),
    "quantization_config": "give the weight format with the experiment's precision: instead",
    "kv_lora_rank": "multi-head latent attention is read for model_type deepseek_v2 and deepseek_v3 only",
    "q_lora_rank": "multi-head latent attention is read for model_type deepseek_v2 and deepseek_v3 only",
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
@family("qwen2", "qwen3", keys=(*_LLAMA_KEYS, "sliding_window", "use_sliding_window", "max_window_layers"))
def _llama_like(name: str, c: Mapping[str, Any]) -> LLMSpec:
    """Llama-like decoders: SwiGLU, RMSNorm, rotary positions, grouped-query attention. Qwen2 adds biases on
    q, k, v; Qwen3 drops them and normalizes each head's q and k (qk_norm); Mistral and Qwen2 may slide a
    window."""
    mt, h = c["model_type"], _pos(c, "hidden_size")
    heads, kv, d = _heads(c, h, "num_attention_heads", "num_key_value_heads")
    layers = _pos(c, "num_hidden_layers")
    window, start = None, 0
    if mt == "mistral":
        window = _window(c)
    elif mt in ("qwen2", "qwen3") and _flag(c, "use_sliding_window"):  # layers from max_window_layers on
        window, start = _window(c), _pos(c, "max_window_layers", layers) if c.get("max_window_layers") else 0
    return LLMSpec(
        name, mt, h, layers, heads, kv, d, _pos(c, "intermediate_size"), _pos(c, "vocab_size"), True, "rmsnorm",
        c.get("hidden_act", "silu"), _flag(c, "tie_word_embeddings"), _pos(c, "max_position_embeddings", 4096),
        bias=mt == "qwen2" or _flag(c, "attention_bias") or _flag(c, "mlp_bias"), window=window, window_start=start,
        qk_norm=mt == "qwen3",
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


@family("gptj", keys=("n_embd", "n_head", "n_layer", "n_inner", "vocab_size", "activation_function",
                      "n_positions", "rotary", "rotary_dim", "tie_word_embeddings", "scale_attn_weights",
                      "gradient_checkpointing", "summary_type", "summary_use_proj", "summary_activation",
                      "summary_proj_to_labels", "summary_first_dropout", "task_specific_params"))  # fmt: skip
def _gptj(name: str, c: Mapping[str, Any]) -> LLMSpec:
    """GPT-J: attention and a two-matrix GELU MLP in parallel off one LayerNorm (the same ops as one after
    the other, one norm fewer: a norm's cost, not modelled apart), rotary positions on part of each head
    (`rotary_dim`: shapes unchanged), biases on the MLP and the LM head, untied embeddings."""
    h = _pos(c, "n_embd")
    heads, _, d = _heads(c, h, "n_head", None)
    ffn = _pos(c, "n_inner") if c.get("n_inner") is not None else 4 * h
    return LLMSpec(name, "gptj", h, _pos(c, "n_layer"), heads, heads, d, ffn, _pos(c, "vocab_size"), False,
                   "layernorm", c.get("activation_function", "gelu_new"), _flag(c, "tie_word_embeddings"),
                   _pos(c, "n_positions", 2048), bias=True, head_bias=True)  # fmt: skip


@family("falcon", keys=("hidden_size", "num_hidden_layers", "num_attention_heads", "num_kv_heads", "vocab_size",
                        "max_position_embeddings", "bias", "parallel_attn", "new_decoder_architecture",
                        "multi_query", "alibi", "ffn_hidden_size", "tie_word_embeddings"))  # fmt: skip
def _falcon(name: str, c: Mapping[str, Any]) -> LLMSpec:
    """Falcon: attention and a two-matrix GELU MLP (4 x hidden) in parallel, rotary positions, grouped-query
    attention with `num_kv_heads` (the new decoder architecture; the old one is multi-query: one KV head),
    tied embeddings. ALiBi is refused: its bias is not modelled."""
    if _flag(c, "alibi"):
        raise ConfigError("ALiBi attention is not modelled", key="alibi")
    h = _pos(c, "hidden_size")
    kv_key = "num_kv_heads" if _flag(c, "new_decoder_architecture") else None
    heads, kv, d = _heads(c, h, "num_attention_heads", kv_key)
    if kv_key is None and _flag(c, "multi_query", True):
        kv = 1
    ffn = _pos(c, "ffn_hidden_size") if c.get("ffn_hidden_size") is not None else 4 * h
    return LLMSpec(name, "falcon", h, _pos(c, "num_hidden_layers"), heads, kv, d, ffn, _pos(c, "vocab_size"), False,
                   "layernorm", "gelu", _flag(c, "tie_word_embeddings", True),
                   _pos(c, "max_position_embeddings", 2048), bias=_flag(c, "bias"))  # fmt: skip


# ------------------------------------------------------------------------------- mixture of experts

#: keys that shape training only (load-balancing losses, router noise): no effect on inference costs
_MOE_TRAINING_KEYS = ("router_aux_loss_coef", "output_router_logits", "router_jitter_noise", "aux_loss_alpha",
                      "seq_aux")  # fmt: skip


def _top_k(c: Mapping[str, Any], experts: int, key: str = "num_experts_per_tok") -> int:
    k = _pos(c, key)
    if k > experts:
        raise ConfigError(f"top-k {k} is larger than the {experts} experts", key=key)
    return k


def _layer_list(c: Mapping[str, Any], key: str, layers: int) -> frozenset[int]:
    """A list of layer indices (Qwen's mlp_only_layers), each in 0..layers-1."""
    v = c.get(key) or []
    if not isinstance(v, list) or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < layers
                                      for i in v):  # fmt: skip
        raise ConfigError(f"expected a list of layer indices 0..{layers - 1}, got {v!r}", key=key)
    return frozenset(v)


#: a checkpoint's quantization_config quant_method -> (the precision plan's format with the same bits per
#: weight, the keys that method's block may have, the plan entry it stores). fp8: e4m3 with 128x128 block scales (DeepSeek-V3: one
#: fp32 scale per 16,384 weights, +0.002 bits, left out). mxfp4 (OCP microscaling): 4-bit E2M1 values with
#: one 8-bit E8M0 scale per 32 = 4.25 bits; gpt-oss quantizes only its routed experts (the plan's
#: `experts`). Both dequantize on the CUDA cores inside the GEMM's main loop on GPUs without FP4 tensor cores.
CHECKPOINT_FORMATS: dict[str, tuple[str, frozenset[str], str]] = {
    "fp8": ("fp8", frozenset({"quant_method", "fmt", "activation_scheme", "weight_block_size"}), "weights"),
    "mxfp4": ("mxfp4", frozenset({"quant_method", "modules_to_not_convert"}), "experts"),
}


def _checkpoint_format(c: Mapping[str, Any]) -> str | None:
    """The precision plan's format of the checkpoint's `quantization_config` (None: not quantized).
    Recorded, not applied: a run's weight format is the experiment's precision (bf16 unless it says)."""
    q = c.get("quantization_config")
    if q is None:
        return None
    method = q.get("quant_method") if isinstance(q, dict) else None
    if method not in CHECKPOINT_FORMATS:
        raise ConfigError(f"unsupported quant_method {method!r} (known: {', '.join(CHECKPOINT_FORMATS)})",
                          key="quant_method")  # fmt: skip
    fmt, keys, _ = CHECKPOINT_FORMATS[method]
    for k in q:
        if k not in keys:
            raise ConfigError(f"unsupported {method} quantization_config key {k!r}", key=k)
    if method == "fp8" and q.get("fmt", "e4m3") != "e4m3":
        raise ConfigError(f"fp8 format {q['fmt']!r}: only e4m3 is known", key="fmt")
    return fmt


def _qwen_window(c: Mapping[str, Any], layers: int) -> tuple[int | None, int]:
    """Qwen's sliding window: layers from max_window_layers on, when use_sliding_window is set."""
    if not _flag(c, "use_sliding_window"):
        return None, 0
    return _window(c), _pos(c, "max_window_layers", layers) if c.get("max_window_layers") else 0


@family("mixtral", keys=(*_LLAMA_KEYS, "sliding_window", "num_local_experts", "num_experts_per_tok",
                         *_MOE_TRAINING_KEYS))  # fmt: skip
def _mixtral(name: str, c: Mapping[str, Any]) -> LLMSpec:
    """Mixtral: Mistral's attention with every MLP replaced by `num_local_experts` SwiGLU experts of
    `intermediate_size`, top-k softmax routing."""
    h = _pos(c, "hidden_size")
    heads, kv, d = _heads(c, h, "num_attention_heads", "num_key_value_heads")
    experts = _pos(c, "num_local_experts")
    f = _pos(c, "intermediate_size")
    return LLMSpec(name, "mixtral", h, _pos(c, "num_hidden_layers"), heads, kv, d, f, _pos(c, "vocab_size"), True,
                   "rmsnorm", c.get("hidden_act", "silu"), _flag(c, "tie_word_embeddings"),
                   _pos(c, "max_position_embeddings", 4096), bias=_flag(c, "attention_bias"), window=_window(c),
                   moe=MoESpec(experts, _top_k(c, experts), f))  # fmt: skip


_QWEN_MOE_KEYS = (*_LLAMA_KEYS, "sliding_window", "use_sliding_window", "max_window_layers", "num_experts",
                  "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step", "mlp_only_layers",
                  "norm_topk_prob", *_MOE_TRAINING_KEYS)  # fmt: skip


@family("qwen2_moe", keys=(*_QWEN_MOE_KEYS, "shared_expert_intermediate_size"))
@family("qwen3_moe", keys=_QWEN_MOE_KEYS)
def _qwen_moe(name: str, c: Mapping[str, Any]) -> LLMSpec:
    """Qwen2-MoE / Qwen3-MoE: layer i has experts unless it is in mlp_only_layers or (i + 1) is not a
    multiple of decoder_sparse_step (then a dense MLP of intermediate_size). Qwen2-MoE adds a shared
    expert of shared_expert_intermediate_size scaled by a sigmoid gate and biases on q, k, v; Qwen3-MoE
    has no shared expert and normalizes each head's q and k (qk_norm)."""
    mt, h = c["model_type"], _pos(c, "hidden_size")
    heads, kv, d = _heads(c, h, "num_attention_heads", "num_key_value_heads")
    layers, experts = _pos(c, "num_hidden_layers"), _pos(c, "num_experts")
    step = _pos(c, "decoder_sparse_step", 1)
    only = _layer_list(c, "mlp_only_layers", layers)
    dense = frozenset(i for i in range(layers) if i in only or (i + 1) % step)
    shared = _pos(c, "shared_expert_intermediate_size") if mt == "qwen2_moe" else 0
    moe = MoESpec(experts, _top_k(c, experts), _pos(c, "moe_intermediate_size"), shared, shared > 0, dense)
    window, start = _qwen_window(c, layers)
    return LLMSpec(name, mt, h, layers, heads, kv, d, _pos(c, "intermediate_size"), _pos(c, "vocab_size"), True,
                   "rmsnorm", c.get("hidden_act", "silu"), _flag(c, "tie_word_embeddings"),
                   _pos(c, "max_position_embeddings", 4096), bias=mt == "qwen2_moe" or _flag(c, "attention_bias"),
                   window=window, window_start=start, moe=moe, qk_norm=mt == "qwen3_moe")  # fmt: skip


_TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")  # DeepSeek-V2 / V2 grouped / V3 bias-corrected


@family("deepseek_v2", "deepseek_v3",
        keys=("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
              "moe_intermediate_size", "vocab_size", "hidden_act", "max_position_embeddings", "tie_word_embeddings",
              "attention_bias", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
              "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "first_k_dense_replace",
              "moe_layer_freq", "n_group", "topk_group", "topk_method", "scoring_func", "norm_topk_prob",
              "routed_scaling_factor", "ep_size", "num_nextn_predict_layers", "quantization_config",
              *_MOE_TRAINING_KEYS))  # fmt: skip
def _deepseek(name: str, c: Mapping[str, Any]) -> LLMSpec:
    """DeepSeek-V2 / V3: multi-head latent attention (MLA) and DeepSeekMoE — layer i has `n_routed_experts`
    experts of moe_intermediate_size plus `n_shared_experts` shared ones when i >= first_k_dense_replace
    and i % moe_layer_freq == 0, else a dense MLP of intermediate_size; grouped top-k routing (n_group,
    topk_group); V3's noaux_tc adds a per-expert score bias. Routing's scoring function and scaling
    change no shape. The multi-token-prediction module (num_nextn_predict_layers, a draft head for
    speculative decoding outside the published main-model size) is not part of the pass. ep_size is the
    reference code's deployment hint; the experiment's parallelism decides."""
    mt, h = c["model_type"], _pos(c, "hidden_size")
    heads = _pos(c, "num_attention_heads")
    _pos(c, "num_key_value_heads", heads)  # MLA has no separate KV heads: every head reads the latent
    _pos(c, "ep_size", 1)
    if c.get("num_nextn_predict_layers") not in (None, 0):
        _pos(c, "num_nextn_predict_layers")
    if _flag(c, "attention_bias"):
        raise ConfigError("biases on MLA's projections are not modelled", key="attention_bias")
    if c.get("topk_method", "greedy") not in _TOPK_METHODS:
        raise ConfigError(f"unknown topk_method {c['topk_method']!r} (known: {', '.join(_TOPK_METHODS)})",
                          key="topk_method")  # fmt: skip
    if c.get("scoring_func", "softmax") not in ("softmax", "sigmoid"):
        raise ConfigError(
            f"unknown scoring_func {c['scoring_func']!r} (known: softmax, sigmoid)", key="scoring_func"
        )
    mla = MLASpec(_pos(c, "q_lora_rank") if c.get("q_lora_rank") is not None else None, _pos(c, "kv_lora_rank"),
                  _pos(c, "qk_nope_head_dim"), _pos(c, "qk_rope_head_dim"), _pos(c, "v_head_dim"))  # fmt: skip
    layers, experts = _pos(c, "num_hidden_layers"), _pos(c, "n_routed_experts")
    first, freq = c.get("first_k_dense_replace"), _pos(c, "moe_layer_freq", 1)
    first = 0 if first is None else first
    if isinstance(first, bool) or not isinstance(first, int) or not 0 <= first <= layers:
        raise ConfigError(f"expected a layer count 0..{layers}, got {first!r}", key="first_k_dense_replace")
    groups, topk_groups = _pos(c, "n_group", 1), _pos(c, "topk_group", 1)
    if experts % groups or topk_groups > groups:
        raise ConfigError(f"{experts} experts in {groups} groups, top {topk_groups} groups: impossible",
                          key="topk_group")  # fmt: skip
    ef = _pos(c, "moe_intermediate_size")
    shared = _pos(c, "n_shared_experts") * ef if c.get("n_shared_experts") else 0
    dense = frozenset(i for i in range(layers) if i < first or i % freq)
    moe = MoESpec(experts, _top_k(c, experts), ef, shared, False, dense,
                  score_bias=c.get("topk_method") == "noaux_tc", groups=groups, topk_groups=topk_groups)  # fmt: skip
    return LLMSpec(name, mt, h, layers, heads, heads, mla.qk_dim, _pos(c, "intermediate_size"), _pos(c, "vocab_size"),
                   True, "rmsnorm", c.get("hidden_act", "silu"), _flag(c, "tie_word_embeddings"),
                   _pos(c, "max_position_embeddings", 4096), moe=moe, mla=mla,
                   checkpoint_format=_checkpoint_format(c))  # fmt: skip


_LAYER_TYPES = ("sliding_attention", "full_attention")


@family("gpt_oss", keys=("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                         "intermediate_size", "vocab_size", "hidden_act", "max_position_embeddings",
                         "tie_word_embeddings", "attention_bias", "num_local_experts", "num_experts_per_tok",
                         "experts_per_token", "sliding_window", "layer_types", "swiglu_limit",
                         "initial_context_length", "quantization_config", *_MOE_TRAINING_KEYS))  # fmt: skip
def _gpt_oss(name: str, c: Mapping[str, Any]) -> LLMSpec:
    """gpt-oss: every layer an MoE of SwiGLU experts (clamped at swiglu_limit: an activation detail) with
    biases on the experts and the router; attention with biases and a learned sink logit per head,
    sliding-window and full layers as `layer_types` says. initial_context_length is the pre-YaRN context
    (positions only)."""
    h = _pos(c, "hidden_size")
    heads, kv, d = _heads(c, h, "num_attention_heads", "num_key_value_heads")
    layers, experts = _pos(c, "num_hidden_layers"), _pos(c, "num_local_experts")
    k = _top_k(c, experts)
    if c.get("experts_per_token") is not None and _pos(c, "experts_per_token") != k:
        raise ConfigError(f"experts_per_token {c['experts_per_token']} != num_experts_per_tok {k}",
                          key="experts_per_token")  # fmt: skip
    types = c.get("layer_types")
    if types is None:  # the reference config's default: even layers sliding, odd ones full
        types = [_LAYER_TYPES[i % 2] for i in range(layers)]
    if not isinstance(types, list) or len(types) != layers or any(t not in _LAYER_TYPES for t in types):
        raise ConfigError(
            f"expected {layers} entries, each one of {', '.join(_LAYER_TYPES)}", key="layer_types"
        )
    windowed = frozenset(i for i, t in enumerate(types) if t == "sliding_attention")
    if windowed and c.get("sliding_window") is None:
        raise ConfigError("sliding_attention layers need a sliding_window", key="layer_types")
    f = _pos(c, "intermediate_size")
    moe = MoESpec(experts, k, f, router_bias=True, expert_bias=True)
    return LLMSpec(name, "gpt_oss", h, layers, heads, kv, d, f, _pos(c, "vocab_size"), True, "rmsnorm",
                   c.get("hidden_act", "silu"), _flag(c, "tie_word_embeddings"),
                   _pos(c, "max_position_embeddings", 4096), bias=_flag(c, "attention_bias"),
                   window=_window(c) if windowed else None, window_layers=windowed if windowed else None,
                   moe=moe, attn_sinks=True, checkpoint_format=_checkpoint_format(c))  # fmt: skip


@family("phimoe", keys=(*_LLAMA_KEYS, "sliding_window", "num_local_experts", "num_experts_per_tok",
                         "lm_head_bias", "input_jitter_noise", *_MOE_TRAINING_KEYS))  # fmt: skip
def _phimoe(name: str, c: Mapping[str, Any]) -> LLMSpec:
    """Phi-3.5-MoE: Mixtral's layout (16 SwiGLU experts of intermediate_size, top-2; its SparseMixer gating
    picks the two differently, at the same cost) with LayerNorms, biases on q, k, v and o, and a bias on the
    LM head. input_jitter_noise is training-only; LongRoPE's rope_scaling changes positions, not shapes."""
    h = _pos(c, "hidden_size")
    heads, kv, d = _heads(c, h, "num_attention_heads", "num_key_value_heads")
    experts, f = _pos(c, "num_local_experts"), _pos(c, "intermediate_size")
    return LLMSpec(name, "phimoe", h, _pos(c, "num_hidden_layers"), heads, kv, d, f, _pos(c, "vocab_size"), True,
                   "layernorm", c.get("hidden_act", "silu"), _flag(c, "tie_word_embeddings"),
                   _pos(c, "max_position_embeddings", 4096), bias=_flag(c, "attention_bias"), window=_window(c),
                   moe=MoESpec(experts, _top_k(c, experts), f), head_bias=_flag(c, "lm_head_bias"))  # fmt: skip


#: DBRX's nested blocks: the keys read in each (the rest are refused by name). clip_qkv clamps q, k, v
#: (elementwise, no shape); moe_jitter_eps and moe_loss_weight are training-only; model_type is "".
_DBRX_ATTN_KEYS = frozenset({"clip_qkv", "kv_n_heads", "rope_theta", "attn_pdrop", "model_type"})
_DBRX_FFN_KEYS = frozenset({"ffn_hidden_size", "moe_num_experts", "moe_top_k", "moe_jitter_eps", "moe_loss_weight",
                            "moe_normalize_expert_weights", "model_type", "ffn_act_fn"})  # fmt: skip


def _block(c: Mapping[str, Any], key: str, known: frozenset[str]) -> Mapping[str, Any]:
    """A nested config block; a key the builder does not read is refused by name."""
    v = c.get(key)
    if not isinstance(v, dict):
        raise ConfigError(f"expected an object, got {v!r}", key=key)
    for k in v:
        if k not in known:
            raise ConfigError(f"unsupported {key} key {k!r} (the builder would ignore it)", key=k)
    return v


@family("dbrx", keys=("d_model", "n_heads", "n_layers", "max_seq_len", "vocab_size", "attn_config", "ffn_config",
                      "tie_word_embeddings", "emb_pdrop", *_MOE_TRAINING_KEYS))  # fmt: skip
def _dbrx(name: str, c: Mapping[str, Any]) -> LLMSpec:
    """DBRX: 16 fine-grained GLU experts of ffn_hidden_size, top-4, grouped-query attention, LayerNorms
    without biases, no other biases."""
    h = _pos(c, "d_model")
    attn, ffn = _block(c, "attn_config", _DBRX_ATTN_KEYS), _block(c, "ffn_config", _DBRX_FFN_KEYS)
    act = ffn.get("ffn_act_fn") or {"name": "silu"}
    if not isinstance(act, dict) or set(act) - {"name"} or act.get("name") not in ("silu", "gelu"):
        raise ConfigError(f"unsupported ffn_act_fn {act!r}", key="ffn_act_fn")
    heads = _pos(c, "n_heads")
    kv = _pos(attn, "kv_n_heads", heads)
    if heads % kv:
        raise ConfigError(
            f"{heads} attention heads are not a multiple of {kv} key/value heads", key="kv_n_heads"
        )
    if h % heads:
        raise ConfigError(f"d_model {h} is not a multiple of {heads} heads", key="n_heads")
    experts, f = _pos(ffn, "moe_num_experts"), _pos(ffn, "ffn_hidden_size")
    return LLMSpec(name, "dbrx", h, _pos(c, "n_layers"), heads, kv, h // heads, f, _pos(c, "vocab_size"), True,
                   "layernorm", act["name"], _flag(c, "tie_word_embeddings"), _pos(c, "max_seq_len", 4096),
                   moe=MoESpec(experts, _top_k(ffn, experts, "moe_top_k"), f), norm_bias=False)  # fmt: skip


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


@cache
def model_names() -> tuple[str, ...]:
    """The shipped models (read once: every load of a model by name asks)."""
    return tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))


def _line_of(text: str, key: str | None) -> int | None:
    """The line on which `"key":` first appears in a JSON text."""
    if not key:
        return None
    m = re.search(r'"' + re.escape(key) + r'"\s*:', text)
    return text.count("\n", 0, m.start()) + 1 if m else None


def load_llm(ref: str | Path) -> LLMSpec:
    """A shipped model name (`llama-2-7b`) or a path to a Hugging Face config.json."""
    p = Path(ref)
    if str(ref) in model_names():  # a shipped name may contain a dot (phi-3.5-moe)
        p = CONFIG_DIR / f"{ref}.json"
    elif not p.suffix:
        raise ConfigError(
            f"unknown model {str(ref)!r} (shipped: {', '.join(model_names())}; or give a config.json path)"
        )
    try:
        is_file = p.is_file()
    except OSError as e:  # a name the file system refuses (too long, ...)
        raise ConfigError(f"cannot read model config: {e.strerror}", str(ref)[:200]) from None
    if not is_file:
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
    #: expert parallelism: `ep` ranks each run this chain on their share of the batch; after op i of each
    #: (index, bytes) pair every rank sends that many bytes to every other rank (all-to-all dispatch, combine)
    ep: int = 1
    exchanges: tuple[tuple[int, float], ...] = ()

    @property
    def op_records(self) -> list[Op]:
        """The ops in order (identical layers repeat the same records)."""
        return [lop.op for lop in self.ops]


def weight_bytes_per_device(spec: LLMSpec, tp: int, dtype: str, resident_layers: int | None = None) -> float:
    """Weights each TP rank holds: layer matrices split tp ways, norms and embeddings split too; with
    `resident_layers`, only that many layers' buffers (weights streamed from the host)."""
    if resident_layers is None or resident_layers >= spec.layers:
        return spec.params * dtype_bytes(dtype) / tp
    return (spec.outer_params + resident_layers * spec.layer_params) * dtype_bytes(dtype) / tp


def check_tp(spec: LLMSpec, tp: int) -> None:
    """Tensor parallelism splits heads and every MLP's width (dense, each expert, the shared experts)."""
    widths = {"FFN width": spec.ffn}
    if spec.moe is not None:
        widths["expert FFN width"] = spec.moe.expert_ffn
        if spec.moe.shared_ffn:
            widths["shared-expert FFN width"] = spec.moe.shared_ffn
    bad = {k: v for k, v in widths.items() if v % tp}
    if spec.heads % tp or bad:
        what = ", ".join(f"{k} {v}" for k, v in widths.items())
        raise ConfigError(f"tensor parallelism {tp} does not divide {spec.name}'s {spec.heads} heads "
                          f"and {what}", key="parallelism.tp")  # fmt: skip


@dataclass(frozen=True, slots=True)
class ExpertGemm(Gemm):
    """A grouped GEMM over experts (or heads) that each have their own weight matrix: `batch` entries of
    [m, k] @ [k, n], B read once per entry (`b_is_weight` False: not one shared matrix). B is resident
    weights all the same, so it is no transient workspace."""

    @property
    def activation_bytes(self) -> float:
        e = self.elem_bytes
        return self.batch * (self.m * self.k + self.m * self.n) * e


def expert_rows(spec: LLMSpec, tokens: int, ep: int = 1) -> tuple[int, int]:
    """(active experts, rows per expert) of an MoE layer over `tokens` tokens under uniform routing: the
    expected distinct experts E (1 - (1 - k/E)^T) rounded (exactly k for one token), and the T k routed
    rows spread over them, rounded up (at most one row per expert more than the mean). With `ep`
    expert-parallel ranks of `tokens` tokens each, one rank's E/ep experts see all ep T tokens: it hits
    (E/ep)(1 - (1 - k/E)^(ep T)) of them, which share the ep T k / ep = T k rows routed to it."""
    moe = spec.moe
    assert moe is not None
    local, total = moe.experts // ep, tokens * ep
    active = max(1, min(local, round(moe.active_experts(total) / ep)))
    return active, -(-tokens * moe.top_k // active)


class SeqGroup(NamedTuple):
    """`count` sequences that each process `q_len` new tokens over `kv_len` tokens of context (the new
    ones included): a decode step is q_len 1, a prefill q_len == kv_len, a prefill chunk q_len < kv_len."""

    count: int
    q_len: int
    kv_len: int


def build_pass(spec: LLMSpec, tp: int, batch: int, q_len: int, kv_len: int,
               precision: PrecisionPlan | str = "bf16", phase: str = "decode",
               kv_alloc_tokens: int = 0, groups: tuple[SeqGroup, ...] = (), ep: int = 1) -> LogicalPass:  # fmt: skip
    """One forward pass over `q_len` new tokens per sequence with `kv_len` tokens of context
    (prefill: q_len == kv_len; decode: q_len == 1), Megatron-style over `tp` ranks (column/row splits,
    an all-reduce after attention and after the MLP). `precision` (or one dtype for everything) sets the
    activations' dtype, the weights' and KV cache's storage formats and the collectives' dtype.
    `kv_alloc_tokens` > 0 allocates each layer's KV cache for that many tokens when the layer first runs.

    `groups` makes the pass a ragged batch (a serving iteration mixing decode steps and prefill chunks):
    `batch`, `q_len` and `kv_len` are then ignored, the GEMMs run over every group's tokens at once, and
    each group gets its own attention kernel (a varlen kernel launches once: the difference is a launch
    per extra group); logits are computed for one token per sequence.

    `ep` > 1 is one of `ep` expert-parallel ranks, each running this pass on its own `batch` sequences
    (attention data-parallel) and holding E/ep of every MoE layer's routed experts: its expert GEMMs run
    over the experts it holds that the whole ep x batch hits, between an all-to-all dispatch after the
    permutation and an all-to-all combine after the experts (`LogicalPass.exchanges`: each rank sends
    every other one the T k / ep rows routed there, expected under uniform routing)."""
    check_tp(spec, tp)
    if ep > 1 and (spec.moe is None or spec.moe.experts % ep):
        what = f"{spec.moe.experts} experts" if spec.moe else "no experts (a dense model)"
        raise ConfigError(
            f"expert parallelism {ep} does not divide {spec.name}'s {what}", key="parallelism.ep"
        )
    if not groups:
        groups = (SeqGroup(batch, q_len, kv_len),)
    batch = sum(g.count for g in groups)
    plan = PrecisionPlan.uniform(precision) if isinstance(precision, str) else precision
    dtype, comm = plan.activations, plan.communication
    e, ce = dtype_bytes(dtype), dtype_bytes(comm)
    kv_dtype = plan.attention_kv_dtype

    def weights(tensor: str, layer: int | None = None, routed: bool = False) -> str | None:
        """`Gemm.weight_dtype` of one weight matrix (a mixture such as q4_k_m varies by tensor and layer;
        `routed`: a routed expert's, in the plan's `experts` format)."""
        w = plan.expert_weight_dtype if routed else plan.gemm_weight_dtype
        return tensor_format(w, tensor, layer, spec.layers) if w is not None else None

    h, d, T = spec.hidden, spec.head_dim, sum(g.count * g.q_len for g in groups)
    heads, kvh = spec.heads // tp, max(1, spec.kv_heads // tp)
    ffn = spec.ffn // tp
    mla, moe = spec.mla, spec.moe
    if mla is not None:  # one latent (+ rope key) per token, kept whole on every rank
        kv_B = plan.kv_bytes(batch * kv_alloc_tokens * mla.latent_dim)
    else:
        kv_B = plan.kv_bytes(2 * batch * kvh * kv_alloc_tokens * d)
    decode_only = all(g.q_len == 1 for g in groups)

    def kv_alloc_B(i: int) -> float:
        """Layer i's KV cache: `kv_alloc_tokens` tokens, or its window (a rolling buffer) if shorter."""
        w = spec.layer_window(i)
        if w is None or kv_alloc_tokens <= w:
            return kv_B
        return plan.kv_bytes(2 * batch * kvh * w * d)

    def mla_attention(i: int) -> list[Op]:
        """MLA: q (through its low-rank bottleneck), the latent and rope key (kv_a, replicated on every
        rank, as the latent is shared by all heads), then either

        decode (every group q_len 1), weights absorbed: q_nope @ W_UK per head into the latent space, one
        attention over the cached latent shared by all heads, W_UV per head, o_proj. The attention op has
        one KV head of head_dim = latent / 2, so its K and V reads (2 x latent / 2 per token) are the
        latent cache read once; its heads are scaled to heads x (latent + kv_lora) / latent so that its
        4 x heads x head_dim FLOPs per (query, key) pair equal the real 2 x latent (scores over latent +
        rope) + 2 x kv_lora (values over the latent) per head;

        prefill: the latent of every context token decompressed by kv_b into per-head keys (nope + rope)
        and values, then standard attention with head_dim (qk_dim + v_dim) / 2, which gives the exact
        FLOPs (2 qk_dim + 2 v_dim per pair and head) and the exact Q + O and K + V bytes."""
        assert mla is not None
        p, qk, lat, r = f"L{i}.", mla.qk_dim, mla.latent_dim, mla.kv_lora_rank
        out: list[Op] = [Norm(p + "norm1", dtype, rows=T, cols=h, function=spec.norm)]
        if mla.q_lora_rank:
            out += [Gemm(p + "q_a", dtype, m=T, n=mla.q_lora_rank, k=h, weight_dtype=weights("attn_qkv", i)),
                    Norm(p + "q_a_norm", dtype, rows=T, cols=mla.q_lora_rank, function=spec.norm),
                    Gemm(p + "q_b", dtype, m=T, n=heads * qk, k=mla.q_lora_rank, weight_dtype=weights("attn_qkv", i))]  # fmt: skip
        else:
            out.append(Gemm(p + "q", dtype, m=T, n=heads * qk, k=h, weight_dtype=weights("attn_qkv", i)))
        out += [Gemm(p + "kv_a", dtype, m=T, n=lat, k=h, weight_dtype=weights("attn_qkv", i)),
                Norm(p + "kv_a_norm", dtype, rows=T, cols=r, function=spec.norm),
                Elementwise(p + "rope", dtype, elements=T * (heads + 1) * mla.qk_rope_dim, inputs=1,
                            flops_per_element=3, function="rope")]  # fmt: skip
        if decode_only:
            dh = max(1, lat // 2)
            eff = max(1, round(heads * 2 * (lat + r) / (4 * dh)))
            out.append(ExpertGemm(p + "q_absorb", dtype, m=T, n=r, k=mla.qk_nope_dim, batch=heads,
                                  b_is_weight=False, weight_dtype=weights("attn_qkv", i)))  # fmt: skip
            out += [Attention(p + ("attn" if j == 0 else f"attn{j}"), dtype, batch=g.count, heads=eff, kv_heads=1,
                              q_len=1, kv_len=g.kv_len, head_dim=dh, causal=True, kv_dtype=kv_dtype)
                    for j, g in enumerate(groups)]  # fmt: skip
            out.append(ExpertGemm(p + "v_absorb", dtype, m=T, n=mla.v_dim, k=r, batch=heads, b_is_weight=False,
                                  weight_dtype=weights("attn_qkv", i)))  # fmt: skip
        else:
            ctx = sum(g.count * g.kv_len for g in groups)
            out.append(Gemm(p + "kv_b", dtype, m=ctx, n=heads * (mla.qk_nope_dim + mla.v_dim), k=r,
                            weight_dtype=weights("attn_qkv", i)))  # fmt: skip
            out += [Attention(p + ("attn" if j == 0 else f"attn{j}"), dtype, batch=g.count, heads=heads,
                              kv_heads=heads, q_len=g.q_len, kv_len=g.kv_len, head_dim=max(1, (qk + mla.v_dim) // 2),
                              causal=True, kv_dtype=kv_dtype) for j, g in enumerate(groups)]  # fmt: skip
        out.append(
            Gemm(p + "o_proj", dtype, m=T, n=h, k=heads * mla.v_dim, weight_dtype=weights("attn_output", i))
        )
        return out

    def gqa_attention(i: int) -> list[Op]:
        """Layer i's attention: qkv, rope, a kernel per group, o_proj. A windowed layer's decode step
        reads only the last `window` tokens; its prefill masks the older ones."""
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
        if spec.qk_norm:
            out.append(Norm(p + "qk_norm", dtype, rows=T * (heads + kvh), cols=d, function=spec.norm))
        if spec.family != "opt" and spec.family != "gpt3":
            out.append(Elementwise(p + "rope", dtype, elements=T * (heads + kvh) * d, inputs=1,
                                   flops_per_element=3, function="rope"))  # fmt: skip
        out += [attention(j, g) for j, g in enumerate(groups)]
        out.append(Gemm(p + "o_proj", dtype, m=T, n=h, k=heads * d, weight_dtype=weights("attn_output", i)))
        return out

    def dense_mlp(i: int, width: int, name: str = "") -> list[Op]:
        """A dense MLP of `width` (per rank) over all T tokens: the model's own, or shared experts."""
        p = f"L{i}.{name}"
        if spec.gated_ffn:
            return [Gemm(p + "gate_up", dtype, m=T, n=2 * width, k=h, weight_dtype=weights("ffn_up", i)),
                    Elementwise(p + "act_mul", dtype, elements=T * width, inputs=2, flops_per_element=5,
                                function=spec.activation),
                    Gemm(p + "down", dtype, m=T, n=h, k=width, weight_dtype=weights("ffn_down", i))]  # fmt: skip
        return [Gemm(p + "fc1", dtype, m=T, n=width, k=h, weight_dtype=weights("ffn_up", i)),
                Elementwise(p + "act", dtype, elements=T * width, inputs=1, flops_per_element=8,
                            function=spec.activation),
                Gemm(p + "down", dtype, m=T, n=h, k=width, weight_dtype=weights("ffn_down", i))]  # fmt: skip

    def moe_mlp(i: int) -> list[Op]:
        """Router (replicated on every rank), top-k selection, the tokens gathered into expert order,
        grouped expert GEMMs over the experts the batch hits (each expert's FFN split tp ways, like a
        dense MLP), the shared experts as a dense MLP, and the weighted sum of each token's k outputs."""
        assert moe is not None
        p, k = f"L{i}.", moe.top_k
        active, rows = expert_rows(spec, T, ep)
        ef = moe.expert_ffn // tp
        out: list[Op] = [
            Gemm(p + "router", dtype, m=T, n=moe.experts, k=h),
            Softmax(p + "router_topk", dtype, rows=T, cols=moe.experts),
            Elementwise(p + "permute", dtype, elements=T * k * h, inputs=1, flops_per_element=0.0,
                        function="gather"),
            ExpertGemm(p + "experts_gate_up", dtype, m=rows, n=2 * ef, k=h, batch=active, b_is_weight=False,
                       weight_dtype=weights("ffn_up", i, routed=True)),
            Elementwise(p + "experts_act_mul", dtype, elements=active * rows * ef, inputs=2, flops_per_element=5,
                        function=spec.activation),
            ExpertGemm(p + "experts_down", dtype, m=rows, n=h, k=ef, batch=active, b_is_weight=False,
                       weight_dtype=weights("ffn_down", i, routed=True)),
        ]  # fmt: skip
        if moe.shared_ffn:
            out += dense_mlp(i, moe.shared_ffn // tp, "shared_")
            if moe.shared_gate:
                out.append(Gemm(p + "shared_gate", dtype, m=T, n=1, k=h))
        shared = 1 if moe.shared_ffn else 0
        out.append(Elementwise(p + "combine", dtype, elements=T * h, inputs=k + shared,
                               flops_per_element=2 * k + shared, function="combine"))  # fmt: skip
        return out

    def layer(i: int) -> list[Op]:
        """Layer i's ops, in order (the attention is the one that allocates the KV cache)."""
        p = f"L{i}."
        out = mla_attention(i) if mla is not None else gqa_attention(i)
        if tp > 1:
            out.append(AllReduce(p + "allreduce_attn", comm, bytes_per_device=T * h * ce, group=tp))
        out += [Elementwise(p + "residual1", dtype, elements=T * h, inputs=2),
                Norm(p + "norm2", dtype, rows=T, cols=h, function=spec.norm)]  # fmt: skip
        out += moe_mlp(i) if moe is not None and moe.is_moe(i) else dense_mlp(i, ffn)
        if tp > 1:
            out.append(AllReduce(p + "allreduce_mlp", comm, bytes_per_device=T * h * ce, group=tp))
        out.append(Elementwise(p + "residual2", dtype, elements=T * h, inputs=2))
        return out

    def formats(i: int) -> tuple[Any, ...]:
        """What can differ between layers: the storage format of each weight (GGUF mixtures), the
        attention window and the MLP's kind (dense or experts)."""
        return (
            *(weights(t, i) for t in ("attn_qkv", "attn_output", "ffn_up", "ffn_down")),
            *(weights(t, i, routed=True) for t in ("ffn_up", "ffn_down")),
            spec.layer_window(i),
            moe is not None and moe.is_moe(i),
        )

    ops: list[LogicalOp] = [LogicalOp(Embedding("embed", dtype, tokens=T, hidden=h, vocab=spec.vocab), -1)]
    exchange_B = T * (moe.top_k if moe else 0) / ep * h * ce  # rows each rank sends each other one
    exchanges: list[tuple[int, float]] = []
    #: formats -> (index of the layer's first op, its ops) of the first layer with those formats; and per
    #: MLP kind, the first layer of that kind (a layer with other formats twins the ops it shares with it)
    seen: dict[tuple[Any, ...], tuple[int, list[Op]]] = {}
    kinds: dict[Any, tuple[int, list[Op]]] = {}
    for i in range(spec.layers):
        p = f"L{i}."
        key = formats(i)
        ref = seen.get(key)
        layer_ops = ref[1] if ref is not None else layer(i)
        start, kind_ref = len(ops), kinds.get(key[-1])
        first_attn = next(j for j, op in enumerate(layer_ops) if op.kind == "attention")
        for j, op in enumerate(layer_ops):
            allocs = (Tensor(p + "kv_cache", kv_alloc_B(i)),) if kv_alloc_tokens and j == first_attn else ()
            if ref is not None:
                twin = ref[0] + j
            elif (
                kind_ref is not None and j < len(kind_ref[1]) and op.signature() == kind_ref[1][j].signature()
            ):
                twin = kind_ref[0] + j
            else:
                twin = -1
            ops.append(LogicalOp(op, i, allocs, twin, p + op.name.split(".", 1)[1]))
            if ep > 1 and op.name.endswith((".permute", ".experts_down")):
                exchanges.append((len(ops) - 1, exchange_B))
        if ref is None:
            seen[key] = (start, layer_ops)
        kinds.setdefault(key[-1], (start, layer_ops))
    head: list[Op] = [Norm("final_norm", dtype, rows=batch, cols=h, function=spec.norm),
                      Gemm("lm_head", dtype, m=batch, n=spec.vocab // tp, k=h, weight_dtype=weights("output"))]  # fmt: skip
    if tp > 1:
        head.append(
            AllGather("logits_allgather", comm, bytes_per_device=batch * (spec.vocab // tp) * ce, group=tp)
        )
    ops += [LogicalOp(op, spec.layers) for op in head]
    layer_B = max(plan.weight_bytes(spec.layer_params_of(i, ep=ep), spec.routed_params(i, i + 1, ep))
                  for i in range(spec.layers)) if moe is not None else plan.weight_bytes(spec.layer_params)  # fmt: skip
    return LogicalPass(f"{spec.name}-{phase}", phase, tuple(ops), spec.layers, tp, layer_B / tp,
                       T * h * e / tp, ep, tuple(exchanges))  # fmt: skip
