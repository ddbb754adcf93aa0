"""Core subcommands: run, op, hw, models."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from simcore.cli import command, positive_int
from simcore.config import preset_names, preset_path
from simcore.errors import ConfigError, InternalError
from simcore.precision import DTYPE_BYTES
from simcore.tables import text_table


def _nonfinite(data: Any, path: str = "") -> tuple[str, Any] | None:
    """The first (dotted key, value) in `data` that is a non-finite number, or None."""
    if isinstance(data, dict):
        for k, v in data.items():
            hit = _nonfinite(v, f"{path}.{k}" if path else str(k))
            if hit:
                return hit
    elif isinstance(data, list | tuple):
        for i, v in enumerate(data):
            hit = _nonfinite(v, f"{path}.{i}" if path else str(i))
            if hit:
                return hit
    elif isinstance(data, float):
        if not math.isfinite(data):
            return path, data
    elif hasattr(data, "dtype") and hasattr(data, "item"):  # a numpy scalar
        return _nonfinite(data.item(), path)
    return None


def emit(data: dict[str, Any], as_json: bool, title: str | None = None) -> None:
    """Print a result as one JSON object (strict: no NaN or Infinity) or as a table. A non-finite figure
    is a bug, never output: InternalError (exit 70) names it in one line."""
    from simcore.results import summary_table

    bad = _nonfinite(data)
    if bad:
        raise InternalError(f"internal error: {bad[0] or 'result'} is {bad[1]!r}, not a finite number "
                            "(please report this input)")  # fmt: skip
    if as_json:
        try:
            text = json.dumps(data, sort_keys=True, default=float, allow_nan=False)
        except (ValueError, TypeError) as e:
            raise InternalError(f"internal error: result is not JSON: {e}") from None
        print(text)
    else:
        print(summary_table(data, title))


# ------------------------------------------------------------------------------------------- run
def _positive_float(flag: str) -> Any:
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not (math.isfinite(v) and v > 0):
            raise argparse.ArgumentTypeError(f"{flag} expects a positive number, got {text!r}")
        return v

    return parse


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="experiment YAML file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a dotted key")
    p.add_argument(
        "--trace", metavar="FILE", help="write a Chrome trace (Perfetto) to FILE (gzip if FILE ends .gz)"
    )
    p.add_argument(
        "--trace-max-mb",
        type=_positive_float("--trace-max-mb"),
        default=200.0,
        metavar="MB",
        help="stop writing trace events past MB megabytes, saying so (default 200)",
    )
    p.add_argument(
        "--trace-every",
        type=positive_int("--trace-every"),
        default=1,
        metavar="N",
        help="keep every op of prefill and of every Nth decode step in the trace (default 1: all)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


@command("run", _run_args)
def run_cmd(args: argparse.Namespace) -> int:
    """Simulate an experiment YAML (hardware + model + scenario) and print its summary."""
    from simcore.experiment import load_experiment

    exp = load_experiment(args.experiment, args.set)
    res = exp.run(keep_records=bool(args.trace))
    if args.trace:
        res.to_chrome_trace(args.trace, max_mb=args.trace_max_mb, every=args.trace_every)
    emit(res.summary, args.json, None if args.json else f"{exp.name}: {exp.model_name} on {exp.system.name}")
    return 0


# -------------------------------------------------------------------------------------------- op
def _hw_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hw", required=True, help="hardware preset name or YAML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset key")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPE_BYTES))
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _gemm_args(p: argparse.ArgumentParser) -> None:
    _hw_args(p)
    p.add_argument("-m", type=positive_int("-m"), required=True)
    p.add_argument("-n", type=positive_int("-n"), required=True)
    p.add_argument("-k", type=positive_int("-k"), required=True)
    p.add_argument("--batch", type=positive_int("--batch"), default=1)


def _attention_args(p: argparse.ArgumentParser) -> None:
    _hw_args(p)
    p.add_argument("--batch", type=positive_int("--batch"), default=1)
    p.add_argument("--heads", type=positive_int("--heads"), required=True)
    p.add_argument("--kv-heads", type=positive_int("--kv-heads"), default=None)
    p.add_argument("--q-len", type=positive_int("--q-len"), required=True)
    p.add_argument("--kv-len", type=positive_int("--kv-len"), default=None)
    p.add_argument("--head-dim", type=positive_int("--head-dim"), default=128)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--kernel", default="fa2", metavar="NAME",
                   help="attention kernel (hardware.gpu.ATTENTION_KERNELS: fa2, fa3, fa1, triton, xformers, "
                        "standard, sdpa-math); a query length <= 16 is flash-decoding whatever the kernel")  # fmt: skip


def _make_gemm(a: argparse.Namespace) -> Any:
    from simcore.ops import Gemm

    return Gemm("gemm", a.dtype, m=a.m, n=a.n, k=a.k, batch=a.batch)


def _make_attention(a: argparse.Namespace) -> Any:
    from hardware.gpu import ATTENTION_KERNELS
    from simcore.ops import Attention

    kvh = a.kv_heads or a.heads
    if a.heads % kvh:
        raise ConfigError(f"--heads {a.heads} is not a multiple of --kv-heads {kvh}")
    if a.kernel not in ATTENTION_KERNELS:
        raise ConfigError(f"unknown attention kernel {a.kernel!r} (known: {', '.join(ATTENTION_KERNELS)})",
                          key="--kernel")  # fmt: skip
    return Attention("attention", a.dtype, batch=a.batch, heads=a.heads, kv_heads=kvh, q_len=a.q_len,
                     kv_len=a.kv_len or a.q_len, head_dim=a.head_dim, causal=a.causal, kernel=a.kernel)  # fmt: skip


def _conv2d_args(p: argparse.ArgumentParser) -> None:
    from models.cnn import conv2d_cli_args

    _hw_args(p)
    conv2d_cli_args(p)


def _make_conv2d(a: argparse.Namespace) -> Any:
    from models.cnn import conv2d_from_args

    return conv2d_from_args(a)


#: op name -> (argument setup, op factory)
OP_COMMANDS: dict[str, tuple[Any, Any]] = {
    "gemm": (_gemm_args, _make_gemm),
    "attention": (_attention_args, _make_attention),
    "conv2d": (_conv2d_args, _make_conv2d),
}


def _op_args(p: argparse.ArgumentParser) -> None:
    from simcore import cli

    sub = p.add_subparsers(dest="op", metavar="OP", parser_class=cli._Parser, required=True)
    for name, (setup, _) in OP_COMMANDS.items():
        setup(sub.add_parser(name, help=f"cost of one {name}"))


@command("op", _op_args)
def op_cmd(args: argparse.Namespace) -> int:
    """Cost of a single operator on one device: time, energy, FLOPs, bytes, what bounds it."""
    from simcore.oprun import op_report
    from simcore.system import load_system

    op = OP_COMMANDS[args.op][1](args)
    system = load_system(args.hw, args.set)
    try:
        report = op_report(system, op)
    except ConfigError as e:  # a kernel the part cannot run (fa3 off Hopper) is the --kernel flag's fault
        if e.key != "kernel":
            raise
        raise ConfigError(e.message, key="--kernel") from None
    emit(report, args.json, f"{args.op} on {system.name}")
    return 0


# -------------------------------------------------------------------------------------------- hw
def _hw_cmd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("list", "show", "params"),
                   help="list presets; show one resolved; params: every parameter of a component type")  # fmt: skip
    p.add_argument(
        "name",
        nargs="?",
        help="preset (show) or component type: gpu, cpu, nvme, csd, dram, pim, systolic, link (params)",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true")


@command("hw", _hw_cmd_args)
def hw_cmd(args: argparse.Namespace) -> int:
    """List hardware presets, show one with every resolved value, its unit and where it came from, or list a
    component type's parameters with their units, defaults and meaning."""
    import json

    if args.action == "params":
        return _params(args)

    from simcore.config import load_preset

    if args.action == "list":
        rows = []
        for name in preset_names("hardware"):
            doc = load_preset("hardware", name)
            if doc.data.get("abstract"):
                continue
            rows.append((name, str(doc.data.get("type", "")), str(doc.data.get("description", ""))))
        if args.json:
            print(json.dumps([{"name": n, "type": t, "description": d} for n, t, d in rows]))
        else:
            print(text_table(("name", "type", "description"), rows))
        return 0
    if not args.name:
        raise ConfigError("hw show needs a preset NAME", key="simcore hw show")
    from simcore.hwshow import show_rows
    from simcore.system import load_system

    if preset_path("hardware", args.name) is None and not args.name.endswith((".yaml", ".yml")):
        raise ConfigError(f"unknown hardware preset {args.name!r} (see `simcore hw list`)")
    system = load_system(args.name, args.set)
    rows = show_rows(system)
    if args.json:
        print(json.dumps([dict(zip(("component", "key", "value", "source"), r, strict=True)) for r in rows]))
    else:
        print(text_table(("component", "key", "value", "source"), rows))
    return 0


def _params(args: argparse.Namespace) -> int:
    import json

    import hardware  # noqa: F401  (registers the component types)
    from hardware.links import LINK_SCHEMA
    from simcore.component import COMPONENT_TYPES
    from simcore.config import describe

    schemas = {name: cls.SCHEMA for name, cls in COMPONENT_TYPES.items()} | {"link": LINK_SCHEMA}
    if args.name not in schemas:
        raise ConfigError(f"unknown component type {args.name!r} (known: {', '.join(sorted(schemas))})",
                          key="simcore hw params")  # fmt: skip
    rows = [r for r in describe(schemas[args.name]) if r[0] != "abstract"]
    if args.json:
        print(json.dumps([dict(zip(("key", "unit", "default", "meaning"), r, strict=True)) for r in rows]))
    else:
        print(text_table(("key", "unit", "default", "meaning"), rows, (False, False, False, False)))
    return 0


# ------------------------------------------------------------------------------------------ models
def _models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")


@command("models", _models_args)
def models_cmd(args: argparse.Namespace) -> int:
    """List the shipped LLM configs with their sizes."""
    import json

    from models.llm import load_llm, model_names

    rows = [load_llm(n) for n in model_names()]
    if args.json:
        print(json.dumps([{"name": s.name, "params": s.params, "active_params": s.active_params,
                           "experts": s.moe.experts if s.moe else None, "top_k": s.moe.top_k if s.moe else None,
                           "layers": s.layers, "hidden": s.hidden, "checkpoint": s.checkpoint_precision}
                          for s in rows]))  # fmt: skip
        return 0

    def experts(s: Any) -> str:
        return f"{s.moe.top_k}/{s.moe.experts}" if s.moe else "-"

    def checkpoint(s: Any) -> str:  # as an experiment's precision: key would say it
        return ", ".join(f"{k}: {v}" for k, v in s.checkpoint_precision.items()) or "-"

    table = [(s.name, f"{s.params / 1e9:.1f}B", f"{s.active_params / 1e9:.1f}B", experts(s), s.layers, s.hidden,
              s.heads, "latent" if s.mla else s.kv_heads, checkpoint(s)) for s in rows]  # fmt: skip
    print(text_table(("model", "params", "active", "experts", "layers", "hidden", "heads", "kv heads",
                      "checkpoint precision"), table, (False,) + (True,) * 7 + (False,)))  # fmt: skip
    return 0
