"""Golden outputs: the answers of the simulator, recorded before the engine refactor, must not move.

tests/data/golden/<case>.json hold what the code computed when they were recorded: every experiment
in configs/experiments, per-op records of three small runs, summaries of each scenario kind and branch
(prefill, decode, generate, tensor parallel, weight offload, vision, refusals), `simcore validate data`
per-row predictions and statistics, the benchmarks' non-timing figures and the notebooks' key figures.
The cases are defined once, in tests/golden_cases.py; each test here recomputes one case and compares:
floats to 1e-9 relative (1e-12 absolute near zero), strings, ints, bools, lists and dict keys exactly.
Wall-clock timings are never recorded, and neither is the SimPy event count (`events`), which a faster
engine legitimately changes; every other summary figure is an answer and is compared.

Regenerate with `python scripts/record_golden.py [CASE...]` only to fix a bug in the recorded answers,
and name that bug in the commit that changes the files; a refactor must pass unchanged.
"""

from __future__ import annotations

import json

import golden_cases as gc
import pytest

CASES = {c.name: c for c in gc.CASES}
MAX_LINES = 40  # differences listed per failing case


@pytest.mark.parametrize("name", list(CASES))
def test_golden(name: str) -> None:
    case = CASES[name]
    why = gc.missing(case)
    if why:
        pytest.skip(why)
    path = gc.golden_path(name)
    if not path.is_file():
        pytest.fail(f"no golden file {path.name}: run `python scripts/record_golden.py {name}`")
    expected = json.loads(path.read_text())["answer"]
    actual = json.loads(json.dumps(gc.to_json(case.compute())))  # what the recorder would write
    problems = gc.diff(actual, expected)
    if problems:
        more = f"\n... and {len(problems) - MAX_LINES} more" if len(problems) > MAX_LINES else ""
        pytest.fail(
            f"{name} ({case.about}) differs from {path.name} in {len(problems)} place(s):\n"
            + "\n".join(problems[:MAX_LINES])
            + more,
            pytrace=False,
        )


def test_every_golden_file_has_a_case() -> None:
    stale = sorted(p.name for p in gc.GOLDEN_DIR.glob("*.json") if p.stem not in CASES)
    assert not stale, f"golden files without a case in tests/golden_cases.py: {stale}"


def test_the_comparison_catches_differences() -> None:
    table = {"columns": ["name", "start_s"], "rows": [["a", 0.0], ["b", 1.5]]}
    assert (
        gc.diff({"x": 1.0 + 1e-12, "t": table, "n": 3, "s": "a"}, {"x": 1.0, "t": table, "n": 3, "s": "a"})
        == []
    )
    assert gc.diff(5e-13, 0.0) == []  # near zero: absolute tolerance
    assert gc.diff(float("nan"), float("nan")) == []
    moved = {"columns": ["name", "start_s"], "rows": [["a", 0.0], ["b", 1.5 * (1 + 1e-8)]]}
    assert gc.diff(moved, table, "records") == [
        "records.rows[1](b).start_s: 1.500000015 != 1.5 (relative difference 1e-08)"
    ]
    assert gc.diff({"a": 1}, {"a": 1, "b": 2}) == ["answer.b: missing"]
    assert gc.diff({"a": 2}, {"a": 1}) == ["answer.a: 2 != 1"]
    assert gc.diff([True], [1]) == ["answer[0]: True != 1"]
    assert gc.diff({"events": 1}, {}) == ["answer.events: unexpected key (value 1)"]
    assert "events" not in gc.answers({"events": 7, "latency_s": 1.0})
