"""Leave-one-architecture-out table of the calibrated constants (docs/validation.md): per family with rows
of two GPU architectures, refit its constants on one, predict the other.

    python scripts/loao.py            # markdown table
    python scripts/loao.py --json     # one JSON object
    python scripts/loao.py --quick    # every 20th record of the subsampled ones, 3 grid values per constant

Measured rows are read from ../shared/calibration and configs/validation (the public Hopper GEMM rows).
Every measured row is simulated at every grid point (no subsampling; about 10 minutes on two cores,
nearly all of it the 21 serving grid points).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]  # this checkout's simcore, not an installed one

from simcore.errors import ConfigError  # noqa: E402
from simcore.validate.loao import (  # noqa: E402
    FAMILIES,
    Family,
    Fold,
    Grid,
    architectures_of,
    find_files,
    folds,
    table,
)
from simcore.validate.rows import Simulator  # noqa: E402

DIRS = (ROOT.parent / "shared" / "calibration", ROOT / "configs" / "validation")


def quick(family: Family) -> Family:
    """A small version: every 20th of the kept records, each grid cut to its ends and middle."""
    thin = tuple(replace(c, grid=tuple(sorted({c.grid[0], c.grid[len(c.grid) // 2], c.grid[-1]})))
                 for c in family.constants)  # fmt: skip
    return replace(family, constants=thin, stride=family.stride * 20)


def run(
    families: tuple[Family, ...], dirs: tuple[Path, ...], log: bool
) -> tuple[list[Fold], dict[str, list[str]]]:
    sim = Simulator()
    results: list[Fold] = []
    single: dict[str, list[str]] = {}
    for fam in families:
        files = find_files(fam, dirs)
        archs = architectures_of(fam, files, sim)
        if len(archs) < 2 or not fam.constants:
            single[fam.name] = archs
            continue
        t = time.perf_counter()
        grid = Grid(fam, files)
        grid.run()
        results += folds(grid, sim)
        if log:
            print(f"{fam.name}: {len(grid.points)} grid points x {len(grid.rows[grid.points[0]])} rows "
                  f"in {time.perf_counter() - t:.0f} s", file=sys.stderr)  # fmt: skip
    return results, single


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="a small subset (seconds): for tests")
    p.add_argument("--dir", action="append", type=Path, metavar="DIR",
                   help="where to look for the measured CSVs (repeatable; default: ../shared/calibration "
                        "and configs/validation)")  # fmt: skip
    args = p.parse_args(argv)
    families = tuple(quick(f) for f in FAMILIES) if args.quick else FAMILIES
    try:
        results, single = run(families, tuple(args.dir or DIRS), log=not args.json)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        out = {"folds": [f.record() for f in results], "one_architecture": single,
               "notes": {f.name: f.note for f in families if f.note}}  # fmt: skip
        print(json.dumps(out, indent=1, allow_nan=False, default=list))
    else:
        print(table(results, single))
        for f in families:
            if f.note:
                print(f"\n{f.name}: {f.note}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
