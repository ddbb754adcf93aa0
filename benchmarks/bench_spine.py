"""Spine figures: GEMM accuracy anchor, decode memory-boundness, GPT-3 generation speed, link contention."""

from __future__ import annotations

import resource
import time

from simcore.engine import Engine
from simcore.experiment import Decode, simulate
from simcore.experiment import run as run_experiment
from simcore.ops import Gemm, OpGraph, Transfer
from simcore.program import Program
from simcore.system import load_system

H100_MEASURED_TFLOPS = 790.0  # 8192^3 bf16 on H100 SXM, stas00/ml-engineering MAMF table (794.5)


def _gemm() -> dict:
    gpu = load_system("h100-sxm5-80gb").devices["gpu"]
    op = Gemm("g", "bf16", m=8192, n=8192, k=8192)
    tflops = op.flops / gpu.op_cost(op).duration_s / 1e12
    return {"h100_gemm_8192_bf16_tflops": round(tflops, 1),
            "h100_gemm_8192_error_vs_measured": round(tflops / H100_MEASURED_TFLOPS - 1, 4)}  # fmt: skip


def _decode() -> dict:
    s = simulate("a100-sxm4-80gb", "llama-2-7b", Decode(batch=1, context_len=512)).summary
    return {"llama2_7b_a100_decode_tpot_ms": round(s["time_per_output_token_s"] * 1e3, 3),
            "llama2_7b_a100_decode_hbm_bw_of_achievable": round(s["utilization"]["gpu.memory_bw_of_achievable"], 4)}  # fmt: skip


def _gpt3() -> dict:
    """GPT-3 generation: wall time, ops simulated per second, SimPy events (a program alone is one event)
    and the process's peak memory with every per-op record kept."""
    t0 = time.perf_counter()
    res = run_experiment("configs/experiments/gpt3-dgx-a100.yaml", keep_records=True)
    wall = time.perf_counter() - t0
    s = res.summary
    records = sum(1 for _ in res.records())
    return {"gpt3_175b_dgx_a100_generate_wall_s": round(wall, 3), "gpt3_175b_events": s["events"],
            "gpt3_175b_events_per_s": round(s["events"] / wall), "gpt3_175b_ops": s["ops"],
            "gpt3_175b_ops_per_s": round(s["ops"] / wall), "gpt3_175b_records": records,
            "gpt3_175b_simulated_latency_s": round(s["latency_s"], 3),
            "gpt3_175b_tpot_ms": round(s["time_per_output_token_s"] * 1e3, 3),
            "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}  # fmt: skip


def _contention() -> dict:
    system = load_system("dgx-a100-8")

    def span(pairs: list[tuple[str, str]]) -> float:
        g = OpGraph("x")
        for i, (a, b) in enumerate(pairs):
            g.add(Transfer(f"t{i}", nbytes=1e9, src=a, dst=b), (), (a,))
        eng = Engine(system)
        return eng.run(Program.from_graph(g))

    alone, both = span([("cpu0", "gpu0")]), span([("cpu0", "gpu0"), ("cpu0", "gpu1")])
    return {"pcie_shared_uplink_two_transfers_slowdown": round(both / alone, 4)}


def run() -> dict:
    return {**_gemm(), **_decode(), **_gpt3(), **_contention()}
