"""PIM generate: token-by-token generation on a PIM-GPT system (simcore/mapping/pim_gpt.py): every GEMV in
the banks of a PIM part that holds the weights and the KV cache, the rest on the ASIC that runs the plan
(`parallelism.devices: [asic]`, whose memory is the PIM part's).

PIM-GPT has no matrix engine, so the prompt too goes through one token at a time: prompt_len + new_tokens
- 1 passes over a context growing from 1 token, the last prompt token's pass giving the first new token.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.llm import LLMSpec, build_pass
from simcore.config import Param, count, param_field, positive
from simcore.errors import ConfigError
from simcore.mapping.pim_gpt import map_pim_gpt
from simcore.progress import bar
from simcore.scenarios.base import LLMRun, LLMScenario, Process, register
from simcore.system import System


def pim_device(system: System, asic: str, name: str | None) -> str:
    """The PIM part the ASIC sits on: the one named, else the system's only `pim` device; its memory must
    be the ASIC's (where the weights and the KV cache are allocated)."""
    pims = system.of_type("pim")
    if name is None and len(pims) != 1:
        raise ConfigError(f"{system.name!r} has {len(pims)} pim devices: name one with scenario.pim",
                          key="scenario.pim")  # fmt: skip
    pim = name if name is not None else pims[0]
    if pim not in pims:
        raise ConfigError(f"{pim!r} is not a pim device of {system.name!r} (pim devices: "
                          f"{', '.join(pims) or 'none'})", key="scenario.pim")  # fmt: skip
    if system.memory_of(asic) is not system.memory_of(pim):
        raise ConfigError(f"{asic!r} must sit on {pim!r}'s memory (memory_of: {pim}): the weights and the KV "
                          "cache it allocates are the ones the banks compute on", key="parallelism.devices")  # fmt: skip
    return pim


@register("pim-generate")
@dataclass(frozen=True)
class PimGenerate(LLMScenario):
    """Generation on a PIM unit + ASIC: `new_tokens` after a `prompt_len`-token prompt, one token a pass."""

    batch: int = param_field(positive("sequences in the batch", type=int, default=1))
    prompt_len: int = param_field(positive("prompt tokens", type=int, default=512))
    new_tokens: int = param_field(count("tokens to generate", default=128, maximum=1 << 20))
    pim: str | None = param_field(
        Param(
            "the PIM device holding weights and KV (default: the system's only one)", type=str, default=None
        )
    )

    def check_context(self, spec: LLMSpec) -> None:
        p, n = self.prompt_len, self.new_tokens
        spec.check_positions(p + n, f"prompt {p} + {n} new tokens needs {p + n}", "scenario.prompt_len")

    def drive(self, run: LLMRun) -> Process:
        group = run.placement.stages[0]
        if len(group) != 1 or len(run.placement.stages) > 1 or run.plan.dp > 1 or run.placement.hosts:
            raise ConfigError("pim-generate runs on one ASIC (parallelism.devices: [asic], tp = pp = dp = 1, "
                              "no offload)", key="parallelism.devices")  # fmt: skip
        asic = group[0]
        pim = pim_device(run.system, asic, self.pim)
        env = run.engine.env
        p, n = self.prompt_len, self.new_tokens
        run.allocate_kv(self.batch, p + n)
        logical = build_pass(run.spec, 1, self.batch, 1, 1, run.plan.precision, "decode")
        mapped = map_pim_gpt(logical, asic, pim)
        t0 = env.now
        out: dict[str, float] = {}
        passes = p + n - 1
        for kv_len in bar(range(1, passes + 1), passes, "pim passes", min_total=64):
            yield run.submit_all([mapped.at(kv_len)])
            if kv_len == p:
                out.update(time_to_first_token_s=env.now - t0, prefill_time_s=env.now - t0)
        t = env.now - t0
        tokens = self.batch * n
        decode_s = t - out["time_to_first_token_s"]
        if n > 1:
            out["time_per_output_token_s"] = decode_s / (n - 1)
        out.update(latency_s=t, tokens_per_s=tokens / t, output_tokens=tokens, pim_device=pim)  # type: ignore[arg-type]
        return out
