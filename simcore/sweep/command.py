"""`simcore sweep FILE.yaml`: run a design-space sweep and print its best points."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from simcore.cli import command, positive_int


def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="sweep YAML (base experiment, axes, sampling, constraints, objectives)")
    p.add_argument("--workers", type=positive_int("--workers"), default=None,
                   help="parallel workers (default: every CPU; small sweeps run in-process)")  # fmt: skip
    p.add_argument("--backend", choices=("local", "dask", "ray"), default="local",
                   help="local process pool (default), a Dask cluster, or Ray")  # fmt: skip
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="Dask scheduler or Ray cluster address (default: start a local one)")  # fmt: skip
    p.add_argument("--out", metavar="DIR", default=None, help="results store (default: runs/<sweep name>/)")
    p.add_argument("--no-cache", action="store_true", help="recompute points already in the store")
    p.add_argument("--top", type=positive_int("--top"), default=10, help="rows in the final table")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):  # numpy scalars
        return _jsonable(v.item())
    return v


@command("sweep", _sweep_args)
def sweep_cmd(args: argparse.Namespace) -> int:
    """Run a design-space sweep from a YAML file: points cached in a store, a Pareto front at the end."""
    from simcore.sweep.analysis import top_table
    from simcore.sweep.core import run_sweep
    from simcore.sweep.spec import load_sweep

    spec = load_sweep(args.file)
    if args.backend == "local" and args.scheduler:
        from simcore.errors import ConfigError

        raise ConfigError("--scheduler needs --backend dask or ray", key="--scheduler")
    df = run_sweep(spec, workers=args.workers, backend=args.backend, scheduler=args.scheduler, out=args.out,
                   cache=not args.no_cache, progress="off" if args.json else "auto")  # fmt: skip
    stats = df.attrs["stats"]
    objectives = df.attrs.get("objectives", {})
    front = int(df["pareto"].sum()) if "pareto" in df.columns else 0
    if args.json:
        cols = [*df.attrs.get("axes", []), *objectives, "key"]
        best = df[df["pareto"]] if "pareto" in df.columns else df[df["status"] == "ok"]
        out = {"sweep": spec.name, **stats, "objectives": objectives, "pareto_size": front,
               "pareto": [{c: _jsonable(r[c]) for c in cols} for _, r in best.iterrows()]}  # fmt: skip
        print(json.dumps(out, sort_keys=True, default=str))
        return 0
    print(f"sweep {spec.name}: {stats['points']} points, {stats['computed']} computed, {stats['cached']} cached, "
          f"{stats['skipped']} skipped by constraints, {stats['infeasible']} infeasible, {stats['errors']} errors")  # fmt: skip
    if objectives:
        goals = ", ".join(f"{k} {v}" for k, v in objectives.items())
        ok = int((df["status"] == "ok").sum())
        print(f"Pareto front: {front} of {ok} feasible points ({goals})")
    print(top_table(df, args.top))
    reasons = df.loc[df["status"] == "error", "reason"]
    if len(reasons):
        print(f"first error: {reasons.iloc[0]}")
    print(f"results: {stats['store']}/results.csv")
    return 0
