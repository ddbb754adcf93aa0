"""Inference frameworks: what a named framework does differently from plain PyTorch + NCCL when it runs
the same pass. A framework is a record in a registry; the mapping stage applies it to the program: the
library its all-reduces call and the attention kernel its prefill runs, which depends on the GPU's
architecture (`architecture:` of the configs/hardware/arch/ presets)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hardware.gpu import ATTENTION_KERNELS
from simcore.errors import ConfigError

#: the attention kernel every GPU runs: a framework default a part cannot run falls back to it
FALLBACK_ATTENTION = "fa2"


@dataclass(frozen=True)
class Framework:
    """How a framework runs a pass. `allreduce`: the library its tensor-parallel all-reduces call ("nccl",
    or "custom": a one-shot peer-to-peer kernel for small messages on NVLink, NCCL above its size limit).
    `attention`: (architecture, kernel) pairs naming the prefill attention kernel it launches on that GPU
    architecture (hardware.gpu.ATTENTION_KERNELS), `attention_default` on every other one."""

    name: str
    allreduce: str = "nccl"
    source: str = ""
    attention: tuple[tuple[str, str], ...] = ()
    attention_default: str = FALLBACK_ATTENTION
    attention_source: str = ""

    def attention_for(self, architecture: str) -> str:
        """The kernel this framework launches on `architecture`, or fa2 where the part cannot run it."""
        kernel = dict(self.attention).get(architecture, self.attention_default)
        return kernel if runs_on(kernel, architecture) else FALLBACK_ATTENTION


FRAMEWORKS: dict[str, Framework] = {
    f.name: f
    for f in (
        Framework(
            "pytorch",
            "nccl",
            "torch.distributed all_reduce on the NCCL backend",
            attention_source="torch.nn.functional.scaled_dot_product_attention's flash backend, FlashAttention-2 "
            "since PyTorch 2.2 (release notes), on every architecture: the cuDNN backend (Hopper) and the "
            "memory-efficient backend SDPA dispatches on Volta/Turing are not modelled, so a run that names no "
            "framework keeps fa2",
        ),
        Framework(
            "vllm",
            "custom",
            "vLLM custom all-reduce (vllm-project/vllm PR #2192), NCCL above 8 MiB",
            attention=(("hopper", "fa3"), ("volta", "xformers"), ("turing", "xformers")),
            attention_source="vLLM's FlashAttention backend (vllm/attention/utils/fa_utils.py, "
            "get_flash_attn_version: FlashAttention-3 on compute capability 9.x, FlashAttention-2 otherwise); "
            "below compute capability 8.0 the backend selector (vllm/attention/selector.py) picks xFormers",
        ),
        Framework(
            "sglang",
            "custom",
            "SGLang custom all-reduce (sgl-project/sglang PR #2904)",
            attention=(("hopper", "fa3"),),
            attention_source="SGLang's attention backends (sglang/srt/model_executor/model_runner.py, v0.4.6 on: "
            "fa3 is the default on Hopper for the common decoder architectures); elsewhere FlashInfer, whose prefill kernel is a "
            "FlashAttention-2-style schedule, priced as fa2",
        ),
        Framework(
            "tensorrt-llm",
            "custom",
            "TensorRT-LLM's one-shot / two-shot all-reduce plugin",
            attention=(("hopper", "fa3"),),
            attention_source="TensorRT-LLM's own fused multi-head attention kernels (cpp/kernels/fmha_v2), not "
            "FlashAttention: priced as fa3 on Hopper (warp-specialized, softmax overlapped with the WGMMAs) "
            "and fa2 elsewhere, an assumption with no measured row behind it",
        ),
    )
}


def runs_on(kernel: str, architecture: str | None) -> bool:
    """Whether a GPU of `architecture` can launch `kernel` (None: a device that prices attention its own
    way, whatever the kernel)."""
    needs = ATTENTION_KERNELS[kernel].architectures
    return architecture is None or not needs or architecture in needs


def choose_attention(framework: str, kernel: str | None, architectures: Iterable[str | None]) -> str:
    """The prefill attention kernel of a plan on GPUs of `architectures`: `kernel` when the experiment
    names one (refused in one line if unknown or if a placed GPU cannot run it), else the framework's for
    the architecture; one kernel per plan, so GPUs whose defaults differ all run fa2."""
    archs = set(architectures)
    if kernel is None:
        chosen = {FRAMEWORKS[framework].attention_for(a) for a in archs if a is not None}
        return chosen.pop() if len(chosen) == 1 else FALLBACK_ATTENTION
    if kernel not in ATTENTION_KERNELS:
        raise ConfigError(f"unknown attention kernel {kernel!r} (known: {', '.join(ATTENTION_KERNELS)})",
                          key="kernels.attention")  # fmt: skip
    cannot = sorted(a for a in archs if not runs_on(kernel, a))
    if cannot:
        raise ConfigError(f"attention kernel {kernel!r} needs a "
                          f"{' or '.join(ATTENTION_KERNELS[kernel].architectures)} GPU; the plan places it on "
                          f"{', '.join(cannot)}", key="kernels.attention")  # fmt: skip
    return kernel
