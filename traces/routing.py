"""Expert-routing traces: which experts each token of a decode step chose in each MoE layer, and with what
gate scores; a loader for the JSONL format (traces/README.md, "Routing traces"), seeded synthetic
generators and the statistics a cache study needs (popularity, reuse distance, repetition).

A trace is what drives an expert cache: the order experts are asked for decides what a cache keeps, so it
is data, not a distribution; the generators only stand in for a recorded one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from simcore.errors import ConfigError

FORMAT = "moe-routing"
VERSION = 1


@dataclass(frozen=True)
class RoutingTrace:
    """Routing of `steps` decode steps of `tokens` tokens (the batch) through `layers` MoE layers:
    `experts[s, l, t, j]` is the j-th expert token t chose in MoE layer l at step s (best first) and
    `scores[s, l, t, j]` its gate weight (the top-k renormalized softmax, summing to 1 per token)."""

    experts: np.ndarray  # int, [steps, layers, tokens, top_k]
    scores: np.ndarray  # float, same shape
    num_experts: int
    name: str = "trace"

    @property
    def steps(self) -> int:
        return int(self.experts.shape[0])

    @property
    def layers(self) -> int:
        return int(self.experts.shape[1])

    @property
    def tokens(self) -> int:
        return int(self.experts.shape[2])

    @property
    def top_k(self) -> int:
        return int(self.experts.shape[3])

    def routed(self, step: int, layer: int) -> dict[int, float]:
        """The distinct experts layer `layer` runs at `step`, each with its largest gate score over the
        tokens that chose it (its importance: HOBBIT loads a low-score miss in low precision)."""
        out: dict[int, float] = {}
        for e, s in zip(self.experts[step, layer].ravel().tolist(), self.scores[step, layer].ravel().tolist(),
                        strict=True):  # fmt: skip
            out[e] = max(out.get(e, 0.0), s)
        return out

    def check(self, layers: int, experts: int, top_k: int, where: str = "") -> None:
        """Refuse a trace that does not fit a model (layer, expert or top-k count), one line naming it."""
        at = f"{where}: " if where else ""
        if self.num_experts != experts:
            raise ConfigError(f"{at}routing trace {self.name!r} has {self.num_experts} experts per layer; the "
                              f"model has {experts}", key="scenario.moe.trace")  # fmt: skip
        if self.layers != layers:
            raise ConfigError(f"{at}routing trace {self.name!r} covers {self.layers} MoE layers; the model has "
                              f"{layers}", key="scenario.moe.trace")  # fmt: skip
        if self.top_k != top_k:
            raise ConfigError(f"{at}routing trace {self.name!r} routes each token to {self.top_k} experts; the "
                              f"model's top-k is {top_k}", key="scenario.moe.trace")  # fmt: skip


# ------------------------------------------------------------------------------------------ file format


def _fail(path: str, line: int, msg: str) -> ConfigError:
    return ConfigError(f"{path}:{line}: {msg}", key="scenario.moe.trace")


def load_routing(ref: str | Path) -> RoutingTrace:
    """A routing trace from a JSONL file (a path, or a shipped trace's stem: `mixtral-8x7b-correlated`).
    Line 1 is the header, then one line per (step, layer); any error names the file and the line."""
    path = resolve(ref)
    where = str(path)
    try:
        text = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(where, 1, f"cannot read: {e}") from None
    if not text:
        raise _fail(where, 1, "empty routing trace (line 1 must be the header)")
    try:
        head = json.loads(text[0])
    except json.JSONDecodeError as e:
        raise _fail(where, 1, f"not JSON: {e.msg}") from None
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise _fail(where, 1, f'the header must be an object with "format": "{FORMAT}"')
    dims = {}
    for key in ("layers", "experts", "top_k", "tokens", "steps"):
        v = head.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise _fail(where, 1, f"header key {key!r} must be an integer >= 1, got {v!r}")
        dims[key] = v
    L, E, k, T, S = dims["layers"], dims["experts"], dims["top_k"], dims["tokens"], dims["steps"]
    if k > E:
        raise _fail(where, 1, f"top_k {k} is larger than the {E} experts")
    experts = np.full((S, L, T, k), -1, dtype=np.int64)
    scores = np.zeros((S, L, T, k))
    seen = np.zeros((S, L), dtype=bool)
    for n, raw in enumerate(text[1:], start=2):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as e:
            raise _fail(where, n, f"not JSON: {e.msg}") from None
        if not isinstance(rec, dict):
            raise _fail(where, n, "expected an object with step, layer, experts, scores")
        s, layer = rec.get("step"), rec.get("layer")
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < S:
            raise _fail(where, n, f"step {s!r} is not in 0..{S - 1}")
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < L:
            raise _fail(where, n, f"layer {layer!r} is not in 0..{L - 1} (the header says {L} MoE layers)")
        if seen[s, layer]:
            raise _fail(where, n, f"step {s} layer {layer} appears twice")
        ids, sc = rec.get("experts"), rec.get("scores")
        try:
            a = np.asarray(ids, dtype=np.int64)
            b = np.asarray(sc, dtype=float)
        except (TypeError, ValueError, OverflowError):
            raise _fail(
                where, n, "experts must be integer lists and scores number lists, per token"
            ) from None
        if a.shape != (T, k) or b.shape != (T, k):
            raise _fail(where, n, f"experts and scores must be {T} token lists of top_k = {k} entries each, "
                                  f"got shapes {a.shape} and {b.shape}")  # fmt: skip
        if a.min() < 0 or a.max() >= E:
            raise _fail(
                where, n, f"expert id {int(a.max() if a.max() >= E else a.min())} is not in 0..{E - 1}"
            )
        if any(len(set(row)) != k for row in a.tolist()):
            raise _fail(where, n, "a token lists the same expert twice")
        if not np.all(np.isfinite(b)) or b.min() < 0 or b.max() > 1:
            raise _fail(where, n, "gate scores must be finite numbers in [0, 1]")
        experts[s, layer], scores[s, layer], seen[s, layer] = a, b, True
    if not seen.all():
        s, layer = (int(x) for x in np.argwhere(~seen)[0])
        raise _fail(where, len(text), f"step {s} layer {layer} is missing (every step lists every layer)")
    return RoutingTrace(experts, scores, E, str(head.get("name", path.stem)))


def write_routing(trace: RoutingTrace, path: str | Path, **meta: object) -> None:
    """Write `trace` in the JSONL format (scores rounded to 4 decimals)."""
    head = {"format": FORMAT, "version": VERSION, "name": trace.name, "layers": trace.layers,
            "experts": trace.num_experts, "top_k": trace.top_k, "tokens": trace.tokens, "steps": trace.steps,
            **meta}  # fmt: skip
    lines = [json.dumps(head)]
    for s in range(trace.steps):
        for layer in range(trace.layers):
            lines.append(json.dumps({"step": s, "layer": layer,
                                     "experts": trace.experts[s, layer].tolist(),
                                     "scores": np.round(trace.scores[s, layer], 4).tolist()}))  # fmt: skip
    Path(path).write_text("\n".join(lines) + "\n")


def resolve(ref: str | Path) -> Path:
    """A shipped trace's stem or a path to a file."""
    p = Path(ref)
    try:
        is_file = p.is_file()
    except OSError as e:  # a name the file system refuses (too long, ...)
        raise ConfigError(f"cannot read routing trace: {e.strerror}", key="scenario.moe.trace") from None
    if is_file:
        return p
    shipped = Path(str(resources.files("traces"))) / f"{ref}.jsonl"
    if p.suffix == ".jsonl" or p.exists() or "/" in str(ref) or not shipped.is_file():
        raise ConfigError(f"unknown routing trace {str(ref)[:200]!r} (shipped: {', '.join(shipped_routing())}; "
                          "or give a .jsonl file)", key="scenario.moe.trace")  # fmt: skip
    return shipped


def shipped_routing() -> list[str]:
    return sorted(p.stem for p in Path(str(resources.files("traces"))).glob("*.jsonl"))


# ---------------------------------------------------------------------------------------- generators

#: published routing statistics the generators are tuned against (docs/moe.md cites them)
MIXTRAL_REPEAT_FIRST_CHOICE = 0.28  # Mixtral paper §5 Table 5: layer 15, consecutive tokens, 1st choice


def popularity(experts: int, zipf_s: float, rng: np.random.Generator) -> np.ndarray:
    """Each expert's routing weight: rank r (a random permutation) gets r^-s, normalized (s = 0: uniform)."""
    ranks = rng.permutation(experts) + 1.0
    w = ranks**-zipf_s
    return w / w.sum()


def synthetic(layers: int, experts: int, top_k: int, steps: int, tokens: int = 1, *, zipf_s: float = 0.0,
              locality: float = 0.0, affinity: float = 0.0, seed: int = 0,
              name: str = "synthetic") -> RoutingTrace:  # fmt: skip
    """A seeded synthetic trace. Each layer has its own popularity (Zipf exponent `zipf_s`; 0: uniform).
    A token picks top-k experts without replacement in proportion to popularity (Gumbel top-k over log
    popularity, the noisy logits giving the gate scores by a softmax over the k chosen). With `locality`
    p, each of a token's experts at step t + 1 is, with probability p, the one it held in that slot at
    step t (temporal locality of consecutive tokens), else a fresh draw. With `affinity` q, each of a
    token's experts in layer l + 1 is, with probability q, the fixed successor (a seeded permutation per
    layer) of its expert in that slot of layer l (inter-layer affinity: what a next-layer predictor can
    learn), unless the slot kept its expert from the previous step."""
    if top_k > experts:
        raise ConfigError(f"top-k {top_k} is larger than the {experts} experts", key="scenario.moe.top_k")
    rng = np.random.default_rng(seed)
    pop = np.stack([np.log(popularity(experts, zipf_s, rng)) for _ in range(layers)])  # [L, E]
    ids = np.zeros((steps, layers, tokens, top_k), dtype=np.int64)
    sc = np.zeros((steps, layers, tokens, top_k))
    rows = np.arange(layers)[:, None, None], np.arange(tokens)[None, :, None]
    successor = np.stack([rng.permutation(experts) for _ in range(layers)]) if affinity > 0 else None
    for s in range(steps):
        logits = pop[:, None, :] + rng.gumbel(size=(layers, tokens, experts))
        keep = (
            rng.random((layers, tokens, top_k)) < locality if s else np.zeros((layers, tokens, top_k), bool)
        )
        ranked = logits.copy()
        if s:  # a kept expert ranks first; the rest of the slots go to the best fresh draws
            prev = ids[s - 1]
            ranked[rows[0], rows[1], prev] = np.where(keep, np.inf, ranked[rows[0], rows[1], prev])
        if successor is None:
            chosen = np.argsort(-ranked, axis=-1, kind="stable")[..., :top_k]
        else:  # layer by layer: a followed expert ranks after kept ones, before fresh draws
            follow = rng.random((layers, tokens, top_k)) < affinity
            chosen = np.zeros((layers, tokens, top_k), dtype=np.int64)
            t_idx = np.arange(tokens)[:, None]
            for layer in range(layers):
                if layer:
                    nxt = successor[layer][chosen[layer - 1]]
                    cur = ranked[layer][t_idx, nxt]
                    ranked[layer][t_idx, nxt] = np.where(follow[layer] & (cur < np.inf), 1e300, cur)
                chosen[layer] = np.argsort(-ranked[layer], axis=-1, kind="stable")[..., :top_k]
        z = np.take_along_axis(logits, chosen, axis=-1)
        w = np.exp(z - z.max(axis=-1, keepdims=True))
        w /= w.sum(axis=-1, keepdims=True)
        best = np.argsort(-w, axis=-1, kind="stable")
        ids[s] = np.take_along_axis(chosen, best, axis=-1)
        sc[s] = np.take_along_axis(w, best, axis=-1)
    return RoutingTrace(ids, sc, experts, name)


# ---------------------------------------------------------------------------------------- statistics


def expert_popularity(trace: RoutingTrace) -> np.ndarray:
    """Share of routed (token, slot) pairs each expert received, per layer: [layers, experts]."""
    out = np.zeros((trace.layers, trace.num_experts))
    for layer in range(trace.layers):
        out[layer] = np.bincount(trace.experts[:, layer].ravel(), minlength=trace.num_experts)
    return out / out.sum(axis=1, keepdims=True)


def reuse_distances(trace: RoutingTrace) -> list[int]:
    """Per layer, for each access to an expert seen before: how many distinct other experts that layer
    used since its last use (the LRU stack distance; a cache of c experts per layer hits those < c). A
    step looks its experts up at once, against the stack as the step found it; then they move to the top,
    lowest id first (the order in which an LRU cache evicts a step's experts)."""
    out: list[int] = []
    for layer in range(trace.layers):
        stack: list[int] = []  # least recent first
        for s in range(trace.steps):
            step = sorted(trace.routed(s, layer))
            out += [len(stack) - 1 - stack.index(e) for e in step if e in stack]
            stack = [e for e in stack if e not in step] + step
    return out


def repeat_rate(trace: RoutingTrace, first_choice_only: bool = True) -> float:
    """Share of (token, layer) pairs whose expert at step t + 1 repeats step t's (first choice; or any
    of the k, Mixtral's "first or second choice" statistic)."""
    if trace.steps < 2:
        return 0.0
    a, b = trace.experts[:-1], trace.experts[1:]
    if first_choice_only:
        return float(np.mean(a[..., 0] == b[..., 0]))
    hit = (b[..., :, None] == a[..., None, :]).any(axis=(-1, -2))
    return float(np.mean(hit))


def summary(trace: RoutingTrace) -> dict[str, float]:
    """A trace's headline statistics."""
    pop = expert_popularity(trace)
    d = reuse_distances(trace)
    return {"steps": trace.steps, "layers": trace.layers, "experts": trace.num_experts, "top_k": trace.top_k,
            "max_expert_share": float(pop.max(axis=1).mean()),
            "repeat_first_choice": repeat_rate(trace), "repeat_any": repeat_rate(trace, False),
            "mean_reuse_distance": float(np.mean(d)) if d else 0.0}  # fmt: skip


def steps_of(trace: RoutingTrace, n: int) -> Iterator[int]:
    """Step indices for `n` decode steps: a shorter trace wraps around."""
    for i in range(n):
        yield i % trace.steps


__all__: Sequence[str] = ("RoutingTrace", "load_routing", "write_routing", "synthetic", "expert_popularity",
                          "reuse_distances", "repeat_rate", "summary", "shipped_routing")  # fmt: skip
