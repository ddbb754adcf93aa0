"""End-to-end LLM inference rows (llm_e2e_*.csv) for `simcore validate data`: a published tokens/s
becomes the time of the run it describes (prompt processing or text generation of N tokens, a static
batch), simulated through the same experiment entry point a user calls.

What a row maps to:
- llama.cpp `llama-bench -p N`: a prefill of N tokens at batch 1 (time = N / prompt tok/s);
  `-n N`: N tokens generated from an empty context at batch 1 (time = N / output tok/s). Weights in the
  GGUF format the row names (Q4_K_M, Q8_0, F16), one GPU.
- TensorRT-LLM static-batch throughput (gptSessionBenchmark): batch B, input I, output O on
  `num_devices` GPUs in tensor parallel (time = B x O / output tok/s); time to first token rows: a
  prefill of I tokens at batch B. A "total tokens/s" whose definition is in doubt is not used.
Rows of models the project does not ship, multi-GPU layer splits (llama.cpp's default pipeline split) and
serving rows (concurrency, not a static batch) are listed as unmapped with that reason.
"""

from __future__ import annotations

import re
from typing import Any

from simcore.validate.rows import SYSTEMS, Row, Simulator, _approx, _Fields, csv_format, map_device

#: published model names -> shipped model configs
MODELS: tuple[tuple[str, str], ...] = (
    (r"llama-3-8b", "llama-3-8b"),
    (r"llama-3-70b", "llama-3-70b"),
    (r"llama-2-7b", "llama-2-7b"),
    (r"llama-2-13b", "llama-2-13b"),
    (r"llama-2-70b", "llama-2-70b"),
    (r"mistral-7b", "mistral-7b"),
)

#: published weight formats -> (dtype, precision.weights)
WEIGHTS: tuple[tuple[str, str, str | None], ...] = (
    (r"q4_k_m", "fp16", "q4_k_m"),
    (r"q8_0", "fp16", "q8_0"),
    (r"\bf16\b|fp16|float16", "fp16", None),
    (r"bf16|bfloat16", "bf16", None),
)

_PROMPT = re.compile(r"prompt processing of (\d+) tokens")
_GENERATE = re.compile(r"text generation of (\d+) tokens")
_TTFT = re.compile(r"time to first token")
_STATIC = re.compile(r"static batch")


def _lookup(table: tuple[tuple[Any, ...], ...], text: str) -> tuple[Any, ...] | None:
    key = re.sub(r"^(meta-)", "", text.strip().lower().replace(" ", "-"))
    return next((entry[1:] for entry in table if re.search(entry[0], key)), None)


@csv_format("llm_e2e_*.csv", ("output_throughput_tok_per_s", "weights_precision"), ("hardware",), ("model",),
            ("num_devices",), ("scenario",), ("framework",))  # fmt: skip
def e2e_row(f: _Fields, sim: Simulator) -> Row:
    """One measured end-to-end figure as a time, with the run that predicts it (or why there is none)."""
    scenario, framework = f.text("scenario").lower(), f.text("framework").lower()
    devices = f.integer("num_devices") or 1
    model = _lookup(MODELS, f.text("model"))
    weights = _lookup(WEIGHTS, f.text("weights_precision"))
    batch = f.integer("batch_or_concurrency", required=False) or 1
    isl = int(f.number("input_len_tokens") or 0)
    osl = int(f.number("output_len_tokens") or 0)
    family, measured, run = "llm", 0.0, None
    if (m := _PROMPT.search(scenario)) and (tput := f.number("prompt_throughput_tok_per_s")):
        n = int(m.group(1))
        family, measured, run = "llm prefill", n / tput, ("prefill", 1, n, 0)
    elif (m := _GENERATE.search(scenario)) and (tput := f.number("output_throughput_tok_per_s")):
        n = int(m.group(1))
        family, measured, run = "llm generation", n / tput, ("generate", 1, 1, n)
    elif _TTFT.search(scenario) and (ttft := f.number("ttft_ms")) and isl:
        family, measured, run = "llm ttft", ttft / 1e3, ("prefill", batch, isl, 0)
    elif _STATIC.search(scenario) and (tput := f.number("output_throughput_tok_per_s")) and isl and osl:
        family, measured, run = "llm throughput", batch * osl / tput, ("generate", batch, isl, osl)
    elif _STATIC.search(scenario) and f.number("total_throughput_tok_per_s"):
        # e.g. Azure's LLMBenchmark rows: read as input + output tokens per second (as their README says),
        # Llama-3-8B at batch 64 x 136 tokens would run at ~6% of an A100's FLOP rate; read as output
        # tokens only, the figure is plausible. Not guessed: listed as unmapped.
        family = "llm throughput"
    device = f.text("hardware")
    preset, why = map_device(device)
    dtype = weights[0] if weights else ""
    shape = f"{f.text('model')} {f.text('weights_precision')} x{devices} {scenario[:40]}"
    row = Row(f.file, f.line, device, family, dtype or "-", shape, "time", measured, _approx(f), f.text("source"),
              preset)  # fmt: skip
    if preset is None:
        row.reason = why
    elif run is None and family == "llm throughput":
        row.reason = "a total tokens/s whose definition is in doubt (input + output, or output only)"
    elif run is None:
        row.reason = "not a prompt/generation/static-batch figure this format maps"
    elif model is None:
        row.reason = f"model {f.text('model')!r} is not shipped"
    elif weights is None:
        row.reason = f"weight format {f.text('weights_precision')!r} is not mapped"
    elif devices > 1 and "llama.cpp" in framework:
        row.reason = "llama.cpp's multi-GPU layer split is not a tensor-parallel plan"
    elif devices > 1 and preset not in SYSTEMS:
        row.reason = f"no multi-GPU system preset of {preset}"
    if not row.reason and run is not None and model is not None and weights is not None:
        row.predict = lambda: _simulate(sim, preset, devices, model[0], weights, run)
    return row


def _simulate(sim: Simulator, preset: str, devices: int, model: str, weights: tuple[str, str | None],
              run: tuple[str, int, int, int]) -> tuple[float, str]:  # fmt: skip
    from simcore.experiment import Generate, Prefill, simulate

    kind, batch, prompt, new = run
    system = sim.system(preset if devices == 1 else SYSTEMS[preset])
    dtype, fmt = weights
    scenario = Prefill(batch=batch, prompt_len=prompt) if kind == "prefill" else Generate(
        batch=batch, prompt_len=prompt, new_tokens=new)  # fmt: skip
    summary = simulate(system, model, scenario, dtype=dtype, tp=devices, keep_records=False,
                       precision={"weights": fmt} if fmt else None).summary  # fmt: skip
    return summary["latency_s"], kind  # -n N: a 1-token prefill and N - 1 decode steps, N evaluations
