"""Near-data compute in a run: a PIM unit sharing its host GPU's memory (mode switching), decode attention
offloaded to PIM or to computational storage with q / k / v / output as transfers, and FlexGen-style KV
streaming -- each against its closed form."""

from __future__ import annotations

import pytest

from models.llm import build_pass, load_llm
from simcore.engine import Engine
from simcore.errors import ConfigError
from simcore.experiment import load_experiment, run
from simcore.mapping import MAPPERS, ExecutionPlan, map_pass, place
from simcore.mapping.kv_offload import attention_io_B
from simcore.ops import Attention, Gemm, Transfer
from simcore.precision import PrecisionPlan
from simcore.program import Program, Step
from simcore.system import load_system


def _one(op, device: str) -> Program:
    return Program.compile(op.name, [Step(op, (device,), (), "decode")])


def _two_flows(
    bytes_a: float, cap_a: float, bytes_b: float, cap_b: float, port: float
) -> tuple[float, float]:
    """End times of two flows starting together on one resource of `port` B/s (max-min fair, capped)."""
    ra = min(cap_a, max(port / 2, port - cap_b))
    rb = min(cap_b, port - ra)
    ta, tb = bytes_a / ra, bytes_b / rb
    if ta <= tb:  # a ends first; b then runs alone at min(cap, port)
        return ta, ta + (bytes_b - rb * ta) / min(cap_b, port)
    return tb + (bytes_a - ra * tb) / min(cap_a, port), tb


# ------------------------------------------------------------------------- PIM in the GPU's memory


@pytest.mark.parametrize("preset", ["h100-attacc-pim", "dgx-h100-hbm-pim"])
def test_pim_uses_the_gpu_port_at_its_bandwidth(preset: str) -> None:
    """The PIM units hold exactly the port they sit in while they compute (the mode-switching rule)."""
    s = load_system(preset)
    for pim in s.of_type("pim"):
        port = s.memory_of(pim)
        assert port.owner.startswith("gpu") and port is s.memory_of(port.owner)
        assert s.devices[pim].memory_bandwidth_Bps == pytest.approx(port.read_Bps, rel=1e-12)


def test_pim_and_gpu_slow_each_other_as_the_sharing_rule_says() -> None:
    """Alone, each op takes its op_cost. Together on one HBM: the PIM op books duration x port bandwidth
    (the banks are the host's no longer), so max-min sharing of the port gives the closed form below:
    both end later."""
    s = load_system("h100-attacc-pim")
    gpu, pim = s.devices["gpu"], s.devices["pim"]
    port = s.memory_of("gpu").read_Bps
    g_op = Gemm("gpu.gemv", "fp16", m=1, n=16384, k=16384)  # 512 MiB of weights: memory-bound
    p_op = Gemm("pim.gemv", "fp16", m=1, n=8192, k=8192)
    gc, pc = gpu.op_cost(g_op), pim.op_cost(p_op)
    assert pc.dram_bytes == pytest.approx(pc.duration_s * port, rel=1e-12)
    for op, dev, cost in ((g_op, "gpu", gc), (p_op, "pim", pc)):
        eng = Engine(s)
        assert eng.run(_one(op, dev)) == pytest.approx(cost.duration_s, rel=1e-12)
    eng = Engine(s)
    a, b = eng.submit(_one(g_op, "gpu")), eng.submit(_one(p_op, "pim"))
    eng.env.run()
    ta, tb = _two_flows(gc.dram_bytes, gc.dram_bytes / gc.duration_s, pc.dram_bytes, port, port)
    assert a.value.end_s == pytest.approx(ta, rel=1e-9)
    assert b.value.end_s == pytest.approx(tb, rel=1e-9)
    assert a.value.end_s > gc.duration_s and b.value.end_s > pc.duration_s
    # the port is full while both run: the pair takes no less than the bytes at the port's rate and no
    # more than one op after the other
    both = max(a.value.end_s, b.value.end_s)
    assert (gc.dram_bytes + pc.dram_bytes) / port <= both <= gc.duration_s + pc.duration_s


def test_a_copy_into_hbm_slows_the_pim_op() -> None:
    """Host traffic is memory traffic too: a host -> GPU copy landing in the stacks while the banks
    compute shares the port with the PIM op."""
    path_sys = load_system("dgx-h100-hbm-pim")
    p_op = Gemm("pim.gemv", "fp16", m=1, n=8192, k=8192)
    pc = path_sys.devices["pim0"].op_cost(p_op)
    eng = Engine(path_sys)
    copy = Transfer("h2d", "fp16", nbytes=4e9, src="cpu0", dst="gpu0")
    eng.submit(_one(copy, "cpu0"))
    b = eng.submit(_one(p_op, "pim0"))
    eng.env.run()
    assert b.value.end_s > pc.duration_s * 1.001


# ------------------------------------------------------------------------------ attention offload


def _decode_program(system: str, model: str, kv: tuple[str, ...], mode: str, batch: int, ctx: int,
                    dtype: str = "fp16", tp: int = 1) -> tuple[Program, ExecutionPlan]:  # fmt: skip
    s = load_system(system)
    spec = load_llm(model)
    plan = ExecutionPlan(tp=tp, precision=PrecisionPlan.uniform(dtype), kv_devices=kv, kv_attention=mode)
    placement = place(s, spec, plan)
    logical = build_pass(spec, tp, batch, 1, ctx, plan.precision, "decode")
    return map_pass(logical, placement, plan), plan


def test_the_plan_picks_the_kv_offload_mapper() -> None:
    assert "kv-offload" in MAPPERS
    assert ExecutionPlan(kv_devices=("csd*",)).mapper == "kv-offload"
    assert ExecutionPlan().mapper == "tensor"


def test_offloaded_attention_is_the_csd_cost_plus_its_transfers() -> None:
    """q + new k/v to the CSD, the attention beside the flash, the output back: alone, exactly the CSD's
    closed form plus the two transfers' (latency + bytes at the route's bottleneck, P2P via the switch)."""
    s = load_system("instinfer-a6000")
    spec = load_llm("opt-13b")
    op = Attention("L0.attn", "fp16", batch=8, heads=spec.heads, kv_heads=spec.kv_heads, q_len=1,
                   kv_len=4096, head_dim=spec.head_dim, causal=True)  # fmt: skip
    q_B, kv_B, out_B = attention_io_B(op)
    assert q_B == out_B == 8 * spec.heads * spec.head_dim * 2 and kv_B == 2 * q_B
    up = Transfer("qkv", "fp16", nbytes=q_B + kv_B, src="gpu", dst="csd0")
    down = Transfer("out", "fp16", nbytes=out_B, src="csd0", dst="gpu")
    steps = [Step(up, ("gpu",), (), "decode"), Step(op, ("csd0",), (0,), "decode"),
             Step(down, ("csd0",), (1,), "decode")]  # fmt: skip
    eng = Engine(s)
    assert [n for n, *_ in s.route("gpu", "csd0")] == ["gpu", "pcie-sw"]  # peer to peer, not via the host
    t = eng.run(Program.compile("offload", steps))
    closed = (
        eng.transfer_plan(up).solo_s
        + s.devices["csd0"].op_cost(op).duration_s
        + eng.transfer_plan(down).solo_s
    )
    assert t == pytest.approx(closed, rel=1e-9)


def test_near_mapping_runs_every_decode_attention_on_the_kv_devices() -> None:
    prog, _ = _decode_program("instinfer-a6000", "opt-13b", ("csd*",), "near", batch=8, ctx=2048)
    attn = [st for st in prog.steps if st.op.kind == "attention"]
    spec = load_llm("opt-13b")
    assert len(attn) == 4 * spec.layers and {st.devices for st in attn} == {(f"csd{i}",) for i in range(4)}
    assert all(st.op.batch == 2 for st in attn)  # the batch split over the rank's four CSDs
    xfers = [st.op for st in prog.steps if isinstance(st.op, Transfer)]
    assert len(xfers) == 2 * len(attn) and max(x.nbytes for x in xfers) < 1e6  # vectors only, never the KV
    assert not any(st.op.kind == "attention" for st in prog.steps if st.devices == ("gpu",))


def test_stream_mapping_copies_each_layers_kv_to_the_gpu() -> None:
    """FlexGen-style: the layer's K and V cross PCIe every step; a decode step is at least those bytes over
    the slowest link of the route."""
    s = load_system("instinfer-a6000")
    prog, _ = _decode_program("instinfer-a6000", "opt-13b", ("nvme",), "stream", batch=8, ctx=2048)
    spec = load_llm("opt-13b")
    attn = [st.op for st in prog.steps if st.op.kind == "attention"]
    assert len(attn) == spec.layers and all(st.devices == ("gpu",) for st in prog.steps
                                            if st.op.kind == "attention")  # fmt: skip
    kv_in = [st.op for st in prog.steps if isinstance(st.op, Transfer) and st.op.dst == "gpu"]
    q_B, _, out_B = attention_io_B(attn[0])
    assert sum(x.nbytes for x in kv_in) == pytest.approx(sum(a.bytes - q_B - out_B for a in attn), rel=1e-12)
    t = Engine(s).run(prog)
    slowest = min(link.bw_Bps for _, _, link in s.route("nvme", "gpu"))
    assert t >= sum(x.nbytes for x in kv_in) / min(slowest, s.devices["nvme"].memory_bandwidth_Bps)


def test_pim_decode_attention_time_is_its_op_cost() -> None:
    """Each PIM attention of the mapped pass, in the run's records, lasts exactly its op_cost: nothing
    else touches the stacks while the banks compute (the GEMMs wait for the output)."""
    res = run({"name": "t", "hardware": "h100-attacc-pim", "model": "opt-13b", "dtype": "fp16",
               "offload": {"kv": ["pim"]}, "scenario": {"kind": "offload-decode", "batch": 4,
                                                        "context_len": 1024}})  # fmt: skip
    s = load_system("h100-attacc-pim")
    spec = load_llm("opt-13b")
    op = Attention("a", "fp16", batch=4, heads=spec.heads, kv_heads=spec.kv_heads, q_len=1, kv_len=1025,
                   head_dim=spec.head_dim, causal=True)  # fmt: skip
    want = s.devices["pim"].op_cost(op).duration_s
    recs = [r for r in res.records() if r["kind"] == "attention"]
    assert len(recs) == spec.layers
    for r in recs:
        assert r["end_s"] - r["start_s"] == pytest.approx(want, rel=1e-9)


def test_offload_figures_and_capacity() -> None:
    """The KV lives on the CSDs, not the GPU: a batch whose KV outgrows the A6000 runs offloaded."""
    exp = {"name": "t", "hardware": "instinfer-a6000", "model": "opt-13b", "dtype": "fp16",
           "scenario": {"kind": "offload-decode", "batch": 64, "context_len": 1024}}  # fmt: skip
    with pytest.raises(Exception, match="out of memory"):
        run(exp)
    s = run({**exp, "offload": {"kv": ["csd*"]}}).summary
    assert s["kv_devices"] == [f"csd{i}" for i in range(4)] and s["kv_attention"] == "near"
    assert s["tokens_per_s"] > 0


def test_bad_offload_input_is_one_line(tmp_path) -> None:
    path = tmp_path / "e.yaml"
    base = (
        "name: t\nhardware: instinfer-a6000\nmodel: opt-13b\ndtype: fp16\nscenario: {kind: offload-decode}\n"
    )
    for offload, key in (("{kv: [tpu*]}", "offload.kv"), ("{kv: [gpu]}", "offload.kv"),
                         ("{kv: [csd0], attention: far}", "offload.attention")):  # fmt: skip
        path.write_text(base + f"offload: {offload}\n")
        with pytest.raises(ConfigError) as e:
            load_experiment(path)
        assert "\n" not in str(e.value) and key in str(e.value) and "e.yaml:6" in str(e.value)
    path.write_text(base.replace("fp16", "bf16") + "offload: {kv: [csd0]}\n")
    with pytest.raises(ConfigError, match="offload.kv.*bf16"):  # the CSD's engine has no bf16
        load_experiment(path)
    path.write_text(base.replace("offload-decode", "decode") + "offload: {kv: [csd0]}\n")
    with pytest.raises(
        ConfigError, match="e.yaml:6.*offload.kv.*offload-decode"
    ):  # decode keeps KV on the GPU
        load_experiment(path)


def test_one_kv_device_serves_every_rank() -> None:
    """tp 2 with the KV of both ranks in one host's memory, streamed (FlexGen over two GPUs)."""
    prog, _ = _decode_program("dgx-a100-8", "llama-2-7b", ("cpu0",), "stream", batch=4, ctx=512, tp=2)
    kv_in = {
        (st.op.src, st.op.dst) for st in prog.steps if isinstance(st.op, Transfer) and st.op.src == "cpu0"
    }
    assert kv_in == {("cpu0", "gpu0"), ("cpu0", "gpu1")}
    assert Engine(load_system("dgx-a100-8")).run(prog) > 0


def test_an_uneven_batch_splits_by_whole_sequences() -> None:
    """Six sequences over four CSDs: two take two, two take one; the KV allocated follows the split."""
    prog, _ = _decode_program("instinfer-a6000", "opt-13b", ("csd*",), "near", batch=6, ctx=512)
    per_dev = {st.devices[0]: st.op.batch for st in prog.steps if st.op.kind == "attention"}
    assert per_dev == {"csd0": 2, "csd1": 2, "csd2": 1, "csd3": 1}
    res = run({"name": "t", "hardware": "instinfer-a6000", "model": "opt-13b", "dtype": "fp16",
               "offload": {"kv": ["csd*"]}, "scenario": {"kind": "offload-decode", "batch": 6,
                                                         "context_len": 512}})  # fmt: skip
    assert res.summary["kv_bytes_per_rank"] == pytest.approx(
        6 * 512 * load_llm("opt-13b").kv_bytes_per_token("fp16")
    )


def test_prefill_writes_every_layers_kv_to_the_kv_devices() -> None:
    """The prompts run on the GPU (their attention too); each layer's K and V then go to the CSDs, off the
    GPU's critical path: the prefill takes at least the GPU's own time and every KV byte lands."""
    s = load_system("instinfer-a6000")
    spec = load_llm("opt-13b")
    plan = ExecutionPlan(tp=1, precision=PrecisionPlan.uniform("fp16"), kv_devices=("csd*",))
    logical = build_pass(spec, 1, 8, 256, 256, plan.precision, "prefill")
    prog = map_pass(logical, place(s, spec, plan), plan)
    assert all(st.devices == ("gpu",) for st in prog.steps if st.op.kind == "attention")
    writes = [st.op for st in prog.steps if isinstance(st.op, Transfer) and st.op.dst.startswith("csd")]
    assert len(writes) == 4 * spec.layers
    assert sum(w.nbytes for w in writes) == pytest.approx(
        8 * 256 * spec.kv_bytes_per_token("fp16"), rel=1e-12
    )
    plain = ExecutionPlan(tp=1, precision=plan.precision)
    gpu_only = Engine(s).run(map_pass(logical, place(s, spec, plain), plain))
    assert Engine(s).run(prog) >= gpu_only
    res = run({"name": "t", "hardware": "instinfer-a6000", "model": "opt-13b", "dtype": "fp16",
               "offload": {"kv": ["csd*"]}, "scenario": {"kind": "offload-decode", "batch": 8,
                                                         "context_len": 256, "prefill": True}})  # fmt: skip
    assert res.summary["prefill_time_s"] >= gpu_only
