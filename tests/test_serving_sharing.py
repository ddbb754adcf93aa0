"""Prefill and decode on partitions of one GPU's SMs (the engine's `partition`): closed forms."""

import pytest

from simcore.component import partition_times
from simcore.engine import Engine
from simcore.ops import Elementwise, Gemm, OpGraph
from simcore.program import Program
from simcore.system import load_system


def _program(op, name="p"):
    g = OpGraph(name)
    g.add(op, (), ("gpu",))
    return Program.from_graph(g)


def _run(system, *subs):
    """Submit (program, partition) pairs at once; returns the engine and each one's makespan."""
    eng = Engine(system)
    evs = [eng.submit(p, part) for p, part in subs]
    eng.env.run()
    return eng, [ev.value.end_s - ev.value.start_s for ev in evs]


def test_a_kernel_alone_on_a_partition_takes_its_sm_time_over_the_share_or_its_memory_time():
    system = load_system("h100-sxm5-80gb")
    gpu = system.devices["gpu"]
    gemm = Gemm("g", m=8192, n=8192, k=8192)  # compute-bound: SM time scales with the share
    stream = Elementwise("stream", elements=1 << 30, inputs=1)  # memory-bound: HBM sets its time
    for op in (gemm, stream):
        cost = gpu.op_cost(op)
        t_sm, t_mem = partition_times(cost)
        assert max(t_sm, t_mem) == pytest.approx(cost.duration_s)
        for share in (1.0, 0.5, 0.3):
            _, (t,) = _run(system, (_program(op), ("prefill", share)))
            assert t == pytest.approx(max(t_sm / share, t_mem), rel=1e-9)
    _, (full,) = _run(system, (_program(gemm), None))
    assert full == pytest.approx(gpu.op_cost(gemm).duration_s, rel=1e-12)  # no partition: unchanged


def test_two_halves_running_memory_bound_kernels_share_the_hbm_bandwidth():
    system = load_system("h100-sxm5-80gb")
    stream = Elementwise("stream", elements=1 << 30, inputs=1)
    cost = system.devices["gpu"].op_cost(stream)
    eng, (a, b) = _run(
        system, (_program(stream, "a"), ("prefill", 0.5)), (_program(stream, "b"), ("decode", 0.5))
    )
    hbm_Bps = eng.res[eng.mem["gpu"]].capacity_Bps
    assert max(a, b) == pytest.approx(2 * cost.dram_bytes / hbm_Bps, rel=1e-9)
    # time-sliced on the whole device instead, each kernel holds the device for its whole duration (its
    # fixed launch time included), so the pair takes twice one duration: no faster than the partitions
    _, (c, d) = _run(system, (_program(stream, "a"), None), (_program(stream, "b"), None))
    assert max(c, d) == pytest.approx(2 * cost.duration_s, rel=1e-9) and max(c, d) >= max(a, b)


def test_compute_bound_kernels_on_disjoint_partitions_do_not_slow_each_other():
    system = load_system("h100-sxm5-80gb")
    gemm = Gemm("g", m=8192, n=8192, k=8192)
    t_sm, _ = partition_times(system.devices["gpu"].op_cost(gemm))
    _, (a, b) = _run(
        system, (_program(gemm, "a"), ("prefill", 0.25)), (_program(gemm, "b"), ("decode", 0.75))
    )
    assert a == pytest.approx(t_sm / 0.25, rel=1e-6) and b == pytest.approx(t_sm / 0.75, rel=1e-6)
    with pytest.raises(ValueError, match="fraction in"):
        Engine(system).submit(_program(gemm), ("x", 1.5))


def test_a_program_on_a_partition_takes_the_sum_of_its_kernels_partitioned_times():
    system = load_system("h100-sxm5-80gb")
    gpu = system.devices["gpu"]
    ops = [Gemm("g1", m=4096, n=4096, k=4096), Elementwise("add", elements=1 << 26, inputs=2),
           Gemm("g2", m=16, n=8192, k=8192)]  # fmt: skip
    g = OpGraph("chain")
    prev: list[str] = []
    for op in ops:
        prev = [g.add(op, prev, ("gpu",))]
    for share in (0.3, 0.7):
        closed = sum(
            max(t_sm / share, t_mem) for t_sm, t_mem in (partition_times(gpu.op_cost(op)) for op in ops)
        )
        eng, (t,) = _run(system, (Program.from_graph(g), ("prefill", share)))
        assert t == pytest.approx(closed, rel=1e-9)
        assert eng.events <= 2  # pooled: one flow for the SM-limited kernels, one for the memory-limited
        busy = eng.ledger().utilization("bf16")["gpu.busy"]
        assert busy == pytest.approx(share, rel=1e-9)  # its share of the device for the whole run


# ------------------------------------------------------------------------------ the serve scenario


def _serve(**scenario):
    from simcore.experiment import load_experiment

    doc = {"name": "t", "hardware": "h100-sxm5-80gb", "model": "llama-3-8b", "dtype": "bf16",
           "scenario": {"kind": "serve", **scenario}}  # fmt: skip
    return load_experiment(doc).run(keep_records=False)


def test_prefill_and_decode_on_sm_partitions_serve_every_request_without_stalling_decodes():
    stream = {"count": 60, "rate_per_s": 30, "prompt_len": 2048, "output_len": 64, "seed": 3}
    stalled = _serve(requests=stream, scheduler={"chunked_prefill": False}).summary
    shared = _serve(
        requests=stream, scheduler={"chunked_prefill": False}, sharing={"prefill_sm_fraction": 0.4}
    )
    s = shared.summary
    assert s["requests"] == 60 and s["prefill_sm_fraction"] == 0.4
    # decodes run on their own SMs while prompts prefill: no inter-token gap waits for a whole prefill
    assert s["itl_max_s"] < stalled["itl_max_s"]
    assert 0 < s["utilization"]["gpu.busy"] <= 1.0
    assert s["events"] < 4 * s["iterations"]  # pooled passes: a few events per iteration, not per kernel


def test_a_partition_must_leave_room_for_decodes():
    from simcore.errors import ConfigError

    with pytest.raises(ConfigError, match="scenario.sharing.prefill_sm_fraction.*strictly between 0 and 1"):
        _serve(sharing={"prefill_sm_fraction": 1.0})
