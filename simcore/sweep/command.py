"""`simcore sweep FILE.yaml`: run a design-space sweep and print its best points.

Exit status: 0 when every point ran and at least one is feasible (`infeasible` points, out of memory or
rejected by a constraint, are results, not failures); 1 when some point failed with an `error` (a bug
in the simulator on that point) or no point at all is feasible, with one line on stderr saying how many
and where the reasons are; 2 for a bad sweep file, flag or store directory (one line, as every command);
130 on Ctrl-C (`interrupted: N of M points stored; re-run to resume`). Damaged store entries are
recomputed with one `simcore: warning: ...` line each on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
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
    p.epilog = (
        "exit status: 0 every point ran and one at least is feasible; 1 some point failed with an error, "
        "or none is feasible (one line on stderr says how many); 2 bad input; 130 interrupted (Ctrl-C: "
        "finished points stay stored, a re-run resumes). Concurrent sweeps on one --out share the work."
    )


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):  # numpy scalars
        return _jsonable(v.item())
    return v


def _one_line_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                      line: Any = None) -> None:  # fmt: skip
    print(f"simcore: warning: {' '.join(str(message).split())}", file=sys.stderr)


#: Exit status of a sweep whose points failed (some with an error, or none feasible).
EXIT_POINTS_FAILED = 1
EXIT_INTERRUPTED = 130


def failure_line(df: Any) -> str | None:
    """The one-line summary of a sweep that should exit non-zero, or None when it succeeded."""
    stats = df.attrs["stats"]
    where = f"reasons in the 'reason' column of {stats['store']}/results.csv"
    ok = int((df["status"] == "ok").sum()) if len(df) else 0
    errors = int(stats["errors"])
    name = df.attrs.get("sweep", "")
    if errors:
        tail = "" if ok else ", and no point is feasible"
        return f"sweep {name}: {errors} of {stats['points']} points failed with an error{tail}; {where}"
    if not ok:
        return f"sweep {name}: no feasible point: all {stats['points']} points are infeasible; {where}"
    return None


@command("sweep", _sweep_args)
def sweep_cmd(args: argparse.Namespace) -> int:
    """Run a design-space sweep from a YAML file: points cached in a store, a Pareto front at the end.

    Exit status 0 when every point ran and one at least is feasible, 1 when points failed with an error or
    none is feasible (one line on stderr says how many), 2 for bad input, 130 on Ctrl-C."""
    from simcore.sweep.analysis import top_table
    from simcore.sweep.core import SweepInterrupted, run_sweep
    from simcore.sweep.spec import load_sweep
    from simcore.sweep.store import StoreWarning

    spec = load_sweep(args.file)
    if args.backend == "local" and args.scheduler:
        from simcore.errors import ConfigError

        raise ConfigError("--scheduler needs --backend dask or ray", key="--scheduler")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", StoreWarning)
            warnings.showwarning = _one_line_warning
            df = run_sweep(spec, workers=args.workers, backend=args.backend, scheduler=args.scheduler,
                           out=args.out, cache=not args.no_cache, progress="off" if args.json else "auto")  # fmt: skip
    except SweepInterrupted as e:
        print(f"simcore: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    failed = failure_line(df)
    status = 0 if failed is None else EXIT_POINTS_FAILED
    stats = df.attrs["stats"]
    objectives = df.attrs.get("objectives", {})
    front = int(df["pareto"].sum()) if "pareto" in df.columns else 0
    if args.json:
        cols = [*df.attrs.get("axes", []), *objectives, "key"]
        best = df[df["pareto"]] if "pareto" in df.columns else df[df["status"] == "ok"]
        out = {"sweep": spec.name, **stats, "objectives": objectives, "pareto_size": front,
               "pareto": [{c: _jsonable(r[c]) for c in cols} for _, r in best.iterrows()]}  # fmt: skip
        print(json.dumps(out, sort_keys=True, default=str))
        if failed:
            print(f"simcore: {failed}", file=sys.stderr)
        return status
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
    if failed:
        sys.stdout.flush()
        print(f"simcore: {failed}", file=sys.stderr)
    return status
