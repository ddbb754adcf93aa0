"""The golden cases: what `scripts/record_golden.py` records into tests/data/golden/<case>.json and what
tests/test_golden.py recomputes and compares. Each case returns only answers (simulated times, energies,
memory, utilizations, op records, predictions, study figures), never wall-clock timings and never the
SimPy event count (`events`), which a faster engine legitimately changes.

Only public entry points are used (`simcore.experiment.run/simulate/simulate_vision`, `Result.summary`,
`Result.records()`, `simcore.validate`, `simcore.sweep`, `simcore.studies`, the hardware components'
own cost API and the benchmark modules' functions), so the cases survive a rewrite of Engine/Program.

A case is a `Case(name, compute, needs, about)`; `needs` names what must be present for it to run:
"calibration" (the shared measurements in ../shared/calibration) or "pandas" (sweeps).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = ROOT / "tests" / "data" / "golden"
EXPERIMENTS_DIR = ROOT / "configs" / "experiments"
CALIBRATION = ROOT.parent / "shared" / "calibration"
VALIDATE_FILES = ("gemm_a100.csv", "attention_a100.csv", "links_a100.csv", "ops_misc_a100.csv")

#: summary keys that are implementation details, not answers: never recorded, never compared
EXCLUDED_SUMMARY_KEYS = frozenset({"events"})
#: the per-op record fields recorded (Result.records() minus `program`, an engine-internal index)
RECORD_FIELDS = (
    "name",
    "kind",
    "phase",
    "devices",
    "start_s",
    "end_s",
    "duration_s",
    "flops",
    "bytes",
    "bound",
    "dtype",
    "energy_j",
)

REL_TOL = 1e-9  # relative tolerance for every float
ABS_TOL = 1e-12  # absolute tolerance, for values near zero (e.g. differences of large timestamps)


@dataclass(frozen=True)
class Case:
    name: str
    compute: Callable[[], Any]
    needs: tuple[str, ...] = ()
    about: str = ""


CASES: list[Case] = []


def case(
    name: str, about: str, needs: tuple[str, ...] = ()
) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    def register(fn: Callable[[], Any]) -> Callable[[], Any]:
        CASES.append(Case(name, fn, needs, about))
        return fn

    return register


# --------------------------------------------------------------------------------------- helpers


def missing(c: Case) -> str | None:
    """Why case `c` cannot run here (None: it can)."""
    for need in c.needs:
        if need == "calibration":
            absent = [f for f in VALIDATE_FILES if not (CALIBRATION / f).is_file()]
            if absent or not (CALIBRATION / "scalesim_golden.csv").is_file():
                return f"shared calibration data not found under {CALIBRATION}"
        elif importlib.util.find_spec(need) is None:
            return f"{need} is not installed"
    return None


def golden_path(name: str) -> Path:
    return GOLDEN_DIR / f"{name}.json"


def to_json(obj: Any) -> Any:
    """Plain JSON data (dicts with str keys, lists, str, int, float, bool, None) from results that may hold
    tuples, numpy scalars or arrays."""
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalar or array
        return to_json(obj.tolist())
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"not JSON-able: {type(obj).__name__} {obj!r}")


def dumps(obj: Any, width: int = 110) -> str:
    """Sorted keys, floats at repr precision (round-trip exact), one line per container that fits in
    `width` columns; a list of scalars (a table row) always on one line."""

    def one(o: Any) -> str:
        return json.dumps(o, sort_keys=True, allow_nan=True, separators=(", ", ": "))

    def dump(o: Any, indent: int) -> str:
        flat = one(o)
        if not isinstance(o, dict | list) or not o or len(flat) + indent <= width:
            return flat
        if isinstance(o, list) and not any(isinstance(v, dict | list) for v in o):
            return flat
        pad = " " * (indent + 1)
        if isinstance(o, dict):
            items = [f"{pad}{one(k)}: {dump(o[k], indent + 1)}" for k in sorted(o)]
            return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
        return "[\n" + ",\n".join(pad + dump(v, indent + 1) for v in o) + "\n" + " " * indent + "]"

    return dump(obj, 0) + "\n"


def answers(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A result summary without its implementation details (EXCLUDED_SUMMARY_KEYS)."""
    return {k: v for k, v in summary.items() if k not in EXCLUDED_SUMMARY_KEYS}


def table(rows: Iterable[Mapping[str, Any]], columns: Iterable[str]) -> dict[str, Any]:
    """Rows as {"columns": [...], "rows": [[...], ...]}: one line per row in the JSON file."""
    cols = list(columns)
    return {"columns": cols, "rows": [[r[c] for c in cols] for r in rows]}


def records(result: Any) -> dict[str, Any]:
    return table(result.records(), RECORD_FIELDS)


def raised(fn: Callable[[], Any]) -> dict[str, Any]:
    """The simulator error `fn` raises, as answers: its class and, for OutOfMemory, the sizes."""
    from simcore.errors import ConfigError, OutOfMemory, SimError

    try:
        fn()
    except OutOfMemory as e:
        return {
            "raises": "OutOfMemory",
            "tensor": e.tensor,
            "device": e.device,
            "needed_B": e.needed_B,
            "free_B": e.free_B,
            "capacity_B": e.capacity_B,
        }
    except ConfigError as e:
        return {"raises": "ConfigError", "key": e.key}
    except SimError as e:
        return {"raises": type(e).__name__}
    raise AssertionError("expected a simulator error")


def _bench(name: str) -> ModuleType:
    """benchmarks/<name>.py, loaded by path (the repository root need not be on sys.path)."""
    spec = importlib.util.spec_from_file_location(f"golden_{name}", ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _is_timing(key: str) -> bool:
    """Benchmark figures that are measurements of this machine, not answers of the model."""
    return (
        any(s in key for s in ("wall", "per_s", "per_min", "elapsed", "events"))
        or key == "cached_rerun_speedup"
    )


def _no_timings(figures: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in figures.items() if not _is_timing(k)}


# ------------------------------------------------------------------- (a) every shipped experiment


def _experiment_case(path: Path) -> None:
    def compute() -> Any:
        from simcore.experiment import run

        return answers(run(path, keep_records=False).summary)

    CASES.append(
        Case(f"experiment_{path.stem}", compute, (), f"simcore.experiment.run('{path.relative_to(ROOT)}')")
    )


for _path in sorted(EXPERIMENTS_DIR.glob("*.yaml")):
    _experiment_case(_path)


# ------------------------------------------------------------------------- (b) per-op records


@case(
    "records_decode_llama2_7b_a100",
    "simulate('a100-sxm4-80gb', 'llama-2-7b', Decode(1, 512)): summary, records",
)
def _records_decode() -> Any:
    from simcore.experiment import Decode, simulate

    res = simulate("a100-sxm4-80gb", "llama-2-7b", Decode(batch=1, context_len=512))
    return {"summary": answers(res.summary), "records": records(res)}


@case(
    "records_offload_generate_llama2_13b_rtx4090",
    "llama-2-13b Generate(1, 64, 2) on workstation-rtx4090 with weight offload: summary, records",
)
def _records_offload() -> Any:
    from simcore.experiment import Generate, simulate

    res = simulate(
        "workstation-rtx4090",
        "llama-2-13b",
        Generate(batch=1, prompt_len=64, new_tokens=2),
        offload_weights=True,
    )
    return {"summary": answers(res.summary), "records": records(res)}


@case(
    "records_prefill_tp8_llama3_8b_dgx_h100",
    "llama-3-8b Prefill(2, 256), tp 8 on dgx-h100-8: summary, records",
)
def _records_tp8() -> Any:
    from simcore.experiment import Prefill, simulate

    res = simulate("dgx-h100-8", "llama-3-8b", Prefill(batch=2, prompt_len=256), tp=8)
    return {"summary": answers(res.summary), "records": records(res)}


# ---------------------------------------------------------------- (c) scenario kinds and branches


def _llm_case(
    name: str,
    system: str,
    model: str,
    scenario: str,
    dtype: str = "bf16",
    tp: int | None = None,
    offload: bool = False,
) -> None:
    """A summary of `simulate`; `scenario` is "Kind(field=value, ...)" of simcore.experiment's scenarios."""
    kind, _, fields = scenario.partition("(")
    kwargs = {k.strip(): int(v) for k, v in (f.split("=") for f in fields.rstrip(")").split(","))}

    def compute() -> Any:
        from simcore import experiment

        res = experiment.simulate(
            system,
            model,
            getattr(experiment, kind)(**kwargs),
            dtype=dtype,
            tp=tp,
            keep_records=False,
            offload_weights=offload,
        )
        return answers(res.summary)

    about = (
        f"simulate({system!r}, {model!r}, {scenario}, dtype={dtype!r}, tp={tp}, offload_weights={offload})"
    )
    CASES.append(Case(f"summary_{name}", compute, (), about))


for _name, _args in {
    "prefill_llama3_8b_h100": ("h100-sxm5-80gb", "llama-3-8b", "Prefill(batch=4, prompt_len=512)"),
    "decode_llama3_8b_h100": ("h100-sxm5-80gb", "llama-3-8b", "Decode(batch=16, context_len=1024)"),
    "generate_llama3_8b_h100": (
        "h100-sxm5-80gb",
        "llama-3-8b",
        "Generate(batch=4, prompt_len=256, new_tokens=16)",
    ),
    "decode_llama3_8b_h100_fp8": ("h100-sxm5-80gb", "llama-3-8b", "Decode(batch=8, context_len=2048)", "fp8"),
    "prefill_llama2_7b_rtx4090": ("rtx-4090", "llama-2-7b", "Prefill(batch=1, prompt_len=512)"),
    "decode_llama2_7b_rtx4090": ("rtx-4090", "llama-2-7b", "Decode(batch=8, context_len=2048)"),
    "generate_llama2_7b_rtx4090": (
        "rtx-4090",
        "llama-2-7b",
        "Generate(batch=2, prompt_len=128, new_tokens=8)",
    ),
    "decode_llama3_8b_rtx4090": ("rtx-4090", "llama-3-8b", "Decode(batch=4, context_len=1024)"),
    "prefill_llama2_7b_t4_fp16": ("t4", "llama-2-7b", "Prefill(batch=1, prompt_len=256)", "fp16"),
    "decode_llama2_7b_t4_fp16": ("t4", "llama-2-7b", "Decode(batch=2, context_len=512)", "fp16"),
    "generate_llama2_7b_t4_fp16": (
        "t4",
        "llama-2-7b",
        "Generate(batch=1, prompt_len=128, new_tokens=4)",
        "fp16",
    ),
    "generate_one_token_llama2_7b_a100": (
        "a100-sxm4-80gb",
        "llama-2-7b",
        "Generate(batch=2, prompt_len=128, new_tokens=1)",
    ),
    "generate_tp2_llama3_8b_dgx_a100": (
        "dgx-a100-8",
        "llama-3-8b",
        "Generate(batch=4, prompt_len=256, new_tokens=8)",
        "bf16",
        2,
    ),
    "generate_tp4_llama3_8b_dgx_a100": (
        "dgx-a100-8",
        "llama-3-8b",
        "Generate(batch=4, prompt_len=256, new_tokens=8)",
        "bf16",
        4,
    ),
    "decode_offload_tp2_llama2_13b_dgx_a100": (
        "dgx-a100-8",
        "llama-2-13b",
        "Decode(batch=4, context_len=512)",
        "bf16",
        2,
        True,
    ),
}.items():
    _llm_case(_name, *_args)


#: every shipped LLM, one decode step on a DGX H100 (tp 8, or 4 where 8 does not divide the heads)
ZOO = {
    "gpt3-175b": 8,
    "llama-2-13b": 8,
    "llama-2-70b": 8,
    "llama-2-7b": 8,
    "llama-3-70b": 8,
    "llama-3-8b": 8,
    "mistral-7b": 8,
    "opt-13b": 8,
    "qwen2-7b": 4,
    "yi-34b": 8,
}


@case(
    "summary_decode_model_zoo_dgx_h100",
    "every shipped LLM: Decode(4, 1024) on dgx-h100-8, tp 8 (qwen2-7b: 4)",
)
def _zoo() -> Any:
    from simcore.experiment import Decode, simulate

    return {
        m: answers(
            simulate("dgx-h100-8", m, Decode(batch=4, context_len=1024), tp=tp, keep_records=False).summary
        )
        for m, tp in ZOO.items()
    }


@case("summary_vision_resnet50_a100", "simulate_vision('a100-sxm4-80gb', 'resnet50', batch=8)")
def _vision_a100() -> Any:
    from simcore.experiment import simulate_vision

    return answers(simulate_vision("a100-sxm4-80gb", "resnet50", batch=8, keep_records=False).summary)


@case("summary_vision_resnet50_tpuv4", "simulate_vision('tpuv4-like', 'resnet50', batch=8)")
def _vision_tpu() -> Any:
    from simcore.experiment import simulate_vision

    return answers(simulate_vision("tpuv4-like", "resnet50", batch=8, keep_records=False).summary)


@case(
    "summary_vision_experiments",
    "inference scenarios from experiment mappings: vit_base, mobilenet_v2 on h100",
)
def _vision_experiments() -> Any:
    from simcore.experiment import run

    out = {}
    for net, hw, batch in (
        ("vit_base", "h100-sxm5-80gb", 4),
        ("mobilenet_v2", "h100-sxm5-80gb", 16),
        ("efficientnet_b0", "tpuv4-like", 8),
    ):
        spec = {
            "name": f"golden-{net}",
            "hardware": hw,
            "model": net,
            "scenario": {"kind": "inference", "batch": batch},
        }
        out[f"{net}_{hw}"] = answers(run(spec, keep_records=False).summary)
    return out


@case(
    "errors_out_of_memory_and_config",
    "the simulator's refusals: weights or KV cache too big, a dtype a GPU lacks",
)
def _errors() -> Any:
    from simcore.experiment import Decode, simulate

    return {
        "llama2_13b_rtx4090_weights": raised(lambda: simulate("rtx-4090", "llama-2-13b", Decode(1, 512))),
        # 128 x 2048 tokens: the KV cache of 64 x 4096, inside Llama-2's 4096-position context
        "llama2_7b_rtx4090_kv_cache": raised(lambda: simulate("rtx-4090", "llama-2-7b", Decode(128, 2048))),
        "llama2_7b_t4_bf16": raised(lambda: simulate("t4", "llama-2-7b", Decode(1, 512), dtype="bf16")),
        "qwen2_7b_tp8": raised(lambda: simulate("dgx-h100-8", "qwen2-7b", Decode(1, 512), tp=8)),
    }


# ------------------------------------------------------------------------ (d) simcore validate data


def _validate_paths() -> list[str]:
    return [str(CALIBRATION / f) for f in VALIDATE_FILES]


@case(
    "validate_data_a100_report",
    "simcore validate data on shared/calibration/{gemm,attention,links,ops_misc}_a100.csv",
    ("calibration",),
)
def _validate_report() -> Any:
    from simcore.validate import run_data

    with contextlib.redirect_stdout(io.StringIO()):
        report = run_data(_validate_paths(), None, as_json=False, plot=False)
    report["files"] = [Path(f).name for f in report["files"]]
    for row in report["unmapped"]:
        row["file"] = Path(row["file"]).name
    return report


@case(
    "validate_data_a100_rows",
    "per-row predictions of simcore validate data (every simulated row; harness: "
    "a host timing harness's per-call cost replaced the launch gap)",
    ("calibration",),
)
def _validate_rows() -> Any:
    from simcore.validate import Simulator, load_rows

    sim = Simulator()
    rows = [r for f in _validate_paths() for r in load_rows(f, sim)]
    out = []
    for r in rows:
        if r.mapped and r.predict is not None:
            r.predicted, r.bound = r.predict()
            out.append({**r.record(), "file": Path(r.file).name, "harness": bool(r.harness)})
    cols = ("file", "line", "family", "preset", "dtype", "quantity", "predicted", "bound", "harness")
    return {"rows": len(rows), "units": {"time": "s", "bandwidth": "B/s"}, "predictions": table(out, cols)}


# --------------------------------------------------------------------------- (e) benchmark answers


@case(
    "bench_spine", "benchmarks/bench_spine.py figures without timings (GPT-3: see experiment_gpt3-dgx-a100)"
)
def _bench_spine() -> Any:
    from simcore.ops import Gemm
    from simcore.system import load_system

    b = _bench("bench_spine")
    gpu = load_system("h100-sxm5-80gb").devices["gpu"]
    op = Gemm("g", "bf16", m=8192, n=8192, k=8192)
    cost = gpu.op_cost(op)
    return {
        "bench": _no_timings({**b._gemm(), **b._decode(), **b._contention()}),
        "h100_gemm_8192_bf16_duration_s": cost.duration_s,
        "h100_gemm_8192_bf16_bound": cost.bound,
    }


@case(
    "bench_sweep_small",
    "benchmarks/bench_sweep.py SPEC with 24 random points on one worker: stats and points",
    ("pandas",),
)
def _bench_sweep() -> Any:
    import copy

    import simcore

    spec = copy.deepcopy(_bench("bench_sweep").SPEC)
    spec["sampling"]["samples"] = 24
    keys = ("points", "unique", "computed", "cached", "skipped", "infeasible", "errors")
    with tempfile.TemporaryDirectory() as out:
        df = simcore.sweep(spec, out=out, workers=1, cache=False, progress=False)
        again = simcore.sweep(spec, out=out, workers=1, progress=False)
    cols = [
        *spec["axes"],
        "status",
        "time_per_output_token_s",
        "tokens_per_s",
        "energy_per_token_j",
        "pareto",
    ]
    return {
        "stats": {k: df.attrs["stats"][k] for k in keys},
        "cached_rerun_stats": {k: again.attrs["stats"][k] for k in keys},
        "points": table(df[cols].to_dict("records"), cols),
    }


@case("bench_systolic", "benchmarks/bench_systolic.py figures without timings (shared golden CSV: own case)")
def _bench_systolic() -> Any:
    b = _bench("bench_systolic")
    figures = {**b._resnet50(), **b._gemm(), **b._array_size()}
    figures["scalesim3_runs_cycles_exact"] = b._exactness()["scalesim3_runs_cycles_exact"]
    return _no_timings(figures)


@case(
    "bench_systolic_scalesim_golden",
    "benchmarks/bench_systolic.py exactness on shared scalesim_golden.csv",
    ("calibration",),
)
def _bench_systolic_golden() -> Any:
    return {"golden_csv_rows_exact": _bench("bench_systolic")._exactness()["golden_csv_rows_exact"]}


@case("bench_validation", "benchmarks/bench_validation.py figures without timings", ("calibration",))
def _bench_validation() -> Any:
    return _no_timings(_bench("bench_validation").run())


# --------------------------------------------------------------------------- (f) notebook figures

NB01_BASE = {
    "name": "whatif",
    "hardware": "a100-sxm4-80gb",
    "model": "llama-3-8b",
    "dtype": "bf16",
    "scenario": {"kind": "decode", "batch": 1, "context_len": 1024},
}
NB01_GPUS = ("a100-sxm4-80gb", "h100-sxm5-80gb", "h200-sxm-141gb")


@case(
    "notebook01_gemm_bound",
    "01_quickstart_whatif: ridge points, share of GEMM time compute-bound, crossover batch",
)
def _nb01_bound() -> Any:
    import simcore
    from simcore.component import ridge_point

    out: dict[str, Any] = {}
    for gpu in NB01_GPUS:
        dev = simcore.load_system(gpu).devices["gpu"]
        share = {}
        for batch in (32, 64, 128, 256, 512):
            res = simcore.run(NB01_BASE, [f"hardware.base={gpu}", f"scenario.batch={batch}"])
            gemm = [r for r in res.records() if r["kind"] == "gemm"]
            bound = sum(r["duration_s"] for r in gemm if r["bound"] == "compute")
            share[str(batch)] = bound / sum(r["duration_s"] for r in gemm)
        out[gpu] = {
            "ridge_spec_FLOP_per_B": ridge_point(dev, "bf16"),
            "gemm_compute_bound_share": share,
            "first_batch_mostly_compute_bound": min(
                (int(b) for b, s in share.items() if s >= 0.5), default=None
            ),
        }
    return out


@case("notebook01_sweep", "01_quickstart_whatif: the 3 GPUs x 10 batches decode sweep", ("pandas",))
def _nb01_sweep() -> Any:
    import simcore

    spec = {
        "name": "whatif-llama3-8b-decode",
        "base": NB01_BASE,
        "axes": {"hardware": list(NB01_GPUS), "scenario.batch": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]},
        "objectives": {"time_per_output_token_s": "min", "tokens_per_s": "max"},
    }
    with tempfile.TemporaryDirectory() as out:
        df = simcore.sweep(spec, out=out, workers=1, cache=False, progress=False)
    cols = [
        "hardware",
        "scenario.batch",
        "status",
        "time_per_output_token_s",
        "tokens_per_s",
        "energy_per_token_j",
        "pareto",
    ]
    return table(df[cols].to_dict("records"), cols)


@case(
    "notebook02_roofline_timeline",
    "02_roofline_timeline: Generate(8, 1024, 2) of llama-3-8b on h100-sxm5-80gb",
)
def _nb02() -> Any:
    import simcore

    res = simcore.simulate(
        "h100-sxm5-80gb", "llama-3-8b", simcore.Generate(batch=8, prompt_len=1024, new_tokens=2)
    )
    recs = list(res.records())
    by: dict[str, float] = {}
    for r in recs:
        key = f"{r['phase']}/{r['kind']}/{r['bound']}"
        by[key] = by.get(key, 0.0) + r["duration_s"]
    with tempfile.TemporaryDirectory() as d:
        trace = res.to_chrome_trace(Path(d) / "trace.json")
        events = json.loads(trace.read_text())["traceEvents"]
    return {
        "summary": answers(res.summary),
        "records": len(recs),
        "time_s_by_phase_kind_bound": by,
        "decode_start_s": min(r["start_s"] for r in recs if r["phase"] == "decode"),
        "chrome_trace_op_events": sum(e["ph"] == "X" for e in events),
    }


@case(
    "notebook03_dse_sweep",
    "03_dse_sweep: configs/sweeps/dse_hbm_sms_batch.yaml, Pareto front, sensitivity",
    ("pandas",),
)
def _nb03() -> Any:
    import simcore
    from simcore.sweep import load_sweep, sensitivity, sensitivity_summary

    spec = load_sweep(ROOT / "configs/sweeps/dse_hbm_sms_batch.yaml")
    with tempfile.TemporaryDirectory() as out:
        df = simcore.sweep(spec, out=out, workers=1, cache=False, progress=False)
        sens = sensitivity(
            spec,
            center={"hardware.memory.bandwidth": "3.35 TB/s", "hardware.sms": 132, "scenario.batch": 64},
            out=out,
            workers=1,
            cache=False,
            progress=False,
        )
    keys = ("points", "unique", "computed", "skipped", "infeasible", "errors")
    cols = [
        "hardware.memory.bandwidth",
        "hardware.sms",
        "scenario.batch",
        "status",
        "tokens_per_s",
        "energy_per_token_j",
        "time_per_output_token_s",
        "cost",
        "pareto",
    ]
    summ = sensitivity_summary(sens, "tokens_per_s")
    return {
        "stats": {k: df.attrs["stats"][k] for k in keys},
        "points": table(df[cols].to_dict("records"), cols),
        "pareto_points": int(df.pareto.sum()),
        "sensitivity_tokens_per_s": {axis: dict(row) for axis, row in summ.iterrows()},
        "sensitivity_order": list(summ.index),
    }


def _array_J(cost: Any) -> float:
    return sum(j for a, j in cost.energy_by_action_J.items() if a.startswith("mac.") or a == "pe.idle.cycle")


@case("notebook_systolic_mobilenet", "systolic_case_study (a): MobileNetV1 on a 64x64 array, three dataflows")
def _nb_systolic_a() -> Any:
    from simcore.studies import mobilenet_dataflow_study, utilization_by_kind

    out: dict[str, Any] = {}
    for mode in ("scalesim", "physical"):
        for df, cost in mobilenet_dataflow_study(rows=64, cols=64, mode=mode).items():
            k = utilization_by_kind(cost)
            dw = [x for x in cost.layers if x.kind == "depthwise"]
            pw = [x for x in cost.layers if x.kind == "pointwise"]
            out[f"{mode}_{df}"] = {
                "cycles": cost.cycles,
                "latency_s": cost.latency_s,
                "energy_J": cost.energy_J,
                "pe_utilization": cost.utilization(64 * 64),
                "depthwise_utilization_mean": sum(x.utilization for x in dw) / len(dw),
                "pointwise_utilization_mean": sum(x.utilization for x in pw) / len(pw),
                "utilization_by_kind": k,
                "depthwise_share_of_macs": sum(x.macs for x in dw) / cost.macs,
                "depthwise_share_of_latency": sum(x.latency_s for x in dw) / cost.latency_s,
                "layers": len(cost.layers),
            }
    return out


@case(
    "notebook_systolic_array_size", "systolic_case_study (b): ViT-Base/ResNet-50 on 32x32 vs 128x128 arrays"
)
def _nb_systolic_b() -> Any:
    from simcore.studies import array_size_study

    out: dict[str, Any] = {}
    for net in ("vit_base", "resnet50"):
        for mode in ("scalesim", "physical"):
            for gating in (True, False):
                r = array_size_study(
                    net, sizes=(32, 128), dataflow="ws", mode=mode, pe_idle_fraction=None if gating else 1.0
                )
                out[f"{net}_{mode}_{'gated' if gating else 'ungated'}"] = {
                    "latency_32_s": r.small.latency_s,
                    "latency_128_s": r.large.latency_s,
                    "speedup": r.speedup,
                    "gemm_cycle_speedup": r.small.cycles / r.large.cycles,
                    "pe_util_32": r.small.utilization(32 * 32),
                    "pe_util_128": r.large.utilization(128 * 128),
                    "energy_32_J": r.small.energy_J,
                    "energy_128_J": r.large.energy_J,
                    "energy_ratio": r.energy_ratio,
                    "array_energy_ratio": _array_J(r.large) / _array_J(r.small),
                    "pe_seconds_ratio": 128 * 128 * r.large.latency_s / (32 * 32 * r.small.latency_s),
                    "energy_by_action_32_J": r.small.energy_by_action_J,
                    "energy_by_action_128_J": r.large.energy_by_action_J,
                }
        out[f"{net}_physical_speedup_by_dram_Bps"] = {
            f"{bw:g}": array_size_study(
                net, sizes=(32, 128), dataflow="ws", mode="physical", overrides=[f"dram.bandwidth={bw:g} B/s"]
            ).speedup
            for bw in (10e9, 30e9, 100e9, 300e9, 1e12, 3e12)
        }
    return out


# --------------------------------------------------------------------------------------- compare


def is_table(o: Any) -> bool:
    return isinstance(o, dict) and set(o) == {"columns", "rows"} and isinstance(o["columns"], list)


def close(actual: float, expected: float) -> bool:
    if math.isnan(expected):
        return math.isnan(actual)
    if math.isinf(expected):
        return actual == expected
    return math.isclose(actual, expected, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def diff(actual: Any, expected: Any, path: str = "answer") -> list[str]:
    """Every difference between `actual` and `expected` (plain JSON data), as 'key.path: what' lines."""
    out: list[str] = []
    if is_table(expected) and is_table(actual):
        if actual["columns"] != expected["columns"]:
            return [f"{path}.columns: {actual['columns']} != expected {expected['columns']}"]
        cols = expected["columns"]
        ra, re_ = actual["rows"], expected["rows"]
        if len(ra) != len(re_):
            out.append(f"{path}.rows: {len(ra)} rows, expected {len(re_)}")
        for i, (a, e) in enumerate(zip(ra, re_, strict=False)):
            label = f"{path}.rows[{i}]" + (f"({e[cols.index('name')]})" if "name" in cols else "")
            if len(a) != len(cols):
                out.append(f"{label}: {len(a)} values, expected {len(cols)}")
                continue
            out += diff(dict(zip(cols, a, strict=True)), dict(zip(cols, e, strict=True)), label)
        return out
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: {type(actual).__name__} {actual!r}, expected a dict"]
        for k in sorted(set(expected) - set(actual)):
            out.append(f"{path}.{k}: missing")
        for k in sorted(set(actual) - set(expected)):
            out.append(f"{path}.{k}: unexpected key (value {actual[k]!r})")
        for k in sorted(set(expected) & set(actual)):
            out += diff(actual[k], expected[k], f"{path}.{k}")
        return out
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{path}: {type(actual).__name__} {actual!r}, expected a list"]
        if len(actual) != len(expected):
            out.append(f"{path}: length {len(actual)}, expected {len(expected)}")
        for i, (a, e) in enumerate(zip(actual, expected, strict=False)):
            out += diff(a, e, f"{path}[{i}]")
        return out
    if isinstance(expected, bool) or isinstance(actual, bool):
        return (
            []
            if type(actual) is type(expected) and actual == expected
            else [f"{path}: {actual!r} != {expected!r}"]
        )
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        if isinstance(expected, int) and isinstance(actual, int):
            return [] if actual == expected else [f"{path}: {actual!r} != {expected!r}"]
        if close(float(actual), float(expected)):
            return []
        rel = abs(actual - expected) / abs(expected) if expected else math.inf
        return [f"{path}: {actual!r} != {expected!r} (relative difference {rel:.3g})"]
    if type(actual) is not type(expected) or actual != expected:
        return [f"{path}: {actual!r} != expected {expected!r}"]
    return []
