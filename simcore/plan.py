"""`simcore plan`: search execution plans for serving a model on a system.

For a serve experiment (system, model, request stream, scheduler, SLOs), every tensor-parallel degree tp
that divides the accelerators, splits the model's heads and leaves room for a KV cache, with dp = devices
/ tp replicas, is tried at a few `max_num_seqs`. Replicas are identical and a round-robin router sends
each the dp-th part of the stream, and replicas on separate devices do not interact, so one replica is
simulated on its share (`requests.split`) and its throughput and goodput are scaled by dp; latencies
are that replica's. With `--prefill-replicas`, each plan is also tried disaggregated: P of its dp replicas
only prefill and hand the KV to the others; every plan is then simulated whole (all replicas behind the
experiment's router, the KV transfers over the links), the co-located ones included.
Rows are sorted by goodput (requests per second within the SLOs), then throughput; with a price per
GPU-hour in the experiment, each row has its cost per million output tokens.
"""

from __future__ import annotations

import argparse
from typing import Any

from simcore.cli import command
from simcore.commands import emit
from simcore.errors import ConfigError, OutOfMemory
from simcore.tables import text_table

COLUMNS = ("tp", "dp", "prefill_replicas", "max_num_seqs", "throughput_tokens_per_s", "ttft_p99_s",
           "tpot_p99_s", "goodput_requests_per_s", "tokens_per_s_per_gpu")  # fmt: skip


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
    p.add_argument("--prefill-replicas", type=_int_list("--prefill-replicas", 0), default=[0], metavar="N,N",
                   help="prefill-only replicas to try per plan (disaggregation; default 0: none)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")


def search(path: str, overrides: list[str], max_num_seqs: list[int], tps: list[int] | None = None,
           prefill_replicas: tuple[int, ...] | list[int] = (0,)) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:  # fmt: skip
    """(plans sorted best first, plans skipped with the reason) for the serve experiment at `path`."""
    from models.llm import check_tp
    from simcore.experiment import load_experiment
    from simcore.mapping.plan import accelerators

    solo = "scenario.disaggregation.prefill_replicas=0"
    base = load_experiment(
        path, [*overrides, "parallelism.tp=1", "parallelism.dp=1", "parallelism.pp=1", solo]
    )
    if base.scenario.kind != "serve":
        raise ConfigError(f"plan searches serve experiments; this one is {base.scenario.kind!r}",
                          key="scenario.kind")  # fmt: skip
    devices = len(accelerators(base.system, base.plan.devices))
    split = base.scenario.requests.split
    rows, skipped = [], []
    for tp in tps or [t for t in range(1, devices + 1) if devices % t == 0]:
        if devices % tp:
            skipped.append({"tp": tp, "reason": f"does not divide {devices} accelerators"})
            continue
        try:
            check_tp(base.model, tp)
        except ConfigError as e:
            skipped.append({"tp": tp, "reason": e.message})
            continue
        dp = devices // tp
        whole = any(prefill_replicas)  # compare like with like: every plan simulated whole
        for n_pre in prefill_replicas:
            if n_pre and n_pre >= dp:
                skipped.append(
                    {"tp": tp, "prefill_replicas": n_pre, "reason": f"leaves no decode replica of {dp}"}
                )
                continue
            for m in max_num_seqs:
                common = [
                    *overrides,
                    f"parallelism.tp={tp}",
                    "parallelism.pp=1",
                    f"scenario.scheduler.max_num_seqs={m}",
                ]
                if whole:  # the whole system (prefill replicas hand their KV to the decode replicas)
                    pre = f"scenario.disaggregation.prefill_replicas={n_pre}"
                    sets, scale = [*common, f"parallelism.dp={dp}", pre], 1
                else:  # identical replicas: one on its round-robin share, scaled
                    sets, scale = (
                        [*common, "parallelism.dp=1", solo, f"scenario.requests.split={split * dp}"],
                        dp,
                    )
                try:
                    s = load_experiment(path, sets).run(keep_records=False).summary
                except OutOfMemory as e:
                    skipped.append({"tp": tp, "prefill_replicas": n_pre, "max_num_seqs": m, "reason": str(e)})
                    break  # more sequences need no less memory
                row = {"tp": tp, "dp": dp, "prefill_replicas": n_pre, "max_num_seqs": m,
                       "throughput_tokens_per_s": s["throughput_tokens_per_s"] * scale,
                       "ttft_p99_s": s["ttft_p99_s"], "tpot_p99_s": s["tpot_p99_s"],
                       "goodput_requests_per_s": s["goodput_requests_per_s"] * scale,
                       "tokens_per_s_per_gpu": s["throughput_tokens_per_s"] * scale / devices,
                       "rejected_requests": s["rejected_requests"] * scale}  # fmt: skip
                if "cost_per_million_tokens_usd" in s:
                    row["cost_per_million_tokens_usd"] = s["cost_per_million_tokens_usd"]
                rows.append(row)
    rows.sort(key=lambda r: (-r["goodput_requests_per_s"], -r["throughput_tokens_per_s"], r["tp"],
                             r["prefill_replicas"], r["max_num_seqs"]))  # fmt: skip
    return rows, skipped


@command("plan", _plan_args)
def plan_cmd(args: argparse.Namespace) -> int:
    """Search tensor × data parallelism and max_num_seqs for the best goodput of a serve experiment.

    Each plan serves the experiment's request stream: one replica of tp devices simulated on its
    round-robin share, throughput and goodput scaled by dp = accelerators / tp."""
    rows, skipped = search(args.experiment, args.set, args.max_num_seqs, args.tp, args.prefill_replicas)
    if not rows:
        why = "; ".join(f"tp {s['tp']}: {s['reason']}" for s in skipped) or "no plan"
        raise ConfigError(f"no plan fits: {why}", key=args.experiment)
    if args.json:
        emit({"plans": rows, "skipped": skipped, "best": rows[0]}, True)
        return 0
    priced = all("cost_per_million_tokens_usd" in r for r in rows)
    table = [[r["tp"], r["dp"], r["prefill_replicas"], r["max_num_seqs"], f"{r['throughput_tokens_per_s']:.1f}",
              f"{r['ttft_p99_s'] * 1e3:.1f}", f"{r['tpot_p99_s'] * 1e3:.2f}", f"{r['goodput_requests_per_s']:.3f}",
              f"{r['tokens_per_s_per_gpu']:.1f}"] + ([f"{r['cost_per_million_tokens_usd']:.3f}"] if priced else [])
             for r in rows]  # fmt: skip
    print(text_table(["tp", "dp", "prefill", "max_num_seqs", "tokens/s", "TTFT p99 ms", "TPOT p99 ms",
                      "goodput req/s", "tokens/s/GPU"] + (["$/M tokens"] if priced else []), table))  # fmt: skip
    for s in skipped:
        print(f"skipped tp {s['tp']}" + (f", prefill_replicas {s['prefill_replicas']}" if s.get("prefill_replicas") else "")
              + (f", max_num_seqs {s['max_num_seqs']}" if "max_num_seqs" in s else "") + f": {s['reason']}")  # fmt: skip
    return 0
