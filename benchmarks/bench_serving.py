"""Serving speed: 1,000 requests of Llama-3-8B on one H100 (target <= 1 s on two cores) and 10,000 on 8
replicas behind a router (target <= 10 s), and the cost per simulated iteration as the run grows (flat)."""

from __future__ import annotations

import time

from simcore.experiment import load_experiment


def _serve(count: int, rate_per_s: float, hardware: str = "h100-sxm5-80gb", dp: int = 1) -> tuple[float, int]:
    doc = {"name": "bench-serve", "hardware": hardware, "model": "llama-3-8b", "dtype": "bf16",
           "parallelism": {"tp": 1, "dp": dp},
           "scenario": {"kind": "serve", "requests": {"count": count, "arrival": "poisson", "rate_per_s": rate_per_s,
                                                      "prompt_len": 256, "output_len": 128},
                        "scheduler": {"name": "vllm"}}}  # fmt: skip
    experiment = load_experiment(doc)
    t0 = time.perf_counter()
    summary = experiment.run(keep_records=False).summary
    return time.perf_counter() - t0, summary["iterations"]


def run() -> dict:
    _serve(50, 20.0)  # warm the program caches and imports, as a second run in a session would find them
    t_small, it_small = _serve(250, 20.0)
    t_1k, it_1k = _serve(1000, 20.0)
    t_10k, it_10k = _serve(10_000, 160.0, "dgx-h100-8", dp=8)
    return {
        "serve_llama3_8b_h100_1000_requests_wall_s": round(t_1k, 3),
        "serve_llama3_8b_dgx_h100_8_replicas_10000_requests_wall_s": round(t_10k, 3),
        "serve_us_per_iteration_250_requests": round(1e6 * t_small / it_small, 1),
        "serve_us_per_iteration_1000_requests": round(1e6 * t_1k / it_1k, 1),
        "serve_us_per_iteration_10000_requests_8_replicas": round(1e6 * t_10k / it_10k, 1),
    }
