"""CNN layers as op records, their lowering to GEMM, and builders for common vision networks.

Tensors are NHWC. A convolution is costed on GEMM hardware through its implicit-GEMM form
(M = batch·H_out·W_out, N = c_out/groups, K = kh·kw·c_in/groups, once per group); its memory traffic
is that of the real tensors, not of the im2col matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from simcore.ops import Elementwise, Gemm, Op, Tensor, register_op


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


@register_op
@dataclass(frozen=True, slots=True)
class Conv2d(Op):
    """2-D convolution, NHWC. `groups == c_in == c_out` is a depthwise convolution."""

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
