"""Number formats and the precision plan: how many bits a weight or KV element takes in memory, what dtype
it is computed in, and what turning it into that dtype costs on the SIMT (CUDA-core / SIMD) units.

A *format* is a storage layout: a plain dtype of `DTYPE_BYTES` (simcore.ops re-exports it), or a quantized
layout whose bits per element include its scales and zeros (derived from the block layout below). A
quantized format is either computed natively (int8 weights with int8 activations on int8 tensor cores,
fp8 with fp8) or dequantized element by element to the activation dtype inside the GEMM's main loop
(W4A16, W8A16, W4A8).

A *precision plan* names the format of each tensor class: `weights`, `activations` (the compute dtype),
`kv_cache` and `communication` (collective buffers). `PrecisionPlan.uniform(dtype)` is the experiment's
`dtype:` shorthand and reproduces today's byte counts exactly: a weight or KV format equal to the
activation dtype is that plain dtype (e.g. `int4` weights with `int4` activations are 4 bits, with
`fp16` activations they are the group-quantized `int4` format, 4.25 bits).

Kernel level, below `simcore.ops` (which imports it for op byte counts): imports only `simcore.errors` and
the standard library.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from simcore.errors import ConfigError

#: Bytes per element of the plain dtypes (re-exported as simcore.ops.DTYPE_BYTES, which reads its byte
#: counts from this module: formats sit below the op records).
DTYPE_BYTES: dict[str, float] = {
    "fp64": 8, "fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1, "int4": 0.5, "int32": 4,
}  # fmt: skip

# ------------------------------------------------------------------------------------ dequantization


@dataclass(frozen=True, slots=True)
class Dequant:
    """SIMT work to turn one stored element into one element of the compute dtype.

    `int_ops`: 32-bit integer lane instructions per element (LOP3, shifts, PRMT, IMAD...; one such
    instruction works on a whole 32-bit register of packed 4- or 8-bit values, hence fractions).
    `fp_ops`: floating-point element operations per element in the target dtype (a packed HFMA2 does
    two). Hardware models turn these into time at their integer and vector rates.
    """

    int_ops: float
    fp_ops: float

    @property
    def ops(self) -> float:
        return self.int_ops + self.fp_ops


# Per-element counts of the published kernels, counted from their inner loops (not fitted):
#
# int4 -> fp16/bf16 (AWQ / GPTQ-style W4A16, group 128 with an fp16 scale and zero): FasterTransformer's
#   `dequantize_s4_to_fp16x2` (also AWQ's kernel) turns one 32-bit word of 8 nibbles into 4 half2 with
#   4 LOP3 + 1 shift (5 int / 8 elements) and one HSUB2/HFMA2 per half2 to remove the magic exponent
#   (1 fp op per element); the group's scale and zero are applied as one HFMA2 per half2, w = q*s + (-z*s)
#   (1 fp op per element).
INT4_TO_F16 = Dequant(int_ops=5 / 8, fp_ops=2.0)
# int4 -> int8 (QServe W4A8, arXiv 2405.04532 §5.2, progressive group quantization): a 32-bit word of 8 u4
#   is unpacked into two words of 4 u8 with 1 shift + 2 LOP3; each word is multiplied by the group's int8
#   scale (one 32-bit multiply for 4 packed bytes, products stay below 256) and the scaled zero subtracted
#   (one packed 4-way subtraction): (3 + 2 + 2) int / 8 elements. No floating point.
INT4_TO_I8 = Dequant(int_ops=7 / 8, fp_ops=0.0)
# int8 -> fp16/bf16 (W8A16, per-channel scale): 2 PRMT per 4 bytes place them under a magic exponent
#   (0.5 int per element), one HSUB2 per half2 removes it (1 fp op per element); the per-output-channel
#   scale commutes with the reduction over k and is applied to C in the epilogue, not per weight.
INT8_TO_F16 = Dequant(int_ops=0.5, fp_ops=1.0)
# fp8 e4m3 -> fp16/bf16 (W8A16 fp8, per-tensor scale; Marlin's fp8 path on parts without an fp8 convert):
#   2 PRMT/LOP3 per 4 bytes shift sign/exponent/mantissa into half layout, one HMUL2 per half2 fixes the
#   exponent bias; the per-tensor scale goes to the epilogue.
FP8_TO_F16 = Dequant(int_ops=0.5, fp_ops=1.0)
# GGUF blocks -> fp16 (llama.cpp's dequantize kernels feeding an fp16 GEMM): the block scale varies along
#   k, so it is applied per weight (one HMUL2/HFMA2 per half2).
#   q8_0: int8 -> half as above (0.5 int, 1 fp) + block scale (1 fp).
Q8_0_TO_F16 = Dequant(int_ops=0.5, fp_ops=2.0)
#   q4_0: nibbles as int4 (5/8 int, 1 fp) + (q - 8) * d folded into one HFMA2 (1 fp).
Q4_0_TO_F16 = Dequant(int_ops=5 / 8, fp_ops=2.0)
#   q4_K: nibbles as int4 (5/8 int, 1 fp) + d*sc*q - dmin*m as one HFMA2 (1 fp) + the 6-bit scale and
#   min of each 32-weight sub-block unpacked from the 12 packed bytes (~8 int ops / 32 weights).
Q4_K_TO_F16 = Dequant(int_ops=5 / 8 + 8 / 32, fp_ops=2.0)
#   q6_K: low nibbles from ql (5/8 int), the 2 high bits from qh (shift + LOP3 per 4 weights: 1/2 int),
#   merged (one LOP3 per 4 weights: 1/4 int); magic subtraction incl. the -32 offset (1 fp), d*sc scale
#   (1 fp).
Q6_K_TO_F16 = Dequant(int_ops=5 / 8 + 1 / 2 + 1 / 4, fp_ops=2.0)
# mxfp4 -> fp16/bf16 (W4A16 on GPUs without FP4 tensor cores; Marlin's and Triton's MXFP4 MoE kernels): one
#   32-bit word of 8 E2M1 nibbles becomes 4 half2 pairs, each placed under the half layout's sign and
#   exponent with one shift/PRMT and one LOP3 (8 int / 8 elements); one HMUL2 per half2 applies the block's
#   E8M0 scale 2^(e - 127) folded with the E2M1 -> half exponent-bias fix (1 fp op per element).
MXFP4_TO_F16 = Dequant(int_ops=1.0, fp_ops=1.0)
# between plain floating dtypes (an fp16 KV cache under bf16 activations, fp32 master weights): one convert
# per element (F2F, or a packed cvt for 16-bit pairs).
CONVERT = Dequant(int_ops=0.0, fp_ops=1.0)

# ----------------------------------------------------------------------------------------- formats


@dataclass(frozen=True, slots=True)
class Format:
    """A storage format: `bits` per element including scales/zeros, the dtype it is computed in natively
    or dequantized to by default (`compute`), and the dequantization work into each compute dtype a
    kernel supports (`dequant`; the native dtype needs none)."""

    name: str
    bits: float
    compute: str
    layout: str
    kind: str = "plain"  # plain | quantized | mix
    block: int = 0  # elements sharing one scale (0: no block scale, or per-channel / per-tensor)
    dequant: Mapping[str, Dequant] = field(default_factory=dict)

    @property
    def bytes(self) -> float:
        return self.bits / 8.0

    def feeds(self) -> tuple[str, ...]:
        """Compute dtypes this format can feed: its own (native) and those it dequantizes to."""
        own = (self.name,) if self.name in COMPUTE_DTYPES else ()
        return tuple(dict.fromkeys((*own, self.compute, *self.dequant)))


def _block_bits(elements: int, block_bytes: float) -> float:
    """Bits per element of a block of `elements` values stored in `block_bytes` bytes."""
    return 8.0 * block_bytes / elements


#: dtypes a kernel computes in (activation and communication dtypes); int32 is an accumulator, not one
COMPUTE_DTYPES: tuple[str, ...] = ("fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4")
#: quantized KV-cache formats besides the activation dtype itself
KV_FORMATS: tuple[str, ...] = ("fp16", "bf16", "fp8", "int8", "int4")
_HALF = ("fp16", "bf16", "fp32")  # dequantization targets of the weight-only formats

_FLOATS = ("fp64", "fp32", "tf32", "fp16", "bf16")
FORMATS: dict[str, Format] = {
    d: Format(
        d, 8.0 * b, d, f"plain {d}", dequant={t: CONVERT for t in _FLOATS if t != d} if d in _FLOATS else {}
    )
    for d, b in DTYPE_BYTES.items()
}


def _quantized(
    name: str, bits: float, compute: str, block: int, dequant: Mapping[str, Dequant], layout: str
) -> None:
    FORMATS[name] = Format(name, bits, compute, layout, "quantized", block, dict(dequant))


# int8 weight-only / W8A8: one fp16 scale per output channel of k weights. The scale adds 16/k bits per
# weight (0.004 at k = 4096) and is left out, as the layout has no fixed block.
_quantized("int8", 8.0, "int8", 0, {t: INT8_TO_F16 for t in _HALF}, "int8, per-channel fp16 scale")
# int4 with group scales, group 128 as in AWQ (arXiv 2306.00978) and GPTQ (arXiv 2210.17323): an fp16 scale
# and an fp16 zero per 128 weights, 4 + 32/128 = 4.25 bits. QServe's KV4 (arXiv 2405.04532: per-head
# asymmetric, an fp16 scale and zero per 128-element head of a token) has the same bits for head_dim 128.
_quantized("int4", 4.0 + (16 + 16) / 128, "fp16", 128, {**{t: INT4_TO_F16 for t in _HALF}, "int8": INT4_TO_I8},
           "int4, group 128, fp16 scale + fp16 zero")  # fmt: skip
# fp8 e4m3 with one per-tensor scale (TensorRT-LLM / vLLM fp8 checkpoints).
_quantized("fp8", 8.0, "fp8", 0, {t: FP8_TO_F16 for t in _HALF}, "fp8 e4m3, per-tensor fp32 scale")
# mxfp4 (OCP Microscaling Formats v1.0, "MXFP4"): blocks of 32 E2M1 values sharing one 8-bit E8M0 scale,
# 4 + 8/32 = 4.25 bits (gpt-oss ships its routed experts in it).
_quantized(
    "mxfp4", 4.0 + 8 / 32, "bf16", 32, {t: MXFP4_TO_F16 for t in _HALF}, "MXFP4 (E2M1), E8M0 scale per 32"
)
# GGUF blocks, llama.cpp ggml/src/ggml-common.h (block_* structs):
# block_q8_0: one fp16 scale d and 32 int8 quants -> 34 bytes per 32 weights = 8.5 bits.
_quantized("q8_0", _block_bits(32, 2 + 32), "fp16", 32, {t: Q8_0_TO_F16 for t in _HALF}, "GGUF Q8_0")
# block_q4_0: one fp16 scale d and 32 nibbles -> 18 bytes per 32 weights = 4.5 bits.
_quantized("q4_0", _block_bits(32, 2 + 16), "fp16", 32, {t: Q4_0_TO_F16 for t in _HALF}, "GGUF Q4_0")
# block_q4_K (k-quants, llama.cpp PR #1684): a super-block of QK_K = 256 weights in 8 sub-blocks of 32; fp16
# d and dmin, 12 bytes of packed 6-bit sub-block scales and mins (K_SCALE_SIZE), 128 bytes of nibbles
# -> 144 bytes per 256 weights = 4.5 bits.
_quantized(
    "q4_k", _block_bits(256, 2 + 2 + 12 + 128), "fp16", 256, {t: Q4_K_TO_F16 for t in _HALF}, "GGUF Q4_K"
)
# block_q6_K: 128 bytes of low nibbles (ql), 64 bytes of high 2-bit pairs (qh), 16 int8 scales of 16-weight
# sub-blocks, fp16 d -> 210 bytes per 256 weights = 6.5625 bits.
_quantized(
    "q6_k", _block_bits(256, 128 + 64 + 16 + 2), "fp16", 256, {t: Q6_K_TO_F16 for t in _HALF}, "GGUF Q6_K"
)


# ----------------------------------------------------------------------------------- GGUF mixtures


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's `use_more_bits` (src/llama-quant.cpp, from the k-quants PR #1684): the first and last
    eighth of the layers and every third layer in between get the larger type."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def q4_k_m_tensor_format(tensor: str, layer: int | None = None, n_layers: int = 1,
                         tied_embeddings: bool = False) -> str:  # fmt: skip
    """Format of one GGUF tensor under Q4_K_M (llama.cpp `llama_tensor_get_type`; the k-quants PR
    describes it as "Q6_K for half of the attention.wv and feed_forward.w2 tensors, else Q4_K"):

    - `output` (lm head) -> q6_k, and `token_embd` too when it is tied to the output; else q4_k;
    - `attn_v` and `ffn_down` of the layers `use_more_bits` selects -> q6_k (16 of 32 layers), else q4_k;
    - every other matrix (attn_q, attn_k, attn_output, ffn_gate, ffn_up) -> q4_k;
    - norms (`*_norm`) stay fp32.
    """
    if tensor.endswith("norm"):
        return "fp32"
    if tensor == "output" or (tensor == "token_embd" and tied_embeddings):
        return "q6_k"
    if tensor in ("attn_v", "ffn_down") and layer is not None and use_more_bits(layer, n_layers):
        return "q6_k"
    return "q4_k"


#: mixtures: per-tensor rule (tensor role, layer, n_layers, tied) -> component format
MIXES: dict[str, Any] = {"q4_k_m": q4_k_m_tensor_format}


def tensor_format(fmt: str, tensor: str, layer: int | None = None, n_layers: int = 1,
                  tied_embeddings: bool = False) -> str:  # fmt: skip
    """The format a model tensor is stored in under `fmt`: a mixture's rule, else `fmt` itself.

    `tensor` uses GGUF names: token_embd, attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down,
    output, *_norm."""
    rule = MIXES.get(fmt)
    return rule(tensor, layer, n_layers, tied_embeddings) if rule else fmt


def llama_layer_tensors(hidden: int, intermediate: int, kv_dim: int | None = None) -> dict[str, int]:
    """Elements of each matrix and norm of one Llama-style decoder layer (gated FFN, GQA: kv_dim = kv_heads
    x head_dim, default hidden)."""
    kv = hidden if kv_dim is None else kv_dim
    return {"attn_q": hidden * hidden, "attn_k": hidden * kv, "attn_v": hidden * kv, "attn_output": hidden * hidden,
            "ffn_gate": hidden * intermediate, "ffn_up": hidden * intermediate, "ffn_down": intermediate * hidden,
            "attn_norm": hidden, "ffn_norm": hidden}  # fmt: skip


def mix_bits(fmt: str, tensors: Iterable[tuple[str, int | None, float]], n_layers: int = 1,
             tied_embeddings: bool = False) -> float:  # fmt: skip
    """Average bits per element of `tensors` ((GGUF name, layer or None, elements) triples) under `fmt`."""
    total_bits = total = 0.0
    for name, layer, count in tensors:
        total_bits += count * bits(tensor_format(fmt, name, layer, n_layers, tied_embeddings))
        total += count
    return total_bits / total if total else bits(tensor_format(fmt, "", None, n_layers))


def llama_layer_bits(fmt: str, hidden: int, intermediate: int, layer: int, n_layers: int,
                     kv_dim: int | None = None) -> float:  # fmt: skip
    """Average bits per weight of decoder layer `layer` (of `n_layers`) under `fmt`, norms included.

    Q4_K_M, Llama-2-7B (hidden 4096, ffn 11008): a `use_more_bits` layer has attn_v + ffn_down (61.9 M of
    202.4 M weights) in Q6_K: 5.13 bits; the other layers are all Q4_K: 4.50 bits."""
    t = llama_layer_tensors(hidden, intermediate, kv_dim)
    return mix_bits(fmt, ((name, layer, n) for name, n in t.items()), n_layers)


def llama_model_bits(fmt: str, hidden: int, intermediate: int, n_layers: int, vocab: int,
                     kv_dim: int | None = None, tied_embeddings: bool = False) -> float:  # fmt: skip
    """Average bits per parameter of a whole Llama-style model file under `fmt`: every layer, the token
    embedding, the output norm and (untied) the output matrix."""
    rows: list[tuple[str, int | None, float]] = []
    for i in range(n_layers):
        rows += [(name, i, n) for name, n in llama_layer_tensors(hidden, intermediate, kv_dim).items()]
    rows += [("token_embd", None, vocab * hidden), ("output_norm", None, hidden)]
    if not tied_embeddings:
        rows.append(("output", None, vocab * hidden))
    return mix_bits(fmt, rows, n_layers, tied_embeddings)


def _llama2_7b_bits(fmt: str) -> float:
    return llama_model_bits(fmt, hidden=4096, intermediate=11008, n_layers=32, vocab=32000)


# ----------------------------------------------------------------------------------------- lookups


def get_format(fmt: str, key: str | None = None) -> Format:
    """The format named `fmt`; an unknown name is a ConfigError (naming `key`) listing the known ones."""
    try:
        return FORMATS[fmt]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown number format {fmt!r} (known: {', '.join(FORMATS)})", key=key) from None


def bits(fmt: str) -> float:
    """Bits per element of format `fmt` in memory, scales and zeros included (a mixture: its nominal
    average, see FORMATS['q4_k_m'])."""
    return get_format(fmt).bits


def format_bytes(fmt: str) -> float:
    """Bytes per element of format `fmt` (bits / 8)."""
    return get_format(fmt).bits / 8.0


def dequant_work(fmt: str, compute: str, key: str | None = None) -> Dequant | None:
    """Work per element to feed `fmt` into a `compute`-dtype kernel: None when no conversion is needed
    (the plain dtype itself, or a quantized format computed natively: int8 weights in int8, fp8 in fp8);
    a ConfigError when no kernel converts `fmt` to `compute`."""
    f = get_format(fmt, key)
    # the plain dtype itself, or a format computed natively (int8 in int8, fp8 in fp8): scales in the epilogue
    if compute == fmt:
        return None
    work = f.dequant.get(compute)
    if work is None:
        raise ConfigError(f"{fmt} data cannot feed a {compute} kernel (it is computed in: {', '.join(f.feeds())})",
                          key=key)  # fmt: skip
    return work


# Q4_K_M as one number: the whole-file average of Llama-2-7B, 4.85 bits (llama.cpp's published 7B Q4_K_M
# file: 4.07 GB for 6.74 B parameters, 4.83 bits). Other shapes differ by a few hundredths of a bit
# (Llama-3-8B: 4.89); `llama_model_bits` and `tensor_format` give a model's own tensors.
_Q4_K_M_LAYOUT = (
    "GGUF Q4_K_M: Q6_K for output and half of attn_v, ffn_down; Q4_K elsewhere (bits: Llama-2-7B)"
)
FORMATS["q4_k_m"] = Format("q4_k_m", _llama2_7b_bits("q4_k_m"), "fp16", _Q4_K_M_LAYOUT, "mix", 256,
                           {t: Q4_K_TO_F16 for t in _HALF})  # fmt: skip

# ---------------------------------------------------------------------------------- precision plan

_FIELDS = ("weights", "activations", "kv_cache", "communication", "experts")


@dataclass(frozen=True, slots=True)
class PrecisionPlan:
    """Formats of the tensor classes of a model run; validated on construction.

    weights: any format whose data can feed the activation dtype (its own, natively, or dequantized);
    activations, communication: compute dtypes (COMPUTE_DTYPES); kv_cache: the activation dtype or one
    of KV_FORMATS; experts: the routed experts' weights of an MoE model ("": as `weights`), for
    checkpoints that quantize only those (gpt-oss: MXFP4 experts, everything else bf16). A weight or KV
    format equal to the activation dtype is that plain dtype.
    """

    weights: str = "bf16"
    activations: str = "bf16"
    kv_cache: str = "bf16"
    communication: str = "bf16"
    experts: str = ""

    def __post_init__(self) -> None:
        if not self.experts:
            object.__setattr__(self, "experts", self.weights)
        for name in _FIELDS:
            get_format(getattr(self, name), key=f"precision.{name}")
        for name in ("activations", "communication"):
            v = getattr(self, name)
            if v not in COMPUTE_DTYPES:
                raise ConfigError(f"{v!r} is not a compute dtype (known: {', '.join(COMPUTE_DTYPES)})",
                                  key=f"precision.{name}")  # fmt: skip
        if self.kv_cache != self.activations and self.kv_cache not in KV_FORMATS:
            raise ConfigError(f"{self.kv_cache!r} is not a KV-cache format (known: {', '.join(KV_FORMATS)}, or the "
                              f"activation dtype {self.activations})", key="precision.kv_cache")  # fmt: skip
        for name in ("weights", "experts", "kv_cache"):
            dequant_work(getattr(self, name), self.activations, key=f"precision.{name}")

    bits = staticmethod(bits)  # bits(fmt): bits per element of a format, scales included

    @classmethod
    def uniform(cls, dtype: str) -> PrecisionPlan:
        """The `dtype:` shorthand: every tensor class in `dtype`."""
        return cls(dtype, dtype, dtype, dtype)

    @property
    def is_uniform(self) -> bool:
        return self.weights == self.experts == self.activations == self.kv_cache == self.communication

    # what the ops carry: None = the op's own dtype (today's byte counts and costs)
    @property
    def gemm_weight_dtype(self) -> str | None:
        """`Gemm.weight_dtype` of weight GEMMs under this plan (None: weights in the activation dtype)."""
        return None if self.weights == self.activations else self.weights

    @property
    def expert_weight_dtype(self) -> str | None:
        """`Gemm.weight_dtype` of the routed experts' GEMMs (None: in the activation dtype)."""
        return None if self.experts == self.activations else self.experts

    @property
    def attention_kv_dtype(self) -> str | None:
        """`Attention.kv_dtype` under this plan (None: the KV cache in the activation dtype)."""
        return None if self.kv_cache == self.activations else self.kv_cache

    def weight_bits(self, tensor: str | None = None, layer: int | None = None, n_layers: int = 1) -> float:
        """Bits per weight; for a mixture and a named tensor, that tensor's format (see `tensor_format`)."""
        if self.weights == self.activations:
            return 8.0 * DTYPE_BYTES[self.weights]
        if tensor is not None:
            return bits(tensor_format(self.weights, tensor, layer, n_layers))
        return bits(self.weights)

    def weight_bytes(self, n_params: float, routed: float = 0.0) -> float:
        """Bytes of `n_params` weights of which `routed` are routed experts' (stored as `experts`); uniform
        plans: n_params x dtype bytes, exactly as before."""
        if not routed or self.experts == self.weights:
            return self._bytes(self.weights, n_params)
        return self._bytes(self.weights, n_params - routed) + self._bytes(self.experts, routed)

    def _bytes(self, fmt: str, n: float) -> float:
        """Bytes of `n` elements stored in `fmt` (the activation dtype: exactly n x its plain bytes)."""
        if fmt == self.activations:
            return n * DTYPE_BYTES[fmt]
        return n * bits(fmt) / 8.0

    def kv_bytes(self, n_elements: float) -> float:
        """Bytes of `n_elements` KV-cache elements."""
        return self._bytes(self.kv_cache, n_elements)

    def communication_bytes(self, n_elements: float) -> float:
        return n_elements * DTYPE_BYTES[self.communication]

    def as_dict(self) -> dict[str, str]:
        """The plan's formats; `experts` only where it differs from `weights`."""
        return {
            name: getattr(self, name) for name in _FIELDS if name != "experts" or self.experts != self.weights
        }


# Experiment schema of the `precision:` key, as keyword arguments of simcore.config.Param (this module may
# not import simcore.config): `{k: Param(**v) for k, v in PRECISION_SCHEMA.items()}`. None = the `dtype:`.
PRECISION_SCHEMA: dict[str, dict[str, Any]] = {
    "weights": {"doc": "storage format of the weights (default: dtype)", "type": str, "default": None,
                "choices": tuple(FORMATS)},
    "activations": {"doc": "compute dtype of activations and GEMMs (default: dtype)", "type": str, "default": None,
                    "choices": COMPUTE_DTYPES},
    "kv_cache": {"doc": "KV-cache format (default: dtype)", "type": str, "default": None,
                 "choices": tuple(dict.fromkeys((*KV_FORMATS, *COMPUTE_DTYPES)))},
    "communication": {"doc": "dtype of collective buffers (default: dtype)", "type": str, "default": None,
                      "choices": COMPUTE_DTYPES},
    "experts": {"doc": "storage format of an MoE model's routed-expert weights (default: weights)", "type": str,
                "default": None, "choices": tuple(FORMATS)},
}  # fmt: skip


def plan_from(dtype: str, precision: Mapping[str, Any] | None = None) -> PrecisionPlan:
    """The plan of an experiment: the `precision:` mapping's non-None entries; a class it does not name
    takes its `activations`, else `dtype` (unknown keys and formats are ConfigErrors naming
    `precision.<key>`)."""
    get_format(dtype, key="dtype")
    if dtype not in COMPUTE_DTYPES:
        raise ConfigError(
            f"{dtype!r} is not a compute dtype (known: {', '.join(COMPUTE_DTYPES)})", key="dtype"
        )
    given = dict(precision or {})
    for k in given:
        if k not in _FIELDS:
            raise ConfigError(f"unknown key {k!r} (known: {', '.join(_FIELDS)})", key=f"precision.{k}")
    base = given.get("activations") or dtype  # a class not named follows the activations; experts the weights
    return PrecisionPlan(
        **{name: given.get(name) or base for name in _FIELDS if name != "experts"},
        experts=given.get("experts") or "",
    )
