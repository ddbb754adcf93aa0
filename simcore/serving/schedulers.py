"""Serving schedulers: which sequences run in the next iteration, and with how many tokens each.

A registry keyed by the YAML `scheduler.name`:

- `vllm`: continuous batching over at most `max_num_seqs` sequences and `max_num_batched_tokens` tokens per
  iteration. With `chunked_prefill` (vLLM's default since V1) every iteration serves the running decodes
  first, then the running prompts' next chunks, then new prompts, chunked to the token budget — Sarathi's
  stall-free batching. Without it (vLLM V0's default) an iteration is either prefills of whole new prompts
  (admitted first, within the budget) or one decode step of every running sequence: new arrivals stall
  the decodes.
- `sarathi`: stall-free batching (decodes first, then prefill chunks) with Sarathi-Serve's small token
  budget (512 unless `max_num_batched_tokens` says otherwise).
- `static`: request-level batching: when the previous batch has drained, up to `max_num_seqs` waiting
  prompts (within the token budget) are prefilled together and decoded until the last one ends; finished sequences leave the batch
  and nobody joins it.

Ordering (`policy`): `fcfs` by arrival, or `priority` (lower first, then arrival). When a sequence needs a
KV block and none is free, the lowest-ordered running sequence not yet scheduled in this iteration is
preempted (the sequence itself when there is no other): `recompute` frees its blocks and re-queues it to
prefill its prompt and the tokens it generated again; `swap` copies its blocks to host memory (the scenario
moves the bytes over PCIe through the engine) and brings them back when blocks free up, falling back to
recompute when the swap space is full. New prompts are admitted only while no sequence is swapped out, and
only if they leave the cache's watermark free. A request that cannot fit in the whole cache is rejected.

Two hooks serve the serving variants: `lookahead` KV slots a decode step reserves beyond its token, and
`accept`, the tokens a decode step yields (speculative decoding: the k drafted positions, and the
accepted ones); and `next_batch(phase)` hands out prefill work and decode work separately, so that two
loops can run them at once on partitions of a GPU's SMs (a sequence in a batch not yet completed is in
`inflight`: neither loop schedules it nor preempts it).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

from simcore.config import Param, count, param_field
from simcore.serving.kv_cache import PagedKVCache
from simcore.serving.requests import Request


@dataclass(eq=False, slots=True)
class Seq:
    """A request in the server: how much of it is computed and where its KV cache lives."""

    req: Request
    key: tuple  #: the policy's order (unique: it ends with the request id)
    target: int = 0  #: tokens to prefill before the next token: prompt + tokens generated before a recompute
    computed: int = 0  #: tokens whose KV is in the cache (the shared prefix included)
    generated: int = 0
    blocks: int = 0  #: private KV blocks
    shared: int = 0  #: prompt tokens read from the prefix cache's blocks
    swapped: int = 0  #: blocks in host memory
    first_token_s: float = -1.0
    last_token_s: float = -1.0
    preemptions: int = 0
    hit_tokens: int = 0  #: prompt tokens found in the prefix cache, over its admissions
    running: bool = False
    credit: float = 0.0  #: speculative decoding: expected tokens accrued but not yet emitted (< 1)

    @property
    def decoding(self) -> bool:
        return self.computed >= self.target


@dataclass
class Batch:
    """One iteration's work: a decode step of `decodes`, `prefills` as (sequence, new tokens), and KV blocks
    copied to the host (`swap_out`) and back (`swap_in`) while it runs."""

    decodes: list[Seq] = field(default_factory=list)
    prefills: list[tuple[Seq, int]] = field(default_factory=list)
    swap_out: int = 0
    swap_in: int = 0

    @property
    def tokens(self) -> int:
        return len(self.decodes) + sum(n for _, n in self.prefills)

    def __bool__(self) -> bool:
        return bool(self.decodes or self.prefills)


#: ordering policy -> a request's sort key (the request id last, so keys are unique and ties are stable)
POLICIES: dict[str, Callable[[Request], tuple]] = {
    "fcfs": lambda r: (r.arrival_s, r.id),
    "priority": lambda r: (r.priority, r.arrival_s, r.id),
}


class Scheduler:
    """Queues (waiting, running, swapped, each in policy order) and the preemption machinery; subclasses
    choose an iteration's work in `schedule`."""

    chunked = True

    def __init__(self, spec: SchedulerSpec, kv: PagedKVCache, swap_blocks: int, longest: int) -> None:
        """`swap_blocks`: host blocks for swapped KV (0: swap impossible); `longest`: the most tokens a
        sequence of the stream can hold (a prefill without chunks may need that much budget)."""
        self.spec, self.kv, self.longest = spec, kv, longest
        self.key = POLICIES[spec.policy]
        self.max_seqs = spec.max_num_seqs
        self.budget = spec.max_num_batched_tokens or self.default_budget()
        self.swap_free = swap_blocks if spec.preemption == "swap" else 0
        self.waiting: list[Seq] = []
        self.running: list[Seq] = []
        self.swapped: list[Seq] = []
        self.rejected: list[Seq] = []
        self.preemptions = self.swaps = 0
        self._preempted_now = False
        self.lookahead = 0  #: KV slots a decode step reserves beyond its token (speculation's k)
        self.accept: Callable[[Seq], int] | None = None  #: tokens a decode step yields (None: one)
        self.concurrent = False  #: whether batches of two loops are in flight at once (SM partitions)
        self.inflight: set[int] = set()  #: with `concurrent`: ids of the sequences in batches not completed
        self.decode_steps = self.decode_tokens = 0
        self.arriving = 0  #: sequences taken over whose KV is still on its way

    def default_budget(self) -> int:
        """max_num_batched_tokens when the YAML leaves it out."""
        return 2048 if self.chunked else max(2048, self.longest)

    @property
    def profile_tokens(self) -> int:
        """The most tokens one iteration can carry (the activation workspace is sized for it): the budget,
        or a prompt longer than it, which runs alone when prompts are not chunked."""
        return self.budget if self.chunked else max(self.budget, self.longest)

    # ------------------------------------------------------------------------------------- queues
    def add(self, req: Request) -> Seq:
        seq = Seq(req, self.key(req), target=req.prompt_tokens)
        bisect.insort(self.waiting, seq, key=_key)
        return seq

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    @property
    def load(self) -> int:
        """Requests this replica holds (a router's measure): waiting, running, swapped, arriving."""
        return len(self.waiting) + len(self.running) + len(self.swapped) + self.arriving

    # ------------------------------------------------------------------------------ iteration work
    def schedule(self) -> Batch:
        raise NotImplementedError

    def _reserve(self, seq: Seq, tokens: int, admit: bool = False) -> bool:
        """KV blocks for `tokens` more tokens of `seq`; False when the cache cannot give them."""
        need = self.kv.blocks_for(seq.computed + tokens - seq.shared) - seq.blocks
        if need <= 0:
            return True
        if not self.kv.can_allocate(need, admit):
            return False
        self.kv.allocate(need)
        seq.blocks += need
        return True

    def _run_running(self, batch: Batch, budget: int, prefills: bool, decodes: bool = True) -> int:
        """The running sequences' next tokens, decodes first (with `decodes`), then (with `prefills`) the
        next chunk of each prompt being prefilled; preempts for KV blocks as needed. Returns the budget
        left. A decode step takes 1 + lookahead of the budget and of the KV slots."""
        scheduled: set[int] = set()
        free = [s for s in self.running if id(s) not in self.inflight] if self.inflight else self.running
        order = [s for s in free if s.decoding] if decodes else []
        if prefills:
            order += [s for s in free if not s.decoding]
        for seq in order:
            if not seq.running:  # preempted earlier in this loop
                continue
            tokens = 1 + self.lookahead if seq.decoding else min(seq.target - seq.computed, budget)
            if tokens <= 0 or budget < tokens:
                continue
            while not self._reserve(seq, tokens):
                others = [s for s in self.running
                          if s is not seq and id(s) not in scheduled and id(s) not in self.inflight]  # fmt: skip
                if not others and len(self.running) == 1:  # alone and still short: it can never fit
                    self._reject(seq)
                    break
                if not others and self.inflight:  # blocks come back when the batch in flight ends
                    break
                victim = max(others, key=_key) if others else seq
                self._preempt(victim)
                if victim is seq:
                    break
            else:
                scheduled.add(id(seq))
                budget -= tokens
                if seq.decoding:
                    batch.decodes.append(seq)
                else:
                    batch.prefills.append((seq, tokens))
        return budget

    def _admit(self, batch: Batch, budget: int, whole: bool) -> int:
        """New prompts (and recomputes) in policy order while sequences, budget and blocks allow: whole
        prompts, or chunks of the budget. A prompt larger than the budget runs alone without chunks."""
        kv = self.kv
        while self.waiting and len(self.running) < self.max_seqs and budget > 0:
            seq = self.waiting[0]
            if kv.blocks_for(seq.target) > kv.seq_blocks:  # can never fit: rejected, as vLLM ignores it
                self.rejected.append(self.waiting.pop(0))
                continue
            req = seq.req
            shared = kv.shareable(req.prefix_tokens, req.prompt_tokens) if req.prefix_id is not None else 0
            entry = kv.prefixes.get(req.prefix_id) if kv.prefix_caching and shared > 0 else None
            cached = shared if entry is not None and entry.blocks * kv.block_size >= shared else 0
            left = seq.target - cached
            tokens = left if whole else min(left, budget)
            if whole and left > budget and batch:
                break
            pinned = entry.blocks if cached and entry.refs == 0 else 0  # an idle prefix stops being evictable
            if not kv.can_allocate(kv.blocks_for(tokens) + pinned, admit=True):
                break
            self.waiting.pop(0)
            seq.shared = seq.computed = kv.lookup(req.prefix_id, req.prefix_tokens, req.prompt_tokens)
            seq.hit_tokens += seq.shared
            self._reserve(seq, tokens)
            seq.running = True
            bisect.insort(self.running, seq, key=_key)
            batch.prefills.append((seq, tokens))
            budget -= tokens
        return budget

    def _swap_in(self, batch: Batch) -> None:
        """Swapped sequences back, in policy order, while blocks and sequence slots allow (they decode from
        the next iteration on, once their blocks have arrived)."""
        while self.swapped and len(self.running) < self.max_seqs:
            seq = self.swapped[0]  # back only with room for its next token (else it would be swapped again)
            if not self.kv.can_allocate(self.kv.blocks_for(seq.computed + 1 - seq.shared)):
                break
            self.swapped.pop(0)
            seq.running = True
            self.kv.allocate(seq.swapped)
            batch.swap_in += seq.swapped
            self.swap_free += seq.swapped
            seq.blocks, seq.swapped = seq.swapped, 0
            bisect.insort(self.running, seq, key=_key)

    def _reject(self, seq: Seq) -> None:
        """Abort a sequence the whole cache cannot hold."""
        self._drop(seq)
        self.rejected.append(seq)

    def _drop(self, seq: Seq) -> None:
        """Take a running sequence out, freeing its blocks and its prefix reference."""
        self.running.remove(seq)
        seq.running = False
        self.kv.release(seq.blocks)
        if seq.shared:
            self.kv.drop(seq.req.prefix_id)
        seq.blocks = seq.shared = 0

    def _preempt(self, seq: Seq) -> None:
        self.running.remove(seq)
        seq.running = False
        self.preemptions += 1
        self._preempted_now = True
        seq.preemptions += 1
        if self.spec.preemption == "swap" and seq.decoding and 0 < seq.blocks <= self.swap_free:
            self.swaps += 1
            self.swap_free -= seq.blocks
            self._batch_swap_out += seq.blocks
            self.kv.release(seq.blocks)
            seq.swapped, seq.blocks = seq.blocks, 0
            bisect.insort(self.swapped, seq, key=_key)
            return
        self.kv.release(seq.blocks)
        if seq.shared:
            self.kv.drop(seq.req.prefix_id)
        seq.blocks = seq.shared = seq.computed = 0
        seq.target = seq.req.prompt_tokens + seq.generated
        bisect.insort(self.waiting, seq, key=_key)

    def schedule_phase(self, phase: str) -> Batch:
        """Only prefill work (chunks of running prompts, then new prompts) or only decode work (and swaps
        back in), for loops that run the two phases concurrently."""
        batch = Batch()
        if phase == "decode":
            self._run_running(batch, self.budget, prefills=False)
            if not self._preempted_now:
                self._swap_in(batch)
            return batch
        budget = self._run_running(batch, self.budget, prefills=self.chunked, decodes=False)
        if not self.swapped:
            self._admit(batch, budget, whole=not self.chunked)
        return batch

    def next_batch(self, phase: str = "mixed") -> Batch:
        """The next iteration's work (empty when nothing can run now): everything the scheduler chooses
        (`mixed`), or only its `prefill` or `decode` work. Its sequences are in flight until `complete`."""
        self._preempted_now = False
        self._batch_swap_out = 0
        batch = self.schedule() if phase == "mixed" else self.schedule_phase(phase)
        batch.swap_out += self._batch_swap_out
        if self.concurrent:
            self.inflight.update(map(id, batch.decodes))
            self.inflight.update(id(s) for s, _ in batch.prefills)
        if phase != "decode" and not batch and not self.running and not batch.swap_in and not self.inflight:
            # nothing runs and nothing will free blocks: the head of the queue cannot be served
            if self.swapped:
                seq = self.swapped.pop(0)
                self.swap_free += seq.swapped
                if seq.shared:
                    self.kv.drop(seq.req.prefix_id)
                self.rejected.append(seq)
            elif self.waiting:
                self.rejected.append(self.waiting.pop(0))
        return batch

    # ------------------------------------------------------------------------- disaggregated decode
    def take_over(self, req: Request, first_token_s: float) -> Seq | None:
        """Reserve a sequence slot and KV blocks for a request whose prompt was prefilled elsewhere (its KV
        arrives by transfer, then `resume`); None while there is no room (it waits)."""
        need = self.kv.blocks_for(req.prompt_tokens + 1 + self.lookahead)
        if len(self.running) + self.arriving >= self.max_seqs or not self.kv.can_allocate(need):
            return None
        self.kv.allocate(need)
        self.arriving += 1
        return Seq(req, self.key(req), target=req.prompt_tokens, computed=req.prompt_tokens, generated=1,
                   blocks=need, first_token_s=first_token_s, last_token_s=first_token_s)  # fmt: skip

    def fits(self, req: Request) -> bool:
        """Whether the whole cache could ever hold the request's prompt and next token."""
        return self.kv.blocks_for(req.prompt_tokens + 1 + self.lookahead) <= self.kv.seq_blocks

    def resume(self, seq: Seq) -> None:
        """A taken-over sequence whose KV has arrived starts decoding."""
        self.arriving -= 1
        seq.running = True
        bisect.insort(self.running, seq, key=_key)

    # ------------------------------------------------------------------------------ bookkeeping
    def complete(self, batch: Batch, now_s: float, gaps: list[float]) -> list[Seq]:
        """Account an iteration that ended at `now_s`: new KV, tokens (inter-token gaps appended to `gaps`),
        prefixes the cache adopts; returns the sequences that finished (their blocks freed)."""
        done = []
        kv = self.kv
        if self.concurrent:
            self.inflight.difference_update(map(id, batch.decodes))
            self.inflight.difference_update(id(s) for s, _ in batch.prefills)
        self.decode_steps += len(batch.decodes)
        if self.accept is None:
            self.decode_tokens += len(batch.decodes)
            for seq in batch.decodes:
                seq.computed += 1
                if self._token(seq, now_s, gaps):
                    done.append(seq)
        else:
            for seq in batch.decodes:
                n = min(self.accept(seq), seq.req.output_tokens - seq.generated)
                self.decode_tokens += n
                seq.computed += n
                end = False
                for _ in range(n):  # accepted tokens stream out together: the gaps after the first are 0
                    end = self._token(seq, now_s, gaps)
                if end:
                    done.append(seq)
        for seq, n in batch.prefills:
            seq.computed += n
            req = seq.req
            if kv.prefix_caching and req.prefix_id is not None and not seq.shared:
                tokens = kv.shareable(req.prefix_tokens, req.prompt_tokens)
                if seq.computed >= tokens and kv.adopt(req.prefix_id, tokens):
                    seq.blocks -= tokens // kv.block_size
                    seq.shared = tokens
            if seq.decoding and self._token(seq, now_s, gaps):
                done.append(seq)
        for seq in done:
            self._drop(seq)
        return done

    @staticmethod
    def _token(seq: Seq, now_s: float, gaps: list[float]) -> bool:
        seq.generated += 1
        if seq.first_token_s < 0:
            seq.first_token_s = now_s
        else:
            gaps.append(now_s - seq.last_token_s)
        seq.last_token_s = now_s
        return seq.generated >= seq.req.output_tokens


def _key(seq: Seq) -> tuple:
    return seq.key


SCHEDULERS: dict[str, type[Scheduler]] = {}


def register(name: str) -> Callable[[type[Scheduler]], type[Scheduler]]:
    def deco(cls: type[Scheduler]) -> type[Scheduler]:
        SCHEDULERS[name] = cls
        return cls

    return deco


@register("vllm")
class ContinuousBatching(Scheduler):
    """vLLM: stall-free chunked batching, or (chunked_prefill: false) prefill-first whole prompts."""

    def __init__(self, spec: SchedulerSpec, kv: PagedKVCache, swap_blocks: int, longest: int) -> None:
        self.chunked = spec.chunked_prefill
        super().__init__(spec, kv, swap_blocks, longest)

    def schedule(self) -> Batch:
        batch = Batch()
        if not self.chunked:
            if not self.swapped:
                self._admit(batch, self.budget, whole=True)
                if batch:
                    return batch
            self._run_running(batch, self.budget, prefills=False)
            if not self._preempted_now:
                self._swap_in(batch)
            return batch
        budget = self._run_running(batch, self.budget, prefills=True)
        if not self._preempted_now:
            self._swap_in(batch)
        if not self.swapped:
            self._admit(batch, budget, whole=False)
        return batch


@register("sarathi")
class StallFree(ContinuousBatching):
    """Sarathi-Serve: decodes first, then prefill chunks, within a small token budget."""

    def default_budget(self) -> int:
        return 512

    def __init__(self, spec: SchedulerSpec, kv: PagedKVCache, swap_blocks: int, longest: int) -> None:
        Scheduler.__init__(self, spec, kv, swap_blocks, longest)


@register("static")
class StaticBatching(Scheduler):
    """Request-level batching: a new batch only once the last one has drained."""

    chunked = False

    def schedule(self) -> Batch:
        batch = Batch()
        if self.running:
            self._run_running(batch, self.budget, prefills=False)
            if not self._preempted_now:
                self._swap_in(batch)
            return batch
        if self.swapped:
            self._swap_in(batch)
            return batch
        self._admit(batch, self.budget, whole=True)
        return batch


@dataclass(frozen=True)
class SchedulerSpec:
    """The `scheduler:` block of a serve scenario."""

    name: str = param_field(Param("scheduler: vllm (continuous batching), sarathi (stall-free, chunked) or "
                                  "static (request-level batches)", type=str, default="vllm",
                                  choices=tuple(SCHEDULERS)))  # fmt: skip
    max_num_seqs: int = param_field(count("sequences one iteration may hold", default=256, maximum=1 << 16))
    max_num_batched_tokens: int | None = param_field(count(
        "tokens one iteration may process (default: 2048 for vllm, 512 for sarathi; without chunked prefill "
        "at least the longest sequence)", default=None, maximum=1 << 22))  # fmt: skip
    chunked_prefill: bool = param_field(Param("vllm: split prompts into chunks that share iterations with "
                                              "decodes", type=bool, default=True))  # fmt: skip
    policy: str = param_field(Param("order of service: fcfs or priority", type=str, default="fcfs",
                                    choices=tuple(POLICIES)))  # fmt: skip
    preemption: str = param_field(Param("when KV blocks run out: recompute (drop and prefill again) or swap "
                                        "(copy to host memory and back)", type=str, default="recompute",
                                        choices=("recompute", "swap")))  # fmt: skip

    def build(self, kv: PagedKVCache, swap_blocks: int, longest: int) -> Scheduler:
        return SCHEDULERS[self.name](self, kv, swap_blocks, longest)
