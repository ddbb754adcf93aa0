"""The command-line contract: names, flags, JSON keys, tables."""

import json
import subprocess
import sys

import pytest

from simcore.config import preset_names

PRESETS = ["a100-sxm4-80gb", "a100-pcie-40gb", "h100-sxm5-80gb", "h100-pcie-80gb", "h200-sxm-141gb", "l40s", "a40",
           "rtx-a6000", "rtx-4090", "rtx-3090", "v100-sxm2-32gb", "t4", "jetson-agx-orin-64gb", "dgx-a100-8",
           "dgx-h100-8", "xeon-8480", "epyc-7742"]  # fmt: skip


def simcore(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simcore", *args], capture_output=True, text=True, timeout=120
    )


def test_hw_list_names_every_preset():
    out = simcore("hw", "list").stdout
    for name in PRESETS:
        assert name in out


@pytest.mark.parametrize("name", [n for n in preset_names("hardware") if not n.startswith("arch-")])
def test_every_preset_resolves(name):
    from simcore.system import load_system

    assert load_system(name).devices


def test_hw_show_prints_values_with_units_and_sources():
    out = simcore("hw", "show", "h100-sxm5-80gb").stdout
    assert "3.35 TB/s" in out and "h100-sxm5-80gb.yaml:" in out and "derived:" in out


def test_op_gemm_json():
    p = simcore(
        "op",
        "gemm",
        "--hw",
        "h100-sxm5-80gb",
        "-m",
        "4096",
        "-n",
        "4096",
        "-k",
        "4096",
        "--dtype",
        "bf16",
        "--json",
    )
    d = json.loads(p.stdout)
    assert {"time_s", "energy_j", "flops", "bytes", "bound"} <= d.keys()
    assert d["flops"] == 2 * 4096**3


def test_op_attention_json():
    p = simcore("op", "attention", "--hw", "h100-sxm5-80gb", "--batch", "2", "--heads", "32", "--kv-heads", "8",
                "--q-len", "1024", "--kv-len", "1024", "--head-dim", "128", "--causal", "--dtype", "bf16", "--json")  # fmt: skip
    d = json.loads(p.stdout)
    assert {"time_s", "energy_j", "flops", "bytes", "bound"} <= d.keys()


def test_run_quickstart_json_and_trace(tmp_path):
    trace = tmp_path / "t.json"
    p = simcore(
        "run",
        "configs/experiments/quickstart.yaml",
        "--set",
        "scenario.new_tokens=4",
        "--trace",
        str(trace),
        "--json",
    )
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert {"latency_s", "energy_j", "tokens_per_s", "prefill_time_s", "time_per_output_token_s"} <= d.keys()
    events = json.loads(trace.read_text())["traceEvents"]
    assert sum(1 for e in events if e["ph"] == "X") == d["ops"]  # tp=1: no collectives, one event per op


def test_run_trace_gzip_every_and_cap(tmp_path):
    import gzip

    base = ("run", "configs/experiments/quickstart.yaml", "--set", "scenario.new_tokens=9", "--json")
    full = tmp_path / "full.json.gz"
    p = simcore(*base, "--trace", str(full))
    assert p.returncode == 0 and p.stderr == "", p.stderr  # no bar, no warning off a terminal
    d = json.loads(p.stdout)
    with gzip.open(full) as f:  # a .gz name writes gzip
        trace = json.load(f)
    runs = {e["args"]["program"] for e in trace["traceEvents"] if e["ph"] == "X"}
    assert runs == set(range(9)) and "truncated" not in trace["otherData"]
    assert trace["otherData"]["events"] == d["ops"]

    every = tmp_path / "every.json"
    p = simcore(*base, "--trace", str(every), "--trace-every", "3")
    assert p.returncode == 0, p.stderr
    events = json.loads(every.read_text())["traceEvents"]
    assert {e["args"]["program"] for e in events if e["ph"] == "X"} == {0, 1, 4, 7}  # prefill, decode 1, 4, 7

    capped = tmp_path / "capped.json"
    p = simcore(*base, "--trace", str(capped), "--trace-max-mb", "0.5")
    assert p.returncode == 0
    assert len(p.stderr.splitlines()) == 1 and "truncated at 0.5 MB" in p.stderr
    trace = json.loads(capped.read_text())  # still valid JSON
    assert "truncated" in trace["otherData"]
    assert capped.stat().st_size < 2e6

    p = simcore(*base, "--trace", str(capped), "--trace-every", "0")
    assert p.returncode == 2 and "--trace-every" in p.stderr


def test_run_summary_names_busy_mfu_and_bandwidth_of_peak():
    p = simcore("run", "configs/experiments/quickstart.yaml", "--set", "scenario.new_tokens=2", "--json")
    d = json.loads(p.stdout)
    util = d["utilization"]
    assert {"gpu.busy", "gpu.mfu", "gpu.memory_bw_of_peak", "gpu.memory_bw_of_achievable"} <= util.keys()
    assert "gpu.compute" not in util and "gpu.memory_bw" not in util
    assert d["prefill_tokens_per_s"] > 0


def test_identical_devices_collapsed_in_a_table_say_per_device():
    from simcore.results import summary_table

    text = summary_table({"peak_memory_B": {"gpu0": 2.0**30, "gpu1": 2.0**30, "cpu": 1.0}})
    assert "peak_memory_B.gpu[0-1]" in text and "per device" in text.splitlines()[0]
    assert "per device" not in text.splitlines()[1]


def test_progress_bars_stay_off_without_a_terminal(monkeypatch):
    from simcore import progress

    monkeypatch.delenv("SIMCORE_PROGRESS", raising=False)
    items = list(range(100))
    assert progress.bar(items, 100, "x") is items  # pytest's stderr is not a terminal
    monkeypatch.setenv("SIMCORE_PROGRESS", "1")
    assert progress.bar(items, 10, "x", min_total=64) is items  # too short to bother
    monkeypatch.setenv("SIMCORE_PROGRESS", "0")
    assert not progress.enabled()


def test_ridge_point_is_spec_peak_over_spec_bandwidth():
    from simcore.component import ridge_point
    from simcore.system import load_system

    gpu = load_system("a100-sxm4-80gb").devices["gpu"]
    assert ridge_point(gpu, "bf16") == pytest.approx(312e12 / 2.039e12, rel=1e-3)
    assert gpu.derived()["ridge_point_spec.bf16"][0] == ridge_point(gpu, "bf16")


def test_run_prints_a_table_not_a_dict():
    p = simcore("run", "configs/experiments/quickstart.yaml", "--set", "scenario.new_tokens=2")
    assert p.returncode == 0
    assert "{" not in p.stdout and "latency_s" in p.stdout and " ms" in p.stdout


def test_help_lists_run():
    assert "run" in simcore("--help").stdout


@pytest.mark.parametrize("kind", ["gpu", "cpu", "nvme", "systolic", "link"])
def test_hw_params_documents_every_parameter_of_a_component_type(kind):
    from hardware.links import LINK_SCHEMA
    from simcore.component import COMPONENT_TYPES
    from simcore.config import describe

    d = json.loads(simcore("hw", "params", kind, "--json").stdout)
    schema = LINK_SCHEMA if kind == "link" else COMPONENT_TYPES[kind].SCHEMA
    assert [r["key"] for r in d] == [r[0] for r in describe(schema) if r[0] != "abstract"]
    assert all(r["meaning"] for r in d)  # every parameter has a one-line doc


def test_set_hardware_to_a_preset_replaces_the_experiments_machine(capsys):
    from simcore.cli import main

    argv = ["run", "configs/experiments/quickstart.yaml", "--set", "hardware=h100-sxm5-80gb", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hardware"] == "h100-sxm5-80gb" and out["latency_s"] > 0
