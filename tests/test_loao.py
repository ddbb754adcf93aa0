"""Leave-one-architecture-out check (simcore/validate/loao.py, scripts/loao.py): the grid search finds the
constants that generated the rows, held-out rows never enter the fit, and the script runs."""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from simcore.errors import ConfigError
from simcore.validate.loao import (
    Constant,
    Family,
    Grid,
    OverrideSimulator,
    Point,
    architecture,
    best_point,
    find_files,
    folds,
)
from simcore.validate.rows import Simulator, load_rows

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION = ROOT.parent / "shared" / "calibration"
HOPPER = ROOT / "configs" / "validation"
needs_data = pytest.mark.skipif(
    not (CALIBRATION / "gemm_a100.csv").is_file(), reason="shared/calibration absent"
)

SHIPPED: Point = (0.80, 20.0)  # arch-ampere.yaml / arch-hopper.yaml: efficiency.tensor, dram_inflight_per_cta


def _gemm_family() -> Family:
    grids = (Constant("efficiency.tensor", (0.76, 0.80, 0.84)),
             Constant("dram_inflight_per_cta", (16.0, 20.0, 24.0), "KiB", 1024.0))  # fmt: skip
    return Family("GEMM", ("gemm_a100.csv", "gemm_hopper.csv"), ("gemm",), grids, stride=40)


@pytest.fixture(scope="module")
def gemm_grid() -> Grid:
    fam = _gemm_family()
    grid = Grid(fam, find_files(fam, (CALIBRATION, HOPPER)))
    grid.run()
    return grid


@pytest.fixture(scope="module")
def published(gemm_grid: Grid) -> dict[tuple[str, int], float]:
    """The rows' published values, read afresh (tests plant their own into the grid)."""
    return {(r.file, r.line): r.measured for path in gemm_grid.files for r in load_rows(path, Simulator())}


def _plant(grid: Grid, truth: dict[tuple[str, int], float]) -> None:
    """Set every row's measured value (at every grid point)."""
    for rows in grid.rows.values():
        for r in rows:
            r.measured = truth[(r.file, r.line)]


def _predicted(grid: Grid, point: Point) -> dict[tuple[str, int], float]:
    return {(r.file, r.line): r.predicted for r in grid.rows[point]}


def test_overrides_reach_device_and_system_presets() -> None:
    sim = OverrideSimulator(["energy.active_share=0.65", "dram_inflight_per_cta=24 KiB"])
    assert sim.gpu("a100-sxm4-80gb").params["energy"]["active_share"] == 0.65
    assert sim.gpu("a100-sxm4-80gb").params["dram_inflight_per_cta"] == 24 * 1024
    gpus = [d for d in sim.system("dgx-h100-8").devices.values() if d.params.get("architecture") == "hopper"]
    assert len(gpus) == 8 and all(g.params["energy"]["active_share"] == 0.65 for g in gpus)
    with pytest.raises(ConfigError, match="efficiency.tensor"):  # a fraction above 1: one line naming the key
        OverrideSimulator(["efficiency.tensor=1.5"]).gpu("a100-sxm4-80gb")


def _governed(grid: Grid, planted: Point, axis: int) -> set[tuple[str, int]]:
    """The A100 rows whose prediction at `planted` differs from that at every other value of the constant
    on `axis` (the other constant fixed). A median |err| search sees a constant only through such rows:
    were fewer than half of the training rows to move, another value would also leave the median at 0."""

    def on_axis(p: Point) -> bool:
        return p != planted and all(
            v == w for i, (v, w) in enumerate(zip(p, planted, strict=True)) if i != axis
        )

    line = [p for p in grid.points if on_axis(p)]
    at = _predicted(grid, planted)
    others = [_predicted(grid, p) for p in line]
    return {k for k, t in at.items() if "a100" in Path(k[0]).name and all(o[k] != t for o in others)}


@needs_data
@pytest.mark.parametrize("planted, axis", [(SHIPPED, 0), (SHIPPED, 1), ((0.84, 20.0), 0), ((0.76, 20.0), 0),
                                           ((0.80, 24.0), 1), ((0.80, 16.0), 1)])  # fmt: skip
def test_search_recovers_the_constants_that_made_the_rows(gemm_grid: Grid, planted: Point, axis: int) -> None:
    # closed check of the search: A100 rows measured as the model's own predictions at `planted` have zero
    # error there and none elsewhere on the constant's axis, so the refit on the A100 (shipped architecture)
    # rows the constant governs returns exactly the planted value; the other constant, which those rows
    # do not constrain on its own, keeps its shipped value
    _plant(gemm_grid, _predicted(gemm_grid, planted))
    rows = _governed(gemm_grid, planted, axis)
    assert len(rows) >= 2
    assert best_point(gemm_grid, lambda r: (r.file, r.line) in rows, SHIPPED) == planted


@needs_data
def test_held_out_rows_never_enter_the_fit(gemm_grid: Grid, published: dict[tuple[str, int], float]) -> None:
    _plant(gemm_grid, published)
    before = {f.held_out: f for f in folds(gemm_grid, Simulator())}
    # the Hopper rows measured 3x slower: the Hopper fold's refit (on A100 rows) must not move and its
    # held-out errors become (1 + e) / 3 - 1 at the same constants; the fold trained on them must move
    hopper = {k: v * 3.0 if "hopper" in Path(k[0]).name else v for k, v in published.items()}
    _plant(gemm_grid, hopper)
    after = {f.held_out: f for f in folds(gemm_grid, Simulator())}
    assert after["hopper"].constants == before["hopper"].constants
    point = tuple(v for v, _ in before["hopper"].constants.values())
    errs = [abs(r.predicted / r.measured - 1) for r in gemm_grid.rows[point] if "hopper" in Path(r.file).name]
    assert after["hopper"].median_abs == pytest.approx(statistics.median(errs), rel=1e-12)
    assert after["hopper"].median_abs != pytest.approx(before["hopper"].median_abs, rel=1e-3)
    assert (
        after["ampere"].constants["efficiency.tensor"][0] < before["ampere"].constants["efficiency.tensor"][0]
    )
    n = len(gemm_grid.rows[SHIPPED])
    for f in after.values():
        assert f.train_rows + f.held_rows == n and f.held_rows > 0 and f.train_rows > 0
    assert after["hopper"].held_rows == 4  # the four public Hopper rows of configs/validation/gemm_hopper.csv


@needs_data
def test_serving_search_reproduces_the_shipped_active_share() -> None:
    # docs/validation.md: active_share 0.6 was fitted on the H100 serving rows' power; the same search on
    # today's H100 rows (compute_share held at its shipped 0.4) lands on it again
    fam = Family("serving", ("energy_a100_h100.csv",), ("llm serving power",),
                 (Constant("energy.active_share", (0.5, 0.55, 0.6, 0.65, 0.7)),
                  Constant("energy.compute_share", (0.4,))))  # fmt: skip
    grid = Grid(fam, find_files(fam, (CALIBRATION,)))
    grid.run()
    sim = Simulator()
    hopper = {r.preset: architecture(r.preset or "", sim) == "hopper" for r in grid.rows[grid.points[0]]}
    assert best_point(grid, lambda r: hopper[r.preset], (0.6, 0.4)) == (0.6, 0.4)


@needs_data
def test_script_quick_json() -> None:
    # the four Hopper rows and a few A100 rows: both GEMM folds and both serving folds, in seconds
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "loao.py"), "--quick", "--json"],
                         capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    data = json.loads(out.stdout)
    held = {(f["family"], f["quantity"], f["held_out"]) for f in data["folds"]}
    assert {("GEMM", "gemm", "ampere"), ("GEMM", "gemm", "hopper"),
            ("serving (vLLM)", "llm serving power", "ampere"),
            ("serving (vLLM)", "llm serving power", "hopper")} <= held  # fmt: skip
    assert data["one_architecture"]["attention"] == ["ampere"]
    for f in data["folds"]:
        assert f["held_rows"] > 0 and f["median_abs"] >= 0.0
        assert f["coverage"] is None or 0.0 <= f["coverage"] <= 1.0


def test_quick_keeps_the_shipped_value_and_small_files_whole() -> None:
    spec = importlib.util.spec_from_file_location("loao_script", ROOT / "scripts" / "loao.py")
    assert spec is not None and spec.loader is not None
    loao = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loao)
    # --quick cuts each grid to its ends and middle, which is the shipped value (0.80, 20 KiB, 0.6, 0.4)
    assert [c.grid for c in loao.quick(loao.FAMILIES[0]).constants] == [(0.6, 0.8, 1.0), (16.0, 20.0, 24.0)]
    assert [c.grid for c in loao.quick(loao.FAMILIES[1]).constants] == [(0.45, 0.6, 0.75), (0.3, 0.4, 0.5)]
    # a GPU with fewer than MIN_ROWS records in a file is kept whole whatever the stride
    fam = Family(
        "GEMM", ("gemm_hopper.csv",), ("gemm",), (Constant("efficiency.tensor", (0.8,)),), stride=1000
    )
    grid = Grid(fam, find_files(fam, (HOPPER,)))
    grid.run()
    assert len(grid.rows[(0.8,)]) == 4
