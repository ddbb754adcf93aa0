"""The expert-offload case studies of docs/moe.md: HOBBIT's decode speed-up over plain on-demand expert
offloading as the GPU expert cache shrinks (Mixtral-8x7B on an RTX 4090 workstation), and HybriMoE's
balanced CPU/GPU execution of missed experts against a kTransformers-like static split.

    python scripts/moe_case_studies.py            # both tables (markdown), a minute or so
    python scripts/moe_case_studies.py hobbit     # one of them: hobbit | hybrimoe
    python scripts/moe_case_studies.py --steps 8  # fewer decode steps (faster, noisier hit rates)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]  # this checkout's simcore, not an installed one

from simcore.errors import ConfigError, OutOfMemory  # noqa: E402
from simcore.experiment import run  # noqa: E402

HOBBIT = ROOT / "configs" / "experiments" / "moe-offload-mixtral-rtx4090.yaml"

#: plain on-demand offloading: an LRU cache of bf16 experts, every miss copied in when the router asks
ON_DEMAND = ["scenario.moe.policy=lru", "scenario.moe.prefetch=none", "scenario.moe.low_precision=null",
             "scenario.moe.misses=gpu"]  # fmt: skip
#: HOBBIT's three mechanisms as this scenario models them
LOW_PRECISION = ["scenario.moe.low_precision=int4", "scenario.moe.low_score=0.25"]
PREFETCH = ["scenario.moe.prefetch=next-layer", "scenario.moe.prefetch_accuracy=1.0"]  # an oracle
GUESS = ["scenario.moe.prefetch_accuracy=0.85"]  # the next layer's gate guessed from this layer's input
CACHE = ["scenario.moe.policy=lfu"]


def tokens_per_s(path: Path, overrides: list[str]) -> float | None:
    """Decode throughput; None when the expert cache does not fit the GPU."""
    try:
        return float(run(path, overrides, keep_records=False).summary["tokens_per_s"])
    except (OutOfMemory, ConfigError) as e:
        if "out of memory" in str(e):
            return None
        raise


def _cell(x: float | None) -> str:
    return "OOM" if x is None else f"{x:.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None else f"{a / b:.2f}x"


def hobbit(steps: int) -> list[str]:
    """Decode tokens/s of Mixtral-8x7B (bf16 experts, 0.35 GB each) on an RTX 4090 over PCIe 4.0 x16; cache ratios above 1/8
    do not fit 24 GB and run as a what-if with the GPU's memory grown (same bandwidth and compute)."""
    rows = ["| cache (experts/layer) | GPU memory | on-demand | + int4 low-score | + prefetch (oracle) | "
            "+ prefetch (85 %) | all three, oracle | speed-up | speed-up, 85 % |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for ratio, mem in ((0.0, None), (0.125, None), (0.25, "48GiB"), (0.5, "80GiB")):
        base = [f"scenario.steps={steps}", f"scenario.moe.cache_ratio={ratio}"]
        if mem:
            base.append(f"hardware.devices.gpu.memory.capacity={mem}")
        plain = tokens_per_s(HOBBIT, base + ON_DEMAND)
        low = tokens_per_s(HOBBIT, base + ON_DEMAND + LOW_PRECISION)
        pre = tokens_per_s(HOBBIT, base + ON_DEMAND + LOW_PRECISION + PREFETCH)
        guess = tokens_per_s(HOBBIT, base + ON_DEMAND + LOW_PRECISION + PREFETCH + GUESS)
        full = tokens_per_s(HOBBIT, base + ON_DEMAND + LOW_PRECISION + PREFETCH + CACHE)
        full_guess = tokens_per_s(HOBBIT, base + ON_DEMAND + LOW_PRECISION + PREFETCH + GUESS + CACHE)
        rows.append(f"| {ratio:g} ({round(ratio * 8)}) | {mem or '24 GB'} | {_cell(plain)} | {_cell(low)} | "
                    f"{_cell(pre)} | {_cell(guess)} | {_cell(full)} | {_ratio(full, plain)} | "
                    f"{_ratio(full_guess, plain)} |")  # fmt: skip
    return rows


def hybrimoe(steps: int) -> list[str]:
    """DeepSeek-V2-Lite (64 experts of 17 MB, top 6) on the RTX 4090 workstation (EPYC host, 8 DDR4
    channels) at 25/50/75 % of each layer's experts cached: misses on the CPU (kTransformers-like static
    split, LRU) against HybriMoE's per-layer balance of the CPU and copy-then-GPU queues with its MRS cache
    and next-layer prefetch."""
    rows = ["| host | batch | cache ratio | kTransformers-like tok/s | HybriMoE-like tok/s | speed-up | misses on "
            "the CPU |", "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    #: the workstation's EPYC 7742 (64 cores, 8 x DDR4-3200), and a what-if desktop-class host: 16 of its
    #: cores on dual-channel DDR5-5600 (89.6 GB/s)
    desktop = ["hardware.devices.cpu.memory.bandwidth=89.6GB/s", "hardware.devices.cpu.cores=16"]
    cases = [("EPYC 7742", [], b, r) for b in (1, 16) for r in (0.25, 0.5, 0.75)]
    cases += [("16 cores, 2 x DDR5", desktop, b, 0.5) for b in (1, 16)]
    for host, extra, batch, ratio in cases:
        base = [f"scenario.steps={steps}", f"scenario.moe.cache_ratio={ratio}", "model=deepseek-v2-lite",
                "scenario.moe.trace=null", f"scenario.batch={batch}", "scenario.moe.low_precision=null",
                "hardware.devices.gpu.memory.capacity=48GiB", *extra]  # fmt: skip
        static = base + ["scenario.moe.misses=cpu", "scenario.moe.policy=lru", "scenario.moe.prefetch=none"]
        hybrid = base + [
            "scenario.moe.misses=balance",
            "scenario.moe.policy=mrs",
            "scenario.moe.prefetch=none",
        ]
        a = run(HOBBIT, static, keep_records=False).summary
        b = run(HOBBIT, hybrid, keep_records=False).summary
        share = b["experts_on_cpu"] / max(1, b["experts_on_cpu"] + b["experts_fetched"])
        rows.append(f"| {host} | {batch} | {ratio:.0%} | {a['tokens_per_s']:.1f} | {b['tokens_per_s']:.1f} | "
                    f"{b['tokens_per_s'] / a['tokens_per_s']:.2f}x | {share:.0%} |")  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", nargs="?", choices=("hobbit", "hybrimoe"))
    ap.add_argument("--steps", type=int, default=32)
    a = ap.parse_args()
    for name, fn in (("hobbit", hobbit), ("hybrimoe", hybrimoe)):
        if a.which in (None, name):
            print("\n".join(fn(a.steps)) + "\n")


if __name__ == "__main__":
    main()
