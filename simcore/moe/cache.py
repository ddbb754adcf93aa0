"""Expert caches: which of a layer's experts sit in GPU memory, and which one a miss evicts.

A cache holds `capacity` experts of one MoE layer. A decode step asks it for the experts the router chose
(`lookup`); the misses that are copied to the GPU are admitted (`admit`), each evicting the policy's victim
among the experts the current layer does not use. Policies form a registry (`POLICIES`), so a new one is a
class and a line. State is plain Python: a cache is updated in trace order, independent of timing.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from typing import ClassVar, Protocol

from simcore.errors import ConfigError


class ExpertCache:
    """One layer's cache; subclasses choose the victim (`priority`: the lowest goes first)."""

    name: ClassVar[str] = ""
    scored: ClassVar[bool] = False  # whether the policy keeps the decayed gate-score sums (`score`)

    def __init__(self, capacity: int, experts: int, decay: float = 0.5) -> None:
        if not 0 <= capacity <= experts:
            raise ConfigError(f"an expert cache of {capacity} experts does not fit a layer of {experts}",
                              key="scenario.moe.cache_ratio")  # fmt: skip
        self.capacity, self.experts, self.decay = capacity, experts, decay
        self.held: dict[int, str] = {e: "full" for e in range(capacity)}  # expert -> precision held in
        self.last: dict[int, int] = {e: -1 for e in range(experts)}  # last access (a step counter)
        self.count: dict[int, int] = {e: 0 for e in range(experts)}  # accesses so far
        self.score: dict[int, float] = {e: 0.0 for e in range(experts)}  # decayed sum of gate scores
        self.full_uses: dict[int, int] = {e: 0 for e in range(experts)}  # hits on a full-precision copy
        self.now = 0

    def lookup(self, routed: Mapping[int, float]) -> tuple[list[int], list[int]]:
        """(hits, misses) among the routed experts (expert -> gate score); records the access."""
        self.now += 1
        now, last, count, held = self.now, self.last, self.count, self.held
        hits, misses = [], []
        for e in routed:
            last[e] = now
            count[e] += 1
            precision = held.get(e)
            if precision is None:
                misses.append(e)
            else:
                hits.append(e)
                if precision == "full":
                    self.full_uses[e] += 1
        if self.scored:
            for e in range(self.experts):
                self.score[e] *= self.decay
            for e, s in routed.items():
                self.score[e] += s
        return hits, misses

    def admit(self, expert: int, pinned: Container[int] = (), precision: str = "full") -> int | None:
        """Put `expert` in the cache (held at `precision`); returns the expert it evicted, if any. Experts in
        `pinned` (the current layer's) are never evicted; with no room left, nothing is admitted."""
        if expert in self.held:
            self.held[expert] = precision if precision == "full" else self.held[expert]
            return None
        if self.capacity == 0:
            return None
        victim = None
        if len(self.held) >= self.capacity:
            free = [e for e in self.held if e not in pinned]
            if not free:
                return None
            victim = free[0] if len(free) == 1 else min(free, key=lambda e: (self.priority(e), e))
            del self.held[victim]
        self.held[expert] = precision
        return victim

    def priority(self, expert: int) -> float:
        raise NotImplementedError


POLICIES: dict[str, type[ExpertCache]] = {}


def register(name: str) -> Callable[[type[ExpertCache]], type[ExpertCache]]:
    def deco(cls: type[ExpertCache]) -> type[ExpertCache]:
        cls.name = name
        POLICIES[name] = cls
        return cls

    return deco


@register("lru")
class LRU(ExpertCache):
    """Least recently used goes first."""

    def priority(self, expert: int) -> float:
        return self.last[expert]


@register("lfu")
class LFU(ExpertCache):
    """Least frequently used goes first (counts kept for every expert, evicted or not; ties: LRU)."""

    def priority(self, expert: int) -> float:
        return self.count[expert] + self.last[expert] / (self.now + 2)


@register("mrs")
class MRS(ExpertCache):
    """HybriMoE's score-aware replacement: each expert's priority is a decayed sum of the gate scores it
    received (S <- decay * S + s every lookup), so an expert routed recently *and* with a high score stays;
    the lowest goes first."""

    scored = True

    def priority(self, expert: int) -> float:
        return self.score[expert]


@register("hobbit")
class Hobbit(ExpertCache):
    """HOBBIT's multidimensional score (Tang et al., 2024, sequence-level caching): recency (LRU), frequency
    (LFU) and high-precision frequency (LHU: hits on a full-precision copy, so a cached low-precision copy
    counts for less) each as a share of the lookups so far, summed with equal weights (HOBBIT weighs
    them per model); the lowest goes first. Its fourth dimension, the layer distance to the next use, is
    the same for every expert of a per-layer cache."""

    def priority(self, expert: int) -> float:
        n = max(1, self.now)
        return (self.last[expert] + self.count[expert] + self.full_uses[expert]) / n


class LayerCaches:
    """One cache per MoE layer, all of one policy and capacity."""

    def __init__(self, policy: str, layers: int, capacity: int, experts: int, decay: float = 0.5) -> None:
        if policy not in POLICIES:
            raise ConfigError(f"unknown expert cache policy {policy!r} (known: {', '.join(POLICIES)})",
                              key="scenario.moe.policy")  # fmt: skip
        self.layers = [POLICIES[policy](capacity, experts, decay) for _ in range(layers)]

    def __getitem__(self, layer: int) -> ExpertCache:
        return self.layers[layer]


class Routing(Protocol):
    """What a cache replay reads of a routing trace (traces.routing.RoutingTrace)."""

    steps: int
    layers: int
    num_experts: int

    def routed(self, step: int, layer: int) -> dict[int, float]: ...


def replay(trace: Routing, policy: str, capacity: int, steps: int | None = None) -> tuple[int, int]:
    """(hits, accesses) of `policy` caches of `capacity` experts per layer over the first `steps` steps of
    `trace`, updated as the moe-offload scenario updates them with every miss copied in and nothing
    prefetched: a step's experts are looked up at once, then each miss is admitted."""
    caches = LayerCaches(policy, trace.layers, capacity, trace.num_experts)
    hits = accesses = 0
    for s in range(trace.steps if steps is None else steps):
        for layer in range(trace.layers):
            routed = trace.routed(s, layer)
            found, misses = caches[layer].lookup(routed)
            hits, accesses = hits + len(found), accesses + len(routed)
            for e in misses:
                caches[layer].admit(e, routed)
    return hits, accesses
