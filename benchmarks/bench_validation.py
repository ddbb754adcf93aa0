"""Accuracy on the shared A100 measurements (`simcore validate data`): median and p90 |error| per op family,
and the time it takes to predict every row."""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

CALIBRATION = Path(__file__).resolve().parents[1].parent / "shared" / "calibration"
FILES = ["gemm_a100.csv", "attention_a100.csv", "links_a100.csv", "ops_misc_a100.csv"]


def run() -> dict:
    from simcore.validate import run_data

    paths = [CALIBRATION / f for f in FILES]
    if not all(p.is_file() for p in paths):
        return {"skipped": f"calibration data not found under {CALIBRATION}"}
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        report = run_data([str(p) for p in paths], None, as_json=False, plot=False)
    out: dict = {
        "rows": report["rows"],
        "rows_simulated": report["mapped"],
        "wall_s": round(time.perf_counter() - t0, 3),
    }
    for g in report["families"]:
        tag = g["family"] + ("" if g["quality"] == "measured" else f"_{g['quality']}")
        out[f"{tag}_n"] = g["count"]
        out[f"{tag}_median_abs_err"] = round(g["median_abs"], 4)
        out[f"{tag}_p90_abs_err"] = round(g["p90_abs"], 4)
    return out
