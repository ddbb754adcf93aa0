"""Leave-one-architecture-out (LOAO) check of the calibrated constants: for each family of measured rows
that covers two GPU architectures, refit the family's few constants on the other architecture's rows only
(the same grid search that set them, minimizing the median |err| of one quantity), predict the held-out
architecture's rows with them and report median |err|, bias and the coverage of the 80 % split-conformal
band (`intervals.fit_intervals`) fitted on the training residuals. It says how far a constant fitted on
one generation can be carried to another, which is what every preset without measurements of its own does.

Constants are overridden in memory (`load_system(..., overrides)`, the `--set` mechanism), never by
editing the presets. A family whose rows all come from one architecture is reported as such.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.llm import load_llm
from simcore.config import load_preset
from simcore.system import load_system
from simcore.validate.e2e import shipped_model, steady_state
from simcore.validate.intervals import MIN_ROWS, fit_intervals
from simcore.validate.rows import Row, Simulator, _approx, _Fields, _read_csv, load_rows, map_device

COVERAGE = 0.8  # the band whose held-out coverage is reported (the one `--intervals` writes)


@dataclass(frozen=True)
class Constant:
    """A calibrated preset key and the grid it is searched over (values in `unit`)."""

    key: str  # dotted key of a GPU preset, e.g. "efficiency.tensor"
    grid: tuple[float, ...]
    unit: str = ""  # the unit of the grid values as a preset writes it ("KiB"); "" for a bare number
    si_per_unit: float = 1.0  # SI value of one grid unit (the loaded parameter is in SI)

    def override(self, value: float) -> str:
        return f"{self.key}={value:g} {self.unit}".strip()

    def shipped(self, params: Mapping[str, Any]) -> float:
        """The value a loaded GPU carries, in grid units."""
        node: Any = params
        for part in self.key.split("."):
            node = node[part]
        return float(node) / self.si_per_unit


@dataclass(frozen=True)
class Family:
    """Measured rows of one kind and the constants the docs say were fitted on them."""

    name: str
    files: tuple[str, ...]  # file names, looked up in the search directories
    quantities: tuple[str, ...]  # Row.family values reported; the first is the one the search minimizes
    constants: tuple[Constant, ...] = ()
    stride: int = 1  # keep every stride-th measured record per file (run time)
    note: str = ""


def _fractions(lo: float, hi: float, step: float) -> tuple[float, ...]:
    return tuple(round(lo + i * step, 4) for i in range(round((hi - lo) / step) + 1))


#: the families of docs/validation.md and the constants fitted on them ("Per-architecture constants",
#: "Power and energy"); each grid is centred on the shipped value and spans what the docs compare it with
FAMILIES: tuple[Family, ...] = (
    Family(
        "GEMM",
        ("gemm_a100.csv", "gemm_hopper.csv"),
        ("gemm",),
        (
            Constant("efficiency.tensor", _fractions(0.60, 1.00, 0.02)),
            Constant("dram_inflight_per_cta", (16.0, 20.0, 24.0), "KiB", 1024.0),
        ),
    ),
    Family(
        "serving (vLLM)",
        ("energy_a100_h100.csv",),
        ("llm serving power", "llm energy per token", "llm serving ITL"),
        (
            Constant("energy.active_share", _fractions(0.45, 0.75, 0.05)),
            Constant("energy.compute_share", (0.3, 0.4, 0.5)),
        ),
        note="A100: power only (its rows state no ITL, and count 'total tokens' of undefined kind)",
    ),
    Family("attention", ("attention_a100.csv",), ("attention",)),
    Family("softmax / layernorm / GeLU", ("ops_misc_a100.csv",), ("softmax", "layernorm", "gelu")),
    Family("HBM, PCIe, NVLink, all-reduce", ("links_a100.csv",), ("hbm", "pcie", "nvlink", "allreduce")),
)


# ------------------------------------------------------------------------------------- overrides


class OverrideSimulator(Simulator):
    """A Simulator whose GPUs carry `overrides` (`--set` style, `key=value`): on a device preset as given,
    on a system preset for each device group whose preset is a GPU (`gpu.energy.active_share=...`)."""

    #: every instance, for the life of the process: e2e caches serving states by id(simulator), so no id
    #: may be reused by a simulator with other constants (`release` drops an instance's loaded systems)
    _alive: list[OverrideSimulator] = []

    def __init__(self, overrides: Sequence[str]) -> None:
        super().__init__()
        self.overrides = tuple(overrides)
        OverrideSimulator._alive.append(self)

    def release(self) -> None:
        self._systems.clear()

    def system(self, ref: str) -> Any:
        if ref not in self._systems:
            self._systems[ref] = load_system(ref, self.keys_for(ref))
        return self._systems[ref]

    def keys_for(self, ref: str) -> tuple[str, ...]:
        doc = load_preset("hardware", ref)
        if doc.data.get("type") != "system":
            return self.overrides
        groups = [name for name, entry in (doc.data.get("devices") or {}).items()
                  if isinstance(entry, Mapping) and entry.get("base")
                  and load_preset("hardware", str(entry["base"])).data.get("type") == "gpu"]  # fmt: skip
        return tuple(f"{g}.{o}" for g in groups for o in self.overrides)


# ------------------------------------------------------------------------------ A100 serving rows

_TOTALS = re.compile(r"total requests (\d+), total tokens (\d+), total time ([\d.]+) s, avg request latency "
                     r"([\d.]+) s")  # fmt: skip

#: prompt tokens per request of the A100 load generator (not in its results file): e2e's chat assumption
A100_PROMPT_TOKENS = 256


def load_totals_rows(path: str | Path, sim: Simulator) -> list[Row]:
    """Serving rows that give totals instead of a batch (the A100 rows of energy_a100_h100.csv: requests,
    tokens, run time and mean request latency over a ~10 min steady load): the mean number of requests in
    flight is Little's law, requests / time x latency; each request's tokens (the source's 'total tokens' /
    requests) are read as output tokens after a prompt of A100_PROMPT_TOKENS. Only the average power is
    compared: the rows state no inter-token latency, and their tokens may include prompts. Rows with a batch
    in their config are left to `validate data`."""
    file, header, records = _read_csv(Path(path))
    rows = []
    for line, values in records:
        f = _Fields(file, line, header, values)
        m = _TOTALS.search(f.text("config"))
        power = f.number("avg_power_W_all_devices")
        if m is None or power is None:
            continue
        requests, tokens = int(m.group(1)), int(m.group(2))
        seconds, latency = float(m.group(3)), float(m.group(4))
        batch, output = requests / seconds * latency, tokens / requests
        devices = f.integer("num_devices") or 1
        published = f.text("model")
        name = shipped_model(published)
        preset, why = map_device(f.text("hardware"))
        shape = f"{published} x{devices} in flight {batch:.2f}, {output:.1f} tokens/request"
        row = Row(file, line, f.text("hardware"), "llm serving power", "bf16", shape, "power", power,
                  _approx(f), f.text("source"), preset)  # fmt: skip
        if preset is None:
            row.reason = why
        elif name is None:
            row.reason = f"model {published!r} is not shipped"
        elif devices != 1:
            row.reason = "only single-GPU totals rows are mapped"
        else:
            state = (sim, preset, devices, name, batch, A100_PROMPT_TOKENS, output, "vllm",
                     tuple(load_llm(name).checkpoint_precision.items()))  # fmt: skip
            row.predict = lambda s=state: (steady_state(*s)["power"], "serving")  # type: ignore[misc]
        rows.append(row)
    return rows


# -------------------------------------------------------------------------------------- the search

Point = tuple[float, ...]


def measured_rows(family: Family, files: Sequence[Path], sim: Simulator) -> list[Row]:
    """The family's measured, simulable rows with predict hooks: every `stride`-th record of each file and
    GPU that has at least MIN_ROWS of them, all records of the others."""
    out: list[Row] = []
    for path in files:
        rows = [r for r in family_rows(family, path, sim) if r.mapped and not r.approx]
        keep: set[int] = set()
        for preset in {r.preset for r in rows}:  # each GPU's records thinned alike; a few are all kept
            lines = sorted({r.line for r in rows if r.preset == preset})
            keep.update(lines[:: family.stride] if len(lines) >= MIN_ROWS else lines)
        out += [r for r in rows if r.line in keep]
    return out


def family_rows(family: Family, path: Path, sim: Simulator) -> list[Row]:
    """The rows of one file that belong to the family (serving: with the totals rows)."""
    rows = load_rows(path, sim)
    if "llm serving power" in family.quantities:
        rows += load_totals_rows(path, sim)
    return [r for r in rows if r.family in family.quantities]


def architecture(preset: str, sim: Simulator) -> str:
    return str(sim.gpu(preset).params["architecture"])


def median_abs(rows: Iterable[Row]) -> float:
    errs = [abs(r.error) for r in rows]
    return statistics.median(errs) if errs else math.nan


@dataclass
class Grid:
    """Every row of a family predicted at every grid point of its constants."""

    family: Family
    files: tuple[Path, ...]
    points: list[Point] = field(default_factory=list)
    rows: dict[Point, list[Row]] = field(default_factory=dict)  # the same rows, in order, at every point

    def run(self) -> None:
        self.points = list(itertools.product(*(c.grid for c in self.family.constants)))
        for point in self.points:
            sim = OverrideSimulator(
                [c.override(v) for c, v in zip(self.family.constants, point, strict=True)]
            )
            rows = measured_rows(self.family, self.files, sim)
            for r in rows:
                r.predicted, r.bound = r.predict()  # type: ignore[misc]
            self.rows[point] = rows
            sim.release()


def best_point(grid: Grid, train: Callable[[Row], bool], shipped: Point) -> Point | None:
    """The grid point with the lowest median |err| of the objective quantity on the training rows; ties go
    to the point nearest the shipped values (in grid steps: a constant the rows do not constrain keeps its
    value). None when there is no training row."""
    objective = grid.family.quantities[0]
    scored = []
    for point in grid.points:
        err = median_abs(r for r in grid.rows[point] if r.family == objective and train(r))
        if math.isnan(err):
            return None
        steps = sum(
            abs(v - s) / _step(c) for c, v, s in zip(grid.family.constants, point, shipped, strict=True)
        )
        scored.append((round(err, 12), steps, point))
    return min(scored)[2]


def _on_grid(points: Sequence[Point], values: Point) -> Point | None:
    """The grid point equal to `values` (to rounding), if the grid has it."""
    same = (
        p for p in points if all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(p, values, strict=True))
    )
    return next(same, None)


def _step(c: Constant) -> float:
    return min((b - a for a, b in itertools.pairwise(sorted(c.grid))), default=1.0) or 1.0


@dataclass(frozen=True)
class Fold:
    """One held-out architecture of one family and one quantity: what was fitted and how it predicts."""

    family: str
    quantity: str
    held_out: str
    trained_on: str
    constants: dict[str, tuple[float, float]]  # key -> (refit, shipped)
    train_rows: int
    held_rows: int
    median_abs: float
    bias: float
    median_abs_shipped: float  # the held-out rows at the shipped constants
    band: tuple[float, float] | None  # 80 % band of predicted/measured from the training residuals
    coverage: float | None  # share of held-out rows inside it
    note: str = ""

    def record(self) -> dict[str, Any]:
        """Plain data for JSON (a figure that could not be computed is None, never NaN)."""
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v
                for k, v in ((k, getattr(self, k)) for k in self.__dataclass_fields__)}  # fmt: skip


def folds(grid: Grid, sim: Simulator) -> list[Fold]:
    """Hold each architecture out in turn: refit on the others, predict it."""
    fam = grid.family
    any_rows = grid.rows[grid.points[0]]
    arch = {r.preset: architecture(r.preset or "", sim) for r in any_rows}
    archs = sorted(set(arch.values()))
    out = []
    for held in archs:
        train_presets = [p for p, a in arch.items() if a != held]
        shipped = tuple(c.shipped(sim.gpu(train_presets[0] or "").params) for c in fam.constants)
        best = best_point(grid, lambda r, h=held: arch[r.preset] != h, shipped)
        if best is None:
            continue
        ship_point = _on_grid(grid.points, shipped)
        at_best, at_shipped = grid.rows[best], grid.rows[ship_point] if ship_point else []
        constants = {c.key: (v, s) for c, v, s in zip(fam.constants, best, shipped, strict=True)}
        for quantity in fam.quantities:
            train = [r for r in at_best if r.family == quantity and arch[r.preset] != held]
            test = [r for r in at_best if r.family == quantity and arch[r.preset] == held]
            if not test:
                continue
            band = fit_intervals(train, COVERAGE).get(quantity)
            lo_hi, cover = None, None
            if band is not None:  # the band of ln(pred/meas) -> of pred/meas, and who falls inside it
                lo_hi = (math.exp(band["lo"]), math.exp(band["hi"]))
                cover = sum(
                    band["lo"] <= math.log(r.predicted / r.measured) <= band["hi"] for r in test
                ) / len(test)
            ship = [r for r in at_shipped if r.family == quantity and arch[r.preset] == held]
            out.append(Fold(fam.name, quantity, held, ", ".join(sorted(set(archs) - {held})), constants,
                            len(train), len(test), median_abs(test), statistics.median(r.error for r in test),
                            median_abs(ship), lo_hi, cover,
                            _why_no_band(band, len(train))))  # fmt: skip
    return out


def _why_no_band(band: Mapping[str, Any] | None, train_rows: int) -> str:
    if band is not None:
        return ""
    return f"{train_rows} training rows < {MIN_ROWS}" if train_rows else "no training rows of this quantity"


def architectures_of(family: Family, files: Sequence[Path], sim: Simulator) -> list[str]:
    """The architectures a family's simulable rows come from, figure-read ones included (no prediction)."""
    rows = [r for path in files for r in family_rows(family, path, sim) if r.mapped]
    return sorted({architecture(r.preset or "", sim) for r in rows})


def find_files(family: Family, dirs: Sequence[Path]) -> tuple[Path, ...]:
    """The family's files that exist in `dirs` (the first directory holding a name wins)."""
    out = []
    for name in family.files:
        hit = next((d / name for d in dirs if (d / name).is_file()), None)
        if hit is not None:
            out.append(hit)
    return tuple(out)


# ------------------------------------------------------------------------------------------ table


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{100 * x:+.1f}%" if signed else f"{100 * x:.1f}%"


def _constants(fold: Fold) -> str:
    return ", ".join(f"`{k}` {v:g} ({s:g})" for k, (v, s) in fold.constants.items())


def table(results: Sequence[Fold], single: Mapping[str, list[str]]) -> str:
    """Markdown: one line per (family, quantity, held-out architecture); families with one architecture
    on one line each, with no number."""
    head = ("| family | quantity | held out | trained on | refit constants (shipped) | train rows "
            "| held-out rows | held-out median \\|err\\| (shipped constants) | bias | 80% band of pred/meas "
            "| held-out coverage |\n|---|---|---|---|---|---:|---:|---:|---:|---|---:|")  # fmt: skip
    lines = [head]
    for f in results:
        band = f"{f.band[0]:.2f}-{f.band[1]:.2f}" if f.band else f"none ({f.note})" if f.note else "none"
        errors = f"{_pct(f.median_abs)} ({_pct(f.median_abs_shipped)}) | {_pct(f.bias, True)}"
        lines.append(
            f"| {f.family} | {f.quantity} | {f.held_out} | {f.trained_on} | {_constants(f)} | "
            f"{f.train_rows} | {f.held_rows} | {errors} | {band} | {_pct(f.coverage)} |"
        )
    for name, archs in single.items():
        why = f"n/a: one architecture ({', '.join(archs)})" if archs else "n/a: no rows found"
        lines.append(f"| {name} | - | {why} | - | - | - | - | - | - | - | - |")
    return "\n".join(lines)
