"""`simcore validate`: the accuracy targets on the shared measurements, the bookkeeping that keeps every
row accounted for, one-line errors for broken CSVs, and the host run.

Targets (median / p90 of |predicted/measured - 1| over the measured, not figure-read, rows): GEMM median
<= 10% and p90 <= 25%; softmax, layernorm and GeLU median <= 15% each; HBM, PCIe and NVLink bandwidth
median <= 10%; NCCL all-reduce bus bandwidth median <= 10%; attention median <= 15% (the shared A100 set has
FlashAttention-2 forward+backward rows, read off the paper's figure: they are the ones checked).
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

from simcore import cli, validate
from simcore.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION = ROOT.parent / "shared" / "calibration"
FILES = ["gemm_a100.csv", "attention_a100.csv", "links_a100.csv", "ops_misc_a100.csv"]


@pytest.fixture(scope="module")
def shared() -> list[Path]:
    paths = [CALIBRATION / f for f in FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pytest.skip(
            f"shared calibration data not found (expected ../shared/calibration next to the repo): {missing}"
        )
    return paths


@pytest.fixture(scope="module")
def run(shared: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("validation")
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        report = validate.run_data([str(p) for p in shared], str(out), as_json=False)
    return {"report": report, "text": text.getvalue(), "out": out}


def family(report: dict[str, Any], name: str, quality: str = "measured") -> dict[str, Any] | None:
    found = [g for g in report["families"] if g["family"] == name and g["quality"] == quality]
    return found[0] if found else None


def test_gemm_meets_its_targets(run: dict[str, Any]) -> None:
    g = family(run["report"], "gemm")
    assert g is not None and g["count"] > 1000
    assert g["median_abs"] <= 0.10
    assert g["p90_abs"] <= 0.25


@pytest.mark.parametrize("name", ["softmax", "layernorm", "gelu"])
def test_row_and_elementwise_ops_meet_their_target(run: dict[str, Any], name: str) -> None:
    g = family(run["report"], name)
    assert g is not None and g["count"] >= 20
    assert g["median_abs"] <= 0.15


@pytest.mark.parametrize("name", ["hbm", "pcie", "nvlink"])
def test_memory_and_link_bandwidths_meet_their_target(run: dict[str, Any], name: str) -> None:
    g = family(run["report"], name)
    assert g is not None and g["count"] >= 5
    assert g["median_abs"] <= 0.10


def test_allreduce_bus_bandwidth_meets_its_target(run: dict[str, Any]) -> None:
    g = family(run["report"], "allreduce")
    assert g is not None
    assert g["median_abs"] <= 0.10


def test_flash_attention_rows_meet_their_target_and_the_rest_are_listed(run: dict[str, Any]) -> None:
    # FlashAttention-2 forward+backward rows (Dao 2023, A100; read off its figure): forward + backward time
    report = run["report"]
    g = family(report, "attention", quality="approx")
    assert g is not None and g["count"] >= 20
    assert g["median_abs"] <= 0.15
    unmapped = [u for u in report["unmapped"] if u["family"] == "attention"]
    assert unmapped, "rows of other kernels (PyTorch, xformers, Triton) must be listed, not dropped"
    assert all(u["reason"] for u in unmapped)


def _records(path: Path) -> int:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        return sum(1 for row in csv.reader(fh) if any(c.strip() for c in row)) - 1


def test_every_row_is_predicted_or_listed_with_a_reason(run: dict[str, Any], shared: list[Path]) -> None:
    report, text = run["report"], run["text"]
    assert report["rows"] == sum(_records(p) for p in shared)
    assert report["mapped"] + len(report["unmapped"]) == report["rows"]
    assert all(u["reason"] for u in report["unmapped"])
    assert "Unmapped rows" in text
    for reason in {u["reason"] for u in report["unmapped"]}:
        assert reason in text
    # the table, not a dict dump, is what the terminal gets
    assert "median|err|" in text and "{" not in text.splitlines()[2]


def test_figure_read_rows_are_kept_apart(run: dict[str, Any]) -> None:
    qualities = {(g["family"], g["quality"]) for g in run["report"]["groups"]}
    assert ("gemm", "approx") in qualities  # the CUTLASS issue's '~158T' row
    assert all(q in ("measured", "approx") for _, q in qualities)


def test_predictions_csv_and_plot_are_written(run: dict[str, Any]) -> None:
    report, out = run["report"], run["out"]
    with (out / "predictions.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == report["rows"]
    assert {"measured", "predicted", "error", "reason", "family", "preset"} <= set(rows[0])
    png = (out / "predicted_vs_measured.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_json_output_is_one_object(
    shared: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli.main(["validate", "data", str(shared[3]), "--out", str(tmp_path), "--no-plot", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert {"groups", "families", "unmapped", "rows", "mapped"} <= set(data)


# ------------------------------------------------------------------------------------------ bad input

GEMM_HEADER = "gpu,dtype_in,M,N,K,time_ms,tflops_per_s,source\n"


@pytest.mark.parametrize(
    ("body", "line", "words"),
    [
        (GEMM_HEADER + "NVIDIA A100 80GB,fp16,64,64,64,0.01,,x,extra\n", 2, "expected 8 fields"),
        ("gpu,colour\nA100,red\n", 1, "unrecognised CSV header"),
        ("gpu,dtype_in,M,N,K,source\nA100,fp16,1,2,3,x\n", 1, "missing column 'time_ms' or 'tflops_per_s'"),
        (GEMM_HEADER + 'NVIDIA A100 80GB,fp16,64,64,64,0.01,,"unterminated\n', 2, "malformed CSV"),
    ],
)  # fmt: skip
def test_a_malformed_csv_is_one_line_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, line: int, words: str
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(body)
    rc = cli.main(["validate", "data", str(bad), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert f"{bad}:{line}:" in err and words in err


def test_a_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["validate", "data", str(tmp_path / "nope.csv")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "no such file" in err


def test_a_bad_cell_costs_its_row_not_the_file(tmp_path: Path) -> None:
    good = "NVIDIA A100 80GB,fp16,64,64,64,0.01,,x\n"
    f = tmp_path / "gemm_x.csv"
    f.write_text(GEMM_HEADER + good + "NVIDIA A100 80GB,fp16,,64,64,0.01,,x\n" + good
                 + "NVIDIA A100 80GB,fp16,sixty,64,64,0.01,,x\n")  # fmt: skip
    report = validate.run_data([str(f)], None, as_json=True)
    assert (report["rows"], report["mapped"]) == (4, 2)
    (empty, word) = report["unmapped"]
    assert empty["line"] == 3 and "column 'M' is empty" in empty["reason"]
    assert word["line"] == 5 and "column 'M': expected a number, got 'sixty'" in word["reason"]


def test_an_unreadable_file_of_several_is_skipped_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gemm, other = tmp_path / "gemm_x.csv", tmp_path / "other.csv"
    gemm.write_text(GEMM_HEADER + "NVIDIA A100 80GB,fp16,64,64,64,0.01,,x\n")
    other.write_text("gpu,colour\nA100,red\n")
    report = validate.run_data([str(other), str(gemm)], None, as_json=True)
    assert report["mapped"] == 1 and len(report["skipped_files"]) == 1
    assert f"{other}:1:" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="none of the 2 files"):
        validate.run_data([str(other), str(other)], None, as_json=True)


E2E_HEADER = ("hardware,num_devices,parallelism,model,weights_precision,framework,batch_or_concurrency,"
              "input_len_tokens,output_len_tokens,scenario,output_throughput_tok_per_s,prompt_throughput_tok_per_s,"
              "total_throughput_tok_per_s,ttft_ms,source\n")  # fmt: skip


def test_an_end_to_end_row_is_the_run_it_describes(tmp_path: Path) -> None:
    from simcore.experiment import Generate, Prefill, simulate

    f = tmp_path / "llm_e2e_x.csv"
    f.write_text(E2E_HEADER
                 + "A100 SXM 80GB,1,single,Meta-Llama-3-8B,GGUF Q4_K_M,llama.cpp,1,0,128,text generation of 128 "
                   "tokens,100,,,,x\n"
                 + "A100 SXM 80GB,1,single,Meta-Llama-3-8B,GGUF F16,llama.cpp,1,512,0,prompt processing of 512 "
                   "tokens,,5000,,,x\n"
                 + "A100 SXM 80GB,4,split,Meta-Llama-3-8B,GGUF F16,llama.cpp,1,512,0,prompt processing of 512 "
                   "tokens,,5000,,,x\n")  # fmt: skip
    out = tmp_path / "out"
    report = validate.run_data([str(f)], str(out), as_json=True, plot=False)
    assert (report["rows"], report["mapped"]) == (3, 2)
    assert "layer split" in report["unmapped"][0]["reason"]
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    # time = tokens / published tokens/s; the prediction is the experiment a user would run
    gen = simulate("a100-sxm4-80gb", "llama-3-8b", Generate(batch=1, prompt_len=1, new_tokens=128), dtype="fp16",
                   keep_records=False, precision={"weights": "q4_k_m"}).summary["latency_s"]  # fmt: skip
    pre = simulate("a100-sxm4-80gb", "llama-3-8b", Prefill(batch=1, prompt_len=512), dtype="fp16",
                   keep_records=False).summary["latency_s"]  # fmt: skip
    # (the CSV keeps six significant digits)
    assert float(rows[0]["measured"]) == pytest.approx(128 / 100) and float(rows[0]["predicted"]) == pytest.approx(
        gen, rel=1e-5)  # fmt: skip
    assert float(rows[1]["measured"]) == pytest.approx(512 / 5000) and float(rows[1]["predicted"]) == pytest.approx(
        pre, rel=1e-5)  # fmt: skip


# -------------------------------------------------------------------------------------------- host


def test_validate_host_quick_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["validate", "host", "--quick"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    header = next(i for i, s in enumerate(lines) if s.startswith("kernel"))
    assert set(lines[header + 1].replace(" ", "")) == {"-"}
    assert (
        sum("gemm" in s for s in lines[header:]) >= 3 and sum("attention" in s for s in lines[header:]) >= 2
    )
    assert "(fit)" in out and "median |error|" in out


def test_host_description_follows_the_cpu_flags() -> None:
    info = validate.HostInfo("test", 4, 3.0e9, "test", 512, True, ("avx512f", "fma"), 32 * 2**20, 16 * 2**30)
    cpu = validate.host_cpu(info, 20e9, 0.5)
    # one core: 16 fp32 lanes x 2 FLOPs per FMA x 2 FMA pipes x 3 GHz
    assert cpu.peak_flops("fp32") == pytest.approx(16 * 2 * 2 * 3.0e9)
    assert cpu.memory_bandwidth_Bps == pytest.approx(20e9)


# ------------------------------------------------------------------------------ measure_gpu.py's CSVs


def test_measure_gpu_csvs_are_read_back_by_validate(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("measure_gpu", ROOT / "scripts" / "measure_gpu.py")
    assert spec and spec.loader
    mg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mg)
    gpu = "NVIDIA H100 80GB HBM3"
    gemm = [mg.gemm_row(gpu, "bf16", m, n, k, 2 * m * n * k / 600e12 + 5e-6, "torch x", "test")
            for m, n, k in mg.gemm_grid(quick=True)]  # fmt: skip
    attn = [mg.attention_row(gpu, "bf16", "SDPA, flash backend (torch x)", b, h, s, d, c,
                             mg.attention_flops(b, h, s, d, c) / 350e12, "test")
            for b, h, s, d, c in mg.attention_grid(quick=True)]  # fmt: skip
    paths = [mg.write_csv(tmp_path / "gemm_h100.csv", mg.GEMM_COLUMNS, gemm),
             mg.write_csv(tmp_path / "attention_h100.csv", mg.ATTENTION_COLUMNS, attn)]  # fmt: skip
    sim = validate.Simulator()
    rows = [r for p in paths for r in validate.load_rows(p, sim)]
    assert len(rows) == len(gemm) + len(attn)
    assert all(r.mapped and r.preset == "h100-sxm5-80gb" for r in rows), [
        r.reason for r in rows if not r.mapped
    ]
    for r in rows:
        r.predicted, r.bound = r.predict()  # type: ignore[misc]
        assert r.predicted > 0
    assert {r.family for r in rows} == {"gemm", "attention"}


def test_error_bars_are_the_conformal_band_of_the_residuals_and_cover_held_out_rows(tmp_path: Path) -> None:
    from simcore.validate.intervals import fit_intervals
    from simcore.validate.rows import Row

    # residuals ln(pred/meas) spread evenly over [-0.2, 0.2]: an 80% band keeps the middle 80% of a half
    rows = []
    for i in range(401):
        r = Row("f.csv", i, "d", "gemm", "fp16", "", "time", 1.0, False, "s", preset="a100-sxm4-80gb")
        r.predict, r.predicted = (lambda: (0.0, "")), math.exp(-0.2 + 0.4 * i / 400)
        rows.append(r)
    band = fit_intervals(rows, 0.8)["gemm"]
    assert band["lo"] == pytest.approx(-0.16, abs=0.01) and band["hi"] == pytest.approx(0.16, abs=0.01)
    # the held-out share inside it: binomial over 201 rows (sd 0.028) plus each edge's sampling noise (a 10%
    # quantile of 200 uniform values over 0.4 wide: sd 0.0085, 0.021 of coverage): sd ~0.04, 2.4 sd here
    assert band["held_out_coverage"] == pytest.approx(0.8, abs=0.1)


def test_simcore_op_reports_the_shipped_error_bars_around_its_prediction() -> None:
    from simcore.oprun import _intervals, op_report
    from simcore.ops import Gemm
    from simcore.system import load_system

    rep = op_report(load_system("a100-sxm4-80gb"), Gemm("g", "fp16", m=4096, n=4096, k=4096))
    band = _intervals()["families"]["gemm"]
    assert rep["time_low_s"] == pytest.approx(rep["time_s"] / math.exp(band["hi"]))
    assert rep["time_high_s"] == pytest.approx(rep["time_s"] / math.exp(band["lo"]))
    assert rep["time_low_s"] < rep["time_s"] < rep["time_high_s"]
    assert 0.7 <= band["held_out_coverage"] <= 0.95  # an 80% band on held-out A100 GEMM rows


def test_the_accuracy_tables_in_the_readme_and_docs_are_current(shared: list[Path]) -> None:
    # scripts/validation_tables.py regenerates them from the shared measurements; --check fails if stale
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "validation_tables.py"), "--check"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_convolution_rows_are_read_and_an_unnamed_gpu_is_listed(tmp_path: Path) -> None:
    # The shared conv rows name no GPU: both are listed with that reason. Named, the fp32 (SIMT) row is an
    # NHWC 3x3 convolution of 8 x 224 x 224 x 128 -> 128 whose forward FLOPs are 2 N P Q K C R S.
    header = ("hardware,layer_or_model,dtype,N_batch,C_in,H_in,W_in,K_out,R_filter_h,S_filter_w,pad_h,pad_w,"
              "stride_h,stride_w,P_out_h,Q_out_w,fwd_time_ms,bwd_data_time_ms,bwd_weight_time_ms,fwd_tflops_per_s,"
              "throughput_samples_per_s,library_or_algo,software,value_kind,notes,source,source_locator,confidence")  # fmt: skip
    row = "{hw},conv,fp32 (SIMT),8,128,224,224,128,3,3,1,1,1,1,224,224,8.13237,,,14.5693,,cutlass,,stated,,src,loc,low"
    path = tmp_path / "cnn_conv_x.csv"
    path.write_text("\n".join([header, row.format(hw="unstated in doc (likely A100)"),
                               row.format(hw="NVIDIA A100 80GB SXM4")]) + "\n")  # fmt: skip
    rows = validate.load_rows(path, validate.Simulator())
    assert [r.mapped for r in rows] == [False, True]
    assert "does not name the GPU" in rows[0].reason
    assert rows[1].family == "conv" and rows[1].dtype == "fp32"
    t, _ = rows[1].predict()  # type: ignore[misc]
    flops = 2 * 8 * 224 * 224 * 128 * 128 * 9
    assert 0 < flops / t < 19.5e12  # at most the A100's fp32 SIMT peak
