"""Running design points: in-process, on a local process pool, on Dask or on Ray.

Points travel in chunks so per-point overhead (pickling, scheduling) stays small next to a ~10 ms
simulation. Local pool workers write each finished point to the store themselves, the moment it is
done, and die with the sweep (PR_SET_PDEATHSIG plus a parent check between points), so a killed sweep
neither loses finished points nor leaves orphans that would compute a point twice on resume. Before
computing a point a local worker claims it in the store (`Store.claim`): a point another sweep on the
same store is computing comes back as a `CLAIMED` marker, and one that sweep has finished meanwhile as
its stored record (`FOUND`), so concurrent sweeps share the work. Remote backends return records and the
sweep process writes them, so no shared filesystem is assumed (and no claims are made).
"""

from __future__ import annotations

import copy
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from simcore import errors
from simcore.errors import ConfigError, SimError

BACKENDS = ("local", "dask", "ray")
#: Markers on what `run_chunk` returns: the point is held by another runner (the record is just the key);
#: the record was found in the store, computed by another runner; the record could not be stored (why).
CLAIMED, FOUND, UNSTORED = "_claimed", "_found", "_unstored"
#: A broken invariant is a bug (an `error` point), not an infeasible design, although it is a SimError.
_INTERNAL: tuple[type[BaseException], ...] = tuple(
    c for c in (getattr(errors, "InternalError", None),) if isinstance(c, type)
)


# ------------------------------------------------------------------------------------------ worker
@dataclass
class Task:
    """One chunk's shared context: how to rebuild point Docs, where to write, who is computing."""

    template: Any  # spec.PointTemplate
    store: str | None  # the store directory when workers write records themselves
    durable: bool
    run_id: str
    version: str
    code: str = ""  #: fingerprint of the simulator's source (see store.code_fingerprint)
    cache: bool = True  #: reuse a point another runner stored before this sweep started
    started_ns: int = 0  #: time.time_ns() at the start: records written since are this sweep's to reuse


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if isinstance(e, SimError) else f"{type(e).__name__}: {text}"


def run_point(task: Task, key: str, config: dict[str, Any], inputs: Mapping[str, str]) -> dict[str, Any]:
    """Simulate one point; a simulator error becomes an `infeasible` record, a bug an `error` record."""
    from simcore.experiment import load_experiment

    t0 = time.perf_counter()
    rec: dict[str, Any] = {"key": key, "version": task.version, "code": task.code, "run_id": task.run_id,
                           "inputs": dict(inputs),
                           "config": config, "status": "ok", "reason": None, "summary": None}  # fmt: skip
    try:
        rec["summary"] = (
            load_experiment(task.template.doc(copy.deepcopy(config))).run(keep_records=False).summary
        )
    except _INTERNAL as e:  # a broken invariant: a bug
        rec["status"], rec["reason"] = "error", _one_line(e)
    except SimError as e:  # out of memory, a configuration this point cannot have
        rec["status"], rec["reason"] = "infeasible", _one_line(e)
    except Exception as e:  # noqa: BLE001 - a bug must not take the sweep down; it is reported per point
        rec["status"], rec["reason"] = "error", _one_line(e)
    rec["compute_s"] = time.perf_counter() - t0
    return rec


def run_chunk(
    task: Task, points: Sequence[tuple[str, dict[str, Any], Mapping[str, str]]]
) -> list[dict[str, Any]]:
    """Run a chunk of (key, config, inputs); with `task.store`, claim each point first and persist its
    record as soon as it exists (see the module docstring for the markers on what comes back)."""
    import multiprocessing as mp

    from simcore.sweep.store import Store

    store = Store(task.store, task.durable) if task.store else None
    parent = mp.parent_process()
    out = []
    try:
        for key, config, inputs in points:
            if parent is not None and not parent.is_alive():
                os._exit(0)  # the sweep was killed: stop before starting a point nobody will collect
            if store is None:
                out.append(run_point(task, key, config, inputs))
                continue
            claim = store.claim(key, f"run {task.run_id}")
            if claim is None:
                out.append({"key": key, CLAIMED: True})
                continue
            try:
                found = _stored(store, key, task)
                if found is not None:
                    found[FOUND] = True
                    out.append(found)
                    continue
                rec = run_point(task, key, config, inputs)
                try:
                    store.put(rec)
                except OSError as e:
                    rec[UNSTORED] = e.strerror or type(e).__name__
                out.append(rec)
            finally:
                claim.release()
    finally:
        if store is not None:
            store.flush()
    return out


def _stored(store: Any, key: str, task: Task) -> dict[str, Any] | None:
    """The record of a point just claimed, if another runner stored it: any record written since this
    sweep started, and with caching on, an `ok` or `infeasible` one written before."""
    rec = store.get(key)
    if rec is None:
        return None
    try:
        fresh = os.stat(store.path(key)).st_mtime_ns >= task.started_ns
    except OSError:
        return None
    return rec if fresh or (task.cache and rec.get("status") in ("ok", "infeasible")) else None


def _worker_init() -> None:
    """Pool worker start-up: die with the sweep process (Linux), ignore Ctrl-C (the sweep handles it)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


# ---------------------------------------------------------------------------------------- backends
Point = tuple[str, dict[str, Any], Mapping[str, str]]
OnDone = Callable[[list[dict[str, Any]]], None]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def chunked(points: Sequence[Point], workers: int, max_chunk: int = 64) -> list[list[Point]]:
    """About eight chunks per worker (for load balance and a live progress bar), at most `max_chunk` each."""
    size = max(1, min(max_chunk, math.ceil(len(points) / (workers * 8))))
    return [list(points[i : i + size]) for i in range(0, len(points), size)]


def run_inline(task: Task, points: Sequence[Point], on_done: OnDone) -> None:
    for chunk in chunked(points, 1, 8):
        on_done(run_chunk(task, chunk))


def _mp_context() -> Any:
    import multiprocessing as mp

    methods = mp.get_all_start_methods()
    # fork is fastest (workers inherit loaded modules) but unsafe once threads exist (Jupyter, Dask)
    if "fork" in methods and threading.active_count() == 1:
        return mp.get_context("fork")
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


def run_local(task: Task, points: Sequence[Point], workers: int, on_done: OnDone) -> None:
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    chunks = chunked(points, workers)
    ex = ProcessPoolExecutor(workers, mp_context=_mp_context(), initializer=_worker_init)
    try:
        pending = {ex.submit(run_chunk, task, c) for c in chunks}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                on_done(f.result())
    except BrokenProcessPool:
        ex.shutdown(wait=False, cancel_futures=True)
        raise SimError("a worker process died (out of host memory?); finished points are kept in the store, "
                       "run the sweep again to resume") from None  # fmt: skip
    except BaseException:  # Ctrl-C: stop now; points already finished are in the store
        procs = list((getattr(ex, "_processes", None) or {}).values())
        ex.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.terminate()
        for proc in procs:  # gone before the caller counts what is stored
            proc.join(5)
        raise
    ex.shutdown(wait=True)


def run_dask(task: Task, points: Sequence[Point], workers: int, scheduler: Any, on_done: OnDone) -> None:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ConfigError("the dask backend needs dask.distributed: pip install 'dask[distributed]' (from a clone: pip install -e '.[dask]')",
                          key="--backend dask") from None  # fmt: skip
    cluster = None
    if isinstance(scheduler, Client):
        client, own = scheduler, False
    elif scheduler:
        try:
            client, own = Client(scheduler, timeout="10s"), True
        except OSError as e:
            raise ConfigError(f"cannot reach the Dask scheduler: {e}", key="--scheduler") from None
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None)
        client, own = Client(cluster), True
    try:
        n = max(1, len(client.scheduler_info().get("workers", {})) or workers)
        futures = [client.submit(run_chunk, task, c, pure=False) for c in chunked(points, n)]
        for fut in as_completed(futures):
            on_done(fut.result())
    finally:
        if own:
            client.close()
        if cluster is not None:
            cluster.close()


def run_ray(task: Task, points: Sequence[Point], workers: int, scheduler: Any, on_done: OnDone) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray backend needs Ray, which is not installed: pip install ray (from a clone: pip install -e '.[ray]')",
                          key="--backend ray") from None  # fmt: skip
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"address": scheduler} if scheduler else {"num_cpus": workers}
        ray.init(ignore_reinit_error=True, log_to_driver=False, **kwargs)
    try:
        remote = ray.remote(num_cpus=1)(run_chunk)
        n = max(1, int(ray.cluster_resources().get("CPU", workers)))
        refs = [remote.remote(task, c) for c in chunked(points, n)]
        while refs:
            done, refs = ray.wait(refs, num_returns=1)
            on_done(ray.get(done[0]))
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------------------------------- progress
class Progress:
    """A one-line stderr bar (redrawn at most 10x a second) or, off a terminal, just a final line."""

    def __init__(self, total: int, label: str, mode: str = "auto", stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.mode = ("bar" if tty else "line") if mode == "auto" else mode
        self.total, self.label = total, label
        self.done = 0
        self.counts: dict[str, int] = {}
        self.t0 = time.perf_counter()
        self._last = 0.0

    def update(self, n: int, **counts: int) -> None:
        self.done += n
        for k, v in counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
        if self.mode == "bar":
            now = time.perf_counter()
            if now - self._last >= 0.1 or self.done >= self.total:
                self._last = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        width = 28
        frac = self.done / self.total if self.total else 1.0
        fill = int(frac * width)
        dt = now - self.t0
        rate = self.done / dt if dt > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        extra = "".join(f", {v} {k}" for k, v in self.counts.items() if v)
        line = (f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} "
                f"{100 * frac:3.0f}% {rate:,.0f} pt/s ETA {int(eta) // 60}:{int(eta) % 60:02d}{extra}")  # fmt: skip
        self.stream.write(line + "\x1b[K")
        self.stream.flush()

    def abort(self) -> None:
        """Clear the bar (an interrupted sweep prints its own line)."""
        if self.mode == "bar":
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def close(self, summary: str) -> None:
        if self.mode == "bar":
            self.stream.write("\r\x1b[K")
        if self.mode in ("bar", "line"):
            self.stream.write(summary + "\n")
            self.stream.flush()
