"""Hardware presets from spec sheets: each new preset's key figures as the vendor publishes them, and a GEMM
and a decode step that run and respect the physical bounds (time >= FLOPs / peak, >= bytes / bandwidth)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from simcore.cli import main
from simcore.config import preset_names
from simcore.experiment import Decode, simulate
from simcore.system import load_system

T, G = 1e12, 1e9

# preset -> {parameter path: value in SI units}, each from the source named in the comment.
SPECS: dict[str, dict[str, float]] = {
    # NVIDIA HGX B200 / DGX B200 datasheets (8-GPU totals / 8, sparse / 2): bf16 2.25 PFLOP/s, 8 TB/s, 1000 W
    "b200-sxm-180gb": {
        "tensor_peak.bf16": 2250 * T,
        "tensor_peak.fp8": 4500 * T,
        "memory.bandwidth": 8000 * G,
        "memory.capacity": 179 * 2**30,  # "180 GB"; nvidia-smi 183,359 MiB
        "power.tdp": 1000.0,
        "nvlink.links": 18,
        "nvlink.generation": 5,
    },
    # NVIDIA GB200 NVL72 datasheet (72-GPU totals / 72, sparse / 2): bf16 2.5 PFLOP/s, fp64 45 TFLOP/s, 8 TB/s
    "gb200": {"tensor_peak.bf16": 2500 * T, "tensor_peak.fp64": 45 * T, "memory.bandwidth": 8000 * G},
    # NVIDIA RTX PRO 6000 Blackwell datasheet: 24,064 CUDA cores (188 SMs), FP32 125 TFLOP/s, 96 GB, 1792 GB/s, 600 W
    "rtx-pro-6000-blackwell": {
        "sms": 188,
        "vector_peak.fp32": 125 * T,
        "memory.bandwidth": 1792 * G,
        "memory.capacity": 96 * 2**30,
        "power.tdp": 600.0,
    },
    # NVIDIA RTX Blackwell whitepaper (RTX 5090): 170 SMs, FP32 104.8, FP16 (FP32 acc.) 209.5 TFLOP/s, 1792 GB/s
    "rtx-5090": {
        "sms": 170,
        "vector_peak.fp32": 104.8 * T,
        "tensor_peak.fp16": 209.5 * T,
        "memory.bandwidth": 1792 * G,
        "power.tdp": 575.0,
    },
    # NVIDIA H800 datasheet: FP64 1 TFLOP/s, NVLink 400 GB/s (8 links), bf16 as H100 SXM (1,979 sparse)
    "h800-sxm5-80gb": {
        "tensor_peak.fp64": 1 * T,
        "tensor_peak.bf16": 989.4 * T,
        "nvlink.links": 8,
        "memory.bandwidth": 3350 * G,
    },
    # NVIDIA H20 (partner product brief as reported): bf16 148 TFLOP/s, fp8 296, 96 GB, 4.0 TB/s, 400 W
    "h20": {
        "tensor_peak.bf16": 148 * T,
        "tensor_peak.fp8": 296 * T,
        "memory.capacity": 96 * 2**30,
        "memory.bandwidth": 4000 * G,
        "power.tdp": 400.0,
    },
    # NVIDIA L4 datasheet: FP16 242 TFLOP/s sparse (121 dense), 300 GB/s, 24 GB, 72 W
    "l4": {
        "tensor_peak.fp16": 121 * T,
        "memory.bandwidth": 300 * G,
        "memory.capacity": 24 * 2**30,
        "power.tdp": 72.0,
    },
    # NVIDIA L40 datasheet: FP16 362 TFLOP/s sparse (181 dense), FP32 90.5, 864 GB/s, 300 W
    "l40": {
        "tensor_peak.fp16": 181 * T,
        "vector_peak.fp32": 90.5 * T,
        "memory.bandwidth": 864 * G,
        "power.tdp": 300.0,
    },
    # NVIDIA RTX 6000 Ada datasheet: 1,457 TFLOPS FP8 sparse (728.5 dense), FP32 91.1, 960 GB/s, 300 W
    "rtx-6000-ada": {"tensor_peak.fp8": 728.5 * T, "vector_peak.fp32": 91.1 * T, "memory.bandwidth": 960 * G},
    # NVIDIA RTX 5000 Ada datasheet: 1,044.4 TFLOPS FP8 sparse (522.2 dense), FP32 65.3, 576 GB/s, 250 W
    "rtx-5000-ada": {"tensor_peak.fp8": 522.2 * T, "vector_peak.fp32": 65.3 * T, "memory.bandwidth": 576 * G},
    # NVIDIA RTX 4000 Ada datasheet: 327.6 TFLOPS FP8 sparse (163.8 dense), FP32 26.7, 360 GB/s, 130 W
    "rtx-4000-ada": {
        "tensor_peak.fp8": 163.8 * T,
        "vector_peak.fp32": 26.7 * T,
        "memory.bandwidth": 360 * G,
        "power.tdp": 130.0,
    },
    # AMD Instinct MI210 datasheet: 104 CUs, FP16 matrix 181 TFLOP/s, FP64 vector 22.6, 1.6384 TB/s, 300 W
    "mi210": {
        "sms": 104,
        "tensor_peak.fp16": 181 * T,
        "vector_peak.fp64": 22.6 * T,
        "memory.bandwidth": 1638.4 * G,
    },
    # AMD Instinct MI250X datasheet, halved per GCD: 110 CUs, FP16 191.5 TFLOP/s, 64 GB, 1.6384 TB/s
    "mi250x-gcd": {
        "sms": 110,
        "tensor_peak.fp16": 191.5 * T,
        "memory.capacity": 64 * 2**30,
        "memory.bandwidth": 1638.4 * G,
    },
    # AMD Instinct MI300X datasheet: 304 CUs, bf16 1307.4 TFLOP/s, fp8 2614.9, 192 GB, 5.3 TB/s, 750 W;
    # CDNA 3 whitepaper: 256 MB Infinity Cache
    "mi300x": {
        "sms": 304,
        "tensor_peak.bf16": 1307.4 * T,
        "tensor_peak.fp8": 2614.9 * T,
        "memory.capacity": 192 * 2**30,
        "memory.bandwidth": 5300 * G,
        "l2.size": 256 * 2**20,
        "power.tdp": 750.0,
    },
    # Intel Gaudi 3 white paper table (Gaudi 2 column): BF16 432 TFLOP/s, 96 GB, 2.46 TB/s, 600 W
    "gaudi2": {
        "tensor_peak.bf16": 432 * T,
        "memory.capacity": 96 * 2**30,
        "memory.bandwidth": 2460 * G,
        "power.tdp": 600.0,
    },
    # Intel Gaudi 3 white paper: BF16/FP8 1835 TFLOP/s, vector BF16 28.7, 64 TPCs, 128 GB, 3.67 TB/s, 96 MB SRAM
    "gaudi3": {
        "tensor_peak.bf16": 1835 * T,
        "tensor_peak.fp8": 1835 * T,
        "vector_peak.bf16": 28.7 * T,
        "sms": 64,
        "memory.bandwidth": 3670 * G,
        "l2.size": 96 * 2**20,
    },
    # Apple M2 Max press release: 38 GPU cores, 13.6 TFLOPS, 400 GB/s, up to 96 GB
    "apple-m2-max": {
        "sms": 38,
        "vector_peak.fp32": 13.6 * T,
        "memory.bandwidth": 400 * G,
        "memory.capacity": 96 * 2**30,
    },
    # Apple M3 family press release: 40 GPU cores, 400 GB/s (16-core CPU part), up to 128 GB
    "apple-m3-max": {"sms": 40, "memory.bandwidth": 400 * G, "memory.capacity": 128 * 2**30},
    # AMD EPYC 9654 product page: 96 cores, 384 MB L3, 460.8 GB/s (12 x DDR5-4800), 360 W
    "epyc-9654": {"cores": 96, "llc": 384 * 2**20, "memory.bandwidth": 460.8 * G, "power.tdp": 360.0},
    # Intel ARK Xeon 6980P: 128 cores, 504 MB L3, 12 x DDR5-6400, 500 W
    "xeon-6980p": {"cores": 128, "llc": 504 * 2**20, "memory.bandwidth": 614.4 * G, "power.tdp": 500.0},
    # Intel ARK Xeon Platinum 8570: 56 cores, 300 MB cache, 8 x DDR5-5600, 350 W
    "xeon-8570": {"cores": 56, "llc": 300 * 2**20, "memory.bandwidth": 358.4 * G, "power.tdp": 350.0},
    # Apple M2 Max press release: 8 performance cores, 400 GB/s unified memory
    "apple-m2-max-cpu": {"cores": 8, "memory.bandwidth": 400 * G},
}
GPUS = [n for n in SPECS if not n.startswith(("epyc", "xeon")) and not n.endswith("-cpu")]
# Apple GPUs have no bf16 matrix units; fp16 is what MLX/llama.cpp run there
DTYPE = {"apple-m2-max": "fp16", "apple-m3-max": "fp16"}


def device(name: str):
    return next(iter(load_system(name).devices.values()))


def param(params: dict, path: str) -> float:
    v = params
    for key in path.split("."):
        v = v[key]
    return v


@pytest.mark.parametrize("name", sorted(SPECS))
def test_preset_carries_its_spec_sheet_figures(name: str) -> None:
    p = device(name).params
    for path, want in SPECS[name].items():
        assert param(p, path) == pytest.approx(want, rel=1e-3), f"{name}: {path}"


def test_hw_list_names_every_new_preset(capsys: pytest.CaptureFixture) -> None:
    assert main(["hw", "list"]) == 0
    out = capsys.readouterr().out
    for name in [*SPECS, "dgx-b200-8", "mac-m2-max"]:
        assert name in out and name in preset_names("hardware")


def test_architecture_bases_are_abstract_and_say_their_constants_are_carried() -> None:
    from simcore.config import preset_path

    for arch in ("arch-blackwell", "arch-blackwell-rtx", "arch-cdna", "arch-gaudi", "arch-apple"):
        text = preset_path("hardware", arch).read_text()
        assert "abstract: true" in text and "carried from arch-hopper" in text and "uncertain" in text


@pytest.mark.parametrize("name", GPUS)
def test_a_gemm_runs_within_physical_bounds(name: str) -> None:
    dtype = DTYPE.get(name, "bf16")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(
            ["op", "gemm", "--hw", name, "-m", "4096", "-n", "4096", "-k", "4096", "--dtype", dtype, "--json"]
        )
    assert rc == 0
    g = json.loads(out.getvalue())
    gpu = device(name)
    assert g["flops"] == 2 * 4096**3
    assert g["time_s"] >= g["flops"] / gpu.dense_peak_flops(dtype)
    assert g["time_s"] >= 3 * 4096**2 * 2 / gpu.peak_memory_bandwidth_Bps  # A, B read and C written once
    assert g["power_w"] <= gpu.params["power"]["tdp"] * 1.001


@pytest.mark.parametrize("name", GPUS)
def test_a_decode_step_runs_within_physical_bounds(name: str) -> None:
    dtype = DTYPE.get(name, "bf16")
    res = simulate(name, "llama-3-8b", Decode(batch=4, context_len=512), dtype=dtype, keep_records=False)
    t = res.summary["time_per_output_token_s"]
    gpu = device(name)
    flops = sum(res.ledger.flops_by_device().values())
    dram_B = sum(r.bytes_carried for r in res.ledger.resources if r.label.endswith("memory_bw"))
    assert flops > 2 * 4 * 7e9  # 2 FLOPs per weight per token, 4 tokens
    assert dram_B > 2 * 7e9  # every bf16/fp16 weight read once
    assert t >= flops / gpu.dense_peak_flops(dtype)
    assert t >= dram_B / gpu.peak_memory_bandwidth_Bps


def test_dgx_b200_runs_tensor_parallel_decode_over_nvlink5() -> None:
    system = load_system("dgx-b200-8")
    assert len([d for d in system.devices if d.startswith("gpu")]) == 8
    res = simulate(system, "llama-3-8b", Decode(batch=8, context_len=512), keep_records=False)
    assert res.summary["tp"] == 8 and res.summary["time_per_output_token_s"] > 0


def test_the_m2_max_cpu_and_gpu_share_one_unified_memory() -> None:
    system = load_system("mac-m2-max")
    assert system.memory_of("cpu") is system.memory_of("gpu")
    res = simulate(
        system, "llama-3-8b", Decode(batch=1, context_len=512), dtype="fp16", tp=1, keep_records=False
    )
    # one token reads every fp16 weight once from the 400 GB/s LPDDR5 (Apple): at least 16 GB / 400 GB/s
    assert res.summary["time_per_output_token_s"] >= 16e9 / 400e9
