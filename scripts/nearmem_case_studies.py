"""The near-data case studies of docs/memory-storage.md: decode throughput with attention offloaded to PIM
(AttAcc) or to computational storage (InstInfer), against the GPU-only and FlexGen-style baselines.

    python scripts/nearmem_case_studies.py            # both tables (markdown), a few seconds
    python scripts/nearmem_case_studies.py attacc     # one of them: attacc | instinfer
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


STUDIES = {"attacc": attacc, "instinfer": instinfer}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="*", choices=[*STUDIES, []], help="default: all")
    args = p.parse_args(argv)
    for name in args.studies or STUDIES:
        print(f"\n{name}: decode throughput, tokens/s\n")
        print("\n".join(STUDIES[name]()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
