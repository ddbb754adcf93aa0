"""Property tests (hypothesis, derandomized): what the cost model promises to be monotone in.

A faster part never makes an op slower: GPU op costs are non-increasing in DRAM bandwidth, in clock (with
the stated tensor/vector peaks scaled with it: the schema states peaks, it does not derive them) and in L2
bandwidth; a transfer is non-increasing in link bandwidth. A bigger workload is never faster: LLM decode
latency is non-decreasing in context length and in batch (up to the memory limit, where OutOfMemory is an
allowed outcome), prefill latency in prompt length.

Adding SMs (per-SM peaks held) never slows a GPU: the DRAM bandwidth a kernel draws follows Little's law
over the distinct bytes its CTAs keep in flight, which no SM count enters. Steps that remain (tiles and
waves) are listed with their sizes in docs/validation.md, "Steps that remain".
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from simcore.config import parse_yaml
from simcore.engine import Engine
from simcore.errors import OutOfMemory
from simcore.experiment import Decode, Prefill, simulate
from simcore.ops import Attention, Elementwise, Gemm, OpGraph, Transfer
from simcore.program import Program
from simcore.system import load_system

GPUS = ("a100-sxm4-80gb", "h100-sxm5-80gb", "rtx-4090", "t4", "v100-sxm2-32gb")
REL = 1e-9  # float noise allowed between two evaluations of one closed form


def _settings(n: int):
    return settings(derandomize=True, max_examples=n, deadline=None)


# ------------------------------------------------------------------------------------------- strategies
dims = st.one_of(st.integers(1, 64), st.integers(1, 512), st.integers(16, 16384))  # skinny to large


@st.composite
def gemms(draw):
    m = draw(dims)
    n, k = draw(st.integers(16, 16384)), draw(st.integers(16, 16384))
    return Gemm("g", "fp16", m=m, n=n, k=k, batch=draw(st.sampled_from((1, 1, 1, 2, 8))))


@st.composite
def attentions(draw):
    kv_heads = draw(st.sampled_from((1, 4, 8)))
    heads = kv_heads * draw(st.sampled_from((1, 2, 4)))
    q_len = draw(st.one_of(st.just(1), st.integers(1, 16), st.integers(1, 4096)))
    causal = draw(st.booleans())
    kv_len = q_len + draw(st.integers(0, 8192)) if causal else draw(st.integers(1, 8192))
    return Attention("a", "fp16", batch=draw(st.integers(1, 16)), heads=heads, kv_heads=kv_heads, q_len=q_len,
                     kv_len=kv_len, head_dim=draw(st.sampled_from((64, 128, 256))), causal=causal)  # fmt: skip


elementwise = st.builds(
    lambda n, i: Elementwise("e", "fp16", elements=n, inputs=i),
    st.integers(1, 10**9),
    st.integers(1, 3),
)
gpu_ops = st.one_of(gemms(), attentions(), elementwise)
factors = st.lists(st.floats(0.25, 4.0), min_size=2, max_size=2, unique=True).map(sorted)


def _gpu(preset: str, overrides: list[str] = ()):
    return load_system(preset, list(overrides)).devices["gpu"]


def _t(preset: str, op, overrides: list[str] = ()) -> float:
    return _gpu(preset, overrides).op_cost(op).duration_s


def _scaled_peaks(preset: str, f: float) -> list[str]:
    """Overrides that multiply every stated tensor and vector peak by `f`."""
    p = _gpu(preset).params
    return [f"{block}.{d}={v * f!r} FLOP/s" for block in ("tensor_peak", "vector_peak")
            for d, v in p[block].items()]  # fmt: skip


# ------------------------------------------------------------------------------- a faster part is faster
@_settings(400)
@given(st.sampled_from(GPUS), gpu_ops, factors)
def test_gpu_op_cost_is_non_increasing_in_memory_bandwidth(preset, op, fs):
    bw = _gpu(preset).params["memory"]["bandwidth"]
    slow, fast = (_t(preset, op, [f"memory.bandwidth={bw * f!r} B/s"]) for f in fs)
    assert fast <= slow * (1 + REL)


@_settings(400)
@given(st.sampled_from(GPUS), gpu_ops, factors)
def test_gpu_op_cost_is_non_increasing_in_clock_with_peaks_scaled(preset, op, fs):
    clock = _gpu(preset).params["clock"]
    slow, fast = (_t(preset, op, [f"clock={clock * f!r} Hz", *_scaled_peaks(preset, f)]) for f in fs)
    assert fast <= slow * (1 + REL)


@_settings(400)
@given(st.sampled_from(GPUS), gpu_ops, factors)
def test_gpu_op_cost_is_non_increasing_in_l2_bandwidth(preset, op, fs):
    bw = _gpu(preset).params["l2"]["bandwidth"]
    slow, fast = (_t(preset, op, [f"l2.bandwidth={bw * f!r} B/s"]) for f in fs)
    assert fast <= slow * (1 + REL)


def _transfer_s(kind: str, bandwidth_Bps: float, nbytes: float) -> float:
    text = ("type: system\ndevices:\n  gpu: {base: a100-pcie-40gb}\n  cpu: {base: epyc-7742}\nlinks:\n"
            f"  - {{type: {kind}, bandwidth: {bandwidth_Bps!r} B/s, between: [gpu, cpu]}}\n")  # fmt: skip
    g = OpGraph("x")
    g.add(Transfer("t", nbytes=nbytes, src="cpu", dst="gpu"), (), ("cpu",))
    return Engine(load_system(parse_yaml(text, "link.yaml"))).run(Program.from_graph(g))


@_settings(150)
@given(st.sampled_from(("pcie", "generic")), st.lists(st.floats(1e8, 1e12), min_size=2, max_size=2, unique=True),
       st.floats(1.0, 1e11))  # fmt: skip
def test_transfer_time_is_non_increasing_in_link_bandwidth(kind, bws, nbytes):
    slow, fast = (_transfer_s(kind, bw, nbytes) for bw in sorted(bws))
    assert fast <= slow * (1 + REL)


# ------------------------------------------------------------------ adding SMs (per-SM peaks held) never slows
def _with_sms(preset: str, sms: int, extra: list[str] = ()) -> list[str]:
    base = _gpu(preset).params["sms"]
    return [f"sms={sms}", *_scaled_peaks(preset, sms / base), *extra]


@st.composite
def sm_steps(draw):
    preset = draw(st.sampled_from(GPUS))
    base = _gpu(preset).params["sms"]
    sms = draw(st.integers(max(1, base // 2), 2 * base))
    return preset, sms, sms + draw(st.integers(1, 8))


@_settings(400)
@given(sm_steps(), gpu_ops)
@example(("a100-sxm4-80gb", 108, 109), Gemm("g", "fp16", m=64, n=1024, k=1024))
def test_adding_sms_with_per_sm_peaks_held_never_slows_a_gpu(step, op):
    preset, fewer, more = step
    assert _t(preset, op, _with_sms(preset, more)) <= _t(preset, op, _with_sms(preset, fewer)) * (1 + REL)


# ------------------------------------------------------------------------- a bigger workload is not faster
LLMS = (("a100-sxm4-80gb", "llama-2-7b"), ("h100-sxm5-80gb", "llama-3-8b"), ("rtx-4090", "llama-2-7b"))


def _latency(preset: str, model: str, scenario, overrides: list[str] = ()) -> float | None:
    """Latency of `scenario`, or None when it runs out of memory."""
    system = load_system(preset, list(overrides)) if overrides else preset
    try:
        return simulate(system, model, scenario, dtype="fp16", keep_records=False).summary["latency_s"]
    except OutOfMemory:
        return None


@_settings(150)
@given(st.sampled_from(LLMS), st.integers(1, 32), st.lists(st.integers(1, 4000), min_size=2, max_size=2,
                                                            unique=True).map(sorted))  # fmt: skip
def test_decode_latency_is_non_decreasing_in_context_length(pair, batch, ctxs):
    short, long = (_latency(*pair, Decode(batch=batch, context_len=c)) for c in ctxs)
    if short is None:  # out of memory at the shorter context: so at the longer one
        assert long is None
    elif long is not None:
        assert long >= short * (1 - REL)


def _batch_step(pair, batches, overrides: list[str] = ()) -> None:
    small, big = (_latency(*pair, Decode(batch=b, context_len=1024), overrides) for b in batches)
    if small is None:
        assert big is None
    elif big is not None:
        assert big >= small * (1 - REL)


batch_pairs = st.one_of(
    st.lists(st.integers(1, 300), min_size=2, max_size=2, unique=True).map(sorted),
    st.integers(1, 299).map(lambda b: [b, b + 1]),
)


@_settings(150)
@given(st.sampled_from(LLMS), batch_pairs)
@example(("h100-sxm5-80gb", "llama-3-8b"), [64, 65])
def test_decode_latency_is_non_decreasing_in_batch_up_to_the_memory_limit(pair, batches):
    _batch_step(pair, batches)


def _prefill_step(pair, batch, prompts, overrides: list[str] = ()) -> None:
    short, long = (_latency(*pair, Prefill(batch=batch, prompt_len=p), overrides) for p in prompts)
    if short is None:
        assert long is None
    elif long is not None:
        assert long >= short * (1 - REL)


prompt_pairs = st.lists(st.integers(1, 4000), min_size=2, max_size=2, unique=True).map(sorted)


@_settings(100)
@given(st.sampled_from(LLMS), st.integers(1, 4), prompt_pairs)
@example(("a100-sxm4-80gb", "llama-2-7b"), 1, [1, 2])
def test_prefill_latency_is_non_decreasing_in_prompt_length(pair, batch, prompts):
    _prefill_step(pair, batch, prompts)


def test_padding_ctas_that_share_a_panel_add_no_dram_bandwidth():
    # m = 65 pads a second row of 64x64 tiles (32 CTAs against 16) that re-read the same B panels through
    # L2: the distinct bytes in flight, and so the DRAM rate (Little's law), are those of m = 64, and the
    # extra row only adds work. (Counted in CTAs, as before, m = 65 ran 26% faster.)
    op64, op65 = (Gemm("g", "fp16", m=m, n=1024, k=1024) for m in (64, 65))
    a100 = _gpu("a100-sxm4-80gb")
    assert a100.op_cost(op65).duration_s >= a100.op_cost(op64).duration_s
