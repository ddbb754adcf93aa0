"""Serving: request streams, schedulers and the paged KV cache that the `serve` scenario drives, and the
programs of an iteration with attention on other devices than the GEMMs (`afd`).

A stage-level package: it builds on the kernel (units, config) and the map stage (programs) and knows nothing
of the engine; the serve scenario (simcore/scenarios/serve.py) imports it and costs each iteration the
scheduler chooses.
"""

from simcore.serving.kv_cache import KVCacheSpec, PagedKVCache
from simcore.serving.metrics import RequestRecord, SLOSpec, summarize
from simcore.serving.requests import Lengths, Request, RequestSpec, load_trace
from simcore.serving.schedulers import POLICIES, SCHEDULERS, Batch, Scheduler, SchedulerSpec, Seq
from simcore.serving.speculative import SpeculativeSpec, expected_tokens

__all__ = ["POLICIES", "SCHEDULERS", "Batch", "KVCacheSpec", "Lengths", "PagedKVCache", "Request", "RequestRecord",
           "RequestSpec", "SLOSpec", "Scheduler", "SchedulerSpec", "Seq", "SpeculativeSpec", "expected_tokens",
           "load_trace", "summarize"]  # fmt: skip
