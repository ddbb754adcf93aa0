"""A sweep from start to finish: sample points, apply constraints, skip cached points, run the rest on a
backend, evaluate objectives, mark the Pareto front, and return one pandas DataFrame row per point; and
the one-factor-at-a-time sensitivity run."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import simcore
from simcore.errors import ConfigError
from simcore.sweep import runner
from simcore.sweep.analysis import pareto_front, sensitivity_points, sensitivity_table
from simcore.sweep.expr import MissingName
from simcore.sweep.spec import SweepSpec, flatten, load_sweep
from simcore.sweep.store import Store, StoreWarning, code_fingerprint, point_key
from simcore.units import to_number, unit_kind, value_kind

MIN_POINTS_PER_WORKER = 16  # below this a process pool costs more than it saves
MAX_WARNINGS = 10  # store problems warned about one by one; the rest in one line


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep: what is stored stays stored, and a re-run resumes from there."""

    def __init__(self, stored: int, total: int, store: str) -> None:
        super().__init__(stored, total, store)
        self.stored, self.total, self.store = stored, total, store

    def __str__(self) -> str:
        return f"interrupted: {self.stored} of {self.total} points stored; re-run to resume"


@dataclass
class Stats:
    """What a sweep did, for the progress line, the CLI and `DataFrame.attrs['stats']`."""

    points: int = 0
    unique: int = 0
    computed: int = 0
    cached: int = 0
    skipped: int = 0  #: rejected by a constraint before running
    infeasible: int = 0  #: out of memory, invalid combination, or a result-side constraint
    errors: int = 0
    workers: int = 0
    backend: str = "local"
    elapsed_s: float = 0.0
    store: str = ""

    def line(self, name: str) -> str:
        rate = (
            f" ({60 * self.computed / self.elapsed_s:,.0f} points/min)"
            if self.computed and self.elapsed_s
            else ""
        )
        return (f"sweep {name}: {self.points} points, {self.computed} computed, {self.cached} cached, "
                f"{self.skipped} skipped, {self.infeasible} infeasible, {self.errors} errors "
                f"in {self.elapsed_s:.2f} s{rate} -> {self.store}")  # fmt: skip


def default_store(name: str) -> Path:
    return Path("runs") / name


def sweep(spec: str | Path | Mapping[str, Any] | SweepSpec, *, workers: int | None = None, backend: str = "local",
          scheduler: Any = None, out: str | Path | None = None, cache: bool = True,
          progress: bool | None = None) -> Any:  # fmt: skip
    """Run a sweep (a YAML path, a mapping, or a loaded spec) and return a pandas DataFrame, one row per point.

    Columns: the axes (numbers in SI units where the values carry units), the objectives, `pareto`,
    `status` (ok / infeasible / error), `reason`, `cached`, every figure of the result summary, `key`.
    `df.attrs` holds the objectives, axes, units and run statistics. Results are stored under `out`
    (default `runs/<name>/`) and reused by later runs; sweeps running at once on one store share the work.
    A point that fails is a row with status `error` and its reason, never an exception; a damaged store
    entry is recomputed with a `StoreWarning`; Ctrl-C raises `SweepInterrupted` (a KeyboardInterrupt)
    once finished points are safely stored.
    """
    s = spec if isinstance(spec, SweepSpec) else load_sweep(spec)
    return run_sweep(s, workers=workers, backend=backend, scheduler=scheduler, out=out, cache=cache,
                     progress=progress)  # fmt: skip


def run_sweep(spec: SweepSpec, points: Sequence[Mapping[str, Any]] | None = None, *, workers: int | None = None,
              backend: str = "local", scheduler: Any = None, out: str | Path | None = None, cache: bool = True,
              progress: bool | str | None = None, durable: bool = True) -> Any:  # fmt: skip
    """Run `points` (default: the spec's sampling plan) and build the DataFrame; see `sweep`."""
    if backend not in runner.BACKENDS:
        raise ConfigError(
            f"unknown backend {backend!r} (known: {', '.join(runner.BACKENDS)})", key="--backend"
        )
    t0 = time.perf_counter()
    started_ns = time.time_ns()
    pts = [dict(p) for p in (spec.points() if points is None else points)]
    store = Store(out if out is not None else default_store(spec.name), durable)
    store.open()
    store.clean()
    stats = Stats(points=len(pts), backend=backend, store=str(store.root))
    warn = _Warnings()
    rows: list[dict[str, Any]] = []
    records: dict[str, dict[str, Any]] = {}
    scanned = False
    bar = runner.Progress(0, f"sweep {spec.name}", "off")
    try:
        existing = store.keys() if cache else set()
        pre = spec.pre_constraints()
        inputs_memo: dict = {}
        pending: list[runner.Point] = []
        for point in pts:
            row: dict[str, Any] = {
                "point": point,
                "key": None,
                "status": "ok",
                "reason": None,
                "cached": False,
            }
            rows.append(row)
            try:
                config = spec.config(point)
            except ConfigError as e:
                row.update(status="infeasible", reason=e.message)
                stats.skipped += 1
                continue
            env = spec.point_env(point, config)
            row["env"] = env
            reason = _violated(pre, env)
            if reason:
                row.update(status="infeasible", reason=reason)
                stats.skipped += 1
                continue
            key, inputs = point_key(config, spec.base.file, spec.base_file, inputs_memo)
            row["key"] = key
            if key in records:
                continue  # the same design reached twice (e.g. integer rounding): computed once
            damage = None
            if key in existing:
                rec, damage = store.load(key)
                if rec is not None and rec.get("status") in ("ok", "infeasible"):
                    records[key] = rec
                    rec["_cached"] = True
                    continue
            moved = store.prepare(key)  # a directory where the record goes, a file where its directory goes
            if moved or damage:
                warn(f"store entry {moved or f'{store.path(key)} {damage}'}; recomputing the point")
            records[key] = {}
            pending.append((key, config, inputs))
        stats.unique = len(records)
        stats.cached = len(records) - len(pending)
        scanned = True

        task = runner.Task(spec.template(), str(store.root), durable, uuid.uuid4().hex[:12], simcore.__version__,
                           code_fingerprint(), cache, started_ns)  # fmt: skip
        bar = runner.Progress(len(pending), f"sweep {spec.name}", _progress_mode(progress))
        by_key = {p[0]: p for p in pending}
        waiting: list[runner.Point] = []

        def on_done(recs: list[dict[str, Any]]) -> None:
            done = []
            for rec in recs:
                key = rec["key"]
                if rec.get(runner.CLAIMED):
                    waiting.append(by_key[key])  # another sweep on this store is computing it
                    continue
                if task.store is None:
                    try:
                        store.put(rec)
                    except OSError as e:
                        rec[runner.UNSTORED] = f"{e.strerror or type(e).__name__}"
                unstored = rec.pop(runner.UNSTORED, None)
                if unstored:
                    warn(f"could not store point {key[:12]}... in {store.path(key)} ({unstored}); "
                         "it will be computed again next time")  # fmt: skip
                if rec.pop(runner.FOUND, False):
                    rec["_cached"] = True  # stored by another sweep on this store meanwhile
                    stats.cached += 1
                else:
                    stats.computed += 1
                records[key] = rec
                done.append(rec)
            if task.store is None:
                store.flush()
            bad = sum(r["status"] != "ok" for r in done)
            bar.update(len(done), infeasible=bad)

        n = len(pending)
        workers = max(1, workers or runner.cpu_count())
        if backend == "local":
            workers = max(1, min(workers, math.ceil(n / MIN_POINTS_PER_WORKER)))
            if n and workers == 1:
                runner.run_inline(task, pending, on_done)
            elif n:
                runner.run_local(task, pending, workers, on_done)
        elif n:
            task.store = None  # remote workers return records; this process writes them
            fn = runner.run_dask if backend == "dask" else runner.run_ray
            fn(task, pending, workers, scheduler, on_done)
        stats.workers = workers if n else 0
        _collect(task, waiting, on_done)
    except KeyboardInterrupt:
        bar.abort()
        with contextlib.suppress(OSError):
            store.flush()
        total = len(records) if scanned else len(pts) - stats.skipped
        stored = len(store.keys() & records.keys()) if scanned else len(store.keys())
        raise SweepInterrupted(stored, total, str(store.root)) from None
    warn.close()

    df = _frame(spec, rows, records, stats)
    stats.elapsed_s = time.perf_counter() - t0
    df.attrs["stats"] = asdict(stats)
    bar.close(stats.line(spec.name))
    _write_summary(store, spec, df)
    return df


def sensitivity(spec: str | Path | Mapping[str, Any] | SweepSpec, center: Mapping[str, Any] | None = None,
                steps: int = 5, metrics: Sequence[str] | None = None, **run_kwargs: Any) -> Any:  # fmt: skip
    """One-factor-at-a-time sensitivity around a center point: each axis walks its values (a range in
    `steps` steps) while the others stay at the center (default: each axis's middle value).

    Returns a DataFrame with `axis` (the one varied, "center" for the center row), `value`, every sweep
    column, and `<metric>_rel` = metric / metric at the center - 1 for each of `metrics` (default: the
    objectives, else latency_s, tokens_per_s and energy_per_token_j). `run_kwargs` go to the sweep runner
    (workers, backend, out, cache, progress).
    """
    s = spec if isinstance(spec, SweepSpec) else load_sweep(spec)
    points, labels = sensitivity_points(s, center, steps)
    df = run_sweep(s, points, **run_kwargs)
    return sensitivity_table(df, labels, metrics, list(s.objectives))


class _Warnings:
    """Store problems as `StoreWarning`s: the first MAX_WARNINGS one by one, then how many more."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, message: str) -> None:
        self.n += 1
        if self.n <= MAX_WARNINGS:
            warnings.warn(message, StoreWarning, stacklevel=2)

    def close(self) -> None:
        if self.n > MAX_WARNINGS:
            warnings.warn(
                f"{self.n - MAX_WARNINGS} more store problems like these", StoreWarning, stacklevel=2
            )


def _collect(task: runner.Task, waiting: list[runner.Point], on_done: runner.OnDone) -> None:
    """Points another sweep on the store was computing: wait for its records; take over a point whose
    claim its holder gave up (it died) and compute it here."""
    delay = 0.02
    while waiting:
        points = list(waiting)
        waiting.clear()
        on_done(runner.run_chunk(task, points))  # claims again: a found record, a computed one, or still held
        if waiting:
            time.sleep(delay)
            delay = min(0.5, delay * 1.5)


def _progress_mode(progress: bool | str | None) -> str:
    if isinstance(progress, str):
        return progress
    if progress is None:
        return "bar" if sys.stderr.isatty() else "off"
    return "auto" if progress else "off"


def _violated(constraints: Sequence[tuple[Any, tuple[str, ...]]], env: Mapping[str, Any]) -> str | None:
    for expr, _ in constraints:
        try:
            ok = expr(env)
        except MissingName as e:
            return f"constraint `{expr.text}` needs {e.name!r}, which this point does not have"
        except (ArithmeticError, ValueError, TypeError) as e:
            return f"constraint `{expr.text}` cannot be evaluated: {e}"
        if not ok:
            return f"violates `{expr.text}`"
    return None


def _frame(
    spec: SweepSpec, rows: list[dict[str, Any]], records: Mapping[str, dict[str, Any]], stats: Stats
) -> Any:
    import pandas as pd

    axis_names = [a.name for a in spec.axes]
    post = spec.post_constraints()
    out: list[dict[str, Any]] = []
    for row in rows:
        d: dict[str, Any] = {a: to_number(row["point"].get(a)) for a in axis_names}
        d.update({name: math.nan for name in spec.objectives})
        rec = records.get(row["key"]) if row["key"] else None
        status, reason = row["status"], row["reason"]
        metrics: dict[str, Any] = {}
        if rec:
            status, reason = rec["status"], rec["reason"]
            if rec.get("summary"):
                metrics = flatten(rec["summary"])
                peaks = [v for k, v in metrics.items() if k.startswith("peak_memory_B.")]
                if peaks:
                    metrics["peak_memory_max_B"] = max(peaks)
        if status == "ok" and rec:
            env = {**row.get("env", {}), **metrics}
            for name, expr in spec.derived.items():
                try:
                    env[name] = metrics[name] = expr(env)
                except (MissingName, ArithmeticError, ValueError, TypeError):
                    metrics[name] = math.nan
            for obj in spec.objectives.values():
                try:
                    d[obj.name] = float(obj.expr(env))
                except (MissingName, ArithmeticError, ValueError, TypeError):
                    pass
            violated = _violated(post, env)
            if violated:
                status, reason = "infeasible", violated
        d["status"], d["reason"], d["cached"] = status, reason, bool(rec and rec.get("_cached"))
        for k, v in metrics.items():
            if k not in d:
                d[k] = v
        d["key"] = row["key"]
        out.append(d)
    stats.infeasible = sum(r["status"] == "infeasible" for r in out) - stats.skipped
    stats.errors = sum(r["status"] == "error" for r in out)
    df = pd.DataFrame(out)
    if df.empty:
        df = pd.DataFrame(columns=[*axis_names, *spec.objectives, "status", "reason", "cached", "key"])
    df.attrs.update(
        sweep=spec.name,
        axes=axis_names,
        objectives={o.name: o.goal for o in spec.objectives.values()},
        units={a.name: k for a in spec.axes if (k := _axis_kind(a))},
    )
    if spec.objectives:
        df.insert(len(axis_names) + len(spec.objectives), "pareto", pareto_front(df))
    return df


def _axis_kind(axis: Any) -> str | None:
    if axis.unit:
        return unit_kind(axis.unit)
    for v in axis.values:
        k = value_kind(v)
        if k:
            return k
    return None


def _write_summary(store: Store, spec: SweepSpec, df: Any) -> None:
    try:
        store.write_text("results.csv", df.to_csv(index=False))
        meta = {"name": spec.name, "file": spec.file, "axes": df.attrs.get("axes"),
                "objectives": df.attrs.get("objectives"), "stats": df.attrs.get("stats"), "version": simcore.__version__}  # fmt: skip
        store.write_text("sweep.json", json.dumps(meta, indent=2, default=str) + "\n")
    except OSError:
        pass  # the per-point records are what matters; the summary is a convenience
