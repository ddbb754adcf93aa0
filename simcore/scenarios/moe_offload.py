"""MoE offload: decode steps of a mixture-of-experts model whose routed experts live in host memory (or on
an NVMe drive), a per-layer cache of them in GPU memory, driven by a routing trace (traces/routing.py).

Every step, each MoE layer looks up the experts the trace routes its tokens to. Hits run from the cache
at once; misses are either copied to the GPU as one transfer per layer (issued when the layer's router has
run; the copied experts' GEMMs wait for it) or run on the host CPU (HybriMoE / kTransformers), chosen per
layer by `moe.misses`. Options, each a mechanism from a published system:

- `prefetch: next-layer` (HOBBIT, Pre-gated MoE): when layer l's router has run, the experts predicted for
  layer l + 1 (the trace's, each wrong with probability 1 - `prefetch_accuracy`) are copied while layer l
  computes; a wrong guess costs its bytes and a cache slot.
- `low_precision` with `low_score` (HOBBIT): a miss whose gate score is below `low_score` is loaded in a
  low-precision copy (int8/int4: fewer bytes over PCIe) and its GEMMs read that format (dequantized inside
  the GEMM); it is cached as such until fetched again in full precision.
- `misses: balance` (HybriMoE): per layer, the misses sorted by gate score are split between the CPU queue
  (lowest scores first) and the copy-then-GPU queue so that the later of the two finishes first, by the
  closed-form costs of both; `cpu` sends every miss to the CPU (a kTransformers-like static split).

Every copy is a flow over the source memory, the PCIe links and the GPU's memory, shared with whatever
else is in flight. The cache state evolves in trace order; timing never changes what is cached. Where the
host shares the GPU's memory (Jetson, Apple: unified memory), the GPU reads every expert in place: nothing
is cached or copied and a step is the plain decode (`unified_memory` in the summary); experts on an NVMe
drive are still copied in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np

from models.llm import ExpertGemm, LLMSpec, LogicalOp, LogicalPass, build_pass
from simcore.config import Param, block_field, param_field, positive
from simcore.errors import ConfigError
from simcore.mapping import ExecutionPlan
from simcore.mapping.plan import nearest_hosts
from simcore.moe import POLICIES, LayerCaches
from simcore.ops import Attention, Chain, Elementwise, Op, Tensor, Transfer
from simcore.precision import bits
from simcore.program import Program, Step
from simcore.results import Result
from simcore.scenarios.base import LLMRun, LLMScenario, Process, account, register
from simcore.system import System
from traces.routing import RoutingTrace, load_routing, synthetic

MISS_PLACES = ("gpu", "cpu", "balance")
PREFETCH = ("none", "next-layer")
STORES = ("host", "nvme")


def share(doc: str, default: float) -> Param:
    """A share in [0, 1] (0 allowed: an empty cache, no locality)."""
    return Param(doc, None, default, float, minimum=0, exclusive_min=False, maximum=1)


@dataclass(frozen=True)
class ExpertOffload:
    """Where the routed experts live and how misses are served (the `moe:` block of `kind: moe-offload`)."""

    trace: str | None = param_field(Param("routing trace: a shipped one (traces/README.md) or a .jsonl path; "
                                          "none: a synthetic trace from zipf_s, locality and seed", type=str,
                                          default=None))  # fmt: skip
    zipf_s: float = param_field(Param("synthetic trace: Zipf exponent of expert popularity (0: uniform)",
                                      None, 0.0, float, minimum=0, exclusive_min=False, maximum=8))  # fmt: skip
    locality: float = param_field(share("synthetic trace: probability a token keeps its expert in a slot "
                                        "from one step to the next", 0.15))  # fmt: skip
    affinity: float = param_field(share("synthetic trace: probability a token's expert in a slot of layer l + 1 "
                                        "is its layer-l expert's fixed successor", 0.0))  # fmt: skip
    seed: int = param_field(Param("synthetic trace: random seed", type=int, default=0))
    cache_ratio: float = param_field(
        share("share of each MoE layer's routed experts cached in GPU memory", 0.5)
    )
    policy: str = param_field(Param("expert cache replacement policy", type=str, default="lru",
                                    choices=tuple(POLICIES)))  # fmt: skip
    decay: float = param_field(share("mrs: weight of an expert's past gate scores per lookup", 0.5))
    prefetch: str = param_field(Param("copy the next layer's predicted experts while this layer computes",
                                      type=str, default="none", choices=PREFETCH))  # fmt: skip
    prefetch_accuracy: float = param_field(share("probability a prefetched expert is one the next layer uses",
                                                 1.0))  # fmt: skip
    low_precision: str | None = param_field(Param("format a low-score miss is loaded in (HOBBIT)", type=str,
                                                  default=None, choices=("int8", "int4")))  # fmt: skip
    low_score: float = param_field(share("a miss whose gate score is below this loads in low_precision", 0.0))
    store: str = param_field(Param("where the routed experts live: host (CPU memory) or nvme (the system's "
                                   "NVMe drive, copied to the GPU peer to peer or through the host as the "
                                   "topology routes it)", type=str, default="host", choices=STORES))  # fmt: skip
    misses: str = param_field(Param("where a missed expert runs: gpu (copied in), cpu (on the host), balance "
                                    "(per layer, the split that finishes first)", type=str, default="gpu",
                                    choices=MISS_PLACES))  # fmt: skip


@dataclass
class Tally:
    """What a run's caches did, summed over steps and layers."""

    accesses: int = 0
    hits: int = 0
    cached: int = 0  # hits on experts resident before this step's copies (not prefetched for it)
    fetched: int = 0
    fetched_B: float = 0.0
    low_precision: int = 0
    cpu: int = 0
    prefetched: int = 0
    prefetch_used: int = 0


@register("moe-offload")
@dataclass(frozen=True)
class MoEOffload(LLMScenario):
    """`steps` decode steps of `batch` sequences from `context_len` tokens, routed experts in host memory."""

    batch: int = param_field(positive("sequences in the batch", type=int, default=1))
    context_len: int = param_field(positive("tokens in the KV cache", type=int, default=512))
    steps: int = param_field(positive("decode steps (a shorter routing trace wraps around)", type=int,
                                      default=16, maximum=1024))  # fmt: skip
    prefill: bool = param_field(Param("first prefill the prompts (context_len tokens each) through the same "
                                      "expert cache and offload policy; their routing is the trace's first "
                                      "context_len steps", type=bool, default=False))  # fmt: skip
    moe: ExpertOffload = block_field(ExpertOffload)

    def check_context(self, spec: LLMSpec) -> None:
        """Refuse, before time zero, a dense model, a context the model cannot hold and a routing trace
        that does not fit the model or the batch."""
        if spec.moe is None:
            raise ConfigError(
                f"moe-offload needs a mixture-of-experts model; {spec.name} is dense", key="model"
            )
        if self.moe.store == "nvme" and self.moe.misses != "gpu":
            raise ConfigError("experts on NVMe are copied to the GPU (misses: gpu); the host CPU does not hold "
                              "them", key="scenario.moe.misses")  # fmt: skip
        c = self.context_len + self.steps
        spec.check_positions(
            c, f"context {self.context_len} + {self.steps} steps needs {c}", "scenario.steps"
        )
        self.trace(spec, sum(spec.moe.is_moe(i) for i in range(spec.layers)))

    def check_plan(self, plan: ExecutionPlan) -> None:
        """One GPU, nothing else offloaded: the expert cache is this scenario's offload."""
        if (plan.tp or 1) != 1 or plan.pp != 1 or plan.dp != 1 or plan.ep != 1 or plan.offload_weights \
                or plan.kv_devices:  # fmt: skip
            raise ConfigError("moe-offload runs on one GPU (tp = pp = dp = ep = 1, no other offload)",
                              key="parallelism")  # fmt: skip

    def run(self, system: System, model: LLMSpec, plan: ExecutionPlan, keep_records: bool) -> Result:
        self.check_context(model)
        self.check_plan(plan)
        llm = LLMRun(system, model, replace(plan, tp=1), keep_records)
        env = llm.engine.env
        proc = env.process(self.drive(llm))
        env.run(until=proc)  # not past its end: superseded flow timers may still be queued
        summary: dict[str, Any] = proc.value
        summary.update(model=model.name, params=model.params, active_params=model.active_params, tp=1,
                       dtype=plan.dtype)  # fmt: skip
        if not plan.precision.is_uniform:
            summary["precision"] = plan.precision.as_dict()
        ledger = llm.engine.ledger()
        # what each link direction carried per output token over the whole run (the prefill's too)
        summary["link_bytes_per_token_B"] = {r.label: r.bytes_carried / summary["output_tokens"]
                                             for r in ledger.resources if r.link is not None and r.bytes_carried}  # fmt: skip
        return account(ledger, llm.placement.devices, summary, "token", summary["output_tokens"])

    def trace(self, spec: LLMSpec, moe_layers: int) -> RoutingTrace:
        """The routing trace, checked against the model and batch."""
        assert spec.moe is not None
        m, e, k = self.moe, spec.moe.experts, spec.moe.top_k
        if m.trace is None:
            span = max(
                self.steps, self.context_len if self.prefill else 1
            )  # the prompt reads its first steps
            tr = synthetic(moe_layers, e, k, min(span, 4096), self.batch, zipf_s=m.zipf_s,
                           locality=m.locality, affinity=m.affinity, seed=m.seed)  # fmt: skip
        else:
            tr = load_routing(m.trace)
            tr.check(moe_layers, e, k)
        if tr.tokens != self.batch:
            raise ConfigError(f"routing trace {tr.name!r} routes {tr.tokens} tokens per step; scenario.batch is "
                              f"{self.batch}", key="scenario.moe.trace")  # fmt: skip
        return tr

    def drive(self, run: LLMRun) -> Process:
        spec, plan, eng = run.spec, run.plan, run.engine
        assert spec.moe is not None
        moe, m = spec.moe, self.moe
        gpu = run.placement.stages[0][0]
        try:
            host = nearest_hosts(run.system, [gpu])[gpu]
        except ConfigError as e:
            raise ConfigError(e.message, key="hardware") from None
        store = host
        if m.store == "nvme":
            drives = run.system.of_type("nvme")
            if not drives:
                raise ConfigError(f"moe.store: nvme needs an NVMe drive; {run.system.name!r} has none",
                                  key="scenario.moe.store")  # fmt: skip
            store = min(drives, key=lambda d: (sum(k.latency_s for _, _, k in run.system.route(gpu, d)), d))
        layers = [i for i in range(spec.layers) if moe.is_moe(i)]
        trace = self.trace(spec, len(layers))
        # unified memory (Jetson, Apple): the store is the GPU's own memory, which reads every expert in place
        unified = eng.store[store] == eng.store[gpu]
        capacity = moe.experts if unified else round(m.cache_ratio * moe.experts)
        # weights: everything but the routed experts on the GPU, plus the cached ones; all experts on the host
        expert_params = moe.expert_params(spec.hidden)
        routed, cached = (len(layers) * n * expert_params for n in (moe.experts, capacity))
        prec = plan.precision
        eng.allocate(gpu, f"{spec.name} weights", prec.weight_bytes(spec.params - routed))
        if not unified:
            eng.allocate(gpu, f"{spec.name} expert cache", prec.weight_bytes(cached, routed=cached))
        eng.allocate(store, f"{spec.name} experts ({m.store} copy)", prec.weight_bytes(routed, routed=routed))
        run.allocate_kv(self.batch, self.context_len + self.steps)
        logical = build_pass(spec, 1, self.batch, 1, self.context_len + 1, prec, "decode")
        writer = StepProgram(self, run, logical, trace, layers, gpu, host, store, capacity)
        prefill: dict[str, Any] = {}
        if self.prefill:
            ctx = self.context_len
            lay = Layout.of(build_pass(spec, 1, self.batch, ctx, ctx, prec, "prefill"), set(layers))
            t0 = eng.env.now
            plans = writer.decide(lay, writer.prompt_route(ctx))
            yield eng.submit(writer.write(lay.logical.name, lay, plans, None))
            done = writer.tally
            prefill = {"prefill_s": eng.env.now - t0, "prefill_tokens_per_s": self.batch * ctx / (eng.env.now - t0),
                       "prefill_experts_fetched": done.fetched, "prefill_experts_on_cpu": done.cpu}  # fmt: skip
            writer.tally = Tally()
        t0, busy0 = eng.env.now, eng.busy_group[(gpu,)]
        for s in range(self.steps):
            yield eng.submit(writer.program(s, self.context_len + 1 + s))
        t = eng.env.now - t0
        stall = max(0.0, t - (eng.busy_group[(gpu,)] - busy0))  # the GPU waiting: for copies, for the CPU
        tally = writer.tally
        tokens = self.batch * self.steps
        return {"latency_s": t, "time_per_output_token_s": t / self.steps, "tokens_per_s": tokens / t,
                "output_tokens": tokens, "expert_hit_rate": tally.hits / max(1, tally.accesses),
                "cache_hit_rate": tally.cached / max(1, tally.accesses),
                "gpu_stall_s_per_token": stall / tokens,
                "experts_cached_per_layer": capacity, "cache_policy": m.policy,
                "experts_fetched": tally.fetched, "expert_bytes_fetched_per_token_B": tally.fetched_B / tokens,
                "experts_low_precision": tally.low_precision, "experts_on_cpu": tally.cpu,
                "experts_prefetched": tally.prefetched,
                "prefetch_hit_rate": tally.prefetch_used / tally.prefetched if tally.prefetched else 0.0,
                "routing_trace": trace.name, "unified_memory": unified, **prefill}  # fmt: skip


def attention_at(kv_len: int | None) -> Callable[[Op], Op]:
    """An op with its attention's context at `kv_len` (other ops, and every op for None, as they are); each
    attention is grown once, so identical layers keep sharing one op."""
    grown: dict[int, Op] = {}  # id of an attention -> at kv_len

    def at_kv(op: Op) -> Op:
        if kv_len is None or not isinstance(op, Attention):
            return op
        return grown.get(id(op)) or grown.setdefault(id(op), op.with_kv_len(kv_len))

    return at_kv


@dataclass(frozen=True)
class Run:
    """A stretch of the pass between two MoE layers' expert parts, written as one step (a `Chain`)."""

    ops: tuple[LogicalOp, ...]
    names: tuple[str, ...]  # each op's record name in this layer
    allocs: tuple[Tensor, ...]
    layer: int | None  # the MoE layer whose expert part follows (None: the end of the pass)
    prefix: str  # that layer's op-name prefix

    @cached_property
    def key(self) -> tuple[int, ...]:
        """Its ops' identities: identical layers' runs have equal keys."""
        return tuple(id(x.op) for x in self.ops)


@dataclass(frozen=True)
class Layout:
    """Where a logical pass's MoE pieces sit: per MoE layer the indices of its expert ops, and the pass as
    runs of other ops, each followed by an MoE layer's expert part."""

    logical: LogicalPass
    ops: dict[int, dict[str, int]]
    runs: tuple[Run, ...]

    @classmethod
    def of(cls, logical: LogicalPass, moe_layers: set[int]) -> Layout:
        ops: dict[int, dict[str, int]] = {}
        for k, lop in enumerate(logical.ops):
            tail = (lop.name or lop.op.name).rsplit(".", 1)[-1]
            if lop.block in moe_layers and tail in ("experts_gate_up", "experts_act_mul", "experts_down"):
                ops.setdefault(lop.block, {})[tail] = k
        firsts = {i["experts_gate_up"]: layer for layer, i in ops.items()}
        folded = {i[t] for i in ops.values() for t in ("experts_act_mul", "experts_down")}
        runs: list[Run] = []
        run: list[LogicalOp] = []
        for k, lop in enumerate(logical.ops):
            if k in folded:
                continue
            layer = firsts.get(k)
            if layer is None:
                run.append(lop)
                continue
            runs.append(cls._run(run, layer, (lop.name or lop.op.name).rsplit(".", 1)[0]))
            run = []
        if run:
            runs.append(cls._run(run, None, ""))
        return cls(logical, ops, tuple(runs))

    @staticmethod
    def _run(lops: list[LogicalOp], layer: int | None, prefix: str) -> Run:
        return Run(tuple(lops), tuple(x.name or x.op.name for x in lops),
                   tuple(t for x in lops for t in x.allocs), layer, prefix)  # fmt: skip


class LayerPlan(NamedTuple):
    """One MoE layer's part of a step as the caches decide it: what is copied in, run on the host and
    prefetched for the next layer, and the expert groups the GPU runs in order. Equal plans write equal
    steps, so a step whose plans repeat an earlier step's reuses that step's program."""

    layer: int
    rows: int  # token rows per expert
    waits_prefetch: bool  # its copied groups wait for the previous layer's prefetch
    copy_B: float  # this layer's misses copied to the GPU (0: none)
    cpu: int  # misses run on the host
    cpu_out_B: float  # their outputs' bytes back to the GPU
    prefetch_B: float  # the next layer's predicted experts copied ahead (0: none)
    groups: tuple[tuple[bool, str | None, int, str], ...]  # (waits for a copy, weight format, experts, tag)


class StepProgram:
    """Writes one decode step's program: the decode pass on the GPU with each MoE layer's expert GEMMs
    split by where their weights are (cached, copied in, low precision, on the CPU) and the copies."""

    def __init__(self, sc: MoEOffload, run: LLMRun, logical: LogicalPass, trace: RoutingTrace,
                 layers: list[int], gpu: str, host: str, store: str, capacity: int) -> None:  # fmt: skip
        spec = run.spec
        assert spec.moe is not None
        self.sc, self.run, self.trace = sc, run, trace
        self.gpu, self.host, self.store = gpu, host, store
        self.moe_index = {layer: j for j, layer in enumerate(layers)}
        self.layers = layers
        self.caches = LayerCaches(sc.moe.policy, len(layers), capacity, spec.moe.experts, sc.moe.decay)
        self.tally = Tally()
        self.rng = np.random.default_rng(sc.moe.seed + 1)
        self.expert_params = spec.moe.expert_params(spec.hidden)
        self.full = run.plan.precision.experts
        self.dtype = logical.ops[0].op.dtype
        self.decode = self.lay = Layout.of(logical, set(layers))
        self._cost: dict[tuple, float] = {}
        self._ops: dict[tuple, tuple[Op, ...]] = {}  # (layer op, n, rows, fmt) -> the expert ops
        self._chains: dict[tuple, Chain] = {}  # (layout, layer, n, rows, fmt, tag) -> its expert chain
        self._expert_B: dict[str, float] = {}  # format -> bytes of one expert
        self._weight_dtype: dict[tuple[int, int], str | None] = {}  # (layout, layer) -> its experts' format
        self._templates: dict[tuple[LayerPlan, ...], Program] = {}  # a step's layer plans -> its program
        self._ordered: dict[tuple, tuple[tuple[bool, str | None, int, str], ...]] = {}  # groups -> run order
        self._attention_at: dict[Program, tuple[int, ...]] = {}  # a template -> its steps with attention
        #: (trace step, MoE layer) -> (routed experts and their scores, token rows in all, rows per expert)
        self._routes: dict[tuple[int, int], tuple[dict[int, float], int, int]] = {}
        #: the routing of the pass being written: MoE layer -> (routed experts, rows in all, rows per expert)
        self.routes: Callable[[int], tuple[dict[int, float], int, int]] = lambda j: self.route(0, j)

    # ------------------------------------------------------------------------------------------ costs

    def expert_B(self, fmt: str, n: int = 1) -> float:
        """Bytes of `n` experts' weights stored in `fmt`."""
        one = self._expert_B.get(fmt)
        if one is None:
            one = self._expert_B[fmt] = self.expert_params * bits(fmt) / 8
        return n * one

    def experts(self, layer: int, n: int, rows: int, fmt: str | None, prefix: str, tag: str) -> Chain:
        """The layer's expert GEMMs (`expert_ops`) as one chained step, recorded as `{prefix}.{op}{tag}`."""
        key = (id(self.lay), layer, n, rows, fmt, tag)
        chain = self._chains.get(key)
        if chain is None:
            ops = self.expert_ops(layer, n, rows, fmt)
            names = tuple(f"{prefix}.{op.name.rsplit('.', 1)[-1]}{tag}" for op in ops)
            chain = self._chains[key] = Chain(names[0], ops[0].dtype, ops, names)
        return chain

    def expert_ops(self, layer: int, n: int, rows: int, fmt: str | None) -> tuple[Op, ...]:
        """The layer's three expert ops over `n` experts of `rows` token rows each, weights stored in `fmt`
        (`Gemm.weight_dtype`; None: the activations' dtype)."""
        idx, logical = self.lay.ops[layer], self.lay.logical
        gate_up: ExpertGemm = logical.ops[idx["experts_gate_up"]].op  # type: ignore[assignment]
        key = (id(gate_up), n, rows, fmt)  # identical layers share their ops
        ops = self._ops.get(key)
        if ops is None:
            act: Elementwise = logical.ops[idx["experts_act_mul"]].op  # type: ignore[assignment]
            down: ExpertGemm = logical.ops[idx["experts_down"]].op  # type: ignore[assignment]
            ef = gate_up.n // 2
            w = {} if fmt is None else {"weight_dtype": fmt}
            ops = self._ops[key] = (replace(gate_up, batch=n, m=rows, **w),
                                    replace(act, elements=n * rows * ef), replace(down, batch=n, m=rows, **w))  # fmt: skip
        return ops

    def seconds(self, key: tuple, make: Callable[[], float]) -> float:
        if key not in self._cost:
            self._cost[key] = make()
        return self._cost[key]

    def compute_s(self, device: str, layer: int, n: int, rows: int, fmt: str | None) -> float:
        """Closed-form seconds of `n` experts' GEMMs on `device` (what the balancing scheduler weighs)."""
        comp = self.run.system.devices[device]
        return self.seconds(("c", device, id(self.lay), layer, n, rows, fmt), lambda: sum(
            comp.op_cost(op).duration_s for op in self.expert_ops(layer, n, rows, fmt)))  # fmt: skip

    def copy_s(self, nbytes: float) -> float:
        """Closed-form seconds of one host -> GPU copy of `nbytes` (latency + bytes at the path's rate)."""
        op = Transfer("probe", self.dtype, nbytes=nbytes, src=self.store, dst=self.gpu)
        return self.run.engine.transfer_plan(op).solo_s

    def fmt_of(self, score: float) -> str:
        m = self.sc.moe
        return m.low_precision if m.low_precision is not None and score < m.low_score else self.full

    def split(self, layer: int, misses: list[tuple[float, int]], rows: int, ready: int) -> int:
        """How many of the misses ((gate score, expert), lowest score first) run on the CPU: the split whose
        later queue ends first, the CPU queue being its experts' GEMMs, the GPU queue the `ready` cached
        experts' GEMMs overlapped with the copy of the rest, then theirs (closed-form costs, no contention)."""
        if self.sc.moe.misses == "cpu":
            return len(misses)
        t_ready = (
            self.compute_s(self.gpu, layer, ready, rows, self.weight_dtype(layer, self.full))
            if ready
            else 0.0
        )
        best, best_s = 0, math.inf
        for n_cpu in range(len(misses) + 1):
            gpu_part = misses[n_cpu:]
            cpu_s = self.compute_s(self.host, layer, n_cpu, rows, None) if n_cpu else 0.0
            gpu_s = t_ready
            if gpu_part:
                fmts = [self.fmt_of(sc) for sc, _ in gpu_part]
                gpu_s = max(t_ready, self.copy_s(sum(self.expert_B(f) for f in fmts))) + sum(
                    self.compute_s(self.gpu, layer, 1, rows, self.weight_dtype(layer, f)) for f in fmts)  # fmt: skip
            if max(cpu_s, gpu_s) < best_s - 1e-15:
                best, best_s = n_cpu, max(cpu_s, gpu_s)
        return best

    # ---------------------------------------------------------------------------------------- program

    def program(self, s: int, kv_len: int) -> Program:
        """Decode step `s` (trace step s mod its length) with `kv_len` tokens of context. The caches decide
        first; a step whose decisions repeat an earlier step's (the routing trace wraps, the caches settle)
        is that step's program with every attention's context grown (`Program.replace_ops`: the engine
        reprices only those steps)."""
        ts = s % self.trace.steps
        name = f"{self.decode.logical.name}-step{s}"
        plans = self.decide(self.decode, lambda j: self.route(ts, j))
        template = self._templates.get(plans)
        if template is None:
            program = self._templates[plans] = self.write(name, self.decode, plans, kv_len)
            return program
        at_kv = attention_at(kv_len)
        members: dict[int, tuple[Op, ...]] = {}  # id of a chain's ops -> with its attention at kv_len

        def grown(op: Op) -> Op | None:
            if isinstance(op, Chain):
                ops = members.get(id(op.ops)) or members.setdefault(
                    id(op.ops), tuple(at_kv(m) for m in op.ops)
                )
                return Chain(op.name, op.dtype, ops, op.names)
            return at_kv(op) if isinstance(op, Attention) else None

        return template.replace_ops(grown, name, only=self._attention_steps(template), uniform=True)

    def _attention_steps(self, program: Program) -> tuple[int, ...]:
        """Steps of `program` that run an attention (alone or in a chain)."""
        out = self._attention_at.get(program)
        if out is None:
            out = self._attention_at[program] = tuple(
                i for i, st in enumerate(program.steps)
                if isinstance(st.op, Attention) or (isinstance(st.op, Chain) and any(isinstance(m, Attention) for m in st.op.ops))
            )  # fmt: skip
        return out

    def decide(
        self, lay: Layout, routes: Callable[[int], tuple[dict[int, float], int, int]]
    ) -> tuple[LayerPlan, ...]:
        """Every MoE layer's plan for a pass of `lay` routed by `routes`, in order (the caches move on)."""
        self.lay, self.routes = lay, routes
        staged: dict[int, frozenset[int]] = {}  # MoE layer -> experts prefetched for it
        return tuple(self.decide_layer(run.layer, staged) for run in lay.runs if run.layer is not None)

    def write(self, name: str, lay: Layout, plans: tuple[LayerPlan, ...], kv_len: int | None) -> Program:
        """The program of the pass `lay` whose MoE layers do as `plans` say, its attention at `kv_len` (None:
        as built): each run of ops between MoE layers one chained step (identical layers' runs are twins),
        each layer's expert part as `write_layer` writes it."""
        self.lay = lay
        steps: list[Step] = []
        staged: dict[int, int] = {}  # MoE layer -> the step that prefetches its experts
        at_kv = attention_at(kv_len)
        members: dict[tuple[int, ...], tuple[Op, ...]] = {}  # a run's op ids -> its ops in this pass
        twins: dict[int, int] = {}  # id of a run's ops -> its first step
        after: tuple[int, ...] = ()
        gpu, phase = (self.gpu,), lay.logical.phase
        layer_plans = iter(plans)

        def add(step: Step) -> int:
            steps.append(step)
            return len(steps) - 1

        lead: Chain | None = None  # the last expert group of the MoE layer before, run as this step's head
        for run in lay.runs:
            ops = members.get(run.key) or members.setdefault(run.key, tuple(at_kv(x.op) for x in run.ops))
            names = run.names
            if lead is not None:
                key = (id(lead.ops), run.key)
                ops = members.get(key) or members.setdefault(key, lead.ops + ops)
                names = lead.names + names
            op = ops[0] if len(ops) == 1 else Chain(names[0], ops[0].dtype, ops, names)
            twin = twins.setdefault(id(ops), len(steps))
            add(Step(op, gpu, after, phase, run.allocs, -1 if twin == len(steps) else twin, names[0]))
            after, lead = (len(steps) - 1,), None
            if run.layer is not None:
                after, lead = self.write_layer(next(layer_plans), run.prefix, after[0], add, staged)
        if lead is not None:
            add(Step(lead, gpu, after, phase, (), -1, lead.name))
        return Program.compile(name, steps, coarse=True)

    def prompt_route(self, prompt_len: int) -> Callable[[int], tuple[dict[int, float], int, int]]:
        """The routing of a prompt of `prompt_len` tokens per sequence: its tokens are the trace's first
        `prompt_len` steps (wrapping), each expert with its largest gate score among them."""
        out: dict[int, tuple[dict[int, float], int, int]] = {}

        def routes(j: int) -> tuple[dict[int, float], int, int]:
            if j not in out:
                routed: dict[int, float] = {}
                for s in range(prompt_len):
                    for e, score in self.route(s % self.trace.steps, j)[0].items():
                        routed[e] = max(routed.get(e, 0.0), score)
                total = prompt_len * self.trace.tokens * self.trace.top_k
                out[j] = (routed, total, -(-total // len(routed)))
            return out[j]

        return routes

    def route(self, ts: int, j: int) -> tuple[dict[int, float], int, int]:
        """(routed experts -> gate score, token rows in all, rows per expert) at trace step `ts`, MoE layer `j`."""
        r = self._routes.get((ts, j))
        if r is None:
            routed = self.trace.routed(ts, j)
            total = self.trace.tokens * self.trace.top_k  # every token sends one row to each of its experts
            r = self._routes[(ts, j)] = (routed, total, -(-total // len(routed)))
        return r

    def copy(self, add: Callable[[Step], int], name: str, nbytes: float, src: str, dst: str,
             deps: tuple[int, ...]) -> int:  # fmt: skip
        op = Transfer(name, self.dtype, nbytes=nbytes, src=src, dst=dst)
        return add(Step(op, (src,), deps, self.lay.logical.phase))

    def prefetch(self, layer: int) -> tuple[frozenset[int], float]:
        """The experts predicted for the next MoE layer, copied once this layer's router has run (queued
        behind this layer's own copy on the link's DMA lane), and their bytes; admitted to its cache."""
        j = self.moe_index[layer] + 1
        if j >= len(self.caches.layers):
            return frozenset(), 0.0
        truth = self.routes(j)[0]
        accuracy = self.sc.moe.prefetch_accuracy
        predicted: dict[int, float] = truth if accuracy >= 1.0 else {}
        if accuracy < 1.0:
            for e, score in truth.items():
                if self.rng.random() >= accuracy:
                    wrong = [
                        x for x in range(self.trace.num_experts) if x not in truth and x not in predicted
                    ]
                    e = int(self.rng.choice(wrong)) if wrong else e
                predicted[e] = score
        cache = self.caches[j]
        fetch = {e: sc for e, sc in predicted.items() if e not in cache.held}
        nbytes = 0.0
        for e, sc in fetch.items():
            fmt = self.fmt_of(sc)
            nbytes += self.expert_B(fmt)
            cache.admit(e, predicted, "full" if fmt == self.full else "low")
            self.tally.low_precision += fmt != self.full
        self.tally.prefetched += len(fetch)
        self.tally.fetched += len(fetch)
        self.tally.fetched_B += nbytes
        return frozenset(fetch), nbytes

    def weight_dtype(self, layer: int, fmt: str) -> str | None:
        """`Gemm.weight_dtype` of experts held in `fmt` (the plan's own format: as the pass has it)."""
        if fmt != self.full:
            return fmt
        key = (id(self.lay), layer)
        if key not in self._weight_dtype:
            gate_up = self.lay.logical.ops[self.lay.ops[layer]["experts_gate_up"]].op
            self._weight_dtype[key] = gate_up.weight_dtype  # type: ignore[attr-defined]
        return self._weight_dtype[key]

    def decide_layer(self, layer: int, staged: dict[int, frozenset[int]]) -> LayerPlan:
        """What MoE layer `layer` does this step: its routed experts looked up (hits run from the cache or
        the prefetch staged for it), its misses split between the CPU and copies, the next layer's experts
        prefetched; the caches and the tally move on."""
        j = self.moe_index[layer]
        cache, m = self.caches[j], self.sc.moe
        routed, total_rows, rows = self.routes(j)
        pre = staged.pop(j, frozenset())
        hits, misses = cache.lookup(routed)
        used = pre.intersection(routed)  # prefetched into a staging buffer (an empty cache)
        if used:
            hits += [e for e in misses if e in used]
            misses = [e for e in misses if e not in used]
        tally = self.tally
        tally.accesses += len(routed)
        tally.hits += len(hits)
        tally.cached += len(hits) - len(used)
        tally.prefetch_used += len(used)
        ranked = sorted([(routed[e], e) for e in misses])
        n_cpu = self.split(layer, ranked, rows, len(hits) - len(used)) if m.misses != "gpu" and ranked else 0
        on_cpu, fetched = ranked[:n_cpu], ranked[n_cpu:]
        full = self.full
        low = m.low_precision or full
        #: (waits for a copy, weight format) -> experts run on the GPU: cached ones first, then those
        #: copied in this step (this layer's misses, the previous layer's prefetch)
        groups: dict[tuple[bool, str], int] = {}
        for e in hits:
            key = (e in pre, full if cache.held.get(e, "full") == "full" else low)
            groups[key] = groups.get(key, 0) + 1
        copy_B = 0.0
        for sc, e in fetched:
            fmt = self.fmt_of(sc)
            copy_B += self.expert_B(fmt)
            groups[(True, fmt)] = groups.get((True, fmt), 0) + 1
            cache.admit(e, routed, "full" if fmt == full else "low")
            tally.low_precision += fmt != full
        tally.fetched += len(fetched)
        tally.fetched_B += copy_B
        tally.cpu += len(on_cpu)
        prefetch_B = 0.0
        if m.prefetch != "none":
            staged[j + 1], prefetch_B = self.prefetch(layer)
        gkey = (id(self.lay), layer, *groups.items())
        ordered = self._ordered.get(gkey)
        if ordered is None:  # cached ones first, then copied ones; the plan's format first in each
            ordered = self._ordered[gkey] = tuple(
                (copied, self.weight_dtype(layer, fmt), n, ("_copied" if copied else "") + ("" if fmt == full else f"_{fmt}"))
                for (copied, fmt), n in sorted(groups.items(), key=lambda x: (x[0][0], x[0][1] != full))
            )  # fmt: skip
        cpu_out_B = self.lay.logical.activation_B * len(on_cpu) * rows / total_rows
        return LayerPlan(layer, rows, bool(used), copy_B, len(on_cpu), cpu_out_B, prefetch_B, ordered)

    def write_layer(self, plan: LayerPlan, p: str, last: int, add: Callable[[Step], int],
                    staged: dict[int, int]) -> tuple[tuple[int, ...], Chain | None]:  # fmt: skip
        """The expert part of `plan`'s layer after its permute (step `last`): the steps the combine waits
        for, and the last expert group left unwritten where the combine waits for nothing else (it then heads
        the combine's chained step, waiting for those steps: the same segment a coarse program pools)."""
        j, layer, rows = self.moe_index[plan.layer], plan.layer, plan.rows
        pre_step = staged.pop(j, -1)
        waits = {last, pre_step} if plan.waits_prefetch else {last}
        if plan.copy_B:
            waits.add(self.copy(add, f"{p}.experts_to_gpu", plan.copy_B, self.store, self.gpu, (last,)))
        ends: list[int] = []
        if plan.cpu:  # the tokens to the host, the experts there, their outputs back
            c = self.copy(
                add, f"{p}.tokens_to_cpu", self.lay.logical.activation_B, self.gpu, self.host, (last,)
            )
            op = self.experts(layer, plan.cpu, rows, None, p, "_cpu")
            c = add(Step(op, (self.host,), (c,), self.lay.logical.phase, (), -1, op.name))
            ends.append(self.copy(add, f"{p}.experts_out_to_gpu", plan.cpu_out_B, self.host, self.gpu, (c,)))
        if plan.prefetch_B:  # one DMA queue per direction: behind this layer's own copies
            name = f"L{self.layers[j + 1]}.prefetch_experts"
            staged[j + 1] = self.copy(add, name, plan.prefetch_B, self.store, self.gpu, (last,))
        prev = -1
        for k, (copied, weight_dtype, n, tag) in enumerate(plan.groups):
            op = self.experts(layer, n, rows, weight_dtype, p, tag)
            deps = tuple(sorted(({prev} if prev >= 0 else {last}) | (waits if copied else set())))
            if (
                k == len(plan.groups) - 1 and not ends
            ):  # what the combine waits for alone: it heads the next step
                return deps, op
            prev = add(Step(op, (self.gpu,), deps, self.lay.logical.phase, (), -1, op.name))
        if prev >= 0:
            ends.append(prev)
        return tuple(sorted(ends)), None
