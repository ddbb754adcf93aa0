"""CNN layers as op records, their lowering to GEMM, and builders for common vision networks.

Tensors are NHWC. A convolution is costed on GEMM hardware through its implicit-GEMM form
(M = batch·H_out·W_out, N = c_out/groups, K = kh·kw·c_in/groups, once per group); its memory traffic
is that of the real tensors, not of the im2col matrix.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

from simcore.errors import ConfigError
from simcore.ops import Attention, Elementwise, Gemm, Norm, Op, OpGraph, Tensor, register_op


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclass(frozen=True, slots=True)
class GemmDims:
    """An equivalent GEMM: `groups` independent [m x k] @ [k x n] products."""

    m: int
    n: int
    k: int
    groups: int = 1

    @property
    def macs(self) -> int:
        return self.groups * self.m * self.n * self.k


#: Winograd minimal filtering F(m x m, 3 x 3) (Lavin and Gray 2016, "Fast Algorithms for Convolutional
#: Neural Networks", arXiv 1509.09308, §4): m -> (B^T, G, A^T), the input-tile (B^T d B), filter (G g G^T)
#: and output (A^T M A) transforms of an alpha x alpha tile, alpha = m + 2.
WINOGRAD: dict[int, tuple[tuple[tuple[float, ...], ...], ...]] = {
    2: (((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
        ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1)),
        ((1, 1, 1, 0), (0, 1, -1, -1))),
    4: (((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0), (0, -2, -1, 2, 1, 0),
         (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
        ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
         (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
        ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))),
}  # fmt: skip


def transform_flops(matrix: tuple[tuple[float, ...], ...]) -> int:
    """FLOPs of one pass of a transform matrix over one column: per row, an addition per nonzero after the
    first and a multiplication per coefficient other than +-1 (F(2x2, 3x3)'s input transform B^T d B:
    2 passes x 4 columns x 4 = 32, its output transform 24, as Lavin and Gray count them)."""
    return sum(
        max(0, sum(1 for c in row if c) - 1) + sum(1 for c in row if c and abs(c) != 1) for row in matrix
    )


@dataclass(frozen=True, slots=True)
class Transform(Op):
    """A streaming kernel reading `read` elements and writing `written` (a Winograd transform): priced like
    an elementwise kernel from its bytes and `total_flops`."""

    read: int = 1
    written: int = 1
    total_flops: float = 0.0
    kind: ClassVar[str] = "elementwise"

    @property
    def flops(self) -> float:
        return self.total_flops

    def tensors(self) -> tuple[Tensor, ...]:
        e = self.elem_bytes
        return (Tensor("x", self.read * e, "in"), Tensor("y", self.written * e, "out"))


#: convolution algorithms a run may name: the library's fastest (cuDNN's benchmark mode), or one of them
CONV_ALGOS = ("auto", "implicit_gemm", "winograd")


@register_op
@dataclass(frozen=True, slots=True)
class Conv2d(Op):
    """2-D convolution, NHWC. `groups == c_in == c_out` is a depthwise convolution. `algo` (CONV_ALGOS):
    the algorithm the library runs; `auto` is the fastest one that applies."""

    batch: int = 1
    h: int = 1
    w: int = 1
    c_in: int = 1
    c_out: int = 1
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = False
    algo: str = "auto"
    kind: ClassVar[str] = "conv2d"

    def __post_init__(self) -> None:
        for f in ("kernel", "stride", "padding", "dilation"):
            object.__setattr__(self, f, _pair(getattr(self, f)))
        for f in ("batch", "h", "w", "c_in", "c_out", "groups"):
            if getattr(self, f) < 1:
                raise ValueError(f"conv2d {self.name!r}: {f} must be >= 1, got {getattr(self, f)}")
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.dilation) < 1 or min(self.padding) < 0:
            raise ValueError(f"conv2d {self.name!r}: kernel/stride/dilation must be >= 1 and padding >= 0")
        if self.c_in % self.groups or self.c_out % self.groups:
            raise ValueError(
                f"conv2d {self.name!r}: groups={self.groups} must divide c_in={self.c_in} and c_out={self.c_out}"
            )
        if self.h_out < 1 or self.w_out < 1:
            raise ValueError(f"conv2d {self.name!r}: kernel larger than the padded input")
        if self.algo not in CONV_ALGOS:
            raise ValueError(
                f"conv2d {self.name!r}: unknown algo {self.algo!r} (known: {', '.join(CONV_ALGOS)})"
            )
        if self.algo == "winograd" and self.winograd(2) is None:
            raise ValueError(f"conv2d {self.name!r}: winograd needs a 3x3, stride-1, undilated, ungrouped "
                             "floating-point convolution")  # fmt: skip

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.c_in

    @property
    def h_out(self) -> int:
        (kh, _), (sh, _), (ph, _), (dh, _) = self.kernel, self.stride, self.padding, self.dilation
        return (self.h + 2 * ph - dh * (kh - 1) - 1) // sh + 1

    @property
    def w_out(self) -> int:
        (_, kw), (_, sw), (_, pw), (_, dw) = self.kernel, self.stride, self.padding, self.dilation
        return (self.w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def gemm(self) -> GemmDims:
        """Implicit-GEMM (im2col) dimensions."""
        kh, kw = self.kernel
        return GemmDims(self.batch * self.h_out * self.w_out, self.c_out // self.groups,
                        kh * kw * self.c_in // self.groups, self.groups)  # fmt: skip

    @property
    def macs(self) -> int:
        return self.gemm().macs

    def winograd(self, m: int) -> tuple[Op, ...] | None:
        """The convolution as non-fused Winograd F(m x m, 3 x 3) kernels (cuDNN's WINOGRAD_NONFUSED, Lavin and
        Gray §4-5): the filter and input tiles transformed into alpha^2 planes, alpha^2 independent GEMMs of
        [tiles x c_in] @ [c_in x c_out] (m^2 outputs per 9 m^2 / alpha^2 times fewer multiplications), the
        output planes transformed back. None where it does not apply: a 3x3, stride-1, undilated, ungrouped
        convolution in a floating-point dtype only."""
        if (self.kernel, self.stride, self.dilation, self.groups) != ((3, 3), (1, 1), (1, 1), 1) or \
                self.dtype not in ("fp32", "tf32", "fp16", "bf16") or m not in WINOGRAD or \
                self.algo == "implicit_gemm":  # fmt: skip
            return None
        bt, g, at = WINOGRAD[m]
        a = m + 2
        c, k = self.c_in, self.c_out
        tiles = self.batch * -(-self.h_out // m) * -(-self.w_out // m)
        n, dt = self.name, self.dtype
        return (
            Transform(f"{n}.winograd_filter", dt, read=9 * c * k, written=a * a * c * k,
                      total_flops=(3 + a) * transform_flops(g) * c * k),
            Transform(f"{n}.winograd_input", dt, read=self.batch * self.h * self.w * c, written=a * a * tiles * c,
                      total_flops=2 * a * transform_flops(bt) * tiles * c),
            Gemm(f"{n}.winograd_gemm", dt, m=tiles, n=k, k=c, batch=a * a, b_is_weight=False),
            Transform(f"{n}.winograd_output", dt, read=a * a * tiles * k,
                      written=self.batch * self.h_out * self.w_out * k,
                      total_flops=(a + m) * transform_flops(at) * tiles * k),
        )  # fmt: skip

    @property
    def params(self) -> int:
        kh, kw = self.kernel
        return kh * kw * (self.c_in // self.groups) * self.c_out + (self.c_out if self.bias else 0)

    @property
    def flops(self) -> float:
        return 2.0 * self.macs

    def tensors(self) -> tuple[Tensor, ...]:
        e = self.elem_bytes
        return (
            Tensor("x", self.batch * self.h * self.w * self.c_in * e, "in"),
            Tensor("w", self.params * e, "weight"),
            Tensor("y", self.batch * self.h_out * self.w_out * self.c_out * e, "out"),
        )


@register_op
@dataclass(frozen=True, slots=True)
class Pool(Op):
    """Max / average pooling over windows; `global_pool` reduces each channel to one value."""

    batch: int = 1
    h: int = 1
    w: int = 1
    c: int = 1
    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    padding: tuple[int, int] = (0, 0)
    function: str = "max"
    global_pool: bool = False
    kind: ClassVar[str] = "pool"

    def __post_init__(self) -> None:
        for f in ("kernel", "stride", "padding"):
            object.__setattr__(self, f, _pair(getattr(self, f)))
        if self.function not in ("max", "avg"):
            raise ValueError(f"pool {self.name!r}: function must be 'max' or 'avg', got {self.function!r}")

    @property
    def h_out(self) -> int:
        if self.global_pool:
            return 1
        return (self.h + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1

    @property
    def w_out(self) -> int:
        if self.global_pool:
            return 1
        return (self.w + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1

    @property
    def window(self) -> int:
        return self.h * self.w if self.global_pool else self.kernel[0] * self.kernel[1]

    @property
    def flops(self) -> float:
        """One compare or add per input of each window."""
        return float(self.batch * self.h_out * self.w_out * self.c * self.window)

    def tensors(self) -> tuple[Tensor, ...]:
        e = self.elem_bytes
        return (Tensor("x", self.batch * self.h * self.w * self.c * e, "in"),
                Tensor("y", self.batch * self.h_out * self.w_out * self.c * e, "out"))  # fmt: skip


@dataclass(frozen=True, slots=True)
class ElementwiseLayer(Elementwise):
    """Batch-norm, activation or residual add. `fused` marks an epilogue applied to the producer's
    output while it is still on chip: its FLOPs remain but it moves no tensor through memory."""

    fused: bool = False

    def tensors(self) -> tuple[Tensor, ...]:
        return () if self.fused else Elementwise.tensors(self)


def fc(name: str, batch: int, n_in: int, n_out: int, dtype: str = "bf16") -> Gemm:
    """A fully connected layer: [batch x n_in] @ [n_in x n_out]."""
    return Gemm(name=name, dtype=dtype, m=batch, n=n_out, k=n_in)


# ---------------------------------------------------------------------------------------- builders


@dataclass(frozen=True, slots=True)
class Feature:
    """A feature map flowing through a builder: the op that produced it and its NHWC shape."""

    node: str
    h: int
    w: int
    c: int


class NetBuilder:
    """Appends layers to an OpGraph, tracking shapes and parameter counts (node attribute `params`).

    With `fuse` (default) batch-norm and activations after a conv or FC are epilogues of that layer:
    they cost FLOPs but move no tensors through memory.
    """

    def __init__(self, name: str, batch: int = 1, dtype: str = "bf16", fuse: bool = True) -> None:
        self.graph = OpGraph(name)
        self.batch, self.dtype, self.fuse = batch, dtype, fuse
        self._n: dict[str, int] = {}

    def _name(self, base: str) -> str:
        i = self._n.get(base, 0)
        self._n[base] = i + 1
        return f"{base}{i}" if i or base.endswith(".") else base

    def add(self, op: Op, deps: tuple[str, ...] | list[str] = (), params: int = 0, phase: str = "") -> str:
        name = self.graph.add(op, deps=tuple(d for d in deps if d), phase=phase)
        self.graph.g.nodes[name]["params"] = params
        return name

    def input(self, h: int, w: int, c: int) -> Feature:
        return Feature("", h, w, c)

    # layers ----------------------------------------------------------------------------------
    def pointwise(self, x: Feature, name: str, function: str, flops: float = 1.0, params: int = 0,
                  inputs: int = 1, deps: tuple[str, ...] = (), fused: bool | None = None) -> Feature:  # fmt: skip
        """Batch-norm / activation / add over the whole feature map."""
        fused = self.fuse if fused is None else fused
        op = ElementwiseLayer(name=self._name(name), dtype=self.dtype, elements=self.batch * x.h * x.w * x.c,
                              inputs=inputs, flops_per_element=flops, function=function, fused=fused)  # fmt: skip
        return Feature(self.add(op, (x.node, *deps), params), x.h, x.w, x.c)

    def conv(self, x: Feature, name: str, c_out: int, k: int, s: int = 1, p: int | None = None,
             groups: int = 1, bias: bool = False, bn: bool = True, act: str | None = "relu") -> Feature:  # fmt: skip
        p = (k - 1) // 2 if p is None else p
        op = Conv2d(name=self._name(name), dtype=self.dtype, batch=self.batch, h=x.h, w=x.w, c_in=x.c,
                    c_out=c_out, kernel=k, stride=s, padding=p, groups=groups, bias=bias)  # fmt: skip
        y = Feature(self.add(op, (x.node,), op.params), op.h_out, op.w_out, c_out)
        if bn:
            y = self.pointwise(y, f"{op.name}.bn", "batchnorm", flops=2.0, params=2 * c_out)
        if act:
            y = self.pointwise(y, f"{op.name}.{act}", act, flops=_ACT_FLOPS[act])
        return y

    def pool(self, x: Feature, name: str, k: int = 2, s: int = 2, p: int = 0, function: str = "max",
             global_pool: bool = False) -> Feature:  # fmt: skip
        op = Pool(name=self._name(name), dtype=self.dtype, batch=self.batch, h=x.h, w=x.w, c=x.c, kernel=k,
                  stride=s, padding=p, function=function, global_pool=global_pool)  # fmt: skip
        return Feature(self.add(op, (x.node,)), op.h_out, op.w_out, x.c)

    def fc(self, x: Feature, name: str, n_out: int, act: str | None = None, rows: int = 1) -> Feature:
        """Fully connected over the flattened features (`rows` vectors per sample, e.g. tokens)."""
        n_in = x.h * x.w * x.c // rows
        op = Gemm(name=self._name(name), dtype=self.dtype, m=self.batch * rows, n=n_out, k=n_in)
        y = Feature(self.add(op, (x.node,), n_in * n_out + n_out), 1, rows, n_out)
        if act:
            y = self.pointwise(y, f"{op.name}.{act}", act, flops=_ACT_FLOPS[act])
        return y

    def residual(self, x: Feature, skip: Feature, name: str, act: str | None = "relu") -> Feature:
        """y = act(x + skip): the add reads both tensors (not fused: the skip comes from elsewhere)."""
        y = self.pointwise(x, name, "add", inputs=2, deps=(skip.node,), fused=False)
        if act:
            y = self.pointwise(y, f"{name}.{act}", act, flops=_ACT_FLOPS[act])
        return y


_ACT_FLOPS = {"relu": 1.0, "relu6": 2.0, "swish": 4.0, "sigmoid": 4.0, "gelu": 8.0}


def param_count(graph: OpGraph) -> int:
    """Trainable parameters recorded by the builder (weights, biases, norm scales, embeddings)."""
    return int(sum(d.get("params", 0) for _, d in graph.g.nodes(data=True)))


def mac_count(graph: OpGraph) -> float:
    """Multiply-accumulates of convolutions, GEMMs and attention products (the papers' convention)."""
    total = 0.0
    for _, d in graph.g.nodes(data=True):
        op = d["op"]
        if isinstance(op, Conv2d):
            total += op.macs
        elif isinstance(op, Gemm | Attention):
            total += op.flops / 2.0
    return total


# ---------------------------------------------------------------------------------------- networks


def resnet(depth: int = 50, batch: int = 1, resolution: int = 224, dtype: str = "bf16", classes: int = 1000,
           fuse: bool = True) -> OpGraph:  # fmt: skip
    """ResNet-18/34/50/101/152 (He et al., CVPR 2016; torchvision's v1.5: stride on the 3x3 conv)."""
    blocks, bottleneck = {18: ([2, 2, 2, 2], False), 34: ([3, 4, 6, 3], False), 50: ([3, 4, 6, 3], True),
                          101: ([3, 4, 23, 3], True), 152: ([3, 8, 36, 3], True)}[depth]  # fmt: skip
    b = NetBuilder(f"resnet{depth}", batch, dtype, fuse)
    x = b.conv(b.input(resolution, resolution, 3), "conv1", 64, 7, 2, 3)
    x = b.pool(x, "maxpool", 3, 2, 1)
    expansion = 4 if bottleneck else 1
    for stage, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True)):
        for i in range(n):
            s = 2 if (i == 0 and stage > 0) else 1
            pre = f"layer{stage + 1}.{i}."
            skip = x
            if s != 1 or x.c != width * expansion:
                skip = b.conv(x, pre + "downsample", width * expansion, 1, s, 0, act=None)
            if bottleneck:
                y = b.conv(x, pre + "conv1", width, 1)
                y = b.conv(y, pre + "conv2", width, 3, s)
                y = b.conv(y, pre + "conv3", width * 4, 1, act=None)
            else:
                y = b.conv(x, pre + "conv1", width, 3, s)
                y = b.conv(y, pre + "conv2", width, 3, act=None)
            x = b.residual(y, skip, pre + "add")
    x = b.pool(x, "avgpool", function="avg", global_pool=True)
    b.fc(x, "fc", classes)
    return b.graph


def resnet18(batch: int = 1, **kw: object) -> OpGraph:
    return resnet(18, batch, **kw)  # type: ignore[arg-type]


def resnet50(batch: int = 1, **kw: object) -> OpGraph:
    return resnet(50, batch, **kw)  # type: ignore[arg-type]


def vgg16(
    batch: int = 1, resolution: int = 224, dtype: str = "bf16", classes: int = 1000, fuse: bool = True
) -> OpGraph:
    """VGG-16, configuration D (Simonyan & Zisserman, ICLR 2015): 13 3x3 convs with bias, 3 FCs."""
    b = NetBuilder("vgg16", batch, dtype, fuse)
    x = b.input(resolution, resolution, 3)
    for i, v in enumerate(
        [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    ):
        x = b.pool(x, f"pool{i}") if v == "M" else b.conv(x, f"conv{i}", int(v), 3, bias=True, bn=False)
    x = b.fc(x, "fc1", 4096, act="relu")
    x = b.fc(x, "fc2", 4096, act="relu")
    b.fc(x, "fc3", classes)
    return b.graph


def mobilenet_v1(batch: int = 1, resolution: int = 224, dtype: str = "bf16", classes: int = 1000, width: float = 1.0,
                 fuse: bool = True) -> OpGraph:  # fmt: skip
    """MobileNetV1 (Howard et al., 2017, Table 1): depthwise-separable 3x3 blocks."""
    b = NetBuilder("mobilenet_v1", batch, dtype, fuse)

    def ch(c: int) -> int:
        return max(8, int(c * width))

    x = b.conv(b.input(resolution, resolution, 3), "conv0", ch(32), 3, 2)
    cfg = (
        [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    )
    for i, (c, s) in enumerate(cfg):
        x = b.conv(x, f"dw{i + 1}", x.c, 3, s, groups=x.c)
        x = b.conv(x, f"pw{i + 1}", ch(c), 1)
    x = b.pool(x, "avgpool", function="avg", global_pool=True)
    b.fc(x, "fc", classes)
    return b.graph


def mobilenet_v2(batch: int = 1, resolution: int = 224, dtype: str = "bf16", classes: int = 1000,
                 fuse: bool = True) -> OpGraph:  # fmt: skip
    """MobileNetV2 (Sandler et al., CVPR 2018, Table 2): inverted residuals with linear bottlenecks."""
    b = NetBuilder("mobilenet_v2", batch, dtype, fuse)
    x = b.conv(b.input(resolution, resolution, 3), "conv0", 32, 3, 2, act="relu6")
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]  # fmt: skip
    idx = 0
    for t, c, n, s in settings:
        for i in range(n):
            stride = s if i == 0 else 1
            pre = f"block{idx}."
            y = x
            if t != 1:
                y = b.conv(y, pre + "expand", x.c * t, 1, act="relu6")
            y = b.conv(y, pre + "dw", y.c, 3, stride, groups=y.c, act="relu6")
            y = b.conv(y, pre + "project", c, 1, act=None)
            x = b.residual(y, x, pre + "add", act=None) if stride == 1 and x.c == c else y
            idx += 1
    x = b.conv(x, "conv_last", 1280, 1, act="relu6")
    x = b.pool(x, "avgpool", function="avg", global_pool=True)
    b.fc(x, "fc", classes)
    return b.graph


def efficientnet_b0(batch: int = 1, resolution: int = 224, dtype: str = "bf16", classes: int = 1000,
                    fuse: bool = True) -> OpGraph:  # fmt: skip
    """EfficientNet-B0 (Tan & Le, ICML 2019, Table 1): MBConv blocks with squeeze-and-excitation."""
    b = NetBuilder("efficientnet_b0", batch, dtype, fuse)
    x = b.conv(b.input(resolution, resolution, 3), "stem", 32, 3, 2, act="swish")
    stages = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
              (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]  # fmt: skip
    idx = 0
    for t, k, s, c, n in stages:
        for i in range(n):
            stride = s if i == 0 else 1
            pre = f"block{idx}."
            y = x
            if t != 1:
                y = b.conv(y, pre + "expand", x.c * t, 1, act="swish")
            y = b.conv(y, pre + "dw", y.c, k, stride, groups=y.c, act="swish")
            # squeeze-and-excitation on the expanded map, squeezed to a quarter of the block input
            se = max(1, x.c // 4)
            z = b.pool(y, pre + "se.pool", function="avg", global_pool=True)
            z = b.conv(z, pre + "se.reduce", se, 1, bias=True, bn=False, act="swish")
            z = b.conv(z, pre + "se.expand", y.c, 1, bias=True, bn=False, act="sigmoid")
            y = b.pointwise(y, pre + "se.scale", "mul", inputs=2, deps=(z.node,), fused=False)
            y = b.conv(y, pre + "project", c, 1, act=None)
            x = b.residual(y, x, pre + "add", act=None) if stride == 1 and x.c == c else y
            idx += 1
    x = b.conv(x, "head", 1280, 1, act="swish")
    x = b.pool(x, "avgpool", function="avg", global_pool=True)
    b.fc(x, "fc", classes)
    return b.graph


def vit(batch: int = 1, resolution: int = 224, patch: int = 16, hidden: int = 768, layers: int = 12,
        heads: int = 12, mlp: int = 3072, classes: int = 1000, dtype: str = "bf16", fuse: bool = True,
        name: str = "vit_base_16") -> OpGraph:  # fmt: skip
    """Vision Transformer (Dosovitskiy et al., ICLR 2021); defaults are ViT-Base/16 at 224x224."""
    b = NetBuilder(name, batch, dtype, fuse)
    x = b.conv(b.input(resolution, resolution, 3), "patch_embed", hidden, patch, patch, 0, bias=True, bn=False,
               act=None)  # fmt: skip
    tokens = x.h * x.w + 1
    # class token and position embeddings: an add over the token sequence
    x = Feature(x.node, 1, tokens, hidden)
    x = b.pointwise(x, "pos_embed", "add", params=tokens * hidden + hidden, fused=False)
    rows = batch * tokens
    for i in range(layers):
        pre = f"blocks.{i}."
        skip = x
        n1 = Norm(name=pre + "norm1", dtype=dtype, rows=rows, cols=hidden)
        y = Feature(b.add(n1, (x.node,), 2 * hidden), 1, tokens, hidden)
        y = b.fc(y, pre + "qkv", 3 * hidden, rows=tokens)
        att = Attention(name=pre + "attn", dtype=dtype, batch=batch, heads=heads, kv_heads=heads, q_len=tokens,
                        kv_len=tokens, head_dim=hidden // heads, causal=False)  # fmt: skip
        y = Feature(b.add(att, (y.node,)), 1, tokens, hidden)
        y = b.fc(y, pre + "proj", hidden, rows=tokens)
        x = b.residual(y, skip, pre + "add1", act=None)
        skip = x
        n2 = Norm(name=pre + "norm2", dtype=dtype, rows=rows, cols=hidden)
        y = Feature(b.add(n2, (x.node,), 2 * hidden), 1, tokens, hidden)
        y = b.fc(y, pre + "fc1", mlp, act="gelu", rows=tokens)
        y = b.fc(y, pre + "fc2", hidden, rows=tokens)
        x = b.residual(y, skip, pre + "add2", act=None)
    nf = Norm(name="norm", dtype=dtype, rows=rows, cols=hidden)
    x = Feature(b.add(nf, (x.node,), 2 * hidden), 1, 1, hidden)  # the class token feeds the head
    b.fc(x, "head", classes)
    return b.graph


def vit_base(batch: int = 1, **kw: object) -> OpGraph:
    return vit(batch, **kw)  # type: ignore[arg-type]


BUILDERS = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vgg16": vgg16,
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "efficientnet_b0": efficientnet_b0,
    "vit_base": vit_base,
}


def build(name: str, batch: int = 1, **kw: object) -> OpGraph:
    """A CNN / ViT by name (see BUILDERS)."""
    try:
        fn = BUILDERS[name.lower().replace("-", "_")]
    except KeyError:
        raise ValueError(f"unknown network {name!r} (known: {', '.join(BUILDERS)})") from None
    return fn(batch, **kw)


# --------------------------------------------------------------------------------------- CLI hooks


def _int_arg(flag: str, minimum: int) -> object:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{flag} must be >= {minimum}, got {v}")
        return v

    return parse


def conv2d_cli_args(p: argparse.ArgumentParser) -> None:
    """Shape flags of `simcore op conv2d` (the command adds --hw, --set, --dtype, --json)."""
    p.add_argument("--batch", type=_int_arg("--batch", 1), default=1)
    p.add_argument("--h", type=_int_arg("--h", 1), required=True, help="input height")
    p.add_argument("--w", type=_int_arg("--w", 1), default=None, help="input width (default: --h)")
    p.add_argument("--c-in", type=_int_arg("--c-in", 1), required=True)
    p.add_argument("--c-out", type=_int_arg("--c-out", 1), required=True)
    p.add_argument("--kernel", type=_int_arg("--kernel", 1), default=3)
    p.add_argument("--stride", type=_int_arg("--stride", 1), default=1)
    p.add_argument("--padding", type=_int_arg("--padding", 0), default=0)
    p.add_argument("--dilation", type=_int_arg("--dilation", 1), default=1)
    p.add_argument("--groups", type=_int_arg("--groups", 1), default=1, help="c_in for depthwise")
    p.add_argument("--algo", choices=CONV_ALGOS, default="auto",
                   help="convolution algorithm (default: the library's fastest)")  # fmt: skip


def conv2d_from_args(a: argparse.Namespace) -> Conv2d:
    """The Conv2d the flags describe; impossible shapes are one-line ConfigErrors."""
    try:
        return Conv2d(name="conv2d", dtype=getattr(a, "dtype", "bf16"), batch=a.batch, h=a.h,
                      w=a.w if a.w is not None else a.h, c_in=a.c_in, c_out=a.c_out, kernel=a.kernel,
                      stride=a.stride, padding=a.padding, dilation=a.dilation, groups=a.groups,
                      algo=getattr(a, "algo", "auto"))  # fmt: skip
    except ValueError as e:
        raise ConfigError(str(e), key="simcore op conv2d") from None
