"""Inference frameworks: what a named framework does differently from plain PyTorch + NCCL when it runs
the same pass. A framework is a record in a registry; the mapping stage applies it to the program."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Framework:
    """How a framework runs a pass. `allreduce`: the library its tensor-parallel all-reduces call ("nccl",
    or "custom": a one-shot peer-to-peer kernel for small messages on NVLink, NCCL above its size limit)."""

    name: str
    allreduce: str = "nccl"
    source: str = ""


FRAMEWORKS: dict[str, Framework] = {
    f.name: f
    for f in (
        Framework("pytorch", "nccl", "torch.distributed all_reduce on the NCCL backend"),
        Framework("vllm", "custom", "vLLM custom all-reduce (vllm-project/vllm PR #2192), NCCL above 8 MiB"),
        Framework("sglang", "custom", "SGLang custom all-reduce (sgl-project/sglang PR #2904)"),
        Framework("tensorrt-llm", "custom", "TensorRT-LLM's one-shot / two-shot all-reduce plugin"),
    )
}
