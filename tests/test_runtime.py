"""The run as a process: immutable programs on several engines, concurrent submissions sharing a memory,
pipeline parallelism across nodes, placement refused before time zero, and the import layering."""

import ast
import json
from pathlib import Path

import networkx as nx
import pytest

from simcore.engine import Engine
from simcore.errors import ConfigError, OutOfMemory
from simcore.experiment import load_experiment
from simcore.experiment import run as run_experiment
from simcore.ops import Elementwise, OpGraph, Transfer
from simcore.program import Program
from simcore.system import load_system

ROOT = Path(__file__).resolve().parents[1]


def _stream_program(name: str, device: str = "gpu", elements: int = 1 << 30) -> Program:
    g = OpGraph(name)
    g.add(Elementwise(f"{name}.stream", elements=elements, inputs=1), (), (device,))
    return Program.from_graph(g)


def test_a_program_run_on_two_engines_books_equal_bytes_on_each():
    # A program is a value: running it on a second engine must not touch the first engine's books.
    system = load_system("dgx-a100-8")
    g = OpGraph("mixed")
    g.add(Elementwise("k", elements=1 << 28, inputs=2), (), ("gpu0",))
    g.add(Transfer("h2d", nbytes=4e9, src="cpu0", dst="gpu0"), (), ("cpu0",))
    prog = Program.from_graph(g)
    first, second = Engine(system), Engine(system)
    t1 = first.run(prog)
    util1 = first.ledger().utilization()
    t2 = second.run(prog)
    assert t2 == pytest.approx(t1, rel=1e-12)
    assert second.ledger().utilization() == pytest.approx(util1, rel=1e-12)
    assert first.ledger().utilization() == pytest.approx(util1, rel=1e-12)  # untouched by the second run
    assert util1["gpu0.memory_bw_of_achievable"] <= 1.0


def test_two_programs_submitted_together_share_one_gpus_hbm_at_the_closed_form_time():
    # Two memory-bound kernels on one A100, submitted as separate programs: each alone streams at the
    # kernel's own DRAM rate r = bytes / t_solo <= HBM bandwidth B. Together they time-slice the GPU's
    # compute (half each) and split the HBM max-min fairly, so each moves at min(r/2, B/2) and both end at
    # bytes / min(r/2, B/2).
    system = load_system("a100-sxm4-80gb")
    gpu = system.devices["gpu"]
    a, b = _stream_program("a"), _stream_program("b")
    cost = gpu.op_cost(a.steps[0].op)
    t_solo = Engine(system).run(a)
    assert t_solo == pytest.approx(cost.duration_s, rel=1e-12)
    eng = Engine(system)
    done_a, done_b = eng.submit(a), eng.submit(b)
    eng.env.run()
    r, bw = cost.dram_bytes / cost.duration_s, gpu.memory_bandwidth_Bps
    expected = cost.dram_bytes / min(r / 2, bw / 2)
    for done in (done_a, done_b):
        rec = done.value
        assert rec.end_s - rec.start_s == pytest.approx(expected, rel=1e-9)
    assert expected > t_solo * 1.2  # they really slowed each other down


def test_two_compute_bound_kernels_on_one_gpu_time_slice_it_and_a_second_gpu_runs_free():
    # A large GEMM is compute-bound: two of them on one GPU at once take twice as long each (the SMs are
    # shared), while the same pair on two GPUs runs at full speed.
    from simcore.ops import Gemm

    system = load_system("dgx-a100-8")
    op = Gemm("g", "bf16", m=8192, n=8192, k=8192)
    t = system.devices["gpu0"].op_cost(op).duration_s

    def both(dev_a: str, dev_b: str) -> list[float]:
        eng = Engine(system)
        runs = []
        for name, dev in (("a", dev_a), ("b", dev_b)):
            g = OpGraph(name)
            g.add(op, (), (dev,))
            runs.append(eng.submit(Program.from_graph(g)))
        eng.env.run()
        return [r.value.end_s for r in runs]

    assert both("gpu0", "gpu0") == pytest.approx([2 * t, 2 * t], rel=1e-9)
    assert both("gpu0", "gpu1") == pytest.approx([t, t], rel=1e-9)


def test_work_submitted_mid_run_joins_the_flows_in_flight():
    # A second program arriving halfway through the first slows the remainder of the first.
    system = load_system("a100-sxm4-80gb")
    eng = Engine(system)
    first = eng.submit(_stream_program("a"))
    t_solo = Engine(system).run(_stream_program("a"))

    def late():
        yield eng.env.timeout(t_solo / 2)
        yield eng.submit(_stream_program("b"))

    eng.env.process(late())
    eng.env.run()
    assert first.value.end_s > t_solo * 1.05


def test_memory_is_freed():
    system = load_system("a100-sxm4-80gb")
    eng = Engine(system)
    cap = system.devices["gpu"].memory_capacity_B
    eng.allocate("gpu", "kv of request 1", 0.6 * cap)
    eng.free("gpu", 0.6 * cap)
    eng.allocate("gpu", "kv of request 2", 0.6 * cap)  # fits again once the first is gone
    assert eng.ledger().peak_B["gpu"] == pytest.approx(0.6 * cap)


PP_EXPERIMENT = """\
name: pp
hardware: dgx-a100-x2
model: gpt3-175b
dtype: bf16
parallelism: {tp: 8, pp: 2, microbatches: 8}
scenario: {kind: prefill, batch: 8, prompt_len: 2048}
"""


def test_pipeline_parallel_gpt3_on_two_dgx_nodes(tmp_path):
    path = tmp_path / "pp.yaml"
    path.write_text(PP_EXPERIMENT)
    res = run_experiment(path)
    s = res.summary
    p, m = 2, 8
    # evenly split layers: the pipeline idles (p-1)/(m+p-1) of the time (GPipe / 1F1B fill and drain);
    # activations over InfiniBand and the uneven embedding/head make it slightly larger
    assert s["pipeline_bubble_fraction"] == pytest.approx((p - 1) / (m + p - 1), rel=0.05)
    ib = {k: v for k, v in s["utilization"].items() if k.startswith("infiniband:")}
    assert ib and all(v > 0 for v in ib.values())
    trace = json.loads(res.to_chrome_trace(tmp_path / "t.json").read_text())["traceEvents"]
    lanes = {e["args"]["name"] for e in trace if e.get("name") == "thread_name"}
    assert any(lane.startswith("infiniband ") for lane in lanes)
    # both nodes' GPUs hold half the layers each
    peaks = s["peak_memory_B"]
    assert set(peaks) == {f"node{n}.gpu{i}" for n in (0, 1) for i in range(8)}


def test_a_mixed_accelerator_and_cpu_tensor_parallel_group_is_refused_before_time_zero(tmp_path):
    path = tmp_path / "mixed.yaml"
    path.write_text("name: mixed\nhardware: workstation-rtx4090\nmodel: llama-2-7b\n"
                    "parallelism: {tp: 2, devices: [gpu, cpu]}\n"
                    "scenario: {kind: decode, batch: 1, context_len: 128}\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r"mixed.yaml:4: parallelism.devices: tensor-parallel group gpu, cpu "
                                          r"mixes device types"):  # fmt: skip
        load_experiment(path)


def test_pipeline_batch_must_split_into_micro_batches(tmp_path):
    path = tmp_path / "pp.yaml"
    path.write_text(PP_EXPERIMENT.replace("batch: 8", "batch: 6"))
    with pytest.raises(ConfigError, match=r"pp.yaml:5: parallelism.microbatches: batch 6 does not split"):
        load_experiment(path)


# --------------------------------------------------------------------------------- import layering

PACKAGES = ("simcore", "hardware", "models", "traces")
#: the kernel: nothing in it imports anything above it
KERNEL = {"simcore.units", "simcore.errors", "simcore.config", "simcore.ops", "simcore.flows",
          "simcore.component", "simcore.tables", "simcore.energy", "simcore.precision"}  # fmt: skip


def _imports() -> nx.DiGraph:
    """Every import of the project's modules, including those inside function bodies."""
    g = nx.DiGraph()
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    names = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in files}
    for p in files:
        mod = ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        g.add_node(mod)
        for node in ast.walk(ast.parse(p.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                if t in names and t != mod and not mod.startswith(t + "."):
                    g.add_edge(mod, t)
    return g


def test_the_import_graph_has_no_cycle_and_the_kernel_imports_nothing_above_it():
    g = _imports()
    cycles = list(nx.simple_cycles(g))
    assert not cycles, f"import cycles: {cycles[:3]}"
    upward = [(a, b) for a, b in g.edges if a in KERNEL and b not in KERNEL]
    assert not upward, f"kernel modules importing above the kernel: {upward}"


def test_a_precision_plan_sizes_weights_and_kv_and_speeds_up_memory_bound_decode():
    # W4 (group-128 int4, 4.25 bits with scale and zero) + fp8 KV against bf16 everywhere: the footprint
    # follows the formats exactly; decode reads ~3.5x fewer bytes, and with launch overheads and
    # dequantization on the CUDA cores it is >2x faster but less than the byte ratio.
    from simcore.experiment import Decode, simulate
    from simcore.precision import bits

    plan = {"weights": "int4", "activations": "bf16", "kv_cache": "fp8", "communication": "bf16"}
    q = simulate("a100-sxm4-80gb", "llama-3-8b", Decode(batch=4, context_len=1024), precision=plan)
    b = simulate("a100-sxm4-80gb", "llama-3-8b", Decode(batch=4, context_len=1024))
    spec = __import__("models.llm", fromlist=["load_llm"]).load_llm("llama-3-8b")
    weights_B = spec.params * bits("int4") / 8
    kv_B = 4 * 1024 * spec.kv_elements_per_token * 1.0  # fp8: one byte per element
    workspace = q.summary["peak_memory_B"]["gpu"] - weights_B - kv_B
    assert 0 <= workspace < 64 * 2**20  # the rest is one op's activations
    byte_ratio = (spec.params * 2 + 2 * kv_B) / (weights_B + kv_B)
    speedup = b.summary["latency_s"] / q.summary["latency_s"]
    assert 2.0 < speedup < byte_ratio
    assert q.summary["precision"] == plan and "precision" not in b.summary


def test_an_unknown_weight_format_names_its_key(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("hardware: a100-sxm4-80gb\nmodel: llama-3-8b\nprecision: {weights: int3}\n"
                    "scenario: {kind: decode}\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r"p.yaml:3: precision.weights: .*int3"):
        load_experiment(path)


def test_two_devices_on_one_memory_share_its_bandwidth_and_capacity(tmp_path):
    # A near-memory unit that computes out of the GPU's HBM (`memory_of:`): a memory-bound kernel on each,
    # submitted together, both stream from the same port — each gets min(own rate, B/2) — and a tensor
    # placed by one leaves less room for the other.
    path = tmp_path / "pim.yaml"
    path.write_text("type: system\ndevices:\n  gpu: {base: a100-sxm4-80gb}\n"
                    "  pim: {base: systolic-array, memory_of: gpu}\nlinks:\n"
                    "  - {type: generic, bandwidth: 1 TB/s, between: [pim, gpu]}\n")  # fmt: skip
    system = load_system(path)
    gpu = system.devices["gpu"]
    kernel = _stream_program("g", "gpu")
    cost = gpu.op_cost(kernel.steps[0].op)
    eng = Engine(system)
    a = eng.submit(kernel)
    g = OpGraph("p")
    op = Elementwise("p.stream", elements=1 << 30, inputs=1)
    g.add(op, (), ("pim",))
    b = eng.submit(Program.from_graph(g))
    eng.env.run()
    bw = system.memory_of("gpu").read_Bps
    rate_gpu = cost.dram_bytes / cost.duration_s
    pim_cost = system.devices["pim"].op_cost(op)
    rate_pim = pim_cost.dram_bytes / pim_cost.duration_s
    # max-min fair over one port: the unit streams at its own (lower) rate the whole time the GPU's kernel
    # runs, and the kernel takes what is left of the port, below its solo rate
    assert rate_pim < bw / 2 and rate_gpu > bw - rate_pim
    assert a.value.end_s == pytest.approx(cost.dram_bytes / (bw - rate_pim), rel=1e-9)
    assert b.value.end_s == pytest.approx(pim_cost.dram_bytes / rate_pim, rel=1e-9)
    assert eng.res["gpu.mem"].bytes_carried == pytest.approx(cost.dram_bytes + pim_cost.dram_bytes, rel=1e-9)
    eng.allocate("pim", "weights", 70 * 2**30)
    with pytest.raises(OutOfMemory):
        eng.allocate("gpu", "kv", 20 * 2**30)
