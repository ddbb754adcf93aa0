"""Measured rows for `simcore validate data`: the CSV formats, device names, timing harnesses, and how
each row is simulated (a Row carries its own `predict`)."""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simcore.errors import ConfigError
from simcore.progress import bar

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


#: the unit of each measured quantity
UNITS = {"time": "s", "bandwidth": "B/s", "energy": "J", "power": "W"}


@dataclass
class Row:
    """One measured number and, once simulated, the model's prediction of it."""

    file: str
    line: int
    device: str
    family: str
    dtype: str
    shape: str
    quantity: str  # a key of UNITS
    measured: float
    approx: bool
    source: str
    preset: str | None = None
    reason: str = ""  # why the row is not simulated (empty when it is)
    predict: Callable[[], tuple[float, str]] | None = field(default=None, repr=False)
    predicted: float = math.nan
    bound: str = ""
    harness: str = ""
    kernel: str = ""  # the attention kernel the row's implementation is (hardware.gpu.ATTENTION_KERNELS)

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
            "unit": UNITS[self.quantity], "measured": self.measured,
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


@dataclass(frozen=True)
class CsvFormat:
    """A CSV format `validate data` reads: recognised by `marks` (all present in the header), checked
    for `needs` (one column of each group), each record parsed into a Row."""

    name: str
    marks: frozenset[str]
    needs: tuple[tuple[str, ...], ...]
    parse: Callable[[_Fields, Simulator], Row | list[Row]]


#: the formats, first match wins; e2e.py adds the end-to-end LLM format
FORMATS: list[CsvFormat] = []


def csv_format(name: str, marks: Sequence[str], *needs: tuple[str, ...]) -> Callable:
    def deco(
        parse: Callable[[_Fields, Simulator], Row | list[Row]],
    ) -> Callable[[_Fields, Simulator], Row | list[Row]]:
        FORMATS.append(CsvFormat(name, frozenset(marks), needs, parse))
        return parse

    return deco


def load_rows(path: str | Path, sim: Simulator) -> list[Row]:
    """Rows of one CSV, its format recognised from the header. A record that cannot be read (an empty
    or malformed cell) becomes an unmapped row that says why; the rest of the file still counts."""
    file, header, records = _read_csv(Path(path))
    fmt = next((f for f in FORMATS if f.marks <= set(header)), None)
    if fmt is None:
        known = "; ".join(f"{f.name} ({', '.join(sorted(f.marks))})" for f in FORMATS)
        raise ConfigError(f"unrecognised CSV header: expected the columns of {known}", file, 1)
    _need(file, header, *fmt.needs)
    rows = []
    for line, values in bar(records, len(records), f"rows of {Path(file).name}", min_total=50):
        f = _Fields(file, line, header, values)
        try:
            parsed = fmt.parse(f, sim)
            rows.extend(parsed if isinstance(parsed, list) else [parsed])
        except ConfigError as e:
            row = Row(file, line, f.text("gpu", "hardware"), fmt.name, "-", "", "time", 0.0, _approx(f),
                      f.text("source"))  # fmt: skip
            row.reason = e.message
            rows.append(row)
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


@csv_format("cnn_conv_*.csv", ("C_in", "K_out", "R_filter_h"), ("hardware",), ("N_batch",), ("H_in",), ("W_in",),
            ("S_filter_w",), ("dtype",), ("fwd_time_ms", "fwd_tflops_per_s"))  # fmt: skip
def _conv_row(f: _Fields, sim: Simulator) -> Row:
    """A convolution's forward time (cuDNN / CUTLASS profiler rows): an NHWC Conv2d through the GPU's cost,
    with the algorithm the row names (CUTLASS has implicit GEMM only), else the fastest; `fp16 in, fp32
    accum` is an fp16 op, `fp32 (SIMT)` an fp32 one without TF32."""
    from models.cnn import Conv2d

    n, c, h, w, k, r, s_ = (f.integer(col) for col in ("N_batch", "C_in", "H_in", "W_in", "K_out", "R_filter_h",
                                                        "S_filter_w"))  # fmt: skip
    assert n and c and h and w and k and r and s_
    pad = (f.integer("pad_h", required=False) or 0, f.integer("pad_w", required=False) or 0)
    stride = (f.integer("stride_h", required=False) or 1, f.integer("stride_w", required=False) or 1)
    dtype = _dtype(f.text("dtype")) or "fp32"
    algo = (
        "implicit_gemm"
        if re.search(r"cutlass|implicit", f.text("library_or_algo"), re.IGNORECASE)
        else "auto"
    )
    op = Conv2d(
        "conv",
        dtype,
        batch=n,
        h=h,
        w=w,
        c_in=c,
        c_out=k,
        kernel=(r, s_),
        stride=stride,
        padding=pad,
        algo=algo,
    )
    t_ms, tflops = f.number("fwd_time_ms"), f.number("fwd_tflops_per_s")
    measured = t_ms * 1e-3 if t_ms else (op.flops / (tflops * 1e12) if tflops else math.nan)
    row = _base(f, "hardware", "conv", dtype, f"n{n} {h}x{w}x{c} -> {k} {r}x{s_}", "time", measured)
    if not row.reason and not measured > 0:
        row.reason = "no measured forward time"
    if not row.reason:
        row.predict = lambda: sim.op_time(row.preset or "", op, None)
    return row


@csv_format("gemm_*.csv", ("M", "N", "K"), ("gpu",), ("time_ms", "tflops_per_s"), ("dtype_in", "dtype"))
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


#: (regex on a published implementation name, attention kernel) -- the first match wins. PyTorch's SDPA
#: runs FlashAttention-2 as its flash backend (and picks it for fp16/bf16 on sm80+ when left to choose), the
#: xformers cutlass kernel as its memory-efficient backend and the unfused ops as its math backend.
ATTENTION_IMPLEMENTATIONS: tuple[tuple[str, str], ...] = (
    (r"flash\s*attention[- ]?3|\bfa3\b", "fa3"),
    (r"triton", "triton"),
    (r"xformers|mem(ory)?[-_ ]?efficient|cutlass", "xformers"),
    (r"\bmath\b|standard|^pytorch$|eager", "standard"),
    (r"flash\s*attention[- ]?2(\.0)?$|flash backend|\bfa2\b|^sdpa\b", "fa2"),
    (r"^flash\s*attention(\s*v?1(\.\d+)*)?$|\bfa1\b", "fa1"),
)


def attention_kernel_of(implementation: str) -> str | None:
    """The attention kernel a published implementation name is, or None when it is none of them."""
    text = implementation.strip()
    return next((k for pat, k in ATTENTION_IMPLEMENTATIONS if re.search(pat, text, re.IGNORECASE)), None)


@csv_format("attention_*.csv", ("head_dim", "seqlen"), ("gpu",), ("pass",), ("num_heads",), ("batch",), ("causal",),
            ("time_ms", "tflops_per_s"))  # fmt: skip
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
    row.kernel = attention_kernel_of(impl) or ""
    if pass_ not in ("fwd", "fwd+bwd"):
        row.reason = "pass not stated in the source (its script reports fwd+bwd totals)"
    elif causal_text not in ("true", "false", "1", "0", "yes", "no"):
        row.reason = f"causal flag {f.text('causal')!r} not stated"
    elif not measured > 0:
        row.reason = "no measured value (out of memory in the source)"
    elif not row.kernel:
        row.reason = f"implementation {impl!r} is none of the modelled attention kernels"
    else:
        from simcore.ops import Attention, AttentionGrad

        fwd = Attention("attention", dtype, batch=batch, heads=heads, kv_heads=heads, q_len=seq, kv_len=seq,
                        head_dim=d, causal=causal, kernel=row.kernel)  # fmt: skip
        ops = [fwd] if pass_ == "fwd" else [fwd, AttentionGrad("attention_grad", dtype, batch=batch, heads=heads,
                                                              kv_heads=heads, q_len=seq, kv_len=seq, head_dim=d,
                                                              causal=causal, kernel=row.kernel)]  # fmt: skip

        def predict() -> tuple[float, str]:
            times = [sim.op_time(row.preset or "", op, None) for op in ops]
            return sum(t for t, _ in times), times[0][1]

        row.predict = predict
    return row


_MISC_FAMILIES = ("softmax", "layernorm", "gelu")


@csv_format("ops_misc_*.csv", ("op", "throughput_Gelem_per_s"), ("hardware",), ("M",), ("latency_s",))
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


@csv_format("links_*.csv", ("link_or_memory",), ("hardware",), ("bandwidth_GB_per_s",), ("direction_or_kernel",),
            ("test",))  # fmt: skip
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
