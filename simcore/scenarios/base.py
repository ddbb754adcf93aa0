"""What every scenario shares: the registry, and the run context an LLM scenario drives.

A scenario is a dataclass of its YAML fields and a SimPy process (`drive`) that submits programs to the
engine and returns the summary figures it measured. Programs come from the mapping stage through
`LLMRun.programs`, cached as values: repeated shapes (a sweep's points, a generation's steps) are built
and mapped once.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, ClassVar

import simpy

from models.llm import LLMSpec, SeqGroup, build_pass
from simcore.engine import Engine
from simcore.errors import ConfigError, OutOfMemory
from simcore.ledger import Ledger
from simcore.mapping import ExecutionPlan, Placement, map_pass, place
from simcore.mapping.plan import weight_bytes
from simcore.program import Program
from simcore.results import Result
from simcore.system import System

SCENARIOS: dict[str, type[Scenario]] = {}


def register(kind: str) -> Callable[[type[Scenario]], type[Scenario]]:
    def deco(cls: type[Scenario]) -> type[Scenario]:
        cls.kind = kind
        SCENARIOS[kind] = cls
        return cls

    return deco


@dataclass(frozen=True)
class Scenario:
    """Base of the scenario records; subclasses are dataclasses of their YAML fields (each field's
    metadata["param"] documents it for the experiment schema)."""

    kind: ClassVar[str] = ""
    workload: ClassVar[str] = "llm"  # llm | vision: what the experiment's `model` names

    def run(self, system: System, model: Any, plan: ExecutionPlan, keep_records: bool) -> Result:
        raise NotImplementedError


Process = Generator[simpy.Event, Any, dict[str, Any]]


@dataclass(frozen=True)
class LLMScenario(Scenario):
    """A scenario over an LLM: a SimPy process (`drive`) submits its programs and returns its figures."""

    def drive(self, run: LLMRun) -> Process:
        raise NotImplementedError

    def check_context(self, spec: LLMSpec) -> None:
        """Refuse sequences longer than the model's maximum context (`max_position_embeddings`)."""

    def check_plan(self, plan: ExecutionPlan) -> None:
        """Refuse a plan the scenario cannot run: by default, a batch that does not split into the plan's
        micro-batches x data-parallel replicas."""
        batch = getattr(self, "batch", 1)
        if batch % (plan.microbatches * plan.dp):
            raise ConfigError(f"batch {batch} does not split into {plan.microbatches} micro-batches × {plan.dp} "
                              "replicas", key="parallelism.microbatches")  # fmt: skip

    def run(self, system: System, model: LLMSpec, plan: ExecutionPlan, keep_records: bool) -> Result:
        batch = getattr(self, "batch", None)
        if plan.ep > 1 and isinstance(batch, int) and batch % plan.ep:
            raise ConfigError(f"batch {batch} does not split over ep={plan.ep} expert-parallel ranks (each runs "
                              "its share of the sequences)", key="scenario.batch")  # fmt: skip
        llm = LLMRun(system, model, plan, keep_records)
        llm.allocate_weights()
        env = llm.engine.env
        proc = env.process(self.drive(llm))
        env.run(until=proc)  # not past its end: superseded flow timers may still be queued
        summary: dict[str, Any] = proc.value
        tokens = summary.get("output_tokens") or summary["tokens_per_s"] * summary["latency_s"]
        summary.update(model=model.name, params=model.params, tp=llm.tp, dtype=plan.dtype)
        summary.update(llm.moe_figures())
        if not plan.precision.is_uniform:
            summary["precision"] = plan.precision.as_dict()
        if plan.pp > 1 or plan.dp > 1:
            summary.update(pp=plan.pp, dp=plan.dp, microbatches=plan.microbatches)
        return account(llm.engine.ledger(), llm.placement.devices, summary, "token", tokens)


_MAPPED: dict[tuple, Program] = {}  # programs are values: a sweep's repeated shapes are mapped once


def _mapped(spec: LLMSpec, key: tuple, placement: Placement, plan: ExecutionPlan, batch: int, q_len: int,
            kv_len: int, phase: str, kv_alloc_tokens: int, groups: tuple[SeqGroup, ...] = ()) -> Program:  # fmt: skip
    full = (spec, key, plan, batch, q_len, kv_len, phase, kv_alloc_tokens, groups)
    prog = _MAPPED.get(full)
    if prog is None:
        if len(_MAPPED) >= 256:
            _MAPPED.clear()
        # a decode pass differs from another of the same batch only in its attention's context: derive it
        plain = q_len == 1 and not kv_alloc_tokens and not groups
        template = (spec, key, plan, batch, "decode template") if plain else None
        if template is not None and template in _MAPPED:
            prog = decode_step(_MAPPED[template], kv_len)
        else:
            logical = build_pass(spec, placement.tp, batch, q_len, kv_len, plan.precision, phase,
                                 kv_alloc_tokens, groups, plan.ep)  # fmt: skip
            prog = map_pass(logical, placement, plan)
            if template is not None:
                _MAPPED[template] = prog
        _MAPPED[full] = prog
    return prog


class LLMRun:
    """One LLM simulation: the engine, the model, the plan and where it was placed."""

    def __init__(self, system: System, spec: LLMSpec, plan: ExecutionPlan, keep_records: bool) -> None:
        self.system, self.spec, self.plan = system, spec, plan
        self.placement = place(system, spec, plan)
        self.engine = Engine(system, keep_records=keep_records)
        self._key = (self.placement.replicas, tuple(sorted((self.placement.hosts or {}).items())),
                     self.placement.layer_bounds)  # fmt: skip

    @property
    def tp(self) -> int:
        return self.placement.tp

    def programs(
        self, batch: int, q_len: int, kv_len: int, phase: str, kv_alloc_tokens: int = 0
    ) -> list[Program]:
        """One program per data-parallel replica for a pass over `batch` sequences (each replica's share
        split into the plan's micro-batches; the batch splits evenly, checked at load). Expert parallelism
        is one program over every rank, each running its 1/ep of the batch."""
        if self.plan.ep > 1:
            per = batch // self.plan.ep
            return [_mapped(self.spec, self._key, self.placement, self.plan, per, q_len, kv_len, phase,
                            kv_alloc_tokens)]  # fmt: skip
        per = batch // (self.plan.microbatches * self.plan.dp)
        out = []
        for stages in self.placement.replicas:
            pl = self.placement if stages == self.placement.stages else replace(self.placement, stages=stages)
            out.append(_mapped(self.spec, self._key + (stages,), pl, self.plan, per, q_len, kv_len, phase,
                               kv_alloc_tokens))  # fmt: skip
        return out

    def iteration(self, groups: tuple[SeqGroup, ...], phase: str = "mixed") -> list[Program]:
        """The programs of one ragged pass (a serving iteration): every group's tokens through the GEMMs
        at once, an attention kernel per group. The plan's data-parallel replicas each run it whole (a
        serving scenario routes requests to replicas itself); micro-batches do not apply. With expert
        parallelism every rank runs its 1/ep of each group's sequences (attention data-parallel) between the
        all-to-alls, in lock step: the program is the busiest rank's, ⌈count / ep⌉ of each group."""
        if self.plan.ep > 1:
            share = tuple(g._replace(count=-(-g.count // self.plan.ep)) for g in groups)
            return [_mapped(self.spec, self._key, self.placement, self.plan, 0, 0, 0, phase, 0, share)]
        return [
            _mapped(self.spec, self._key + (stages,),
                    self.placement if stages == self.placement.stages else replace(self.placement, stages=stages),
                    self.plan, 0, 0, 0, phase, 0, groups)
            for stages in self.placement.replicas
        ]  # fmt: skip

    def moe_figures(self) -> dict[str, Any]:
        """An MoE model's summary figures: parameters one token uses, and `expert_hit_rate`, the share of
        expert-weight reads served from device memory without a copy: 1.0 with every expert resident; 0.0
        when weights stream from the host, as each layer (every expert) is copied in before it runs. Empty
        for a dense model."""
        if self.spec.moe is None:
            return {}
        out = {
            "active_params": self.spec.active_params,
            "expert_hit_rate": 0.0 if self.placement.hosts else 1.0,
        }
        return {**out, "ep": self.plan.ep} if self.plan.ep > 1 else out

    def allocate_weights(self) -> None:
        """The weights on every rank (and a host copy where they stream); a rank they do not fit is
        OutOfMemory, which names the checkpoint's own format where the plan stores them otherwise."""
        precision = self.plan.precision
        differ = {k: v for k, v in self.spec.checkpoint_precision.items() if getattr(precision, k) != v}
        for stages in self.placement.replicas:
            for s, group in enumerate(stages):
                nbytes = weight_bytes(self.spec, self.placement, s, precision)
                for dev in group:
                    try:
                        self.engine.allocate(dev, f"{self.spec.name} weights", nbytes)
                    except OutOfMemory as e:
                        if not differ:
                            raise
                        entries = ", ".join(f"{k}: {v}" for k, v in differ.items())
                        raise OutOfMemory(
                            *e.args[:5], f"its checkpoint ships them as precision: {{{entries}}}"
                        ) from None
        for host in dict.fromkeys((self.placement.hosts or {}).values()):
            self.engine.allocate(
                host,
                f"{self.spec.name} weights (host copy)",
                precision.weight_bytes(self.spec.params, self.spec.routed_params()),
            )

    def allocate_kv(self, batch: int, tokens: int) -> None:
        """A KV cache for `tokens` tokens of `batch` sequences, on every rank that holds the layers."""
        total = (
            batch
            / (self.plan.dp * self.plan.ep)
            * tokens
            * self.plan.precision.kv_bytes(self.spec.kv_elements_per_token)
            / self.spec.kv_split(self.tp)
        )
        bounds = self.placement.layer_bounds
        for stages in self.placement.replicas:
            for s, group in enumerate(stages):
                share = total * self.spec.kv_fraction(tokens, bounds[s], bounds[s + 1])  # windowed: less
                for dev in group:
                    self.engine.allocate(dev, "kv_cache", share)

    def submit_all(self, programs: list[Program]) -> simpy.Event:
        return self.engine.env.all_of([self.engine.submit(p) for p in programs])

    def stage_busy_s(self) -> list[float]:
        """Compute-busy seconds so far of each pipeline stage (of the first replica)."""
        return [self.engine.busy_group[group] for group in self.placement.stages]

    def bubble_fraction(self, since_s: float, busy_before: list[float]) -> float:
        """Share of the stages' time since `since_s` spent idle: 1 - mean stage busy time / makespan."""
        span = self.engine.env.now - since_s
        busy = [b - a for a, b in zip(busy_before, self.stage_busy_s(), strict=True)]
        return 1.0 - sum(busy) / len(busy) / span


@lru_cache(maxsize=64)
def _attention_steps(template: Program) -> tuple[int, ...]:
    return tuple(template.indices_of("attention"))


def decode_step(template: Program, kv_len: int) -> Program:
    """The template decode program with every attention reading `kv_len` tokens of context."""
    return template.replace_ops(
        lambda op: op.with_kv_len(kv_len), only=_attention_steps(template), uniform=True
    )


def account(
    ledger: Ledger, devices: tuple[str, ...], summary: dict[str, Any], unit: str, units: float
) -> Result:
    """Energy (total, per `unit`, per component), events, memory and utilization into the summary; the
    run's invariants are checked (simcore.invariants: a broken one is an InternalError)."""
    energy = ledger.energy_breakdown_J()
    total_J = sum(sum(v.values()) for v in energy.values())
    summary.update(
        {
            "energy_j": total_J,
            f"energy_per_{unit}_j": total_J / units,
            "events": ledger.events,
            "ops": ledger.ops,
            "peak_memory_B": {d: ledger.peak_B[d] for d in devices},
            "utilization": ledger.utilization(summary.get("dtype")),
            "energy_by_component_j": {k: sum(v.values()) for k, v in energy.items()},
        }  # fmt: skip
    )
    return Result(summary, ledger).check()
