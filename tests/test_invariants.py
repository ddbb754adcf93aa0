"""Run invariants (simcore.invariants): a broken one is an InternalError naming the figure, exit 70 in one
line; attention shapes are refused when built; `simcore op` checks that the operands fit."""

import copy
import dataclasses
import math
from pathlib import Path

import pytest

from simcore import cli
from simcore.errors import ConfigError, InternalError, OutOfMemory
from simcore.experiment import Decode, load_experiment, simulate
from simcore.invariants import check_records, check_result
from simcore.oprun import op_report
from simcore.ops import Attention, AttentionGrad, Gemm
from simcore.results import Result
from simcore.system import load_system

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = sorted((ROOT / "configs" / "experiments").glob("*.yaml"))
#: per-op records are checked for experiments up to this many ops (GPT-3's 1.2 M records take seconds)
RECORDS_UP_TO = 100_000


@pytest.fixture(scope="module")
def decode() -> Result:
    return simulate("a100-sxm4-80gb", "llama-2-7b", Decode(batch=1, context_len=512))


def _broken(res: Result, **changes) -> Result:
    """A copy of `res` whose summary has `changes` (dotted keys reach into nested figures)."""
    summary = copy.deepcopy(res.summary)
    for key, value in changes.items():
        *outer, last = key.split("__")
        d = summary
        for k in outer:
            d = d[k]
        d[last] = value
    return Result(summary, res.ledger)


def test_a_real_run_passes_and_its_records_too(decode):
    assert decode.check(records=True) is decode
    assert decode.ledger.check_records() == decode.summary["ops"]


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"latency_s": math.nan}, "latency_s = nan is not finite"),
        ({"tokens_per_s": math.inf}, "tokens_per_s = inf is not finite"),
        ({"energy_j": -1.0}, "energy_j = -1.0 is negative"),
        ({"latency_s": 0.0}, "latency_s = 0.0 is not positive"),
        ({"utilization__gpu.busy": 1.5}, "utilization.gpu.busy = 1.5 is above 1"),
        (
            {"utilization__gpu.memory_bw_of_peak": -0.1},
            "utilization.gpu.memory_bw_of_peak = -0.1 is negative",
        ),
        ({"peak_memory_B__gpu": math.nan}, "peak_memory_B.gpu = nan is not finite"),
        ({"peak_memory_B__gpu": 81e9 * 1.1}, "peak_memory_B.gpu = 89100000000.0 exceeds the device's memory"),
        ({"energy_by_component_j__gpu": 1.0}, "energy_j = "),
    ],
)
def test_a_broken_figure_is_an_internal_error_naming_it(decode, changes, named):
    with pytest.raises(InternalError, match="^internal error: ") as e:
        _broken(decode, **changes).check()
    msg = str(e.value)
    assert named in msg and "\n" not in msg and e.value.exit_code == 70


def test_the_energy_total_must_be_the_sum_of_its_components(decode):
    parts = decode.summary["energy_by_component_j"]
    off = decode.summary["energy_j"] * (1 + 1e-6)
    with pytest.raises(InternalError, match=r"energy_j = .* is not the sum of energy_by_component_j"):
        _broken(decode, energy_j=off).check()
    # within rounding (rel 1e-9) it holds; a utilization a hair above 1 from rounding passes too
    _broken(
        decode, energy_j=sum(parts.values()) * (1 + 1e-12), **{"utilization__gpu.busy": 1 + 1e-12}
    ).check()


def test_the_ledger_aggregates_are_checked(decode):
    led = decode.ledger
    over = dataclasses.replace(led, peak_B={**led.peak_B, "gpu": 1e12})
    with pytest.raises(InternalError, match=r"peak_memory_B\.gpu = 1000000000000\.0 exceeds"):
        check_result({k: v for k, v in decode.summary.items() if k != "peak_memory_B"}, over)
    (group, cost), n = next(iter(led.costs.items()))
    bad = dataclasses.replace(cost, actions={**cost.actions, "flop.bf16": -2.0})
    costs = copy.copy(led.costs)
    del costs[(group, cost)]
    costs[(group, bad)] = n
    with pytest.raises(InternalError, match=r"cost of an op on gpu: flop\.bf16 = -2\.0 is negative"):
        check_result(decode.summary, dataclasses.replace(led, costs=costs))
    with pytest.raises(InternalError, match=r"ledger\.now_s = nan is not finite"):
        check_result(decode.summary, dataclasses.replace(led, now_s=math.nan))


def test_missing_latency_is_an_internal_error(decode):
    summary = {k: v for k, v in decode.summary.items() if k != "latency_s"}
    with pytest.raises(InternalError, match="latency_s = None is missing"):
        check_result(summary)


def test_records_are_checked_on_demand(decode):
    recs = list(decode.records())
    assert check_records(recs, decode.ledger.now_s) == len(recs)
    for field, value, why in [
        ("flops", -1.0, "is negative"),
        ("duration_s", math.nan, "is not finite"),
        ("end_s", -1.0, "is negative"),
        ("end_s", 10.0, "is after the run's end"),
    ]:
        forged = [dict(r) for r in recs[:3]]
        forged[1][field] = value
        with pytest.raises(InternalError, match=rf"record 1 \(.*\)\.{field} = .* {why}"):
            check_records(forged, decode.ledger.now_s)
    forged = [dict(recs[0], start_s=recs[0]["end_s"] + 1e-6)]
    with pytest.raises(InternalError, match=r"record 0 .*end_s = .* is before its start_s"):
        check_records(forged)


def _nan_norm_costs(monkeypatch):
    """Every norm on a GPU costs NaN seconds (the real cost stays in the component's cache)."""
    from hardware.gpu import GPU

    real = GPU.op_cost

    def op_cost(self, op):
        cost = real(self, op)
        return dataclasses.replace(cost, duration_s=math.nan) if op.kind == "norm" else cost

    monkeypatch.setattr(GPU, "op_cost", op_cost)


def test_a_run_with_a_nan_cost_ends_in_an_internal_error(monkeypatch):
    _nan_norm_costs(monkeypatch)
    with pytest.raises(InternalError, match=r"is not finite"):
        simulate("a100-sxm4-80gb", "llama-2-7b", Decode(batch=1, context_len=64), keep_records=False)


def test_the_cli_reports_a_broken_invariant_in_one_line_with_exit_70(monkeypatch, capsys):
    _nan_norm_costs(monkeypatch)
    rc = cli.main(
        ["run", str(ROOT / "configs/experiments/quickstart.yaml"), "--set", "scenario.new_tokens=2"]
    )
    err = capsys.readouterr().err
    assert rc == 70
    assert err.startswith("simcore: internal error: ") and err.count("\n") == 1 and "nan" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------- attention shapes


@pytest.mark.parametrize(
    ("shape", "field", "text"),
    [
        ({"q_len": 8, "kv_len": 4, "causal": True}, "q_len", "causal attention needs q_len <= kv_len"),
        ({"heads": 8, "kv_heads": 3}, "kv_heads", "heads 8 is not a multiple of kv_heads 3"),
        ({"heads": 0}, "heads", "heads must be >= 1, got 0"),
        ({"kv_heads": 0}, "kv_heads", "kv_heads must be >= 1"),
        ({"batch": 0}, "batch", "batch must be >= 1"),
        ({"q_len": 0}, "q_len", "q_len must be >= 1"),
        ({"kv_len": 0, "causal": False}, "kv_len", "kv_len must be >= 1"),
        ({"head_dim": -1}, "head_dim", "head_dim must be >= 1"),
        ({"head_dim": math.nan}, "head_dim", "head_dim must be >= 1"),
    ],
)
@pytest.mark.parametrize("cls", [Attention, AttentionGrad])
def test_a_bad_attention_shape_is_refused_naming_the_field(cls, shape, field, text):
    with pytest.raises(ConfigError, match=text) as e:
        cls("a", "bf16", **shape)
    assert e.value.key == field and "\n" not in str(e.value)


def test_good_attention_shapes_are_built_and_a_decode_step_cannot_shrink_below_its_queries():
    Attention("a", heads=32, kv_heads=8, q_len=4, kv_len=4096)  # causal, queries at the end
    Attention("a", heads=8, kv_heads=8, q_len=8, kv_len=4, causal=False)  # cross-attention: any lengths
    op = Attention("a", heads=8, kv_heads=8, q_len=1, kv_len=1)
    assert op.with_kv_len(2).kv_len == 2 and op.flops > 0
    with pytest.raises(ConfigError, match="q_len <= kv_len"):
        Attention("a", q_len=16, kv_len=16).with_kv_len(8)
    with pytest.raises(ConfigError, match="kv_len must be >= 1"):
        op.with_kv_len(0)


def test_the_attention_command_refuses_a_bad_shape_in_one_line(capsys):
    rc = cli.main(["op", "attention", "--hw", "a100-sxm4-80gb", "--heads", "8", "--q-len", "8", "--kv-len", "4",
                   "--causal"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "q_len" in err and "kv_len" in err


# ------------------------------------------------------------------------------------- op capacity


def test_op_operands_must_fit_the_device_memory():
    system = load_system("a100-sxm4-80gb")
    cap = system.memory_of("gpu").capacity_B
    big = Gemm("gemm", "bf16", m=1_000_000, n=1_000_000, k=1_000_000)
    with pytest.raises(OutOfMemory) as e:
        op_report(system, big)
    assert e.value.needed_B == big.bytes and e.value.capacity_B == cap and e.value.device == "gpu"
    assert "gemm operands A+B+C" in str(e.value)
    assert op_report(system, Gemm("gemm", "bf16", m=4096, n=4096, k=4096))["time_s"] > 0


@pytest.mark.parametrize(
    "args",
    [
        ["gemm", "-m", "1000000", "-n", "1000000", "-k", "1000000"],
        ["attention", "--heads", "64", "--q-len", "1000000", "--batch", "64"],
    ],
)
def test_the_op_commands_report_operands_that_do_not_fit_as_out_of_memory(args, capsys):
    rc = cli.main(["op", args[0], "--hw", "a100-sxm4-80gb", *args[1:]])
    err = capsys.readouterr().err
    assert rc == 3 and err.count("\n") == 1 and f"{args[0]} operands" in err and "free of 80 GiB" in err


# ------------------------------------------------------------------------------ shipped experiments


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_shipped_experiment_keeps_the_invariants(path):
    exp = load_experiment(path)
    res = exp.run(keep_records=True)  # account() already checked the summary; check again, and records
    check_result(res.summary, res.ledger)
    if res.summary["ops"] <= RECORDS_UP_TO:
        assert res.ledger.check_records() == res.summary["ops"]
