"""Long-context analysis (issue: a 34B model with a 50K-token context on A100s): Yi-34B-200K on a DGX A100,
prefill, decode, users that fit, the KV cache in host memory or on NVMe, and KV swap times, each against its
closed form (docs/long-context-and-tiers.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hardware.links import pcie_raw_Bps
from models.llm import load_llm
from simcore.engine import Engine
from simcore.errors import OutOfMemory
from simcore.experiment import load_experiment
from simcore.mapping.plan import nearest_hosts
from simcore.ops import Transfer
from simcore.program import Program, Step
from simcore.system import System, load_system

ROOT = Path(__file__).resolve().parent.parent
EXP = ROOT / "configs" / "experiments"
CTX = 50_000
TP = 8


def run(name: str, *overrides: str) -> dict:
    return load_experiment(EXP / f"{name}.yaml", overrides).run(keep_records=False).summary


def kv_per_gpu_B(users: int = 1) -> float:
    """Closed form: 2 (K, V) x layers x KV heads x head_dim x 2 B per token, split over 8 KV heads / 8 GPUs."""
    return users * CTX * 2 * 60 * 8 * 128 * 2 / TP


def swap_s(system: System, moves: dict[str, list[str]], nbytes: float, out: bool) -> float:
    """Each GPU's `nbytes` of KV to (out) or from its devices in `moves`, striped over them, all at once."""
    steps = []
    for gpu, devs in moves.items():
        for dev in devs:
            src, dst = (gpu, dev) if out else (dev, gpu)
            steps.append(Step(Transfer(f"kv_{src}_{dst}", "bf16", nbytes=nbytes / len(devs), src=src, dst=dst),
                              (src,), (), "swap"))  # fmt: skip
    return Engine(system, keep_records=False).run(Program.compile("kv swap", steps))


def test_the_model_config_is_yi_34b_200k() -> None:
    # HF 01-ai/Yi-34B-200K config.json: hidden 7168, 60 layers, 56 heads, 8 KV heads, FFN 20480, vocab 64000,
    # 200K positions, rope_theta 5e6
    raw = json.loads((ROOT / "models" / "configs" / "yi-34b-200k.json").read_text())
    assert raw["max_position_embeddings"] == 200_000 and raw["rope_theta"] == 5e6
    m = load_llm("yi-34b-200k")
    assert (m.hidden, m.layers, m.heads, m.kv_heads, m.head_dim) == (7168, 60, 56, 8, 128)
    assert m.params == pytest.approx(34.39e9, rel=0.001)  # "34B": 34,388,917,248 from the shapes
    assert m.kv_bytes_per_token("bf16") == 2 * 60 * 8 * 128 * 2  # 240 KiB per token


def test_prefill_of_50k_tokens_is_compute_bound() -> None:
    s = run("long-context-yi34b-prefill")
    m = load_llm("yi-34b-200k")
    # GEMMs 2 x params x tokens, causal attention 2 x 2 x layers x hidden x L^2 / 2
    flops = 2 * m.params * CTX + 2 * 60 * 7168 * CTX**2
    peak = TP * 312e12  # A100 dense BF16
    assert s["prefill_time_s"] >= flops / peak
    assert s["prefill_time_s"] == pytest.approx(flops / (peak * 0.8), rel=0.5)  # efficiency.tensor 0.8


def test_decode_reads_weights_and_kv_at_hbm_speed() -> None:
    # the 50K-token step minus a 512-token step: the extra KV read over each GPU's achievable HBM bandwidth
    gpu = load_system("dgx-a100-8").devices["gpu0"]
    long = run("long-context-yi34b-decode")["time_per_output_token_s"]
    short = run("long-context-yi34b-decode", "scenario.context_len=512")["time_per_output_token_s"]
    extra_B = (CTX - 512) * 2 * 60 * 8 * 128 * 2 / TP
    assert long - short == pytest.approx(extra_B / gpu.memory_bandwidth_Bps, rel=0.1)


def test_fifty_users_fit_beside_the_weights_and_51_do_not() -> None:
    # closed form: floor((80 GiB - weights / 8) / KV per user per GPU) = floor(77.3 GB / 1.536 GB) = 50
    m = load_llm("yi-34b-200k")
    fit = int((80 * 2**30 - 2 * m.params / TP) // kv_per_gpu_B())
    assert fit == 50
    assert run("long-context-yi34b-decode", f"scenario.batch={fit}")["tokens_per_s"] > 0
    with pytest.raises(OutOfMemory):
        run("long-context-yi34b-decode", f"scenario.batch={fit + 1}")


def test_kv_streamed_from_host_or_nvme_is_its_link_closed_form() -> None:
    # host (cpu0): each PCIe switch's Gen4 x16 uplink carries two GPUs' KV every step
    host = run("long-context-yi34b-kv-host")["time_per_output_token_s"]
    assert host == pytest.approx(2 * kv_per_gpu_B() / (0.8 * pcie_raw_Bps(4, 16)), rel=0.1)
    # one NVMe drive: every GPU's KV through the drive's Gen4 x4 link (6.3 GB/s, under its 7 GB/s read)
    nvme = run("long-context-yi34b-kv-nvme")["time_per_output_token_s"]
    assert nvme == pytest.approx(TP * kv_per_gpu_B() / (0.8 * pcie_raw_Bps(4, 4)), rel=0.1)


def test_swap_times_to_host_memory_and_nvme() -> None:
    system = load_system("dgx-a100-8")
    gpus = [f"gpu{i}" for i in range(TP)]
    kv = kv_per_gpu_B()
    hosts = nearest_hosts(system, gpus)
    # to host: two GPUs per Gen4 x16 uplink
    out = swap_s(system, {g: [hosts[g]] for g in gpus}, kv, out=True)
    assert out == pytest.approx(2 * kv / (0.8 * pcie_raw_Bps(4, 16)), rel=0.05)
    # to the 4 NVMe drives, striped: their sequential write (PM1733 3.8 GB/s each) binds
    drives = [f"nvme{i}" for i in range(4)]
    nvme = system.devices["nvme0"]
    to_ssd = swap_s(system, {g: drives for g in gpus}, kv, out=True)
    assert to_ssd == pytest.approx(TP * kv / (4 * nvme.write_bandwidth_Bps), rel=0.05)
    back = swap_s(system, {g: drives for g in gpus}, kv, out=False)
    assert back < to_ssd  # reads (7 GB/s, capped by each drive's Gen4 x4 link) are faster than writes


def test_fewer_kv_devices_than_ranks_give_each_rank_its_nearest() -> None:
    # dgx-a100-8: GPUs 0-3 hang off cpu0's PCIe switches, 4-7 off cpu1's; two host CPUs for eight ranks
    # give each rank its own socket's memory, four ranks each; three devices divide eight ranks no way
    from models.llm import build_pass, load_llm
    from simcore.errors import ConfigError
    from simcore.mapping.plan import ExecutionPlan, kv_placement
    from simcore.system import load_system

    system = load_system("dgx-a100-8")
    ranks = tuple(f"gpu{i}" for i in range(8))
    probe = build_pass(load_llm("llama-2-13b"), 8, 1, 1, 16, "bf16", "decode")
    assert kv_placement(system, ExecutionPlan(tp=8, kv_devices=("cpu*",)), ranks, probe) == ("cpu0",) * 4 + (
        "cpu1",) * 4  # fmt: skip
    assert kv_placement(system, ExecutionPlan(tp=8, kv_devices=("cpu1",)), ranks, probe) == ("cpu1",) * 8
    with pytest.raises(ConfigError, match="divisor or a multiple"):
        kv_placement(system, ExecutionPlan(tp=8, kv_devices=("cpu0", "cpu1", "nvme0")), ranks, probe)
