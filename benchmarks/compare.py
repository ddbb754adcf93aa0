"""Speed against another commit, as ratios measured in one run (these machines are noisy).

`python -m benchmarks.compare [--rev REV] [--runs N]` checks REV (default: the previous commit) out into a
temporary worktree and runs each probe below alternately in that tree and in this one, each run a fresh
process; it reports the median wall time and peak memory of both and their ratio (REV / this tree: above 1
means this tree is faster), and writes them under "compare" in benchmarks/results.json.

Probes use only the public entry points both trees share (experiment files, `simcore.experiment.run`,
`simcore.sweep`), so any two commits compare.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: name -> Python source run with the tree first on sys.path; it prints one JSON object of figures
PROBES = {
    "gpt3_175b_generate": """
import json, resource, time
from simcore.experiment import run
t = time.perf_counter()
s = run("configs/experiments/gpt3-dgx-a100.yaml", ["scenario.prompt_len=1024", "scenario.new_tokens=1024"],
        keep_records=False).summary
wall = time.perf_counter() - t
print(json.dumps({"wall_s": wall, "ops_per_s": s["ops"] / wall,
                  "rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""",
    "llama2_7b_decode_sweep_1200": """
import json, resource, tempfile, time
from simcore.sweep import load_sweep, run_sweep
spec = {"name": "cmp", "base": {"name": "cmp", "hardware": "a100-sxm4-80gb", "model": "llama-2-7b",
        "dtype": "bf16", "scenario": {"kind": "decode", "batch": 1, "context_len": 1024}},
        "axes": {"scenario.batch": {"low": 1, "high": 64, "integer": True, "log": True},
                 "scenario.context_len": {"low": 128, "high": 4096, "integer": True, "log": True},
                 "hardware.memory.bandwidth": {"low": "1.5 TB/s", "high": "3.5 TB/s"}},
        "sampling": {"method": "random", "samples": 1200, "seed": 1}}
with tempfile.TemporaryDirectory() as out:
    t = time.perf_counter()
    df = run_sweep(load_sweep(spec), workers=2, out=out, progress=False)
    wall = time.perf_counter() - t
print(json.dumps({"wall_s": wall, "points_per_min": 60 * df.attrs["stats"]["computed"] / wall,
                  "rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""",
    "mixtral_offload_decode_256": """
import json, resource, time
from simcore.experiment import run
t = time.perf_counter()
run("configs/experiments/moe-offload-mixtral-rtx4090.yaml", ["scenario.steps=256"], keep_records=False)
wall = time.perf_counter() - t
print(json.dumps({"wall_s": wall, "rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""",
}


def probe(tree: Path, code: str) -> dict[str, float]:
    """The probe's own figures plus `process_s`, the whole process's wall time: imports that one tree does
    at start-up and the other on first use are counted alike."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True,
                         check=True)  # fmt: skip
    process_s = time.perf_counter() - t0
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "process_s": process_s}


def compare(rev: str, runs: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old), rev], cwd=ROOT, check=True)
        try:
            for name, code in PROBES.items():
                a: list[dict[str, float]] = []
                b: list[dict[str, float]] = []
                for _ in range(runs):  # alternate, so a drift in machine speed hits both alike
                    a.append(probe(old, code))
                    b.append(probe(ROOT, code))
                row = {"rev": rev, "runs": runs}
                for key in a[0]:
                    ma, mb = statistics.median(r[key] for r in a), statistics.median(r[key] for r in b)
                    row[f"{key}_rev"], row[f"{key}_here"] = round(ma, 4), round(mb, 4)
                row["speedup"] = round(
                    statistics.median(x["wall_s"] / y["wall_s"] for x, y in zip(a, b, strict=True)), 2
                )
                results[name] = row
                print(f"  {name:<28} {rev}: {row['process_s_rev']:.3f} s  here: {row['process_s_here']:.3f} s  "
                      f"speedup {row['speedup']}x (whole process)", file=sys.stderr)  # fmt: skip
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
    return results


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="HEAD~1", help="commit to compare against (default: the previous one)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each probe in each tree (default 3)")
    args = ap.parse_args(argv)
    rev = subprocess.run(["git", "rev-parse", "--short", args.rev], cwd=ROOT, capture_output=True, text=True)
    if rev.returncode != 0:
        print(f"benchmarks.compare: no commit {args.rev!r} in this checkout", file=sys.stderr)
        return 2
    figures = compare(rev.stdout.strip(), args.runs)
    path = HERE / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["compare"] = figures
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
