"""Choosing the attention kernel: each framework's default by GPU architecture (simcore.mapping.frameworks),
the experiment's `kernels.attention` override, `simcore op attention --kernel`, and what does not change
(decode steps, runs that name no framework)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from simcore.errors import ConfigError
from simcore.experiment import Decode, Prefill, load_experiment, run, simulate
from simcore.mapping import FRAMEWORKS
from simcore.mapping.frameworks import choose_attention
from simcore.ops import Attention
from simcore.system import load_system

PREFILL = {"hardware": "h100-sxm5-80gb", "model": "llama-3-8b",
           "scenario": {"kind": "prefill", "batch": 1, "prompt_len": 4096}}  # fmt: skip
#: llama-3-8b's attention on one GPU at 4096 tokens: 32 query heads, 8 KV heads, head_dim 128, causal
SHAPE = {
    "batch": 1,
    "heads": 32,
    "kv_heads": 8,
    "q_len": 4096,
    "kv_len": 4096,
    "head_dim": 128,
    "causal": True,
}


def _attention_s(result: Any) -> list[float]:
    return [r["duration_s"] for r in result.records() if r["kind"] == "attention"]


# ---------------------------------------------------------------------------------- framework defaults
@pytest.mark.parametrize(
    ("framework", "arch", "kernel"),
    [
        # vLLM: get_flash_attn_version picks FA3 on compute capability 9.x, FA2 from 8.0, xFormers below
        ("vllm", "hopper", "fa3"),
        ("vllm", "ampere", "fa2"),
        ("vllm", "ada", "fa2"),
        ("vllm", "blackwell", "fa2"),
        ("vllm", "turing", "xformers"),
        ("vllm", "volta", "xformers"),
        ("sglang", "hopper", "fa3"),
        ("sglang", "ampere", "fa2"),
        ("tensorrt-llm", "hopper", "fa3"),
        ("tensorrt-llm", "ada", "fa2"),
        ("pytorch", "hopper", "fa2"),
        ("pytorch", "turing", "fa2"),
    ],
)
def test_framework_kernel_by_architecture(framework: str, arch: str, kernel: str) -> None:
    assert FRAMEWORKS[framework].attention_for(arch) == kernel


def test_every_framework_states_its_attention_source() -> None:
    assert all(f.attention_source for f in FRAMEWORKS.values())


def test_defaults_fall_back_to_the_kernel_every_gpu_runs() -> None:
    # one kernel per plan: GPUs whose framework defaults differ (fa3 on Hopper, fa2 on Ampere) all run fa2
    assert choose_attention("vllm", None, ["hopper", "ampere"]) == "fa2"
    assert choose_attention("vllm", None, ["hopper", "hopper", None]) == "fa3"
    assert choose_attention("vllm", None, [None]) == "fa2"  # no GPU: attention priced its own way


def test_an_explicit_kernel_is_checked_against_every_placed_gpu() -> None:
    assert choose_attention("vllm", "triton", ["hopper"]) == "triton"
    with pytest.raises(ConfigError, match="needs a hopper GPU; the plan places it on ampere") as e:
        choose_attention("pytorch", "fa3", ["hopper", "ampere"])
    assert e.value.key == "kernels.attention"
    with pytest.raises(ConfigError, match="unknown attention kernel 'fa4'") as e:
        choose_attention("pytorch", "fa4", ["hopper"])
    assert e.value.key == "kernels.attention"


# ---------------------------------------------------------------------------------------- experiments
def test_vllm_on_h100_prefills_with_fa3_at_the_gpus_own_price() -> None:
    gpu = load_system("h100-sxm5-80gb").devices["gpu"]
    fa2_s = gpu.op_cost(Attention("a", "bf16", kernel="fa2", **SHAPE)).duration_s
    fa3_s = gpu.op_cost(Attention("a", "bf16", kernel="fa3", **SHAPE)).duration_s
    plain, vllm = run(PREFILL), run({**PREFILL, "framework": "vllm"})
    # every layer's attention is the component's price of the kernel (an identity: rel 1e-12)
    assert _attention_s(plain) == pytest.approx([fa2_s] * 32, rel=1e-12)
    assert _attention_s(vllm) == pytest.approx([fa3_s] * 32, rel=1e-12)
    # one GPU runs its ops one after another: the latency moves by exactly the 32 layers' difference (the
    # all-reduce library vLLM also changes is not called at tp=1)
    delta_s = plain.summary["latency_s"] - vllm.summary["latency_s"]
    assert delta_s == pytest.approx(32 * (fa2_s - fa3_s), rel=1e-9)


def test_kernels_attention_overrides_the_framework() -> None:
    exp = load_experiment({**PREFILL, "framework": "vllm", "kernels": {"attention": "fa2"}})
    assert exp.plan.attention == "fa2"
    assert exp.run().summary["latency_s"] == run(PREFILL).summary["latency_s"]
    triton = load_experiment({**PREFILL, "kernels": {"attention": "triton"}})
    gpu = triton.system.devices["gpu"]
    assert _attention_s(triton.run()) == pytest.approx(
        [gpu.op_cost(Attention("a", "bf16", kernel="triton", **SHAPE)).duration_s] * 32, rel=1e-12
    )


def test_framework_default_off_hopper_is_fa2() -> None:
    a100 = {**PREFILL, "hardware": "a100-sxm4-80gb"}
    assert load_experiment({**a100, "framework": "sglang"}).plan.attention == "fa2"
    assert run({**a100, "framework": "sglang"}).summary["latency_s"] == run(a100).summary["latency_s"]


@pytest.mark.parametrize(
    ("kernels", "message"),
    [
        ({"attention": "fa3"}, "kernels.attention: attention kernel 'fa3' needs a hopper GPU; the plan places "
                               "it on ampere"),
        ({"attention": "flash"}, "kernels.attention: expected one of fa2, fa1"),
        ({"attn": "fa2"}, "kernels.attn"),
    ],
)  # fmt: skip
def test_bad_kernel_keys_are_one_line(kernels: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_experiment({**PREFILL, "hardware": "a100-sxm4-80gb", "kernels": kernels})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_decode_steps_do_not_change() -> None:
    # q_len <= 16 is flash-decoding whatever the kernel: the same step times, bit for bit
    decode = {**PREFILL, "scenario": {"kind": "decode", "batch": 8, "context_len": 4096}}
    base = run(decode).summary["latency_s"]
    for extra in (
        {"framework": "vllm"},
        {"kernels": {"attention": "standard"}},
        {"kernels": {"attention": "fa3"}},
    ):
        assert run({**decode, **extra}).summary["latency_s"] == base


def test_simulate_takes_the_framework_and_an_override() -> None:
    fw = simulate("h100-sxm5-80gb", "llama-3-8b", Prefill(1, 4096), framework="sglang")
    fa3 = simulate("h100-sxm5-80gb", "llama-3-8b", Prefill(1, 4096), attention="fa3")
    assert fw.summary["latency_s"] == fa3.summary["latency_s"]
    with pytest.raises(ConfigError, match="needs a hopper GPU"):
        simulate("a100-sxm4-80gb", "llama-3-8b", Decode(1, 512), attention="fa3")


# ------------------------------------------------------------------------------------------------ CLI
def _op(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "simcore", "op", "attention", "--heads", "32", "--kv-heads", "8", "--q-len",
           "4096", "--causal", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_op_attention_kernel_reports_that_kernels_time() -> None:
    p = _op("--hw", "h100-sxm5-80gb", "--kernel", "fa3", "--json")
    assert p.returncode == 0, p.stderr
    gpu = load_system("h100-sxm5-80gb").devices["gpu"]
    out = json.loads(p.stdout)
    assert out["kernel"] == "fa3"
    assert out["time_s"] == pytest.approx(gpu.op_cost(Attention("a", "bf16", kernel="fa3", **SHAPE)).duration_s,
                                          rel=1e-12)  # fmt: skip


@pytest.mark.parametrize(
    ("hw", "kernel", "message"),
    [
        ("h100-sxm5-80gb", "fa9", "--kernel: unknown attention kernel 'fa9'"),
        ("a100-sxm4-80gb", "fa3", "--kernel: attention kernel 'fa3' needs a hopper GPU"),
    ],
)
def test_op_attention_bad_kernel_is_one_line(hw: str, kernel: str, message: str) -> None:
    p = _op("--hw", hw, "--kernel", kernel)
    assert p.returncode == 2 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1
