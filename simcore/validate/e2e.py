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
import weakref
from collections.abc import Callable
from typing import Any

from models.llm import SeqGroup, load_llm, model_names
from simcore.mapping.frameworks import FRAMEWORKS
from simcore.validate.rows import SYSTEMS, Row, Simulator, _approx, _Fields, csv_format, map_device

#: published model names -> shipped model configs
MODELS: tuple[tuple[str, str], ...] = (
    (r"llama-3-8b", "llama-3-8b"),
    (r"llama-3-70b", "llama-3-70b"),
    (r"llama-2-7b", "llama-2-7b"),
    (r"llama-2-13b", "llama-2-13b"),
    (r"llama-2-70b", "llama-2-70b"),
    (r"mistral-7b", "mistral-7b"),
    (r"gpt-j-6b", "gpt-j-6b"),
    (r"falcon-180b", "falcon-180b"),
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
_SESSION_BENCHMARK = re.compile(r"gptsessionbenchmark")


def _lookup(table: tuple[tuple[Any, ...], ...], text: str) -> tuple[Any, ...] | None:
    key = re.sub(r"^(meta-)", "", text.strip().lower().replace(" ", "-"))
    return next((entry[1:] for entry in table if re.search(entry[0], key)), None)


#: published repository names whose shapes a shipped config already has (its model card says so)
SAME_SHAPES: dict[str, str] = {
    # Qwen3-Coder-30B-A3B-Instruct's model card: 30.5B total / 3.3B active, 48 layers, 32 query and 4 KV
    # heads, 128 experts with 8 active: Qwen3-30B-A3B's shapes (a longer context only)
    "qwen3-coder-30b-a3b": "qwen3-30b-a3b",
    # Qwen2.5-7B's config.json: Qwen2-7B's shapes (3584 hidden, 28 layers, 28 query / 4 KV heads, 18944 FFN,
    # 152064 vocabulary)
    "qwen2.5-7b": "qwen2-7b",
}


def shipped_model(text: str) -> str | None:
    """The shipped config a published model name runs: the repository name without its organisation, in
    lower case, without release and tuning suffixes (-Instruct, -Thinking, -2507, -it, -chat, -hf) or a
    weight format (-FP8: the row's precision); Llama 3.1 and 3.3 keep Llama 3's shapes (their longer
    context changes positions, not shapes)."""
    key = re.sub(r"^meta-", "", text.split("/")[-1].strip().lower())
    while (short := re.sub(r"-(instruct|thinking|chat|hf|it|fp8|\d{4})$", "", key)) != key:
        key = short
    key = SAME_SHAPES.get(key, key)
    shipped = model_names()
    return next((k for k in (key, re.sub(r"^llama-3\.[13]-", "llama-3-", key)) if k in shipped), None)


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
        # gptSessionBenchmark's "out tok/s" on several GPUs is per GPU: as totals, Llama-2-70B at batch 1280,
        # 128/128 on four A100s (670 tok/s) would run at 15 % of their fp16 peak in a peak-throughput table;
        # per GPU, at 60 %, as the one-GPU rows do
        per_gpu = devices if _SESSION_BENCHMARK.search(scenario) else 1
        family, measured, run = (
            "llm throughput",
            batch * osl / (tput * per_gpu),
            ("generate", batch, isl, osl),
        )
    elif _STATIC.search(scenario) and f.number("total_throughput_tok_per_s"):
        # e.g. Azure's LLMBenchmark rows: read as input + output tokens per second (as their README says),
        # Llama-3-8B at batch 64 x 136 tokens would run at ~6% of an A100's FLOP rate; read as output
        # tokens only, the figure is plausible. Not guessed: listed as unmapped.
        family = "llm throughput"
    device = f.text("hardware")
    preset, why = map_device(device)
    if preset is None and run is not None and _UNSTATED_A100.search(device):
        preset, why = (
            _a100_holding(model[0], devices, batch * (isl + osl))
            if model is not None
            else (None, f"model {f.text('model')!r} is not shipped")
        )
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
        row.predict = lambda: _simulate(sim, preset, devices, model[0], weights, run, framework_of(framework))
    return row


_UNSTATED_A100 = re.compile(r"A100 \(variant not stated\)", re.IGNORECASE)


def _a100_holding(model: str, devices: int, tokens: int) -> tuple[str | None, str]:
    """The A100 of a row that does not say 40 or 80 GB, from what the run keeps in memory: fp16 weights and
    the KV cache of `tokens` tokens split over `devices` GPUs. Over 40 GB each, only the 80 GB part holds it."""
    spec = load_llm(model)
    per_gpu_B = (2 * spec.params + 2 * tokens * spec.kv_elements_per_token) / devices
    if per_gpu_B > 40e9:
        return "a100-sxm4-80gb", f"A100 variant inferred: the run keeps {per_gpu_B / 1e9:.0f} GB per GPU"
    return (
        None,
        f"A100 variant not stated, and the run ({per_gpu_B / 1e9:.0f} GB per GPU) fits 40 and 80 GB parts",
    )


def framework_of(text: str) -> str:
    """The registered framework a published framework name is (plain PyTorch + NCCL when none is)."""
    text = text.lower().replace("tensorrt_llm", "tensorrt-llm")
    return next((name for name in FRAMEWORKS if name in text), "pytorch")


def _simulate(sim: Simulator, preset: str, devices: int, model: str, weights: tuple[str, str | None],
              run: tuple[str, int, int, int], framework: str) -> tuple[float, str]:  # fmt: skip
    from simcore.experiment import Generate, Prefill, simulate

    kind, batch, prompt, new = run
    system = sim.system(preset if devices == 1 else SYSTEMS[preset])
    dtype, fmt = weights
    scenario = Prefill(batch=batch, prompt_len=prompt) if kind == "prefill" else Generate(
        batch=batch, prompt_len=prompt, new_tokens=new)  # fmt: skip
    summary = simulate(system, model, scenario, dtype=dtype, tp=devices, keep_records=False,
                       precision={"weights": fmt} if fmt else None, framework=framework).summary  # fmt: skip
    return summary["latency_s"], kind  # -n N: a 1-token prefill and N - 1 decode steps, N evaluations


# ------------------------------------------------------------------------------------ serving energy

#: prompt tokens per request of the serving tasks (not in the published rows): a stated assumption. A
#: decode step's context is this plus half the average output; it matters only where the batch's KV
#: reads rival the weights'.
TASK_PROMPT_TOKENS: tuple[tuple[str, int], ...] = (
    (r"lm-arena-chat", 256),  # single-turn chat prompts
    (r"gpqa", 300),  # a graduate-level multiple-choice question with its instructions
)

#: how vLLM serves an FP8 checkpoint (a "-FP8" repository; the precision plan's entries): weights and GEMM
#: inputs in fp8, all-reduces in bf16. A checkpoint quantized otherwise runs as it ships
#: (`LLMSpec.checkpoint_precision`: gpt-oss's MXFP4 experts, dequantized to bf16 in the MoE GEMMs on GPUs
#: without FP4 tensor cores).
SERVED_FP8: tuple[tuple[str, str], ...] = (
    ("weights", "fp8"),
    ("activations", "fp8"),
    ("communication", "bf16"),
)

_BATCH = re.compile(r"avg batch ([\d.]+)")
_OUTPUT = re.compile(r"avg output len ([\d.]+)")
_TP = re.compile(r"\bTP(\d+)\b")
_EP = re.compile(r"\bEP(\d+)\b")


@csv_format("energy_*.csv", ("energy_per_output_token_J", "avg_power_W_all_devices"), ("hardware",), ("model",),
            ("num_devices",), ("config",), ("workload",))  # fmt: skip
def energy_row(f: _Fields, sim: Simulator) -> list[Row]:
    """A steady-state serving measurement (vLLM at a fixed max_num_seqs, GPU energy counters): energy per
    output token, average power of the GPUs used and median inter-token latency, each predicted from the
    steady state of continuous batching on that many GPUs (tensor parallel): see `steady_state`."""
    config, workload = f.text("config"), f.text("workload")
    devices = f.integer("num_devices") or 1
    name = shipped_model(f.text("model"))
    model = (name,) if name else None
    fp8 = bool(re.search(r"-fp8\b", f.text("model"), re.IGNORECASE))
    precision = dict(SERVED_FP8) if fp8 else load_llm(name).checkpoint_precision if name else {}
    dtype = precision.get("activations") or precision.get("experts") or "bf16"
    prompt = next((n for pattern, n in TASK_PROMPT_TOKENS if re.search(pattern, workload)), None)
    batch_m, out_m, tp_m, ep_m = (
        _BATCH.search(config),
        _OUTPUT.search(config),
        _TP.search(config),
        _EP.search(config),
    )
    tp, ep = (int(m.group(1)) if m else 0 for m in (tp_m, ep_m))
    device = f.text("hardware")
    preset, why = map_device(device)
    measured = (("energy", "llm energy per token", f.number("energy_per_output_token_J")),
                ("power", "llm serving power", f.number("avg_power_W_all_devices")),
                ("time", "llm serving ITL", (f.number("median_itl_ms") or 0) / 1e3 or None))  # fmt: skip
    reason = ""
    if preset is None:
        reason = why
    elif model is None:
        reason = f"model {f.text('model')!r} is not shipped"
    elif prompt is None:
        reason = f"no prompt length assumed for the task of {workload!r}"
    elif not (batch_m and out_m):
        reason = "no average batch and output length in the row's config"
    elif (tp, ep) not in ((devices, 1), (1, devices)):
        reason = "not a tensor-parallel or expert-parallel plan over all its GPUs"
    elif devices > 1 and preset not in SYSTEMS:
        reason = f"no multi-GPU system preset of {preset}"
    rows = []
    for quantity, family, value in measured:
        if value is None:
            continue
        shape = f"{f.text('model')} x{devices} {config[:48]}"
        row = Row(f.file, f.line, device, family, dtype, shape, quantity, value, _approx(f), f.text("source"),
                  preset)  # fmt: skip
        row.reason = reason
        if not reason and model is not None and prompt is not None and batch_m and out_m:
            state = (sim, preset, devices, model[0], float(batch_m.group(1)), prompt, float(out_m.group(1)),
                     framework_of(f.text("framework")), tuple(precision.items()), ep > 1)  # fmt: skip
            row.predict = _serving_figure(state, quantity)
        rows.append(row)
    return rows


def _serving_figure(state: tuple[Any, ...], quantity: str) -> Callable[[], tuple[float, str]]:
    def predict() -> tuple[float, str]:
        figures = steady_state(*state)
        return figures[quantity], "serving"

    return predict


#: per simulator (its presets and overrides), the steady states it computed
_STATES: weakref.WeakKeyDictionary[Simulator, dict[tuple[Any, ...], dict[str, float]]] = (
    weakref.WeakKeyDictionary()
)


def steady_state(sim: Simulator, preset: str, devices: int, model: str, batch: float, prompt: int,
                  output: float, framework: str, precision: tuple[tuple[str, str], ...] = (),
                  expert_parallel: bool = False) -> dict[str, float]:  # fmt: skip
    """Continuous batching in steady state at `batch` running sequences: each iteration decodes one token
    of every sequence (context: the prompt plus half the average output) and, as batch / output requests
    finish per iteration, prefills as many new prompts' tokens (chunked prefill spreads them over the
    iterations), on `devices` GPUs in tensor parallel or, `expert_parallel`, as many expert-parallel ranks
    (attention data-parallel). Energy per output token and power are the mean iteration's (joules of the GPUs used);
    the median inter-token latency is the mixed iteration's when most iterations carry prefill tokens
    (batch / output >= 1/2), else a decode-only iteration's. `precision`: the plan's entries other than bf16
    (SERVED_FP8, or the checkpoint's own: `LLMSpec.checkpoint_precision`). Under FP8 the KV cache follows the
    activations into fp8 (vLLM keeps it in bf16, but a plan's attention reads the KV in its compute format: at
    these batches the KV is under a fifth of the bytes a step reads)."""
    from simcore.mapping import ExecutionPlan, place, with_kernels
    from simcore.precision import plan_from
    from simcore.scenarios.base import LLMRun

    states = _STATES.setdefault(sim, {})
    key = (preset, devices, model, batch, prompt, output, framework, precision, expert_parallel)
    if key in states:
        return states[key]
    system = sim.system(preset if devices == 1 else SYSTEMS[preset])
    b = max(1, round(batch))
    decode = SeqGroup(b, 1, prompt + round(output / 2))
    prefill_tokens = round(batch * prompt / output)
    whole, part = divmod(prefill_tokens, prompt)
    groups = tuple(g for g in (SeqGroup(whole, prompt, prompt) if whole else None,
                               SeqGroup(1, part, prompt) if part else None) if g)  # fmt: skip

    tp, ep = (1, devices) if expert_parallel else (devices, 1)
    spec = load_llm(model)
    plan = ExecutionPlan(tp=tp, ep=ep, precision=plan_from("bf16", dict(precision)), framework=framework)
    plan = with_kernels(system, place(system, spec, plan), plan)  # the framework's attention kernel
    gpus = set(list(system.of_type("gpu"))[:devices])

    def iteration(extra: tuple[SeqGroup, ...]) -> tuple[float, float]:
        run = LLMRun(system, spec, plan, False)
        run.allocate_weights()
        (program,) = run.iteration((decode, *extra))
        t = run.engine.run(program)
        energy = run.engine.ledger().energy_breakdown_J()
        return t, sum(sum(v.values()) for dev, v in energy.items() if dev in gpus)

    t_decode, j_decode = iteration(())
    t_mixed, joules = iteration(groups) if groups else (t_decode, j_decode)
    itl = t_mixed if batch / output >= 0.5 else t_decode
    states[key] = {"energy": joules / b, "power": joules / t_mixed, "time": itl}
    return states[key]
