"""`simcore plan` over tensor x pipeline x data parallelism on the sweep machinery: the plans tried and
skipped, the Pareto set against a brute-force dominance check, a resumed search reading its store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simcore.cli import main
from simcore.plan import candidates, mark_pareto
from simcore.sweep.analysis import pareto_mask

MODEL = "llama-3-8b"


def experiment(tmp_path: Path, model: str = MODEL, priced: bool = True) -> str:
    exp = tmp_path / "p.yaml"
    price = ", usd_per_gpu_hour: 2" if priced else ""
    exp.write_text(f"hardware: dgx-h100-8\nmodel: {model}\nscenario: {{kind: serve, requests: {{count: 24, "
                   f"rate_per_s: 40, prompt_len: 256, output_len: 8}}{price}}}\n")  # fmt: skip
    return str(exp)


def plan(capsys: pytest.CaptureFixture, *argv: str) -> dict:
    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_candidates_divide_the_devices_and_respect_the_layers():
    pairs, skipped = candidates(8, 32, None, (1, 2, 64), lambda tp: None)
    assert pairs == [(1, 1), (2, 1), (4, 1), (8, 1), (1, 2), (2, 2), (4, 2)]  # tp x pp divides 8
    assert skipped == [{"pp": 64, "reason": "pp=64 exceeds the model's 32 layers"}]
    _, bad = candidates(8, 32, [3], (1,), lambda tp: None)
    assert "does not divide 8" in bad[0]["reason"]


def test_plan_tries_pipeline_stages_and_marks_the_pareto_set(tmp_path, capsys):
    out = plan(capsys, experiment(tmp_path), "--max-num-seqs", "16", "--tp", "2,4", "--pp", "1,2",
               "--out", str(tmp_path / "store"))  # fmt: skip
    plans = out["plans"]
    assert sorted((p["tp"], p["pp"], p["dp"]) for p in plans) == [(2, 1, 4), (2, 2, 2), (4, 1, 2), (4, 2, 1)]
    assert all(p["tp"] * p["pp"] * p["dp"] == 8 for p in plans)
    assert out["pareto_objectives"] == {"goodput_requests_per_s": "max", "cost_per_million_tokens_usd": "min"}
    # brute force: a plan is on the front iff no other is at least as good in both and better in one
    for p in plans:
        dominated = any(q["goodput_requests_per_s"] >= p["goodput_requests_per_s"]
                        and q["cost_per_million_tokens_usd"] <= p["cost_per_million_tokens_usd"]
                        and (q["goodput_requests_per_s"] > p["goodput_requests_per_s"]
                             or q["cost_per_million_tokens_usd"] < p["cost_per_million_tokens_usd"])
                        for q in plans)  # fmt: skip
        assert p["pareto"] is (not dominated)
    assert out["pareto"] == [p for p in plans if p["pareto"]] and out["best"]["pareto"]
    assert out["computed"] == 4 and out["cached"] == 0


def test_a_repeated_search_reads_its_points_back(tmp_path, capsys):
    exp, store = experiment(tmp_path), str(tmp_path / "store")
    first = plan(capsys, exp, "--max-num-seqs", "8,16", "--tp", "8", "--out", store)
    again = plan(capsys, exp, "--max-num-seqs", "8,16", "--tp", "8", "--out", store)
    assert (first["computed"], again["computed"], again["cached"]) == (2, 0, 2)
    assert again["plans"] == first["plans"]


def test_expert_parallelism_adds_plans_for_moe_models(tmp_path, capsys):
    out = plan(capsys, experiment(tmp_path, "mixtral-8x7b"), "--max-num-seqs", "16", "--tp", "8",
               "--out", str(tmp_path / "store"))  # fmt: skip
    eps = sorted((p["ep"], p["dp"]) for p in out["plans"] if p["ep"] > 1)
    assert eps == [(2, 4), (4, 2), (8, 1)]  # divide both the 8 GPUs and Mixtral's 8 experts; dp = 8 / ep
    assert all(p["tp"] * p["pp"] * p["ep"] * p["dp"] == 8 for p in out["plans"])
    dense = plan(capsys, experiment(tmp_path), "--max-num-seqs", "16", "--tp", "8", "--ep", "2",
                 "--out", str(tmp_path / "store"))  # fmt: skip
    assert [s["reason"] for s in dense["skipped"]] == [f"{MODEL} is dense: no experts to split"]


def test_unpriced_plans_trade_goodput_against_throughput_per_gpu(tmp_path, capsys):
    out = plan(capsys, experiment(tmp_path, priced=False), "--max-num-seqs", "16", "--tp", "1,8",
               "--out", str(tmp_path / "store"))  # fmt: skip
    assert out["pareto_objectives"] == {"goodput_requests_per_s": "max", "tokens_per_s_per_gpu": "max"}
    assert any(p["pareto"] for p in out["plans"])


def test_mark_pareto_on_a_known_set():
    rows = [{"goodput_requests_per_s": g, "cost_per_million_tokens_usd": c}
            for g, c in [(10, 5.0), (8, 3.0), (8, 4.0), (12, 9.0), (6, 3.0)]]  # fmt: skip
    mark_pareto(rows, pareto_mask)
    # (8, 4) is beaten by (8, 3); (6, 3) by (8, 3); the rest trade goodput for cost
    assert [r["pareto"] for r in rows] == [True, True, False, True, False]


def test_the_table_marks_the_front_and_lists_skipped_plans(tmp_path, capsys):
    assert main(["plan", experiment(tmp_path), "--max-num-seqs", "16", "--tp", "8", "--pp", "1,64",
                 "--out", str(tmp_path / "store")]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "pareto" in text.splitlines()[0] and "*" in text
    assert "skipped pp 64: pp=64 exceeds the model's 32 layers" in text
