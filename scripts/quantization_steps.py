"""Measure the quantization steps docs/validation.md ("Steps that remain") documents: tile and wave
steps in decode latency and in single GEMMs on A100 and H100.

    python scripts/quantization_steps.py
"""

from simcore.experiment import Decode, simulate
from simcore.ops import Gemm
from simcore.system import load_system


def main() -> None:
    for preset, model in (("a100-sxm4-80gb", "llama-2-7b"), ("h100-sxm5-80gb", "llama-3-8b")):
        lat = {b: simulate(preset, model, Decode(batch=b, context_len=1024), dtype="fp16",
                           keep_records=False).summary["latency_s"] for b in (64, 65, 128, 129, 132)}  # fmt: skip
        thr = {b: b / t for b, t in lat.items()}
        print(f"{preset} {model} decode ctx 1024: tok/s 128 {thr[128]:.0f}, 132 {thr[132]:.0f} "
              f"({thr[132] / thr[128] - 1:+.1%}); latency 129/128 {lat[129] / lat[128] - 1:+.1%}, "
              f"65/64 {lat[65] / lat[64] - 1:+.1%}")  # fmt: skip
    for preset in ("a100-sxm4-80gb", "h100-sxm5-80gb"):
        gpu = load_system(preset).devices["gpu"]
        for n, k in ((1024, 1024), (4096, 4096), (11008, 4096)):
            cells = []
            for m in (64, 65, 128, 129):
                op = Gemm("g", "fp16", m=m, n=n, k=k)
                p = gpu.gemm_plan(op)
                cells.append(f"m={m} {gpu.op_cost(op).duration_s * 1e6:.2f} us {p.tile_m}x{p.tile_n} "
                             f"split {p.split_k} {p.ctas} CTAs {p.bound}")  # fmt: skip
            print(f"{preset} n={n} k={k}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
