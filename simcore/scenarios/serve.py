"""Serve: a request stream through a serving scheduler and a paged KV cache, one engine program per
iteration.

The process admits the requests that have arrived, asks the scheduler for the next iteration's work and
costs it as ONE ragged pass (`LLMRun.iteration`): every decode and prefill chunk of the iteration through
the GEMMs at once, an attention kernel per group of sequences alike. KV blocks swapped to or from host
memory move as transfers submitted with the pass, so they share the GPU's HBM and PCIe link with it.
Then the iteration's tokens are booked and finished requests leave. Events: one per iteration (and one
per idle wait for the next arrival).

Coarse-event choice: the decode steps of an iteration form one group whose context is their mean context
rounded up to a multiple of the KV block size. Decode attention streams every sequence's KV once, so the
mean keeps the bytes read (within a block per sequence) while a program is built once per batch size
and only its attention ops are re-priced as contexts grow; prefill chunks keep their exact shapes.
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import simpy

from models.llm import LLMSpec, SeqGroup
from simcore.config import block_field
from simcore.errors import ConfigError, InternalError, OutOfMemory
from simcore.mapping import ExecutionPlan
from simcore.mapping.plan import nearest_hosts
from simcore.ops import Transfer
from simcore.program import Program, Step
from simcore.results import Result
from simcore.scenarios.base import LLMRun, LLMScenario, Process, account, register
from simcore.serving.kv_cache import KVCacheSpec, PagedKVCache
from simcore.serving.metrics import RequestRecord, SLOSpec, summarize
from simcore.serving.requests import RequestSpec
from simcore.serving.schedulers import Batch, Scheduler, SchedulerSpec, Seq
from simcore.system import System


@register("serve")
@dataclass(frozen=True)
class Serve(LLMScenario):
    requests: RequestSpec = block_field(RequestSpec)
    scheduler: SchedulerSpec = block_field(SchedulerSpec)
    kv_cache: KVCacheSpec = block_field(KVCacheSpec)
    slo: SLOSpec = block_field(SLOSpec)

    def check_context(self, spec: LLMSpec) -> None:
        """Refuse a stream whose longest sequence (prompt + output) outgrows the model's context."""
        try:
            positions, how = self.requests.max_positions()
        except ConfigError as e:
            if e.file:  # a trace's cell: keep its file, line and column, and say which key named the trace
                raise ConfigError(str(e), key="scenario.requests.trace") from None
            raise
        spec.check_positions(positions, f"{how} needs {positions}", "scenario.requests")

    def check_plan(self, plan: ExecutionPlan) -> None:
        """One replica: data-parallel replicas need a router, which this scenario does not model."""
        if plan.dp > 1:
            raise ConfigError(f"serve simulates one replica, not dp {plan.dp}: split the stream with "
                              "requests.split (as `simcore plan` does) and scale", key="parallelism.dp")  # fmt: skip

    def drive(self, run: LLMRun) -> Process:
        return Server(self, run).drive()

    def run(self, system: System, model: LLMSpec, plan: ExecutionPlan, keep_records: bool) -> Result:
        self.check_plan(plan)
        llm = LLMRun(system, model, plan, keep_records)
        llm.allocate_weights()
        server = Server(self, llm)
        proc = llm.engine.env.process(server.drive())
        llm.engine.env.run()
        summary: dict[str, Any] = proc.value
        summary.update(model=model.name, params=model.params, tp=llm.tp, dtype=plan.dtype)
        if not plan.precision.is_uniform:
            summary["precision"] = plan.precision.as_dict()
        if plan.pp > 1:
            summary["pp"] = plan.pp
        res = account(llm.engine.ledger(), llm.placement.devices, summary, "token", summary["output_tokens"])
        res.requests = server.records  # type: ignore[attr-defined]  # per-request records (serve only)
        return res


class IterationPrograms:
    """Programs of iterations by shape, kept while in use (the engine compiles a kept program once): a
    decode-only pass is derived from one template per batch size (only its attention ops change with the
    context), a mixed pass is mapped per distinct shape; the least recently used beyond MAX are dropped."""

    MAX = 256

    def __init__(self, run: LLMRun) -> None:
        self.run = run
        self.templates: dict[int, tuple[list[Program], list[tuple[int, ...]]]] = {}
        self.kept: OrderedDict[tuple, list[Program]] = OrderedDict()

    def decode(self, n: int, kv_len: int) -> list[Program]:
        key = (n, kv_len)
        progs = self._get(key)
        if progs is None:
            t = self.templates.get(n)
            if t is None:
                progs = self.run.iteration((SeqGroup(n, 1, kv_len),), "decode")
                self.templates[n] = (progs, [tuple(p.indices_of("attention")) for p in progs])
            else:  # a program of its own (no base), so that the engine keeps its compiled form
                progs = [_rooted(p.replace_ops(lambda op: op.with_kv_len(kv_len), only=idx, uniform=True))
                         for p, idx in zip(*t, strict=True)]  # fmt: skip
            self._put(key, progs)
        return progs

    def ragged(self, groups: tuple[SeqGroup, ...]) -> list[Program]:
        progs = self._get(groups)
        if progs is None:
            progs = self.run.iteration(groups)
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
    return Program(p.name, p.steps, p.lanes, p.signals, p.group_workspace)


class Server:
    """One replica serving a stream: the KV pool sized from free memory, the scheduler, the loop."""

    def __init__(self, scenario: Serve, run: LLMRun) -> None:
        self.sc, self.run = scenario, run
        self.env: simpy.Environment = run.engine.env
        self.reqs = scenario.requests.make()
        self.longest = max((r.prompt_tokens + r.output_tokens for r in self.reqs), default=1)
        self.programs = IterationPrograms(run)
        self.records: list[RequestRecord] = []
        self.gaps: list[float] = []
        self.devices = tuple(d for group in run.placement.stages for d in group)
        spec, kvs = scenario.scheduler, scenario.kv_cache
        self.kv = PagedKVCache(0, kvs.block_size, kvs.prefix_caching, kvs.watermark)
        self.sched: Scheduler = spec.build(self.kv, 0, self.longest)
        self.block_B = self._block_bytes()
        self.hosts: dict[str, str] = {}
        self.kv.num_blocks = self._reserve_pool()
        self.kv.watermark_blocks = int(kvs.watermark * self.kv.num_blocks)
        self.sched.swap_free = self._reserve_swap() if spec.preemption == "swap" else 0
        self.iterations = self.seqs_run = 0
        self.frag_sum = 0.0
        self.swapped_B = 0.0

    # ---------------------------------------------------------------------------------- memory
    def _block_bytes(self) -> dict[str, float]:
        """Bytes one KV block takes on each device of the replica: its ranks' heads of its stage's layers
        (sliding windows are not credited: a block holds full-attention layers' worth)."""
        run, spec = self.run, self.run.spec
        per_token = run.plan.precision.kv_bytes(spec.kv_elements_per_token) / run.tp
        bounds = run.placement.layer_bounds
        out = {}
        for s, group in enumerate(run.placement.stages):
            share = (bounds[s + 1] - bounds[s]) / spec.layers
            for d in group:
                out[d] = self.sc.kv_cache.block_size * per_token * share
        return out

    def _reserve_pool(self) -> int:
        """Allocate the KV pool: the blocks that fit in each device's memory share after weights and the
        activations of the largest iteration (vLLM's profile run), on every device alike."""
        eng, kvs = self.run.engine, self.sc.kv_cache
        profile = self.run.iteration((SeqGroup(1, self.sched.profile_tokens, self.sched.profile_tokens),))
        profile += self.run.iteration((SeqGroup(self.sched.max_seqs, 1, 1),))
        workspace = {d: max(p.workspace.get(d, (0.0, ""))[0] for p in profile) for d in self.devices}
        free = {}
        for d in self.devices:
            m = eng.store[d]
            free[d] = eng.capacity_B[m] * kvs.gpu_memory_utilization - eng.used_B[m] - workspace[d]
        blocks = min(kvs.blocks_that_fit(free[d], self.block_B[d]) for d in self.devices)
        if blocks <= 0:
            d = min(self.devices, key=lambda d: free[d])
            cap = eng.capacity_B[eng.store[d]]
            raise OutOfMemory("KV cache (one block)", d, self.block_B[d], max(free[d], 0.0), cap)
        for d in self.devices:
            eng.allocate(d, "kv_cache", blocks * self.block_B[d])
        return blocks

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

    # ------------------------------------------------------------------------------------ the loop
    def drive(self) -> Process:
        env, sched, sc = self.env, self.sched, self.sc
        closed = sc.requests.closed
        pending: list[tuple[float, int]] = []  # (release time, index into self.reqs)
        if closed:
            clients = min(sc.requests.clients, len(self.reqs))
            pending = [(0.0, i) for i in range(clients)]
            self.next_closed = clients
        else:
            pending = [(r.arrival_s, i) for i, r in enumerate(self.reqs)]
        heapq.heapify(pending)
        start_s = pending[0][0] if pending else 0.0
        while True:
            while pending and pending[0][0] <= env.now:
                t, i = heapq.heappop(pending)
                req = self.reqs[i]
                sched.add(replace(req, arrival_s=t) if closed else req)
            batch = sched.next_batch()
            if not batch and not batch.swap_in and not batch.swap_out:
                if sched.running:
                    raise InternalError("internal error: serve scheduler stalled with running sequences")
                if sched.waiting or sched.swapped:  # a head was rejected: schedule again
                    continue
                if not pending:
                    break
                yield env.timeout(pending[0][0] - env.now)
                continue
            yield self._submit(batch)
            done = sched.complete(batch, env.now, self.gaps)
            self.iterations += 1
            self.seqs_run += len(batch.decodes) + len(batch.prefills)
            self._book(done)
            if closed:
                for _ in done:
                    if self.next_closed < len(self.reqs):
                        heapq.heappush(pending, (env.now + sc.requests.think_time, self.next_closed))
                        self.next_closed += 1
        if not self.records:  # every request was rejected: the KV pool cannot hold even one
            r = sched.rejected[0].req if sched.rejected else None
            need = self.kv.blocks_for(r.prompt_tokens) if r else 0
            d, pool_B = self.devices[0], self.kv.num_blocks * self.block_B[self.devices[0]]
            raise OutOfMemory(f"KV cache of request {r.id if r else 0} ({need} blocks; the pool holds "
                              f"{self.kv.num_blocks})", d, need * self.block_B[d], pool_B, pool_B)  # fmt: skip
        end_s = env.now
        out = summarize(self.records, self.gaps, start_s, end_s, sc.slo)
        kv = self.kv
        out.update({
            "latency_s": end_s - start_s,
            "scheduler": sc.scheduler.name,
            "rejected_requests": len(sched.rejected),
            "preemptions": sched.preemptions,
            "swaps": sched.swaps,
            "kv_swapped_B": self.swapped_B,
            "iterations": self.iterations,
            "mean_batch_size": self.seqs_run / self.iterations,
            "kv_block_size": kv.block_size,
            "kv_cache_blocks": kv.num_blocks,
            "kv_cache_peak_blocks": kv.peak,
            "kv_cache_peak_fraction": kv.peak / kv.num_blocks,
            "kv_fragmentation_fraction": self.frag_sum / self.iterations,
            "prefix_hit_rate": kv.hit_rate,
        })  # fmt: skip
        return out

    def _submit(self, batch: Batch) -> simpy.Event:
        """Submit the iteration's pass (and its swaps): one program per event source, all at once."""
        progs = self._pass(batch) if batch else []
        if batch.swap_out:
            progs.append(self._swap_program(batch.swap_out, out=True))
        if batch.swap_in:
            progs.append(self._swap_program(batch.swap_in, out=False))
        if len(progs) == 1:
            return self.run.engine.submit(progs[0])
        return self.run.submit_all(progs)

    def _pass(self, batch: Batch) -> list[Program]:
        bs = self.kv.block_size
        n = len(batch.decodes)
        kv_len = 0
        if n:  # the mean context (the fed token's KV included), rounded up to a whole block
            kv_len = -(-(sum(s.computed for s in batch.decodes) + n) // (n * bs)) * bs
        if not batch.prefills:
            return self.programs.decode(n, kv_len)
        chunks = Counter((t, s.computed + t) for s, t in batch.prefills)
        groups = ((SeqGroup(n, 1, kv_len),) if n else ()) + tuple(
            SeqGroup(c, q, kv) for (q, kv), c in sorted(chunks.items())
        )
        return list(self.programs.ragged(groups))

    def _book(self, done: list[Seq]) -> None:
        for seq in done:
            r = seq.req
            self.records.append(RequestRecord(r.id, r.arrival_s, seq.first_token_s, seq.last_token_s,
                                              r.prompt_tokens, r.output_tokens, seq.hit_tokens, seq.preemptions))  # fmt: skip
        held = self.kv.used - sum(e.blocks for e in self.kv.prefixes.values())
        if held > 0:
            tokens = sum(s.computed - s.shared for s in self.sched.running)
            self.frag_sum += 1.0 - tokens / (held * self.kv.block_size)
