"""`simcore validate`: the model's predictions next to measured numbers, with the error distribution.

A simulator is only as credible as its error on hardware it was not fitted to, so this command replays
published measurements (`validate data`: GEMM, attention, softmax/layernorm/GeLU, HBM/PCIe/NVLink/NCCL
bandwidths in the formats of shared/calibration/*.csv) and measurements it takes itself on the host
(`validate host`: the native reference kernels), and reports predicted vs measured per row.

Conventions:
- error = predicted / measured - 1, of time for op rows (a published throughput is turned into the time
  of that op) and of bandwidth for link rows. Positive: the model is slower (ops) or faster (links).
- every row is either predicted or listed as unmapped with the reason; rows read off a figure
  (`approx_from_figure`) are kept in groups of their own, so they never mix into measured statistics.
- the timing harness is part of what was measured: rows timed on the host around one synchronous call
  pay that harness's per-call cost instead of the model's back-to-back launch gap (see HARNESSES).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simcore.cli import command
from simcore.errors import ConfigError
from simcore.tables import text_table

# --------------------------------------------------------------------------------- device names

#: (regex on the published device name, preset or None, why) -- the first match wins. Rows naming
#: no GPU are unmapped; parts without a preset of their own take the nearest one (same chip).
DEVICE_PRESETS: tuple[tuple[str, str | None, str], ...] = (
    (r"unstated|not stated|unknown", None, "the source does not name the GPU"),
    (r"A100.*80\s*GB", "a100-sxm4-80gb", ""),  # an A100 80GB PCIe card has no preset: the SXM4 part stands in
    (r"A100.*40\s*GB", "a100-pcie-40gb", ""),  # SXM4 40GB: same HBM2 (1.555 TB/s) and PCIe Gen4 x16
    (r"A100[ -]SXM", "a100-sxm4-80gb", ""),
    (r"A100[ -]PCIE", "a100-pcie-40gb", ""),
    (r"A100", "a100-sxm4-80gb", ""),
    (r"H100.*PCIE", "h100-pcie-80gb", ""),
    (r"H100", "h100-sxm5-80gb", ""),
    (r"H200", "h200-sxm-141gb", ""),
    (r"L40S", "l40s", ""),
    (r"RTX\s*A6000", "rtx-a6000", ""),
    (r"\bA40\b", "a40", ""),
    (r"4090", "rtx-4090", ""),
    (r"3090", "rtx-3090", ""),
    (r"V100", "v100-sxm2-32gb", ""),
    (r"\bT4\b", "t4", ""),
    (r"Orin", "jetson-agx-orin-64gb", ""),
)

#: Multi-GPU system presets used for NVLink and collective rows, by the GPU preset a row maps to.
SYSTEMS: dict[str, str] = {
    "a100-sxm4-80gb": "dgx-a100-8",
    "a100-pcie-40gb": "dgx-a100-8",  # DGX A100 40 GB rows: same NVLink3 x12 fabric as the 80 GB system
    "h100-sxm5-80gb": "dgx-h100-8",
}

#: Host CPU preset for PCIe host<->device rows (its DDR bandwidth is far above a x16 link's).
HOST_CPU = "epyc-7742"


def map_device(name: str) -> tuple[str | None, str]:
    """The preset a published device name stands for, or None and why not."""
    for pattern, preset, why in DEVICE_PRESETS:
        if re.search(pattern, name, re.IGNORECASE):
            return preset, why
    return None, f"no preset matches device {name!r}"


# ------------------------------------------------------------------------------------ harnesses


@dataclass(frozen=True)
class Harness:
    """A timing method whose fixed per-call cost is part of the measured number."""

    source: str  # regex on the row's source
    family: str  # op family it applies to
    overhead_s: float  # host-side cost of one synchronous call (dispatch + launch + synchronize)
    note: str


#: LLMCompass times one call between two time.time() stamps with a torch.cuda.synchronize() (see
#: PrincetonUniversity/LLMCompass software_model/*.py run_on_gpu) and adds the same per-call overhead to
#: its own simulated A100 numbers: ae/figure5/ab/test_matmul.py (+2.1e-5 s), cf/test_softmax.py
#: (gpu_overhead = 12e-6), de/test_layernorm.py and g/test_gelu.py (+4.5e-5 s; both ops are
#: torch.compile'd, whose guard checks dominate). Those authors' figures are used as published.
HARNESSES: tuple[Harness, ...] = (
    Harness(
        "LLMCompass",
        "gemm",
        21e-6,
        "LLMCompass host-timed torch.matmul (+21 us per call, its test_matmul.py)",
    ),
    Harness(
        "LLMCompass", "softmax", 12e-6, "LLMCompass host-timed torch.softmax (+12 us, its test_softmax.py)"
    ),
    Harness(
        "LLMCompass",
        "layernorm",
        45e-6,
        "LLMCompass host-timed compiled layernorm (+45 us, test_layernorm.py)",
    ),
    Harness("LLMCompass", "gelu", 45e-6, "LLMCompass host-timed compiled GeLU (+45 us, its test_gelu.py)"),
)


def harness_for(source: str, family: str) -> Harness | None:
    for h in HARNESSES:
        if h.family == family and re.search(h.source, source):
            return h
    return None


# ------------------------------------------------------------------------------------------ rows


@dataclass
class Row:
    """One measured number and, once simulated, the model's prediction of it."""

    file: str
    line: int
    device: str
    family: str
    dtype: str
    shape: str
    quantity: str  # "time" (s) or "bandwidth" (B/s)
    measured: float
    approx: bool
    source: str
    preset: str | None = None
    reason: str = ""  # why the row is not simulated (empty when it is)
    predict: Callable[[], tuple[float, str]] | None = field(default=None, repr=False)
    predicted: float = math.nan
    bound: str = ""
    harness: str = ""

    @property
    def mapped(self) -> bool:
        return not self.reason and self.predict is not None

    @property
    def error(self) -> float:
        return self.predicted / self.measured - 1.0

    @property
    def quality(self) -> str:
        return "approx" if self.approx else "measured"

    def record(self) -> dict[str, Any]:
        out = {
            "file": self.file, "line": self.line, "device": self.device, "preset": self.preset or "",
            "family": self.family, "dtype": self.dtype, "shape": self.shape, "quantity": self.quantity,
            "unit": "s" if self.quantity == "time" else "B/s", "measured": self.measured,
            "predicted": self.predicted, "error": self.error if self.mapped else math.nan,
            "bound": self.bound, "quality": self.quality, "harness": self.harness, "reason": self.reason,
            "source": self.source,
        }  # fmt: skip
        return out


class _Fields:
    """Named access to one CSV record, with errors that name the file, the line and the column."""

    def __init__(self, file: str, line: int, header: list[str], values: list[str]) -> None:
        self.file, self.line = file, line
        self.data = dict(zip(header, values, strict=True))

    def text(self, *names: str) -> str:
        for n in names:
            v = self.data.get(n)
            if v is not None and v.strip():
                return v.strip()
        return ""

    def number(self, name: str, required: bool = False) -> float | None:
        raw = self.text(name)
        if not raw:
            if required:
                raise ConfigError(f"column {name!r} is empty", self.file, self.line)
            return None
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(
                f"column {name!r}: expected a number, got {raw!r}", self.file, self.line
            ) from None
        if not math.isfinite(value) or value < 0:
            raise ConfigError(
                f"column {name!r}: expected a non-negative number, got {raw!r}", self.file, self.line
            )
        return value

    def integer(self, name: str, required: bool = True) -> int | None:
        value = self.number(name, required)
        if value is None:
            return None
        if value != int(value) or value < 1:
            raise ConfigError(f"column {name!r}: expected a positive integer, got {self.text(name)!r}",
                              self.file, self.line)  # fmt: skip
        return int(value)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKMGT]?)(i?)B?\s*$")


def parse_size(text: str) -> float | None:
    """'32000000', '1M', '512k' -> bytes (decimal prefixes unless 'Ki'/'Mi'...); '' -> None."""
    if not text:
        return None
    m = _SIZE.match(text)
    if not m:
        return None
    base = 1024.0 if m.group(3) else 1000.0
    power = " kMGT".index(m.group(2).replace("K", "k") or " ")
    return float(m.group(1)) * base**power


# ------------------------------------------------------------------------------------ simulation


class Simulator:
    """Systems and components loaded once per preset; every prediction goes through the model's own
    entry points (op_report for ops, the engine for transfers and collectives)."""

    def __init__(self) -> None:
        self._systems: dict[str, Any] = {}

    def system(self, ref: str) -> Any:
        if ref not in self._systems:
            from simcore.system import load_system

            self._systems[ref] = load_system(ref)
        return self._systems[ref]

    def gpu(self, preset: str) -> Any:
        return next(iter(self.system(preset).devices.values()))

    def op_time(self, preset: str, op: Any, harness: Harness | None) -> tuple[float, str]:
        from simcore.oprun import op_report

        rep = op_report(self.system(preset), op)
        t = rep["time_s"]
        if harness is not None:  # one synchronous call: the harness's cost replaces the back-to-back gap
            t = t - self.gpu(preset).params["launch_overhead"] + harness.overhead_s
        return t, rep["bound"]

    def stream_bandwidth(self, preset: str, loads: int, stores: int, array_B: float) -> tuple[float, str]:
        """Bytes/s a streaming kernel reports: (loads + stores) arrays of array_B over its duration."""
        gpu = self.gpu(preset)
        op = StreamOp("stream", "fp32", elements=max(1, int(array_B // 4)), loads=loads, stores=stores)
        cost = gpu.op_cost(op)
        return (loads + stores) * array_B / cost.duration_s, cost.bound

    def pcie_system(self, preset: str) -> Any:
        key = f"pcie:{preset}"
        if key not in self._systems:
            from simcore.config import parse_yaml
            from simcore.system import load_system

            pcie = self.gpu(preset).params["pcie"]
            text = (f"type: system\ndevices:\n  gpu: {{base: {preset}}}\n  host: {{base: {HOST_CPU}}}\n"
                    f"links:\n  - {{type: pcie, generation: {pcie['generation']}, lanes: {pcie['lanes']}, "
                    f"between: [gpu, host]}}\n")  # fmt: skip
            self._systems[key] = load_system(parse_yaml(text, f"<{preset} + {HOST_CPU} over PCIe>"))
        return self._systems[key]

    @staticmethod
    def transfers(system: Any, pairs: Sequence[tuple[str, str]], nbytes: float) -> float:
        """Seconds until concurrent copies of nbytes between (src, dst) pairs all finish."""
        from simcore.engine import Engine
        from simcore.ops import OpGraph, Transfer
        from simcore.program import Program

        g = OpGraph("validate")
        for i, (src, dst) in enumerate(pairs):
            g.add(Transfer(f"copy{i}", "fp32", nbytes=nbytes, src=src, dst=dst))
        return Engine(system, keep_records=False).run(Program.from_graph(g))

    @staticmethod
    def allreduce(system: Any, group: int, nbytes: float) -> float:
        from simcore.engine import Engine
        from simcore.ops import AllReduce, OpGraph
        from simcore.program import Program

        gpus = tuple(system.of_type("gpu"))[:group]
        g = OpGraph("validate")
        g.add(AllReduce("allreduce", "fp32", bytes_per_device=nbytes, group=len(gpus)), devices=gpus)
        return Engine(system, keep_records=False).run(Program.from_graph(g))


def _stream_op_class() -> type:
    from dataclasses import dataclass as _dc
    from typing import ClassVar

    from simcore.ops import Op, Tensor

    @_dc(frozen=True, slots=True)
    class _StreamOp(Op):
        """A streaming kernel with `loads` input and `stores` output arrays (gpu-stream, BabelStream)."""

        elements: int = 1
        loads: int = 1
        stores: int = 1
        kind: ClassVar[str] = "elementwise"

        def tensors(self) -> tuple[Tensor, ...]:
            n = self.elements * self.elem_bytes
            return tuple([Tensor(f"in{i}", n, "in") for i in range(self.loads)]
                         + [Tensor(f"out{i}", n, "out") for i in range(self.stores)])  # fmt: skip

    return _StreamOp


StreamOp = _stream_op_class()

# --------------------------------------------------------------------------------------- loaders

_DTYPES = ("fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "int8")


def _dtype(text: str) -> str | None:
    m = re.match(r"\s*(fp64|fp32|tf32|fp16|bf16|fp8|int8)", text.lower())
    return m.group(1) if m else None


def _approx(f: _Fields) -> bool:
    return "approx" in f.text("value_kind").lower()


def _read_csv(path: Path) -> tuple[str, list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, values) of every record; a record with the wrong field count is an error."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError("no such file", file) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read: {e}", file) from None
    lines = text.splitlines(keepends=True)
    reader = csv.reader(lines, strict=True)
    records: list[tuple[int, list[str]]] = []
    header: list[str] = []
    start = 1
    try:
        for values in reader:
            if not header:
                header = [h.strip() for h in values]
                if not any(header):
                    raise ConfigError("empty header line", file, start)
            elif any(v.strip() for v in values):
                if len(values) != len(header):
                    raise ConfigError(f"expected {len(header)} fields as in the header, got {len(values)}",
                                      file, start)  # fmt: skip
                records.append((start, values))
            start = reader.line_num + 1
    except csv.Error as e:
        raise ConfigError(f"malformed CSV: {e}", file, reader.line_num or start) from None
    if not header:
        raise ConfigError("empty file: expected a CSV header line", file, 1)
    return file, header, records


def _need(file: str, header: list[str], *groups: tuple[str, ...]) -> None:
    for group in groups:
        if not any(c in header for c in group):
            raise ConfigError(f"missing column {' or '.join(repr(c) for c in group)}", file, 1)


def load_rows(path: str | Path, sim: Simulator) -> list[Row]:
    """Rows of one CSV, its format recognised from the header."""
    file, header, records = _read_csv(Path(path))
    cols = set(header)
    if {"M", "N", "K"} <= cols:
        _need(file, header, ("gpu",), ("time_ms", "tflops_per_s"), ("dtype_in", "dtype"))
        parse = _gemm_row
    elif {"head_dim", "seqlen"} <= cols:
        _need(
            file,
            header,
            ("gpu",),
            ("pass",),
            ("num_heads",),
            ("batch",),
            ("causal",),
            ("time_ms", "tflops_per_s"),
        )
        parse = _attention_row
    elif "link_or_memory" in cols:
        _need(file, header, ("hardware",), ("bandwidth_GB_per_s",), ("direction_or_kernel",), ("test",))
        parse = _link_row
    elif "op" in cols and "throughput_Gelem_per_s" in cols:
        _need(file, header, ("hardware",), ("M",), ("latency_s",))
        parse = _misc_row
    else:
        raise ConfigError("unrecognised CSV header: expected the columns of gemm_*.csv (M, N, K), attention_*.csv "
                          "(head_dim, seqlen), links_*.csv (link_or_memory) or ops_misc_*.csv (op, "
                          "throughput_Gelem_per_s)", file, 1)  # fmt: skip
    rows = []
    for line, values in records:
        f = _Fields(file, line, header, values)
        rows.append(parse(f, sim))
    return rows


def _base(f: _Fields, device_col: str, family: str, dtype: str, shape: str, quantity: str,
          measured: float) -> Row:  # fmt: skip
    device = f.text(device_col)
    preset, why = map_device(device)
    row = Row(f.file, f.line, device, family, dtype, shape, quantity, measured, _approx(f),
              f.text("source"), preset)  # fmt: skip
    if preset is None:
        row.reason = why
    return row


def _gemm_row(f: _Fields, sim: Simulator) -> Row:
    m, n, k = (f.integer(c) for c in ("M", "N", "K"))
    assert m and n and k
    batch = f.integer("batch_or_groups", required=False) or f.integer("batch", required=False) or 1
    dtype_text = f.text("dtype_in", "dtype")
    dtype = _dtype(dtype_text) or dtype_text
    t_ms, tflops = f.number("time_ms"), f.number("tflops_per_s")
    flops = 2.0 * batch * m * n * k
    measured = t_ms * 1e-3 if t_ms else (flops / (tflops * 1e12) if tflops else math.nan)
    shape = f"{m}x{n}x{k}" + (f" b{batch}" if batch > 1 else "")
    row = _base(f, "gpu", "gemm", dtype, shape, "time", measured)
    if row.reason:
        return row
    if not measured > 0:
        row.reason = "no measured time or throughput"
    elif _dtype(dtype_text) is None:
        row.reason = f"dtype {dtype_text!r} not modelled"
    else:
        from simcore.ops import Gemm

        op = Gemm("gemm", dtype, m=m, n=n, k=k, batch=batch)
        h = harness_for(row.source, "gemm")
        row.harness = h.note if h else ""
        row.predict = lambda: sim.op_time(row.preset or "", op, h)  # type: ignore[arg-type]
    return row


def _attention_row(f: _Fields, sim: Simulator) -> Row:
    d, heads, seq, batch = (f.integer(c) for c in ("head_dim", "num_heads", "seqlen", "batch"))
    assert d and heads and seq and batch
    causal_text = f.text("causal").lower()
    causal = causal_text in ("true", "1", "yes")
    dtype = _dtype(f.text("dtype")) or "fp16"
    t_ms, tflops = f.number("time_ms"), f.number("tflops_per_s")
    # FlashAttention's benchmark convention: 4·b·h·s²·d forward FLOPs, halved when causal; the backward
    # pass counts 2.5x that, so fwd+bwd rows divide 3.5x the forward FLOPs by the time
    passes = 3.5 if f.text("pass").lower() == "fwd+bwd" else 1.0
    flops = passes * 4.0 * batch * heads * seq * seq * d / (2 if causal else 1)
    measured = t_ms * 1e-3 if t_ms else (flops / (tflops * 1e12) if tflops else math.nan)
    impl = f.text("implementation")
    shape = f"b{batch} h{heads} s{seq} d{d}{' causal' if causal else ''} [{impl}]"
    row = _base(f, "gpu", "attention", dtype, shape, "time", measured)
    if row.reason:
        return row
    pass_ = f.text("pass").lower()
    if pass_ not in ("fwd", "fwd+bwd"):
        row.reason = "pass not stated in the source (its script reports fwd+bwd totals)"
    elif causal_text not in ("true", "false", "1", "0", "yes", "no"):
        row.reason = f"causal flag {f.text('causal')!r} not stated"
    elif not measured > 0:
        row.reason = "no measured value (out of memory in the source)"
    elif re.search(r"\bmath\b|standard|^pytorch$", impl.strip(), re.IGNORECASE):
        row.reason = (
            f"implementation {impl!r} materialises the score matrix; the model costs flash-style attention"
        )
    elif pass_ == "fwd+bwd" and not re.fullmatch(
        r"flash\s*attention[- ]?2(\.0)?", impl.strip(), re.IGNORECASE
    ):
        row.reason = (f"implementation {impl!r}: the backward model follows FlashAttention-2's schedule "
                      "(key-block parallel, dQ by atomics); other kernels' schedules differ")  # fmt: skip
    else:
        from simcore.ops import Attention, AttentionGrad

        fwd = Attention("attention", dtype, batch=batch, heads=heads, kv_heads=heads, q_len=seq, kv_len=seq,
                        head_dim=d, causal=causal)  # fmt: skip
        ops = [fwd] if pass_ == "fwd" else [fwd, AttentionGrad("attention_grad", dtype, batch=batch, heads=heads,
                                                              kv_heads=heads, q_len=seq, kv_len=seq, head_dim=d,
                                                              causal=causal)]  # fmt: skip

        def predict() -> tuple[float, str]:
            times = [sim.op_time(row.preset or "", op, None) for op in ops]
            return sum(t for t, _ in times), times[0][1]

        row.predict = predict
    return row


_MISC_FAMILIES = ("softmax", "layernorm", "gelu")


def _misc_row(f: _Fields, sim: Simulator) -> Row:
    op_name = f.text("op")
    family = op_name.lower() if op_name.lower() in _MISC_FAMILIES else op_name.split(":")[0].strip().lower()
    dtype = _dtype(f.text("dtype")) or f.text("dtype")
    thr = f.number("throughput_Gelem_per_s")
    m = f.integer("M", required=False)
    n = f.integer("N", required=False) if f.text("N") else None
    elements = (m or 0) * (n or 1)
    lat = f.number("latency_s")
    measured = elements / (thr * 1e9) if thr and elements else (lat if lat else math.nan)
    shape = f.text("shape") or f.text("config")
    row = _base(f, "hardware", family, dtype, shape, "time", measured)
    if row.reason:
        return row
    if family not in _MISC_FAMILIES:
        if "peak" in op_name.lower():
            row.reason = ("register-resident peak-FLOP loop, not an op the model costs (the preset's spec "
                          "peak is what it compares to)")  # fmt: skip
        elif op_name.lower().startswith("transformer layer component"):
            return _layer_row(row, op_name.split(":", 1)[-1].strip(), f.text("config"), sim)
        else:
            row.reason = f"op {op_name!r} not recognised"
        return row
    if not (m and measured > 0) or (family != "gelu" and not n):
        row.reason = "shape or measured value missing"
        return row
    from simcore.ops import Elementwise, Norm, Softmax

    if family == "softmax":
        op: Any = Softmax("softmax", dtype, rows=m, cols=n or 1)
    elif family == "layernorm":
        op = Norm("layernorm", dtype, rows=m, cols=n or 1, function="layernorm")
    else:
        op = Elementwise(
            "gelu", dtype, elements=elements, inputs=1, flops_per_element=GELU_FLOPS, function="gelu"
        )
    h = harness_for(row.source, family)
    row.harness = h.note if h else ""
    row.predict = lambda: sim.op_time(row.preset or "", op, h)  # type: ignore[arg-type]
    return row


_PREFILL = re.compile(r"prefill: batch (\d+), seq (\d+), d_model (\d+), (\d+) heads.*TP=(\d+)")
_DECODE = re.compile(
    r"decode.*batch (\d+), 1 new token, KV length (\d+)\+(\d+), d_model (\d+), (\d+) heads.*TP=(\d+)"
)


def _layer_row(row: Row, component: str, config: str, sim: Simulator) -> Row:
    """One component of LLMCompass's tensor-parallel GPT-3 layer (ae/figure5/ijkl, measured per component
    with the same host-timed harness as its single-op rows). Shapes follow its software_model/transformer.py:
    per device, Q/K/V projections [b·s, d] x [d, d/TP] (three calls), Q·Kᵀ and A·V batched over b·heads/TP,
    the output projection [b·s, d/TP] x [d/TP, d], the MLP [b·s, d] x [d, 4d/TP] and back, softmax over the
    score rows, layer norm over [b·s, d], GeLU over [b·s, 4d/TP], and an all-reduce of [b·s, d] over TP GPUs.
    A decode step has s = 1 and attends to the KV length + 1 keys."""
    from simcore.ops import Elementwise, Gemm, Norm, Softmax

    m = _PREFILL.search(config)
    if m:
        b, s, d, heads, tp = map(int, m.groups())
        kv, phase = s, "prefill"
    else:
        m = _DECODE.search(config)
        if not m:
            row.reason = f"layer configuration not recognised: {config!r}"
            return row
        b, kv0, kv1, d, heads, tp = map(int, m.groups())
        s, kv, phase = 1, kv0 + kv1 + 1, "decode"
    e, hd, hp, t = row.dtype, d // heads, heads // tp, b * s
    calls = 1
    ops: dict[str, tuple[str, Any]] = {
        "Q_K_V": ("gemm", Gemm("qkv", e, m=t, n=d // tp, k=d)),
        "Q_mul_K": ("gemm", Gemm("qk", e, m=s, n=kv, k=hd, batch=b * hp, b_is_weight=False)),
        "A_mul_V": ("gemm", Gemm("av", e, m=s, n=hd, k=kv, batch=b * hp, b_is_weight=False)),
        "Wo_proj": ("gemm", Gemm("wo", e, m=t, n=d, k=d // tp)),
        "W1_proj": ("gemm", Gemm("w1", e, m=t, n=4 * d // tp, k=d)),
        "W2_proj": ("gemm", Gemm("w2", e, m=t, n=d, k=4 * d // tp)),
        "Softmax": ("softmax", Softmax("softmax", e, rows=b * hp * s, cols=kv)),
        "LayerNorm_MHA": ("layernorm", Norm("ln", e, rows=t, cols=d, function="layernorm")),
        "LayerNorm_FFN": ("layernorm", Norm("ln", e, rows=t, cols=d, function="layernorm")),
        "GeLU": (
            "gelu",
            Elementwise("gelu", e, elements=t * 4 * d // tp, flops_per_element=GELU_FLOPS, function="gelu"),
        ),  # fmt: skip
    }
    if component == "Q_K_V":
        calls = 3  # three projections, each timed on its own
    row.shape = f"GPT-3 layer {phase} b{b} s{s} kv{kv} TP={tp}: {component}"
    if component.startswith("AllReduce"):
        # as the nccl-tests rows: bus bandwidth = bytes / time x 2(n-1)/n
        row.family, row.quantity, row.dtype = "allreduce", "bandwidth", ""
        system = SYSTEMS.get(row.preset or "")
        nbytes = t * d * dtype_bytes(e)
        bus = nbytes * 2 * (tp - 1) / tp
        row.measured = bus / row.measured

        def allreduce() -> tuple[float, str]:
            return bus / sim.allreduce(sim.system(system or ""), tp, nbytes), "network"

        row.predict = allreduce
        return row
    if component not in ops:
        row.reason = f"layer component {component!r} not recognised"
        return row
    row.family, op = ops[component]
    h = harness_for(row.source, row.family)
    row.harness = h.note if h else ""

    def predict() -> tuple[float, str]:
        time_s, bound = sim.op_time(row.preset or "", op, h)
        return calls * time_s, bound

    row.predict = predict
    return row


def dtype_bytes(dtype: str) -> float:
    from simcore.ops import dtype_bytes as _bytes

    return _bytes(dtype)


#: tanh-approximated GeLU, x·0.5·(1 + tanh(0.79788·x·(1 + 0.044715·x²))): 7 multiply/adds plus a tanh,
#: counted as 2 more FLOPs (one exp and one divide on the special-function unit).
GELU_FLOPS = 9.0

#: gpu-stream / BabelStream / bandwidthTest / GPUInspector kernels -> (loads, stores) per element.
_STREAM_KERNELS: tuple[tuple[str, int, int], ...] = (
    (r"\binit\b", 0, 1),
    (r"\bread\b", 1, 0),
    (r"\bdot\b", 2, 0),
    (r"triad|\badd\b|saxpy", 2, 1),
    (r"scale|copy|memcpy|stencil|\bmul\b|device-to-device", 1, 1),
)
#: Array size assumed when a streaming benchmark does not state it (all of them use arrays far beyond L2).
_DEFAULT_ARRAY_B = 256 * 2**20


def _link_row(f: _Fields, sim: Simulator) -> Row:
    kind = f.text("link_or_memory")
    test, direction = f.text("test"), f.text("direction_or_kernel")
    host_mem = f.text("host_memory").lower()
    bw = f.number("bandwidth_GB_per_s")
    measured = bw * 1e9 if bw else math.nan
    size = parse_size(f.text("transfer_size_bytes"))
    shape = " ".join(x for x in (test, direction, host_mem, f.text("transfer_size_bytes") and
                                 f"{f.text('transfer_size_bytes')} B") if x)  # fmt: skip
    family = _link_family(kind, direction)
    row = _base(f, "hardware", family, "", shape, "bandwidth", measured)
    if row.reason:
        return row
    preset = row.preset or ""
    both = f"{test} {direction}".lower()
    if not measured > 0:
        row.reason = "no measured bandwidth"
    elif family == "storage":
        row.reason = "storage device model and count not stated (VM-local NVMe)"
    elif "nvbandwidth" in both:
        row.reason = ("nvbandwidth SM-copy tests (the source's script runs *_memcpy_sm and the bidirectional "
                      "read test): kernel-driven copies, the model costs copy-engine transfers")  # fmt: skip
    elif family == "hbm":
        loads_stores = next(((lo, st) for pat, lo, st in _STREAM_KERNELS if re.search(pat, both)), None)
        if loads_stores is None:
            row.reason = f"streaming kernel {direction!r} not recognised"
        else:
            lo, st = loads_stores
            # bandwidthTest / p2pBandwidthLatencyTest count a D2D copy's read and write: size is one array
            array = size or _DEFAULT_ARRAY_B
            row.predict = lambda: sim.stream_bandwidth(preset, lo, st, array)
    elif family == "pcie":
        if "pageable" in host_mem:
            row.reason = "pageable host memory: staged through a pinned buffer by a host memcpy, not modelled"
        else:
            nbytes = size or _DEFAULT_ARRAY_B
            pairs = [("host", "gpu")] if "host-to-device" in both or "h2d" in both else [("gpu", "host")]

            def pcie() -> tuple[float, str]:
                t = sim.transfers(sim.pcie_system(preset), pairs, nbytes)
                return nbytes / t, "pcie"

            row.predict = pcie
    elif family in ("nvlink", "allreduce"):
        system = SYSTEMS.get(preset)
        from simcore.config import preset_path

        if system is None or preset_path("hardware", system) is None:
            row.reason = f"no multi-GPU system preset for {preset}"
        elif family == "nvlink":
            memsize = re.search(r"memsize\s+([\d.]+)\s*MiB", test)
            nbytes = size or (float(memsize.group(1)) * 2**20 if memsize else 40e6 * 4)
            bidir = "bidirectional" in both

            def p2p() -> tuple[float, str]:
                pairs = [("gpu0", "gpu1"), ("gpu1", "gpu0")] if bidir else [("gpu0", "gpu1")]
                t = sim.transfers(sim.system(system), pairs, nbytes)
                return len(pairs) * nbytes / t, "nvlink"

            row.predict = p2p
        else:
            group = int(f.number("num_devices") or 8)
            if size is None:
                row.reason = "message size not stated"
            else:

                def busbw() -> tuple[float, str]:
                    t = sim.allreduce(sim.system(system), group, size)
                    # nccl-tests bus bandwidth: algbw x 2(n-1)/n
                    return size / t * 2 * (group - 1) / group, "network"

                row.predict = busbw
    else:
        row.reason = f"link kind {kind!r} not recognised"
    return row


def _link_family(kind: str, direction: str) -> str:
    k = f"{kind} {direction}".lower()
    if "nvme" in k or "storage" in k:
        return "storage"
    if "collective" in k or "all-reduce" in k or "allreduce" in k:
        return "allreduce"
    if "local device-to-device" in k or "hbm" in k or "dram" in k:
        return "hbm"
    if "nvlink" in k:
        return "nvlink"
    if "pcie" in k:
        return "pcie"
    return "link"


# ------------------------------------------------------------------------------------- statistics


def percentile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty sequence."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True)
class Group:
    """Error distribution of one device x family x dtype x quality group."""

    device: str
    family: str
    dtype: str
    quality: str
    count: int
    median_abs: float
    p90_abs: float
    worst: float  # signed error of largest magnitude
    bias: float  # median signed error

    def record(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def summarize(rows: Iterable[Row], key: Callable[[Row], tuple[str, str, str, str]]) -> list[Group]:
    groups: dict[tuple[str, str, str, str], list[float]] = {}
    for r in rows:
        if r.mapped and math.isfinite(r.predicted):
            groups.setdefault(key(r), []).append(r.error)
    out = []
    for k in sorted(groups):
        errs = groups[k]
        absd = [abs(e) for e in errs]
        out.append(Group(*k, len(errs), statistics.median(absd), percentile(absd, 90),
                         max(errs, key=abs), statistics.median(errs)))  # fmt: skip
    return out


def by_group(r: Row) -> tuple[str, str, str, str]:
    return (r.preset or "", r.family, r.dtype or "-", r.quality)


def by_family(r: Row) -> tuple[str, str, str, str]:
    return ("all", r.family, "all", r.quality)


# ------------------------------------------------------------------------------------------ tables


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%" if math.isfinite(x) else "-"


def _apct(x: float) -> str:
    return f"{100 * x:.1f}%" if math.isfinite(x) else "-"


def group_table(groups: Sequence[Group]) -> str:
    rows = [(g.device, g.family, g.dtype, g.quality, g.count, _apct(g.median_abs), _apct(g.p90_abs), _pct(g.worst),
             _pct(g.bias)) for g in groups]  # fmt: skip
    return text_table(("device", "family", "dtype", "rows", "n", "median|err|", "p90|err|", "worst", "bias"), rows,
                 (False, False, False, False, True, True, True, True, True))  # fmt: skip


def _ranges(lines: list[int]) -> str:
    """[2, 3, 4, 9] -> '2-4,9'."""
    out: list[str] = []
    for x in sorted(lines):
        if out and (m := re.match(r"^(\d+)(?:-(\d+))?$", out[-1])) and int(m.group(2) or m.group(1)) == x - 1:
            out[-1] = f"{m.group(1)}-{x}"
        else:
            out.append(str(x))
    return ",".join(out)


def unmapped_table(rows: Sequence[Row]) -> str:
    by: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        if not r.mapped:
            by.setdefault((r.reason, Path(r.file).name), []).append(r)
    lines = [
        (len(v), f"{file}:{_ranges([r.line for r in v])}", reason) for (reason, file), v in sorted(by.items())
    ]
    return text_table(("rows", "where (file:lines)", "reason"), lines, (True, False, False))


# ------------------------------------------------------------------------------------- validate data


def run_data(files: Sequence[str], out_dir: str | None, as_json: bool, plot: bool = True) -> dict[str, Any]:
    """Load, simulate and summarise; write the per-row CSV and the plot; return the JSON-able report."""
    sim = Simulator()
    rows: list[Row] = []
    for f in files:
        rows.extend(load_rows(f, sim))
    for r in rows:
        if r.mapped and r.predict is not None:
            r.predicted, r.bound = r.predict()
    groups = summarize(rows, by_group)
    families = summarize(rows, by_family)
    report = {
        "files": list(files),
        "rows": len(rows),
        "mapped": sum(r.mapped for r in rows),
        "unmapped": [
            {"file": r.file, "line": r.line, "device": r.device, "family": r.family, "reason": r.reason}
            for r in rows
            if not r.mapped
        ],  # fmt: skip
        "groups": [g.record() for g in groups],
        "families": [g.record() for g in families],
        "convention": "error = predicted/measured - 1 (time for ops, bandwidth for links)",
    }
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        report["predictions_csv"] = str(write_predictions(rows, out / "predictions.csv"))
        if plot:
            report["plot_png"] = str(plot_predictions(rows, out / "predicted_vs_measured.png"))
    if as_json:
        print(json.dumps(report, sort_keys=True, default=float))
    else:
        print(f"simcore validate data: {report['mapped']} of {report['rows']} rows simulated "
              f"(error = predicted/measured - 1; time for ops, bandwidth for links)\n")  # fmt: skip
        print(group_table(groups))
        print("\nAll devices, by family:\n")
        print(group_table(families))
        n_un = len(report["unmapped"])
        if n_un:
            print(f"\nUnmapped rows ({n_un}), by reason:\n")
            print(unmapped_table(rows))
        if out_dir:
            print(f"\nwrote {report['predictions_csv']}" + (f" and {report['plot_png']}" if plot else ""))
    return report


def write_predictions(rows: Sequence[Row], path: Path) -> Path:
    records = [r.record() for r in rows]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(records[0]) if records else ["file"])
        w.writeheader()
        for rec in records:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in rec.items()})
    return path


_COLORS = {"gemm": "tab:blue", "attention": "tab:orange", "softmax": "tab:green", "layernorm": "tab:olive",
           "gelu": "tab:cyan", "hbm": "tab:red", "pcie": "tab:purple", "nvlink": "tab:brown",
           "allreduce": "tab:pink"}  # fmt: skip


def plot_predictions(rows: Sequence[Row], path: Path) -> Path:
    """Predicted vs measured, log-log: op times and link bandwidths side by side, y = x and ±10/25% bands."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend or figure state is touched
    except ImportError:
        raise ConfigError("the plot needs matplotlib (pip install matplotlib), or pass --no-plot",
                          key="simcore validate data") from None  # fmt: skip

    panels = [
        (quantity, scale, unit, title, pts)
        for quantity, scale, unit, title in (
            ("time", 1e6, "time (µs)", "Operators"),
            ("bandwidth", 1e-9, "bandwidth (GB/s)", "Memory and links"),
        )
        if (pts := [r for r in rows if r.mapped and r.quantity == quantity and math.isfinite(r.predicted)])
    ]
    fig = Figure(figsize=(6 * max(1, len(panels)), 5.5))
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    if not panels:
        axes[0].text(0.5, 0.5, "no simulated rows", ha="center", va="center")
        axes[0].set_axis_off()
    for ax, (_quantity, scale, unit, title, pts) in zip(axes, panels, strict=False):
        lo = min(min(r.measured, r.predicted) for r in pts) * scale / 1.5
        hi = max(max(r.measured, r.predicted) for r in pts) * scale * 1.5
        xs = [lo, hi]
        ax.fill_between(xs, [x * 0.75 for x in xs], [x * 1.25 for x in xs], color="0.9", label="±25%")
        ax.fill_between(xs, [x * 0.9 for x in xs], [x * 1.1 for x in xs], color="0.8", label="±10%")
        ax.plot(xs, xs, "k-", lw=1, label="y = x")
        for fam in sorted({r.family for r in pts}):
            for approx in (False, True):
                sel = [r for r in pts if r.family == fam and r.approx == approx]
                if sel:
                    ax.scatter([r.measured * scale for r in sel], [r.predicted * scale for r in sel], s=14,
                               facecolors="none" if approx else _COLORS.get(fam, "k"),
                               edgecolors=_COLORS.get(fam, "k"), linewidths=0.8,
                               label=f"{fam} ({len(sel)}{', read off figures' if approx else ''})")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"measured {unit}")
        ax.set_ylabel(f"predicted {unit}")
        ax.set_title(title)
        ax.grid(True, which="both", ls=":", c="0.7")
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("simcore validate: predicted vs measured")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    return path


# ------------------------------------------------------------------------------------- validate host


@dataclass(frozen=True)
class HostInfo:
    """What this machine says about its CPU: enough to describe it to the CPU model."""

    model: str
    cores: int  # usable by this process (sched_getaffinity)
    clock_Hz: float
    clock_source: str
    simd_bits: int
    fma: bool
    flags: tuple[str, ...]
    llc_B: float
    memory_B: float


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo (empty where the file does not exist)."""
    out: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        if ":" in line:
            k, v = line.split(":", 1)
            out.setdefault(k.strip(), v.strip())
    return out


def _lscpu_max_mhz() -> float | None:
    import shutil
    import subprocess

    if not shutil.which("lscpu"):
        return None
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"CPU max MHz:\s*([\d.]+)", text)
    return float(m.group(1)) if m else None


def _llc_bytes() -> float:
    best = 0.0
    for idx in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = int((idx / "level").read_text())
            size = parse_size((idx / "size").read_text().strip().replace("K", "Ki").replace("M", "Mi"))
        except (OSError, ValueError):
            continue
        if size and level >= 2:
            best = max(best, size)
    return best or 32 * 2**20


def detect_host() -> HostInfo:
    """Cores from the affinity mask, SIMD from /proc/cpuinfo flags, clock from lscpu or cpuinfo."""
    info = _cpuinfo()
    flags = tuple(sorted(set((info.get("flags") or info.get("Features") or "").split())))
    simd = 512 if "avx512f" in flags else 256 if ("avx2" in flags or "avx" in flags) else 128
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    mhz = _lscpu_max_mhz()
    source = "lscpu 'CPU max MHz'"
    if not mhz:
        mhz = float(info.get("cpu MHz", "0") or 0) or None
        source = "/proc/cpuinfo 'cpu MHz'"
    if not mhz:
        mhz, source = 2000.0, "not reported; 2 GHz assumed"
    mem = 16 * 2**30
    try:
        m = re.search(r"MemTotal:\s*(\d+)\s*kB", Path("/proc/meminfo").read_text())
        mem = int(m.group(1)) * 1024 if m else mem
    except OSError:
        pass
    return HostInfo(info.get("model name", "unknown CPU"), cores, mhz * 1e6, source, simd,
                    "fma" in flags or "asimd" in flags, flags, _llc_bytes(), float(mem))  # fmt: skip


#: Vector FMA pipes per core: two on the x86 cores of the last decade (Haswell on, Zen 2 on); one
#: where there is no FMA (a multiply and an add issue separately, still 2 FLOPs per lane per cycle).
FMA_UNITS = 2

#: FLOPs of one fp32 exp in the native attention kernels (refk_exp_neg in refkernels.c), counted from its
#: code, not fitted: clamp 1; n = round(x·log2 e) by a multiply-add and a subtract, 3; Cody-Waite
#: r = x - n·ln2_hi - n·ln2_lo, two multiply-adds, 4; degree-7 Taylor polynomial by Horner, 7 multiply-adds,
#: 14; exponent insertion (integer shift and add) 2; underflow select 2.
NATIVE_EXP_FLOPS = 1 + 3 + 4 + 14 + 2 + 2


def host_cpu(info: HostInfo, stream_Bps: float, efficiency: float, call_overhead_s: float = 2e-6) -> Any:
    """A CPU component for ONE core of this host (the native kernels are single-threaded).

    call_overhead_s is the fixed cost of one call of a native kernel from Python (argument checks and
    ctypes), the model's launch_overhead.
    """
    from hardware.cpu import CPU
    from simcore.config import Doc

    lanes32 = info.simd_bits // 32
    per_cycle32 = lanes32 * 2 * (FMA_UNITS if info.fma else 1)
    data = {
        "cores": 1,
        "clock": info.clock_Hz,
        "simd_width": info.simd_bits,
        "flops_per_cycle": {"fp32": float(per_cycle32), "fp64": float(per_cycle32 / 2)},
        "llc": info.llc_B,
        "memory": {"type": "ddr4", "capacity": info.memory_B, "bandwidth": stream_Bps},  # type: energy only
        "pcie": {"generation": 4, "lanes": 16},  # not used by these kernels
        "power": {"idle": 0.0},
        "efficiency": {"compute": efficiency, "memory": 1.0},  # the bandwidth is already the measured one
        "exp_flops": float(NATIVE_EXP_FLOPS),
        "launch_overhead": call_overhead_s,
    }
    return CPU.from_doc("host", Doc(data, {}, "<this host>"))


def _aligned(shape: tuple[int, ...], rng: Any = None) -> Any:
    """A float32 array starting on a 64-byte cache line, standard normal if rng is given, else uninitialised.

    numpy only promises 16 bytes; with rows a multiple of 64 bytes, an unlucky allocation puts every
    512-bit load and store of a kernel across two cache lines and swings its time by up to 2x.
    """
    import numpy as np

    n = math.prod(shape)
    buf = np.empty(n + 16, dtype=np.float32)
    skip = (-buf.ctypes.data % 64) // buf.itemsize
    out = buf[skip : skip + n].reshape(shape)
    if rng is not None:
        rng.standard_normal(out=out, dtype=np.float32)
    return out


def _median_times(fns: Sequence[Callable[[], Any]], rounds: int, visit_s: float = 2e-3) -> list[float]:
    """Median seconds per call of each fn, timed round-robin over `rounds` rounds.

    Round-robin rather than one kernel after another, so that a slow spell of a shared host (a process on
    the sibling hyperthread, a clock change) lands on every row alike and not only on the GEMM row the
    efficiency is fitted on, which would shift every prediction. Each visit starts with an untimed call
    (the previous kernel evicted this one's data from the caches) and then times calls for about visit_s.
    """
    per_visit = []
    for fn in fns:
        fn()  # first touch of the output, library load
        t0 = time.perf_counter()
        fn()
        per_visit.append(max(1, math.ceil(visit_s / max(time.perf_counter() - t0, 1e-7))))
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, calls, ts in zip(fns, per_visit, times, strict=True):
            fn()
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def run_host(as_json: bool, quick: bool) -> dict[str, Any]:
    """Measure the native kernels on this machine and predict them with a CPU description of it.

    The description is spec-level (cores, clock, SIMD width and FMA pipes from /proc/cpuinfo) plus three
    measured figures, as a preset's calibration constants would be: the STREAM triad bandwidth, the fixed
    cost of one call (a 1x1x1 GEMM) and the fraction of SIMD peak the reference GEMM reaches at its middle
    size. Every other row -- other GEMM sizes (other cache behaviour) and attention, plain and flash (other
    kernels: the model adds the softmax, with the exp's FLOPs counted from the kernel's code,
    NATIVE_EXP_FLOPS) -- is a prediction.
    """
    import functools

    import numpy as np

    from simcore import native
    from simcore.ops import Attention, Gemm

    t_start = time.perf_counter()
    info = detect_host()
    n_stream = 4_000_000 if quick else 20_000_000  # 3 arrays x 32 / 160 MB: beyond the LLC of most hosts
    bw = native.stream(n_stream, repeats=3 if quick else 5)
    stream_Bps = bw["triad"]
    rng = np.random.default_rng(0)
    repeats = 3 if quick else 5
    kernels: list[tuple[str, str, Any, Callable[[], Any]]] = []  # (kernel, shape, op, call)
    gemm_sizes = (128, 192, 256) if quick else (128, 256, 384, 512, 768)
    for s in gemm_sizes:
        a, b, c = _aligned((s, s), rng), _aligned((s, s), rng), _aligned((s, s))
        kernels.append(("gemm", f"{s}x{s}x{s}", Gemm("gemm", "fp32", m=s, n=s, k=s),
                        functools.partial(native.gemm, a, b, out=c)))  # fmt: skip
    attn = (
        ((1, 2, 128, 64), (1, 4, 256, 64)) if quick else ((1, 4, 256, 64), (1, 8, 512, 64), (1, 4, 1024, 64))
    )
    attn_kernels = {
        "attention (causal)": native.attention,
        "flash attention (causal)": native.flash_attention,
    }
    for name, kernel in attn_kernels.items():
        for batch, heads, seq, d in attn:
            q, k, v = (_aligned((batch, heads, seq, d), rng) for _ in range(3))
            o = _aligned(q.shape)
            op = Attention("attention", "fp32", batch=batch, heads=heads, kv_heads=heads, q_len=seq,
                           kv_len=seq, head_dim=d, causal=True)  # fmt: skip
            run = functools.partial(kernel, q, k, v, causal=True, out=o)
            kernels.append((name, f"b{batch} h{heads} s{seq} d{d}", op, run))
    # the fixed cost of a call (Python checks + ctypes), measured like the bandwidth: a 1x1x1 GEMM call
    one = _aligned((1, 1), rng)
    tiny = functools.partial(native.gemm, one, one.copy(), out=_aligned((1, 1)))
    *seconds, overhead = _median_times([*(run for *_, run in kernels), tiny], repeats)
    measured = [(name, shape, op, t) for (name, shape, op, _), t in zip(kernels, seconds, strict=True)]
    # calibrate the one compute constant on the middle GEMM size, as a preset's efficiency is fitted
    peak = host_cpu(info, stream_Bps, 1.0).peak_flops("fp32")
    ci = len(gemm_sizes) // 2
    calib_op, calib_t = measured[ci][2], measured[ci][3]
    efficiency = min(1.0, calib_op.flops / max(calib_t - overhead, 1e-9) / peak)
    cpu = host_cpu(info, stream_Bps, efficiency, overhead)
    rows: list[dict[str, Any]] = []
    for i, (kernel, shape, op, t) in enumerate(measured):
        pred = cpu.op_cost(op).duration_s
        rows.append({"kernel": kernel, "shape": shape, "measured_s": t, "predicted_s": pred,
                     "error": pred / t - 1.0, "gflops": op.flops / t / 1e9, "calibration": i == ci})  # fmt: skip
    predicted = [r for r in rows if not r["calibration"]]
    med = {k: statistics.median(abs(r["error"]) for r in predicted if k in r["kernel"])
           for k in ("gemm", "attention")}  # fmt: skip
    report = {
        "host": {"model": info.model, "cores": info.cores, "clock_Hz": info.clock_Hz, "clock_source": info.clock_source,
                 "simd_bits": info.simd_bits, "fma": info.fma, "llc_B": info.llc_B, "stream_Bps": dict(bw)},
        "model_core": {"peak_fp32_flops": peak, "efficiency": efficiency, "memory_Bps": stream_Bps,
                       "exp_flops": NATIVE_EXP_FLOPS, "call_overhead_s": overhead,
                       "calibrated_on": f"gemm {measured[ci][1]}"},
        "rows": rows,
        "median_abs_error": statistics.median(abs(r["error"]) for r in predicted),
        "median_abs_error_by_kernel": med,
        "elapsed_s": time.perf_counter() - t_start,
    }  # fmt: skip
    if as_json:
        print(json.dumps(report, sort_keys=True, default=float))
        return report
    simd = f"{info.simd_bits}-bit SIMD{' + FMA' if info.fma else ''}"
    print(
        f"host: {info.model}, {info.cores} usable core(s), {info.clock_Hz / 1e9:.2f} GHz ({info.clock_source}), {simd}"
    )
    print(f"memory: STREAM triad {stream_Bps / 1e9:.1f} GB/s, copy {bw['copy'] / 1e9:.1f} GB/s (one thread)")
    print(f"model: one core (the native kernels are single-threaded), {peak / 1e9:.1f} GFLOP/s fp32 SIMD peak; "
          f"efficiency {efficiency:.3f} fitted on gemm {measured[ci][1]}, every other row predicted;\n"
          f"       {overhead * 1e6:.1f} us per call (a 1x1 GEMM); attention per (query, key) pair: 4·d matmul FLOPs "
          f"+ one exp ({NATIVE_EXP_FLOPS} FLOPs, counted from the kernel's code) + 4 softmax FLOPs\n")  # fmt: skip
    print(text_table(("kernel", "shape", "measured", "predicted", "error", "GFLOP/s"),
                [(r["kernel"], r["shape"], f"{r['measured_s'] * 1e3:.3f} ms", f"{r['predicted_s'] * 1e3:.3f} ms",
                  "(fit)" if r["calibration"] else _pct(r["error"]), f"{r['gflops']:.2f}") for r in rows],
                (False, False, True, True, True, True)))  # fmt: skip
    print(f"\nmedian |error| of the predicted rows: {_apct(report['median_abs_error'])} (gemm {_apct(med['gemm'])}, "
          f"attention {_apct(med['attention'])}); {report['elapsed_s']:.1f} s")  # fmt: skip
    return report


# ------------------------------------------------------------------------------------------ command


def _validate_args(p: argparse.ArgumentParser) -> None:
    from simcore import cli

    sub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=cli._Parser, required=True)
    d = sub.add_parser("data", help="predict measured rows from CSV files and report the error distribution")
    d.add_argument(
        "files", nargs="+", metavar="FILE.csv", help="measurements in the shared/calibration formats"
    )
    d.add_argument(
        "--out",
        default="validation",
        metavar="DIR",
        help="directory for predictions.csv and predicted_vs_measured.png (default: ./validation)",
    )
    d.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    h = sub.add_parser(
        "host", help="measure the native kernels on this machine and compare with the CPU model"
    )
    h.add_argument("--quick", action="store_true", help="smaller sizes (< 15 s)")
    h.add_argument("--json", action="store_true", help="print one JSON object")


@command("validate", _validate_args)
def validate_cmd(args: argparse.Namespace) -> int:
    """Compare the model with measurements: published CSVs (data) or this machine (host)."""
    if args.action == "data":
        run_data(args.files, args.out, args.json, plot=not args.no_plot)
    else:
        run_host(args.json, args.quick)
    return 0
