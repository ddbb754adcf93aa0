"""Prefill: one forward pass over the prompts of a batch (time to first token)."""

from __future__ import annotations

from dataclasses import dataclass

from models.llm import LLMSpec
from simcore.config import param_field, positive
from simcore.progress import bar
from simcore.scenarios.base import LLMRun, LLMScenario, Process, decode_step, register


@register("prefill")
@dataclass(frozen=True)
class Prefill(LLMScenario):
    batch: int = param_field(positive("sequences in the batch", type=int, default=1))
    prompt_len: int = param_field(positive("prompt tokens", type=int, default=512))

    def check_context(self, spec: LLMSpec) -> None:
        p = self.prompt_len
        spec.check_positions(p, f"a prompt of {p} tokens is longer", "scenario.prompt_len")

    def drive(self, run: LLMRun) -> Process:
        return prefill_then_decode(run, self.batch, self.prompt_len, 1)


def prefill_then_decode(run: LLMRun, batch: int, prompt: int, new_tokens: int) -> Process:
    """Prefill `prompt` tokens (its KV cache sized for the whole generation), then decode until
    `new_tokens` exist; each decode step reprices only its attention, whose context grew by one."""
    env = run.engine.env
    t0, busy0 = env.now, run.stage_busy_s()
    progs = run.programs(batch, prompt, prompt, "prefill", kv_alloc_tokens=prompt + new_tokens)
    yield run.submit_all(progs)
    t_prefill = env.now - t0
    out = {"prefill_time_s": t_prefill, "time_to_first_token_s": t_prefill,
           "prefill_tokens_per_s": batch * prompt / t_prefill}  # prompt tokens per second  # fmt: skip
    if len(run.placement.stages) > 1:
        out["pipeline_bubble_fraction"] = run.bubble_fraction(t0, busy0)
    steps = new_tokens - 1
    if steps > 0:
        t1 = env.now
        templates = run.programs(batch, 1, prompt + 1, "decode")
        for j in bar(range(1, steps + 1), steps, "decode steps", min_total=64):
            yield run.submit_all([decode_step(t, prompt + j) if j > 1 else t for t in templates])
        out.update(decode_time_s=env.now - t1, time_per_output_token_s=(env.now - t1) / steps)
    tokens = batch * new_tokens
    out.update(latency_s=env.now - t0, tokens_per_s=tokens / (env.now - t0), output_tokens=tokens)
    return out
