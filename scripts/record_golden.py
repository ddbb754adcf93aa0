"""(Re)write the golden outputs tests/data/golden/<case>.json from the code as it is now.

    python scripts/record_golden.py            # every case
    python scripts/record_golden.py NAME...    # only these cases
    python scripts/record_golden.py --list     # the case names

The cases live in tests/golden_cases.py (shared with tests/test_golden.py). A case whose inputs are
missing here (the shared calibration data, pandas) is skipped and its file left as it is. Regenerating
changes the reference every refactor is checked against: the commit must name the bug it fixes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout's simcore, not an installed one

import golden_cases as gc  # noqa: E402


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", metavar="NAME", help="cases to record (default: all)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    args = p.parse_args(argv)
    cases = {c.name: c for c in gc.CASES}
    if args.list:
        for c in gc.CASES:
            print(f"{c.name:50} {c.about}")
        return 0
    unknown = [n for n in args.names if n not in cases]
    if unknown:
        p.error(f"unknown case(s): {', '.join(unknown)} (see --list)")
    gc.GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    skipped = 0
    t_all = time.perf_counter()
    for name in args.names or list(cases):
        c = cases[name]
        why = gc.missing(c)
        if why:
            print(f"SKIP  {name}: {why}", file=sys.stderr)
            skipped += 1
            continue
        t0 = time.perf_counter()
        answer = gc.to_json(c.compute())
        path = gc.golden_path(name)
        path.write_text(gc.dumps({"case": name, "about": c.about, "answer": answer}))
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size:,} B, {time.perf_counter() - t0:.2f} s)")
    if not args.names:
        known = {gc.golden_path(n) for n in cases}
        for stale in sorted(set(gc.GOLDEN_DIR.glob("*.json")) - known):
            print(
                f"STALE {stale.relative_to(ROOT)}: no such case (delete it if the case was removed)",
                file=sys.stderr,
            )
    print(f"done in {time.perf_counter() - t_all:.1f} s" + (f", {skipped} skipped" if skipped else ""))
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
