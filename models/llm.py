"""Decoder-only LLMs from a Hugging Face `config.json`: a normalized spec and operator graphs for
prefill and decode, tensor-parallel across a device group (Megatron-style column/row splits with an
all-reduce after attention and after the MLP).
"""

from __future__ import annotations

import json
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


def family(*model_types: str) -> Callable:
    def deco(fn: Callable[[str, Mapping[str, Any]], LLMSpec]) -> Callable:
        for t in model_types:
            FAMILIES[t] = fn
        return fn

    return deco


@family("llama", "mistral", "qwen2", "yi")
def _llama_like(name: str, c: Mapping[str, Any]) -> LLMSpec:
    heads = c["num_attention_heads"]
    return LLMSpec(
        name, c["model_type"], c["hidden_size"], c["num_hidden_layers"], heads,
        c.get("num_key_value_heads", heads), c.get("head_dim") or c["hidden_size"] // heads,
        c["intermediate_size"], c["vocab_size"], True, "rmsnorm", c.get("hidden_act", "silu"),
        bool(c.get("tie_word_embeddings", False)), c.get("max_position_embeddings", 4096),
        bias=c["model_type"] == "qwen2",
    )  # fmt: skip


@family("opt")
def _opt(name: str, c: Mapping[str, Any]) -> LLMSpec:
    h, heads = c["hidden_size"], c["num_attention_heads"]
    return LLMSpec(name, "opt", h, c["num_hidden_layers"], heads, heads, h // heads, c["ffn_dim"], c["vocab_size"],
                   False, "layernorm", c.get("activation_function", "relu"), bool(c.get("tie_word_embeddings", True)),
                   c.get("max_position_embeddings", 2048), bias=True)  # fmt: skip


@family("gpt2", "gpt3")
def _gpt(name: str, c: Mapping[str, Any]) -> LLMSpec:
    h, heads = c["n_embd"], c["n_head"]
    return LLMSpec(name, "gpt3", h, c["n_layer"], heads, heads, h // heads, c.get("n_inner") or 4 * h,
                   c["vocab_size"], False, "layernorm", c.get("activation_function", "gelu"), True,
                   c.get("n_positions", 2048), bias=True)  # fmt: skip


def model_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_llm(ref: str | Path) -> LLMSpec:
    """A shipped model name (`llama-2-7b`) or a path to a Hugging Face config.json."""
    p = Path(ref)
    if not p.suffix:
        p = CONFIG_DIR / f"{ref}.json"
        if not p.exists():
            raise ConfigError(
                f"unknown model {str(ref)!r} (shipped: {', '.join(model_names())}; or give a config.json path)"
            )
    if not p.exists():
        raise ConfigError("no such file", str(ref))
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"malformed JSON: {e.msg}", str(p), e.lineno) from None
    mt = cfg.get("model_type")
    if mt not in FAMILIES:
        raise ConfigError(f"unsupported model_type {mt!r} (supported: {', '.join(sorted(FAMILIES))})", str(p),
                          key="model_type")  # fmt: skip
    try:
        return FAMILIES[mt](p.stem, cfg)
    except KeyError as e:
        raise ConfigError(
            f"missing field {e.args[0]!r} for model_type {mt!r}", str(p), key=e.args[0]
        ) from None


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


def build_pass(spec: LLMSpec, tp: int, batch: int, q_len: int, kv_len: int,
               precision: PrecisionPlan | str = "bf16", phase: str = "decode",
               kv_alloc_tokens: int = 0) -> LogicalPass:  # fmt: skip
    """One forward pass over `q_len` new tokens per sequence with `kv_len` tokens of context
    (prefill: q_len == kv_len; decode: q_len == 1), Megatron-style over `tp` ranks (column/row splits,
    an all-reduce after attention and after the MLP). `precision` (or one dtype for everything) sets the
    activations' dtype, the weights' and KV cache's storage formats and the collectives' dtype.
    `kv_alloc_tokens` > 0 allocates each layer's KV cache for that many tokens when the layer first runs."""
    check_tp(spec, tp)
    plan = PrecisionPlan.uniform(precision) if isinstance(precision, str) else precision
    dtype, comm = plan.activations, plan.communication
    e, ce = dtype_bytes(dtype), dtype_bytes(comm)
    kv_dtype = plan.attention_kv_dtype

    def weights(tensor: str, layer: int | None = None) -> str | None:
        """`Gemm.weight_dtype` of one weight matrix (a mixture such as q4_k_m varies by tensor and layer)."""
        w = plan.gemm_weight_dtype
        return tensor_format(w, tensor, layer, spec.layers) if w is not None else None

    h, d, T = spec.hidden, spec.head_dim, batch * q_len
    heads, kvh = spec.heads // tp, max(1, spec.kv_heads // tp)
    ffn = spec.ffn // tp
    kv_B = plan.kv_bytes(2 * batch * kvh * kv_alloc_tokens * d)

    def layer(i: int) -> list[Op]:
        """Layer i's ops, in order (the attention is the one that allocates the KV cache)."""
        p = f"L{i}."
        out: list[Op] = [
            Norm(p + "norm1", dtype, rows=T, cols=h, function=spec.norm),
            Gemm(p + "qkv", dtype, m=T, n=(heads + 2 * kvh) * d, k=h, weight_dtype=weights("attn_qkv", i)),
        ]
        if spec.family != "opt" and spec.family != "gpt3":
            out.append(Elementwise(p + "rope", dtype, elements=T * (heads + kvh) * d, inputs=1,
                                   flops_per_element=3, function="rope"))  # fmt: skip
        out += [
            Attention(p + "attn", dtype, batch=batch, heads=heads, kv_heads=kvh, q_len=q_len, kv_len=kv_len,
                      head_dim=d, causal=True, kv_dtype=kv_dtype),
            Gemm(p + "o_proj", dtype, m=T, n=h, k=heads * d, weight_dtype=weights("attn_output", i)),
        ]  # fmt: skip
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

    def formats(i: int) -> tuple[str | None, ...]:
        """What can differ between layers: the storage format of each weight (GGUF mixtures)."""
        return tuple(weights(t, i) for t in ("attn_qkv", "attn_output", "ffn_up", "ffn_down"))

    ops: list[LogicalOp] = [LogicalOp(Embedding("embed", dtype, tokens=T, hidden=h, vocab=spec.vocab), -1)]
    first = layer(0)
    start, suffixes = len(ops), [op.name[len("L0.") :] for op in first]
    first_formats = formats(0)
    for i in range(spec.layers):
        p = f"L{i}."
        same = i > 0 and formats(i) == first_formats
        for j, op in enumerate(first if same or i == 0 else layer(i)):
            allocs = (Tensor(p + "kv_cache", kv_B),) if kv_alloc_tokens and op.kind == "attention" else ()
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
