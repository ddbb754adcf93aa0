"""`simcore validate host`: this machine's CPU and memory, measured with the native reference kernels and
predicted by a one-core CPU description."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simcore.tables import text_table
from simcore.validate.report import abs_pct, signed_pct
from simcore.validate.rows import parse_size

# ------------------------------------------------------------------------------------- validate host


@dataclass(frozen=True)
class HostInfo:
    """What this machine says about its CPU: enough to describe it to the CPU model."""

    model: str
    cores: int  # usable by this process (sched_getaffinity)
    clock_Hz: float
    clock_source: str
    simd_bits: int
    fma: bool
    flags: tuple[str, ...]
    llc_B: float
    memory_B: float


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo (empty where the file does not exist)."""
    out: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        if ":" in line:
            k, v = line.split(":", 1)
            out.setdefault(k.strip(), v.strip())
    return out


def _lscpu_max_mhz() -> float | None:
    import shutil
    import subprocess

    if not shutil.which("lscpu"):
        return None
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"CPU max MHz:\s*([\d.]+)", text)
    return float(m.group(1)) if m else None


def _llc_bytes() -> float:
    best = 0.0
    for idx in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = int((idx / "level").read_text())
            size = parse_size((idx / "size").read_text().strip().replace("K", "Ki").replace("M", "Mi"))
        except (OSError, ValueError):
            continue
        if size and level >= 2:
            best = max(best, size)
    return best or 32 * 2**20


def detect_host() -> HostInfo:
    """Cores from the affinity mask, SIMD from /proc/cpuinfo flags, clock from lscpu or cpuinfo."""
    info = _cpuinfo()
    flags = tuple(sorted(set((info.get("flags") or info.get("Features") or "").split())))
    simd = 512 if "avx512f" in flags else 256 if ("avx2" in flags or "avx" in flags) else 128
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    mhz = _lscpu_max_mhz()
    source = "lscpu 'CPU max MHz'"
    if not mhz:
        mhz = float(info.get("cpu MHz", "0") or 0) or None
        source = "/proc/cpuinfo 'cpu MHz'"
    if not mhz:
        mhz, source = 2000.0, "not reported; 2 GHz assumed"
    mem = 16 * 2**30
    try:
        m = re.search(r"MemTotal:\s*(\d+)\s*kB", Path("/proc/meminfo").read_text())
        mem = int(m.group(1)) * 1024 if m else mem
    except OSError:
        pass
    return HostInfo(info.get("model name", "unknown CPU"), cores, mhz * 1e6, source, simd,
                    "fma" in flags or "asimd" in flags, flags, _llc_bytes(), float(mem))  # fmt: skip


#: Vector FMA pipes per core: two on the x86 cores of the last decade (Haswell on, Zen 2 on); one
#: where there is no FMA (a multiply and an add issue separately, still 2 FLOPs per lane per cycle).
FMA_UNITS = 2

#: FLOPs of one fp32 exp in the native attention kernels (refk_exp_neg in refkernels.c), counted from its
#: code, not fitted: clamp 1; n = round(x·log2 e) by a multiply-add and a subtract, 3; Cody-Waite
#: r = x - n·ln2_hi - n·ln2_lo, two multiply-adds, 4; degree-7 Taylor polynomial by Horner, 7 multiply-adds,
#: 14; exponent insertion (integer shift and add) 2; underflow select 2.
NATIVE_EXP_FLOPS = 1 + 3 + 4 + 14 + 2 + 2


def host_cpu(info: HostInfo, stream_Bps: float, efficiency: float, call_overhead_s: float = 2e-6) -> Any:
    """A CPU component for ONE core of this host (the native kernels are single-threaded).

    call_overhead_s is the fixed cost of one call of a native kernel from Python (argument checks and
    ctypes), the model's launch_overhead.
    """
    from hardware.cpu import CPU
    from simcore.config import Doc
    from simcore.units import SI

    lanes32 = info.simd_bits // 32
    per_cycle32 = lanes32 * 2 * (FMA_UNITS if info.fma else 1)
    data = {
        "cores": 1,
        "clock": SI(info.clock_Hz),  # measured values, already in SI units
        "simd_width": info.simd_bits,
        "flops_per_cycle": {"fp32": float(per_cycle32), "fp64": float(per_cycle32 / 2)},
        "llc": SI(info.llc_B),
        "memory": {"type": "ddr4", "capacity": SI(info.memory_B), "bandwidth": SI(stream_Bps)},  # type: energy only
        "pcie": {"generation": 4, "lanes": 16},  # not used by these kernels
        "power": {"idle": SI(0.0)},
        "efficiency": {"compute": efficiency, "memory": 1.0},  # the bandwidth is already the measured one
        "exp_flops": float(NATIVE_EXP_FLOPS),
        "launch_overhead": SI(call_overhead_s),
    }
    return CPU.from_doc("host", Doc(data, {}, "<this host>"))


def _aligned(shape: tuple[int, ...], rng: Any = None) -> Any:
    """A float32 array starting on a 64-byte cache line, standard normal if rng is given, else uninitialised.

    numpy only promises 16 bytes; with rows a multiple of 64 bytes, an unlucky allocation puts every
    512-bit load and store of a kernel across two cache lines and swings its time by up to 2x.
    """
    import numpy as np

    n = math.prod(shape)
    buf = np.empty(n + 16, dtype=np.float32)
    skip = (-buf.ctypes.data % 64) // buf.itemsize
    out = buf[skip : skip + n].reshape(shape)
    if rng is not None:
        rng.standard_normal(out=out, dtype=np.float32)
    return out


def _median_times(fns: Sequence[Callable[[], Any]], rounds: int, visit_s: float = 2e-3) -> list[float]:
    """Median seconds per call of each fn, timed round-robin over `rounds` rounds.

    Round-robin rather than one kernel after another, so that a slow spell of a shared host (a process on
    the sibling hyperthread, a clock change) lands on every row alike and not only on the GEMM row the
    efficiency is fitted on, which would shift every prediction. Each visit starts with an untimed call
    (the previous kernel evicted this one's data from the caches) and then times calls for about visit_s.
    """
    per_visit = []
    for fn in fns:
        fn()  # first touch of the output, library load
        t0 = time.perf_counter()
        fn()
        per_visit.append(max(1, math.ceil(visit_s / max(time.perf_counter() - t0, 1e-7))))
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, calls, ts in zip(fns, per_visit, times, strict=True):
            fn()
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def run_host(as_json: bool, quick: bool) -> dict[str, Any]:
    """Measure the native kernels on this machine and predict them with a CPU description of it.

    The description is spec-level (cores, clock, SIMD width and FMA pipes from /proc/cpuinfo) plus three
    measured figures, as a preset's calibration constants would be: the STREAM triad bandwidth, the fixed
    cost of one call (a 1x1x1 GEMM) and the fraction of SIMD peak the reference GEMM reaches at its middle
    size. Every other row -- other GEMM sizes (other cache behaviour) and attention, plain and flash (other
    kernels: the model adds the softmax, with the exp's FLOPs counted from the kernel's code,
    NATIVE_EXP_FLOPS) -- is a prediction.
    """
    import functools

    import numpy as np

    from simcore import native
    from simcore.ops import Attention, Gemm

    t_start = time.perf_counter()
    info = detect_host()
    n_stream = 4_000_000 if quick else 20_000_000  # 3 arrays x 32 / 160 MB: beyond the LLC of most hosts
    bw = native.stream(n_stream, repeats=3 if quick else 5)
    stream_Bps = bw["triad"]
    rng = np.random.default_rng(0)
    repeats = 3 if quick else 5
    kernels: list[tuple[str, str, Any, Callable[[], Any]]] = []  # (kernel, shape, op, call)
    gemm_sizes = (128, 192, 256) if quick else (128, 256, 384, 512, 768)
    for s in gemm_sizes:
        a, b, c = _aligned((s, s), rng), _aligned((s, s), rng), _aligned((s, s))
        kernels.append(("gemm", f"{s}x{s}x{s}", Gemm("gemm", "fp32", m=s, n=s, k=s),
                        functools.partial(native.gemm, a, b, out=c)))  # fmt: skip
    attn = (
        ((1, 2, 128, 64), (1, 4, 256, 64)) if quick else ((1, 4, 256, 64), (1, 8, 512, 64), (1, 4, 1024, 64))
    )
    attn_kernels = {
        "attention (causal)": native.attention,
        "flash attention (causal)": native.flash_attention,
    }
    for name, kernel in attn_kernels.items():
        for batch, heads, seq, d in attn:
            q, k, v = (_aligned((batch, heads, seq, d), rng) for _ in range(3))
            o = _aligned(q.shape)
            op = Attention("attention", "fp32", batch=batch, heads=heads, kv_heads=heads, q_len=seq,
                           kv_len=seq, head_dim=d, causal=True)  # fmt: skip
            run = functools.partial(kernel, q, k, v, causal=True, out=o)
            kernels.append((name, f"b{batch} h{heads} s{seq} d{d}", op, run))
    # the fixed cost of a call (Python checks + ctypes), measured like the bandwidth: a 1x1x1 GEMM call
    one = _aligned((1, 1), rng)
    tiny = functools.partial(native.gemm, one, one.copy(), out=_aligned((1, 1)))
    *seconds, overhead = _median_times([*(run for *_, run in kernels), tiny], repeats)
    measured = [(name, shape, op, t) for (name, shape, op, _), t in zip(kernels, seconds, strict=True)]
    # calibrate the one compute constant on the middle GEMM size, as a preset's efficiency is fitted
    peak = host_cpu(info, stream_Bps, 1.0).peak_flops("fp32")
    ci = len(gemm_sizes) // 2
    calib_op, calib_t = measured[ci][2], measured[ci][3]
    efficiency = min(1.0, calib_op.flops / max(calib_t - overhead, 1e-9) / peak)
    cpu = host_cpu(info, stream_Bps, efficiency, overhead)
    rows: list[dict[str, Any]] = []
    for i, (kernel, shape, op, t) in enumerate(measured):
        pred = cpu.op_cost(op).duration_s
        rows.append({"kernel": kernel, "shape": shape, "measured_s": t, "predicted_s": pred,
                     "error": pred / t - 1.0, "gflops": op.flops / t / 1e9, "calibration": i == ci})  # fmt: skip
    predicted = [r for r in rows if not r["calibration"]]
    med = {k: statistics.median(abs(r["error"]) for r in predicted if k in r["kernel"])
           for k in ("gemm", "attention")}  # fmt: skip
    report = {
        "host": {"model": info.model, "cores": info.cores, "clock_Hz": info.clock_Hz, "clock_source": info.clock_source,
                 "simd_bits": info.simd_bits, "fma": info.fma, "llc_B": info.llc_B, "stream_Bps": dict(bw)},
        "model_core": {"peak_fp32_flops": peak, "efficiency": efficiency, "memory_Bps": stream_Bps,
                       "exp_flops": NATIVE_EXP_FLOPS, "call_overhead_s": overhead,
                       "calibrated_on": f"gemm {measured[ci][1]}"},
        "rows": rows,
        "median_abs_error": statistics.median(abs(r["error"]) for r in predicted),
        "median_abs_error_by_kernel": med,
        "elapsed_s": time.perf_counter() - t_start,
    }  # fmt: skip
    if as_json:
        print(json.dumps(report, sort_keys=True, default=float))
        return report
    simd = f"{info.simd_bits}-bit SIMD{' + FMA' if info.fma else ''}"
    print(
        f"host: {info.model}, {info.cores} usable core(s), {info.clock_Hz / 1e9:.2f} GHz ({info.clock_source}), {simd}"
    )
    print(f"memory: STREAM triad {stream_Bps / 1e9:.1f} GB/s, copy {bw['copy'] / 1e9:.1f} GB/s (one thread)")
    print(f"model: one core (the native kernels are single-threaded), {peak / 1e9:.1f} GFLOP/s fp32 SIMD peak; "
          f"efficiency {efficiency:.3f} fitted on gemm {measured[ci][1]}, every other row predicted;\n"
          f"       {overhead * 1e6:.1f} us per call (a 1x1 GEMM); attention per (query, key) pair: 4·d matmul FLOPs "
          f"+ one exp ({NATIVE_EXP_FLOPS} FLOPs, counted from the kernel's code) + 4 softmax FLOPs\n")  # fmt: skip
    print(text_table(("kernel", "shape", "measured", "predicted", "error", "GFLOP/s"),
                [(r["kernel"], r["shape"], f"{r['measured_s'] * 1e3:.3f} ms", f"{r['predicted_s'] * 1e3:.3f} ms",
                  "(fit)" if r["calibration"] else signed_pct(r["error"]), f"{r['gflops']:.2f}") for r in rows],
                (False, False, True, True, True, True)))  # fmt: skip
    print(f"\nmedian |error| of the predicted rows: {abs_pct(report['median_abs_error'])} (gemm {abs_pct(med['gemm'])}, "
          f"attention {abs_pct(med['attention'])}); {report['elapsed_s']:.1f} s")  # fmt: skip
    return report
