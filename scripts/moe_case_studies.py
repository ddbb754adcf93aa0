"""The expert-offload case studies of docs/moe.md: HOBBIT's decode speed-up over plain on-demand expert
offloading as the GPU expert cache shrinks (Mixtral-8x7B on an RTX 4090 workstation), HybriMoE's balanced
CPU/GPU execution of missed experts against a kTransformers-like static split (DeepSeek-V2-Lite on an RTX
A6000 workstation and other hosts), and the expert hit rate of LRU, LFU and MRS caches against cache size on
the shipped Mixtral trace and on synthetic ones. notebooks/moe_offload_case_studies.ipynb plots the same.

    python scripts/moe_case_studies.py            # all three tables (markdown), a minute or so
    python scripts/moe_case_studies.py hobbit     # one of them: hobbit | hybrimoe | hitrate
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
from simcore.moe import POLICIES  # noqa: E402
from simcore.moe import replay as replay_cache  # noqa: E402
from traces.routing import RoutingTrace, load_routing, synthetic  # noqa: E402

EXPERIMENTS = ROOT / "configs" / "experiments"
HOBBIT = EXPERIMENTS / "moe-offload-mixtral-rtx4090.yaml"
HYBRIMOE = EXPERIMENTS / "moe-offload-hybrimoe-deepseek-v2-lite-a6000.yaml"
HITRATE = EXPERIMENTS / "moe-offload-hitrate-mixtral-jetson-orin.yaml"

#: plain on-demand offloading: an LRU cache of bf16 experts, every miss copied in when the router asks
ON_DEMAND = ["scenario.moe.policy=lru", "scenario.moe.prefetch=none", "scenario.moe.low_precision=null",
             "scenario.moe.misses=gpu"]  # fmt: skip
#: HOBBIT's three mechanisms as this scenario models them
LOW_PRECISION = ["scenario.moe.low_precision=int4", "scenario.moe.low_score=0.25"]
PREFETCH = ["scenario.moe.prefetch=next-layer", "scenario.moe.prefetch_accuracy=1.0"]  # an oracle
GUESS = ["scenario.moe.prefetch_accuracy=0.85"]  # the next layer's gate guessed from this layer's input
CACHE = ["scenario.moe.policy=hobbit"]  # its multidimensional score (recency, frequency, full-precision hits)

#: kTransformers-like: every miss runs on the host CPU, the cache is static (nothing is admitted)
STATIC_SPLIT = ["scenario.moe.misses=cpu", "scenario.moe.policy=lru"]
#: HybriMoE-like (the experiment as shipped): per-layer balance of the CPU and copy-then-GPU queues, MRS
BALANCE = ["scenario.moe.misses=balance", "scenario.moe.policy=mrs"]
#: the hosts of the HybriMoE study: (label, overrides, cache ratio). The what-if desktop host is 16 of the
#: Threadripper's cores on dual-channel DDR5-5600 (2 x 5600 MT/s x 8 B = 89.6 GB/s).
HOSTS = [
    ("Xeon 8480+ (AMX), A100 PCIe", ["hardware=xeon-amx-a100-pcie"], 0.5),
    ("Threadripper PRO 5975WX, RTX A6000", [], 0.5),
    ("Xeon Gold 6248, T4 (fp16)", ["hardware=t4-server", "dtype=fp16"], 0.25),
    ("what-if: 16 cores, 2 x DDR5-5600, RTX A6000",
     ["hardware.devices.cpu.cores=16", "hardware.devices.cpu.memory.bandwidth=89.6GB/s"], 0.5),
]  # fmt: skip

#: the traces of the hit-rate study: the shipped Mixtral trace and Mixtral-shaped synthetic ones (32 MoE
#: layers, 8 experts, top-2, one token per step)
SYNTHETIC = {"uniform": {}, "Zipf s = 1.2": {"zipf_s": 1.2}, "locality 0.5": {"locality": 0.5}}


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


def hybrimoe_pair(overrides: list[str]) -> tuple[dict, dict]:
    """Summaries of the kTransformers-like static split and of the HybriMoE-like balance."""
    return (run(HYBRIMOE, overrides + STATIC_SPLIT, keep_records=False).summary,
            run(HYBRIMOE, overrides + BALANCE, keep_records=False).summary)  # fmt: skip


def cpu_share(summary: dict) -> float:
    """Share of the missed experts the run executed on the host CPU."""
    return summary["experts_on_cpu"] / max(1, summary["experts_on_cpu"] + summary["experts_fetched"])


def hybrimoe(steps: int) -> list[str]:
    """DeepSeek-V2-Lite (64 experts of 17 MB, top 6) at 25/50/75 % of each layer's experts cached on the RTX
    A6000 workstation, then at one ratio on the other hosts: misses on the CPU (kTransformers-like static
    split) against HybriMoE's per-layer balance of the CPU and copy-then-GPU queues with its MRS cache."""
    rows = ["| host | batch | cache ratio | kTransformers-like tok/s | HybriMoE-like tok/s | speed-up | misses on "
            "the CPU |", "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    a6000 = HOSTS[1]
    cases = [(a6000[0], a6000[1], b, r) for b in (1, 16) for r in (0.25, 0.5, 0.75)]
    cases += [(label, extra, b, r) for label, extra, r in HOSTS if label != a6000[0] for b in (1, 16)]
    for host, extra, batch, ratio in cases:
        a, b = hybrimoe_pair([f"scenario.steps={steps}", f"scenario.moe.cache_ratio={ratio}",
                              f"scenario.batch={batch}", *extra])  # fmt: skip
        rows.append(f"| {host} | {batch} | {ratio:.0%} | {a['tokens_per_s']:.1f} | {b['tokens_per_s']:.1f} | "
                    f"{b['tokens_per_s'] / a['tokens_per_s']:.2f}x | {cpu_share(b):.0%} |")  # fmt: skip
    return rows


def replay(trace: RoutingTrace, policy: str, capacity: int) -> float:
    """Hit rate of `policy` with `capacity` experts per layer replayed on `trace` (simcore.moe.replay)."""
    hits, accesses = replay_cache(trace, policy, capacity)
    return hits / accesses


def hit_traces(steps: int) -> dict[str, RoutingTrace]:
    """The shipped Mixtral trace and the synthetic ones, `steps` steps each (the shipped one has 64)."""
    out = {"mixtral-8x7b-correlated": load_routing("mixtral-8x7b-correlated")}
    for name, kw in SYNTHETIC.items():
        out[name] = synthetic(32, 8, 2, steps, seed=1, name=name, **kw)
    return out


def hitrate(steps: int) -> list[str]:
    """Expert hit rate of each policy against cache size (experts per layer, of 8) on each trace (the
    synthetic ones `4 x steps` steps long)."""
    caps = range(1, 8)
    rows = ["| trace | policy | " + " | ".join(f"c = {c}" for c in caps) + " |",
            "|---|---|" + "---:|" * len(caps)]  # fmt: skip
    for name, tr in hit_traces(4 * steps).items():  # 128 synthetic steps at the default 32
        for policy in POLICIES:
            cells = " | ".join(f"{replay(tr, policy, c):.3f}" for c in caps)
            rows.append(f"| {name} | {policy} | {cells} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", nargs="?", choices=("hobbit", "hybrimoe", "hitrate"))
    ap.add_argument("--steps", type=int, default=32)
    a = ap.parse_args()
    for name, fn in (("hobbit", hobbit), ("hybrimoe", hybrimoe), ("hitrate", hitrate)):
        if a.which in (None, name):
            print("\n".join(fn(a.steps)) + "\n")


if __name__ == "__main__":
    main()
