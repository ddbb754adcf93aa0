"""Offload decode: one decode step with the KV cache where the plan puts it (`offload.kv`), so a batch whose
KV outgrows the GPUs' memory can run (AttAcc's PIM stacks, InstInfer's CSDs, FlexGen's host memory or SSD);
with `prefill`, the prompts run on the GPUs first and each layer's K and V are written to the KV devices.

The KV cache is allocated on the KV devices, not the GPUs; each rank's share (its KV heads, every layer)
on its own device. Without `offload.kv` it is the `decode` scenario (the KV on the GPUs), the baseline
of the same case study.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from models.llm import build_pass
from simcore.config import Param, param_field
from simcore.mapping import map_pass
from simcore.mapping.kv_offload import split_batch
from simcore.scenarios.base import LLMRun, Process, register
from simcore.scenarios.decode import Decode


def allocate_offloaded_kv(run: LLMRun, batch: int, tokens: int) -> float:
    """Each rank's KV share split evenly over its KV devices (several ranks may share one); returns the
    bytes each rank holds."""
    spec, plan, kv = run.spec, run.plan, run.placement.kv
    share = batch * tokens * plan.precision.kv_bytes(spec.kv_elements_per_token) / spec.kv_split(run.tp)
    m = len(kv) // run.tp
    for j, dev in enumerate(kv):
        run.engine.allocate(dev, "kv_cache", share * split_batch(batch, m)[j % m] / batch)
    return share


@register("offload-decode")
@dataclass(frozen=True)
class OffloadDecode(Decode):
    """A decode step of `batch` sequences at `context_len` tokens, the KV cache on the plan's KV devices."""

    prefill: bool = param_field(
        Param(
            "first run the prompts (context_len tokens each) on the GPUs, writing their KV to the KV devices",
            type=bool,
            default=False,
        )
    )

    places_kv: ClassVar[bool] = True  # allocates the KV cache on `offload.kv` (other scenarios: on the GPUs)

    def drive(self, run: LLMRun) -> Process:
        env = run.engine.env
        kv_len = self.context_len + 1
        prefill_s = 0.0
        if run.placement.kv:
            share = allocate_offloaded_kv(run, self.batch, self.context_len)
            precision = run.plan.precision
            if self.prefill:
                t0 = env.now
                ctx = self.context_len
                logical = build_pass(run.spec, run.tp, self.batch, ctx, ctx, precision, "prefill")
                yield run.submit_all([map_pass(logical, run.placement, run.plan)])
                prefill_s = env.now - t0
            t0 = env.now
            # mapped afresh (not derived from a template): a stream's KV copies grow with the context too
            logical = build_pass(run.spec, run.tp, self.batch, 1, kv_len, precision, "decode")
            yield run.submit_all([map_pass(logical, run.placement, run.plan)])
        else:
            run.allocate_kv(self.batch, self.context_len)
            share = 0.0
            if self.prefill:
                t0 = env.now
                yield run.submit_all(run.programs(self.batch, self.context_len, self.context_len, "prefill"))
                prefill_s = env.now - t0
            t0 = env.now
            yield run.submit_all(run.programs(self.batch, 1, kv_len, "decode"))
        t = env.now - t0
        out = {"latency_s": t, "time_per_output_token_s": t, "tokens_per_s": self.batch / t}
        if self.prefill:
            out["prefill_time_s"] = prefill_s
        if run.placement.kv:
            out.update(kv_devices=list(dict.fromkeys(run.placement.kv)), kv_attention=run.plan.kv_attention,
                       kv_bytes_per_rank=share)  # fmt: skip
        return out
