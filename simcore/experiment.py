"""Experiments: a system, a workload, an execution plan and a scenario, from Python or from a YAML file.

Loading checks everything before time zero (schema, placement, op kinds and dtypes the devices run);
`Experiment.run` hands the scenario the system, the model and the plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardware.gpu import ATTENTION_KERNELS
from models.cnn import BUILDERS
from models.llm import LLMSpec, load_llm
from models.onnx_import import load_onnx
from simcore.config import (
    Doc,
    Param,
    apply_overrides,
    build_dataclass,
    dataclass_schema,
    expand_hardware_shorthand,
    load_yaml,
    parse_yaml,
    positive,
    validate,
)
from simcore.engine import few_collections
from simcore.errors import ConfigError
from simcore.mapping import ExecutionPlan, place, with_kernels
from simcore.mapping.frameworks import FRAMEWORKS
from simcore.mapping.plan import SCHEDULES
from simcore.ops import DTYPE_BYTES
from simcore.precision import PRECISION_SCHEMA, PrecisionPlan, plan_from
from simcore.results import Result
from simcore.scenarios import SCENARIOS, Decode, Generate, Inference, Prefill, Scenario
from simcore.scenarios.base import LLMScenario
from simcore.system import System, load_system

__all__ = ["Decode", "Experiment", "Generate", "Inference", "Prefill", "load_experiment", "run", "simulate",
           "simulate_vision"]  # fmt: skip


def simulate(system: System | str, model: LLMSpec | str, scenario: Scenario, dtype: str = "bf16",
             tp: int | None = None, keep_records: bool = True, offload_weights: bool = False,
             pp: int = 1, microbatches: int = 1, dp: int = 1,
             precision: Mapping[str, str] | None = None, framework: str = "pytorch",
             attention: str | None = None) -> Result:  # fmt: skip
    """Simulate `scenario` of `model` on `system`: tensor parallelism over `tp` accelerators (default:
    all of them), `pp` pipeline stages fed `microbatches` micro-batches, `dp` replicas. With
    `offload_weights`, layer weights live in the nearest host CPU's memory and stream to the GPUs layer by
    layer, overlapped with compute (two layer buffers per GPU). `precision` overrides `dtype` per tensor
    class: {weights, activations, kv_cache, communication} (e.g. weights: int4, kv_cache: fp8). `framework`
    names the inference framework whose collective and attention kernels the pass calls
    (simcore.mapping.FRAMEWORKS; its attention kernel is the one it launches on the GPUs' architecture);
    `attention` names an attention kernel instead (hardware.gpu.ATTENTION_KERNELS)."""
    system = load_system(system) if isinstance(system, str) else system
    spec = load_llm(model) if isinstance(model, str) else model
    check_context(spec, scenario)
    if framework not in FRAMEWORKS:
        raise ConfigError(
            f"unknown framework {framework!r} (known: {', '.join(FRAMEWORKS)})", key="framework"
        )
    plan = ExecutionPlan(tp=tp, pp=pp, dp=dp, microbatches=microbatches, offload_weights=offload_weights,
                         precision=plan_from(dtype, precision), framework=framework)  # fmt: skip
    plan = with_kernels(system, place(system, spec, plan), plan, attention)
    with few_collections():
        return scenario.run(system, spec, plan, keep_records)


def check_context(spec: LLMSpec, scenario: Scenario) -> None:
    """Refuse a scenario whose sequences outgrow the model's maximum context (each scenario says how its
    sequences add up)."""
    if isinstance(scenario, LLMScenario):
        scenario.check_context(spec)


def is_onnx(model: object) -> bool:
    """Whether an experiment's `model` names an ONNX file (run as a vision-style inference)."""
    return isinstance(model, str | Path) and str(model).lower().endswith(".onnx")


def simulate_vision(system: System | str, network: str, batch: int = 1, dtype: str = "bf16",
                    keep_records: bool = True) -> Result:  # fmt: skip
    """One inference of a CNN/ViT (`models.cnn.BUILDERS`) or of an ONNX file (`network` a path ending in
    .onnx) on the first device that runs all its ops."""
    system = load_system(system) if isinstance(system, str) else system
    return Inference(batch).run(
        system, network, ExecutionPlan(precision=PrecisionPlan.uniform(dtype)), keep_records
    )


# ------------------------------------------------------------------------------------------ YAML


EXPERIMENT_SCHEMA = {
    "name": Param("experiment name", type=str, default="experiment"),
    "description": Param("free text", type=str, default=""),
    "model": Param(
        "shipped LLM name, path to a HF config.json, a vision network (resnet50, vit_base...) or a path to "
        "an .onnx file (scenario kind inference)",
        type=str,
    ),  # fmt: skip
    "dtype": Param(
        "dtype of weights, activations, KV cache and collectives",
        type=str,
        default="bf16",
        choices=tuple(DTYPE_BYTES),
    ),
    "precision": {k: Param(**v) for k, v in PRECISION_SCHEMA.items()},
    "framework": Param(
        "inference framework: which collective kernels the pass calls (pytorch: NCCL; vllm, sglang, "
        "tensorrt-llm: their one-shot all-reduce for small messages)",
        type=str,
        default="pytorch",
        choices=tuple(FRAMEWORKS),
    ),  # fmt: skip
    "kernels": {
        "attention": Param(
            "attention kernel of the LLM passes (fa2, fa3, fa1, triton, xformers, standard, sdpa-math; a "
            "decode step is flash-decoding whatever the kernel); default: the framework's on the GPUs' "
            "architecture",
            type=str,
            default=None,
            choices=tuple(ATTENTION_KERNELS),
        ),
    },  # fmt: skip
    "parallelism": {
        "tp": positive(
            "tensor-parallel degree (default: every accelerator over pp × dp)", type=int, default=None
        ),
        "pp": positive("pipeline-parallel stages", type=int, default=1),
        "ep": positive("expert-parallel degree (MoE models)", type=int, default=1),
        "ep_chunks": positive(
            "token chunks per MoE layer whose all-to-all overlaps the expert GEMMs of the others (Comet-style "
            "pipeline; 1: dispatch, experts, combine in turn)",
            type=int,
            default=1,
            maximum=64,
        ),
        "ep_comm_sm_share": Param(
            "share of every GPU's SMs that drives a chunked MoE layer's all-to-all while it overlaps the expert "
            "ops, which run on the rest (Comet; needs ep_chunks > 1)",
            default=0.0,
            minimum=0,
            exclusive_min=False,
            maximum=1,
            exclusive_max=True,
        ),
        "dp": positive("data-parallel replicas (the batch is split over them)", type=int, default=1),
        "microbatches": positive("micro-batches a pipeline splits each batch into", type=int, default=1),
        "schedule": Param("pipeline order", type=str, default="1f1b", choices=SCHEDULES),
        "devices": Param(
            "accelerators to use, in order (names or patterns such as node*.gpu*)", type=list, default=None
        ),  # fmt: skip
    },
    "offload": {
        "weights": Param(
            "keep layer weights in host memory and stream them to the GPUs", type=bool, default=False
        ),
        "kv": Param(
            "devices holding the KV cache (names or patterns; one, or a multiple of the ranks)",
            type=list,
            default=None,
        ),
        "attention": Param(
            "with offload.kv: decode attention near the KV (PIM, CSD) or the KV streamed "
            "to the GPUs every step",
            type=str,
            default="near",
            choices=("near", "stream"),
        ),
    },  # fmt: skip
    "scenario": {
        "kind": Param("what to simulate", type=str, choices=tuple(SCENARIOS)),
        **dataclass_schema(*SCENARIOS.values()),
    },
}


@dataclass
class Experiment:
    name: str
    system: System
    model: LLMSpec | str  # a vision network is named, not specified
    scenario: Scenario
    plan: ExecutionPlan
    doc: Doc

    @property
    def model_name(self) -> str:
        return self.model if isinstance(self.model, str) else self.model.name

    @property
    def dtype(self) -> str:
        return self.plan.dtype

    def run(self, keep_records: bool = True) -> Result:
        with few_collections():
            res = self.scenario.run(self.system, self.model, self.plan, keep_records)
        res.summary = {"experiment": self.name, "hardware": self.system.name, **res.summary}
        return res


def load_experiment(ref: str | Path | Mapping[str, Any] | Doc, overrides: Iterable[str] = ()) -> Experiment:
    """Parse and validate an experiment (file, mapping or Doc) with `--set` overrides; nothing runs yet."""
    if isinstance(ref, Doc):
        doc = ref
    elif isinstance(ref, Mapping):
        import yaml

        doc = parse_yaml(yaml.safe_dump(dict(ref), sort_keys=False), "<experiment>")
    else:
        doc = load_yaml(ref)
    doc = expand_hardware_shorthand(doc)
    # `--set hardware=PRESET` swaps the machine: the shorthand is read again after the overrides
    doc = expand_hardware_shorthand(apply_overrides(doc, overrides))
    if "hardware" not in doc.data:
        raise doc.error((), "missing required key 'hardware' (a preset name or path)")
    p = validate(doc, EXPERIMENT_SCHEMA, ignore=("hardware",))
    hw = doc.sub(("hardware",))
    if not isinstance(hw.data, Mapping) or "base" not in hw.data:
        raise doc.error(("hardware",), "expected a preset name, a YAML path, or a mapping with 'base:'")
    system = load_system(hw)
    sc = p["scenario"]
    cls = SCENARIOS[sc["kind"]]
    par = p["parallelism"]
    try:
        precision = plan_from(p["dtype"], p["precision"])
    except ConfigError as e:
        raise doc.error(tuple((e.key or "precision").split(".")), e.message) from None
    plan = ExecutionPlan(tp=par["tp"], pp=par["pp"], ep=par["ep"], dp=par["dp"], microbatches=par["microbatches"],
                         schedule=par["schedule"], devices=tuple(map(str, par["devices"] or ())),
                         ep_chunks=par["ep_chunks"], ep_comm_sm_share=par["ep_comm_sm_share"],
                         offload_weights=p["offload"]["weights"], precision=precision,
                         kv_devices=tuple(map(str, p["offload"]["kv"] or ())),
                         kv_attention=p["offload"]["attention"], framework=p["framework"])  # fmt: skip
    model: LLMSpec | str
    if is_onnx(p["model"]):
        if cls.workload != "vision":
            raise doc.error(("scenario", "kind"), f"an ONNX model runs under scenario kind 'inference', "
                                                  f"not {sc['kind']!r}")  # fmt: skip
        model = _onnx_path(doc, p["model"])
        try:
            load_onnx(model, batch=1)  # refuse a missing package, an unreadable file or unsupported ops now
        except ConfigError as e:
            raise doc.error(("model",), e.message) from None
    elif cls.workload == "vision":
        model = p["model"].lower().replace("-", "_")
        if model not in BUILDERS:
            raise doc.error(("model",), f"unknown vision network {p['model']!r} for an inference scenario "
                                        f"(known: {', '.join(BUILDERS)})")  # fmt: skip
    else:
        try:
            model = load_llm(p["model"])
        except ConfigError as e:
            raise doc.error(("model",), e.message) from None
    scenario = build_dataclass(cls, sc)
    if isinstance(model, LLMSpec):  # the placement is checked now, so a bad one names file and line
        try:
            check_context(model, scenario)
            _check_batch(scenario, plan)
            if plan.kv_devices and not getattr(scenario, "places_kv", False):
                raise ConfigError(f"offload.kv needs a scenario that puts the KV cache there (kind: "
                                  f"offload-decode), not {sc['kind']!r}", key="offload.kv")  # fmt: skip
            plan = with_kernels(system, place(system, model, plan), plan, p["kernels"]["attention"])
        except ConfigError as e:
            raise doc.error(tuple((e.key or "hardware").split(".")), e.message) from None
    return Experiment(p["name"], system, model, scenario, plan, doc)


def _onnx_path(doc: Doc, model: str) -> str:
    """An ONNX path as written, else relative to the experiment file's directory."""
    p = Path(model).expanduser()
    if not p.is_absolute() and not p.exists():
        file, _ = doc.where(("model",))
        beside = Path(file).parent / p
        if not file.startswith(("<", "--")) and beside.exists():
            p = beside
    if not p.is_file():
        raise doc.error(("model",), f"no such ONNX file {model!r}")
    return str(p)


def _check_batch(scenario: Scenario, plan: ExecutionPlan) -> None:
    if isinstance(scenario, LLMScenario):
        scenario.check_plan(plan)


def run(
    ref: str | Path | Mapping[str, Any], overrides: Iterable[str] = (), keep_records: bool = True
) -> Result:
    """Load, validate and simulate an experiment in one call."""
    return load_experiment(ref, overrides).run(keep_records)
