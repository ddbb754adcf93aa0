"""Generate: prefill a prompt, then decode until `new_tokens` tokens exist (the first comes from prefill)."""

from __future__ import annotations

from dataclasses import dataclass

from models.llm import LLMSpec
from simcore.config import count, param_field, positive
from simcore.scenarios.base import LLMRun, LLMScenario, Process, register
from simcore.scenarios.prefill import prefill_then_decode


@register("generate")
@dataclass(frozen=True)
class Generate(LLMScenario):
    batch: int = param_field(positive("sequences in the batch", type=int, default=1))
    prompt_len: int = param_field(positive("prompt tokens", type=int, default=512))
    new_tokens: int = param_field(count("tokens to generate", default=128, maximum=1 << 20))

    def check_context(self, spec: LLMSpec) -> None:
        p, n = self.prompt_len, self.new_tokens
        spec.check_positions(p + n, f"prompt {p} + {n} new tokens needs {p + n}", "scenario.prompt_len")

    def drive(self, run: LLMRun) -> Process:
        return prefill_then_decode(run, self.batch, self.prompt_len, self.new_tokens)
