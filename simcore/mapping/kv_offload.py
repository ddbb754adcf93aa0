"""The KV-offload mapper: the GEMMs on the GPU group, each rank's KV cache on another device
(`offload.kv`: a PIM unit, a computational storage drive, a host CPU or an SSD).

Two ways to run a decode attention over that KV (`offload.attention`):

- `near` (AttAcc, InstInfer): the attention runs on the KV device. Per layer and rank, q and the new
  token's k and v go GPU -> KV device, the attention runs there, its output comes back; only these
  vectors cross the path, the KV cache never does.
- `stream` (FlexGen): the attention runs on the GPU; the layer's whole K and V are copied KV device ->
  GPU before it (into one of two layer buffers: the copy waits for layer i-2's attention) and the new
  token's k and v are written back after it.

A prefill attention (q_len > 1) runs on the GPU in both; the layer's K and V are then written to the KV
device (off the GPU's critical path). Every copy is one transfer, routed like any other (GPU <-> CSD
through a PCIe switch goes peer to peer, never through host memory unless the topology says so).

With `offload.weights` too (MoE-Lightning: weights and KV in host memory, attention on the host CPU), each
layer's weights are copied in once, before its first op, into one of two GPU layer buffers: the copy of
layer i waits for layer i-2 (its buffer), the copy of layer i-1 and layer i-1's attention output (copies
host -> GPU go in program order), so it overlaps layer i-1's GEMMs after the attention, not the attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from itertools import groupby

from models.llm import LogicalOp, LogicalPass
from simcore.mapping.plan import ExecutionPlan, Placement
from simcore.mapping.steps import StepWriter
from simcore.ops import Attention, Transfer
from simcore.program import Program, Step


def attention_io_B(op: Attention) -> tuple[float, float, float]:
    """(q, the new token's k + v, output) bytes of one attention on one rank."""
    t = {x.name: x.bytes for x in op.tensors()}
    new_kv = (t["K"] + t["V"]) / max(1, op.keys_read) * op.q_len
    return t["Q"], new_kv, t["O"]


def split_batch(batch: int, m: int) -> list[int]:
    """`batch` sequences over `m` devices as evenly as whole sequences allow (the first take one more)."""
    base, extra = divmod(batch, m)
    return [base + (1 if j < extra else 0) for j in range(m)]


def kv_slices(placement: Placement) -> dict[str, tuple[str, ...]]:
    """Each rank's KV devices: the rank's slice of `placement.kv` (its sequences split evenly over them)."""
    group = placement.stages[0]
    m = len(placement.kv) // len(group)
    return {gpu: placement.kv[r * m : (r + 1) * m] for r, gpu in enumerate(group)}


def map_kv_offload(logical: LogicalPass, placement: Placement, plan: ExecutionPlan) -> Program:
    """The pass on the GPU group with each attention near its KV or fed by KV copies (the module doc)."""
    group = placement.stages[0]
    slices = kv_slices(placement)
    m = len(slices[group[0]])
    hosts = placement.hosts
    w = StepWriter(logical, None)  # weights streamed from `hosts` are fetched below, in order
    phase, dtype = logical.phase, logical.ops[0].op.dtype
    near = plan.kv_attention == "near"
    segment: list[tuple[int, LogicalOp]] = []
    after: list[int] = []
    offloaded: dict[tuple[str, int], int] = {}  # (KV device, logical index) -> its attention step (twins)
    gpu_attn: list[int] = []  # the GPU group's attention steps, in layer order (stream: buffer reuse)
    fetched: set[int] = set()  # layers whose weights have been fetched
    last_copy: dict[str, int] = {}  # GPU -> its latest weight copy

    def xfer(name: str, nbytes: float, src: str, dst: str, deps: Sequence[int]) -> int:
        op = Transfer(name, dtype, nbytes=nbytes, src=src, dst=dst)
        return w.add(Step(op, (src,), tuple(sorted(deps)), phase))

    def fetch(block: int) -> list[int]:
        """Layer `block`'s weights host -> each GPU, once, into the buffer layer block-2 used, after the
        previous layer's copy (one copy stream per GPU, in layer order). Written where the layer's first
        ops are, after the previous layer's attention output: copies host -> GPU run in program order, so
        the copy starts once that output has crossed and overlaps the previous layer's remaining GEMMs."""
        if hosts is None or not 0 <= block < logical.layers or block in fetched:
            return []
        fetched.add(block)
        free = w.layer_end.get((group, block - 2))
        out = []
        for gpu in group:
            deps = [d for d in (free, last_copy.get(gpu)) if d is not None]
            last_copy[gpu] = xfer(f"L{block}.weights_to_{gpu}", logical.layer_weight_B, hosts[gpu], gpu, deps)
            out.append(last_copy[gpu])
        return out

    def flush() -> int | None:
        """Chain the pending ops one block at a time, a layer's weight copy before its first part."""
        nonlocal after
        last = None
        for block, part in groupby(segment, key=lambda x: x[1].block):
            last = w.chain(list(part), group, after + fetch(block))
            after = []
        segment.clear()
        return last

    for k, lop in enumerate(logical.ops):
        op = lop.op
        if not isinstance(op, Attention):
            segment.append((k, lop))
            continue
        name = lop.name or op.name
        # each KV device's share of the rank's sequences, as attention ops (none for a device left empty)
        parts = [(dev, op if n == op.batch else replace(op, batch=n))
                 for dev, n in zip(slices[group[0]], split_batch(op.batch, m), strict=True) if n]  # fmt: skip
        io = {dev: attention_io_B(part) + (part.bytes,) for dev, part in parts}
        if op.q_len == 1 and near:
            last = flush()
            prev = [last] if last is not None else []
            for gpu in group:
                for j, (_, part) in enumerate(parts):
                    dev = slices[gpu][j]
                    q_B, new_kv_B, out_B, _ = io[parts[j][0]]
                    t_in = xfer(f"{name}.qkv_to_{dev}", q_B + new_kv_B, gpu, dev, prev)
                    twin = offloaded.get((dev, lop.twin), -1) if lop.twin >= 0 else -1
                    a = w.add(Step(part, (dev,), (t_in,), phase, lop.allocs, twin, name))
                    offloaded.setdefault((dev, k), a)
                    after.append(xfer(f"{name}.out_to_{gpu}", out_B, dev, gpu, [a]))
            continue
        copies = [(gpu, slices[gpu][j], io[d]) for gpu in group for j, (d, _) in enumerate(parts)]
        if op.q_len == 1:  # stream: the layer's K and V into a GPU buffer, freed by layer i-2's attention
            flush()
            free = [gpu_attn[-2]] if len(gpu_attn) >= 2 else []
            after += [
                xfer(f"{name}.kv_to_{gpu}", b - q - o, dev, gpu, free) for gpu, dev, (q, _, o, b) in copies
            ]
        segment.append((k, lop))
        a = flush()
        assert a is not None
        gpu_attn.append(a)
        for gpu, dev, (q, new, o, b) in copies:
            xfer(f"{name}.kv_to_{dev}", new if op.q_len == 1 else b - q - o, gpu, dev, [a])
    flush()
    return Program.compile(logical.name, w.steps)
