"""Run every benchmarks/bench_*.py (or the ones named) and write their figures to benchmarks/results.json."""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(names: list[str]) -> int:
    modules = sorted(p.stem for p in HERE.glob("bench_*.py"))
    selected = [m for m in modules if not names or m.removeprefix("bench_") in names or m in names]
    out_path = HERE / "results.json"
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    for name in selected:
        t0 = time.perf_counter()
        print(f"{name} ...", file=sys.stderr, flush=True)
        figures = importlib.import_module(f"benchmarks.{name}").run()
        figures["_wall_s"] = round(time.perf_counter() - t0, 3)
        results[name.removeprefix("bench_")] = figures
        for k, v in figures.items():
            print(f"  {k:<44} {v}", file=sys.stderr)
    results["_machine"] = {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                           "cpus": len(__import__("os").sched_getaffinity(0))}  # fmt: skip
    out_path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out_path.relative_to(HERE.parent)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
