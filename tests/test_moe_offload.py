"""Expert offload: routing traces (format, loader errors, generators, statistics), expert caches (LRU, LFU,
MRS on hand-computed sequences) and the moe-offload scenario against closed forms: a full cache is the plain
decode, an empty one waits for each layer's experts' bytes over PCIe, prefetch hides the compute window,
low-precision loads move bits(int4)/bits(bf16) of the bytes, and the balanced CPU/GPU split is never slower
than either side alone."""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

import numpy as np
import pytest

from simcore.engine import Engine
from simcore.errors import ConfigError
from simcore.experiment import load_experiment, simulate
from simcore.moe import POLICIES, LayerCaches, replay
from simcore.ops import Transfer
from simcore.precision import bits
from simcore.scenarios import Decode
from simcore.system import load_system
from traces.routing import (
    RoutingTrace,
    expert_popularity,
    load_routing,
    repeat_rate,
    reuse_distances,
    shipped_routing,
    synthetic,
    write_routing,
)

# ------------------------------------------------------------------------------------------ traces


def test_a_written_trace_loads_back_unchanged(tmp_path: Path) -> None:
    tr = synthetic(4, 8, 2, 5, tokens=3, zipf_s=1.0, locality=0.5, seed=7)
    write_routing(tr, tmp_path / "t.jsonl")
    back = load_routing(tmp_path / "t.jsonl")
    assert np.array_equal(back.experts, tr.experts)
    assert np.allclose(back.scores, tr.scores, atol=1e-4)
    assert (back.layers, back.num_experts, back.top_k, back.tokens, back.steps) == (4, 8, 2, 3, 5)
    # gate scores are the top-k renormalized softmax, best first
    assert np.allclose(tr.scores.sum(axis=-1), 1.0)
    assert np.all(np.diff(tr.scores, axis=-1) <= 0)


def _write(tmp_path: Path, head: dict, *records: dict) -> Path:
    base = {"format": "moe-routing", "layers": 2, "experts": 4, "top_k": 2, "tokens": 1, "steps": 1}
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in ({**base, **head}, *records)) + "\n")
    return p


GOOD = {"step": 0, "layer": 0, "experts": [[0, 1]], "scores": [[0.6, 0.4]]}


@pytest.mark.parametrize(
    ("head", "records", "line", "words"),
    [
        ({}, [GOOD, {**GOOD, "layer": 2}], 3, "layer 2 is not in 0..1"),
        ({"top_k": 5}, [], 1, "top_k 5 is larger than the 4 experts"),
        ({}, [GOOD, {**GOOD, "layer": 1, "experts": [[0, 4]]}], 3, "expert id 4 is not in 0..3"),
        ({}, [GOOD, {**GOOD, "layer": 1, "experts": [[2, 2]]}], 3, "same expert twice"),
        ({}, [GOOD, {**GOOD, "layer": 1, "experts": [[1]], "scores": [[1.0]]}], 3, "top_k = 2"),
        ({}, [GOOD], 2, "step 0 layer 1 is missing"),
        ({}, [GOOD, GOOD], 3, "appears twice"),
        ({"layers": 0}, [], 1, "'layers' must be an integer >= 1"),
    ],
)
def test_a_bad_trace_is_one_line_naming_file_and_line(tmp_path, head, records, line, words) -> None:
    p = _write(tmp_path, head, *records)
    with pytest.raises(ConfigError) as e:
        load_routing(p)
    msg = str(e.value)
    assert f"{p}:{line}:" in msg and words in msg and "\n" not in msg


def test_a_trace_that_does_not_fit_the_model_is_refused_with_the_counts() -> None:
    tr = load_routing("mixtral-8x7b-correlated")
    tr.check(32, 8, 2)
    with pytest.raises(ConfigError, match="has 8 experts per layer; the model has 64"):
        tr.check(32, 64, 2)
    with pytest.raises(ConfigError, match="covers 32 MoE layers; the model has 26"):
        tr.check(26, 8, 2)
    with pytest.raises(ConfigError, match="top-k is 6"):
        tr.check(32, 8, 6)
    with pytest.raises(ConfigError, match="unknown routing trace 'nope'"):
        load_routing("nope")


def test_generators_are_seeded_and_skew_and_locality_do_what_they_say() -> None:
    a, b = synthetic(8, 8, 2, 50, seed=3), synthetic(8, 8, 2, 50, seed=3)
    assert np.array_equal(a.experts, b.experts)
    uniform = synthetic(4, 8, 2, 2000, seed=1)
    assert np.allclose(expert_popularity(uniform), 1 / 8, atol=0.02)
    skewed = synthetic(4, 8, 2, 2000, zipf_s=1.5, seed=1)
    assert expert_popularity(skewed).max(axis=1).min() > 0.25  # rank 1 of r^-1.5 over 8: 0.39 of draws
    # consecutive tokens share an expert with probability 1 - C(E-k, k)/C(E, k) under uniform routing
    independent = 1 - comb(6, 2) / comb(8, 2)
    assert repeat_rate(uniform, first_choice_only=False) == pytest.approx(independent, abs=0.02)
    local = synthetic(4, 8, 2, 2000, locality=0.5, seed=1)
    assert repeat_rate(local, first_choice_only=False) > independent + 0.25


def test_inter_layer_affinity_makes_the_next_layers_experts_a_function_of_this_layers() -> None:
    tr = synthetic(6, 8, 2, 300, affinity=1.0, seed=4)
    for layer in range(tr.layers - 1):
        follows: dict[frozenset, frozenset] = {}
        for s in range(tr.steps):
            a, b = frozenset(tr.routed(s, layer)), frozenset(tr.routed(s, layer + 1))
            assert follows.setdefault(a, b) == b
    free = synthetic(6, 8, 2, 300, seed=4)
    pairs = {(frozenset(free.routed(s, 0)), frozenset(free.routed(s, 1))) for s in range(free.steps)}
    assert len(pairs) > len({a for a, _ in pairs})  # without it, one set is followed by several


def test_the_shipped_trace_matches_mixtrals_published_repetition() -> None:
    assert "mixtral-8x7b-correlated" in shipped_routing()
    tr = load_routing("mixtral-8x7b-correlated")
    # Mixtral paper §5: consecutive tokens share one of their two experts ~62% of the time at layer 15
    assert repeat_rate(tr, first_choice_only=False) == pytest.approx(0.62, abs=0.03)


def test_reuse_distance_is_the_lru_stack_distance() -> None:
    # one layer, top-1: experts 0 1 2 0 1 1 -> 0 is reused after 2 others (1, 2), 1 after 2 (2, 0), 1 after 0
    ids = np.array([0, 1, 2, 0, 1, 1]).reshape(6, 1, 1, 1)
    tr = RoutingTrace(ids, np.ones_like(ids, dtype=float), 4)
    assert reuse_distances(tr) == [2, 2, 0]


# ------------------------------------------------------------------------------------------ caches


def _replay(policy: str, capacity: int, seq: list[int], experts: int = 4, scores: list[float] | None = None):
    cache = LayerCaches(policy, 1, capacity, experts)[0]
    hits = 0
    for n, e in enumerate(seq):
        h, misses = cache.lookup({e: scores[n] if scores else 1.0})
        hits += len(h)
        for m in misses:
            cache.admit(m, [e])
    return hits, sorted(cache.held)


def test_lru_lfu_and_mrs_evict_what_their_definitions_say() -> None:
    assert set(POLICIES) >= {"lru", "lfu", "mrs"}
    seq = [2, 0, 2, 3, 0]  # cache of 2, starting with {0, 1}
    # LRU: 2 evicts 0 (both unused, lower id first), 0 evicts 1, 2 hits, 3 evicts 0 (older), 0 misses
    assert _replay("lru", 2, seq) == (1, [0, 3])
    # LFU: counts 2:2, 0:1 when 3 arrives -> 0 goes; 0 then evicts 3 (count 1, older than 2's count 2)
    assert _replay("lfu", 2, seq) == (1, [0, 2])
    # MRS: a high score keeps an expert that LRU would drop: 1 (score 0.9) outlives 2 (score 0.1)
    hits, held = _replay("mrs", 2, [1, 2, 3], scores=[0.9, 0.1, 0.5])
    assert held == [1, 3]
    assert _replay("lru", 2, [1, 2, 3])[1] == [2, 3]
    assert _replay("lru", 0, seq) == (0, [])


# ------------------------------------------------------------------------------------- the scenario

SMALL = "deepseek-v2-lite"  # 26 MoE layers of 64 experts (top 6) + a dense first layer, shared experts


def _offload(model: str = SMALL, hardware: str = "dgx-h100-8", **moe):
    """One decode step of `model` with the `moe:` block `moe`; the `tp: 1` plan."""
    return load_experiment({"name": "t", "hardware": hardware, "model": model, "dtype": "bf16",
                            "parallelism": {"tp": 1},
                            "scenario": {"kind": "moe-offload", "batch": 1, "context_len": 512, "steps": 1,
                                         "moe": moe}}).run(keep_records=False).summary  # fmt: skip


def _copy_s(hardware: str, nbytes: float) -> float:
    system = load_system(hardware)
    eng = Engine(system, keep_records=False)
    cpu = "cpu0" if "cpu0" in system.devices else "cpu"
    gpu = "gpu0" if "gpu0" in system.devices else "gpu"
    return eng.transfer_plan(Transfer("x", "bf16", nbytes=nbytes, src=cpu, dst=gpu)).solo_s


def test_with_every_expert_cached_a_step_is_the_plain_decode() -> None:
    plain = simulate("dgx-h100-8", SMALL, Decode(batch=1, context_len=512), tp=1, keep_records=False).summary
    full = _offload(cache_ratio=1.0)
    assert full["latency_s"] == pytest.approx(plain["latency_s"], rel=1e-9)
    assert full["expert_hit_rate"] == 1.0 and full["experts_fetched"] == 0


def test_with_an_empty_cache_each_layer_waits_for_its_experts_bytes_over_pcie() -> None:
    from models.llm import load_llm

    spec = load_llm(SMALL)
    full, empty = _offload(cache_ratio=1.0), _offload(cache_ratio=0.0)
    expert_B = spec.moe.expert_params(spec.hidden) * 2  # bf16
    layers = sum(spec.moe.is_moe(i) for i in range(spec.layers))
    k = spec.moe.top_k  # one token: top-k distinct experts per layer
    assert empty["expert_hit_rate"] == 0.0
    assert empty["expert_bytes_fetched_per_token_B"] == pytest.approx(layers * k * expert_B)
    # every hop from host memory to the GPU carries exactly those bytes (one token: nothing else crosses)
    hops = list(empty["link_bytes_per_token_B"].values())
    assert hops and hops == pytest.approx([layers * k * expert_B] * len(hops))
    expected = full["latency_s"] + layers * _copy_s("dgx-h100-8", k * expert_B)
    assert empty["latency_s"] == pytest.approx(expected, rel=1e-9)
    # the GPU idles exactly while the copies run
    assert full["gpu_stall_s_per_token"] == pytest.approx(0.0, abs=1e-12)
    assert empty["gpu_stall_s_per_token"] == pytest.approx(
        layers * _copy_s("dgx-h100-8", k * expert_B), rel=1e-6
    )


def test_prefetch_hides_the_compute_window_of_every_layer_but_the_first() -> None:
    from models.llm import load_llm

    spec = load_llm(SMALL)
    layers = sum(spec.moe.is_moe(i) for i in range(spec.layers))
    full, empty = _offload(cache_ratio=1.0), _offload(cache_ratio=0.0)
    pre = _offload(cache_ratio=0.0, prefetch="next-layer")
    assert pre["expert_hit_rate"] == pytest.approx((layers - 1) / layers)  # all but the first MoE layer
    assert pre["prefetch_hit_rate"] == 1.0 and pre["cache_hit_rate"] == 0.0  # nothing was resident
    # copies (~2 ms) outlast a layer's compute, so each prefetched layer saves its compute window: the
    # GPU time of one layer (the step's compute / layers), up to HBM shared with the copies
    saved = empty["latency_s"] - pre["latency_s"]
    window = full["latency_s"] / spec.layers
    assert 0.8 * (layers - 1) * window < saved < 1.05 * (layers - 1) * window
    # a wrong guess helps nothing and costs its bytes
    blind = _offload(cache_ratio=0.0, prefetch="next-layer", prefetch_accuracy=0.0)
    assert blind["prefetch_hit_rate"] == 0.0
    assert blind["latency_s"] > empty["latency_s"]


def _copy_between(hardware: str, src: str, dst: str, nbytes: float) -> float:
    eng = Engine(load_system(hardware), keep_records=False)
    return eng.transfer_plan(Transfer("x", "bf16", nbytes=nbytes, src=src, dst=dst)).solo_s


def test_experts_on_nvme_wait_for_the_drive_instead_of_host_memory() -> None:
    from models.llm import load_llm

    spec = load_llm("mixtral-8x7b")
    k_B = spec.moe.top_k * spec.moe.expert_params(spec.hidden) * 2
    run = {"model": "mixtral-8x7b", "hardware": "workstation-rtx4090", "cache_ratio": 0.0}
    host = _offload(**run)
    nvme = _offload(**run, store="nvme")
    per_layer = _copy_between("workstation-rtx4090", "nvme", "gpu", k_B) - _copy_between(
        "workstation-rtx4090", "cpu", "gpu", k_B
    )
    assert nvme["latency_s"] == pytest.approx(host["latency_s"] + spec.layers * per_layer, rel=1e-9)
    with pytest.raises(ConfigError, match="misses: gpu"):
        _offload(**run, store="nvme", misses="cpu")


def test_low_precision_misses_move_int4_bytes() -> None:
    bf16 = _offload(cache_ratio=0.0)
    low = _offload(cache_ratio=0.0, low_precision="int4", low_score=1.0)  # every miss scores below 1
    ratio = low["expert_bytes_fetched_per_token_B"] / bf16["expert_bytes_fetched_per_token_B"]
    assert ratio == pytest.approx(bits("int4") / bits("bf16"))
    assert low["experts_low_precision"] == low["experts_fetched"] > 0
    assert low["latency_s"] < bf16["latency_s"]
    # a threshold of 0 loads nothing in low precision: the bf16 run exactly
    none = _offload(cache_ratio=0.0, low_precision="int4", low_score=0.0)
    assert none["latency_s"] == bf16["latency_s"]


def test_missed_experts_on_the_cpu_and_the_balanced_split() -> None:
    gpu = _offload(cache_ratio=0.0)
    cpu = _offload(cache_ratio=0.0, misses="cpu")
    both = _offload(cache_ratio=0.0, misses="balance")
    assert cpu["experts_fetched"] == 0 and cpu["experts_on_cpu"] > 0
    assert cpu["expert_bytes_fetched_per_token_B"] == 0.0
    assert both["latency_s"] <= min(gpu["latency_s"], cpu["latency_s"]) * 1.001
    assert 0 < both["experts_on_cpu"] < cpu["experts_on_cpu"]


def test_the_hit_rate_is_the_cache_replayed_on_the_trace() -> None:
    hits, accesses = replay(load_routing("mixtral-8x7b-correlated"), "lru", 2, steps=8)
    doc = {"name": "t", "hardware": "workstation-rtx4090", "model": "mixtral-8x7b", "precision": {"weights": "int4"},
           "scenario": {"kind": "moe-offload", "steps": 8,
                        "moe": {"trace": "mixtral-8x7b-correlated", "cache_ratio": 0.25}}}  # fmt: skip
    out = load_experiment(doc).run(keep_records=False).summary
    assert out["expert_hit_rate"] == pytest.approx(hits / accesses)
    assert out["experts_cached_per_layer"] == 2


def test_bad_scenarios_are_refused_before_time_zero(tmp_path: Path) -> None:
    base = {"name": "t", "hardware": "workstation-rtx4090", "model": "mixtral-8x7b",
            "scenario": {"kind": "moe-offload", "moe": {"trace": "mixtral-8x7b-correlated"}}}  # fmt: skip
    with pytest.raises(ConfigError, match="is dense"):
        load_experiment({**base, "model": "llama-2-7b"})
    with pytest.raises(ConfigError, match="routes 1 tokens per step; scenario.batch is 2"):
        load_experiment({**base, "scenario": {**base["scenario"], "batch": 2}})
    with pytest.raises(ConfigError, match="expected one of"):
        load_experiment({**base, "scenario": {"kind": "moe-offload", "moe": {"policy": "fifo"}}})
    with pytest.raises(ConfigError, match="one GPU"):
        load_experiment({**base, "offload": {"weights": True}})


# -------------------------------------------------------------------------------------- case study

HOBBIT = Path(__file__).resolve().parents[1] / "configs" / "experiments" / "moe-offload-mixtral-rtx4090.yaml"


def test_hobbits_trend_the_gain_over_on_demand_offloading_grows_as_the_cache_shrinks() -> None:
    """docs/moe.md: int4 low-score misses + oracle next-layer prefetch + LFU against an LRU cache of bf16
    experts copied on demand, Mixtral-8x7B on the RTX 4090 workstation."""
    plain = ["scenario.moe.policy=lru", "scenario.moe.prefetch=none", "scenario.moe.low_precision=null"]

    def speedup(ratio: float) -> float:
        sets = ["scenario.steps=8", f"scenario.moe.cache_ratio={ratio}"]
        fast = load_experiment(HOBBIT, sets).run(keep_records=False).summary["tokens_per_s"]
        slow = load_experiment(HOBBIT, sets + plain).run(keep_records=False).summary["tokens_per_s"]
        return fast / slow

    empty, eighth = speedup(0.0), speedup(0.125)
    assert empty > eighth > 1.1


def test_hobbits_score_keeps_what_is_recent_frequent_and_held_in_full_precision() -> None:
    # Cache of 2 holding {0, 1} in full precision. Lookups 0, 0, 1 (all hits): after them, with n = 3
    # lookups, expert 0 scores (last 2 + count 2 + full hits 2) / 3 = 2 and expert 1 (3 + 1 + 1) / 3 = 5/3,
    # so LRU would evict 0 and HOBBIT evicts 1 when 2 arrives (lookup 4: expert 2 misses).
    cache = POLICIES["hobbit"](2, 4)
    for e in (0, 0, 1):
        assert cache.lookup({e: 0.5}) == ([e], [])
    lru = POLICIES["lru"](2, 4)
    for e in (0, 0, 1):
        lru.lookup({e: 0.5})
    cache.lookup({2: 0.5})
    lru.lookup({2: 0.5})
    assert cache.admit(2, [2]) == 1 and lru.admit(2, [2]) == 0
    # a hit on a low-precision copy earns no high-precision use; one on a full-precision copy does
    one = POLICIES["hobbit"](1, 4)  # holds expert 0 in full precision
    one.lookup({1: 0.5})
    assert one.admit(1, [1], "low") == 0
    one.lookup({1: 0.5})
    one.lookup({0: 0.5})
    assert one.admit(0, [0]) == 1
    one.lookup({0: 0.5})
    assert (one.full_uses[1], one.full_uses[0]) == (0, 1)


def _prefill(context_len: int = 256, **moe):
    """Prefill `context_len` tokens, then one decode step, of SMALL on one H100 with the `moe:` block."""
    return load_experiment({"name": "t", "hardware": "dgx-h100-8", "model": SMALL, "dtype": "bf16",
                            "parallelism": {"tp": 1},
                            "scenario": {"kind": "moe-offload", "batch": 1, "context_len": context_len, "steps": 1,
                                         "prefill": True, "moe": moe}}).run(keep_records=False).summary  # fmt: skip


def test_prefill_with_an_empty_cache_waits_for_every_routed_experts_bytes() -> None:
    from models.llm import load_llm
    from simcore.scenarios import Prefill

    spec = load_llm(SMALL)
    expert_B = spec.moe.expert_params(spec.hidden) * 2  # bf16
    layers = sum(spec.moe.is_moe(i) for i in range(spec.layers))
    empty = _prefill(cache_ratio=0.0)
    # 256 prompt tokens choose 6 of 64 experts each: nearly every expert of every layer is routed and,
    # with nothing cached, copied before its GEMMs
    assert layers * 56 < empty["prefill_experts_fetched"] <= layers * 64
    copies = _copy_s("dgx-h100-8", empty["prefill_experts_fetched"] * expert_B)  # one copy of all the bytes
    plain = simulate("dgx-h100-8", SMALL, Prefill(batch=1, prompt_len=256), tp=1, keep_records=False).summary
    latency = _copy_s("dgx-h100-8", 0.0)
    # the copies are the floor; at most the whole compute of the prompt and a latency per layer come on top
    assert copies <= empty["prefill_s"] <= copies + layers * latency + plain["latency_s"]
    # with every expert resident nothing moves and the prompt costs about the plain prefill (the trace's
    # routed experts instead of the expected count of distinct experts)
    full = _prefill(cache_ratio=1.0)
    assert full["prefill_experts_fetched"] == 0
    assert full["prefill_s"] == pytest.approx(plain["latency_s"], rel=0.1)


def test_a_balanced_prefill_is_never_slower_than_either_side_alone() -> None:
    # HybriMoE's prefill trend: a static split (every miss on the CPU, kTransformers-like) or every miss
    # copied in are both beaten by the per-layer balance, which sends the lowest-scored misses to the CPU
    runs = {m: _prefill(cache_ratio=0.25, misses=m) for m in ("gpu", "cpu", "balance")}
    best_alone = min(runs["gpu"]["prefill_s"], runs["cpu"]["prefill_s"])
    assert runs["balance"]["prefill_s"] <= best_alone * 1.001
    assert 0 < runs["balance"]["prefill_experts_on_cpu"] < runs["cpu"]["prefill_experts_on_cpu"]


def test_on_unified_memory_every_expert_is_read_in_place() -> None:
    # The M2 Max's CPU uses the GPU's memory: the "host copy" of the experts is the GPU's own, so nothing is
    # cached or copied and a step is the plain decode to round-off, whatever the cache ratio says.
    plain = simulate("mac-m2-max", SMALL, Decode(batch=1, context_len=512), tp=1, keep_records=False).summary
    run = _offload(hardware="mac-m2-max", cache_ratio=0.25)
    assert run["unified_memory"] is True and run["expert_hit_rate"] == 1.0 and run["experts_fetched"] == 0
    assert run["latency_s"] == pytest.approx(plain["latency_s"], rel=1e-9)
    assert not _offload(cache_ratio=0.25)["unified_memory"]


def test_a_step_that_repeats_an_earlier_steps_plans_reuses_its_program_with_the_same_figures(
    monkeypatch,
) -> None:
    # The shipped trace wraps after 64 steps and the caches settle, so most of 160 steps repeat an earlier
    # step's layer plans and run as its program with the attention's context grown; writing every step
    # afresh must give the same times, energy, bytes and per-op records (to round-off).
    from simcore.scenarios import moe_offload

    exp = "configs/experiments/moe-offload-mixtral-rtx4090.yaml"
    sets = ["scenario.steps=160"]
    write, written_steps = moe_offload.StepProgram.write, []

    def counted(self, name, *args, **kwargs):  # type: ignore[no-untyped-def]
        written_steps.append(name)
        return write(self, name, *args, **kwargs)

    monkeypatch.setattr(moe_offload.StepProgram, "write", counted)
    reused = load_experiment(exp, sets).run()
    assert len(written_steps) < 160 / 2  # most steps reused an earlier step's program
    init = moe_offload.StepProgram.__init__

    class Forgetful(dict):
        def get(self, key, default=None):  # type: ignore[override]
            return default

    def fresh(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        self._templates = Forgetful()

    monkeypatch.setattr(moe_offload.StepProgram, "__init__", fresh)
    written = load_experiment(exp, sets).run()
    for key in ("latency_s", "energy_j", "expert_hit_rate", "experts_fetched", "ops"):
        assert reused.summary[key] == pytest.approx(written.summary[key], rel=1e-12)
    a, b = list(reused.ledger.records()), list(written.ledger.records())
    assert [r["name"] for r in a] == [r["name"] for r in b]
    assert [r["end_s"] for r in a] == pytest.approx([r["end_s"] for r in b], rel=1e-12)
