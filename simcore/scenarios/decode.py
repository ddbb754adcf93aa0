"""Decode: one step of every sequence with `context_len` tokens already in the KV cache."""

from __future__ import annotations

from dataclasses import dataclass

from models.llm import LLMSpec
from simcore.config import param_field, positive
from simcore.scenarios.base import LLMRun, LLMScenario, Process, register


@register("decode")
@dataclass(frozen=True)
class Decode(LLMScenario):
    batch: int = param_field(positive("sequences in the batch", type=int, default=1))
    context_len: int = param_field(positive("tokens in the KV cache", type=int, default=512))

    def check_context(self, spec: LLMSpec) -> None:
        c = self.context_len
        spec.check_positions(c + 1, f"context {c} + 1 new token needs {c + 1}", "scenario.context_len")

    def drive(self, run: LLMRun) -> Process:
        env = run.engine.env
        t0, busy0 = env.now, run.stage_busy_s()
        run.allocate_kv(self.batch, self.context_len)
        yield run.submit_all(run.programs(self.batch, 1, self.context_len + 1, "decode"))
        t = env.now - t0
        out = {"latency_s": t, "time_per_output_token_s": t, "tokens_per_s": self.batch / t}
        if len(run.placement.stages) > 1:
            out["pipeline_bubble_fraction"] = run.bubble_fraction(t0, busy0)
        return out
