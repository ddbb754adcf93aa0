"""Experiments: a system, an LLM, a parallel layout and a scenario (prefill, decode step, generation),
from Python or from a YAML file, simulated to a Result.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.llm import LLMSpec, Parallel, build_pass, check_tp, load_llm, weight_bytes_per_device
from simcore.config import Doc, Param, apply_overrides, load_yaml, parse_yaml, positive, validate
from simcore.engine import Engine
from simcore.errors import ConfigError
from simcore.ops import DTYPE_BYTES, Attention, Gemm, dtype_bytes
from simcore.program import Program
from simcore.results import Result
from simcore.system import System, load_system


@dataclass(frozen=True)
class Prefill:
    batch: int = 1
    prompt_len: int = 512


@dataclass(frozen=True)
class Decode:
    """One decode step with `context_len` tokens already in the KV cache."""

    batch: int = 1
    context_len: int = 512


@dataclass(frozen=True)
class Generate:
    """Prefill a prompt, then decode until `new_tokens` tokens exist (the first comes from prefill)."""

    batch: int = 1
    prompt_len: int = 512
    new_tokens: int = 128


@dataclass(frozen=True)
class Inference:
    """One forward pass of a vision network (CNN or ViT) over `batch` frames."""

    batch: int = 1


Scenario = Prefill | Decode | Generate | Inference
SCENARIOS: dict[str, type] = {
    "prefill": Prefill,
    "decode": Decode,
    "generate": Generate,
    "inference": Inference,
}


def simulate(system: System | str, model: LLMSpec | str, scenario: Scenario, dtype: str = "bf16",
             tp: int | None = None, keep_records: bool = True, offload_weights: bool = False) -> Result:  # fmt: skip
    """Simulate `scenario` of `model` on `system` with tensor parallelism over its first `tp` GPUs
    (default: all of them). With `offload_weights`, layer weights live in the nearest host CPU's memory
    and stream to the GPUs layer by layer, overlapped with compute (two layer buffers per GPU)."""
    system = load_system(system) if isinstance(system, str) else system
    spec = load_llm(model) if isinstance(model, str) else model
    par, hosts = place(system, spec, dtype, tp, offload_weights)
    tp = par.tp
    eng = Engine(system, keep_records=keep_records)
    for dev in par.devices:
        eng.allocate(
            dev, f"{spec.name} weights", weight_bytes_per_device(spec, tp, dtype, 2 if hosts else None)
        )
    for host in set((hosts or {}).values()):
        eng.allocate(host, f"{spec.name} weights (host copy)", spec.params * dtype_bytes(dtype))
    b = scenario.batch
    summary: dict[str, Any] = {}
    if isinstance(scenario, Decode):
        kv_B = b * scenario.context_len * spec.kv_bytes_per_token(dtype) / tp
        for dev in par.devices:
            eng.allocate(dev, "kv_cache", kv_B)
        prog = Program.from_graph(build_pass(spec, par, b, 1, scenario.context_len + 1, dtype, "decode",
                                             weights_from=hosts))  # fmt: skip
        t = eng.run(prog)
        summary.update(latency_s=t, time_per_output_token_s=t, tokens_per_s=b / t)
    else:
        prompt = scenario.prompt_len
        total = prompt + (scenario.new_tokens if isinstance(scenario, Generate) else 1)
        g = build_pass(
            spec, par, b, prompt, prompt, dtype, "prefill", kv_alloc_tokens=total, weights_from=hosts
        )
        t_prefill = eng.run(Program.from_graph(g))
        summary.update(prefill_time_s=t_prefill, time_to_first_token_s=t_prefill)
        steps = scenario.new_tokens - 1 if isinstance(scenario, Generate) else 0
        if steps > 0:
            template = Program.from_graph(
                build_pass(spec, par, b, 1, prompt + 1, dtype, "decode", weights_from=hosts)
            )
            attention_steps = template.indices_of("attention")
            t_decode = 0.0
            for j in range(1, steps + 1):
                kv = prompt + j
                attn: dict[Attention, Attention] = {}

                def swap(op: Any, kv: int = kv, attn: dict = attn) -> Any:
                    if isinstance(op, Attention):
                        return attn.setdefault(op, Attention(op.name, op.dtype, op.batch, op.heads, op.kv_heads, 1, kv,
                                                             op.head_dim, op.causal))  # fmt: skip
                    return None

                step = template.replace_ops(swap, only=attention_steps) if j > 1 else template
                t_decode += eng.run(step)
            summary.update(decode_time_s=t_decode, time_per_output_token_s=t_decode / steps)
        tokens = b * (scenario.new_tokens if isinstance(scenario, Generate) else 1)
        latency = eng.env.now
        summary.update(latency_s=latency, tokens_per_s=tokens / latency, output_tokens=tokens)
    return _finish(eng, spec, par, summary, dtype)


def place(system: System, spec: LLMSpec, dtype: str, tp: int | None, offload_weights: bool
          ) -> tuple[Parallel, dict[str, str] | None]:  # fmt: skip
    """The tensor-parallel group (the first `tp` GPUs, default all) and, with offload, each GPU's host;
    checked before anything runs: enough GPUs, a split that divides the model, a dtype they compute."""
    gpus = system.of_type("gpu") or list(system.devices)
    tp = tp or len(gpus)
    if tp > len(gpus):
        raise ConfigError(f"tp={tp} but system {system.name!r} has {len(gpus)} GPUs", key="parallelism.tp")
    check_tp(spec, tp)
    par = Parallel(tuple(gpus[:tp]))
    for dev in par.devices:
        comp = system.devices[dev]
        if not comp.supports(Gemm("probe", dtype)):
            raise ConfigError(f"{comp.type_name} {dev!r} cannot run an LLM's operators", key="hardware")
        try:
            comp.op_cost(Gemm("probe", dtype, m=1, n=1, k=1))
        except ConfigError as e:
            raise ConfigError(e.message, key="dtype") from None
    return par, nearest_hosts(system, par.devices) if offload_weights else None


def nearest_hosts(system: System, gpus: tuple[str, ...]) -> dict[str, str]:
    """Each GPU's closest CPU (lowest-latency route): where its offloaded weights live."""
    cpus = system.of_type("cpu")
    if not cpus:
        raise ConfigError(f"weight offload needs a host CPU linked to the GPUs; {system.name!r} has none "
                          "(use a system preset such as workstation-rtx4090 or dgx-a100-8)", key="offload.weights")  # fmt: skip

    def latency(gpu: str, cpu: str) -> float:
        return sum(link.latency_s for _, _, link in system.route(gpu, cpu))

    return {gpu: min(cpus, key=lambda cpu: (latency(gpu, cpu), cpu)) for gpu in gpus}


def _finish(eng: Engine, spec: LLMSpec, par: Parallel, summary: dict[str, Any], dtype: str) -> Result:
    tokens = summary.get("output_tokens") or summary["tokens_per_s"] * summary["latency_s"]
    summary.update(model=spec.name, params=spec.params, tp=par.tp, dtype=dtype)
    return _account(eng, par.devices, summary, "token", tokens)


def _account(
    eng: Engine, devices: tuple[str, ...], summary: dict[str, Any], unit: str, units: float
) -> Result:
    """Energy (total, per `unit`, per component), events, memory and utilization into the summary."""
    ledger = eng.ledger()
    energy = ledger.energy_breakdown_J()
    total_J = sum(sum(v.values()) for v in energy.values())
    summary.update(
        {
            "energy_j": total_J,
            f"energy_per_{unit}_j": total_J / units,
            "events": ledger.events,
            "ops": ledger.ops,
            "peak_memory_B": {d: ledger.peak_B[d] for d in devices},
            "utilization": ledger.utilization(),
            "energy_by_component_j": {k: sum(v.values()) for k, v in energy.items()},
        }  # fmt: skip
    )
    return Result(summary, ledger)


def simulate_vision(system: System | str, network: str, batch: int = 1, dtype: str = "bf16",
                    keep_records: bool = True) -> Result:  # fmt: skip
    """One inference of a CNN/ViT (`models.cnn.BUILDERS`) on the first device that can run all its ops
    (a GPU or a systolic array), weights resident in that device's memory."""
    from models.cnn import build, param_count

    system = load_system(system) if isinstance(system, str) else system
    try:
        graph = build(network, batch, dtype=dtype)
    except ValueError as e:
        raise ConfigError(str(e), key="model") from None
    kinds = {op.kind for op in graph.ops()}
    device = next((n for n, c in system.devices.items() if all(k in c.COSTS for k in kinds)), None)
    if device is None:
        raise ConfigError(
            f"no device in {system.name!r} runs every op of {network} ({', '.join(sorted(kinds))})"
        )
    eng = Engine(system, keep_records=keep_records)
    eng.allocate(device, f"{network} weights", param_count(graph) * dtype_bytes(dtype))
    t = eng.run(Program.from_graph(graph, (device,)))
    summary: dict[str, Any] = {"latency_s": t, "frames_per_s": batch / t, "model": network, "batch": batch,
                               "dtype": dtype, "device": device}  # fmt: skip
    return _account(eng, (device,), summary, "frame", batch)


# ------------------------------------------------------------------------------------------ YAML

EXPERIMENT_SCHEMA = {
    "name": Param("experiment name", type=str, default="experiment"),
    "description": Param("free text", type=str, default=""),
    "model": Param(
        "shipped LLM name, path to a HF config.json, or a vision network (resnet50, vit_base...)", type=str
    ),  # fmt: skip
    "dtype": Param("weights/activations dtype", type=str, default="bf16", choices=tuple(DTYPE_BYTES)),
    "parallelism": {"tp": positive("tensor-parallel degree (default: every GPU)", type=int, default=None)},
    "offload": {
        "weights": Param(
            "keep layer weights in host memory and stream them to the GPUs", type=bool, default=False
        )
    },  # fmt: skip
    "scenario": {
        "kind": Param("what to simulate", type=str, choices=tuple(SCENARIOS)),
        "batch": positive("sequences in the batch", type=int, default=1),
        "prompt_len": positive("prompt tokens (prefill, generate)", type=int, default=512),
        "new_tokens": positive("tokens to generate (generate)", type=int, default=128),
        "context_len": positive("tokens in the KV cache (decode)", type=int, default=512),
    },
}


@dataclass
class Experiment:
    name: str
    system: System
    model: LLMSpec | str  # a vision network is named, not specified
    scenario: Scenario
    dtype: str
    tp: int | None
    doc: Doc
    offload_weights: bool = False

    @property
    def model_name(self) -> str:
        return self.model if isinstance(self.model, str) else self.model.name

    def run(self, keep_records: bool = True) -> Result:
        if isinstance(self.scenario, Inference):
            res = simulate_vision(self.system, str(self.model), self.scenario.batch, self.dtype, keep_records)
        else:
            res = simulate(self.system, self.model, self.scenario, self.dtype, self.tp, keep_records,
                           self.offload_weights)  # fmt: skip
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
    if not isinstance(doc.data, Mapping):
        raise doc.error((), "an experiment must be a mapping")
    if isinstance(
        doc.data.get("hardware"), str
    ):  # `hardware: NAME` is shorthand for `hardware: {base: NAME}`
        data = copy.deepcopy(doc.data)
        data["hardware"] = {"base": data["hardware"]}
        origin = dict(doc.origin)
        origin[("hardware", "base")] = doc.where(("hardware",))
        doc = Doc(data, origin, doc.file)
    doc = apply_overrides(doc, overrides)
    if "hardware" not in doc.data:
        raise doc.error((), "missing required key 'hardware' (a preset name or path)")
    p = validate(doc, EXPERIMENT_SCHEMA, ignore=("hardware",))
    hw = doc.sub(("hardware",))
    if not isinstance(hw.data, Mapping) or "base" not in hw.data:
        raise doc.error(("hardware",), "expected a preset name, a YAML path, or a mapping with 'base:'")
    system = load_system(hw)
    sc = p["scenario"]
    cls = SCENARIOS[sc["kind"]]
    model: LLMSpec | str
    if cls is Inference:
        from models.cnn import BUILDERS

        model = p["model"].lower().replace("-", "_")
        if model not in BUILDERS:
            raise doc.error(("model",), f"unknown vision network {p['model']!r} for an inference scenario "
                                        f"(known: {', '.join(BUILDERS)})")  # fmt: skip
    else:
        try:
            model = load_llm(p["model"])
        except ConfigError as e:
            raise doc.error(("model",), e.message) from None
    fields = {k: v for k, v in sc.items() if k in cls.__dataclass_fields__}
    if isinstance(model, LLMSpec):  # the placement is checked now, so a bad one names file and line
        try:
            place(system, model, p["dtype"], p["parallelism"]["tp"], p["offload"]["weights"])
        except ConfigError as e:
            raise doc.error(tuple((e.key or "hardware").split(".")), e.message) from None
    return Experiment(
        p["name"],
        system,
        model,
        cls(**fields),
        p["dtype"],
        p["parallelism"]["tp"],
        doc,
        p["offload"]["weights"],
    )


def run(
    ref: str | Path | Mapping[str, Any], overrides: Iterable[str] = (), keep_records: bool = True
) -> Result:
    """Load, validate and simulate an experiment in one call."""
    return load_experiment(ref, overrides).run(keep_records)
