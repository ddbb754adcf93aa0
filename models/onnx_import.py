"""ONNX graphs to OpGraphs (optional: needs the `onnx` package, `pip install onnx`).

Shapes come from ONNX shape inference with symbolic (dynamic) dimensions bound to `batch`.
Convolutions, GEMMs and MatMuls become cost-bearing ops; batch-norm and activations become
element-wise ops (fused into the producing conv / GEMM when they are its only consumer);
reshapes, flattens and the like are views that cost nothing. Anything else is refused up front
with one line naming every unsupported op type.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from models.cnn import Conv2d, ElementwiseLayer, Pool
from simcore.errors import ConfigError
from simcore.ops import Gemm, Norm, Op, OpGraph, Softmax

_ACT = {"Relu": 1.0, "LeakyRelu": 2.0, "Clip": 2.0, "Sigmoid": 4.0, "Tanh": 4.0, "HardSigmoid": 3.0,
        "HardSwish": 4.0, "Gelu": 8.0, "Erf": 4.0, "Elu": 4.0, "Selu": 4.0}  # fmt: skip
_BINARY = {"Add": 1.0, "Sub": 1.0, "Mul": 1.0, "Div": 1.0, "Pow": 1.0}
_VIEWS = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Concat", "Shape", "Gather",
          "Constant", "Cast"}  # fmt: skip
_POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}
SUPPORTED = frozenset({"Conv", "Gemm", "MatMul", "BatchNormalization", "Softmax", "LayerNormalization", "Transpose"}
                      | set(_ACT) | set(_BINARY) | _VIEWS | _POOLS)  # fmt: skip

_DTYPES = {1: "fp32", 10: "fp16", 16: "bf16", 3: "int8", 2: "int8", 11: "fp64"}


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ConfigError(
            "ONNX models need the optional 'onnx' package: pip install onnx (from a clone: pip install -e '.[onnx]')"
        ) from None
    return onnx


def _attrs(node: Any) -> dict[str, Any]:
    onnx = _onnx()
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def load_onnx(
    model: str | Path | Any, batch: int = 1, dtype: str | None = None, name: str | None = None
) -> OpGraph:
    """Read an ONNX model (path or ModelProto) into an OpGraph; node attribute `params` counts the
    weights each op owns. `dtype` overrides the model's element type."""
    onnx = _onnx()
    if isinstance(model, str | Path):
        try:
            model = onnx.load(str(model))
        except Exception as e:  # noqa: BLE001  (protobuf's DecodeError is no OSError/ValueError)
            raise ConfigError(f"cannot read ONNX model: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                              file=str(model)) from None  # fmt: skip
    graph = model.graph
    unsupported = sorted({n.op_type for n in graph.node} - SUPPORTED)
    if unsupported:
        raise ConfigError(
            f"unsupported ONNX ops: {', '.join(unsupported)} (supported: {', '.join(sorted(SUPPORTED))})"
        )

    # bind dynamic dimensions to the batch size, then infer every intermediate shape
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: t for t in model.graph.initializer}
    for vi in model.graph.input:
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = batch
    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(d.dim_value for d in dims)
    for t in g.initializer:
        shapes[t.name] = tuple(t.dims)
    if dtype is None:
        first = next((vi for vi in g.input if vi.name not in inits), None)
        dtype = _DTYPES.get(first.type.tensor_type.elem_type, "fp32") if first is not None else "fp32"

    consumers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    out = OpGraph(name or g.name or "onnx")
    producer: dict[str, str] = {}  # tensor -> op node that made it ("" for graph inputs / weights)
    fusable: set[str] = set()  # tensors produced by a conv / GEMM (or its fused epilogue)

    def shape(t: str, node: Any) -> tuple[int, ...]:
        if t not in shapes:
            raise ConfigError(f"ONNX node {node.name or node.op_type!r}: no inferred shape for tensor {t!r}")
        return shapes[t]

    def add(node: Any, op: Op, params: int = 0, fuse_source: bool = False) -> None:
        deps = sorted({producer[i] for i in node.input if producer.get(i)})
        key = out.add(op, deps=deps)
        out.g.nodes[key]["params"] = params
        for o in node.output:
            producer[o] = key
            if fuse_source:
                fusable.add(o)

    for idx, node in enumerate(g.node):
        op_name = node.name or f"{node.op_type.lower()}_{idx}"
        if op_name in out.g:
            op_name = f"{op_name}_{idx}"
        t = node.op_type
        a = _attrs(node)
        ins = [i for i in node.input if i]
        if t in _VIEWS:
            src = next((producer[i] for i in ins if producer.get(i)), "")
            for o in node.output:
                producer[o] = src
                if any(i in fusable for i in ins):
                    fusable.add(o)
            continue
        if t == "Conv":
            n_, c, h, w = shape(ins[0], node)
            m, cg, kh, kw = shape(ins[1], node)
            pads = list(a.get("pads", [0, 0, 0, 0]))
            groups = int(a.get("group", 1))
            s = tuple(a.get("strides", [1, 1]))
            d = tuple(a.get("dilations", [1, 1]))
            oh, ow = shape(node.output[0], node)[2:]
            pad = []
            for lo, hi, size, k, st, dl, o in ((pads[0], pads[2], h, kh, s[0], d[0], oh),
                                               (pads[1], pads[3], w, kw, s[1], d[1], ow)):  # fmt: skip
                p = (lo + hi + 1) // 2
                if (size + 2 * p - dl * (k - 1) - 1) // st + 1 != o:
                    p = (lo + hi) // 2
                pad.append(p)
            op = Conv2d(name=op_name, dtype=dtype, batch=n_, h=h, w=w, c_in=c, c_out=m, kernel=(kh, kw), stride=s,
                        padding=tuple(pad), dilation=d, groups=groups, bias=len(ins) > 2)  # fmt: skip
            add(node, op, m * cg * kh * kw + (m if len(ins) > 2 else 0), fuse_source=True)
        elif t in ("Gemm", "MatMul"):
            sa, sb = shape(ins[0], node), shape(ins[1], node)
            if t == "Gemm":
                mm, kk = (sa[1], sa[0]) if a.get("transA", 0) else (sa[0], sa[1])
                nn = sb[0] if a.get("transB", 0) else sb[1]
                bsz = 1
            else:
                mm, kk, nn = sa[-2] if len(sa) > 1 else 1, sa[-1], sb[-1]
                bsz = math.prod(sa[:-2]) if len(sa) > 2 else 1
            w_is_init = ins[1] in inits
            if w_is_init:  # shared weights: the batch folds into M
                mm, bsz = mm * bsz, 1
            op = Gemm(name=op_name, dtype=dtype, m=mm, n=nn, k=kk, batch=bsz, b_is_weight=w_is_init)
            params = (kk * nn if w_is_init else 0) + (math.prod(shape(ins[2], node)) if len(ins) > 2 else 0)
            add(node, op, params, fuse_source=True)
        elif t == "BatchNormalization":
            n_elems = math.prod(shape(ins[0], node))
            c = shape(ins[0], node)[1]
            fused = ins[0] in fusable and consumers.get(ins[0], 0) == 1
            add(node, ElementwiseLayer(name=op_name, dtype=dtype, elements=n_elems, flops_per_element=2.0,
                                       function="batchnorm", fused=fused), 2 * c, fuse_source=fused)  # fmt: skip
        elif t in _ACT:
            n_elems = math.prod(shape(ins[0], node))
            fused = ins[0] in fusable and consumers.get(ins[0], 0) == 1
            add(node, ElementwiseLayer(name=op_name, dtype=dtype, elements=n_elems, flops_per_element=_ACT[t],
                                       function=t.lower(), fused=fused), fuse_source=fused)  # fmt: skip
        elif t in _BINARY or t == "Transpose":
            n_elems = math.prod(shape(node.output[0], node))
            live = [i for i in ins if i not in inits]
            params = sum(math.prod(shape(i, node)) for i in ins if i in inits)
            add(node, ElementwiseLayer(name=op_name, dtype=dtype, elements=n_elems, inputs=max(1, len(live)),
                                       flops_per_element=_BINARY.get(t, 0.0), function=t.lower()), params)  # fmt: skip
        elif t in _POOLS:
            n_, c, h, w = shape(ins[0], node)
            if t.startswith("Global"):
                op = Pool(name=op_name, dtype=dtype, batch=n_, h=h, w=w, c=c, kernel=(h, w), stride=(1, 1),
                          function="avg" if "Average" in t else "max", global_pool=True)  # fmt: skip
            else:
                k = tuple(a["kernel_shape"])
                pads = list(a.get("pads", [0, 0, 0, 0]))
                op = Pool(name=op_name, dtype=dtype, batch=n_, h=h, w=w, c=c, kernel=k,
                          stride=tuple(a.get("strides", [1, 1])), padding=(pads[0], pads[1]),
                          function="max" if t == "MaxPool" else "avg")  # fmt: skip
            add(node, op)
        elif t == "Softmax":
            sh = shape(ins[0], node)
            axis = int(a.get("axis", -1)) % len(sh)
            cols = math.prod(sh[axis:])
            add(node, Softmax(name=op_name, dtype=dtype, rows=math.prod(sh) // cols, cols=cols))
        elif t == "LayerNormalization":
            sh = shape(ins[0], node)
            axis = int(a.get("axis", -1)) % len(sh)
            cols = math.prod(sh[axis:])
            params = sum(math.prod(shape(i, node)) for i in ins[1:] if i in inits)
            add(node, Norm(name=op_name, dtype=dtype, rows=math.prod(sh) // cols, cols=cols), params)
    return out
