"""Measure the quantization steps docs/validation.md ("Steps that remain") documents.

    python scripts/quantization_steps.py

Each row is printed with the stock presets and with `efficiency.mem_saturation` near 0: a step that
survives the second run is a tile/wave step the model keeps on purpose; one that vanishes comes from the
CTA-counting DRAM saturation threshold.
"""

from simcore.experiment import Decode, simulate
from simcore.ops import Gemm
from simcore.system import load_system

TINY = ["efficiency.mem_saturation=0.000001"]


def main() -> None:
    for preset, model in (("a100-sxm4-80gb", "llama-2-7b"), ("h100-sxm5-80gb", "llama-3-8b")):
        for over in ([], TINY):
            system = load_system(preset, over)
            lat = {b: simulate(system, model, Decode(batch=b, context_len=1024), dtype="fp16",
                               keep_records=False).summary["latency_s"] for b in (64, 65, 128, 129, 132)}  # fmt: skip
            thr = {b: b / t for b, t in lat.items()}
            print(f"{preset} {model} decode ctx 1024 {'tiny saturation' if over else 'stock'}: "
                  f"tok/s 128 {thr[128]:.0f}, 132 {thr[132]:.0f} ({thr[132] / thr[128] - 1:+.1%}); "
                  f"latency 129/128 {lat[129] / lat[128] - 1:+.1%}, 65/64 {lat[65] / lat[64] - 1:+.1%}")  # fmt: skip
    for preset in ("a100-sxm4-80gb", "h100-sxm5-80gb"):
        for over in ([], TINY):
            gpu = load_system(preset, over).devices["gpu"]
            for n, k in ((1024, 1024), (4096, 4096), (11008, 4096)):
                cells = []
                for m in (64, 65, 128, 129):
                    op = Gemm("g", "fp16", m=m, n=n, k=k)
                    p = gpu.gemm_plan(op)
                    cells.append(f"m={m} {gpu.op_cost(op).duration_s * 1e6:.2f} us {p.tile_m}x{p.tile_n} "
                                 f"split {p.split_k} {p.ctas} CTAs {p.bound}")  # fmt: skip
                print(f"{preset} {'tiny saturation' if over else 'stock'} n={n} k={k}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
