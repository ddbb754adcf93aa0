"""Model switch: a stream of requests to many expert models of one architecture (a Composition of Experts,
SambaNova's Samba-CoE), served one at a time by the placed devices, whose memory caches `resident` experts.

Every expert's weights live in a capacity tier, the devices matching `store`: an SN40L socket's DDR
channels (systems/sn40l-socket.yaml) or the host CPUs' memory. A request to an expert that is not resident
first copies it in (LRU eviction): each rank's shard is striped over the store devices nearest to it (least
route latency; an SN40L socket reaches only its own DDR), one transfer per (store, rank), all at once, so
the copies are flows over the store's memory ports, the links and the ranks' HBM and share whatever they
share. Then the request runs: a prefill of `prompt_len` tokens and decode steps up to `new_tokens`.

Figures: the switch time (mean over switches) and its bandwidth, the share of time spent switching, and
end-to-end throughput (output tokens and requests per second over the whole stream).
"""

from __future__ import annotations

import fnmatch
import random
from collections import OrderedDict
from dataclasses import dataclass

from models.llm import LLMSpec
from simcore.config import Param, block_field, count, param_field, positive
from simcore.errors import ConfigError
from simcore.mapping import ExecutionPlan
from simcore.mapping.plan import weight_bytes
from simcore.ops import Transfer
from simcore.program import Program, Step
from simcore.scenarios.base import LLMRun, LLMScenario, Process, register
from simcore.scenarios.prefill import prefill_then_decode
from simcore.system import System

ORDERS = ("round-robin", "random")


def nearest_stores(system: System, device: str, pattern: str) -> tuple[str, ...]:
    """The devices matching `pattern` with the least route latency from `device` (all of them on a tie:
    a shard is striped over them); devices with no route from it are not candidates."""
    lat: dict[str, float] = {}
    for d in system.devices:
        if d == device or not fnmatch.fnmatchcase(d, pattern):
            continue
        try:
            lat[d] = sum(link.latency_s for _, _, link in system.route(d, device))
        except ConfigError:  # no route: a store behind a device that does not forward
            continue
    if not lat:
        raise ConfigError(f"no device matching {pattern!r} is reachable from {device!r} in system "
                          f"{system.name!r}", key="scenario.coe.store")  # fmt: skip
    best = min(lat.values())
    return tuple(d for d, t in lat.items() if t <= best * (1 + 1e-9))


@dataclass(frozen=True)
class Experts:
    """The expert models and the request stream (the `coe:` block of `kind: model-switch`)."""

    experts: int = param_field(count("expert models (copies of the architecture) in the store", default=8))
    requests: int = param_field(count("requests in the stream", default=16, maximum=1 << 20))
    resident: int = param_field(count("experts the devices' memory holds at once (LRU cache)", default=1))
    store: str = param_field(
        Param(
            "devices holding every expert's weights (a pattern: the DDR tier, or the host CPUs)",
            type=str,
            default="cpu*",
        )
    )
    order: str = param_field(
        Param(
            "which expert each request asks for: round-robin (a switch per request when experts > "
            "resident) or random (uniform, seeded)",
            type=str,
            default="round-robin",
            choices=ORDERS,
        )
    )
    seed: int = param_field(Param("seed of the random order", type=int, default=0))

    def sequence(self) -> list[int]:
        """The expert each request asks for."""
        if self.order == "round-robin":
            return [i % self.experts for i in range(self.requests)]
        rng = random.Random(self.seed)
        return [rng.randrange(self.experts) for _ in range(self.requests)]


@register("model-switch")
@dataclass(frozen=True)
class ModelSwitch(LLMScenario):
    """Requests to `coe.experts` models of the experiment's architecture, each switch a copy from the store."""

    prompt_len: int = param_field(positive("prompt tokens", type=int, default=512))
    new_tokens: int = param_field(count("tokens to generate", default=128, maximum=1 << 20))
    coe: Experts = block_field(Experts)

    def check_context(self, spec: LLMSpec) -> None:
        p, n = self.prompt_len, self.new_tokens
        spec.check_positions(p + n, f"prompt {p} + {n} new tokens needs {p + n}", "scenario.prompt_len")

    def check_plan(self, plan: ExecutionPlan) -> None:
        """One request at a time on one replica: batch 1, no data-parallel replicas or micro-batches."""
        if plan.dp != 1 or plan.microbatches != 1:
            raise ConfigError("model-switch serves one request at a time on one replica (dp = 1, one "
                              "micro-batch)", key="parallelism")  # fmt: skip

    def shards(self, run: LLMRun) -> dict[str, float]:
        """Bytes of one expert each rank holds (its layers split tp ways, as the weights it runs from)."""
        out: dict[str, float] = {}
        for s, group in enumerate(run.placement.stages):
            nbytes = weight_bytes(run.spec, run.placement, s, run.plan.precision)
            out.update({dev: nbytes for dev in group})
        return out

    def switch_program(self, run: LLMRun, shards: dict[str, float], stores: dict[str, tuple[str, ...]],
                       expert: int) -> Program:  # fmt: skip
        """Every rank's shard of `expert`, striped over its stores: one transfer per (store, rank)."""
        dtype = run.plan.precision.weights
        steps = [
            Step(
                Transfer(
                    f"expert{expert}_{src}_to_{dev}",
                    dtype,
                    nbytes=nbytes / len(stores[dev]),
                    src=src,
                    dst=dev,
                ),
                (src,),
                (),
                "switch",
            )
            for dev, nbytes in shards.items()
            for src in stores[dev]
        ]
        return Program.compile(f"switch to expert {expert}", steps)

    def drive(self, run: LLMRun) -> Process:
        if run.placement.hosts:
            raise ConfigError("model-switch copies whole experts into the devices' memory; it does not "
                              "combine with offload.weights", key="offload.weights")  # fmt: skip
        env, engine = run.engine.env, run.engine
        shards = self.shards(run)
        stores = {dev: nearest_stores(run.system, dev, self.coe.store) for dev in shards}
        # the store holds every expert once: each rank's shard of each expert, striped over its stores
        for dev, nbytes in shards.items():
            for src in stores[dev]:
                engine.allocate(src, f"{dev} shards of {self.coe.experts} experts",
                                self.coe.experts * nbytes / len(stores[dev]))  # fmt: skip
        # LLMRun holds one expert's weights on the ranks; the cache holds `resident`
        for dev, nbytes in shards.items():
            if self.coe.resident > 1:
                engine.allocate(
                    dev, f"{self.coe.resident - 1} more resident experts", (self.coe.resident - 1) * nbytes
                )
        cache: OrderedDict[int, None] = OrderedDict()
        switch_s: list[float] = []
        serve_s = 0.0
        t0 = env.now
        for expert in self.coe.sequence():
            if expert in cache:
                cache.move_to_end(expert)
            else:
                if len(cache) >= self.coe.resident:
                    cache.popitem(last=False)
                t = env.now
                yield run.submit_all([self.switch_program(run, shards, stores, expert)])
                switch_s.append(env.now - t)
                cache[expert] = None
            t = env.now
            yield from prefill_then_decode(run, 1, self.prompt_len, self.new_tokens)
            serve_s += env.now - t
        total = env.now - t0
        expert_B = sum(shards.values())
        tokens = self.coe.requests * self.new_tokens
        mean_switch = sum(switch_s) / len(switch_s) if switch_s else 0.0
        out = {
            "latency_s": total,
            "tokens_per_s": tokens / total,
            "output_tokens": tokens,
            "requests_per_s": self.coe.requests / total,
            "switches": len(switch_s),
            "switch_time_s": mean_switch,
            "switch_total_s": sum(switch_s),
            "switch_share": sum(switch_s) / total,
            "serve_time_per_request_s": serve_s / self.coe.requests,
            "expert_bytes": expert_B,
            "store_devices": len({s for v in stores.values() for s in v}),
        }
        if switch_s:
            out["switch_bandwidth_Bps"] = expert_B / mean_switch
        return out
