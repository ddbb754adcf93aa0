"""The PIM-GPT mapping (Wu et al., "PIM-GPT", npj Unconventional Computing 2024): a decode pass with every
GEMV in the banks of a PIM part and everything else on a small ASIC beside it.

- Weight GEMMs (QKV, output projection, FFN, LM head) run on the PIM unit: their weights sit in its banks.
- A decode attention becomes its two GEMVs over the KV cache, also in the banks -- scores q Kᵀ
  (m = queries per KV head, n = sequences x KV heads x keys, k = head_dim) and outputs p V
  (n = sequences x KV heads x head_dim, k = keys) -- with the softmax between them on the ASIC.
- Norms, GeLU, residual adds, the softmax and the embedding lookup run on the ASIC.

Sharing rule: the ASIC has no memory of its own (`memory_of:` the PIM part), so it reads and writes its
vectors over the same memory port the banks hold while they compute (mode switching, hardware/pim.py): an
ASIC op and a PIM op at once would share that port. In a decode pass they never meet, as each op needs
the previous one's result: the pass is one chain, alternating between the two devices. The GEMVs' input
broadcast and partial-sum readout (t_in, t_out of the PIM closed form) are the vectors the ASIC exchanges
with the banks, so no separate transfers are written.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.llm import LogicalPass
from simcore.errors import ConfigError
from simcore.ops import Attention, Gemm, Op, Softmax
from simcore.program import Program, Step

#: the parts of a decode attention, in order: (name suffix, runs on the PIM unit)
ATTENTION_PARTS = (("score", True), ("softmax", False), ("value", True))


def attention_gemvs(op: Attention) -> tuple[Gemm, Softmax, Gemm]:
    """A decode attention as PIM-GPT runs it: the score GEMV over K, the softmax, the value GEMV over V.
    The queries sharing a KV head are the GEMV's m vectors over the same rows (MHA: m = 1); FLOPs equal
    the attention's 4 x heads x keys x head_dim per sequence."""
    if op.q_len != 1:
        raise ConfigError(f"PIM-GPT runs attention one token at a time (q_len 1); {op.name} has q_len "
                          f"{op.q_len}", key="scenario.prompt_len")  # fmt: skip
    if op.kv_dtype is not None:
        raise ConfigError(f"PIM-GPT keeps its KV cache in the GEMV dtype, not {op.kv_dtype}",
                          key="precision.kv_cache")  # fmt: skip
    group, inst, keys, d = op.heads // op.kv_heads, op.batch * op.kv_heads, op.keys_read, op.head_dim
    score = Gemm(f"{op.name}.score", op.dtype, m=group, n=inst * keys, k=d)
    softmax = Softmax(f"{op.name}.softmax", op.dtype, rows=op.batch * op.heads, cols=keys)
    value = Gemm(f"{op.name}.value", op.dtype, m=group, n=inst * d, k=keys)
    return score, softmax, value


@dataclass(frozen=True)
class PimDecode:
    """A mapped PIM-GPT decode pass and what changes from one step to the next: its attentions' parts.
    `at(kv_len)` is the same pass over `kv_len` tokens of context (only those parts are swapped)."""

    program: Program
    attentions: tuple[Attention, ...]  # distinct decode attentions of the pass (twin layers share one)
    parts: tuple[int, ...]  # step indices of their score, softmax and value ops

    def at(self, kv_len: int) -> Program:
        swap: dict[Op, Op] = {}
        for a in self.attentions:
            swap.update(zip(attention_gemvs(a), attention_gemvs(a.with_kv_len(kv_len)), strict=True))
        return self.program.replace_ops(swap.get, only=self.parts, uniform=True)


def map_pim_gpt(logical: LogicalPass, asic: str, pim: str) -> PimDecode:
    """The decode pass as one chain: GEMMs and the attention's GEMVs on `pim`, the rest on `asic`."""
    steps: list[Step] = []
    placed: dict[tuple[int, int], int] = {}  # (logical op index, part) -> step (twins of later layers)
    attentions: dict[Attention, None] = {}
    parts: list[int] = []
    phase = logical.phase

    def add(k: int, part: int, twin_of: int, op: Op, device: str, allocs: tuple, name: str) -> int:
        twin = placed.get((twin_of, part), -1) if twin_of >= 0 else -1
        deps = (len(steps) - 1,) if steps else ()
        steps.append(Step(op, (device,), deps, phase, allocs, twin, name))
        placed.setdefault((k, part), len(steps) - 1)
        return len(steps) - 1

    for k, lop in enumerate(logical.ops):
        op, name = lop.op, lop.name or lop.op.name
        if isinstance(op, Attention):
            attentions.setdefault(op)
            for j, (part, (suffix, on_pim)) in enumerate(
                zip(attention_gemvs(op), ATTENTION_PARTS, strict=True)
            ):
                allocs = lop.allocs if j == 0 else ()
                parts.append(add(k, j, lop.twin, part, pim if on_pim else asic, allocs, f"{name}.{suffix}"))
            continue
        add(k, 0, lop.twin, op, pim if isinstance(op, Gemm) else asic, lop.allocs, name)
    return PimDecode(Program.compile(logical.name, steps), tuple(attentions), tuple(parts))
