"""The MoE offload case studies (docs/moe.md, notebooks/moe_offload_case_studies.ipynb) as assertions: HOBBIT's
trend and the link-bound closed forms it sits between, HybriMoE's balance against a static split, the expert
hit rate against cache size (closed forms for LRU and for uniform routing), and the system presets the
studies run on, against their spec sheets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from simcore.cli import main as cli
from simcore.experiment import run
from simcore.moe import LayerCaches
from simcore.system import load_system
from traces.routing import RoutingTrace, load_routing, reuse_distances, synthetic

EXPERIMENTS = Path(__file__).resolve().parents[1] / "configs" / "experiments"
HOBBIT = EXPERIMENTS / "moe-offload-mixtral-rtx4090.yaml"
HYBRIMOE = EXPERIMENTS / "moe-offload-hybrimoe-deepseek-v2-lite-a6000.yaml"
HITRATE = EXPERIMENTS / "moe-offload-hitrate-mixtral-jetson-orin.yaml"
POLICIES = ("lru", "lfu", "mrs", "hobbit")
GB, GiB = 1e9, 2**30

# ------------------------------------------------------------------------------------------ presets


def _pcie_Bps(gt_per_s: float, lanes: int) -> float:
    """Raw PCIe rate per direction: GT/s x 128b/130b encoding x lanes / 8 bits (PCIe 3.0 and later)."""
    return gt_per_s * 1e9 * 128 / 130 * lanes / 8


@pytest.mark.parametrize(
    "name", ["jetson-agx-orin-devkit", "xeon-amx-a100-pcie", "t4-server", "workstation-rtx-a6000"]
)
def test_the_new_presets_show_and_load(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["hw", "show", name, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)
    system = load_system(name)
    assert {"gpu", "cpu", "nvme"} <= set(system.devices)
    assert system.route("nvme", "gpu")  # a drive the expert store can live on


def test_jetson_agx_orin_shares_one_lpddr5_memory_between_gpu_and_cpu() -> None:
    s = load_system("jetson-agx-orin-devkit")
    assert s.memory_of("cpu") is s.memory_of("gpu")
    mem = s.memory_of("gpu")
    assert mem.capacity_B == 64 * GiB  # data sheet: 64 GB LPDDR5
    assert s.devices["gpu"].params["memory"]["bandwidth"] == pytest.approx(256 * 6400e6 / 8)  # 204.8 GB/s
    cpu = s.devices["cpu"]
    assert cpu.peak_flops("fp32") == pytest.approx(12 * 2.2e9 * 16)  # 12 A78AE cores, 2 x 128-bit FMA pipes
    assert cpu.peak_flops("bf16") == cpu.peak_flops("fp32")  # Armv8.2: no BF16 instructions
    (link,) = [k for k in s.links if {k.a, k.b} == {"gpu", "cpu"}]
    assert link.peak_Bps == pytest.approx(204.8 * GB)  # a copy moves through the one memory


def test_the_xeon_amx_server_with_an_a100_pcie() -> None:
    s = load_system("xeon-amx-a100-pcie")
    cpu, gpu = s.devices["cpu"], s.devices["gpu"]
    # AMX: TDPBF16PS, 16x16x32 FMAs per 16 cycles = 1024 FLOP/cycle/core; 56 cores at 2.0 GHz (ARK)
    assert cpu.peak_flops("bf16") == pytest.approx(56 * 2.0e9 * 1024)
    assert cpu.params["memory"]["bandwidth"] == pytest.approx(8 * 4800e6 * 8)  # 8 x DDR5-4800
    assert gpu.params["memory"]["capacity"] == 40 * GiB and gpu.params["memory"]["bandwidth"] == 1.555e12
    (link,) = [k for k in s.links if {k.a, k.b} == {"gpu", "cpu"}]
    assert (link.generation, link.lanes) == (4, 16) and link.peak_Bps == pytest.approx(_pcie_Bps(16, 16))


def test_the_t4_server_has_over_200_gb_of_host_memory() -> None:
    s = load_system("t4-server")
    cpu, gpu = s.devices["cpu"], s.devices["gpu"]
    assert cpu.memory_capacity_B >= 200 * GB  # the "T4 server with 200+ GB DRAM"
    assert cpu.params["memory"]["bandwidth"] == pytest.approx(6 * 2933e6 * 8)  # ARK: 6 x DDR4-2933
    assert cpu.peak_flops("fp32") == pytest.approx(20 * 2.5e9 * 64)  # 20 cores, 2 AVX-512 FMA units
    assert (
        gpu.params["memory"]["capacity"] == 16 * GiB and gpu.params["memory"]["bandwidth"] == 320e9
    )  # datasheet
    (link,) = [k for k in s.links if {k.a, k.b} == {"gpu", "cpu"}]
    assert (link.generation, link.lanes) == (3, 16) and link.peak_Bps == pytest.approx(_pcie_Bps(8, 16))


def test_the_rtx_a6000_workstation() -> None:
    s = load_system("workstation-rtx-a6000")
    cpu, gpu = s.devices["cpu"], s.devices["gpu"]
    assert (
        gpu.params["memory"]["capacity"] == 48 * GiB and gpu.params["memory"]["bandwidth"] == 768e9
    )  # datasheet
    assert cpu.params["memory"]["bandwidth"] == pytest.approx(8 * 3200e6 * 8)  # 8 x DDR4-3200 (AMD)
    assert cpu.peak_flops("fp32") == pytest.approx(32 * 3.6e9 * 32)  # 32 Zen 3 cores, 2 x 256-bit FMA
    (link,) = [k for k in s.links if {k.a, k.b} == {"gpu", "cpu"}]
    assert (link.generation, link.lanes) == (4, 16) and link.peak_Bps == pytest.approx(_pcie_Bps(16, 16))


# ------------------------------------------------------------------------------------------ hit rate


def _replay(trace: RoutingTrace, policy: str, capacity: int) -> tuple[int, int, int]:
    """(hits, accesses, hits on experts seen before) of `policy` replayed on `trace` as the moe-offload
    scenario does with every miss copied in: a step's experts looked up at once, then each miss admitted."""
    caches = LayerCaches(policy, trace.layers, capacity, trace.num_experts)
    hits = accesses = rehits = 0
    for layer in range(trace.layers):
        cache, seen = caches[layer], set()
        for s in range(trace.steps):
            routed = trace.routed(s, layer)
            h, misses = cache.lookup(routed)
            hits, accesses, rehits = hits + len(h), accesses + len(routed), rehits + sum(e in seen for e in h)
            seen.update(routed)
            for e in misses:
                cache.admit(e, routed)
    return hits, accesses, rehits


def _step_distances(trace: RoutingTrace) -> np.ndarray:
    """LRU stack distance of each re-access when a step's experts are looked up at once: the distinct experts
    ranking above it by (last step used, id), i.e. used at later steps or at its own last step with a
    larger id (the cache's tie-break evicts the lower id first)."""
    out: list[int] = []
    for layer in range(trace.layers):
        stack: list[int] = []
        for s in range(trace.steps):
            routed = sorted(trace.routed(s, layer))
            out += [len(stack) - 1 - stack.index(e) for e in routed if e in stack]
            stack = [e for e in stack if e not in routed] + routed
    return np.array(out)


TRACES = {
    "shipped": lambda: load_routing("mixtral-8x7b-correlated"),
    "uniform": lambda: synthetic(8, 8, 2, 128, seed=1),
    "zipf": lambda: synthetic(8, 8, 2, 128, zipf_s=1.2, seed=2),
    "locality": lambda: synthetic(8, 8, 2, 128, locality=0.5, seed=3),
    "top-1": lambda: synthetic(8, 8, 1, 128, locality=0.3, seed=4),
    "batch 2": lambda: synthetic(8, 8, 2, 128, tokens=2, locality=0.3, seed=5),
}


@pytest.mark.parametrize("name", list(TRACES))
def test_lru_hits_on_re_accesses_are_the_reuse_distances_below_the_cache(name: str) -> None:
    """An expert seen before is in an LRU cache of c experts exactly when fewer than c experts rank above it
    by (last use, id), as long as c >= the experts a step routes (k T), so every miss is admitted: the
    trace's `reuse_distances` (a step's experts looked up at once) count the hits exactly."""
    tr = TRACES[name]()
    width = tr.top_k * tr.tokens
    d = np.array(reuse_distances(tr))
    assert np.array_equal(np.sort(d), np.sort(_step_distances(tr)))
    for c in range(width, tr.num_experts + 1):
        assert _replay(tr, "lru", c)[2] == np.count_nonzero(d < c)


def test_with_uniform_independent_routing_every_policy_hits_c_over_e() -> None:
    """Whatever a full cache of c experts holds, the next step's k experts are a uniform k-subset of E drawn
    independently of it: hits per lookup are hypergeometric with mean k c / E and variance
    k (c/E)(1 - c/E)(E - k)/(E - 1), so over n lookups the hit rate is c/E within 4 standard errors."""
    tr = synthetic(16, 8, 2, 128, seed=11)
    E, k, n = tr.num_experts, tr.top_k, tr.steps * tr.layers
    for c in range(1, E):
        se = math.sqrt(n * k * (c / E) * (1 - c / E) * (E - k) / (E - 1)) / (n * k)
        for policy in POLICIES:
            hits, accesses, _ = _replay(tr, policy, c)
            assert hits / accesses == pytest.approx(c / E, abs=4 * se), (policy, c)


def test_a_cache_of_k_experts_holds_the_last_steps_experts_whatever_its_policy() -> None:
    """With one token and c = k, every miss is admitted over the experts the step does not use, so after each
    step the cache is that step's experts: every policy hits the consecutive-step overlap (plus, at the first
    step, the initial cache 0..k-1)."""
    for tr in (load_routing("mixtral-8x7b-correlated"), synthetic(8, 8, 2, 64, zipf_s=1.0, seed=6)):
        k = tr.top_k
        overlap = sum(len(set(tr.routed(s, la)) & set(tr.routed(s - 1, la))) for s in range(1, tr.steps)
                      for la in range(tr.layers))  # fmt: skip
        cold = sum(len(set(tr.routed(0, la)) & set(range(k))) for la in range(tr.layers))
        assert {_replay(tr, p, k)[0] for p in POLICIES} == {overlap + cold}


def test_frequency_pays_under_skew_and_no_policy_beats_the_static_optimum() -> None:
    """Zipf-skewed routing with no locality: frequency (LFU, HOBBIT's score) learns the popular experts, LRU
    keeps whatever came last; and no online policy beats the c most popular experts held for good (the
    static optimum of independent draws), up to the noise of the trace: hits per lookup lie in [0, k], so
    their standard deviation is at most k/2 (Popoviciu) and the hit rate's standard error 1/(2 sqrt(n))."""
    tr = synthetic(16, 8, 2, 256, zipf_s=1.2, seed=7)
    pop = np.zeros((tr.layers, tr.num_experts))
    for la in range(tr.layers):
        pop[la] = np.bincount(tr.experts[:, la].ravel(), minlength=tr.num_experts)
    best = np.sort(pop, axis=1)[:, ::-1].cumsum(axis=1).sum(axis=0)  # hits of the c most popular, per c
    n = tr.steps * tr.layers
    rate = {(p, c): _replay(tr, p, c)[0] / (n * tr.top_k) for p in POLICIES for c in range(1, tr.num_experts)}
    for c in range(1, tr.num_experts):
        for p in POLICIES:
            assert rate[p, c] <= best[c - 1] / (n * tr.top_k) + 4 / (2 * math.sqrt(n))
    for c in (3, 4, 5):
        assert rate["lfu", c] > rate["lru", c] and rate["hobbit", c] > rate["lru", c]


def test_lru_hits_every_expert_repeated_from_the_previous_step() -> None:
    """Temporal locality: an expert the previous step also used has at most kT - 1 experts above it, so an LRU
    cache of c >= kT hits it; the hit rate is at least the share of such repeats."""
    tr = synthetic(8, 8, 2, 128, locality=0.5, seed=8)
    repeats = sum(len(set(tr.routed(s, la)) & set(tr.routed(s - 1, la))) for s in range(1, tr.steps)
                  for la in range(tr.layers))  # fmt: skip
    for c in range(2, 8):
        assert _replay(tr, "lru", c)[2] >= repeats


@pytest.mark.parametrize(("ratio", "policy"), [(0.25, "lru"), (0.5, "lfu"), (0.75, "mrs")])
def test_the_hit_rate_experiment_measures_the_replayed_cache(ratio: float, policy: str) -> None:
    out = run(HITRATE, [f"scenario.moe.cache_ratio={ratio}", f"scenario.moe.policy={policy}"],
              keep_records=False).summary  # fmt: skip
    hits, accesses, _ = _replay(load_routing("mixtral-8x7b-correlated"), policy, round(ratio * 8))
    assert out["expert_hit_rate"] == hits / accesses
    assert out["routing_trace"] == "mixtral-8x7b-correlated" and out["experts_cached_per_layer"] == ratio * 8


# -------------------------------------------------------------------------------------------- HOBBIT

ON_DEMAND = ["scenario.moe.policy=lru", "scenario.moe.prefetch=none", "scenario.moe.low_precision=null"]
HOBBIT_LIKE = ["scenario.moe.policy=hobbit"]  # the experiment's int4 low-score misses and oracle prefetch
#: GPU memory for cache ratios that do not fit the 4090's 24 GB (a what-if: bandwidth and compute unchanged)
GROWN = {0.25: "48GiB", 0.5: "80GiB", 1.0: "120GiB"}


def _hobbit(ratio: float, sets: list[str]) -> dict:
    extra = [f"hardware.devices.gpu.memory.capacity={GROWN[ratio]}"] if ratio in GROWN else []
    return run(HOBBIT, ["scenario.steps=8", f"scenario.moe.cache_ratio={ratio}", *extra, *sets],
               keep_records=False).summary  # fmt: skip


def test_hobbits_gain_grows_as_the_cache_shrinks_between_link_bound_closed_forms() -> None:
    """Both offloaders share one PCIe 4.0 x16 link: a token takes at least its copied bytes over the link's
    rate, and at most that plus the compute of a step with every expert resident and the link latency of
    each copy (two a layer at most: its misses and the next layer's prefetch). Within these, the gain of
    HOBBIT's mechanisms (all acting on misses) falls as the cache grows."""
    link = load_system("workstation-rtx4090").links[0]
    compute_s = _hobbit(1.0, ON_DEMAND)["time_per_output_token_s"]
    gain = {}
    for ratio in (0.0, 0.125, 0.25, 0.5):
        plain, fast = _hobbit(ratio, ON_DEMAND), _hobbit(ratio, HOBBIT_LIKE)
        for s in (plain, fast):
            floor = s["expert_bytes_fetched_per_token_B"] / link.bw_Bps
            assert floor <= s["time_per_output_token_s"] <= floor + compute_s + 2 * 32 * link.latency_s
        gain[ratio] = fast["tokens_per_s"] / plain["tokens_per_s"]
    assert gain[0.0] > gain[0.125] > max(gain[0.25], gain[0.5]) > 1.1


# ------------------------------------------------------------------------------------------ HybriMoE

STATIC = ["scenario.moe.misses=cpu", "scenario.moe.policy=lru"]  # kTransformers-like


def _hybrimoe(sets: list[str]) -> tuple[dict, dict]:
    return (run(HYBRIMOE, ["scenario.steps=8", *sets, *STATIC], keep_records=False).summary,
            run(HYBRIMOE, ["scenario.steps=8", *sets], keep_records=False).summary)  # fmt: skip


def test_at_batch_one_the_balance_keeps_every_miss_on_the_threadripper() -> None:
    """A DeepSeek-V2-Lite expert is 3 x 2048 x 1408 bf16 weights: the CPU reads all six of a token's in
    6 x 17.3 MB / (204.8 GB/s x 0.75) = 0.68 ms, less than one crosses PCIe 4.0 x16 (0.69 ms), so the balance
    copies nothing and is the static split. Nothing is ever admitted, so the cache stays experts 0..c-1 and
    the hit rate is the share of routed experts below c."""
    system = load_system("workstation-rtx-a6000")
    link, cpu = system.links[0], system.devices["cpu"]
    expert_B = 3 * 2048 * 1408 * 2
    assert 6 * expert_B / cpu.memory_bandwidth_Bps < expert_B / link.bw_Bps + link.latency_s
    tr = synthetic(26, 64, 6, 8, locality=0.15, seed=0)  # the experiment's trace: 26 MoE layers, 8 steps
    for ratio in (0.25, 0.5, 0.75):
        static, balance = _hybrimoe([f"scenario.moe.cache_ratio={ratio}"])
        assert balance["experts_fetched"] == 0 and balance["tokens_per_s"] == static["tokens_per_s"]
        c = round(ratio * 64)
        below = sum(e < c for s in range(tr.steps) for la in range(tr.layers) for e in tr.routed(s, la))
        assert balance["expert_hit_rate"] == pytest.approx(below / (tr.steps * tr.layers * 6), rel=1e-12)


def test_the_balance_gains_where_the_cpu_queue_is_the_longer_one() -> None:
    """Batch 16 lengthens the CPU queue, so some misses go to the GPU; a slower host (16 cores on dual-channel
    DDR5-5600, 89.6 GB/s) sends more and gains more. The balance is never slower than the static split (it
    can choose it), up to the contention its closed-form costs leave out (0.1 %)."""
    static, balance = _hybrimoe(["scenario.batch=16"])
    assert 0 < balance["experts_fetched"] < balance["experts_on_cpu"]
    assert balance["tokens_per_s"] >= static["tokens_per_s"] * 0.999
    slow = ["hardware.devices.cpu.cores=16", "hardware.devices.cpu.memory.bandwidth=89.6GB/s"]
    slow_static, slow_balance = _hybrimoe(slow)
    assert slow_balance["experts_fetched"] > 0
    assert slow_balance["tokens_per_s"] / slow_static["tokens_per_s"] > 1.01
