"""The near-data case studies of docs/memory-storage.md: decode throughput with attention offloaded to PIM
(AttAcc) or to computational storage (InstInfer), against the GPU-only and FlexGen-style baselines, and
PIM-GPT's whole-model generation on GDDR6-PIM against an NVIDIA T4.

    python scripts/nearmem_case_studies.py            # all tables (markdown), about a minute
    python scripts/nearmem_case_studies.py attacc     # one of them: attacc | instinfer | pimgpt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]  # this checkout's simcore, not an installed one

from simcore.errors import ConfigError, OutOfMemory  # noqa: E402
from simcore.experiment import run  # noqa: E402

ATTACC = ROOT / "configs" / "experiments" / "attacc-gpt3-dgx-h100.yaml"
INSTINFER = ROOT / "configs" / "experiments" / "instinfer-opt13b-a6000.yaml"
PIM_GPT = ROOT / "configs" / "experiments" / "pim-gpt-gpt2-xl.yaml"
#: the models of the PIM-GPT comparison (the paper's GPT-2 family and GPT-3 XL)
PIM_GPT_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt3-xl")
#: the same generation on the T4: the GPU runs fp16 (no bf16 on Turing), a 1-token prompt as its prefill
T4 = ["hardware=t4", "scenario.kind=generate", "dtype=fp16", "parallelism.devices=null"]


def tokens_per_s(path: Path, overrides: list[str]) -> float | None:
    """Decode throughput of the experiment with `overrides`; None when the KV cache does not fit."""
    try:
        return float(run(path, overrides, keep_records=False).summary["tokens_per_s"])
    except (OutOfMemory, ConfigError) as e:
        if "out of memory" in str(e):
            return None
        raise


def _cell(x: float | None) -> str:
    return "OOM" if x is None else f"{x:,.1f}"


def attacc() -> list[str]:
    """GPT-3 175B on a DGX H100: everything on the GPUs (80 GB, or 160 GB: the memory of GPUs and AttAcc
    together), or decode attention on PIM units -- in the GPUs' own HBM, or on AttAcc devices beside them."""
    rows = ["| batch | context | GPU only, 80 GB | GPU only, 160 GB | PIM in GPU HBM | GPU + AttAcc devices "
            "| AttAcc / 160 GB |", "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    big = ["offload.kv=null", "hardware.devices.gpu.memory.capacity=160GiB"]
    for batch, ctx in ((16, 2047), (32, 2047), (64, 2047), (128, 1024), (256, 512)):
        sc = [f"scenario.batch={batch}", f"scenario.context_len={ctx}"]
        cols = [
            tokens_per_s(ATTACC, sc + ["offload.kv=null"]),
            tokens_per_s(ATTACC, sc + big),
            tokens_per_s(ATTACC, sc + ["hardware=dgx-h100-hbm-pim"]),
            tokens_per_s(ATTACC, sc),
        ]
        ratio = f"{cols[3] / cols[1]:.2f}x" if cols[1] and cols[3] else "-"
        rows.append(f"| {batch} | {ctx} | " + " | ".join(_cell(v) for v in cols) + f" | {ratio} |")
    return rows


def instinfer() -> list[str]:
    """OPT-13B on one RTX A6000 at batch 64: the KV cache on the SSD or in host memory, streamed to the
    GPU every step (FlexGen), or on one or four CSDs running the attention (InstInfer)."""
    rows = ["| context | GPU only | FlexGen, KV on SSD | FlexGen, KV in host DRAM | 1 CSD | 4 CSDs "
            "| 4 CSDs / FlexGen-SSD |", "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for ctx in (256, 512, 1024, 2047):
        sc = [f"scenario.context_len={ctx}"]
        cols: dict[str, Any] = {
            "gpu": tokens_per_s(INSTINFER, sc + ["offload.kv=null"]),
            "ssd": tokens_per_s(INSTINFER, sc + ["offload.kv=[nvme]", "offload.attention=stream"]),
            "host": tokens_per_s(INSTINFER, sc + ["offload.kv=[cpu]", "offload.attention=stream"]),
            "csd1": tokens_per_s(INSTINFER, sc + ["offload.kv=[csd0]"]),
            "csd4": tokens_per_s(INSTINFER, sc),
        }
        ratio = f"{cols['csd4'] / cols['ssd']:.2f}x" if cols["csd4"] and cols["ssd"] else "-"
        rows.append(f"| {ctx} | " + " | ".join(_cell(v) for v in cols.values()) + f" | {ratio} |")
    return rows


def pimgpt() -> list[str]:
    """GPT-2 small ... GPT-3 XL, a 1-token prompt and 1023 new tokens at batch 1: PIM-GPT (every GEMV in
    8 GDDR6-AiM channels, the rest on its ASIC) against the same generation on a T4."""
    rows = ["| model | T4 ms/token | PIM-GPT ms/token | speed-up | T4 mJ/token | PIM-GPT mJ/token | energy "
            "efficiency | ASIC share |", "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for model in PIM_GPT_MODELS:
        pim = run(PIM_GPT, [f"model={model}"], keep_records=False).summary
        gpu = run(PIM_GPT, [f"model={model}", *T4], keep_records=False).summary
        n = pim["output_tokens"]
        t_pim, t_gpu = pim["latency_s"] / n, gpu["latency_s"] / n
        e_pim, e_gpu = pim["energy_per_token_j"], gpu["energy_per_token_j"]
        asic = pim["utilization"]["asic.busy"]
        rows.append(f"| {model} | {t_gpu * 1e3:.2f} | {t_pim * 1e3:.3f} | {t_gpu / t_pim:.1f}x | {e_gpu * 1e3:.1f} "
                    f"| {e_pim * 1e3:.1f} | {e_gpu / e_pim:.1f}x | {asic:.1%} |")  # fmt: skip
    return rows


STUDIES = {"attacc": attacc, "instinfer": instinfer, "pimgpt": pimgpt}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="*", choices=[*STUDIES, []], help="default: all")
    args = p.parse_args(argv)
    for name in args.studies or STUDIES:
        print(f"\n{name}\n")
        print("\n".join(STUDIES[name]()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
