"""Serving at scale against closed forms: speculative decoding (Leviathan et al.'s expected tokens per
step; α = 0 is plain decoding plus the draft), replicas behind a router (round-robin replicas equal
independent single-replica runs), prefill/decode disaggregation (the KV transfer over the links) and the
price of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from simcore.errors import ConfigError
from simcore.experiment import load_experiment
from simcore.serving.requests import Request
from simcore.serving.schedulers import Seq
from simcore.serving.speculative import Acceptance, SpeculativeSpec, expected_tokens

HW, MODEL, DRAFT = "h100-sxm5-80gb", "llama-3-8b", "gemma-2b"


def serve(hardware: str = HW, parallelism: dict | None = None, model: str = MODEL, **scenario: Any) -> Any:
    doc = {"name": "t", "hardware": hardware, "model": model, "dtype": "bf16",
           "scenario": {"kind": "serve", **scenario}}  # fmt: skip
    if parallelism:
        doc["parallelism"] = parallelism
    return load_experiment(doc).run(keep_records=False)


def trace(tmp_path: Path, rows: list[str], header: str = "arrival_s,prompt_tokens,output_tokens") -> str:
    path = tmp_path / "trace.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


# ------------------------------------------------------------------------------ speculative decoding


def test_expected_tokens_per_step_is_leviathans_closed_form():
    assert expected_tokens(0.0, 4) == 1.0 and expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.7, 4) == pytest.approx((1 - 0.7**5) / 0.3) == pytest.approx(2.7731)
    assert expected_tokens(0.5, 1) == pytest.approx(1.5)
    accept = Acceptance(SpeculativeSpec(draft=DRAFT, k=4, acceptance=0.7))
    seq = Seq(Request(0, 0.0, 10, 10**6), (0,))
    tokens = [accept(seq) for _ in range(1000)]
    assert min(tokens) >= 1 and max(tokens) <= 5
    assert sum(tokens) / 1000 == pytest.approx(expected_tokens(0.7, 4), abs=1e-3)  # the mean, exactly


def test_a_request_decodes_at_the_expected_tokens_per_step(tmp_path):
    out = 801
    for alpha in (0.0, 0.6, 0.9):
        s = serve(requests={"trace": trace(tmp_path, [f"0,128,{out}"])},
                  speculative={"draft": DRAFT, "k": 4, "acceptance": alpha}).summary  # fmt: skip
        e = expected_tokens(alpha, 4)
        assert s["spec_tokens_per_step"] == pytest.approx(e, rel=0.01)
        assert s["iterations"] - 1 == pytest.approx((out - 1) / e, abs=1.01)  # one prefill, then the steps


def test_with_no_token_accepted_it_is_plain_decoding_plus_the_drafts_passes(tmp_path):
    rows = [trace(tmp_path, ["0,128,200"])]
    plain = serve(requests={"trace": rows[0]}).summary["tpot_mean_s"]
    draft = serve(requests={"trace": rows[0]}, model=DRAFT).summary["tpot_mean_s"]
    spec = serve(requests={"trace": rows[0]}, speculative={"draft": DRAFT, "k": 4, "acceptance": 0.0}).summary
    assert spec["spec_tokens_per_step"] == 1.0
    # the target verifies 5 positions where plain decoding feeds 1: a memory-bound pass costs about the same
    assert spec["tpot_mean_s"] == pytest.approx(plain + 4 * draft, rel=0.03)
    assert spec["tpot_mean_s"] > plain + 4 * draft


def test_speedup_rises_with_the_acceptance_rate(tmp_path):
    path = trace(tmp_path, ["0,256,300", "0.01,256,300"])
    plain = serve(requests={"trace": path}).summary["tpot_mean_s"]
    tpots = [serve(requests={"trace": path}, speculative={"draft": DRAFT, "k": 4, "acceptance": a}).summary["tpot_mean_s"]
             for a in (0.0, 0.4, 0.7, 0.9, 1.0)]  # fmt: skip
    assert tpots == sorted(tpots, reverse=True) and len(set(tpots)) == len(tpots)
    assert tpots[0] > plain > tpots[-1]  # a useless draft costs; a good one speeds decoding up


def test_acceptance_per_request_comes_from_the_trace(tmp_path):
    path = trace(
        tmp_path, ["0,128,101,0.0", "0,128,101,1.0"], "arrival_s,prompt_tokens,output_tokens,acceptance"
    )
    res = serve(requests={"trace": path}, speculative={"draft": DRAFT, "k": 4, "acceptance": 0.5})
    slow, fast = sorted(res.requests, key=lambda r: r.id)
    assert fast.tpot_s < slow.tpot_s / 3  # 5 tokens per step against 1
    bad = trace(tmp_path, ["0,128,101,1.5"], "arrival_s,prompt_tokens,output_tokens,acceptance")
    with pytest.raises(ConfigError, match=r"trace.csv:2: column acceptance: expected a fraction in \[0, 1\]"):
        serve(requests={"trace": bad})


def test_the_draft_may_sit_on_another_gpu(tmp_path):
    path = trace(tmp_path, ["0,128,100"])
    here = serve("dgx-h100-8", {"tp": 1, "devices": ["gpu0"]}, requests={"trace": path},
                 speculative={"draft": DRAFT, "acceptance": 0.7})  # fmt: skip
    there = serve("dgx-h100-8", {"tp": 1, "devices": ["gpu0"]}, requests={"trace": path},
                  speculative={"draft": DRAFT, "acceptance": 0.7, "device": "gpu1"})  # fmt: skip
    # sequential either way (the target waits for the drafts): the same time, the draft's memory elsewhere
    assert there.summary["tpot_mean_s"] == pytest.approx(here.summary["tpot_mean_s"], rel=0.01)
    assert there.summary["kv_cache_blocks"] > here.summary["kv_cache_blocks"]  # no draft KV on gpu0
    with pytest.raises(ConfigError, match="no device 'gpu9'"):
        serve("dgx-h100-8", {"tp": 1, "devices": ["gpu0"]}, requests={"trace": path},
              speculative={"draft": DRAFT, "device": "gpu9"})  # fmt: skip


# ---------------------------------------------------------------------------- replicas and routers


def test_round_robin_replicas_equal_independent_runs_on_their_share():
    stream = {"count": 40, "rate_per_s": 20, "prompt_len": 512, "output_len": 64}
    two = serve("dgx-h100-8", {"tp": 1, "dp": 2}, requests=stream)
    one = serve("dgx-h100-8", {"tp": 1, "dp": 1}, requests={**stream, "split": 2})
    mine = [r for r in two.requests if r.id % 2 == 0]
    assert len(mine) == len(one.requests) == 20
    for a, b in zip(mine, one.requests, strict=True):
        assert (a.first_token_s, a.finish_s) == pytest.approx((b.first_token_s, b.finish_s), rel=1e-9)
    assert two.summary["replicas"] == 2 and two.summary["requests"] == 40


def test_least_loaded_and_kv_aware_routers():
    burst = {"count": 24, "rate_per_s": 1000, "prompt_len": 1024, "output_len": 32, "prefix_len": 768,
             "prefixes": 2}  # fmt: skip
    par = {"tp": 1, "dp": 2}
    hits = {r: serve("dgx-h100-8", par, requests=burst, router=r, kv_cache={"prefix_caching": True}).summary
            for r in ("round-robin", "least-loaded", "kv-aware")}  # fmt: skip
    # kv-aware keeps each prefix on the replica that cached it: more prompt tokens served from the cache
    assert hits["kv-aware"]["prefix_hit_rate"] > hits["round-robin"]["prefix_hit_rate"]
    assert all(s["requests"] == 24 for s in hits.values())


# ------------------------------------------------------------------------------ disaggregation


def test_a_disaggregated_request_pays_its_kv_transfer_between_first_and_second_token(tmp_path):
    path = trace(tmp_path, ["0,2048,2"])
    dis = serve("dgx-h100-8", {"tp": 1, "dp": 2}, requests={"trace": path},
                disaggregation={"prefill_replicas": 1})  # fmt: skip
    col = serve("dgx-h100-8", {"tp": 1, "dp": 1}, requests={"trace": path})
    (d,), (c,) = dis.requests, col.requests
    assert d.ttft_s == pytest.approx(c.ttft_s, rel=1e-9)  # the prefill alone, on the prefill GPU
    s = dis.summary
    kv_B = 2048 * 32 * 8 * 128 * 2 * 2  # tokens × layers × KV heads × head_dim × (K, V) × bf16
    assert s["kv_transfers"] == 1 and s["kv_transferred_B"] == kv_B
    from simcore.system import load_system

    system = load_system("dgx-h100-8")
    hops = system.route("gpu0", "gpu1")
    wire_s = kv_B / min(link.bw_Bps for _, _, link in hops) + sum(link.latency_s for _, _, link in hops)
    extra = (d.finish_s - d.first_token_s) - (c.finish_s - c.first_token_s)
    assert wire_s * 0.999 <= extra <= wire_s * 1.2  # the copy over NVLink (plus the endpoints' access)
    assert s["prefill_replicas"] == 1 and s["decode_replicas"] == 1


def test_cost_per_million_tokens_is_the_gpu_hours_over_the_tokens():
    s = serve("dgx-h100-8", {"tp": 1, "dp": 2}, requests={"count": 20, "rate_per_s": 10, "prompt_len": 256,
                                                             "output_len": 32}, usd_per_gpu_hour=3.0).summary  # fmt: skip
    assert s["cost_usd"] == pytest.approx(3.0 * 2 * s["latency_s"] / 3600)
    assert s["cost_per_million_tokens_usd"] == pytest.approx(s["cost_usd"] / s["output_tokens"] * 1e6)


# ------------------------------------------------------------------------------------ speed


def test_replicas_cost_about_one_event_per_iteration():
    import time

    t0 = time.perf_counter()
    s = serve("dgx-h100-8", {"tp": 1, "dp": 8},
              requests={"count": 1000, "rate_per_s": 160, "prompt_len": 256, "output_len": 128}).summary  # fmt: skip
    elapsed = time.perf_counter() - t0
    assert s["requests"] == 1000 and s["replicas"] == 8
    # pooled passes: one flow for the memory-limited kernels, one more when a pass has SM-limited ones
    assert s["iterations"] <= s["events"] <= 2 * s["iterations"]
    assert elapsed < 15.0, (
        f"{elapsed:.1f} s"
    )  # about 4 s on two cores, most of it mapping 8 replicas (10,000 requests: about 10 s)


def test_plan_tries_the_prefill_decode_split(tmp_path, capsys):
    import json

    from simcore.cli import main

    exp = tmp_path / "p.yaml"
    exp.write_text(f"hardware: dgx-h100-8\nmodel: {MODEL}\nscenario: {{kind: serve, requests: {{count: 24, "
                   "rate_per_s: 40, prompt_len: 512, output_len: 16}, usd_per_gpu_hour: 2}\n")  # fmt: skip
    argv = ["plan", str(exp), "--max-num-seqs", "16", "--tp", "4", "--prefill-replicas", "0,1,2", "--json",
            "--out", str(tmp_path / "s")]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(p["prefill_replicas"] for p in out["plans"]) == [0, 1]
    assert [s["prefill_replicas"] for s in out["skipped"]] == [2]  # dp 2: one replica must decode
    assert all(p["cost_per_million_tokens_usd"] > 0 for p in out["plans"])


def test_heterogeneous_pools_prefill_on_one_gpu_type_and_decode_on_another(tmp_path):
    system = tmp_path / "pair.yaml"
    system.write_text("type: system\ndescription: an H100 and an A100\ndevices:\n  h100: {base: h100-sxm5-80gb}\n"
                      "  a100: {base: a100-sxm4-80gb}\nlinks:\n"
                      "  - {type: generic, bandwidth: 50 GB/s, latency: 5 us, between: [h100, a100]}\n")  # fmt: skip
    stream = {"count": 20, "rate_per_s": 10, "prompt_len": 1024, "output_len": 64}
    prices = {"h100": 4.0, "a1*": 2.0}
    s = serve(str(system), {"tp": 1, "dp": 2}, requests=stream, disaggregation={"prefill_replicas": 1},
              usd_per_gpu_hour=prices).summary  # fmt: skip
    a100s = serve(
        "dgx-a100-8", {"tp": 1, "dp": 2}, requests=stream, disaggregation={"prefill_replicas": 1}
    ).summary
    h100s = serve(
        "dgx-h100-8", {"tp": 1, "dp": 2}, requests=stream, disaggregation={"prefill_replicas": 1}
    ).summary
    assert s["kv_transfers"] == 20 and s["utilization"]["h100.busy"] > 0 and s["utilization"]["a100.busy"] > 0
    assert s["ttft_p50_s"] == pytest.approx(h100s["ttft_p50_s"], rel=0.02)  # prompts on the H100
    assert s["tpot_p50_s"] == pytest.approx(a100s["tpot_p50_s"], rel=0.02)  # decodes on the A100
    assert s["cost_usd"] == pytest.approx((4.0 + 2.0) * s["latency_s"] / 3600)
    with pytest.raises(ConfigError, match="no price for device 'a100'"):
        serve(str(system), {"tp": 1, "dp": 2}, requests=stream, usd_per_gpu_hour={"h100": 4.0})
    with pytest.raises(ConfigError, match=r"usd_per_gpu_hour: h100: expected a price"):
        serve(str(system), {"tp": 1, "dp": 2}, requests=stream, usd_per_gpu_hour={"h100": -1})
