"""Speculative decoding: a small draft model proposes k tokens, the target verifies them in one pass.

Each decode step of a sequence runs k draft decode passes (the draft's own KV cache, on its own device or
on the target's) and one target pass over k + 1 positions of the sequence (a ragged group with q_len =
k + 1). With each drafted token accepted with probability α, independently, the step yields the accepted
prefix plus the target's own next token: on average

    E[tokens per step] = (1 - α^(k+1)) / (1 - α)        (k + 1 when α = 1)

(Leviathan, Kalman and Matias, "Fast Inference from Transformers via Speculative Decoding", ICML 2023,
eq. 1). The scenario emits that expectation deterministically: each sequence accrues E per step and emits
the whole tokens accrued, so a run is reproducible and its mean rate is E exactly. α is the block's
`acceptance`, or a trace row's `acceptance` column for that request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from simcore.config import Param, count, param_field
from simcore.serving.schedulers import Seq

#: the longest draft the block accepts (k)
MAX_DRAFT_TOKENS = 32


def expected_tokens(alpha: float, k: int) -> float:
    """Mean tokens a speculative step yields: the accepted drafted tokens plus the target's own."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


@dataclass(frozen=True)
class SpeculativeSpec:
    """The `speculative:` block of a serve scenario (off unless `draft` names a model)."""

    draft: str | None = param_field(Param("draft model (a shipped model name or an HF config.json): proposes "
                                          "k tokens per step; none: plain decoding", type=str, default=None))  # fmt: skip
    k: int = param_field(count("tokens the draft proposes per step", default=4, maximum=MAX_DRAFT_TOKENS))
    acceptance: float = param_field(Param("probability α in [0, 1] that the target accepts a drafted token "
                                          "(a trace's acceptance column overrides it per request)", type=float,
                                          default=0.7, minimum=0, exclusive_min=False, maximum=1))  # fmt: skip
    device: str | None = param_field(Param("device the draft runs on (default: the replica's first GPU, "
                                           "sharing it with the target)", type=str, default=None))  # fmt: skip

    @property
    def on(self) -> bool:
        return self.draft is not None


class Acceptance:
    """Tokens each decode step yields: E(α, k) accrued per sequence, emitted as whole tokens."""

    def __init__(self, spec: SpeculativeSpec) -> None:
        self.k, self.alpha = spec.k, spec.acceptance
        self._expected: dict[float, float] = {}

    def expected(self, alpha: float) -> float:
        e = self._expected.get(alpha)
        if e is None:
            e = self._expected[alpha] = expected_tokens(alpha, self.k)
        return e

    def __call__(self, seq: Seq) -> int:
        a = seq.req.acceptance
        seq.credit += self.expected(self.alpha if a is None else a)
        n = max(1, math.floor(seq.credit + 1e-9))
        seq.credit -= n
        return n
