"""Sweep throughput: Llama-2-7B decode-step design points per minute on 2 worker processes, and how much
faster the same sweep is when every point is already in the store (targets: >= 1,000 points/min, >= 20x)."""

from __future__ import annotations

import tempfile
import time

POINTS = 1200
WORKERS = 2

SPEC = {
    "name": "bench-sweep",
    "base": {"name": "bench-sweep", "hardware": "a100-sxm4-80gb", "model": "llama-2-7b", "dtype": "bf16",
             "scenario": {"kind": "decode", "batch": 1, "context_len": 1024}},
    "axes": {
        "scenario.batch": {"low": 1, "high": 64, "integer": True, "log": True},
        "scenario.context_len": {"low": 128, "high": 4096, "integer": True, "log": True},
        "hardware.memory.bandwidth": {"low": "1.5 TB/s", "high": "3.5 TB/s"},
    },
    "sampling": {"method": "random", "samples": POINTS, "seed": 1},
    "objectives": {"time_per_output_token_s": "min", "tokens_per_s": "max"},
}  # fmt: skip


def run() -> dict:
    from simcore.sweep import load_sweep, run_sweep

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        df = run_sweep(load_sweep(SPEC), workers=WORKERS, out=out, progress=False)
        fresh = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = run_sweep(load_sweep(SPEC), workers=WORKERS, out=out, progress=False)
        cached = time.perf_counter() - t0
    stats = df.attrs["stats"]
    assert again.attrs["stats"]["cached"] == stats["unique"] and again.attrs["stats"]["computed"] == 0
    return {
        "llama2_7b_decode_points": stats["points"],
        "llama2_7b_decode_points_computed": stats["computed"],
        "workers": stats["workers"],
        "fresh_wall_s": round(fresh, 3),
        "points_per_min": round(60 * stats["computed"] / fresh),
        "cached_rerun_wall_s": round(cached, 3),
        "cached_rerun_speedup": round(fresh / cached, 1),
    }


if __name__ == "__main__":
    print(run())
