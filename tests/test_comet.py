"""Comet-style overlap of expert parallelism's all-to-all with the expert GEMMs (`parallelism.ep_chunks`):
one chunk is the plain mapping step for step, a pipeline exposes only its first dispatch and its last
combine, its time lies between max(communication, computation) and their sum, the trend over chunks,
tokens and fabrics, and the SMs the communication takes from the expert ops (`ep_comm_sm_share`) (Zhang et al., "Comet: Fine-grained Computation-communication Overlapping for
Mixture-of-Experts", MLSys 2025, arXiv 2502.19811)."""

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from models.llm import build_pass, load_llm
from simcore.component import partition_times
from simcore.engine import Engine
from simcore.errors import ConfigError
from simcore.experiment import Prefill, load_experiment
from simcore.mapping import ExecutionPlan, place
from simcore.mapping.expert_parallel import map_expert_parallel
from simcore.mapping.steps import StepWriter
from simcore.ops import Gemm, Transfer
from simcore.precision import PrecisionPlan
from simcore.program import Program, Step
from simcore.system import load_system

MIXTRAL = replace(load_llm("mixtral-8x7b"), layers=2)  # per-layer figures: layer 1 of two identical ones
TWO_NODES = (
    "node0.gpu[0-3]",
    "node1.gpu[0-3]",
)  # ep = 8 over two DGX H100s: half the all-to-all on InfiniBand


def _sequential(logical: Any, placement: Any) -> Program:
    """The expert-parallel mapping before chunking: each rank's segment, then ep (ep - 1) transfers."""
    w = StepWriter(logical, placement.hosts)
    ranks = placement.expert_groups
    dtype = logical.ops[0].op.dtype
    ops = list(enumerate(logical.ops))
    arrived: dict = {g: [] for g in ranks}
    start = 0
    for cut, nbytes in [*logical.exchanges, (len(ops) - 1, 0.0)]:
        ends = {
            g: w.chain(ops[start : cut + 1], g, arrived[g], prefix=f"ep{r}.") for r, g in enumerate(ranks)
        }
        start = cut + 1
        if start >= len(ops):
            break
        arrived = {g: [] for g in ranks}
        name = logical.ops[cut].name
        what = name.rsplit(".", 1)[0] + (".dispatch" if name.endswith(".permute") else ".combine")
        for a, src in enumerate(ranks):
            for b, dst in enumerate(ranks):
                if a != b:
                    op = Transfer(f"{what}_ep{a}_to_ep{b}", dtype, nbytes=nbytes, src=src[0], dst=dst[0])
                    arrived[dst].append(w.add(Step(op, src, (ends[src],), logical.phase)))
    return Program.compile(logical.name, w.steps)


def _run(system: Any, tokens: int, chunks: int, devices: tuple[str, ...] = (), comm_sms: float = 0.0) -> Any:
    plan = ExecutionPlan(ep=8, ep_chunks=chunks, devices=devices, precision=PrecisionPlan.uniform("bf16"),
                         ep_comm_sm_share=comm_sms)  # fmt: skip
    return Prefill(batch=8, prompt_len=tokens // 8).run(system, MIXTRAL, plan, True)


def _union_s(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of time intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def _layer(result: Any, layer: int = 1) -> dict[str, float]:
    """Layer `layer`'s MoE block on rank 0: `span` from the first dispatch to the last combine, `gemm` the
    expert ops' time, `comm` the time any of the layer's transfers is in flight, `ends` the first chunk's
    dispatch plus the last chunk's combine, `gaps` the idle time between rank 0's expert ops."""
    p = f"L{layer}."
    recs = list(result.records())
    xfer = [r for r in recs if r["kind"] == "transfer" and r["name"].startswith(p)]
    experts = sorted((r for r in recs if r["name"].startswith(f"ep0.{p}experts")), key=lambda r: r["start_s"])
    tags = {r["name"].split("_ep")[0].rsplit(".", 1)[-1] for r in xfer if ".dispatch.c" in r["name"]}
    first, last = (".c0", f".c{len(tags) - 1}") if tags else ("", "")
    d0 = [r for r in xfer if r["name"].startswith(f"{p}dispatch{first}_")]
    cl = [r for r in xfer if r["name"].startswith(f"{p}combine{last}_")]
    t0, t1 = min(r["start_s"] for r in xfer), max(r["end_s"] for r in xfer)
    return {
        "span": t1 - t0,
        "gemm": sum(r["duration_s"] for r in experts),
        "comm": _union_s([(r["start_s"], r["end_s"]) for r in xfer]),
        "ends": (max(r["end_s"] for r in d0) - t0) + (t1 - min(r["start_s"] for r in cl)),
        "gaps": sum(b["start_s"] - a["end_s"] for a, b in zip(experts, experts[1:], strict=False)),
    }


# ------------------------------------------------------------------------------------------ mapping


def test_one_chunk_is_the_sequential_mapping_step_for_step():
    dgx = load_system("dgx-h100-8")
    plan = ExecutionPlan(ep=8, ep_chunks=1)
    placement = place(dgx, MIXTRAL, plan)
    logical = build_pass(MIXTRAL, 1, 1, 512, 512, "bf16", "prefill", ep=8)
    assert map_expert_parallel(logical, placement, plan).steps == _sequential(logical, placement).steps


def test_chunks_split_the_rows_and_the_bytes_of_the_all_to_all():
    """16K tokens, 2048 per rank, 4 chunks of 512: rank r's one expert (8 experts over 8 ranks) gets
    8 x 512 x 2 / 8 = 1024 rows per chunk; every chunk moves a quarter of the dispatch and combine bytes."""
    placement = place(load_system("dgx-h100-8"), MIXTRAL, ExecutionPlan(ep=8))
    logical = build_pass(MIXTRAL, 1, 1, 2048, 2048, "bf16", "prefill", ep=8)
    one, four = (map_expert_parallel(logical, placement, ExecutionPlan(ep=8, ep_chunks=c)) for c in (1, 4))
    gemms = [s.op for s in four.steps if s.name.startswith("ep0.L1.experts_gate_up.c")]
    assert [(g.batch, g.m, g.n, g.k) for g in gemms] == [(1, 1024, 2 * 14336, 4096)] * 4
    moved = [sum(s.op.nbytes for s in p.steps if isinstance(s.op, Transfer)) for p in (one, four)]
    assert moved[1] == pytest.approx(moved[0], rel=1e-12)
    # layers x (dispatch, combine) x rank pairs x rows one rank routes to another x hidden x 2 B
    assert moved[0] == 2 * 2 * 56 * (2048 * 2 / 8) * 4096 * 2


def test_a_layer_of_few_tokens_runs_one_chunk_per_token():
    dgx = load_system("dgx-h100-8")
    plan = ExecutionPlan(ep=8, ep_chunks=8)
    logical = build_pass(MIXTRAL, 1, 1, 3, 3, "bf16", "prefill", ep=8)
    steps = map_expert_parallel(logical, place(dgx, MIXTRAL, plan), plan).steps
    assert {s.name.rsplit(".", 1)[-1] for s in steps if s.name.startswith("ep0.L0.experts_down")} == {
        "c0",
        "c1",
        "c2",
    }


# ------------------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize(("fabric", "devices"), [("dgx-h100-8", ()), ("dgx-h100-x4", TWO_NODES)])
def test_overlapped_time_lies_between_the_larger_and_the_sum_of_communication_and_computation(
    fabric, devices
):
    """With one chunk nothing overlaps: the block is exactly dispatch + GEMMs + combine. With c chunks the
    GEMM lane never idles once started (the GEMMs are longer than a chunk's all-to-all on both fabrics),
    so the block is the GEMMs plus only the first chunk's dispatch and the last chunk's combine, which is
    at least max(comm, compute) and less than their sum."""
    system = load_system(fabric)
    one = _layer(_run(system, 16384, 1, devices))
    assert one["span"] == pytest.approx(one["comm"] + one["gemm"], rel=1e-9)
    for chunks in (2, 4, 8):
        m = _layer(_run(system, 16384, chunks, devices))
        assert m["gaps"] == pytest.approx(0.0, abs=1e-12)
        assert m["span"] == pytest.approx(m["gemm"] + m["ends"], rel=1e-9)
        assert max(m["comm"], m["gemm"]) <= m["span"] < m["comm"] + m["gemm"]


def test_with_free_communication_the_overlapped_layer_approaches_the_gemm_time(tmp_path: Path):
    """Eight H100s on an ideal switch (1000 TB/s links, no latency): a transfer is bounded by the HBM ports
    only. 16K tokens in 4 chunks expose one dispatch and one combine of a quarter of the rows, each moving
    7 x (2048 x 2 / 8 / 4) rows x 4096 x 2 B = 7.3 MB through every rank's ~3 TB/s HBM: ~2.5 us plus the
    endpoints' access latency, twice, against ~2.1 ms of expert ops, so the block is within 1 % of them
    (it is not without chunks: the whole all-to-all, 4x the bytes, then adds ~2 %)."""
    path = tmp_path / "ideal.yaml"
    path.write_text(
        "type: system\ndescription: eight H100s on an ideal switch\n"
        "devices:\n  gpu: {base: h100-sxm5-80gb, count: 8}\nswitches: [sw]\n"
        'links:\n  - {type: generic, bandwidth: 1000 TB/s, latency: 0 s, between: ["gpu*", sw]}\n'
    )
    ideal = load_system(str(path))
    m = _layer(_run(ideal, 16384, 4))
    assert m["span"] == pytest.approx(m["gemm"], rel=0.01)
    one = _layer(_run(ideal, 16384, 1))
    assert one["span"] > 1.015 * one["gemm"]


# ------------------------------------------------------------------------------------------- trend


def test_the_trend_over_chunks_tokens_and_fabrics():
    """Comet's mechanism pays where communication is a large share: across two nodes (half the all-to-all
    on 400 Gb/s InfiniBand) the layer gains > 20 % at 16K tokens; over NVLink within one node the all-to-all
    is ~7 % of the block, less than what smaller GEMMs cost, so 8 chunks lose. Too many chunks always
    lose: each chunk's GEMM reads the expert's weights again and its transfers pay their latency."""
    x4, dgx = load_system("dgx-h100-x4"), load_system("dgx-h100-8")
    span = {c: _layer(_run(x4, 16384, c, TWO_NODES))["span"] for c in (1, 4, 8, 16)}
    assert span[1] / min(span.values()) > 1.2
    assert span[16] > min(span[4], span[8])
    small = {c: _layer(_run(x4, 4096, c, TWO_NODES))["span"] for c in (1, 2, 4)}
    assert span[1] / min(span.values()) > small[1] / min(small.values())  # more tokens, more to hide
    nvlink = {c: _layer(_run(dgx, 4096, c)) for c in (1, 8)}
    assert nvlink[1]["comm"] / nvlink[1]["span"] < 0.1
    assert nvlink[8]["span"] > nvlink[1]["span"]


# --------------------------------------------------------------------------------------- SM share


def _alone(op: Gemm, share: float) -> tuple[float, Any]:
    """One GEMM on gpu0 of a DGX H100 on `share` of its SMs: its makespan, and the engine's ledger."""
    eng = Engine(load_system("dgx-h100-8"))
    t = eng.run(Program.compile("one", [Step(op, ("gpu0",), (), "x", sm_share=share)]))
    return t, eng.ledger()


def test_a_compute_bound_gemm_on_a_share_of_the_sms_takes_exactly_that_much_longer():
    """8192^3 in bf16 on an H100 is compute-bound (the SMs set its whole time), so on (1 - f) of the SMs it
    takes exactly 1/(1 - f) as long; records and tallies report that time, its bytes and FLOPs unchanged."""
    gemm = Gemm("gemm", "bf16", m=8192, n=8192, k=8192)
    full, _ = _alone(gemm, 1.0)
    assert load_system("dgx-h100-8").devices["gpu0"].op_cost(gemm).bound == "compute"
    for f in (0.05, 0.2, 0.5):
        t, ledger = _alone(gemm, 1.0 - f)
        assert t == pytest.approx(full / (1.0 - f), rel=1e-12)
        [rec] = ledger.records()
        assert rec["duration_s"] == pytest.approx(t, rel=1e-12) and rec["flops"] == gemm.flops
        [(_, cost)] = ledger.costs
        assert cost.duration_s == pytest.approx(t, rel=1e-12)


def test_a_memory_bound_gemm_is_unaffected_until_its_sm_time_on_the_share_exceeds_its_memory_time():
    """m = 16 rows against a 4096 x 4096 weight: DRAM sets its time (t_mem) and its waves of tiles take
    t_sm < t_mem on all SMs; on a share s it takes max(t_sm / s, t_mem) (engine.partition_times)."""
    gemm = Gemm("gemv", "bf16", m=16, n=4096, k=4096)
    cost = load_system("dgx-h100-8").devices["gpu0"].op_cost(gemm)
    t_sm, t_mem = partition_times(cost)
    assert cost.bound == "memory" and 0.0 < t_sm < t_mem
    knee = t_sm / t_mem
    for share in (1.0, 0.5 * (1.0 + knee), 1.001 * knee):
        assert _alone(gemm, share)[0] == pytest.approx(t_mem, rel=1e-12)
    for share in (0.999 * knee, 0.5 * knee):
        t, ledger = _alone(gemm, share)
        assert t == pytest.approx(t_sm / share, rel=1e-12)
        assert [r["bound"] for r in ledger.records()] == ["compute"]


def test_kernels_on_a_share_still_time_slice_the_device():
    """Unlike an SM partition, a step's share keeps the device's own compute: two such GEMMs on one GPU at
    once each progress at half speed, ending together after twice the time of one alone."""
    gemm = Gemm("gemm", "bf16", m=8192, n=8192, k=8192)
    alone, _ = _alone(gemm, 0.8)
    eng = Engine(load_system("dgx-h100-8"))
    done = [
        eng.submit(Program.compile(f"p{i}", [Step(gemm, ("gpu0",), (), "x", sm_share=0.8)])) for i in (0, 1)
    ]
    eng.env.run(until=eng.env.all_of(done))
    assert eng.env.now == pytest.approx(2.0 * alone, rel=1e-9)


def test_without_communication_sms_nothing_changes():
    """f = 0 is the chunked mapping as it was: every step on all SMs, the same steps and the same times."""
    dgx = load_system("dgx-h100-8")
    logical = build_pass(MIXTRAL, 1, 1, 512, 512, "bf16", "prefill", ep=8)
    placement = place(dgx, MIXTRAL, ExecutionPlan(ep=8))
    plain, zero = (
        map_expert_parallel(logical, placement, ExecutionPlan(ep=8, ep_chunks=4, **kw))
        for kw in ({}, {"ep_comm_sm_share": 0.0})
    )
    assert zero.steps == plain.steps and {s.sm_share for s in zero.steps} == {1.0}
    assert _layer(_run(dgx, 4096, 4)) == _layer(_run(dgx, 4096, 4, comm_sms=0.0))


def test_only_the_expert_ops_of_a_pipelined_layer_give_up_sms():
    """The router, attention and the all-to-all keep every SM; a layer too small to split overlaps nothing."""
    dgx = load_system("dgx-h100-8")
    plan = ExecutionPlan(ep=8, ep_chunks=4, ep_comm_sm_share=0.25)
    placement = place(dgx, MIXTRAL, plan)
    steps = map_expert_parallel(
        build_pass(MIXTRAL, 1, 1, 512, 512, "bf16", "prefill", ep=8), placement, plan
    ).steps
    shared = {s.name for s in steps if s.sm_share != 1.0}
    assert shared == {s.name for s in steps if ".experts" in s.name}
    assert {s.sm_share for s in steps} == {1.0, 0.75}
    one_token = build_pass(MIXTRAL, 1, 1, 1, 1, "bf16", "prefill", ep=8)  # one token: one chunk, no overlap
    assert {s.sm_share for s in map_expert_parallel(one_token, placement, plan).steps} == {1.0}


@pytest.mark.parametrize(
    ("fabric", "devices", "chunks"), [("dgx-h100-8", (), 2), ("dgx-h100-x4", TWO_NODES, 8)]
)
def test_the_layer_on_fewer_sms_lies_between_the_free_overlap_and_the_closed_form_bound(
    fabric, devices, chunks
):
    """With f of the SMs driving the all-to-all the block is slower than with f = 0, and no slower than the
    notebook's closed form gemm / (1 - f) + exposed, which scales every expert op (the memory-bound
    activation, which the share does not slow, included)."""
    system = load_system(fabric)
    free = _layer(_run(system, 16384, chunks, devices))
    for f in (0.05, 0.2):
        m = _layer(_run(system, 16384, chunks, devices, comm_sms=f))
        bound = free["gemm"] / (1.0 - f) + (free["span"] - free["gemm"])
        assert free["span"] < m["span"] <= bound * (1 + 1e-9)
        assert free["gemm"] < m["gemm"] <= free["gemm"] / (1.0 - f) * (1 + 1e-9)


# ------------------------------------------------------------------------------------------- input


@pytest.mark.parametrize(
    ("parallelism", "match"),
    [
        ({"ep": 8, "ep_chunks": 0}, "ep_chunks"),
        ({"ep": 8, "ep_chunks": 2.5}, "ep_chunks"),
        ({"ep": 8, "ep_chunks": 65}, "ep_chunks"),
        ({"ep_chunks": 2}, "needs ep > 1"),
        ({"ep": 8, "ep_overlap": {"chunks": 2}}, "ep_overlap"),
        ({"ep": 8, "ep_chunks": 4, "ep_comm_sm_share": 1.0}, "ep_comm_sm_share"),
        ({"ep": 8, "ep_chunks": 4, "ep_comm_sm_share": -0.1}, "ep_comm_sm_share"),
        ({"ep": 8, "ep_chunks": 4, "ep_comm_sm_share": "a tenth"}, "ep_comm_sm_share"),
        ({"ep": 8, "ep_comm_sm_share": 0.1}, "needs ep_chunks > 1"),
    ],
)
def test_bad_chunk_settings_are_one_line_config_errors(parallelism, match):
    doc = {"hardware": "dgx-h100-8", "model": "mixtral-8x7b", "parallelism": parallelism,
           "scenario": {"kind": "prefill", "batch": 8, "prompt_len": 512}}  # fmt: skip
    with pytest.raises(ConfigError, match=match) as e:
        load_experiment(doc)
    assert "\n" not in str(e.value)


def test_the_shipped_experiment_overlaps():
    exp = load_experiment(
        Path(__file__).parent.parent / "configs/experiments/comet-mixtral-8x7b-ep8-dgx-h100.yaml"
    )
    assert exp.plan.ep == 8 and exp.plan.ep_chunks > 1 and exp.model_name == "mixtral-8x7b"
