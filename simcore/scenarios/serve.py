"""Serve: a request stream through a serving scheduler and a paged KV cache, one engine program per
iteration, on one replica or several behind a router.

Each replica admits the requests routed to it, asks its scheduler for the next iteration's work and costs
it as ONE ragged pass (`LLMRun.iteration`): every decode and prefill chunk of the iteration through the
GEMMs at once, an attention kernel per group of sequences alike. KV blocks swapped to or from host memory
move as transfers submitted with the pass, so they share the GPU's HBM and PCIe link with it. Then the
iteration's tokens are booked and finished requests leave. Events: one per iteration (and one per idle
wait for the next arrival).

Variants, each a block of the scenario:

- `speculative`: a draft model proposes k tokens per decode step (k draft passes on its device), the
  target verifies k + 1 positions per sequence in its pass (simcore/serving/speculative.py).
- `sharing`: prefill and decode run concurrently, as two loops, on partitions of each GPU's SMs
  (`prefill_sm_fraction` and the rest), sharing its HBM through the engine's flows (Nexus, semi-PD);
  without it an iteration is one time-sliced mixed batch.
- `parallelism.dp` > 1: replicas behind a `router` (round-robin, least-loaded, KV-aware), all in one run
  on one engine; with `disaggregation.prefill_replicas`, the first replicas only prefill and hand each
  request's prompt KV to a decode replica as an engine transfer over the system's links (DistServe,
  Splitwise).
- `disaggregation.attention`: each replica's attention runs next to its KV cache on attention devices,
  the GEMMs on its tensor-parallel group, with micro-batches ping-ponging between them (Lamina,
  MegaScale-Infer; simcore/serving/afd.py).
- `parallelism.ep` > 1 (MoE): the expert-parallel ranks are ONE replica, one scheduler and one KV pool,
  each iteration one program over every rank (each its ⌈count / ep⌉ of every sequence group, attention
  data-parallel, all-to-all around the experts). A sequence's KV lives whole on one rank, so the pool is
  ep × the blocks one rank fits, and no sequence may hold more than one rank's blocks; sequences are
  taken as spread evenly over the ranks (the program is the busiest rank's), not packed rank by rank.

Coarse-event choice: the decode steps of an iteration form one group whose context is their mean context
rounded up to a multiple of the KV block size. Decode attention streams every sequence's KV once, so the
mean keeps the bytes read (within a block per sequence) while a program is built once per batch size
and only its attention ops are re-priced as contexts grow; prefill chunks keep their exact shapes.
"""

from __future__ import annotations

import fnmatch
import heapq
import itertools
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import simpy

from models.llm import LLMSpec, SeqGroup, load_llm
from simcore.config import Param, block_field, nonneg, param_field
from simcore.errors import ConfigError, InternalError, OutOfMemory
from simcore.mapping import ExecutionPlan
from simcore.mapping.plan import nearest_hosts, weight_bytes
from simcore.ops import Transfer
from simcore.program import Program, Step
from simcore.results import Result
from simcore.scenarios.base import LLMRun, LLMScenario, Process, account, register
from simcore.serving.afd import AttentionDisaggregation, AttentionSpec, attention_pools
from simcore.serving.kv_cache import KVCacheSpec, PagedKVCache
from simcore.serving.metrics import RequestRecord, SLOSpec, summarize
from simcore.serving.requests import Request, RequestSpec
from simcore.serving.schedulers import Batch, Scheduler, SchedulerSpec, Seq
from simcore.serving.speculative import Acceptance, SpeculativeSpec
from simcore.system import System


@dataclass(frozen=True)
class SharingSpec:
    """The `sharing:` block: prefill and decode on partitions of each GPU's SMs, or time-sliced."""

    prefill_sm_fraction: float | None = param_field(Param(
        "share of each GPU's SMs that runs prefills, concurrently with decodes on the rest (Nexus, "
        "semi-PD); none: one time-sliced mixed batch per iteration", type=float, default=None, minimum=0,
        maximum=1))  # fmt: skip

    def check(self) -> None:
        f = self.prefill_sm_fraction
        if f is not None and not 0.0 < f < 1.0:
            raise ConfigError(f"prefill_sm_fraction {f:g}: must be strictly between 0 and 1 (decodes run on "
                              "the rest)", key="scenario.sharing.prefill_sm_fraction")  # fmt: skip


@dataclass(frozen=True)
class DisaggregationSpec:
    """The `disaggregation:` block: prefill replicas and decode replicas (of parallelism.dp), and
    attention apart from the GEMMs within each replica."""

    prefill_replicas: int = param_field(nonneg(
        "replicas (the first of parallelism.dp) that only prefill and send each prompt's KV to a decode "
        "replica; 0: every replica does both", type=int, default=0, maximum=1 << 12))  # fmt: skip
    attention: AttentionSpec = block_field(AttentionSpec)


def gpu_hour_prices(value: object) -> float | tuple[tuple[str, float], ...]:
    """A price per accelerator-hour in US dollars: one for every accelerator (`2.5`), or per device name
    pattern (`{"gpu[0-3]": 4.0, "gpu*": 2.0}`: the first pattern that matches prices a device), for
    heterogeneous pools. ValueError says what is expected."""

    def price(v: object, where: str) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1e6 or v != v:
            raise ValueError(f"{where}expected a price in US dollars in [0, 1e6], got {v!r}")
        return float(v)

    if isinstance(value, Mapping):
        if not value:
            raise ValueError(
                "expected a price or a mapping of device patterns to prices, got an empty mapping"
            )
        return tuple((str(k), price(v, f"{k}: ")) for k, v in value.items())
    return price(value, "")


def price_of(prices: float | tuple[tuple[str, float], ...], device: str) -> float:
    """The price per hour of `device` (ConfigError naming it when no pattern matches)."""
    if isinstance(prices, float):
        return prices
    for pattern, usd in prices:
        if fnmatch.fnmatchcase(device, pattern):
            return usd
    raise ConfigError(f"no price for device {device!r}: no pattern of usd_per_gpu_hour matches it",
                      key="scenario.usd_per_gpu_hour")  # fmt: skip


#: what attention disaggregation does not combine with (scenario key -> set in this scenario)
ATTENTION_EXCLUDES: dict[str, Callable[[Serve], bool]] = {
    "disaggregation.prefill_replicas": lambda sc: sc.disaggregation.prefill_replicas > 0,
    "sharing.prefill_sm_fraction": lambda sc: sc.sharing.prefill_sm_fraction is not None,
    "speculative.draft": lambda sc: sc.speculative.on,
    "scheduler.preemption": lambda sc: sc.scheduler.preemption == "swap",
}

#: what expert-parallel serving does not combine with (key -> set in this scenario and plan)
EP_EXCLUDES: dict[str, Callable[[Serve, ExecutionPlan], bool]] = {
    "parallelism.dp": lambda sc, plan: plan.dp > 1,  # replicas of an expert-parallel group
    "speculative.draft": lambda sc, plan: sc.speculative.on,
    "disaggregation.attention.devices": lambda sc, plan: sc.disaggregation.attention.on,
    "scheduler.preemption": lambda sc, plan: sc.scheduler.preemption == "swap",  # blocks sit on one rank
}

#: router policy -> pick(candidates, request) -> the replica to serve it
ROUTERS: dict[str, Callable[[list[Replica], Request, itertools.count], Replica]] = {
    "round-robin": lambda reps, req, turn: reps[next(turn) % len(reps)],
    "least-loaded": lambda reps, req, turn: min(reps, key=lambda r: (r.load, r.index)),
    "kv-aware": lambda reps, req, turn: min(
        reps, key=lambda r: (not r.has_prefix(req), r.load, -r.kv.free, r.index)
    ),  # fmt: skip
}


@register("serve")
@dataclass(frozen=True)
class Serve(LLMScenario):
    requests: RequestSpec = block_field(RequestSpec)
    scheduler: SchedulerSpec = block_field(SchedulerSpec)
    kv_cache: KVCacheSpec = block_field(KVCacheSpec)
    slo: SLOSpec = block_field(SLOSpec)
    speculative: SpeculativeSpec = block_field(SpeculativeSpec)
    sharing: SharingSpec = block_field(SharingSpec)
    disaggregation: DisaggregationSpec = block_field(DisaggregationSpec)
    router: str = param_field(Param("how requests are spread over parallelism.dp replicas: round-robin, "
                                    "least-loaded (fewest requests held) or kv-aware (a replica holding the "
                                    "request's prefix, then least-loaded)", type=str, default="round-robin",
                                    choices=tuple(ROUTERS)))  # fmt: skip
    usd_per_gpu_hour: float | tuple[tuple[str, float], ...] = param_field(Param(
        "price of one accelerator for an hour, in US dollars, or {device pattern: price} for heterogeneous "
        "pools: the summary's cost_per_million_tokens_usd (0: not priced)", type=gpu_hour_prices,
        default=0.0))  # fmt: skip

    def check_context(self, spec: LLMSpec) -> None:
        """Refuse a stream whose longest sequence (prompt + output) outgrows the model's context, and a
        draft model that cannot be loaded or holds less context."""
        try:
            positions, how = self.requests.max_positions()
        except ConfigError as e:
            if e.file:  # a trace's cell: keep its file, line and column, and say which key named the trace
                raise ConfigError(str(e), key="scenario.requests.trace") from None
            raise
        spec.check_positions(positions, f"{how} needs {positions}", "scenario.requests")
        self.sharing.check()
        if self.speculative.on:
            draft = self.draft_spec()
            k = self.speculative.k
            draft.check_positions(positions + k, f"{how} and {k} drafted tokens need {positions + k}",
                                  "scenario.speculative.draft")  # fmt: skip

    def draft_spec(self) -> LLMSpec:
        try:
            return load_llm(self.speculative.draft or "")
        except ConfigError as e:
            raise ConfigError(e.message, key="scenario.speculative.draft") from None

    def check_plan(self, plan: ExecutionPlan) -> None:
        """Prefill replicas leave at least one replica to decode; expert-parallel ranks form one replica
        without the variants that would split it (EP_EXCLUDES)."""
        clash = (
            next((key for key, on in EP_EXCLUDES.items() if on(self, plan)), None) if plan.ep > 1 else None
        )
        if clash:
            where = clash if clash.startswith("parallelism.") else f"scenario.{clash}"
            raise ConfigError(f"serving with expert parallelism (ep={plan.ep}) does not combine with {clash} "
                              "(not modelled)", key=where)  # fmt: skip
        n = self.disaggregation.prefill_replicas
        if n and n >= plan.dp:
            raise ConfigError(f"prefill_replicas {n} leaves no decode replica of parallelism.dp {plan.dp}",
                              key="scenario.disaggregation.prefill_replicas")  # fmt: skip
        if n and self.sharing.prefill_sm_fraction is not None:
            raise ConfigError("sharing and disaggregation exclude each other: a prefill replica runs no decodes",
                              key="scenario.sharing.prefill_sm_fraction")  # fmt: skip
        if self.disaggregation.attention.on:
            clash = next((key for key, on in ATTENTION_EXCLUDES.items() if on(self)), None)
            if clash:
                raise ConfigError(f"attention disaggregation does not combine with {clash} (not modelled)",
                                  key=f"scenario.{clash}")  # fmt: skip

    def drive(self, run: LLMRun) -> Process:
        server = Server(self, run)
        yield from server.serve()
        return server.summary()

    def run(self, system: System, model: LLMSpec, plan: ExecutionPlan, keep_records: bool) -> Result:
        self.check_plan(plan)
        llm = LLMRun(system, model, plan, keep_records)
        afd = None
        if self.disaggregation.attention.on:
            spec = self.disaggregation.attention
            pools = attention_pools(system, model, plan, llm.placement, spec.devices or ())
            afd = AttentionDisaggregation(model, plan, llm.placement, pools, spec.microbatches)
        llm.allocate_weights()
        server = Server(self, llm, afd)
        llm.engine.env.process(server.serve())
        llm.engine.env.run()
        summary = server.summary()
        summary.update(model=model.name, params=model.params, tp=llm.tp, dtype=plan.dtype)
        if not plan.precision.is_uniform:
            summary["precision"] = plan.precision.as_dict()
        if plan.pp > 1:
            summary["pp"] = plan.pp
        if plan.dp > 1:
            summary["dp"] = plan.dp
        if plan.ep > 1:
            summary.update(llm.moe_figures())
        devices = llm.placement.devices + (tuple(d for pool in afd.pools for d in pool) if afd else ())
        res = account(llm.engine.ledger(), devices, summary, "token", summary["output_tokens"])
        res.requests = tuple(server.records)
        return res


class IterationPrograms:
    """Programs of iterations by shape (one per replica of the plan), kept while in use (the engine
    compiles a kept program once): a pass of decodes only (q_len 1, or k + 1 when verifying drafted
    tokens) is derived from one template per batch size (only its attention ops change with the
    context), a mixed pass is mapped per distinct shape; the least recently used beyond MAX are dropped."""

    MAX = 256

    def __init__(self, run: LLMRun, build: Callable[..., list[Program]] | None = None) -> None:
        self.run = run
        #: (groups, phase) -> the programs of a pass: the run's mapping, or attention disaggregated
        self.build = build or (run.iteration if run.plan.ep == 1 else
                               lambda groups, phase="mixed": _coarse(run.iteration(groups, phase)))  # fmt: skip
        self.templates: dict[tuple[int, int], tuple[list[Program], list[tuple[int, ...]]]] = {}
        self.kept: OrderedDict[tuple, list[Program]] = OrderedDict()

    def decode(self, n: int, kv_len: int, q_len: int = 1) -> list[Program]:
        key = (n, kv_len, q_len)
        progs = self._get(key)
        if progs is None:
            t = self.templates.get((n, q_len))
            if t is None:
                progs = self.build((SeqGroup(n, q_len, kv_len),), "decode" if q_len == 1 else "mixed")
                self.templates[(n, q_len)] = (progs, [tuple(p.indices_of("attention")) for p in progs])
            else:  # a program of its own (no base), so that the engine keeps its compiled form
                progs = [_rooted(p.replace_ops(lambda op: op.with_kv_len(kv_len), only=idx, uniform=True))
                         for p, idx in zip(*t, strict=True)]  # fmt: skip
            self._put(key, progs)
        return progs

    def ragged(self, groups: tuple[SeqGroup, ...]) -> list[Program]:
        progs = self._get(groups)
        if progs is None:
            progs = self.build(groups)
            self._put(groups, progs)
        return progs

    def _get(self, key: tuple) -> list[Program] | None:
        progs = self.kept.get(key)
        if progs is not None:
            self.kept.move_to_end(key)
        return progs

    def _put(self, key: tuple, progs: list[Program]) -> None:
        self.kept[key] = progs
        if len(self.kept) > self.MAX:
            self.kept.popitem(last=False)


def _rooted(p: Program) -> Program:
    """`p` without its base: the engine caches compiled programs that have none."""
    return Program(p.name, p.steps, p.lanes, p.signals, p.group_workspace, coarse=p.coarse)


def _coarse(progs: list[Program]) -> list[Program]:
    """Programs whose kernels between synchronisation points run pooled (an expert-parallel pass: every rank
    waits for the all-to-all twice a layer, so a few events per layer segment instead of one per kernel)."""
    return [Program(p.name, p.steps, p.lanes, p.signals, p.group_workspace, coarse=True) for p in progs]


class Draft:
    """A speculative draft model on one device: its own mapping (tp 1) and programs, run on the serving
    engine, so that it shares the device with whatever else runs there."""

    def __init__(self, scenario: Serve, target: LLMRun, device: str) -> None:
        spec = scenario.draft_spec()
        plan = ExecutionPlan(tp=1, devices=(device,), precision=target.plan.precision)
        self.run = LLMRun(target.system, spec, plan, keep_records=False)
        self.device, self.spec = device, spec
        self.programs = IterationPrograms(self.run)
        self.token_B = plan.precision.kv_bytes(spec.kv_elements_per_token)
        eng = target.engine
        eng.allocate(
            device, f"{spec.name} weights (draft)", weight_bytes(spec, self.run.placement, 0, plan.precision)
        )


class Replica:
    """One replica (tp × pp devices): its KV pool sized from free memory, its scheduler, its loops."""

    def __init__(self, server: Server, index: int, stages: tuple[tuple[str, ...], ...], role: str) -> None:
        self.server, self.index, self.stages, self.role = server, index, stages, role
        sc, run = server.sc, server.run
        self.sc, self.run = sc, run
        self.env: simpy.Environment = run.engine.env
        self.devices = tuple(d for group in stages for d in group)
        spec, kvs = sc.scheduler, sc.kv_cache
        self.kv = PagedKVCache(0, kvs.block_size, kvs.prefix_caching, kvs.watermark)
        self.sched: Scheduler = spec.build(self.kv, 0, server.longest)
        self.sched.concurrent = sc.sharing.prefill_sm_fraction is not None
        afd = server.afd
        if afd is not None:  # its pass with attention on its pool (programs are values: one per replica)
            self.programs = IterationPrograms(
                run, lambda groups, phase="mixed": afd.iteration(index, groups, phase)
            )
        elif len(server.groups) > 1:  # its own mapping: only its programs are built, as values
            own = replace(run.plan, dp=1, devices=self.devices)
            self.programs = IterationPrograms(LLMRun(run.system, run.spec, own, keep_records=False))
        else:
            self.programs = server.programs
        self.draft: Draft | None = None
        if sc.speculative.on and role != "prefill":
            self.draft = server.draft_on(sc.speculative.device or self.devices[0])
            self.sched.lookahead = sc.speculative.k
            self.sched.accept = Acceptance(sc.speculative)
        #: devices a block may sit on (the pool holds this many times the blocks one device fits): a rank's
        #: attention devices, or the expert-parallel ranks, each holding whole sequences
        self.kv_ways = afd.kv_ways(index) if afd is not None else run.plan.ep
        self.kv.ranks = run.plan.ep
        self.block_B = self._block_bytes()
        self.hosts: dict[str, str] = {}
        self.kv.num_blocks = self._reserve_pool()
        self.kv.watermark_blocks = int(kvs.watermark * self.kv.num_blocks)
        self.sched.swap_free = self._reserve_swap() if spec.preemption == "swap" else 0
        self.iterations = self.seqs_run = 0
        self.frag_sum = 0.0
        self.swapped_B = 0.0
        self.incoming: list[tuple[Request, float, Replica]] = []  # prefilled elsewhere, waiting for blocks
        self.wake = self.env.event()
        self.waiters = 0
        #: how a pass runs when it has the device to itself: step by step (one event when nothing else runs),
        #: or, among several replicas (always concurrent), pooled into two flows on the whole device
        self.whole: tuple[str, float] | None = None

    @property
    def load(self) -> int:
        return self.sched.load + len(self.incoming)

    def has_prefix(self, req: Request) -> bool:
        return req.prefix_id is not None and req.prefix_id in self.kv.prefixes

    # ---------------------------------------------------------------------------------- memory
    def _block_bytes(self) -> dict[str, float]:
        """Bytes one KV block takes on each device of the replica: its ranks' heads of its stage's layers
        (sliding windows are not credited: a block holds full-attention layers' worth), and the draft's
        own KV where the draft shares a device."""
        run, spec = self.run, self.run.spec
        if self.server.afd is not None:  # the KV lives with the attention, on the replica's pool
            full = run.plan.precision.kv_bytes(spec.kv_elements_per_token)
            return self.server.afd.block_bytes(self.index, full, self.sc.kv_cache.block_size)
        per_token = run.plan.precision.kv_bytes(spec.kv_elements_per_token) / run.tp
        bounds = run.placement.layer_bounds
        bs = self.sc.kv_cache.block_size
        out: dict[str, float] = {}
        for s, group in enumerate(self.stages):
            share = (bounds[s + 1] - bounds[s]) / spec.layers
            for d in group:
                out[d] = bs * per_token * share
        if self.draft is not None:
            out[self.draft.device] = out.get(self.draft.device, 0.0) + bs * self.draft.token_B
        return out

    def _reserve_pool(self) -> int:
        """Allocate the KV pool: the blocks that fit in each device's memory share after weights and the
        activations of the largest iteration (vLLM's profile run), on every device alike (each of a rank's
        `kv_ways` attention devices holds its share of the blocks)."""
        eng, kvs = self.run.engine, self.sc.kv_cache
        tokens = self.sched.profile_tokens
        profile = (
            self.programs.ragged((SeqGroup(1, tokens, tokens),))[0],
            self.programs.build((SeqGroup(self.sched.max_seqs, 1, 1),))[0],
        )
        workspace = {d: max(p.workspace.get(d, (0.0, ""))[0] for p in profile) for d in self.block_B}
        free = {}
        for d in self.block_B:
            m = eng.store[d]
            free[d] = eng.capacity_B[m] * kvs.gpu_memory_utilization - eng.used_B[m] - workspace.get(d, 0.0)
        blocks = min(kvs.blocks_that_fit(free[d], self.block_B[d]) for d in self.block_B)
        if blocks <= 0:
            d = min(self.block_B, key=lambda d: free[d])
            cap = eng.capacity_B[eng.store[d]]
            raise OutOfMemory("KV cache (one block)", d, self.block_B[d], max(free[d], 0.0), cap)
        for d in self.block_B:
            eng.allocate(d, "kv_cache", blocks * self.block_B[d])
        return blocks * self.kv_ways

    def _reserve_swap(self) -> int:
        """Pinned host memory for swapped blocks (`swap_space` per device), on each device's nearest CPU."""
        system = self.run.system
        if not system.of_type("cpu"):
            raise ConfigError(f"preemption: swap needs a host CPU linked to the GPUs; {system.name!r} has none "
                              "(use a system preset such as dgx-h100-8)", key="scenario.scheduler.preemption")  # fmt: skip
        self.hosts = nearest_hosts(system, self.devices)
        space = self.sc.kv_cache.swap_space
        for d in self.devices:
            self.run.engine.allocate(self.hosts[d], "kv swap space", space)
        return min(int(space // self.block_B[d]) for d in self.devices)

    def _swap_program(self, blocks: int, out: bool) -> Program:
        """Copy `blocks` KV blocks of every device of the replica to its host (`out`) or back."""
        steps = []
        for d in self.devices:
            a, b = (d, self.hosts[d]) if out else (self.hosts[d], d)
            op = Transfer(f"kv_swap_{'out' if out else 'in'}_{d}", self.run.plan.precision.kv_cache,
                          nbytes=blocks * self.block_B[d], src=a, dst=b)  # fmt: skip
            steps.append(Step(op, (a,), (), "swap"))
        self.swapped_B += sum(blocks * self.block_B[d] for d in self.devices)
        return Program.compile("kv swap", steps)

    # ------------------------------------------------------------------------------------ the loops
    def notify(self) -> None:
        """Wake this replica's idle loops (new work, or blocks freed)."""
        if self.waiters:
            ev, self.wake = self.wake, self.env.event()
            ev.succeed()

    def loop(self, phase: str, partition: tuple[str, float] | None) -> Process:
        """Serve iterations of `phase` work (mixed: everything the scheduler picks) until none is left."""
        env, sched, server = self.env, self.sched, self.server
        partition = partition or self.whole
        while True:
            server.admit_due()
            self._take_over()
            batch = sched.next_batch(phase)
            if not batch and not batch.swap_in and not batch.swap_out:
                idle = not sched.running and not sched.inflight and not sched.arriving
                if phase == "mixed" and sched.running and not sched.inflight and not sched.arriving:
                    raise InternalError("internal error: serve scheduler stalled with running sequences")
                if phase != "decode" and idle and (sched.waiting or sched.swapped):
                    continue  # a head was rejected: schedule again
                due = server.next_arrival_s()
                if due is None and server.settled():
                    return {}
                self.waiters += 1
                if due is None:
                    yield self.wake
                elif self.waiters == 1 and phase == "mixed" and len(server.replicas) == 1:
                    yield env.timeout(due - env.now)  # alone: nothing else can wake it
                else:
                    yield env.any_of([self.wake, env.timeout(due - env.now)])
                self.waiters -= 1
                continue
            if self.draft is not None:
                yield from self._draft(batch, partition)
            yield self._submit(batch, partition)
            done = sched.complete(batch, env.now, server.gaps)
            self.iterations += 1
            self.seqs_run += len(batch.decodes) + len(batch.prefills)
            server.finished(self, done)
            self._fragmentation()
            self.notify()

    def _take_over(self) -> None:
        """Disaggregated decode: reserve room for prefilled requests in arrival order, then pull their KV."""
        while self.incoming:
            req, first_s, src = self.incoming[0]
            if not self.sched.fits(req):  # its prompt's KV can never fit this replica's cache
                self.incoming.pop(0)
                self.server.rejected += 1
                self.server.in_system -= 1
                continue
            seq = self.sched.take_over(req, first_s)
            if seq is None:
                return
            self.incoming.pop(0)
            self.env.process(self._pull(seq, src))

    def _pull(self, seq: Seq, src: Replica) -> Process:
        """Copy a request's prompt KV from the prefill replica's devices to this replica's (rank to rank,
        over the system's links), then let it decode."""
        yield self.run.engine.submit(self.server.kv_transfer(src, self, seq.req.prompt_tokens))
        if self.draft is not None:  # the draft builds its own KV of the prompt
            p = seq.req.prompt_tokens
            yield self.run.engine.submit(self.draft.programs.ragged((SeqGroup(1, p, p),))[0], self.whole)
        self.sched.resume(seq)
        self.notify()
        return {}

    def _groups(self, batch: Batch, q_len: int) -> tuple[int, int, tuple[SeqGroup, ...]]:
        """(decodes, their rounded context, prefill-chunk groups) of an iteration."""
        bs = self.kv.block_size
        n = len(batch.decodes)
        kv_len = 0
        if n:  # the mean context (the fed tokens' KV included), rounded up to a whole block
            kv_len = -(-(sum(s.computed for s in batch.decodes) + n * q_len) // (n * bs)) * bs
        chunks = Counter((t, s.computed + t) for s, t in batch.prefills)
        return n, kv_len, tuple(SeqGroup(c, q, kv) for (q, kv), c in sorted(chunks.items()))

    def _pass(self, batch: Batch) -> Program:
        q = 1 + self.sched.lookahead  # a speculative step verifies k drafted positions and one more
        n, kv_len, chunks = self._groups(batch, q)
        if not chunks:
            return self.programs.decode(n, kv_len, q)[0]
        return self.programs.ragged(((SeqGroup(n, q, kv_len),) if n else ()) + chunks)[0]

    def _draft(self, batch: Batch, partition: tuple[str, float] | None) -> Process:
        """The draft's k decode passes over the iteration's decodes (the first also prefilling the
        iteration's prompt chunks into the draft's KV), one after the other."""
        draft, eng = self.draft, self.run.engine
        assert draft is not None
        n, kv_len, chunks = self._groups(batch, 1)
        if chunks:
            yield eng.submit(
                draft.programs.ragged(((SeqGroup(n, 1, kv_len),) if n else ()) + chunks)[0], partition
            )
        for _ in range(self.sched.lookahead - (1 if chunks else 0) if n else 0):
            yield eng.submit(draft.programs.decode(n, kv_len)[0], partition)
        return {}

    def _submit(self, batch: Batch, partition: tuple[str, float] | None) -> simpy.Event:
        """Submit the iteration's pass (and its swaps): one program per event source, all at once."""
        eng = self.run.engine
        progs = [self._pass(batch)] if batch else []
        if batch.swap_out:
            progs.append(self._swap_program(batch.swap_out, out=True))
        if batch.swap_in:
            progs.append(self._swap_program(batch.swap_in, out=False))
        if len(progs) == 1:
            return eng.submit(progs[0], partition)
        return self.env.all_of([eng.submit(p, partition) for p in progs])

    def _fragmentation(self) -> None:
        held = self.kv.used - sum(e.blocks for e in self.kv.prefixes.values())
        if held > 0:
            tokens = sum(s.computed - s.shared for s in self.sched.running)
            self.frag_sum += max(0.0, 1.0 - tokens / (held * self.kv.block_size))


class Server:
    """Every replica of the plan serving one stream behind a router, on one engine."""

    def __init__(self, scenario: Serve, run: LLMRun, afd: AttentionDisaggregation | None = None) -> None:
        self.sc, self.run, self.afd = scenario, run, afd
        self.env: simpy.Environment = run.engine.env
        self.reqs = scenario.requests.make()
        self.longest = max((r.prompt_tokens + r.output_tokens for r in self.reqs), default=1)
        if scenario.speculative.on:
            self.longest += scenario.speculative.k
        self.programs = IterationPrograms(run)
        self.records: list[RequestRecord] = []
        self.gaps: list[float] = []
        self.rejected = 0
        self.drafts: dict[str, Draft] = {}
        self.turn = itertools.count()
        #: each replica's stages: the placement's replicas, or every expert-parallel rank in one group
        self.groups = run.placement.replicas if run.plan.ep == 1 else ((run.placement.devices,),)
        n_prefill = scenario.disaggregation.prefill_replicas
        roles = ["prefill" if r < n_prefill else ("decode" if n_prefill else "both")
                 for r in range(len(self.groups))]  # fmt: skip
        self.replicas = [Replica(self, r, stages, role)
                         for r, (stages, role) in enumerate(zip(self.groups, roles, strict=True))]  # fmt: skip
        if len(self.replicas) > 1:
            for rep in self.replicas:
                rep.whole = ("whole", 1.0)
        self.front = [r for r in self.replicas if r.role != "decode"]
        self.back = [r for r in self.replicas if r.role == "decode"]
        self.route = ROUTERS[scenario.router]
        self.pending: list[tuple[float, int]] = []
        self.start_s = 0.0
        self.in_system = 0
        self.xfer_B = 0.0
        self.xfers = 0
        self.originals: dict[int, Request] = {}  # prefill replicas serve a one-token copy of these
        gpus = dict.fromkeys(run.placement.devices) | dict.fromkeys(d.device for d in self.drafts.values())
        gpus |= dict.fromkeys(d for pool in (afd.pools if afd else ()) for d in pool)
        self.usd_per_hour = sum(
            price_of(scenario.usd_per_gpu_hour, g) for g in gpus
        )  # the accelerators' price

    def draft_on(self, device: str) -> Draft:
        d = self.drafts.get(device)
        if d is None:
            if device not in self.run.system.devices:
                raise ConfigError(f"no device {device!r} in system {self.run.system.name!r}",
                                  key="scenario.speculative.device")  # fmt: skip
            d = self.drafts[device] = Draft(self.sc, self.run, device)
        return d

    # -------------------------------------------------------------------------------- arrivals
    def serve(self) -> Process:
        """Start the replicas' loops (two per replica when prefill and decode share its SMs)."""
        closed = self.sc.requests.closed
        if closed:
            clients = min(self.sc.requests.clients, len(self.reqs))
            self.pending = [(0.0, i) for i in range(clients)]
            self.next_closed = clients
        else:
            self.pending = [(r.arrival_s, i) for i, r in enumerate(self.reqs)]
        heapq.heapify(self.pending)
        self.start_s = self.pending[0][0] if self.pending else 0.0
        f = self.sc.sharing.prefill_sm_fraction
        loops = []
        for rep in self.replicas:
            if f is None:
                loops.append(self.env.process(rep.loop("mixed", None)))
            else:
                loops.append(self.env.process(rep.loop("prefill", ("prefill", f))))
                loops.append(self.env.process(rep.loop("decode", ("decode", 1.0 - f))))
        yield self.env.all_of(loops)
        return {}

    def next_arrival_s(self) -> float | None:
        return self.pending[0][0] if self.pending else None

    def settled(self) -> bool:
        """Nothing left to arrive and nothing held anywhere: every loop may end."""
        return not self.pending and self.in_system == 0

    def admit_due(self) -> None:
        """Route the requests that have arrived by now."""
        now, closed = self.env.now, self.sc.requests.closed
        while self.pending and self.pending[0][0] <= now:
            t, i = heapq.heappop(self.pending)
            req = self.reqs[i]
            req = replace(req, arrival_s=t) if closed else req
            rep = self.route(self.front, req, self.turn)
            self.in_system += 1
            if rep.role == "prefill" and req.output_tokens > 1:  # its first token ends its stay there
                rep.sched.add(replace(req, output_tokens=1))
                self.originals[req.id] = req
            else:
                rep.sched.add(req)
            rep.notify()

    def finished(self, rep: Replica, done: list[Seq]) -> None:
        """Book requests that ended on `rep` (a prefill replica hands them to a decode replica)."""
        for seq in done:
            r = seq.req
            if rep.role == "prefill" and r.id in self.originals:
                full = self.originals.pop(r.id)
                back = self.route(self.back, full, self.turn)
                back.incoming.append((full, seq.first_token_s, rep))
                back.notify()
                continue
            self.records.append(RequestRecord(r.id, r.arrival_s, seq.first_token_s, seq.last_token_s,
                                              r.prompt_tokens, r.output_tokens, seq.hit_tokens, seq.preemptions))  # fmt: skip
            self.in_system -= 1
            if self.sc.requests.closed and self.next_closed < len(self.reqs):
                heapq.heappush(self.pending, (self.env.now + self.sc.requests.think_time, self.next_closed))
                self.next_closed += 1
        if any(r.sched.rejected for r in self.replicas):
            self._drop_rejected()

    def _drop_rejected(self) -> None:
        for rep in self.replicas:
            while rep.sched.rejected:
                rep.sched.rejected.pop()
                self.rejected += 1
                self.in_system -= 1

    def kv_transfer(self, src: Replica, dst: Replica, tokens: int) -> Program:
        """A request's prompt KV from each rank of `src` to the same rank of `dst`: one transfer per rank."""
        steps = []
        for a, b in zip(src.devices, dst.devices, strict=True):
            nbytes = tokens * src.block_B[a] / self.sc.kv_cache.block_size
            op = Transfer(f"kv_{a}_to_{b}", self.run.plan.precision.kv_cache, nbytes=nbytes, src=a, dst=b)
            steps.append(Step(op, (a,), (), "kv transfer"))
            self.xfer_B += nbytes
        self.xfers += 1
        return Program.compile("kv transfer", steps)

    # --------------------------------------------------------------------------------- summary
    def summary(self) -> dict[str, Any]:
        self._drop_rejected()
        if not self.records:  # every request was rejected: the KV pool cannot hold even one
            rep = self.replicas[0]
            r = self.reqs[0] if self.reqs else None
            need = rep.kv.blocks_for(r.prompt_tokens) if r else 0
            d = rep.devices[0]
            held = rep.kv.seq_blocks  # the most one sequence may hold: the pool, or one rank's share of it
            pool_B = held * rep.block_B[d]
            raise OutOfMemory(f"KV cache of request {r.id if r else 0} ({need} blocks; the pool holds "
                              f"{held}{' per rank' if rep.kv.ranks > 1 else ''})", d, need * rep.block_B[d],
                              pool_B, pool_B)  # fmt: skip
        end_s = self.env.now
        self.records.sort(key=lambda r: r.id)
        out = summarize(self.records, self.gaps, self.start_s, end_s, self.sc.slo)
        reps = self.replicas
        iterations = sum(r.iterations for r in reps)
        blocks = sum(r.kv.num_blocks for r in reps)
        queried = sum(r.kv.queried_tokens for r in reps)
        out.update({
            "latency_s": end_s - self.start_s,
            "scheduler": self.sc.scheduler.name,
            "rejected_requests": self.rejected,
            "preemptions": sum(r.sched.preemptions for r in reps),
            "swaps": sum(r.sched.swaps for r in reps),
            "kv_swapped_B": sum(r.swapped_B for r in reps),
            "iterations": iterations,
            "mean_batch_size": sum(r.seqs_run for r in reps) / max(iterations, 1),
            "kv_block_size": self.sc.kv_cache.block_size,
            "kv_cache_blocks": blocks,
            "kv_cache_peak_blocks": sum(r.kv.peak for r in reps),
            "kv_cache_peak_fraction": max(r.kv.peak / r.kv.num_blocks for r in reps),
            "kv_fragmentation_fraction": sum(r.frag_sum for r in reps) / max(iterations, 1),
            "prefix_hit_rate": sum(r.kv.hit_tokens for r in reps) / queried if queried else 0.0,
        })  # fmt: skip
        steps = sum(r.sched.decode_steps for r in reps)
        if self.sc.speculative.on:
            out["draft_model"] = self.sc.speculative.draft
            out["spec_tokens_per_step"] = sum(r.sched.decode_tokens for r in reps) / steps if steps else 0.0
        if self.sc.sharing.prefill_sm_fraction is not None:
            out["prefill_sm_fraction"] = self.sc.sharing.prefill_sm_fraction
        if len(reps) > 1:
            out["replicas"] = len(reps)
            out["router"] = self.sc.router
        if self.afd is not None:
            out["attention_devices"] = sum(len(p) for p in self.afd.pools)
            out["attention_microbatches"] = self.afd.microbatches
        if self.back:
            out["prefill_replicas"] = len(self.front)
            out["decode_replicas"] = len(self.back)
            out["kv_transfers"] = self.xfers
            out["kv_transferred_B"] = self.xfer_B
        if self.sc.usd_per_gpu_hour:
            usd = self.usd_per_hour * out["latency_s"] / 3600.0
            out["cost_usd"] = usd
            out["cost_per_million_tokens_usd"] = (
                usd / out["output_tokens"] * 1e6 if out["output_tokens"] else 0.0
            )
        return out
