"""Operator IR: one frozen record per operator, with its shape, dtype, FLOPs and bytes per tensor.

Each op kind is a class registered under its `kind` name; hardware cost models dispatch on that name.
Ops are hashable values, so a cost computed once for an (op, device) pair is reused everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import networkx as nx

from simcore.errors import ConfigError

# bytes per element of each plain dtype: defined with the storage formats, below the op records
from simcore.precision import DTYPE_BYTES, format_bytes


def dtype_bytes(dtype: str) -> float:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}") from None


def format_elem_bytes(fmt: str | None, dtype: str) -> float:
    """Bytes per element of data stored in `fmt` next to a `dtype` op: `dtype`'s own when `fmt` is None or
    equal to it (a plain tensor, as before formats existed), else the format's (simcore.precision)."""
    if fmt is None or fmt == dtype:
        return dtype_bytes(dtype)
    return format_bytes(fmt)


_SIGNATURE_FIELDS: dict[type, Any] = {}


@dataclass(frozen=True, slots=True)
class Tensor:
    """A tensor an op touches: `role` is 'in', 'weight' or 'out'."""

    name: str
    bytes: float
    role: str = "in"


@dataclass(frozen=True, slots=True)
class Op:
    """Base operator record. Subclasses add their shape fields and define flops and tensors."""

    name: str
    dtype: str = "bf16"
    kind: ClassVar[str] = "op"

    @property
    def elem_bytes(self) -> float:
        return dtype_bytes(self.dtype)

    @property
    def flops(self) -> float:
        return 0.0

    def tensors(self) -> tuple[Tensor, ...]:
        return ()

    @property
    def bytes_read(self) -> float:
        return sum(t.bytes for t in self.tensors() if t.role != "out")

    @property
    def bytes_written(self) -> float:
        return sum(t.bytes for t in self.tensors() if t.role == "out")

    @property
    def bytes(self) -> float:
        """Compulsory bytes: every tensor read or written once."""
        return self.bytes_read + self.bytes_written

    @property
    def activation_bytes(self) -> float:
        """Transient bytes live while the op runs (inputs and outputs that are not weights)."""
        return sum(t.bytes for t in self.tensors() if t.role != "weight")

    def signature(self) -> tuple:
        """The op without its name: equal signatures have equal costs (a tuple: cheap to build and hash)."""
        getter = _SIGNATURE_FIELDS.get(type(self))
        if getter is None:
            names = [f.name for f in fields(self) if f.name != "name"]
            getter = _SIGNATURE_FIELDS[type(self)] = attrgetter(*names) if len(names) > 1 else (
                lambda op, n=names[0]: (getattr(op, n),))  # fmt: skip
        return (type(self), getter(self))


@dataclass(frozen=True, slots=True)
class Gemm(Op):
    """C[b, m, n] = A[b, m, k] @ B[b, k, n]; `b_is_weight` marks B as a (shared) weight."""

    m: int = 1
    n: int = 1
    k: int = 1
    batch: int = 1
    b_is_weight: bool = True
    #: storage format of B (simcore.precision.FORMATS: "int4", "q4_k", "fp8"...); None = `dtype`. The MMA
    #: runs in `dtype`; B is dequantized to it in the main loop unless the format is computed natively.
    weight_dtype: str | None = None
    kind: ClassVar[str] = "gemm"

    @property
    def flops(self) -> float:
        return 2.0 * self.batch * self.m * self.n * self.k

    @property
    def weight_elem_bytes(self) -> float:
        """Bytes per element of B in memory, scales and zeros included."""
        return format_elem_bytes(self.weight_dtype, self.dtype)

    def tensors(self) -> tuple[Tensor, ...]:
        e, b = self.elem_bytes, self.batch
        w_count = 1 if self.b_is_weight else b
        return (
            Tensor("A", b * self.m * self.k * e, "in"),
            Tensor(
                "B",
                w_count * self.k * self.n * self.weight_elem_bytes,
                "weight" if self.b_is_weight else "in",
            ),
            Tensor("C", b * self.m * self.n * e, "out"),
        )


@dataclass(frozen=True, slots=True)
class Attention(Op):
    """Scaled-dot-product attention; q_len == 1 is a decode step reading the KV cache."""

    batch: int = 1
    heads: int = 1
    kv_heads: int = 1
    q_len: int = 1
    kv_len: int = 1
    head_dim: int = 128
    causal: bool = True
    #: KV-cache format (simcore.precision: "fp8", "int8", "int4"...); None = `dtype`. K and V are read at
    #: its bits and dequantized to `dtype` as they are loaded.
    kv_dtype: str | None = None
    #: sliding-window attention: each query sees at most the last `window` keys (None: no window). A
    #: decode step's context is capped at the window (a rolling KV buffer); costs are unchanged when the
    #: window does not bind (kv_len <= window).
    window: int | None = None
    #: the kernel that runs it (hardware.gpu.ATTENTION_KERNELS: "fa2", "fa1", "triton", "xformers",
    #: "standard", "fa3"); a component that has one kernel for attention ignores it
    kernel: str = "fa2"
    kind: ClassVar[str] = "attention"

    def __post_init__(self) -> None:
        """A shape that has no meaning is refused when the op is built (a ConfigError naming the field):
        every dimension >= 1, heads a multiple of kv_heads, and for causal attention q_len <= kv_len (the
        queries are the last q_len of the kv_len positions; more would count negative score pairs). One
        expression on the fast path: a long generation builds an attention per layer and token."""
        if (self.batch >= 1 and self.heads >= 1 and self.kv_heads >= 1 and self.q_len >= 1 and self.kv_len >= 1
                and self.head_dim >= 1 and not self.heads % self.kv_heads
                and (not self.causal or self.q_len <= self.kv_len)):  # fmt: skip
            return
        for f in ("batch", "heads", "kv_heads", "q_len", "kv_len", "head_dim"):
            v = getattr(self, f)
            if not v >= 1:  # NaN too
                raise ConfigError(f"{self.kind} {self.name!r}: {f} must be >= 1, got {v!r}", key=f)
        if self.heads % self.kv_heads:
            raise ConfigError(f"{self.kind} {self.name!r}: heads {self.heads} is not a multiple of kv_heads "
                              f"{self.kv_heads}", key="kv_heads")  # fmt: skip
        raise ConfigError(f"{self.kind} {self.name!r}: causal attention needs q_len <= kv_len, got q_len "
                          f"{self.q_len} > kv_len {self.kv_len}", key="q_len")  # fmt: skip

    @property
    def kv_elem_bytes(self) -> float:
        """Bytes per K or V element in memory, scales and zeros included."""
        return format_elem_bytes(self.kv_dtype, self.dtype)

    def with_kv_len(self, kv_len: int) -> Attention:
        """The same attention over `kv_len` tokens of context (the next decode step); built directly, as
        a long generation makes one per layer and token."""
        if self.window is not None and kv_len > self.window and self.q_len == 1:
            kv_len = self.window  # a rolling buffer holds only the window
        return type(self)(self.name, self.dtype, self.batch, self.heads, self.kv_heads, self.q_len, kv_len,
                          self.head_dim, self.causal, self.kv_dtype, self.window, self.kernel)  # fmt: skip

    @property
    def window_binds(self) -> bool:
        """Whether the sliding window hides keys from some query (else the op is plain attention)."""
        return self.window is not None and self.kv_len > self.window

    @property
    def keys_read(self) -> int:
        """Keys (and values) the op reads: all of the context unless a window hides the oldest."""
        if not self.window_binds:
            return self.kv_len
        w = self.window or 0
        return min(self.kv_len, w + self.q_len - 1) if self.causal else w

    @property
    def score_pairs(self) -> float:
        """(query, key) pairs actually computed per head; causal masking skips the upper triangle."""
        q, kv = self.q_len, self.kv_len
        if self.window_binds:
            w = self.window or 0
            if not self.causal or q == 1:
                return float(q * min(kv, w))
            # query i sees min(w, kv - q + i + 1) keys: the counts first..kv, capped at w
            first = kv - q + 1
            if w < first:
                return float(q * w)
            return (first + w) * (w - first + 1) / 2.0 + (kv - w) * w
        if not self.causal or q == 1:
            return float(q * kv)
        # query i (0-based, aligned to the end of the kv sequence) sees kv - q + i + 1 keys
        offset = kv - q
        return q * offset + q * (q + 1) / 2.0

    @property
    def flops(self) -> float:
        return 4.0 * self.batch * self.heads * self.head_dim * self.score_pairs

    @property
    def activation_bytes(self) -> float:
        """Q and O; K and V live in the KV cache, which is allocated as a resident tensor."""
        return 2.0 * self.batch * self.heads * self.q_len * self.head_dim * self.elem_bytes

    def tensors(self) -> tuple[Tensor, ...]:
        e, b, d, ekv = self.elem_bytes, self.batch, self.head_dim, self.kv_elem_bytes
        return (
            Tensor("Q", b * self.heads * self.q_len * d * e, "in"),
            Tensor("K", b * self.kv_heads * self.keys_read * d * ekv, "in"),
            Tensor("V", b * self.kv_heads * self.keys_read * d * ekv, "in"),
            Tensor("O", b * self.heads * self.q_len * d * e, "out"),
        )


@dataclass(frozen=True, slots=True)
class AttentionGrad(Attention):
    """Backward pass of attention (training): dQ, dK, dV from dO, recomputing the scores.

    Five matmuls per (query, key) pair (S = QKᵀ again, dP = dO·Vᵀ, dV += Pᵀ·dO, dQ += dS·K, dK += dSᵀ·Q)
    against the forward's two: 2.5x its FLOPs.
    """

    kind: ClassVar[str] = "attention_grad"

    @property
    def flops(self) -> float:
        return 10.0 * self.batch * self.heads * self.head_dim * self.score_pairs

    def tensors(self) -> tuple[Tensor, ...]:
        e, b, d = self.elem_bytes, self.batch, self.head_dim
        q = b * self.heads * self.q_len * d * e
        kv = b * self.kv_heads * self.kv_len * d * e
        kv_in = kv if self.kv_dtype is None else b * self.kv_heads * self.kv_len * d * self.kv_elem_bytes
        return (Tensor("Q", q), Tensor("K", kv_in), Tensor("V", kv_in), Tensor("O", q), Tensor("dO", q),
                Tensor("lse", b * self.heads * self.q_len * 4), Tensor("dQ", q, "out"), Tensor("dK", kv, "out"),
                Tensor("dV", kv, "out"))  # fmt: skip

    @property
    def activation_bytes(self) -> float:
        return sum(t.bytes for t in self.tensors())


@dataclass(frozen=True, slots=True)
class Elementwise(Op):
    """`inputs` tensors of `elements` each combined into one output (add, mul, GeLU, SiLU...)."""

    elements: int = 1
    inputs: int = 1
    flops_per_element: float = 1.0
    function: str = "add"
    kind: ClassVar[str] = "elementwise"

    @property
    def flops(self) -> float:
        return self.elements * self.flops_per_element

    def tensors(self) -> tuple[Tensor, ...]:
        e = self.elem_bytes
        ins = tuple(Tensor(f"x{i}", self.elements * e, "in") for i in range(self.inputs))
        return (*ins, Tensor("y", self.elements * e, "out"))


@dataclass(frozen=True, slots=True)
class Norm(Op):
    """LayerNorm / RMSNorm over the last dimension of a [rows, cols] tensor."""

    rows: int = 1
    cols: int = 1
    function: str = "layernorm"
    kind: ClassVar[str] = "norm"

    @property
    def flops(self) -> float:
        return 7.0 * self.rows * self.cols

    def tensors(self) -> tuple[Tensor, ...]:
        e, n = self.elem_bytes, self.rows * self.cols
        return (Tensor("x", n * e, "in"), Tensor("gamma", self.cols * e, "weight"), Tensor("y", n * e, "out"))


@dataclass(frozen=True, slots=True)
class Softmax(Op):
    """Softmax over the last dimension of a [rows, cols] tensor."""

    rows: int = 1
    cols: int = 1
    kind: ClassVar[str] = "softmax"

    @property
    def flops(self) -> float:
        return 5.0 * self.rows * self.cols

    def tensors(self) -> tuple[Tensor, ...]:
        n = self.rows * self.cols * self.elem_bytes
        return (Tensor("x", n, "in"), Tensor("y", n, "out"))


@dataclass(frozen=True, slots=True)
class Embedding(Op):
    """Gather `tokens` rows of width `hidden` from a `vocab`-row table."""

    tokens: int = 1
    hidden: int = 1
    vocab: int = 1
    kind: ClassVar[str] = "embedding"

    def tensors(self) -> tuple[Tensor, ...]:
        row = self.hidden * self.elem_bytes
        return (Tensor("ids", self.tokens * 4, "in"), Tensor("rows", self.tokens * row, "weight"),
                Tensor("y", self.tokens * row, "out"))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Collective(Op):
    """A collective over `group` devices; `bytes_per_device` is each rank's input buffer size."""

    bytes_per_device: float = 0.0
    group: int = 1
    #: the implementation the framework calls: "nccl" (ring or tree, whichever is faster) or "custom" (the
    #: one-shot peer-to-peer all-reduce kernels of inference frameworks, for small messages on NVLink)
    library: str = "nccl"
    kind: ClassVar[str] = "collective"
    pattern: ClassVar[str] = ""

    @property
    def wire_bytes_per_device(self) -> float:
        """Bytes each rank sends on its link for a ring algorithm."""
        raise NotImplementedError

    @property
    def ring_steps(self) -> int:
        raise NotImplementedError

    @property
    def flops(self) -> float:
        return 0.0

    def tensors(self) -> tuple[Tensor, ...]:
        return (Tensor("buf", self.bytes_per_device, "in"), Tensor("buf_out", self.bytes_per_device, "out"))


@dataclass(frozen=True, slots=True)
class AllReduce(Collective):
    kind: ClassVar[str] = "allreduce"

    @property
    def wire_bytes_per_device(self) -> float:
        p = self.group
        return 2.0 * (p - 1) / p * self.bytes_per_device

    @property
    def ring_steps(self) -> int:
        return 2 * (self.group - 1)

    @property
    def tree_steps(self) -> int:
        """Reduce up and broadcast down a binary tree: 2 log2(p) latency steps, ~2x the buffer on the
        busiest link (NCCL's double binary tree); wins for small, latency-bound messages."""
        return 2 * max(1, math.ceil(math.log2(self.group)))

    @property
    def flops(self) -> float:  # the reduction adds
        p = self.group
        return (p - 1) / p * self.bytes_per_device / self.elem_bytes


@dataclass(frozen=True, slots=True)
class AllGather(Collective):
    kind: ClassVar[str] = "allgather"

    @property
    def wire_bytes_per_device(self) -> float:
        return (self.group - 1) * self.bytes_per_device

    @property
    def ring_steps(self) -> int:
        return self.group - 1


@dataclass(frozen=True, slots=True)
class SendRecv(Collective):
    kind: ClassVar[str] = "sendrecv"

    @property
    def wire_bytes_per_device(self) -> float:
        return self.bytes_per_device

    @property
    def ring_steps(self) -> int:
        return 1


@dataclass(frozen=True, slots=True)
class Transfer(Op):
    """Move `nbytes` from one device's memory to another's over the topology (copy engine / DMA)."""

    nbytes: float = 0.0
    src: str = ""
    dst: str = ""
    request_B: float = 128 * 1024  # I/O size: small requests make storage IOPS- or latency-bound
    kind: ClassVar[str] = "transfer"

    def tensors(self) -> tuple[Tensor, ...]:
        return (Tensor("src", self.nbytes, "in"), Tensor("dst", self.nbytes, "out"))


class HashedOnce:
    """A tuple that hashes once (a chain's signature nests its members': cost caches look it up often)."""

    __slots__ = ("items", "_hash")

    def __init__(self, items: tuple) -> None:
        self.items, self._hash = items, hash(items)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, HashedOnce) and self._hash == other._hash
                                 and self.items == other.items)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Chain(Op):
    """Kernels run back to back on one device group, written as one step (a decode layer's dense part in a
    program written per token): it costs the sum of its members, runs as one flow of their DRAM bytes, and
    is recorded member by member. A writer uses it where one step per kernel would dominate the run time."""

    ops: tuple[Op, ...] = ()
    names: tuple[str, ...] = ()  # each member's record name (identical layers share their member ops)
    _signature: tuple = field(default=(), init=False, repr=False, compare=False)
    kind: ClassVar[str] = "chain"

    @property
    def flops(self) -> float:
        return sum(op.flops for op in self.ops)

    def tensors(self) -> tuple[Tensor, ...]:
        return tuple(t for op in self.ops for t in op.tensors())

    @property
    def labels(self) -> tuple[str, ...]:
        """Each member's record name."""
        return self.names or tuple(op.name for op in self.ops)

    @property
    def activation_bytes(self) -> float:
        """One member runs at a time: the largest member's."""
        return max((op.activation_bytes for op in self.ops), default=0.0)

    def signature(self) -> tuple:
        if not self._signature:  # built once: a chain is priced again each time it is reused
            object.__setattr__(
                self, "_signature", (Chain, HashedOnce(tuple(op.signature() for op in self.ops)))
            )
        return self._signature


def register_op(cls: type[Op]) -> type[Op]:
    """Make an op kind known by its `kind` name (used by external op families such as CNN layers)."""
    OP_KINDS[cls.kind] = cls
    return cls


OP_KINDS: dict[str, type[Op]] = {}
for _cls in (
    Gemm,
    Attention,
    AttentionGrad,
    Elementwise,
    Norm,
    Softmax,
    Embedding,
    AllReduce,
    AllGather,
    SendRecv,
    Transfer,
    Chain,
):
    register_op(_cls)

# --------------------------------------------------------------------------------------------- graph


@dataclass
class OpGraph:
    """A DAG of ops. Node attributes: `op` (the record), `devices` (placement, a tuple of device names
    that run it in lock-step; empty until mapped), `phase` (label for per-phase results)."""

    name: str = "graph"
    g: nx.DiGraph = field(default_factory=lambda: _networkx().DiGraph())

    def add(self, op: Op, deps: tuple[str, ...] | list[str] = (), devices: tuple[str, ...] = (),
            phase: str = "", allocs: tuple[Tensor, ...] = ()) -> str:  # fmt: skip
        """Add `op` after `deps`; `allocs` are tensors this op creates that stay resident (KV cache)."""
        if op.name in self.g:
            raise ValueError(f"duplicate op name {op.name!r}")
        self.g.add_node(op.name, op=op, devices=devices, phase=phase, allocs=allocs)
        for d in deps:
            if d not in self.g:
                raise ValueError(f"op {op.name!r} depends on unknown op {d!r}")
            self.g.add_edge(d, op.name)
        return op.name

    def __len__(self) -> int:
        return self.g.number_of_nodes()

    def ops(self) -> list[Op]:
        nx = _networkx()

        return [self.g.nodes[n]["op"] for n in nx.topological_sort(self.g)]

    @property
    def flops(self) -> float:
        return sum(d["op"].flops for _, d in self.g.nodes(data=True))


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def prod(xs: tuple[int, ...] | list[int]) -> int:
    return math.prod(xs)


def _networkx() -> Any:
    """networkx, imported when a graph is first built: commands that build none start without it."""
    import networkx

    return networkx
