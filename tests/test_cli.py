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
