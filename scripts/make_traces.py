#!/usr/bin/env python3
"""Write the small synthetic request traces shipped in traces/ (deterministic: a fixed seed per trace).

Each trace has N_REQUESTS requests with Poisson arrivals at the stated rate and lognormal prompt and output
lengths whose centre follows a published statistic of a public trace (the source is cited per trace
below and in traces/README.md); the spread (sigma) and the arrival rate are our assumptions, not the
sources'. Lengths are clipped so that prompt + output fits an 8,192-token context.

    python scripts/make_traces.py          # rewrites traces/*.csv
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
N_REQUESTS = 300
MAX_PROMPT, MAX_OUTPUT = 6144, 2048

#: name -> (seed, arrivals per second, prompt (centre, kind, sigma), output (centre, kind, sigma), source)
#: kind "median": the lognormal's median is the statistic; "mean": its mean is.
TRACES = {
    "azure_conv_2023": (
        1,
        2.0,
        (1020, "median", 0.5),
        (129, "median", 1.0),
        "Azure LLM inference trace 2023, conversation: median prompt 1020 tokens, median output 129 tokens "
        "(Patel et al., Splitwise, ISCA 2024, Sec. III; AzureLLMInferenceTrace_conv.csv)",
    ),
    "azure_code_2023": (
        2,
        2.0,
        (1500, "median", 0.8),
        (13, "median", 1.2),
        "Azure LLM inference trace 2023, coding: median prompt 1500 tokens (rounded; 1469 recomputed from "
        "the CSV), median output 13 tokens (Patel et al., Splitwise, ISCA 2024, Sec. III; "
        "AzureLLMInferenceTrace_code.csv)",
    ),
    "sharegpt": (
        3,
        4.0,
        (161, "mean", 1.0),
        (338, "mean", 1.0),
        "ShareGPT: mean input 161 tokens, mean output 338 tokens (Kwon et al., vLLM/PagedAttention, SOSP "
        "2023, Sec. 6.1 and Fig. 11: 161.31 / 337.99)",
    ),
    "lmsys_chat": (
        4,
        4.0,
        (69.5, "mean", 1.0),
        (214.5, "mean", 1.0),
        "LMSYS-Chat-1M: 69.5 tokens per prompt, 214.5 tokens per response on average (Zheng et al., "
        "LMSYS-Chat-1M, ICLR 2024, Table 1, Llama-2 tokenizer)",
    ),
}


def lognormal(
    rng: np.random.Generator, centre: float, kind: str, sigma: float, n: int, top: int
) -> np.ndarray:
    """n lengths, lognormal with median `centre` (kind median) or mean `centre` (kind mean), in [1, top]."""
    mu = math.log(centre) - (sigma * sigma / 2 if kind == "mean" else 0.0)
    return np.clip(np.rint(rng.lognormal(mu, sigma, n)), 1, top).astype(int)


def write(name: str) -> Path:
    seed, rate, prompt, output, source = TRACES[name]
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, N_REQUESTS))
    prompts = lognormal(rng, *prompt, N_REQUESTS, MAX_PROMPT)
    outputs = lognormal(rng, *output, N_REQUESTS, MAX_OUTPUT)
    path = ROOT / "traces" / f"{name}.csv"
    lines = ["arrival_s,prompt_tokens,output_tokens"]
    lines += [f"{a:.6f},{p},{o}" for a, p, o in zip(arrivals, prompts, outputs, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    for name in TRACES:
        p = write(name)
        print(f"{p.relative_to(ROOT)}: {TRACES[name][4]}")
