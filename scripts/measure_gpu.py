"""Measure GEMMs and attention on this machine's NVIDIA GPU with PyTorch, as CSVs `simcore validate data` reads.

Why: the shared calibration set holds A100 numbers only; running this on any other GPU turns the
simulator's predictions for that GPU into a checked claim:

    python scripts/measure_gpu.py --out measured/            # needs PyTorch with CUDA
    simcore validate data measured/gemm_*.csv measured/attention_*.csv

What it does, so the numbers mean what the model predicts:
- torch.matmul over a grid of shapes (square sizes and LLM projection shapes from decode to prefill) and
  torch.nn.functional.scaled_dot_product_attention forward (flash backend where PyTorch offers it) over
  FlashAttention-2's benchmark grid (batch x seqlen = 16k tokens, hidden 2048, head_dim 64 and 128);
- each timing is one call between two CUDA events, calls issued back to back, after warm-up; the CSV
  holds the median of the repeats;
- inputs rotate over enough copies that their total exceeds twice the L2 cache, so no call finds its
  operands already cached by the previous one;
- the device name comes from torch.cuda.get_device_name(), which `validate data` maps to a preset.

PyTorch is imported only when the script runs; without it (or without a CUDA device) the script says so and
exits with status 2. It is not run by the test suite.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: Columns of shared/calibration/gemm_a100.csv and attention_a100.csv, in their order.
GEMM_COLUMNS = ("gpu", "gpu_notes", "dtype_in", "dtype_out_or_accum", "M", "N", "K", "batch_or_groups", "layout",
                "time_ms", "tflops_per_s", "avg_power_W", "library_or_kernel", "software", "value_kind",
                "derived_fields", "notes", "source", "source_locator", "confidence")  # fmt: skip
ATTENTION_COLUMNS = ("gpu", "implementation", "pass", "causal", "head_dim", "num_heads", "hidden_dim", "seqlen",
                     "batch", "dtype", "tflops_per_s", "time_ms", "value_kind", "notes", "source",
                     "source_locator")  # fmt: skip

SOURCE = "simcore scripts/measure_gpu.py"


def gemm_grid(quick: bool) -> list[tuple[int, int, int]]:
    """(M, N, K): square sizes, then Llama-style projections (hidden 4096, MLP 14336) from decode to prefill."""
    squares = (1024, 4096, 8192) if quick else (512, 1024, 2048, 4096, 6144, 8192, 16384)
    tokens = (1, 128, 2048) if quick else (1, 8, 32, 128, 512, 2048, 8192)
    projections = (
        ((4096, 4096), (14336, 4096)) if quick else ((4096, 4096), (6144, 4096), (14336, 4096), (4096, 14336))
    )
    grid = [(s, s, s) for s in squares]
    grid += [(m, n, k) for n, k in projections for m in tokens]
    return grid


def attention_grid(quick: bool) -> list[tuple[int, int, int, int, bool]]:
    """(batch, heads, seqlen, head_dim, causal) as FlashAttention-2's benchmark: 16k tokens, hidden 2048."""
    seqlens = (1024, 4096) if quick else (512, 1024, 2048, 4096, 8192, 16384)
    out = []
    for causal in (False, True):
        for head_dim in (64, 128):
            for s in seqlens:
                out.append((16384 // s, 2048 // head_dim, s, head_dim, causal))
    return out


def attention_flops(batch: int, heads: int, seqlen: int, head_dim: int, causal: bool) -> float:
    """Forward FLOPs as FlashAttention's benchmark counts them (the convention `validate data` reads back)."""
    return 4.0 * batch * heads * seqlen * seqlen * head_dim / (2 if causal else 1)


def gemm_row(
    gpu: str, dtype: str, m: int, n: int, k: int, seconds: float, software: str, notes: str
) -> dict[str, Any]:
    return {
        "gpu": gpu, "dtype_in": dtype, "dtype_out_or_accum": f"{dtype} out, fp32 accumulate", "M": m, "N": n,
        "K": k, "layout": "row-major A[M,K] @ B[K,N]", "time_ms": f"{seconds * 1e3:.6g}",
        "tflops_per_s": f"{2.0 * m * n * k / seconds / 1e12:.6g}", "library_or_kernel": "torch.matmul (cuBLAS)",
        "software": software, "value_kind": "measured_csv", "notes": notes, "source": SOURCE,
        "source_locator": f"M={m},N={n},K={k}", "confidence": "high",
    }  # fmt: skip


def attention_row(gpu: str, dtype: str, implementation: str, batch: int, heads: int, seqlen: int, head_dim: int,
                  causal: bool, seconds: float, notes: str) -> dict[str, Any]:  # fmt: skip
    flops = attention_flops(batch, heads, seqlen, head_dim, causal)
    return {
        "gpu": gpu, "implementation": implementation, "pass": "fwd", "causal": str(causal), "head_dim": head_dim,
        "num_heads": heads, "hidden_dim": heads * head_dim, "seqlen": seqlen, "batch": batch, "dtype": dtype,
        "tflops_per_s": f"{flops / seconds / 1e12:.6g}", "time_ms": f"{seconds * 1e3:.6g}",
        "value_kind": "measured_csv", "notes": notes, "source": SOURCE,
        "source_locator": f"b={batch},h={heads},s={seqlen},d={head_dim},causal={causal}",
    }  # fmt: skip


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), restval="")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


# --------------------------------------------------------------------------------------------- timing


def rotation(set_bytes: float, l2_bytes: float, free_bytes: float) -> int:
    """How many input copies to rotate so that the copies together exceed twice the L2 (at most 64, and
    never more than a quarter of free memory)."""
    want = max(2, int(-(-2 * l2_bytes // max(set_bytes, 1.0))) + 1)
    fit = max(1, int(free_bytes * 0.25 // max(set_bytes, 1.0)))
    return max(1, min(want, 64, fit))


def time_calls(torch: Any, call: Callable[[int], Any], copies: int, warmup: int, repeats: int) -> float:
    """Median seconds of `call(i)` (i picks the input copy), each call bracketed by CUDA events."""
    for i in range(warmup):
        call(i % copies)
    torch.cuda.synchronize()
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)
    ]
    for i, (start, end) in enumerate(events):
        start.record()
        call(i % copies)
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events) / 1e3


def _sdpa_context(torch: Any) -> tuple[Any, str]:
    """The flash backend where this PyTorch can pin it, else PyTorch's own choice (named in the CSV)."""
    import contextlib

    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.FLASH_ATTENTION), "SDPA, flash backend"
    except (ImportError, AttributeError):
        pass
    try:
        return torch.backends.cuda.sdp_kernel(
            enable_flash=True, enable_math=False, enable_mem_efficient=False
        ), ("SDPA, flash backend")
    except (AttributeError, TypeError):
        return contextlib.nullcontext(), "SDPA, backend chosen by PyTorch"


def measure(out_dir: Path, quick: bool, dtype_name: str | None, warmup: int, repeats: int) -> list[Path]:
    try:
        import torch
    except ImportError:
        print(
            "measure_gpu: PyTorch is not installed (pip install torch); nothing was measured", file=sys.stderr
        )
        raise SystemExit(2) from None
    if not torch.cuda.is_available():
        print("measure_gpu: PyTorch sees no CUDA device (torch.cuda.is_available() is False); nothing was measured",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    dev = torch.device("cuda")
    gpu = torch.cuda.get_device_name(dev)
    props = torch.cuda.get_device_properties(dev)
    l2 = float(getattr(props, "L2_cache_size", 0) or 64 * 2**20)
    if dtype_name is None:
        dtype_name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    elem = torch.tensor([], dtype=dtype).element_size()
    software = f"torch {torch.__version__}, CUDA {torch.version.cuda}"
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"measuring on {gpu} ({props.multi_processor_count} SMs, L2 {l2 / 2**20:.0f} MiB), {dtype_name}, {software}"
    )

    gemm_rows = []
    for m, n, k in gemm_grid(quick):
        free = torch.cuda.mem_get_info()[0]
        copies = rotation((m * k + k * n) * elem, l2, free)
        try:
            a = [torch.randn(m, k, device=dev, dtype=dtype) for _ in range(copies)]
            b = [torch.randn(k, n, device=dev, dtype=dtype) for _ in range(copies)]
            c = torch.empty(m, n, device=dev, dtype=dtype)
            t = time_calls(
                torch, lambda i, a=a, b=b, c=c: torch.matmul(a[i], b[i], out=c), copies, warmup, repeats
            )
        except torch.cuda.OutOfMemoryError:
            print(f"  gemm {m}x{n}x{k}: out of memory, skipped")
            continue
        finally:
            a = b = c = None  # noqa: F841  (free before the next shape)
            torch.cuda.empty_cache()
        notes = (f"median of {repeats} CUDA-event timings of back-to-back calls after {warmup} warm-up; "
                 f"{copies} rotating input copies (> 2x L2); measured {stamp}")  # fmt: skip
        gemm_rows.append(gemm_row(gpu, dtype_name, m, n, k, t, software, notes))
        print(f"  gemm {m}x{n}x{k}: {t * 1e6:.1f} us, {2 * m * n * k / t / 1e12:.1f} TFLOP/s")

    attn_rows = []
    context, impl = _sdpa_context(torch)
    impl = f"{impl} ({software})"
    for batch, heads, seqlen, head_dim, causal in attention_grid(quick):
        free = torch.cuda.mem_get_info()[0]
        copies = rotation(3 * batch * heads * seqlen * head_dim * elem, l2, free)
        try:
            qkv = [[torch.randn(batch, heads, seqlen, head_dim, device=dev, dtype=dtype) for _ in range(3)]
                   for _ in range(copies)]  # fmt: skip
            with context:
                t = time_calls(torch, lambda i, qkv=qkv, causal=causal: torch.nn.functional.scaled_dot_product_attention(
                    *qkv[i], is_causal=causal), copies, warmup, repeats)  # fmt: skip
        except (
            torch.cuda.OutOfMemoryError,
            RuntimeError,
        ) as e:  # RuntimeError: no flash kernel for this case
            print(f"  attention b{batch} h{heads} s{seqlen} d{head_dim}: {type(e).__name__}, skipped")
            continue
        finally:
            qkv = None  # noqa: F841
            torch.cuda.empty_cache()
        notes = (f"forward only; median of {repeats} CUDA-event timings after {warmup} warm-up; {copies} rotating "
                 f"input copies; measured {stamp}")  # fmt: skip
        attn_rows.append(
            attention_row(gpu, dtype_name, impl, batch, heads, seqlen, head_dim, causal, t, notes)
        )
        flops = attention_flops(batch, heads, seqlen, head_dim, causal)
        print(f"  attention b{batch} h{heads} s{seqlen} d{head_dim}{' causal' if causal else ''}: "
              f"{t * 1e3:.3f} ms, {flops / t / 1e12:.1f} TFLOP/s")  # fmt: skip

    slug = _slug(gpu)
    written = [write_csv(out_dir / f"gemm_{slug}.csv", GEMM_COLUMNS, gemm_rows),
               write_csv(out_dir / f"attention_{slug}.csv", ATTENTION_COLUMNS, attn_rows)]  # fmt: skip
    for p in written:
        print(f"wrote {p}")
    print(f"next: simcore validate data {' '.join(str(p) for p in written)}")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="measured", help="directory for the CSVs (default: ./measured)")
    p.add_argument("--quick", action="store_true", help="a small grid (about a minute)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                   help="element type (default: bf16 where supported, else fp16)")  # fmt: skip
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)
    measure(Path(args.out), args.quick, args.dtype, max(1, args.warmup), max(3, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
