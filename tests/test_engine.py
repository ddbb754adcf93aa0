"""The engine against closed forms: sums of op costs, link contention, HBM sharing, out-of-memory."""

import math

import pytest

from simcore.engine import Engine
from simcore.errors import ConfigError, OutOfMemory
from simcore.experiment import Decode, Generate, Prefill, simulate
from simcore.ops import Elementwise, Gemm, OpGraph, Transfer
from simcore.program import Program, Step
from simcore.system import load_system


def test_uncontended_chain_takes_the_sum_of_its_op_costs():
    system = load_system("a100-sxm4-80gb")
    gpu = system.devices["gpu"]
    g = OpGraph("chain")
    ops = [Gemm("g1", m=4096, n=4096, k=4096), Elementwise("add", elements=1 << 24, inputs=2),
           Gemm("g2", m=1, n=8192, k=8192)]  # fmt: skip
    prev: list[str] = []
    for op in ops:
        prev = [g.add(op, prev, ("gpu",))]
    eng = Engine(system)
    t = eng.run(Program.from_graph(g))
    assert t == pytest.approx(sum(gpu.op_cost(op).duration_s for op in ops), rel=1e-12)


def _transfers(system, pairs, nbytes):
    g = OpGraph("xfers")
    for i, (src, dst) in enumerate(pairs):
        g.add(Transfer(f"t{i}", nbytes=nbytes, src=src, dst=dst), (), (src,))
    eng = Engine(system)
    eng.run(Program.from_graph(g))
    return eng


def test_two_transfers_sharing_one_pcie_link_each_take_twice_as_long():
    # In dgx-a100-8, gpu0 and gpu1 sit behind pcie-sw0, whose single Gen4 x16 uplink reaches cpu0.
    system = load_system("dgx-a100-8")
    nbytes = 1e9
    alone = _transfers(system, [("cpu0", "gpu0")], nbytes)
    both = _transfers(system, [("cpu0", "gpu0"), ("cpu0", "gpu1")], nbytes)
    link_bw = system.graph.edges["pcie-sw0", "cpu0"]["link"].bw_Bps
    latency = sum(link.latency_s for _, _, link in system.route("cpu0", "gpu0"))
    assert alone.env.now == pytest.approx(latency + nbytes / link_bw, rel=1e-9)
    ends = [sorted(r["end_s"] for r in e.ledger().records()) for e in (alone, both)]
    assert both.env.now - latency == pytest.approx(2 * (alone.env.now - latency), rel=1e-9)
    assert ends[1][0] == pytest.approx(ends[1][1])


def test_a_copy_into_hbm_slows_a_memory_bound_kernel():
    # A memory-bound kernel alone on the A100 runs at its own pace; a concurrent 30 GB copy from the
    # host lands in the same HBM and, with max-min fair sharing, stretches the kernel.
    system = load_system("dgx-a100-8")
    kernel = Elementwise("stream", elements=4 << 30, inputs=1)
    g = OpGraph("k")
    g.add(kernel, (), ("gpu0",))
    solo = Engine(system)
    t_solo = solo.run(Program.from_graph(g))
    g.add(Transfer("h2d", nbytes=30e9, src="gpu1", dst="gpu0"), (), ("gpu1",))
    both = Engine(system)
    both.run(Program.from_graph(g))
    rec = {r["name"]: (r["start_s"], r["end_s"]) for r in both.ledger().records()}
    t_kernel = rec["stream"][1] - rec["stream"][0]
    assert t_kernel > t_solo * 1.05
    # bytes are conserved on the shared memory port
    hbm = both.res[both.mem["gpu0"]]
    cost = system.devices["gpu0"].op_cost(kernel)
    assert hbm.bytes_carried == pytest.approx(cost.dram_bytes + 30e9, rel=1e-9)


def test_weights_that_do_not_fit_are_an_out_of_memory_outcome():
    with pytest.raises(OutOfMemory) as e:
        simulate("a100-sxm4-80gb", "llama-2-70b", Decode(batch=1, context_len=128))
    msg = str(e.value)
    assert "llama-2-70b weights" in msg and "gpu" in msg and "free" in msg
    assert e.value.needed_B == pytest.approx(68.98e9 * 2, rel=0.01)


def test_kv_cache_overflow_names_the_layer_tensor():
    with pytest.raises(OutOfMemory, match=r"tensor 'L\d+\.kv_cache'"):
        simulate("a100-sxm4-80gb", "llama-2-7b", Generate(batch=256, prompt_len=2048, new_tokens=2))


def test_decode_is_memory_bound_at_a_sensible_fraction_of_hbm_bandwidth():
    # Batch-1 decode reads every weight once per token: time ~ weight bytes / achievable HBM bandwidth
    # (2.039 TB/s x efficiency.memory, 0.85 on Ampere) plus per-kernel launch overheads.
    res = simulate("a100-sxm4-80gb", "llama-2-7b", Decode(batch=1, context_len=512))
    s = res.summary
    weights_B = s["params"] * 2
    floor = weights_B / 2.039e12
    assert floor < s["latency_s"] < 1.5 * floor
    util = s["utilization"]
    assert 0.6 < util["gpu.memory_bw_of_achievable"] < 0.95
    # against the spec bandwidth (achievable = spec x efficiency.memory) the same bytes are a smaller fraction
    gpu = res.ledger.system.devices["gpu"]
    eff = gpu.memory_bandwidth_Bps / gpu.peak_memory_bandwidth_Bps
    assert eff < 1
    assert util["gpu.memory_bw_of_peak"] == pytest.approx(eff * util["gpu.memory_bw_of_achievable"], rel=1e-9)
    # memory-bound decode keeps the GPU busy all the time, but at a few percent of its FLOP/s peak
    assert util["gpu.busy"] > 0.99
    assert 0.0 < util["gpu.mfu"] < 0.05


def test_mfu_counts_every_flop_against_the_dense_peak():
    res = simulate("a100-sxm4-80gb", "llama-2-7b", Prefill(batch=4, prompt_len=1024))
    s = res.summary
    flops = sum(r["flops"] for r in res.records())
    assert s["utilization"]["gpu.mfu"] == pytest.approx(flops / (312e12 * s["latency_s"]), rel=0.02)
    assert s["prefill_tokens_per_s"] == pytest.approx(4 * 1024 / s["prefill_time_s"])


def test_tensor_parallel_generation_places_collectives_on_nvlink():
    res = simulate("dgx-a100-8", "llama-2-13b", Generate(batch=2, prompt_len=128, new_tokens=4), tp=8)
    util = res.summary["utilization"]
    assert any(k.startswith("nvlink:gpu0") and v > 0 for k, v in util.items())
    assert res.summary["tp"] == 8
    # every rank holds 1/8 of the weights plus its KV share
    assert res.summary["peak_memory_B"]["gpu3"] == pytest.approx(res.summary["peak_memory_B"]["gpu0"])
    assert math.isclose(res.summary["peak_memory_B"]["gpu0"], 13.0e9 * 2 / 8, rel_tol=0.05)


def test_all_reduce_takes_ring_for_large_and_tree_for_small_messages():
    # Ring: 2(p-1) latency steps and 2(p-1)/p of the buffer on each link; tree: 2 log2(p) steps and ~2x
    # the buffer. With p = 8 behind NVSwitch: 14 vs 6 hops of latency; 1.75x vs 2x the bytes; both after
    # the launch and the library's fixed latency, at the protocol's fraction of the link rate.
    from simcore.ops import AllReduce

    system = load_system("dgx-a100-8")
    group = tuple(f"gpu{i}" for i in range(8))
    eng = Engine(system)
    _, hop = eng.ring_path(group)
    bw = system.graph.edges["gpu0", "nvswitch"]["link"].bw_Bps
    gpu = system.devices["gpu0"]
    fixed = gpu.launch_s + gpu.params["collective"]["latency"]
    eff = gpu.params["collective"]["efficiency"]
    for nbytes, steps, wire in [(4096, 6, 2 * 4096), (1 << 30, 14, 1.75 * (1 << 30))]:
        g = OpGraph("ar")
        g.add(AllReduce("ar", "bf16", bytes_per_device=nbytes, group=8), (), group)
        t = Engine(system).run(Program.from_graph(g))
        assert t == pytest.approx(fixed + steps * hop + wire / (bw * eff), rel=1e-9)


def test_all_reduce_across_nodes_is_hierarchical_over_every_rail():
    # Two DGX A100 (8 GPUs on NVSwitch each, one 200 Gb/s HCA per GPU): reduce-scatter and all-gather
    # inside each node put 2 (g-1)/g of the buffer on each NVLink direction; the 1/g shares are all-reduced
    # between the nodes on all 8 rails at once, 2 (n-1)/(n g) of the buffer on each rail's PCIe and IB
    # links. The flow runs at its tightest link; a ring over one rail would carry 2 (N-1)/N on one HCA.
    from simcore.ops import AllReduce

    system = load_system("dgx-a100-x2")
    group = tuple(system.of_type("gpu"))
    eng = Engine(system)
    assert eng.islands(group) == (group[:8], group[8:]) and eng.hierarchical(group[:8], 1.0) is None
    link = {pair: system.graph.edges[pair]["link"].bw_Bps
            for pair in (("node0.gpu0", "node0.nvswitch"), ("node0.nic0", "ib-leaf"), ("node0.gpu0", "node0.pcie-sw0"))}  # fmt: skip
    nv, ib, pcie = link.values()
    gpu = system.devices["node0.gpu0"]
    fixed = gpu.launch_s + gpu.params["collective"]["latency"]
    eff = gpu.params["collective"]["efficiency"]
    _, hop_in = eng.ring_path(group[:8])
    _, hop_out = eng.ring_path((group[0], group[8]))
    nbytes = 1 << 30
    g = OpGraph("ar")
    g.add(AllReduce("ar", "bf16", bytes_per_device=nbytes, group=16), (), group)
    t = Engine(system).run(Program.from_graph(g))
    wire = nbytes / eff * max(2 * 7 / 8 / nv, 2 / 16 / ib, 2 / 16 / pcie)
    assert t == pytest.approx(fixed + 2 * 7 * hop_in + 2 * hop_out + wire, rel=1e-9)
    one_rail = fixed + 30 * hop_out + 2 * 15 / 16 * nbytes / eff / ib
    assert t < one_rail / 10


def test_energy_of_a_run_is_the_sum_of_its_op_energies_plus_idle_and_active_power():
    res = simulate("a100-sxm4-80gb", "llama-2-7b", Decode(batch=1, context_len=256))
    gpu = res.ledger.system.devices["gpu"]
    dynamic = sum(r["energy_j"] for r in res.records())
    static = gpu.static_power_W * res.summary["latency_s"]
    active = gpu.active_power_W * res.ledger.busy_s["gpu"]  # 0.6 x (400 - 50) W while a kernel runs
    assert gpu.active_power_W == pytest.approx(0.6 * 350)
    assert res.summary["energy_j"] == pytest.approx(dynamic + static + active, rel=1e-9)
    assert res.ledger.energy_breakdown_J()["gpu"]["dram.byte"] > 0
    # a record's power: its dynamic joules over its time plus idle and active power, so the records'
    # power x time plus the idle time between kernels adds up to the run's energy
    base = gpu.static_power_W + gpu.active_power_W
    for r in res.records():
        assert r["power_w"] == pytest.approx(r["energy_j"] / r["duration_s"] + base, rel=1e-12)
    gaps = res.summary["latency_s"] - res.ledger.busy_s["gpu"]
    drawn = sum(r["power_w"] * r["duration_s"] for r in res.records()) + gpu.static_power_W * gaps
    assert drawn == pytest.approx(res.summary["energy_j"], rel=1e-9)


def test_a_power_capped_kernel_draws_the_tdp():
    # a large fp16 GEMM would draw more than a T4's 70 W: it runs at the clock whose dynamic power fills
    # TDP - idle - active, so its record shows the TDP
    from simcore.ops import Gemm

    system = load_system("t4")
    g = OpGraph("g")
    g.add(Gemm("g", "fp16", m=4096, n=4096, k=4096), (), ("gpu",))
    eng = Engine(system)
    eng.run(Program.from_graph(g))
    (r,) = eng.ledger().records()
    assert r["bound"] == "power" and r["power_w"] == pytest.approx(
        system.devices["gpu"].params["power"]["tdp"]
    )


def test_a_transfer_costs_link_bits_and_dram_bytes_at_both_ends():
    system = load_system("dgx-a100-8")
    g = OpGraph("x")
    g.add(Transfer("t", nbytes=1e9, src="cpu0", dst="gpu0"), (), ("cpu0",))
    eng = Engine(system)
    eng.run(Program.from_graph(g))
    e = eng.ledger().energy_breakdown_J()
    hops = len(system.route("cpu0", "gpu0"))
    links = [k for k, v in e.items() if "link.bit" in v]
    assert len(links) == hops
    assert e["gpu0"]["dram.byte"] == pytest.approx(
        1e9 * system.devices["gpu0"].energy_per_action_J()["dram.byte"]
    )
    assert e["cpu0"]["dram.byte"] == pytest.approx(
        1e9 * system.devices["cpu0"].energy_per_action_J()["dram.byte"]
    )


def test_peak_memory_counts_weights_kv_cache_and_the_largest_activation():
    from models.llm import load_llm

    spec = load_llm("llama-2-7b")
    b, prompt, new = 4, 1024, 8
    res = simulate("a100-sxm4-80gb", spec, Generate(batch=b, prompt_len=prompt, new_tokens=new))
    weights = spec.params * 2
    kv = b * (prompt + new) * spec.kv_bytes_per_token("bf16")
    # prefill's largest activation: SiLU(gate) * up reads two T x ffn tensors and writes a third
    t = b * prompt
    act = 3 * t * spec.ffn * 2
    assert res.summary["peak_memory_B"]["gpu"] == pytest.approx(weights + kv + act, rel=1e-9)


def test_nvme_reads_are_link_bound_and_small_writes_iops_bound():
    # dgx-a100-8: nvme0 (Samsung PM1733: 7 GB/s read, 135k 4 KiB write IOPS) sits on a PCIe Gen4 x4 link.
    system = load_system("dgx-a100-8")
    ssd = system.devices["nvme0"].params
    hops = system.route("nvme0", "gpu0")
    hop_lat = sum(link.latency_s for _, _, link in hops)
    x4 = min(link.bw_Bps for _, _, link in hops)
    g = OpGraph("read")
    g.add(Transfer("read", nbytes=4e9, src="nvme0", dst="gpu0"), (), ("nvme0",))
    t_read = Engine(system).run(Program.from_graph(g))
    assert t_read == pytest.approx(
        hop_lat + ssd["read_latency"] + 4e9 / min(x4, ssd["read_bandwidth"]), rel=1e-9
    )
    g = OpGraph("write")
    g.add(Transfer("write", nbytes=1e9, src="gpu0", dst="nvme0", request_B=4096), (), ("gpu0",))
    t_write = Engine(system).run(Program.from_graph(g))
    iops_rate = min(ssd["queue_depth"] / ssd["write_latency"], ssd["write_iops"]) * 4096
    assert t_write == pytest.approx(hop_lat + ssd["write_latency"] + 1e9 / iops_rate, rel=1e-9)


def test_vision_inference_runs_on_the_first_device_that_has_every_op():
    from models.cnn import build, param_count
    from simcore.experiment import simulate_vision

    res = simulate_vision("a100-sxm4-80gb", "resnet50", batch=8)
    s = res.summary
    ops = build("resnet50", 8).ops()
    assert s["ops"] == len(ops) and s["device"] == "gpu"
    gpu = res.ledger.system.devices["gpu"]
    assert s["latency_s"] == pytest.approx(sum(gpu.op_cost(op).duration_s for op in ops), rel=1e-9)
    assert s["frames_per_s"] == pytest.approx(8 / s["latency_s"])
    assert s["peak_memory_B"]["gpu"] >= param_count(build("resnet50", 1)) * 2
    tpu = simulate_vision("tpuv4-like", "resnet50", batch=8).summary
    assert tpu["device"] == "systolic" and tpu["energy_per_frame_j"] > 0


def test_weight_offload_streams_layers_over_pcie_overlapped_with_compute():
    # Llama-2-7B decode on one RTX 4090 with weights in host memory: every step moves all layer weights
    # over the PCIe 4.0 x16 link, double-buffered against compute, so the step takes at least the bytes
    # over the link's achievable rate and at most that plus the whole resident-weights step.
    from models.llm import load_llm

    spec = load_llm("llama-2-7b")
    system = load_system("workstation-rtx4090")
    link_bw = system.graph.edges["gpu", "cpu"]["link"].bw_Bps
    streamed = simulate(system, spec, Decode(batch=1, context_len=512), offload_weights=True).summary
    resident = simulate(system, spec, Decode(batch=1, context_len=512)).summary
    floor = spec.layers * spec.layer_params * 2 / link_bw
    assert floor < streamed["latency_s"] < floor + resident["latency_s"]
    assert streamed["utilization"]["pcie:cpu->gpu"] > 0.9
    # only two layer buffers are resident on the GPU
    saved = (spec.layers - 2) * spec.layer_params * 2
    assert streamed["peak_memory_B"]["gpu"] == pytest.approx(
        resident["peak_memory_B"]["gpu"] - saved, rel=1e-9
    )


def test_offloaded_tensor_parallel_ranks_share_their_pcie_switch_uplink():
    # dgx-a100-8 hangs two GPUs off each PCIe switch and one Gen4 x16 uplink per switch: streaming a layer's
    # 8 shards moves two shards through each uplink, so a decode step takes 2 x shard bytes / uplink rate.
    from models.llm import load_llm

    spec = load_llm("llama-2-13b")
    system = load_system("dgx-a100-8")
    res = simulate(system, spec, Decode(batch=1, context_len=128), tp=8, offload_weights=True).summary
    uplink = system.graph.edges["pcie-sw0", "cpu0"]["link"].bw_Bps
    expected = spec.layers * 2 * (spec.layer_params * 2 / 8) / uplink
    assert res["latency_s"] == pytest.approx(expected, rel=0.05)
    assert res["utilization"]["pcie:cpu0->pcie-sw0"] > 0.9
    assert res["utilization"]["pcie:pcie-sw0->gpu0"] == pytest.approx(
        0.5 * res["utilization"]["pcie:cpu0->pcie-sw0"], rel=0.01
    )


def test_a_frameworks_one_shot_all_reduce_is_its_fixed_latency_one_hop_and_its_bus_bandwidth():
    # vLLM-style custom all-reduce (library "custom"): launch + custom_latency + one NVSwitch hop + the ring's
    # bytes at custom_efficiency of the link rate; the engine takes it only while it beats NCCL's ring/tree.
    # The constants come from SGLang PR #2904's H100 table (9.1 us at tp4 for 512 B, 40.2 us for 1 MiB).
    from simcore.ops import AllReduce

    system = load_system("dgx-h100-8")
    group = tuple(f"gpu{i}" for i in range(4))
    gpu = system.devices["gpu0"]
    coll = gpu.params["collective"]
    _, hop = Engine(system).ring_path(group)
    bw = system.graph.edges["gpu0", "nvswitch"]["link"].bw_Bps

    def run(nbytes: float, library: str) -> float:
        g = OpGraph("ar")
        g.add(AllReduce("ar", "bf16", bytes_per_device=nbytes, group=4, library=library), (), group)
        return Engine(system).run(Program.from_graph(g))

    wire = 2 * 3 / 4 * 512
    one_shot = gpu.launch_s + coll["custom_latency"] + hop + wire / (bw * coll["custom_efficiency"])
    assert run(512, "custom") == pytest.approx(one_shot, rel=1e-9)
    assert run(512, "custom") == pytest.approx(
        9.1e-6, rel=0.15
    )  # the measured figure, within the fit's spread
    assert run(512, "nccl") > 3 * run(512, "custom")
    # 64 MiB: beyond custom_max, and NCCL's ring is faster anyway: the framework falls back to it
    assert run(64 * 2**20, "custom") == pytest.approx(run(64 * 2**20, "nccl"), rel=1e-12)


def test_an_experiment_names_its_framework_and_its_all_reduces_call_that_library():
    from simcore.experiment import load_experiment

    doc = {"name": "f", "hardware": "dgx-h100-8", "model": "llama-3-8b", "parallelism": {"tp": 4},
           "scenario": {"kind": "decode", "batch": 8, "context_len": 512}}  # fmt: skip
    plain = load_experiment(doc).run(keep_records=False).summary["latency_s"]
    vllm = load_experiment({**doc, "framework": "vllm"}).run(keep_records=False).summary["latency_s"]
    # the pass is a chain: the step is shorter by 2 all-reduces per layer x (NCCL's time - the one-shot's)
    # for a message of 8 tokens x 4096 x 2 B (closed form: the same all-reduce run alone both ways)
    from simcore.ops import AllReduce

    system = load_system("dgx-h100-8")
    group = tuple(f"gpu{i}" for i in range(4))

    def alone(library: str) -> float:
        g = OpGraph("ar")
        g.add(AllReduce("ar", "bf16", bytes_per_device=8 * 4096 * 2, group=4, library=library), (), group)
        return Engine(system).run(Program.from_graph(g))

    assert plain - vllm == pytest.approx(2 * 32 * (alone("nccl") - alone("custom")), rel=1e-6)
    with pytest.raises(ConfigError, match="framework"):
        load_experiment({**doc, "framework": "nope"})


def test_nvlink_sharp_reduces_in_the_switch_on_hopper_and_not_on_ampere():
    # NVLS: each rank's buffer crosses its link once each way at nvls_efficiency of the link rate, so the
    # algorithm bandwidth is that rate whatever the group size (8x H100: ~275 GB/s algbw, ~480 GB/s busbw,
    # NVIDIA/nccl issue #1455); NCCL keeps the ring where it is faster (2 GPUs). A100 switches cannot reduce.
    from simcore.ops import AllReduce

    def algbw(system_name: str, p: int) -> float:
        system = load_system(system_name)
        g = OpGraph("ar")
        g.add(
            AllReduce("ar", "bf16", bytes_per_device=4 * 2**30, group=p),
            (),
            tuple(f"gpu{i}" for i in range(p)),
        )
        return 4 * 2**30 / Engine(system).run(Program.from_graph(g))

    h100 = load_system("dgx-h100-8")
    link = h100.graph.edges["gpu0", "nvswitch"]["link"].bw_Bps
    coll = h100.devices["gpu0"].params["collective"]
    assert algbw("dgx-h100-8", 8) == pytest.approx(link * coll["nvls_efficiency"], rel=0.01)
    assert algbw("dgx-h100-8", 8) * 2 * 7 / 8 == pytest.approx(480e9, rel=0.05)  # the measured bus bandwidth
    assert algbw("dgx-h100-8", 2) == pytest.approx(link * coll["efficiency"], rel=0.01)  # ring: 2(p-1)/p = 1
    a100 = load_system("dgx-a100-8")
    assert a100.devices["gpu0"].params["collective"]["nvls_efficiency"] is None
    assert algbw("dgx-a100-8", 8) * 2 * 7 / 8 == pytest.approx(
        a100.graph.edges["gpu0", "nvswitch"]["link"].bw_Bps * 0.855, rel=0.01)  # fmt: skip


def _two_lane_program(coarse: bool) -> Program:
    """gpu0 runs three kernels, then a 2 GB host copy lands in its HBM while it runs two more that do not
    wait for it, then two that do (a step another lane waits for cuts a segment; so does a wait)."""
    ks = [Gemm("g", m=2048, n=2048, k=2048), Elementwise("e", elements=1 << 26, inputs=2),
          Gemm("v", m=1, n=8192, k=8192)]  # fmt: skip
    steps = [Step(ks[0], ("gpu0",), (), "x"), Step(ks[1], ("gpu0",), (0,), "x"), Step(ks[2], ("gpu0",), (1,), "x"),
             Step(Transfer("h2d", nbytes=2e9, src="cpu0", dst="gpu0"), ("cpu0",), (2,), "x"),
             Step(ks[0], ("gpu0",), (2,), "x"), Step(ks[2], ("gpu0",), (4,), "x"),
             Step(ks[1], ("gpu0",), (3, 5), "x"), Step(ks[0], ("gpu0",), (6,), "x")]  # fmt: skip
    return Program.compile("two-lane", steps, coarse=coarse)


def test_a_coarse_program_pools_kernels_between_synchronisation_points_and_keeps_their_timing():
    # Nothing saturates a resource here (the copy's 25 GB/s and the kernels' DRAM traffic fit the HBM),
    # so every flow runs at its solo rate and pooling cannot change a time: the makespans agree to
    # round-off, while the coarse program needs fewer events (one per segment's pool, not per kernel).
    system = load_system("dgx-a100-8")
    fine, coarse = Engine(system), Engine(system)
    program = _two_lane_program(True)
    t_fine, t_coarse = fine.run(_two_lane_program(False)), coarse.run(program)
    assert t_coarse == pytest.approx(t_fine, rel=1e-9)
    assert coarse.events < fine.events
    # lane gpu0: [0, 1, 2] ends at the step the copy waits for; [4, 5] runs beside the copy; [6, 7] waits
    assert sorted(seg.steps for seg in coarse.compile(program).segments.values()) == [
        (0, 1, 2),
        (4, 5),
        (6, 7),
    ]
    # every step keeps a record, laid out inside its segment in proportion to its time alone
    rows = coarse.runs[0].steps
    assert sorted(i for i, _, _ in rows) == list(range(8))
    gpu = system.devices["gpu0"]
    for i, start, end in rows:
        op = program.steps[i].op
        if not isinstance(op, Transfer):
            assert end - start == pytest.approx(gpu.op_cost(op).duration_s, rel=1e-9)


def test_a_copy_between_devices_on_one_memory_reads_and_writes_it() -> None:
    # The M2 Max's CPU uses the GPU's memory: a CPU -> GPU copy reads and writes that one memory port, so it
    # moves at half the port's achievable rate (the generic link's 340 GB/s binds less), alone or not, and the
    # port is never booked above 100 %.
    system = load_system("mac-m2-max")
    eng = Engine(system)
    nbytes = 10e9
    op = Transfer("c2g", "bf16", nbytes=nbytes, src="cpu", dst="gpu")
    t = eng.run(Program.compile("copy", [Step(op, ("cpu",), (), "x")]))
    port = eng.res[eng.mem["gpu"]].capacity_Bps
    assert t == pytest.approx(eng.transfer_plan(op).delay_s + nbytes / (port / 2), rel=1e-9)
    assert eng.ledger().utilization("bf16")["gpu.memory_bw_of_achievable"] == pytest.approx(1.0, rel=1e-3)


def test_a_chain_across_devices_alone_is_one_event_of_the_sum_of_its_steps() -> None:
    # gpu0 computes, hands its output to gpu1 over NVLink, gpu1 computes: each step waits for the one
    # before, so nothing can overlap and the program runs as one event of the summed solo times
    system = load_system("dgx-a100-8")
    g = Gemm("g", m=2048, n=2048, k=2048)
    steps = [Step(g, ("gpu0",), (), "x"),
             Step(Transfer("hand", nbytes=1e8, src="gpu0", dst="gpu1"), ("gpu0",), (0,), "x"),
             Step(g, ("gpu1",), (1,), "x")]  # fmt: skip
    program = Program.compile("chain", steps)
    assert program.serial and not program.single_lane
    eng = Engine(system)
    t = eng.run(program)
    assert eng.events == 1
    assert t == pytest.approx(sum(eng.compile(program).plans[i].solo_s for i in range(3)), rel=1e-12)
    two = Program.compile("fork", [*steps[:2], Step(g, ("gpu1",), (0,), "x")])  # gpu1 need not wait
    assert not two.serial


def _random_program(seed: int, coarse: bool) -> Program:
    """Kernels on two GPUs and copies between them and the host, with random sizes and dependencies: the
    copies share the host's PCIe uplink and land in the GPUs' HBM beside their kernels."""
    import random

    rng = random.Random(seed)
    steps: list[Step] = []
    for i in range(24):
        deps = tuple(sorted(rng.sample(range(i), min(i, rng.randint(0, 2)))))
        if rng.random() < 0.35:
            src, dst = rng.choice([("cpu0", "gpu0"), ("cpu0", "gpu1"), ("gpu0", "gpu1"), ("gpu1", "cpu0")])
            op = Transfer(f"t{i}", nbytes=rng.uniform(1e6, 4e9), src=src, dst=dst)
            steps.append(Step(op, (src,), deps, "x"))
        else:
            dev = rng.choice(["gpu0", "gpu1"])
            op = (Elementwise(f"e{i}", elements=rng.randint(1 << 20, 1 << 31), inputs=2) if rng.random() < 0.6
                  else Gemm(f"g{i}", m=rng.choice([1, 64, 4096]), n=4096, k=rng.choice([1024, 8192])))  # fmt: skip
            steps.append(Step(op, (dev,), deps, "x"))
    return Program.compile(f"random{seed}", steps, coarse=coarse)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("coarse", [False, True])
def test_a_program_alone_played_off_the_event_loop_matches_the_event_loop(seed: int, coarse: bool) -> None:
    # replay.py must give what Engine._lane and the flow network give: the same makespan, step times, bytes
    # per resource and busy time, under contention (copies sharing the PCIe uplink and the HBM with kernels)
    system = load_system("dgx-a100-8")
    program = _random_program(seed, coarse)
    played, looped = Engine(system), Engine(system, replay=False)
    t = played.run(program)
    assert t == pytest.approx(looped.run(program), rel=1e-9)
    assert played.events < looped.events or played.events == looped.events
    a, b = (sorted(e.runs[0].steps) for e in (played, looped))
    assert [i for i, _, _ in a] == [i for i, _, _ in b]
    for (_, s0, e0), (_, s1, e1) in zip(a, b, strict=True):
        assert (s0, e0) == pytest.approx((s1, e1), rel=1e-9, abs=1e-12 * t)
    for name, r in played.res.items():
        assert r.bytes_carried == pytest.approx(looped.res[name].bytes_carried, rel=1e-9, abs=1e-3)
    assert played.busy_group.keys() == looped.busy_group.keys()
    for group, busy in played.busy_group.items():
        assert busy == pytest.approx(looped.busy_group[group], rel=1e-9)
