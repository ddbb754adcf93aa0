"""Request streams: who asks for how many tokens, and when.

Open-loop sources (Poisson, Gamma, a replayed trace) fix every arrival before time zero; a closed loop
(`concurrency` clients, each sending its next request a think time after its last one ended) fixes the
lengths and lets the serving scenario set the arrivals as responses end. Everything random comes from one
seeded numpy Generator, so a seed is a stream. Lengths are a fixed count or a distribution (`Lengths`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

from simcore.config import Param, nonneg, param_field, positive, read_text
from simcore.config import count as count_param
from simcore.errors import ConfigError

#: the most tokens one prompt or response may ask for (no shipped model has a longer context)
MAX_TOKENS = 1 << 20
#: the most requests one stream may hold
MAX_REQUESTS = 1 << 20


@dataclass(frozen=True, slots=True)
class Request:
    """One request: `prompt_tokens` in, `output_tokens` out (the first from the prefill). Requests with the
    same `prefix_id` share their first `prefix_tokens` prompt tokens (a system prompt, a conversation's
    history), which a prefix cache computes once. Under `policy: priority` a lower `priority` goes first.
    `acceptance`: the probability that the target accepts a drafted token of this request under
    speculative decoding (None: the scenario's)."""

    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_id: int | None = None
    prefix_tokens: int = 0
    priority: int = 0
    acceptance: float | None = None


# ------------------------------------------------------------------------------------------ lengths


@dataclass(frozen=True)
class Lengths:
    """A token count per request: `fixed` (mean), `uniform` on [min, max], or `lognormal` with `mean` and
    coefficient of variation `cv` (the shape published prompt and response lengths take), rounded and
    clipped to [min, max]."""

    dist: str = "fixed"
    mean: float = 1.0
    cv: float = 0.0
    min: int = 1
    max: int = MAX_TOKENS

    @property
    def upper(self) -> int:
        """The most tokens a draw can be."""
        return int(self.mean) if self.dist == "fixed" else self.max

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.clip(np.rint(LENGTH_DISTS[self.dist](self, rng, n)), self.min, self.max).astype(np.int64)


def _lognormal(d: Lengths, rng: np.random.Generator, n: int) -> np.ndarray:
    sigma2 = math.log1p(d.cv * d.cv)
    return rng.lognormal(math.log(d.mean) - sigma2 / 2, math.sqrt(sigma2), n)


#: distribution name -> draw of n raw values (rounded and clipped by Lengths.sample)
LENGTH_DISTS: dict[str, Callable[[Lengths, np.random.Generator, int], np.ndarray]] = {
    "fixed": lambda d, rng, n: np.full(n, d.mean),
    "uniform": lambda d, rng, n: rng.integers(d.min, d.max + 1, n),
    "lognormal": _lognormal,
}
#: the keys each distribution takes in YAML
_LENGTH_KEYS = {"fixed": ("mean",), "uniform": ("min", "max"), "lognormal": ("mean", "cv", "min", "max")}
_LENGTH_PARAMS = {
    "mean": positive("mean tokens", maximum=MAX_TOKENS),
    "cv": nonneg("coefficient of variation", maximum=100.0),
    "min": count_param("fewest tokens", maximum=MAX_TOKENS),
    "max": count_param("most tokens", maximum=MAX_TOKENS),
}


def lengths(value: object) -> Lengths:
    """A YAML length: a token count (`256`) or a mapping (`{dist: lognormal, mean: 1000, cv: 1.2, max:
    4096}`); anything else is a ValueError saying what is expected."""
    if isinstance(value, Mapping):
        dist = value.get("dist", "fixed")
        if dist not in LENGTH_DISTS:
            raise ValueError(f"dist: expected one of {', '.join(LENGTH_DISTS)}, got {dist!r}")
        keys = _LENGTH_KEYS[dist]
        kw: dict[str, float] = {}
        for k, v in value.items():
            if k == "dist":
                continue
            if k not in keys:
                raise ValueError(f"unknown key {k!r} for dist {dist} (known: dist, {', '.join(keys)})")
            try:
                kw[k] = _LENGTH_PARAMS[k].convert(v)
            except ValueError as e:
                raise ValueError(f"{k}: {e}") from None
        if "mean" in keys and "mean" not in kw:
            raise ValueError(f"dist {dist} needs a mean")
        if dist == "uniform" and ("min" not in kw or "max" not in kw):
            raise ValueError("dist uniform needs min and max")
        out = Lengths(str(dist), **kw)
        if out.min > out.max:
            raise ValueError(f"min {out.min} is above max {out.max}")
        if dist == "fixed":
            return fixed(out.mean)
        return out
    return fixed(value)


def fixed(value: object) -> Lengths:
    n = count_param("tokens", maximum=MAX_TOKENS).convert(value)
    return Lengths("fixed", float(n), 0.0, n, n)


# -------------------------------------------------------------------------------------- the source


@dataclass(frozen=True)
class RequestSpec:
    """The `requests:` block of a serve scenario."""

    count: int | None = param_field(count_param("requests to serve (default: 100, or every row of a trace)",
                                          default=None, maximum=MAX_REQUESTS))  # fmt: skip
    arrival: str = param_field(Param("how requests arrive: poisson, gamma (bursty), closed (a fixed number "
                                     "of clients) or trace (replayed from `trace`)", type=str, default="poisson",
                                     choices=("poisson", "gamma", "closed", "trace")))  # fmt: skip
    rate_per_s: float = param_field(positive("mean requests per second (poisson, gamma)", default=1.0))
    cv: float = param_field(positive("gamma: coefficient of variation of the gaps between arrivals (1 is "
                                     "Poisson, more is burstier)", default=2.0, maximum=100.0))  # fmt: skip
    concurrency: int = param_field(count_param("closed: clients, each sending its next request when its last "
                                         "one has ended", default=8, maximum=1 << 16))  # fmt: skip
    think_time: float = param_field(nonneg("closed: a client's pause between a response and its next "
                                           "request", unit="time", default=0.0))  # fmt: skip
    prompt_len: Lengths = param_field(Param("prompt tokens: a count, or {dist: fixed|uniform|lognormal, mean, "
                                            "cv, min, max}", type=lengths, default=fixed(512)))  # fmt: skip
    output_len: Lengths = param_field(Param("output tokens (the first comes from the prefill): a count or a "
                                            "distribution, as prompt_len", type=lengths, default=fixed(128)))  # fmt: skip
    prefix_len: int = param_field(nonneg("tokens at the start of every prompt shared within its prefix "
                                         "group (a system prompt); 0: none", type=int, default=0,
                                         maximum=MAX_TOKENS))  # fmt: skip
    prefixes: int = param_field(count_param("prefix groups requests are drawn from, uniformly", default=1))
    priorities: int = param_field(count_param("priority levels requests are drawn from, uniformly (0 goes first "
                                        "under policy: priority)", default=1, maximum=1 << 16))  # fmt: skip
    trace: str | None = param_field(Param("CSV to replay (arrival_s, prompt_tokens, output_tokens, optional "
                                          "prefix_id, prefix_tokens, priority, acceptance): a shipped trace's name "
                                          "(traces/README.md) or a path", type=str, default=None))  # fmt: skip
    seed: int = param_field(nonneg("seed of the random draws: the same seed gives the same stream",
                                   type=int, default=0, maximum=2**32 - 1))  # fmt: skip
    split: int = param_field(count_param("serve every split-th request (a round-robin router over this many "
                                   "identical replicas; `simcore plan` sets it to dp)", default=1,
                                   maximum=1 << 16))  # fmt: skip

    @property
    def replayed(self) -> bool:
        """Whether the requests come from a trace (`arrival: trace`, or any arrival with `trace` set)."""
        if self.arrival == "trace" and self.trace is None:
            raise ConfigError(
                "arrival: trace needs a trace file (requests.trace)", key="scenario.requests.trace"
            )
        return self.trace is not None

    @property
    def closed(self) -> bool:
        return self.arrival == "closed"

    @property
    def clients(self) -> int:
        """Closed-loop clients of this replica (every split-th of them)."""
        return max(1, -(-self.concurrency // self.split))

    def make(self) -> list[Request]:
        """This replica's requests, sorted by arrival (closed loop: every arrival 0, set as clients send)."""
        if self.replayed:
            reqs = load_trace(self.trace or "", self.prefix_len)
            reqs = reqs[: self.count] if self.count is not None else reqs
        else:
            reqs = self._synthetic(100 if self.count is None else self.count)
        return reqs[:: self.split]

    def _synthetic(self, n: int) -> list[Request]:
        rng = np.random.default_rng(self.seed)
        if self.closed:
            arrivals = np.zeros(n)
        else:
            arrivals = np.cumsum(ARRIVALS[self.arrival](self, rng, n))
        prompts, outputs = self.prompt_len.sample(rng, n), self.output_len.sample(rng, n)
        prefix = rng.integers(0, self.prefixes, n) if self.prefix_len else np.zeros(n, dtype=np.int64)
        prio = rng.integers(0, self.priorities, n) if self.priorities > 1 else np.zeros(n, dtype=np.int64)
        out = []
        for i in range(n):
            p = int(prompts[i])
            shared = min(self.prefix_len, p)
            out.append(Request(i, float(arrivals[i]), p, int(outputs[i]), int(prefix[i]) if shared else None,
                               shared, int(prio[i])))  # fmt: skip
        return out

    def max_positions(self) -> tuple[int, str]:
        """The longest sequence (prompt + output) this stream can ask for, and how it adds up."""
        if self.replayed:
            reqs = load_trace(self.trace or "", self.prefix_len)
            if not reqs:
                return 0, ""
            r = max(reqs, key=lambda r: r.prompt_tokens + r.output_tokens)
            return r.prompt_tokens + r.output_tokens, f"trace request {r.id}: prompt {r.prompt_tokens} + " \
                                                      f"{r.output_tokens} output tokens"  # fmt: skip
        p, o = self.prompt_len.upper, self.output_len.upper
        return p + o, f"prompt up to {p} + up to {o} output tokens"


def _gamma(spec: RequestSpec, rng: np.random.Generator, n: int) -> np.ndarray:
    shape = 1.0 / (spec.cv * spec.cv)
    return rng.gamma(shape, 1.0 / (spec.rate_per_s * shape), n)


#: arrival process -> n gaps between consecutive arrivals (the first from time zero)
ARRIVALS: dict[str, Callable[[RequestSpec, np.random.Generator, int], np.ndarray]] = {
    "poisson": lambda spec, rng, n: rng.exponential(1.0 / spec.rate_per_s, n),
    "gamma": _gamma,
}


# ------------------------------------------------------------------------------------------- traces

TRACE_COLUMNS = (
    "arrival_s",
    "prompt_tokens",
    "output_tokens",
    "prefix_id",
    "prefix_tokens",
    "priority",
    "acceptance",
)
_REQUIRED = TRACE_COLUMNS[:3]
_TRACES: dict[tuple[str, int, int, int], list[Request]] = {}


def trace_path(ref: str) -> Path:
    """A trace named as shipped (`azure-conv-2023`, with or without .csv) or a path to a CSV file."""
    p = Path(ref).expanduser()
    if p.is_file():
        return p
    stem = ref.removesuffix(".csv").replace("-", "_")
    shipped = Path(str(resources.files("traces"))) / f"{stem}.csv"
    if ref and "/" not in ref and shipped.is_file():
        return shipped
    known = ", ".join(shipped_traces()) or "none"
    raise ConfigError(f"no trace {ref!r}: not a file, nor a shipped trace ({known})")


def shipped_traces() -> list[str]:
    root = Path(str(resources.files("traces")))
    return sorted(p.stem.replace("_", "-") for p in root.glob("*.csv"))


def load_trace(ref: str, prefix_len: int = 0) -> list[Request]:
    """The requests of a CSV trace, sorted by arrival (ties in file order). A bad cell is a ConfigError
    naming file, line and column; `prefix_len` is the shared length of rows with a prefix_id and no
    prefix_tokens."""
    path = trace_path(ref)
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, prefix_len)
    if key not in _TRACES:
        if len(_TRACES) > 16:
            _TRACES.clear()
        _TRACES[key] = _read_trace(path, prefix_len)
    return _TRACES[key]


def _read_trace(path: Path, prefix_len: int) -> list[Request]:
    file = str(path)
    text = read_text(path, file)
    rows = csv.reader(text.splitlines())
    header = next(rows, None)
    if header is None:
        raise ConfigError("empty trace: expected a header row " + ",".join(_REQUIRED), file, 1)
    header = [h.strip() for h in header]
    for h in header:
        if h not in TRACE_COLUMNS:
            raise ConfigError(f"unknown column {h!r} (known: {', '.join(TRACE_COLUMNS)})", file, 1)
    missing = [c for c in _REQUIRED if c not in header]
    if missing:
        raise ConfigError(f"missing column {missing[0]!r} (a trace needs {', '.join(_REQUIRED)})", file, 1)
    col = {h: i for i, h in enumerate(header)}
    out: list[tuple[float, int, Request]] = []
    for line, row in enumerate(rows, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise ConfigError(f"{len(row)} cells, the header has {len(header)}", file, line)

        def cell(name: str, parse: Callable[[str], float], lo: float, hi: float, default: float | None = None,
                 row: list[str] = row, line: int = line) -> float | None:  # fmt: skip
            if name not in col or not row[col[name]].strip():
                if default is None and name in _REQUIRED:
                    raise ConfigError("empty cell", file, line, f"column {name}")
                return default
            raw = row[col[name]].strip()
            try:
                v = parse(raw)
            except ValueError:
                v = math.nan
            if not (math.isfinite(v) and lo <= v <= hi):
                what = ("a time in seconds >= 0" if name == "arrival_s" else f"a fraction in [{lo:g}, {hi:g}]"
                        if parse is float else f"an integer in [{lo:g}, {hi:g}]")  # fmt: skip
                raise ConfigError(f"expected {what}, got {raw[:40]!r}", file, line, f"column {name}")
            return v

        arrival = cell("arrival_s", float, 0.0, 1e9)
        prompt = int(cell("prompt_tokens", int, 1, MAX_TOKENS))
        output = int(cell("output_tokens", int, 1, MAX_TOKENS))
        pid = cell("prefix_id", int, 0, 2**62, -1)
        ptok = cell("prefix_tokens", int, 0, MAX_TOKENS, -1)
        prio = int(cell("priority", int, 0, 1 << 16, 0))
        accept = cell("acceptance", float, 0.0, 1.0, -1.0)
        if pid is None or pid < 0:
            pid, shared = None, 0
        else:
            shared = min(prompt, prefix_len if ptok is None or ptok < 0 else int(ptok))
            pid = int(pid) if shared else None
        req = Request(0, float(arrival), prompt, output, pid, shared, prio,
                      None if accept is None or accept < 0 else float(accept))  # fmt: skip
        out.append((float(arrival), len(out), req))
        if len(out) > MAX_REQUESTS:
            raise ConfigError(f"more than {MAX_REQUESTS:,} requests", file, line)
    out.sort(key=lambda t: (t[0], t[1]))
    return [replace(r, id=i) for i, (_, _, r) in enumerate(out)]
