"""Serving: request streams, the paged KV cache, the schedulers and the serve scenario, checked against
closed forms (the prefill and decode scenarios, ceil(tokens / block), Little's law, the decode step at
the batch limit) and against broken input."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simcore.cli import main
from simcore.errors import ConfigError, OutOfMemory
from simcore.experiment import Decode, Prefill, load_experiment, simulate
from simcore.serving import PagedKVCache, RequestSpec
from simcore.serving.requests import fixed, lengths, load_trace

ROOT = Path(__file__).resolve().parent.parent
HW, MODEL = "h100-sxm5-80gb", "llama-3-8b"
#: the experiment the command-line contract names, verbatim
CONTRACT = ("name: serve\nhardware: h100-sxm5-80gb\nmodel: llama-3-8b\ndtype: bf16\n"
            "scenario: {kind: serve, requests: {count: 50, arrival: poisson, rate_per_s: 5, prompt_len: 256, "
            "output_len: 32}, scheduler: {name: vllm}}\n")  # fmt: skip


def serve(hardware: str = HW, parallelism: dict | None = None, **scenario: Any) -> Any:
    """Run a serve experiment given as YAML-shaped mappings (through the schema, as a file would be)."""
    doc = {"name": "t", "hardware": hardware, "model": MODEL, "dtype": "bf16",
           "scenario": {"kind": "serve", **scenario}}  # fmt: skip
    if parallelism:
        doc["parallelism"] = parallelism
    return load_experiment(doc).run(keep_records=False)


def latency(scenario: Any) -> float:
    return simulate(HW, MODEL, scenario, keep_records=False).summary["latency_s"]


def write_trace(
    tmp_path: Path, rows: list[str], header: str = "arrival_s,prompt_tokens,output_tokens"
) -> str:
    path = tmp_path / "trace.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


# ------------------------------------------------------------------------------ the contract


def test_the_contract_experiment_prints_the_serving_keys(tmp_path, capsys):
    path = tmp_path / "serve.yaml"
    path.write_text(CONTRACT)
    assert main(["run", str(path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    for key in ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "itl_p50_s", "e2e_p50_s", "e2e_p99_s",
                "throughput_tokens_per_s", "requests_per_s", "goodput_requests_per_s", "preemptions",
                "kv_cache_peak_blocks", "kv_cache_peak_fraction", "prefix_hit_rate", "energy_per_token_j",
                "iterations"):  # fmt: skip
        assert key in s and math.isfinite(s[key]), key
    assert s["requests"] == 50 and s["output_tokens"] == 50 * 32 and s["prompt_tokens"] == 50 * 256
    # defaults: MLPerf's server limits
    assert s["slo_ttft_s"] == 2.0 and s["slo_tpot_s"] == 0.2


def test_the_shipped_example_runs_fast():
    t0 = time.perf_counter()
    s = (
        load_experiment(ROOT / "configs/experiments/serve-llama3-8b-h100.yaml")
        .run(keep_records=False)
        .summary
    )
    assert time.perf_counter() - t0 < 10.0
    assert s["requests"] == 50 and s["rejected_requests"] == 0 and s["slo_ttft_s"] == 0.5


def test_same_seed_same_result_and_another_seed_another():
    a = serve(
        requests={"count": 30, "rate_per_s": 10, "prompt_len": 128, "output_len": 16, "seed": 7}
    ).summary
    b = serve(
        requests={"count": 30, "rate_per_s": 10, "prompt_len": 128, "output_len": 16, "seed": 7}
    ).summary
    c = serve(
        requests={"count": 30, "rate_per_s": 10, "prompt_len": 128, "output_len": 16, "seed": 8}
    ).summary
    assert a == b
    assert a["ttft_p99_s"] != c["ttft_p99_s"]


# ------------------------------------------------------------------------------- closed forms


def test_at_low_load_ttft_is_a_lone_prefill_and_tpot_the_batch_one_decode_step():
    # One client sending a request a second after the last one ended: requests never share an iteration,
    # each TTFT is exactly the prefill scenario's latency (the same pass), each TPOT the mean of its 31
    # decode steps. Those run at contexts 257..287, costed at the mean rounded up to a 16-token block: 272
    # for steps 1..16 and 288 for steps 17..31, i.e. the decode scenario at context_len 271 and 287 (it
    # feeds one token more).
    res = serve(requests={"count": 4, "arrival": "closed", "concurrency": 1, "think_time": "1 s",
                          "prompt_len": 256, "output_len": 32})  # fmt: skip
    s = res.summary
    prefill = latency(Prefill(batch=1, prompt_len=256))
    assert s["ttft_p50_s"] == pytest.approx(prefill, rel=1e-9)
    assert s["ttft_p99_s"] == pytest.approx(prefill, rel=1e-9)
    tpot = (
        16 * latency(Decode(batch=1, context_len=271)) + 15 * latency(Decode(batch=1, context_len=287))
    ) / 31
    assert s["tpot_p50_s"] == pytest.approx(tpot, rel=1e-9)
    assert s["tpot_p99_s"] == pytest.approx(tpot, rel=1e-9)
    # within 2 % of the plain decode step at the prompt's context
    assert s["tpot_p50_s"] == pytest.approx(latency(Decode(batch=1, context_len=256)), rel=0.02)
    assert s["iterations"] == 4 * 32 and s["events"] == s["iterations"]  # one engine event per iteration
    assert s["e2e_p50_s"] == pytest.approx(prefill + 31 * tpot, rel=1e-9)


def test_throughput_at_saturation_is_bounded_by_the_max_num_seqs_decode_step():
    # 64 requests at once, at most 8 in a batch: once the batch is full every iteration is a decode step
    # of 8 sequences (with a new prompt's chunk when one ends), so throughput is at most 8 tokens per
    # batch-8 step at the shortest context and, decode dominating (512 out, 64 in), close to it.
    s = serve(requests={"count": 64, "rate_per_s": 1e6, "prompt_len": 64, "output_len": 512},
              scheduler={"max_num_seqs": 8}).summary  # fmt: skip
    fastest = 8 / latency(Decode(batch=8, context_len=64))
    slowest = 8 / latency(Decode(batch=8, context_len=64 + 512))
    assert s["mean_batch_size"] == pytest.approx(8, rel=0.01)
    assert 0.9 * slowest < s["throughput_tokens_per_s"] <= fastest


def test_littles_law_holds_on_the_served_requests():
    # a bursty stream (Gamma, cv 3) under load: the time-average number of requests in the system,
    # integrated from the records' arrival and finish times, equals throughput x mean latency
    res = serve(requests={"count": 200, "arrival": "gamma", "cv": 3.0, "rate_per_s": 30,
                          "prompt_len": {"dist": "lognormal", "mean": 300, "cv": 1.0, "max": 2048},
                          "output_len": {"dist": "uniform", "min": 8, "max": 128}, "seed": 3})  # fmt: skip
    s, recs = res.summary, res.requests
    assert len(recs) == s["requests"] == 200
    span = max(r.finish_s for r in recs) - min(r.arrival_s for r in recs)
    assert span == pytest.approx(s["latency_s"], rel=1e-12)
    events = sorted([(r.arrival_s, 1) for r in recs] + [(r.finish_s, -1) for r in recs])
    area, level, t_prev = 0.0, 0, events[0][0]
    for t, step in events:
        area += level * (t - t_prev)
        level, t_prev = level + step, t
    assert area / span == pytest.approx(s["requests_per_s"] * s["e2e_mean_s"], rel=1e-9)
    assert s["mean_requests_in_system"] == pytest.approx(area / span, rel=1e-9)
    assert s["requests_per_s"] * s["e2e_mean_s"] > 2  # loaded: requests overlap


def test_kv_blocks_are_ceil_tokens_over_block_size_per_sequence(tmp_path):
    # three prompts admitted in one iteration, each done after its prefill: the peak is the sum of
    # ceil(prompt / 16) = 7 + 3 + 4
    trace = write_trace(tmp_path, ["0,100,1", "0,37,1", "0,64,1"])
    s = serve(requests={"trace": trace}, kv_cache={"block_size": 16}).summary
    assert s["kv_cache_peak_blocks"] == 7 + 3 + 4 and s["iterations"] == 1
    # one sequence to the end: prompt 100 + 19 fed tokens = 119 tokens in ceil(119 / 32) = 4 blocks of 32
    trace = write_trace(tmp_path, ["0,100,20"])
    s = serve(requests={"trace": trace}, kv_cache={"block_size": 32}).summary
    assert s["kv_cache_peak_blocks"] == 4


def test_kv_capacity_comes_from_free_memory_after_weights_and_workspace():
    s = serve(requests={"count": 2, "prompt_len": 16, "output_len": 2}).summary
    spec = __import__("models.llm", fromlist=["load_llm"]).load_llm(MODEL)
    block_B = 16 * spec.kv_elements_per_token * 2  # bf16
    free_B = 0.9 * 80 * 2**30 - spec.params * 2
    assert 0.97 * free_B / block_B < s["kv_cache_blocks"] < free_B / block_B
    assert s["peak_memory_B"]["gpu"] <= 0.9 * 80 * 2**30


def test_preemption_happens_exactly_when_kv_capacity_is_exceeded():
    # two 64-token prompts decoding 40 tokens hold ceil((64 + j) / 16) blocks each after step j, at most
    # ceil(103 / 16) = 7: 14 blocks serve both without preemption, 13 force one (at step 33, 97 tokens)
    def run(blocks: int, mode: str = "recompute", hardware: str = HW, **kw: Any) -> dict:
        return serve(hardware, requests={"count": 2, "arrival": "closed", "concurrency": 2, "prompt_len": 64,
                                         "output_len": 40},
                     scheduler={"preemption": mode}, kv_cache={"num_blocks": blocks, "watermark": 0}, **kw).summary  # fmt: skip

    assert run(14)["preemptions"] == 0
    s = run(13)
    assert s["preemptions"] == 1 and s["requests"] == 2 and s["kv_cache_peak_blocks"] <= 13
    # the preempted one is recomputed after the other ends (13 blocks cannot hold 7 + 6)
    assert s["iterations"] == 1 + 39 + 1 + (40 - 33 - 1)
    # swapping instead (a host CPU is needed): its 6 blocks go out and come back over PCIe
    sw = run(13, "swap", "dgx-h100-8", parallelism={"tp": 1})
    block_B = 16 * 2 * 32 * 8 * 128 * 2
    assert sw["swaps"] == 1 and sw["kv_swapped_B"] == pytest.approx(2 * 6 * block_B)
    # it waits for room for its next token, comes back in an iteration of its own (the copy), then decodes
    assert sw["requests"] == 2 and sw["iterations"] == 1 + 39 + 1 + (40 - 33)
    with pytest.raises(ConfigError, match="preemption: swap needs a host CPU"):
        run(13, "swap")


def test_a_request_larger_than_the_whole_cache_is_rejected_not_a_crash(tmp_path):
    trace = write_trace(tmp_path, ["0,64,4", "0,400,4", "1,64,4"])
    s = serve(requests={"trace": trace}, kv_cache={"num_blocks": 10, "watermark": 0}).summary
    assert s["rejected_requests"] == 1 and s["requests"] == 2
    with pytest.raises(OutOfMemory, match="KV cache of request"):
        serve(requests={"trace": write_trace(tmp_path, ["0,400,4"])}, kv_cache={"num_blocks": 10})


def test_prefix_caching_skips_the_shared_prefix_after_its_first_computation(tmp_path):
    # 10 requests 1 s apart share a 512-token prefix of their 600-token prompts: the first computes it,
    # the 9 others find it cached (hit rate 9 x 512 / 6000) and prefill only their 88 own tokens
    rows = [f"{i},600,4,7,512" for i in range(10)]
    trace = write_trace(tmp_path, rows, "arrival_s,prompt_tokens,output_tokens,prefix_id,prefix_tokens")
    res = serve(requests={"trace": trace}, kv_cache={"prefix_caching": True})
    s = res.summary
    assert s["prefix_hit_rate"] == pytest.approx(9 * 512 / 6000)
    ttft = sorted(res.requests, key=lambda r: r.id)
    assert ttft[0].prefix_hit_tokens == 0 and all(r.prefix_hit_tokens == 512 for r in ttft[1:])
    assert ttft[1].ttft_s < 0.5 * ttft[0].ttft_s
    off = serve(requests={"trace": trace}).summary
    assert off["prefix_hit_rate"] == 0 and off["ttft_p50_s"] == pytest.approx(ttft[0].ttft_s)


def test_prefix_cache_blocks_are_shared_and_evicted_when_idle():
    kv = PagedKVCache(num_blocks=10, block_size=16, prefix_caching=True)
    kv.allocate(4)  # a sequence computes a 64-token prefix ...
    assert kv.adopt(5, 64) and kv.used == 4
    assert kv.lookup(5, 64, 100) == 64  # ... a second one shares it
    kv.drop(5)
    kv.drop(5)
    assert kv.free == 10  # idle prefix blocks count as free
    kv.allocate(8)  # evicts the idle prefix
    assert 5 not in kv.prefixes and kv.used == 8


# ------------------------------------------------------------------------------- schedulers


def test_sarathi_chunks_a_long_prompt_into_its_token_budget():
    s = serve(
        requests={"count": 1, "prompt_len": 2048, "output_len": 8}, scheduler={"name": "sarathi"}
    ).summary
    assert s["iterations"] == 2048 // 512 + 7
    v = serve(requests={"count": 1, "prompt_len": 2048, "output_len": 8}).summary
    assert v["iterations"] == 1 + 7 and v["ttft_p50_s"] < s["ttft_p50_s"]


def test_without_chunked_prefill_a_new_prompt_stalls_the_running_decodes():
    # vLLM V0's prefill-first: a prompt arriving mid-generation gets an iteration of its own, so the
    # decoding request waits a whole prefill between two tokens; Sarathi's 512-token chunks ride with the
    # decode, which waits about half as long
    req = {"count": 2, "rate_per_s": 20, "prompt_len": 1024, "output_len": 64, "seed": 1}
    stall = serve(requests=req, scheduler={"chunked_prefill": False}).summary
    chunks = serve(requests=req, scheduler={"name": "sarathi"}).summary
    prefill = latency(Prefill(batch=1, prompt_len=1024))
    assert stall["itl_max_s"] > prefill > 1.5 * chunks["itl_max_s"]


def test_static_batching_makes_late_arrivals_wait_for_the_batch_to_drain(tmp_path):
    trace = write_trace(tmp_path, ["0,128,64", "0.05,128,8"])
    static = {r.id: r for r in serve(requests={"trace": trace}, scheduler={"name": "static"}).requests}
    cont = {r.id: r for r in serve(requests={"trace": trace}).requests}
    assert static[1].first_token_s > static[0].finish_s
    assert cont[1].first_token_s < cont[0].finish_s


def test_priority_policy_serves_lower_priority_values_first(tmp_path):
    trace = write_trace(
        tmp_path, ["0,64,4,2", "0,64,4,0", "0,64,4,1"], "arrival_s,prompt_tokens,output_tokens,priority"
    )

    def order(policy: str) -> list[int]:
        recs = serve(requests={"trace": trace}, scheduler={"max_num_seqs": 1, "policy": policy}).requests
        return [r.id for r in sorted(recs, key=lambda r: r.first_token_s)]

    assert order("fcfs") == [0, 1, 2]
    assert order("priority") == [1, 2, 0]


def test_a_closed_loop_keeps_its_clients_busy():
    s = serve(requests={"count": 40, "arrival": "closed", "concurrency": 4, "prompt_len": 128,
                        "output_len": 16}).summary  # fmt: skip
    assert s["requests"] == 40
    assert s["mean_requests_in_system"] == pytest.approx(4, rel=0.02)  # always 4 in flight (no think time)


# ---------------------------------------------------------------------------------- streams


def test_poisson_and_gamma_gaps_have_their_mean_and_variation():
    n = 20000
    gaps = np.diff([0.0] + [r.arrival_s for r in RequestSpec(count=n, rate_per_s=5.0, seed=1).make()])
    assert abs(gaps.mean() - 0.2) < 4 * 0.2 / math.sqrt(n)  # 4 standard errors
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)
    gaps = np.diff([0.0] + [r.arrival_s for r in RequestSpec(count=n, arrival="gamma", cv=3.0, rate_per_s=5.0,
                                                              seed=1).make()])  # fmt: skip
    assert gaps.mean() == pytest.approx(0.2, rel=0.1) and gaps.std() / gaps.mean() == pytest.approx(
        3.0, rel=0.1
    )


def test_length_distributions_stay_in_range_and_keep_their_mean():
    d = lengths({"dist": "lognormal", "mean": 200, "cv": 0.5, "max": 100000})
    x = d.sample(np.random.default_rng(0), 20000)
    assert x.min() >= 1 and x.mean() == pytest.approx(200, rel=0.02)
    u = lengths({"dist": "uniform", "min": 10, "max": 20}).sample(np.random.default_rng(0), 1000)
    assert u.min() == 10 and u.max() == 20
    assert lengths(256) == fixed(256) == lengths({"dist": "fixed", "mean": 256})
    for bad, msg in [({"dist": "zipf"}, "dist: expected one of"), ({"dist": "uniform", "min": 5}, "needs min and max"),
                     ({"dist": "lognormal", "mean": 5, "sigma": 1}, "unknown key 'sigma'"), (-3, "must be >"),
                     ("many", "expected an integer"), ({"dist": "uniform", "min": 9, "max": 3}, "above max")]:  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            lengths(bad)


def test_shipped_traces_follow_their_published_statistics():
    def stats(name: str) -> tuple[np.ndarray, np.ndarray]:
        reqs = load_trace(name)
        assert len(reqs) == 300 and all(r.prompt_tokens + r.output_tokens <= 8192 for r in reqs)
        return np.array([r.prompt_tokens for r in reqs]), np.array([r.output_tokens for r in reqs])

    p, o = stats("azure-conv-2023")  # Splitwise: medians 1020 / 129
    assert np.median(p) == pytest.approx(1020, rel=0.1) and np.median(o) == pytest.approx(129, rel=0.15)
    p, o = stats("azure-code-2023")  # medians 1500 / 13
    assert np.median(p) == pytest.approx(1500, rel=0.1) and np.median(o) == pytest.approx(13, rel=0.15)
    p, o = stats("sharegpt")  # vLLM paper: means 161 / 338
    assert p.mean() == pytest.approx(161, rel=0.15) and o.mean() == pytest.approx(338, rel=0.15)
    p, o = stats("lmsys-chat")  # LMSYS-Chat-1M: means 69.5 / 214.5
    assert p.mean() == pytest.approx(69.5, rel=0.15) and o.mean() == pytest.approx(214.5, rel=0.15)


def test_a_shipped_trace_replays_by_name():
    s = serve(requests={"trace": "lmsys-chat", "count": 40}).summary
    assert s["requests"] == 40 and s["prompt_tokens"] == sum(
        r.prompt_tokens for r in load_trace("lmsys-chat")[:40]
    )


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("rows, where", [
    (["0,100,abc"], "trace.csv:2: column output_tokens: expected an integer"),
    (["0,100,5", "-1,100,5"], "trace.csv:3: column arrival_s: expected a time"),
    (["0,100"], "trace.csv:2: 2 cells, the header has 3"),
    (["0,0,5"], "trace.csv:2: column prompt_tokens"),
])  # fmt: skip
def test_a_bad_trace_cell_is_one_line_naming_file_line_and_column(tmp_path, capsys, rows, where):
    trace = write_trace(tmp_path, rows)
    exp = tmp_path / "e.yaml"
    exp.write_text(
        f"hardware: {HW}\nmodel: {MODEL}\nscenario:\n  kind: serve\n  requests: {{trace: {trace}}}\n"
    )
    assert main(["run", str(exp), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and where in err and "e.yaml" in err


@pytest.mark.parametrize("scenario, where", [
    ("requests: {count: 5, bogus: 1}", r"e.yaml:5: scenario.requests.bogus: unknown key 'bogus'"),
    ("requests: {rate_per_s: 5 /s}", r"e.yaml:5: scenario.requests.rate_per_s: expected a number"),
    ("slo: {ttft: 2}", r"e.yaml:5: scenario.slo.ttft: .*unit"),
    ("scheduler: {name: orca}", r"e.yaml:5: scenario.scheduler.name: expected one of vllm, sarathi, static"),
    ("requests: {prompt_len: 8000, output_len: 500}", r"scenario.requests: llama-3-8b accepts at most 8192"),
    ("requests: {prompt_len: {dist: lognormal, mean: 9}}", r"prompt up to 1048576"),
    ("requests: {arrival: trace}", r"scenario.requests.trace: arrival: trace needs a trace file"),
    ("requests: {trace: no-such-trace}", r"no trace 'no-such-trace'"),
    ("requests: [1, 2]", r"e.yaml:5: scenario.requests: expected a mapping"),
])  # fmt: skip
def test_bad_serve_input_is_one_line_naming_file_line_and_key(tmp_path, capsys, scenario, where):
    exp = tmp_path / "e.yaml"
    exp.write_text(f"hardware: {HW}\nmodel: {MODEL}\nscenario:\n  kind: serve\n  {scenario}\n")
    with pytest.raises(ConfigError, match=where):
        load_experiment(exp)
    assert main(["run", str(exp)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_disaggregation_needs_a_decode_replica(tmp_path):
    exp = tmp_path / "e.yaml"
    exp.write_text(f"hardware: dgx-h100-8\nmodel: {MODEL}\nparallelism: {{tp: 4, dp: 2}}\n"
                   "scenario: {kind: serve, disaggregation: {prefill_replicas: 2}}\n")  # fmt: skip
    with pytest.raises(ConfigError, match="e.yaml:4.*prefill_replicas 2 leaves no decode replica"):
        load_experiment(exp)


# ------------------------------------------------------------------------------------ speed


def test_a_thousand_requests_simulate_in_seconds_one_event_per_iteration():
    t0 = time.perf_counter()
    s = serve(requests={"count": 1000, "rate_per_s": 20, "prompt_len": 256, "output_len": 128}).summary
    elapsed = time.perf_counter() - t0
    assert s["requests"] == 1000 and s["events"] == s["iterations"]
    assert elapsed < 15.0, f"{elapsed:.1f} s"  # about 1.5 s on two cores


# ------------------------------------------------------------------------------------- plan


def test_plan_searches_tp_and_dp_and_sorts_by_goodput(tmp_path, capsys):
    exp = tmp_path / "p.yaml"
    exp.write_text(f"hardware: dgx-h100-8\nmodel: {MODEL}\nscenario: {{kind: serve, requests: {{count: 40, "
                   "rate_per_s: 40, prompt_len: 256, output_len: 16}}\n")  # fmt: skip
    argv = ["plan", str(exp), "--max-num-seqs", "16", "--tp", "1,2,8", "--json", "--out", str(tmp_path / "s")]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    plans = out["plans"]
    assert [(p["tp"], p["dp"]) for p in plans] and {p["tp"] * p["dp"] for p in plans} == {8}
    assert sorted(p["tp"] for p in plans) == [1, 2, 8]
    goodput = [p["goodput_requests_per_s"] for p in plans]
    assert goodput == sorted(goodput, reverse=True) and out["best"] == plans[0]
    for p in plans:
        assert p["tokens_per_s_per_gpu"] == pytest.approx(p["throughput_tokens_per_s"] / 8)
    with pytest.raises(SystemExit) as e:
        main(["plan", "--help"])
    assert e.value.code == 0


# ------------------------------------------------------------------------------- the schema


def test_nested_blocks_declare_their_schema_and_build_their_dataclasses():
    from dataclasses import dataclass

    from simcore.config import Param, block_field, build_dataclass, dataclass_schema, param_field
    from simcore.scenarios.serve import Serve
    from simcore.serving import KVCacheSpec

    schema = dataclass_schema(Serve)
    assert set(schema) == {
        "requests",
        "scheduler",
        "kv_cache",
        "slo",
        "speculative",
        "sharing",
        "disaggregation",
        "router",
        "usd_per_gpu_hour",
    }
    assert schema["requests"]["rate_per_s"].default == 1.0 and schema["slo"]["ttft"].unit == "time"
    built = build_dataclass(Serve, {"kv_cache": {"block_size": 32, "other": 1}, "unrelated": 2})
    assert built.kv_cache == KVCacheSpec(block_size=32) and built.requests == RequestSpec()

    @dataclass(frozen=True)
    class Clash:
        kv_cache: int = param_field(Param("not a block", type=int, default=1))

    with pytest.raises(TypeError, match="declared before as a block"):
        dataclass_schema(Serve, Clash)

    @dataclass(frozen=True)
    class OtherBlock:
        kv_cache: RequestSpec = block_field(RequestSpec)

    with pytest.raises(TypeError, match="is a block unlike"):
        dataclass_schema(Serve, OtherBlock)


def test_a_serving_run_keeps_its_requests_as_a_dataframe_and_as_trace_lanes(tmp_path):
    import json

    from simcore.experiment import run

    res = run("configs/experiments/serve-llama3-8b-h100.yaml", ["scenario.requests.count=20"])
    df = res.requests_dataframe()
    assert len(df) == 20 and {"ttft_s", "tpot_s", "e2e_s"} <= set(df.columns)
    assert (df["e2e_s"] >= df["ttft_s"]).all()
    assert df["ttft_s"].median() == pytest.approx(res.summary["ttft_p50_s"], rel=1e-9)
    trace = json.loads(res.to_chrome_trace(tmp_path / "t.json").read_text())
    spans = [e for e in trace["traceEvents"] if e.get("pid") == 2 and e["ph"] == "X"]
    assert len(spans) == 2 * 20  # queue + prefill, then decode, per request
    by_lane: dict[int, list] = {}
    for e in spans:
        by_lane.setdefault(e["tid"], []).append((e["ts"], e["ts"] + e["dur"]))
    for lane in by_lane.values():  # requests on one lane never overlap
        lane.sort()
        assert all(a_end <= b_start + 1e-6 for (_, a_end), (b_start, _) in zip(lane, lane[1:], strict=False))
