"""Systolic arrays: SCALE-Sim's cycle counts exactly, then the physical model's SRAM, DRAM and cores."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from hardware.systolic import (
    ArraySpec,
    SystolicArray,
    physical_gemm,
    scalesim_conv,
    scalesim_gemm,
    tiled_gemm,
)
from models.cnn import Conv2d, ElementwiseLayer
from simcore.energy import energy_table
from simcore.errors import ConfigError
from simcore.ops import Attention, Gemm
from simcore.system import load_system

DATA = Path(__file__).parent / "data"

# /work/shared/calibration/scalesim_golden.csv: (rows, cols, M, N, K, dataflow, compute cycles) measured by
# running SCALE-Sim v2/v3 (the last three rows: SCALE-Sim 3.0.0).
GOLDEN = [
    (8, 8, 8, 8, 8, "os", 21), (8, 8, 8, 8, 8, "ws", 29), (8, 8, 8, 8, 8, "is", 29),
    (8, 8, 20, 13, 17, "os", 185), (8, 8, 20, 13, 17, "ws", 251), (8, 8, 20, 13, 17, "is", 314),
    (16, 8, 50, 30, 40, "os", 991), (16, 8, 50, 30, 40, "ws", 1055), (16, 8, 50, 30, 40, "is", 1427),
    (128, 128, 1024, 1024, 1024, "os", 81791), (128, 128, 1024, 1024, 1024, "ws", 89983),
    (32, 32, 1024, 1024, 1024, "os", 1112063),
]  # fmt: skip


@pytest.mark.parametrize(("rows", "cols", "m", "n", "k", "df", "cycles"), GOLDEN)
def test_scalesim_golden_cycles_exact(
    rows: int, cols: int, m: int, n: int, k: int, df: str, cycles: int
) -> None:
    assert scalesim_gemm(rows, cols, df, m, n, k).cycles == cycles


def _runs() -> list[dict[str, str]]:
    with open(DATA / "scalesim3_runs.csv") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def test_scalesim3_runs_match_in_every_reported_figure() -> None:
    """162 layers (GEMM and conv, 1x1 to 64x16 arrays, all dataflows) run through SCALE-Sim 3.0.0:
    cycles exactly, utilisations to float precision."""
    rows = _runs()
    assert len(rows) >= 150
    for r in rows:
        a, b, df = int(r["array_rows"]), int(r["array_cols"]), r["dataflow"]
        if r["kind"] == "gemm":
            rep = scalesim_gemm(a, b, df, int(r["M"]), int(r["N"]), int(r["K"]))
        else:
            dims = [
                int(r[x])
                for x in ("ifmap_h", "ifmap_w", "filt_h", "filt_w", "channels", "num_filters", "stride")
            ]
            rep = scalesim_conv(a, b, df, *dims)
        assert rep.cycles == int(r["total_cycles"]), r
        assert rep.overall_util * 100 == pytest.approx(float(r["overall_util_pct"]), rel=1e-12)
        assert rep.mapping_efficiency * 100 == pytest.approx(float(r["mapping_eff_pct"]), rel=1e-12)
        assert rep.compute_util * 100 == pytest.approx(float(r["compute_util_pct"]), rel=1e-12)


def test_scalesim_v3_repository_golden_alexnet_conv1() -> None:
    # scale-sim-v3 test/general/golden_trace_calc/COMPUTE_REPORT.csv: alexnet_part.csv Conv1
    # (224x224, 11x11x3, 96 filters, stride 4) on 32x32 ws: 112283 cycles, 91.683..% / 94.53125% / 90.78..%
    rep = scalesim_conv(32, 32, "ws", 224, 224, 11, 11, 3, 96, 4)
    assert rep.cycles == 112283
    assert rep.overall_util * 100 == pytest.approx(91.68309650614964, rel=1e-12)
    assert rep.mapping_efficiency * 100 == pytest.approx(94.53125)
    assert rep.compute_util * 100 == pytest.approx(90.78000992063485, rel=1e-12)


def scalesim_array(**kw: object) -> SystolicArray:
    return SystolicArray.build(mode="scalesim", **kw)


def test_component_in_scalesim_mode_reports_scalesim_cycles() -> None:
    arr = scalesim_array(rows=16, cols=8, dataflow="is")
    cost = arr.op_cost(Gemm(name="g", m=50, n=30, k=40, dtype="int8"))
    assert cost.detail["cycles"] == 1427
    assert cost.duration_s == pytest.approx(1427 / 1e9)
    assert cost.detail["stall_cycles"] == 0
    assert cost.detail["utilization"] == pytest.approx(50 * 30 * 40 / (1427 * 128))
    assert cost.actions["mac.int8"] == 50 * 30 * 40


def test_conv_in_scalesim_mode_is_one_layer_per_image_and_group() -> None:
    arr = scalesim_array(rows=32, cols=32, dataflow="ws")
    # padding 2 on a 220x220 input is SCALE-Sim's 224x224 topology row; SCALE-Sim's output side is
    # ceil((224 - 11 + 4) / 4) = 55 where a framework gives 54
    conv = Conv2d(name="c", h=220, w=220, c_in=3, c_out=96, kernel=11, stride=4, padding=2)
    assert conv.h_out == 54
    assert arr.op_cost(conv).detail["cycles"] == 112283
    two = Conv2d(name="c", batch=2, h=224, w=224, c_in=3, c_out=96, kernel=11, stride=4)
    assert arr.op_cost(two).detail["cycles"] == 2 * 112283
    # depthwise: SCALE-Sim's "DP" rows are one single-channel layer per channel
    dw = Conv2d(name="dw", h=16, w=16, c_in=8, c_out=8, kernel=3, groups=8)
    assert arr.op_cost(dw).detail["cycles"] == 8 * scalesim_conv(32, 32, "ws", 16, 16, 3, 3, 1, 1).cycles


BIG = dict(ifmap_sram="1 GiB", filter_sram="1 GiB", ofmap_sram="1 GiB", dram={"bandwidth": "1 PB/s"})


def test_physical_compute_cycles_without_memory_limits() -> None:
    m, n, k = 100, 70, 50
    g = Gemm(name="", m=m, n=n, k=k)
    # without double-buffered PEs a fold is SCALE-Sim's (stream + skew, + R preload for ws/is),
    # and the total is SCALE-Sim's + 1 (it reports the index of the last cycle)
    for df in ("os", "ws", "is"):
        plain = SystolicArray.build(rows=32, cols=16, dataflow=df, double_buffered_pes=False, **BIG).op_cost(
            g
        )
        assert plain.detail["compute_cycles"] == scalesim_gemm(32, 16, df, m, n, k).cycles + 1, df
        assert plain.detail["cycles"] == pytest.approx(plain.detail["compute_cycles"], rel=1e-5)
    # with them folds pipeline: max(T, R) each, the R + C - 2 skew and one R-cycle preload/drain once
    os_ = SystolicArray.build(rows=32, cols=16, dataflow="os", **BIG).op_cost(g)
    assert os_.detail["compute_cycles"] == 4 * 5 * max(50, 32) + (32 + 16 - 2) + 32
    ws = SystolicArray.build(rows=32, cols=16, dataflow="ws", **BIG).op_cost(g)
    assert ws.detail["compute_cycles"] == 2 * 5 * max(100, 32) + (32 + 16 - 2) + 32
    short = SystolicArray.build(rows=32, cols=16, dataflow="ws", **BIG).op_cost(
        Gemm(name="", m=8, n=70, k=50)
    )
    assert short.detail["compute_cycles"] == 2 * 5 * 32 + 46 + 32  # T = 8 < R: the preload is exposed
    # mapping efficiency of partial folds: Sr x Sc / (folds x PEs)
    assert os_.detail["mapping_efficiency"] == pytest.approx(100 * 70 / (20 * 32 * 16))


def spec(df: str, **kw: float) -> ArraySpec:
    base = dict(rows=4, cols=4, dataflow=df, elem_B=1.0, acc_B=4.0, ifmap_B=1e9, filter_B=1e9, ofmap_B=1e9,
                dram_B_per_cycle=1e12, double_buffered_pes=True)  # fmt: skip
    base.update(kw)
    return ArraySpec(**base)


def test_dram_traffic_is_compulsory_when_everything_fits() -> None:
    for df in ("os", "ws", "is"):
        run = physical_gemm(spec(df), 8, 8, 16)
        assert run.dram_B == 8 * 16 + 16 * 8 + 8 * 8, df


def test_operands_that_do_not_fit_are_refetched() -> None:
    # os, 4x4 array, A = 8x16 int8 = 128 B, ifmap SRAM 64 B (32 B half): A is streamed again for each
    # of the 2 column folds (2 x 128 B); B's 16x4 slices (64 B) fit and load once; C written once.
    run = physical_gemm(spec("os", ifmap_B=64), 8, 8, 16)
    assert run.dram_read_B["ifmap"] == 2 * 128
    assert run.dram_read_B["filter"] == 128
    assert run.dram_write_B == 64
    # partial sums that do not fit the output SRAM spill: ws, K = 8 over 2 row folds, T = M = 16,
    # psums 16 x 4 x 4 B = 256 B > 32 B: written after fold 1 (256), read back (256), final write 64 B
    ws = physical_gemm(spec("ws", ofmap_B=64), 16, 4, 8)
    assert ws.dram_read_B["ofmap"] == 256
    assert ws.dram_write_B == 256 + 64
    assert ws.dram_B == 128 + 32 + 256 + 256 + 64


def test_tiling_picks_the_schedule_with_less_traffic_when_memory_bound() -> None:
    # the same ws GEMM on a slow DRAM: chunks of 2 rows of M keep partial sums on chip
    # (weights are re-read 8 times: 8 x 32 B) instead of spilling 512 B of partial sums
    slow = tiled_gemm(spec("ws", ofmap_B=64, dram_B_per_cycle=0.01), 16, 4, 8)
    assert slow.dram_B == 128 + 8 * 32 + 64
    fast = tiled_gemm(spec("ws", ofmap_B=64, dram_B_per_cycle=1e9), 16, 4, 8)
    assert fast.cycles < slow.cycles and fast.dram_B > slow.dram_B


def test_bandwidth_stalls_make_a_gemm_memory_bound() -> None:
    g = Gemm(name="", m=512, n=512, k=512, dtype="int8")
    fast = SystolicArray.build(rows=32, cols=32, dram={"bandwidth": "10 TB/s"})
    slow = SystolicArray.build(rows=32, cols=32, dram={"bandwidth": "1 GB/s"})
    cf, cs = fast.op_cost(g), slow.op_cost(g)
    assert cf.bound == "compute" and cs.bound == "memory"
    assert cs.detail["compute_cycles"] == cf.detail["compute_cycles"]
    assert cs.detail["stall_cycles"] > 10 * cs.detail["compute_cycles"]
    # when stalls dominate, time is the DRAM traffic over the bandwidth (within the exposed first load)
    assert cs.duration_s == pytest.approx(cs.dram_bytes / 1e9, rel=0.02)
    assert cs.detail["utilization"] < cf.detail["utilization"]


def test_cores_split_the_fold_grid() -> None:
    g = Gemm(name="", m=256, n=256, k=256, dtype="int8")
    one = SystolicArray.build(rows=32, cols=32, cores=1, **BIG).op_cost(g)
    four = SystolicArray.build(rows=32, cols=32, cores=4, **BIG).op_cost(g)
    # 8 column folds over 4 arrays: each array does a quarter of the 64 folds (T = 256 each)
    assert one.detail["compute_cycles"] == 64 * 256 + 62 + 32
    assert four.detail["compute_cycles"] == 16 * 256 + 62 + 32
    assert four.detail["folds"] == one.detail["folds"] == 64
    # batched products with per-sample operands (attention) go one per array
    bmm = Gemm(name="", m=64, n=64, k=64, batch=8, b_is_weight=False, dtype="int8")
    c1 = SystolicArray.build(rows=32, cols=32, cores=1, **BIG).op_cost(bmm)
    c8 = SystolicArray.build(rows=32, cols=32, cores=8, **BIG).op_cost(bmm)
    assert c8.detail["compute_cycles"] == pytest.approx(c1.detail["compute_cycles"] / 8)


def test_vector_unit_and_fused_epilogues() -> None:
    arr = SystolicArray.build(rows=32, cols=32, vector_unit={"lanes": 16}, dram={"bandwidth": "1 TB/s"})
    relu = ElementwiseLayer(name="relu", elements=1 << 20, flops_per_element=1, function="relu", dtype="int8")
    c = arr.op_cost(relu)
    assert c.duration_s == pytest.approx(max((1 << 20) / (16 * 1e9), 2 * (1 << 20) / 1e12))
    fused = arr.op_cost(
        ElementwiseLayer(name="r", elements=1 << 20, function="relu", dtype="int8", fused=True)
    )
    assert fused.dram_bytes == 0 and fused.duration_s == pytest.approx((1 << 20) / 16e9)


def test_attention_is_two_batched_gemms_and_a_softmax() -> None:
    arr = SystolicArray.build(rows=32, cols=32, **BIG)
    att = Attention(name="a", batch=1, heads=2, kv_heads=2, q_len=64, kv_len=64, head_dim=32, causal=False)
    c = arr.op_cost(att)
    assert c.actions["mac.int8"] == 2 * 2 * 64 * 64 * 32
    qk = arr.op_cost(Gemm(name="", m=64, n=64, k=32, batch=2, b_is_weight=False))
    assert c.duration_s > 2 * qk.duration_s * 0.99


def test_energy_prices_follow_the_tech_node_and_overrides() -> None:
    arr = SystolicArray.build(rows=8, cols=8, dtype="bf16", tech_node="7 nm", dram={"type": "hbm2"})
    e = arr.energy_per_action_J()
    assert e["mac.bf16"] == pytest.approx(energy_table(7).mac_J("bf16"))
    assert e["dram.byte"] == pytest.approx(8 * 3.9e-12)
    assert e["sram.read.byte"] == pytest.approx(energy_table(7).sram_J_per_byte(64 * 1024))
    over = SystolicArray.build(rows=8, cols=8, energy={"mac.int8": "0.1 pJ"})
    assert over.energy_per_action_J()["mac.int8"] == pytest.approx(0.1e-12)


@pytest.mark.parametrize("preset", ["systolic-array", "tpuv4-like", "eyeriss-like", "array-64x64"])
def test_presets_load_and_cost_a_gemm(preset: str) -> None:
    comp = next(iter(load_system(preset).devices.values()))
    assert comp.type_name == "systolic"
    c = comp.op_cost(Gemm(name="g", m=256, n=256, k=256))
    assert c.duration_s > 0 and 0 < c.detail["utilization"] <= 1


def test_tpuv4_like_peak_is_275_tflops() -> None:
    # Jouppi et al., ISCA 2023: 275 TFLOP/s bf16 per TPU v4 chip
    comp = next(iter(load_system("tpuv4-like").devices.values()))
    assert 2 * comp.peak_macs_per_s == pytest.approx(275e12, rel=0.01)


def test_cli_style_overrides_reshape_the_generic_array() -> None:
    sets = ["rows=8", "cols=8", "dataflow=os", "mode=scalesim"]
    comp = next(iter(load_system("systolic-array", sets).devices.values()))
    assert comp.op_cost(Gemm(name="g", m=8, n=8, k=8)).detail["cycles"] == 21
    with pytest.raises(ConfigError, match="dataflow"):
        load_system("systolic-array", ["dataflow=rs"])


def test_large_gemm_with_scarce_bandwidth_stalls() -> None:
    # (its costing time, <= 50 ms, is measured by benchmarks/bench_systolic.py)
    arr = SystolicArray.build(rows=128, cols=128, dataflow="ws")
    c = arr.op_cost(Gemm(name="big", m=4096, n=4096, k=4096))
    assert c.detail["stall_cycles"] > 0


# ----------------------------------------------------------------------------------- case studies


def test_mobilenet_dataflow_study_reports_every_layer() -> None:
    from simcore.studies import mobilenet_dataflow_study, utilization_by_kind

    res = mobilenet_dataflow_study(rows=64, cols=64, mode="scalesim")
    assert set(res) == {"os", "ws", "is"}
    for cost in res.values():
        assert len(cost.layers) == 1 + 13 * 2 + 1  # conv0, 13 depthwise + pointwise pairs, fc
        assert cost.cycles == sum(x.cycles for x in cost.layers)
        kinds = utilization_by_kind(cost)
        # depthwise layers (one filter of 3x3 per channel) leave almost the whole array idle
        assert kinds["depthwise"] < 0.01 < kinds["pointwise"]


def test_array_size_study_speedup_and_pe_cycle_energy() -> None:
    from simcore.studies import array_size_study

    r = array_size_study("vit_base", sizes=(32, 128), dataflow="ws", mode="scalesim", pe_idle_fraction=1.0)
    # 16x the PEs buy less than 16x the speed: fill/drain grows with the array, folds go partial
    assert 4 < r.speedup < 16
    assert r.large.utilization(128 * 128) < r.small.utilization(32 * 32)
    # with every PE-cycle priced as a MAC, array energy is proportional to PE-cycles
    pe_cycles = [c.cycles * s * s for c, s in ((r.small, 32), (r.large, 128))]
    arr = [sum(v for a, v in c.energy_by_action_J.items() if a.startswith("mac.") or a == "pe.idle.cycle")
           for c in (r.small, r.large)]  # fmt: skip
    assert arr[1] / arr[0] == pytest.approx(pe_cycles[1] / pe_cycles[0], rel=1e-6)
