"""Serving with expert parallelism: the ep ranks are one replica (one scheduler, one KV pool summed over the
ranks, each iteration one program over every rank), checked against closed forms (the prefill and decode
scenarios on the same expert-parallel group, the KV pool from each rank's free memory), in the plan search,
and against the combinations it refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from models.llm import load_llm
from simcore.cli import main
from simcore.errors import ConfigError
from simcore.experiment import load_experiment

HW, MODEL, EP = "dgx-h100-8", "gpt-oss-20b", 2  # 32 experts, 24 layers: ep = 2 splits them 16 + 16
GiB = 2**30


def run(scenario: dict[str, Any], parallelism: dict[str, Any] | None = None, model: str = MODEL) -> Any:
    """Run an experiment given as YAML-shaped mappings (through the schema, as a file would be)."""
    doc = {"name": "t", "hardware": HW, "model": model, "dtype": "bf16",
           "parallelism": parallelism or {"ep": EP}, "scenario": scenario}  # fmt: skip
    return load_experiment(doc).run(keep_records=False)


def latency(scenario: dict[str, Any]) -> float:
    return run(scenario).summary["latency_s"]


def write_trace(tmp_path: Path, rows: list[str]) -> str:
    path = tmp_path / "trace.csv"
    path.write_text("\n".join(["arrival_s,prompt_tokens,output_tokens", *rows]) + "\n")
    return str(path)


# ------------------------------------------------------------------------------- closed forms


def test_at_low_load_ttft_is_one_prefill_on_the_ep_group_and_itl_its_batch_one_decode_step():
    # One client, a request a second after the last ended: no two share an iteration. The group's pass
    # gives each rank ceil(1 / ep) = 1 sequence (the busiest rank's program, every rank in lock step), so a
    # TTFT is the prefill scenario of batch ep on the same ranks (batch / ep = 1 per rank) and each decode
    # step the decode scenario of batch ep; the 31 steps run at contexts 257..287 costed at the mean rounded
    # up to a 16-token block, i.e. the decode scenario at context_len 271 (16 steps) and 287 (15 steps), as
    # in tests/test_serving.py.
    s = run({"kind": "serve", "requests": {"count": 4, "arrival": "closed", "concurrency": 1,
                                           "think_time": "1 s", "prompt_len": 256, "output_len": 32}}).summary  # fmt: skip
    prefill = latency({"kind": "prefill", "batch": EP, "prompt_len": 256})
    assert s["ttft_p50_s"] == pytest.approx(prefill, rel=1e-9)
    assert s["ttft_p99_s"] == pytest.approx(prefill, rel=1e-9)
    step = (
        16 * latency({"kind": "decode", "batch": EP, "context_len": 271})
        + 15 * latency({"kind": "decode", "batch": EP, "context_len": 287})
    ) / 31
    assert s["tpot_p50_s"] == pytest.approx(step, rel=1e-9)
    assert s["itl_p50_s"] == pytest.approx(step, rel=0.02)
    # within 2 % of the plain decode step of batch one per rank at the prompt's context
    assert s["tpot_p99_s"] == pytest.approx(latency({"kind": "decode", "batch": EP, "context_len": 256}),
                                            rel=0.02)  # fmt: skip
    assert s["iterations"] == 4 * 32 and s["ep"] == EP
    assert set(s["peak_memory_B"]) == {"gpu0", "gpu1"}  # one replica over both ranks


def test_two_requests_at_once_take_the_time_of_one_each_rank_running_one():
    # Two clients at once: both prompts share the first iteration and both decode together; ceil(2 / ep) = 1
    # sequence per rank, the same program as one request (attention data-parallel over the ranks), so the
    # latencies equal the lone request's exactly.
    lone = {"count": 1, "arrival": "closed", "concurrency": 1, "prompt_len": 128, "output_len": 8}
    one = run({"kind": "serve", "requests": lone}).summary
    two = run({"kind": "serve", "requests": {**lone, "count": 2, "concurrency": 2}}).summary
    assert two["iterations"] == one["iterations"] == 8 and two["mean_batch_size"] == 2
    assert two["ttft_p99_s"] == pytest.approx(one["ttft_p50_s"], rel=1e-9)
    assert two["e2e_p99_s"] == pytest.approx(one["e2e_p50_s"], rel=1e-9)


def test_the_kv_pool_is_the_ranks_free_memory_summed():
    # Each rank holds 1/ep of the routed experts and the rest whole (tp = 1), and whole sequences' KV: a
    # 16-token block is 16 x kv elements per token x 2 bytes (bf16) on the rank that holds the sequence. The
    # pool is ep x the blocks one rank fits in 0.9 x 80 GiB (gpu_memory_utilization; the H100 SXM5's HBM3)
    # after its weights and the profile run's workspace (a few percent at most, as in tests/test_serving.py).
    s = run({"kind": "serve", "requests": {"count": 2, "prompt_len": 16, "output_len": 2}}).summary
    spec = load_llm(MODEL)
    block_B = 16 * spec.kv_elements_per_token * 2
    weights_B = 2 * (spec.outer_params + spec.layers_params(0, spec.layers, ep=EP))
    free_B = 0.9 * 80 * GiB - weights_B
    assert s["kv_cache_blocks"] % EP == 0
    assert 0.97 * free_B / block_B < s["kv_cache_blocks"] / EP < free_B / block_B
    for gpu in ("gpu0", "gpu1"):
        assert s["peak_memory_B"][gpu] <= 0.9 * 80 * GiB


def test_a_sequence_holds_at_most_one_ranks_blocks(tmp_path):
    # 4 blocks of 16 tokens per rank, 8 in the pool: a request of 80 + 2 tokens needs 6 blocks, more than one
    # rank holds, and is rejected although the pool could hold it; one of 32 + 2 (3 blocks) is served.
    trace = write_trace(tmp_path, ["0.0,80,2", "0.0,32,2"])
    s = run({"kind": "serve", "requests": {"trace": trace}, "kv_cache": {"num_blocks": 4}}).summary
    assert s["kv_cache_blocks"] == 4 * EP
    assert s["rejected_requests"] == 1 and s["requests"] == 1


# ------------------------------------------------------------------------------------- plan


def experiment(tmp_path: Path, model: str = MODEL) -> str:
    exp = tmp_path / "p.yaml"
    exp.write_text(f"hardware: {HW}\nmodel: {model}\nscenario: {{kind: serve, requests: {{count: 16, "
                   f"rate_per_s: 40, prompt_len: 128, output_len: 4}}, usd_per_gpu_hour: 2}}\n")  # fmt: skip
    return str(exp)


def plan(capsys: pytest.CaptureFixture, *argv: str) -> dict:
    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_search_simulates_expert_parallel_groups_scaled_by_their_replicas(tmp_path, capsys):
    exp = experiment(tmp_path)
    out = plan(capsys, exp, "--max-num-seqs", "16", "--tp", "8", "--ep", "2,3", "--out", str(tmp_path / "s"))
    rows = {(p["tp"], p["pp"], p["ep"], p["dp"]): p for p in out["plans"]}
    assert sorted(rows) == [(1, 1, 2, 4), (8, 1, 1, 1)]
    assert [s["reason"] for s in out["skipped"]] == [
        f"ep=3 must divide the 8 accelerators and {MODEL}'s 32 experts"
    ]
    # the ep row is one group of 2 ranks on every 4th request (round-robin), its rates scaled by 4
    group = load_experiment(exp, ["parallelism.ep=2", "parallelism.tp=1", "scenario.scheduler.max_num_seqs=16",
                                  "scenario.requests.split=4"]).run(keep_records=False).summary  # fmt: skip
    ep = rows[(1, 1, 2, 4)]
    assert ep["throughput_tokens_per_s"] == pytest.approx(4 * group["throughput_tokens_per_s"], rel=1e-9)
    assert ep["goodput_requests_per_s"] == pytest.approx(4 * group["goodput_requests_per_s"], rel=1e-9)
    assert ep["ttft_p99_s"] == pytest.approx(group["ttft_p99_s"], rel=1e-9)
    assert ep["tokens_per_s_per_gpu"] == pytest.approx(ep["throughput_tokens_per_s"] / 8, rel=1e-12)


def test_disaggregated_plan_search_skips_expert_parallel_groups_with_the_reason(tmp_path, capsys):
    out = plan(capsys, experiment(tmp_path), "--max-num-seqs", "16", "--tp", "8", "--ep", "2",
               "--prefill-replicas", "0,1", "--out", str(tmp_path / "s"))  # fmt: skip
    assert [(p["tp"], p["ep"]) for p in out["plans"]] == [(8, 1)]
    ep = [s for s in out["skipped"] if s.get("ep") == 2]
    assert [s.get("prefill_replicas", 0) for s in ep] == [0, 1]
    assert all("one expert-parallel group" in s["reason"] for s in ep)


def test_dense_models_list_ep_as_skipped(tmp_path, capsys):
    out = plan(capsys, experiment(tmp_path, "llama-3-8b"), "--max-num-seqs", "16", "--tp", "8", "--ep", "2",
               "--out", str(tmp_path / "s"))  # fmt: skip
    assert [s["reason"] for s in out["skipped"]] == ["llama-3-8b is dense: no experts to split"]


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("parallelism, scenario, where", [
    ("{ep: 2, dp: 2}", "", r"parallelism.dp: serving with expert parallelism \(ep=2\) does not combine with "
                           r"parallelism.dp"),
    ("{ep: 2}", ", speculative: {draft: gpt-oss-20b}", r"scenario.speculative.draft: .*does not combine"),
    ("{ep: 2}", ", disaggregation: {attention: {devices: 'gpu[4-7]'}}",
     r"scenario.disaggregation.attention.devices: .*does not combine"),
    ("{ep: 2}", ", scheduler: {preemption: swap}", r"scenario.scheduler.preemption: .*does not combine"),
])  # fmt: skip
def test_combinations_not_modelled_are_one_line_errors(tmp_path, capsys, parallelism, scenario, where):
    exp = tmp_path / "e.yaml"
    exp.write_text(f"hardware: {HW}\nmodel: {MODEL}\nparallelism: {parallelism}\n"
                   f"scenario: {{kind: serve{scenario}}}\n")  # fmt: skip
    with pytest.raises(ConfigError, match=where):
        load_experiment(exp)
    assert main(["run", str(exp)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_dense_model_with_ep_is_one_line(tmp_path, capsys):
    exp = tmp_path / "e.yaml"
    exp.write_text(f"hardware: {HW}\nmodel: llama-3-8b\nparallelism: {{ep: 2}}\nscenario: {{kind: serve}}\n")
    assert main(["run", str(exp)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "parallelism.ep" in err and "dense" in err
