"""`simcore plan`: search execution plans for serving a model on a system.

For a serve experiment (system, model, request stream, scheduler, SLOs), every tensor-parallel degree tp
and pipeline depth pp whose product divides the accelerators (tp splitting the model's heads, pp at most
its layers), with dp = devices / (tp pp) replicas, is tried at a few `max_num_seqs`. Replicas are
identical and a round-robin router sends each the dp-th part of the stream, and replicas on separate
devices do not interact, so one replica is simulated on its share (`requests.split`) and its throughput
and goodput are scaled by dp; latencies are that replica's. With `--prefill-replicas`, each plan is also
tried disaggregated: P of its dp replicas only prefill and hand the KV to the others; every plan is then
simulated whole (all replicas behind the experiment's router, the KV transfers over the links), the
co-located ones included. Expert parallelism (`--ep`, MoE models) tries each degree ep that divides the
accelerators and the experts: one group of ep one-device ranks (tp = pp = 1, one replica, its KV pool the
sum of the ranks') with dp = accelerators / ep identical groups, simulated on its share and scaled as
above; disaggregated, or whole with dp > 1, it is listed as skipped with the reason (the serve scenario
runs one expert-parallel group, without prefill replicas).

The points run on the sweep machinery (`simcore.sweep.core.run_sweep`): in parallel, each stored as it
finishes under `--out` (default runs/plan-<experiment>/), so an interrupted search resumes and a repeated
one is read back. Rows are sorted by goodput (requests per second within the SLOs), then throughput; the
Pareto set is marked: goodput against cost per million output tokens where the experiment has a price
per GPU-hour, else against tokens per second per GPU.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simcore.cli import command
from simcore.commands import emit
from simcore.errors import ConfigError
from simcore.tables import text_table

COLUMNS = ("tp", "pp", "ep", "dp", "prefill_replicas", "max_num_seqs", "throughput_tokens_per_s", "ttft_p99_s",
           "tpot_p99_s", "goodput_requests_per_s", "tokens_per_s_per_gpu", "pareto")  # fmt: skip
#: the Pareto objectives: (column, "max" | "min"), priced or not
OBJECTIVES = {
    True: (("goodput_requests_per_s", "max"), ("cost_per_million_tokens_usd", "min")),
    False: (("goodput_requests_per_s", "max"), ("tokens_per_s_per_gpu", "max")),
}
SOLO = "scenario.disaggregation.prefill_replicas"
EP_WHOLE = ("the serve scenario runs one expert-parallel group: no prefill replicas, no replicas of it "
            "simulated whole")  # fmt: skip


def _int_list(flag: str, lowest: int = 1) -> Any:
    def parse(text: str) -> list[int]:
        try:
            out = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            out = []
        if not out or any(v < lowest or v > 1 << 16 for v in out):
            what = "positive integers" if lowest == 1 else f"integers >= {lowest}"
            raise argparse.ArgumentTypeError(f"{flag} expects {what} separated by commas, got {text!r}")
        return sorted(set(out))

    return parse


def _plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "experiment", help="serve experiment YAML: system (hardware), model, requests, scheduler, slo"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a dotted key")
    p.add_argument("--max-num-seqs", type=_int_list("--max-num-seqs"), default=[64, 128, 256], metavar="N,N",
                   help="scheduler.max_num_seqs values to try (default 64,128,256)")  # fmt: skip
    p.add_argument("--tp", type=_int_list("--tp"), default=None, metavar="N,N",
                   help="tensor-parallel degrees to try (default: every divisor of the accelerators)")  # fmt: skip
    p.add_argument("--pp", type=_int_list("--pp"), default=[1], metavar="N,N",
                   help="pipeline stages to try (default 1; e.g. 1,2,4)")  # fmt: skip
    p.add_argument("--ep", type=_int_list("--ep"), default=None, metavar="N,N",
                   help="expert-parallel degrees to try (MoE, tp = pp = 1; default: those that divide the "
                        "accelerators and the experts)")  # fmt: skip
    p.add_argument("--prefill-replicas", type=_int_list("--prefill-replicas", 0), default=[0], metavar="N,N",
                   help="prefill-only replicas to try per plan (disaggregation; default 0: none)")  # fmt: skip
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes running the points (default: the sweep's choice)")  # fmt: skip
    p.add_argument("--out", default=None, metavar="DIR",
                   help="store of finished points (default runs/plan-<experiment>): a re-run resumes from it")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _base(path: str, overrides: Sequence[str]) -> Any:
    """The experiment as a located Doc with the overrides applied (as `load_experiment` reads it)."""
    from simcore.config import apply_overrides, expand_hardware_shorthand, load_yaml

    return expand_hardware_shorthand(apply_overrides(expand_hardware_shorthand(load_yaml(path)), overrides))


def candidates(devices: int, layers: int, tps: Sequence[int] | None, pps: Sequence[int], check_tp: Any
               ) -> tuple[list[tuple[int, int]], list[dict[str, Any]]]:  # fmt: skip
    """(tp, pp) pairs to simulate and those skipped with the reason."""
    pairs, skipped = [], []
    for pp in pps:
        if pp > layers:
            skipped.append({"pp": pp, "reason": f"pp={pp} exceeds the model's {layers} layers"})
            continue
        for tp in tps or [t for t in range(1, devices + 1) if devices % (t * pp) == 0]:
            if devices % (tp * pp):
                skipped.append({"tp": tp, "pp": pp, "reason": f"tp × pp = {tp * pp} does not divide {devices} accelerators"})  # fmt: skip
                continue
            try:
                check_tp(tp)
            except ConfigError as e:
                skipped.append({"tp": tp, "pp": pp, "reason": e.message})
                continue
            pairs.append((tp, pp))
    return pairs, skipped


def expert_degrees(devices: int, model: Any, eps: Sequence[int] | None
                   ) -> tuple[list[int], list[dict[str, Any]]]:  # fmt: skip
    """Expert-parallel degrees to simulate (each a group of ep one-device ranks, dp = devices / ep of them)
    and those skipped with the reason; by default every ep >= 2 dividing the accelerators and the experts."""
    moe = getattr(model, "moe", None)
    if moe is None:
        return [], [{"ep": ep, "reason": f"{model.name} is dense: no experts to split"} for ep in eps or ()]
    out, skipped = [], []
    for ep in eps if eps is not None else range(2, devices + 1):
        if ep == 1:
            continue  # the tensor-parallel plans
        if devices % ep or moe.experts % ep:
            if eps is not None:
                skipped.append({"ep": ep, "reason": f"ep={ep} must divide the {devices} accelerators and "
                                                    f"{model.name}'s {moe.experts} experts"})  # fmt: skip
            continue
        out.append(ep)
    return out, skipped


def search(path: str, overrides: list[str], max_num_seqs: list[int], tps: list[int] | None = None,
           prefill_replicas: tuple[int, ...] | list[int] = (0,), pps: Sequence[int] = (1,),
           eps: Sequence[int] | None = None, workers: int | None = None, out: str | Path | None = None,
           progress: bool = False, stats: dict[str, Any] | None = None
           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:  # fmt: skip
    """(plans sorted best first, each marked `pareto`, and plans skipped with the reason) for the serve
    experiment at `path`; `stats` receives the sweep's (points computed, read back from the store...)."""
    from models.llm import check_tp
    from simcore.experiment import load_experiment
    from simcore.mapping.plan import accelerators
    from simcore.sweep.analysis import pareto_mask
    from simcore.sweep.core import run_sweep
    from simcore.sweep.spec import Axis, Sampling, SweepSpec

    base = load_experiment(path, [*overrides, "parallelism.tp=1", "parallelism.dp=1", "parallelism.pp=1",
                                  "parallelism.ep=1", f"{SOLO}=0"])  # fmt: skip
    if base.scenario.kind != "serve":
        raise ConfigError(f"plan searches serve experiments; this one is {base.scenario.kind!r}",
                          key="scenario.kind")  # fmt: skip
    devices = len(accelerators(base.system, base.plan.devices))
    split = base.scenario.requests.split
    model = base.model
    pairs, skipped = candidates(devices, model.layers, tps, pps, lambda tp: check_tp(model, tp))
    ep_degrees, ep_skipped = expert_degrees(devices, model, eps)
    skipped += ep_skipped

    whole = any(prefill_replicas)  # compare like with like: every plan simulated whole
    keys = ("parallelism.tp", "parallelism.pp", "parallelism.ep", "parallelism.dp", SOLO,
            "scenario.scheduler.max_num_seqs", "scenario.requests.split")  # fmt: skip
    points, meta = [], []
    for tp, pp, ep in [(tp, pp, 1) for tp, pp in pairs] + [(1, 1, ep) for ep in ep_degrees]:
        dp = devices // (tp * pp * ep)
        for n_pre in prefill_replicas:
            if n_pre and n_pre >= dp:
                skipped.append({"tp": tp, "pp": pp, "ep": ep, "prefill_replicas": n_pre,
                                "reason": f"leaves no decode replica of {dp}"})  # fmt: skip
                continue
            if ep > 1 and whole and (n_pre or dp > 1):
                skipped.append({"ep": ep, "prefill_replicas": n_pre, "reason": EP_WHOLE})
                continue
            for m in max_num_seqs:
                if whole:  # the whole system (prefill replicas hand their KV to the decode replicas)
                    values, scale = (tp, pp, ep, dp, n_pre, m, split), 1
                else:  # identical replicas: one on its round-robin share, scaled
                    values, scale = (tp, pp, ep, 1, 0, m, split * dp), dp
                points.append(dict(zip(keys, values, strict=True)))
                meta.append((tp, pp, ep, dp, n_pre, m, scale))

    doc = _base(path, overrides)
    axes = [
        Axis(k, k, tuple(dict.fromkeys(p[k] for p in points)) or (0,), where=(doc.file, None)) for k in keys
    ]
    name = f"plan-{Path(path).stem}"
    spec = SweepSpec(name, doc.file, doc, str(path), axes, Sampling("zip"))
    df = run_sweep(spec, points, workers=workers, out=out if out is not None else Path("runs") / name,
                   progress=progress)  # fmt: skip
    if stats is not None:
        stats.update(df.attrs.get("stats", {}))
    rows = []
    for (tp, pp, ep, dp, n_pre, m, scale), (_, rec) in zip(meta, df.iterrows(), strict=True):
        if rec["status"] != "ok":
            skipped.append({"tp": tp, "pp": pp, "ep": ep, "prefill_replicas": n_pre, "max_num_seqs": m,
                            "reason": str(rec["reason"])})  # fmt: skip
            continue
        row = {"tp": tp, "pp": pp, "ep": ep, "dp": dp, "prefill_replicas": n_pre, "max_num_seqs": m,
               "throughput_tokens_per_s": rec["throughput_tokens_per_s"] * scale,
               "ttft_p99_s": rec["ttft_p99_s"], "tpot_p99_s": rec["tpot_p99_s"],
               "goodput_requests_per_s": rec["goodput_requests_per_s"] * scale,
               "tokens_per_s_per_gpu": rec["throughput_tokens_per_s"] * scale / devices,
               "rejected_requests": int(rec["rejected_requests"]) * scale}  # fmt: skip
        cost = rec.get("cost_per_million_tokens_usd")
        if cost is not None and not (isinstance(cost, float) and math.isnan(cost)):
            row["cost_per_million_tokens_usd"] = float(cost)
        rows.append({k: v.item() if hasattr(v, "item") else v for k, v in row.items()})
    mark_pareto(rows, pareto_mask)
    rows.sort(key=lambda r: (-r["goodput_requests_per_s"], -r["throughput_tokens_per_s"], r["tp"], r["pp"],
                             r["ep"], r["prefill_replicas"], r["max_num_seqs"]))  # fmt: skip
    return rows, skipped


def objectives(rows: Sequence[dict[str, Any]]) -> tuple[tuple[str, str], ...]:
    """The Pareto objectives of `rows`: against cost where every row is priced, else per GPU."""
    return OBJECTIVES[bool(rows) and all("cost_per_million_tokens_usd" in r for r in rows)]


def mark_pareto(rows: list[dict[str, Any]], mask: Any) -> None:
    """Set each row's `pareto`: no other row is at least as good in both objectives and better in one."""
    goals = objectives(rows)
    costs = [[r[k] if g == "min" else -r[k] for k, g in goals] for r in rows]
    front = mask(costs) if rows else []
    for r, on in zip(rows, front, strict=True):
        r["pareto"] = bool(on)


@command("plan", _plan_args)
def plan_cmd(args: argparse.Namespace) -> int:
    """Search tensor × pipeline × expert × data parallelism and max_num_seqs for the best goodput of a serve
    experiment, and mark the Pareto set.

    Each plan serves the experiment's request stream: one replica of tp × pp devices (or of ep expert-parallel
    ranks) simulated on its round-robin share, throughput and goodput scaled by dp = accelerators / (tp × pp
    × ep)."""
    stats: dict[str, Any] = {}
    rows, skipped = search(args.experiment, args.set, args.max_num_seqs, args.tp, args.prefill_replicas,
                           args.pp, args.ep, args.workers, args.out, stats=stats)  # fmt: skip
    if not rows:
        why = "; ".join(f"{_which(s)}: {s['reason']}" for s in skipped) or "no plan"
        raise ConfigError(f"no plan fits: {why}", key=args.experiment)
    goals = objectives(rows)
    if args.json:
        front = [r for r in rows if r["pareto"]]
        emit({"plans": rows, "skipped": skipped, "best": rows[0], "pareto": front,
              "pareto_objectives": dict(goals), "computed": stats.get("computed", 0),
              "cached": stats.get("cached", 0), "store": stats.get("store", "")}, True)  # fmt: skip
        return 0
    priced = goals[1][0] == "cost_per_million_tokens_usd"
    table = [[r["tp"], r["pp"], r["ep"], r["dp"], r["prefill_replicas"], r["max_num_seqs"], f"{r['throughput_tokens_per_s']:.1f}",
              f"{r['ttft_p99_s'] * 1e3:.1f}", f"{r['tpot_p99_s'] * 1e3:.2f}", f"{r['goodput_requests_per_s']:.3f}",
              f"{r['tokens_per_s_per_gpu']:.1f}"] + ([f"{r['cost_per_million_tokens_usd']:.3f}"] if priced else [])
             + ["*" if r["pareto"] else ""] for r in rows]  # fmt: skip
    print(text_table(["tp", "pp", "ep", "dp", "prefill", "max_num_seqs", "tokens/s", "TTFT p99 ms", "TPOT p99 ms",
                      "goodput req/s", "tokens/s/GPU"] + (["$/M tokens"] if priced else []) + ["pareto"], table))  # fmt: skip
    print(f"pareto (*): {goals[0][0]} ({goals[0][1]}) against {goals[1][0]} ({goals[1][1]})")
    print(
        f"{stats.get('computed', 0)} points computed, {stats.get('cached', 0)} read back from "
        f"{stats.get('store', '')}"
    )
    for s in skipped:
        print(f"skipped {_which(s)}: {s['reason']}")
    return 0


def _which(skip: dict[str, Any]) -> str:
    """`tp 2, pp 4, max_num_seqs 64`: the plan a skipped entry names."""
    return ", ".join(
        f"{k} {skip[k]}" for k in ("tp", "pp", "ep", "prefill_replicas", "max_num_seqs") if skip.get(k)
    )
