"""The paged KV cache: fixed-size blocks of tokens, as vLLM's PagedAttention allocates them.

A sequence holds ceil(tokens / block_size) private blocks (its last one partly empty: the internal
fragmentation paging leaves), plus references to shared prefix blocks. With prefix caching, the full
blocks of a prompt's shared prefix are kept once per prefix id after the first sequence computed them;
later sequences with that prefix skip their prefill, and unreferenced prefixes are evicted, least recently
used first, when blocks run short. The cache only counts blocks: the bytes are one allocation in the
engine made when serving starts (`KVCacheSpec.blocks_that_fit`), as vLLM reserves its pool up front.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from simcore.config import count, fraction, nonneg, param_field


@dataclass(frozen=True)
class KVCacheSpec:
    """The `kv_cache:` block of a serve scenario."""

    block_size: int = param_field(count("tokens per KV block", default=16, maximum=1 << 12))
    gpu_memory_utilization: float = param_field(fraction(
        "share of device memory serving may use: weights, the activation workspace, then KV blocks",
        default=0.9))  # fmt: skip
    num_blocks: int | None = param_field(count("KV blocks (default: as many as fit)", default=None))
    prefix_caching: bool = param_field(nonneg("keep computed prefix blocks for later requests of the same "
                                              "prefix", type=bool, default=False))  # fmt: skip
    watermark: float = param_field(nonneg("share of blocks a new request must leave free (vLLM's "
                                          "watermark: room for the running ones to grow)", default=0.01,
                                          maximum=0.5))  # fmt: skip
    swap_space: float = param_field(nonneg("host memory per device for KV blocks swapped out "
                                           "(preemption: swap)", unit="bytes", default=4 * 2.0**30))  # fmt: skip

    def blocks_that_fit(self, free_B: float, block_B: float) -> int:
        """Blocks of `block_B` bytes in `free_B` bytes (the free memory after weights and workspace)."""
        if self.num_blocks is not None:
            return self.num_blocks
        return max(0, int(free_B // block_B))


class _Prefix:
    __slots__ = ("blocks", "refs")

    def __init__(self, blocks: int) -> None:
        self.blocks, self.refs = blocks, 0


class PagedKVCache:
    """Block accounting for one replica: free, held by sequences, held by cached prefixes."""

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = False,
                 watermark: float = 0.0) -> None:  # fmt: skip
        self.num_blocks, self.block_size, self.prefix_caching = num_blocks, block_size, prefix_caching
        self.watermark_blocks = int(watermark * num_blocks)
        self.used = 0  # blocks held by sequences and prefixes
        self.peak = 0
        self.prefixes: OrderedDict[int, _Prefix] = OrderedDict()  # LRU first
        self.idle_prefix_blocks = 0  # blocks of prefixes no sequence references: evictable
        self.hit_tokens = 0
        self.queried_tokens = 0
        #: pools the blocks are split over, a sequence's all in one (expert-parallel ranks each hold the KV of
        #: their own sequences): the most one sequence may hold is one pool's share
        self.ranks = 1

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    @property
    def seq_blocks(self) -> int:
        """The most blocks one sequence can ever hold: one rank's share of the pool."""
        return self.num_blocks // self.ranks

    @property
    def free(self) -> int:
        """Blocks available now, counting the evictable prefixes."""
        return self.num_blocks - self.used + self.idle_prefix_blocks

    def can_allocate(self, blocks: int, admit: bool = False) -> bool:
        """Whether `blocks` more fit; a new request (`admit`) must also leave the watermark free."""
        return blocks <= self.free - (self.watermark_blocks if admit else 0)

    def allocate(self, blocks: int) -> None:
        """Take `blocks` (the caller checked `can_allocate`), evicting idle prefixes if needed."""
        while self.num_blocks - self.used < blocks and self.idle_prefix_blocks:
            self._evict()
        if self.num_blocks - self.used < blocks:
            raise AssertionError(f"KV cache: {blocks} blocks asked, {self.num_blocks - self.used} free")
        self.used += blocks
        self.peak = max(self.peak, self.used)

    def release(self, blocks: int) -> None:
        self.used -= blocks

    # ---------------------------------------------------------------------------------- prefixes
    def shareable(self, prefix_tokens: int, prompt_tokens: int) -> int:
        """Tokens of a prefix that can live in shared blocks: its full blocks, leaving at least one prompt
        token to compute (the prefill must produce the first token's logits)."""
        return min(prefix_tokens, prompt_tokens - 1) // self.block_size * self.block_size

    def lookup(self, prefix_id: int | None, prefix_tokens: int, prompt_tokens: int) -> int:
        """Prompt tokens an admitted sequence finds cached (it then holds a reference); counts the hit rate."""
        self.queried_tokens += prompt_tokens
        if not self.prefix_caching or prefix_id is None:
            return 0
        entry = self.prefixes.get(prefix_id)
        shared = self.shareable(prefix_tokens, prompt_tokens)
        if entry is None or shared <= 0 or entry.blocks * self.block_size < shared:
            return 0
        self.acquire(prefix_id)
        self.hit_tokens += shared
        return shared

    def acquire(self, prefix_id: int) -> None:
        entry = self.prefixes[prefix_id]
        if entry.refs == 0:
            self.idle_prefix_blocks -= entry.blocks
        entry.refs += 1
        self.prefixes.move_to_end(prefix_id)

    def drop(self, prefix_id: int) -> None:
        """A sequence no longer reads the prefix (finished or preempted)."""
        entry = self.prefixes[prefix_id]
        entry.refs -= 1
        if entry.refs == 0:
            self.idle_prefix_blocks += entry.blocks

    def adopt(self, prefix_id: int, tokens: int) -> bool:
        """A sequence has computed `tokens` (full blocks) of its prefix: the cache takes those blocks over
        from it (the sequence keeps a reference). False when caching is off or the prefix is cached."""
        if not self.prefix_caching or tokens <= 0 or prefix_id in self.prefixes:
            return False
        entry = self.prefixes[prefix_id] = _Prefix(tokens // self.block_size)
        entry.refs = 1  # the sequence that computed it
        return True

    def _evict(self) -> None:
        pid = next(p for p, e in self.prefixes.items() if e.refs == 0)
        entry = self.prefixes.pop(pid)
        self.idle_prefix_blocks -= entry.blocks
        self.used -= entry.blocks

    @property
    def hit_rate(self) -> float:
        """Prompt tokens found in the prefix cache over prompt tokens admitted."""
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0
