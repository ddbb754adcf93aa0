"""Writing a placed program: a rank's chain of ops on a device group, weight streams, stage sends."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from models.llm import LogicalOp, LogicalPass
from simcore.ops import Transfer
from simcore.program import Step


class StepWriter:
    """Appends steps in a valid order; every op runs on its stage's group after the previous op there."""

    def __init__(self, logical: LogicalPass, hosts: Mapping[str, str] | None) -> None:
        self.logical = logical
        self.hosts = hosts
        self.steps: list[Step] = []
        self.last: dict[tuple[str, ...], int] = {}  # group -> its latest step
        self.layer_end: dict[tuple[tuple[str, ...], int], int] = {}  # (group, layer) -> last step
        self.placed: dict[tuple[tuple[str, ...], int], int] = {}  # (group, logical op index) -> step

    def add(self, step: Step) -> int:
        self.steps.append(step)
        return len(self.steps) - 1

    def chain(self, ops: Sequence[tuple[int, LogicalOp]], group: tuple[str, ...], after: Sequence[int] = (),
              prefix: str = "") -> int:  # fmt: skip
        """`ops` (index in the pass, op) in order on `group`; the first also waits for `after`. With
        weights streamed from hosts, each layer's shard is copied to every rank once the buffer it reuses
        (layer i-2's) is free."""
        phase, layers, steps, placed = self.logical.phase, self.logical.layers, self.steps, self.placed
        last = self.last.get(group)
        block = None
        for k, lop in ops:
            if lop.block == block:  # the common case: right after the previous op of the same block
                deps: tuple[int, ...] = (last,)  # type: ignore[assignment]
            else:
                if block is not None and 0 <= block < layers:
                    self.layer_end[(group, block)] = last  # type: ignore[assignment]
                block = lop.block
                waits = ([last] if last is not None else []) + list(after)
                after = ()
                if self.hosts is not None and 0 <= block < layers:
                    waits += self._fetch(block, group, prefix)
                deps = tuple(sorted(waits))
            twin = placed.get((group, lop.twin if lop.twin >= 0 else k), -1)
            steps.append(
                Step(lop.op, group, deps, phase, lop.allocs, twin, prefix + (lop.name or lop.op.name))
            )
            last = len(steps) - 1
            placed.setdefault((group, k), last)
        if last is not None:
            self.last[group] = last
        if block is not None and 0 <= block < layers:
            self.layer_end[(group, block)] = last  # type: ignore[assignment]
        return last  # type: ignore[return-value]

    def _fetch(self, layer: int, group: tuple[str, ...], prefix: str) -> list[int]:
        free = self.layer_end.get((group, layer - 2))
        out = []
        for gpu in group:
            host = self.hosts[gpu]  # type: ignore[index]
            op = Transfer(f"{prefix}L{layer}.weights_to_{gpu}", self.logical.ops[0].op.dtype,
                          nbytes=self.logical.layer_weight_B, src=host, dst=gpu)  # fmt: skip
            out.append(self.add(Step(op, (host,), (free,) if free is not None else (), self.logical.phase)))
        return out

    def send(self, src: tuple[str, ...], dst: tuple[str, ...], after: int, name: str) -> list[int]:
        """Each rank of `src` sends its share of the hidden state to the same rank of `dst`."""
        dtype = self.logical.ops[0].op.dtype
        return [
            self.add(
                Step(
                    Transfer(f"{name}_r{r}", dtype, nbytes=self.logical.activation_B, src=a, dst=b),
                    (a,),
                    (after,),
                    self.logical.phase,
                )
            )  # fmt: skip
            for r, (a, b) in enumerate(zip(src, dst, strict=True))
        ]
