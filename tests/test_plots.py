"""Plot helpers draw labelled, unit-carrying figures and save PNGs, without pyplot or a display."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from simcore import plots  # noqa: E402
from simcore.experiment import Generate, simulate  # noqa: E402
from simcore.sweep import load_sweep, run_sweep, sensitivity  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def result():
    return simulate("h100-sxm5-80gb", "llama-2-7b", Generate(batch=2, prompt_len=128, new_tokens=2))


@pytest.fixture(scope="module")
def sweep_df(tmp_path_factory):
    spec = load_sweep({"name": "p", "base": {"hardware": "a100-sxm4-80gb", "model": "llama-2-7b",
                                             "scenario": {"kind": "decode", "context_len": 256}},
                       "axes": {"scenario.batch": [1, 4, 16, 64], "hardware.memory.bandwidth": ["1.5 TB/s", "3 TB/s"]},
                       "objectives": {"time_per_output_token_s": "min", "tokens_per_s": "max"}})  # fmt: skip
    return spec, run_sweep(spec, out=tmp_path_factory.mktemp("store"))


def labels(fig) -> tuple[str, str]:
    ax = fig.axes[0]
    return ax.get_xlabel(), ax.get_ylabel()


def test_roofline_places_ops_under_the_device_roof(result, tmp_path):
    fig = plots.roofline(result, path=tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes().startswith(PNG)
    assert labels(fig) == ("arithmetic intensity (FLOP per operand byte)", "achieved throughput (TFLOP/s)")
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("tensor peak 989 TFLOP/s" in t for t in texts) and {"gemm", "prefill", "decode"} <= set(texts)
    roof = ax.get_lines()[0].get_ydata()
    assert max(roof) == pytest.approx(989.4, rel=1e-3)
    for coll in ax.collections:  # no op beats the roof
        for _, y in coll.get_offsets():
            assert y <= 989.4 * 1.0001


def test_timeline_has_a_lane_per_device_group_and_time_units(result, tmp_path):
    fig = plots.timeline(result, path=tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes().startswith(PNG)
    x, y = labels(fig)
    assert x == "simulated time (ms)" and y == "device group / link"
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["gpu"]
    zoom = plots.timeline(result, start_s=0, end_s=1e-4)
    assert labels(zoom)[0] == "simulated time (us)"


def test_energy_breakdown_stacks_actions_and_sums_to_the_total(result, tmp_path):
    fig = plots.energy_breakdown({"h100": result}, path=tmp_path / "e.png")
    assert (tmp_path / "e.png").read_bytes().startswith(PNG)
    ax = fig.axes[0]
    assert ax.get_ylabel() in ("energy (J)", "energy (mJ)")
    scale = 1.0 if ax.get_ylabel() == "energy (J)" else 1e-3
    heights = sum(p.get_height() for p in ax.patches) * scale
    assert heights == pytest.approx(result.summary["energy_j"], rel=1e-6)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "DRAM traffic" in legend and "static (idle) power" in legend
    per_token = plots.energy_breakdown(result, per_token=True)
    assert "per token" in per_token.axes[0].get_ylabel()


def test_pareto_scatter_labels_units_and_marks_the_front(sweep_df, tmp_path):
    _, df = sweep_df
    fig = plots.pareto_scatter(df, "time_per_output_token_s", "tokens_per_s", color="scenario.batch",
                               path=tmp_path / "p.png")  # fmt: skip
    assert (tmp_path / "p.png").read_bytes().startswith(PNG)
    assert labels(fig) == ("time per output token (ms)", "throughput (tokens/s)")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    n_front = int(df.pareto.sum())
    assert any(t.startswith(f"Pareto front ({n_front}:") for t in legend)
    assert fig.axes[1].get_ylabel() == "scenario.batch"  # the colour bar


def test_axis_columns_with_units_are_labelled_in_those_units(sweep_df):
    _, df = sweep_df
    assert plots.column_label("hardware.memory.bandwidth", df) == ("hardware.memory.bandwidth (TB/s)", 1e12)
    assert plots.column_label("energy_per_token_j", df)[0].startswith("energy per token (")


def test_tornado_from_a_sensitivity_run(sweep_df, tmp_path):
    spec, _ = sweep_df
    df = sensitivity(spec, out=tmp_path / "s")
    fig = plots.tornado(df, "tokens_per_s", path=tmp_path / "tor.png")
    assert (tmp_path / "tor.png").read_bytes().startswith(PNG)
    assert labels(fig)[0] == "change of tokens_per_s vs the center point (%)"
    assert {t.get_text() for t in fig.axes[0].get_yticklabels()} == {
        "scenario.batch",
        "hardware.memory.bandwidth",
    }


def test_a_result_without_records_is_refused_plainly():
    res = simulate(
        "h100-sxm5-80gb", "llama-2-7b", Generate(batch=1, prompt_len=16, new_tokens=1), keep_records=False
    )
    with pytest.raises(ValueError, match="keep_records=True"):
        plots.timeline(res)
