"""CNN layers, their GEMM lowering, network builders against published sizes, and ONNX import."""

from __future__ import annotations

import pytest

from hardware.systolic import SystolicArray, scalesim_conv
from models.cnn import (
    BUILDERS,
    WINOGRAD,
    Conv2d,
    ElementwiseLayer,
    Pool,
    build,
    mac_count,
    param_count,
    resnet50,
    transform_flops,
)
from simcore.errors import ConfigError
from simcore.ops import OP_KINDS, Attention, Gemm
from simcore.system import load_system


def test_conv_shapes_flops_and_bytes() -> None:
    c = Conv2d(name="c", batch=2, h=56, w=56, c_in=64, c_out=128, kernel=3, stride=2, padding=1, dtype="bf16")
    assert (c.h_out, c.w_out) == (28, 28)  # floor((56 + 2 - 3) / 2) + 1
    g = c.gemm()
    assert (g.m, g.n, g.k, g.groups) == (2 * 28 * 28, 128, 9 * 64, 1)
    assert c.flops == 2 * g.m * g.n * g.k
    # bytes are the real tensors (NHWC input, weights, output), not the im2col matrix
    assert c.bytes == 2 * (2 * 56 * 56 * 64 + 9 * 64 * 128 + 2 * 28 * 28 * 128)
    assert OP_KINDS["conv2d"] is Conv2d and OP_KINDS["pool"] is Pool


def test_depthwise_and_dilated_conv_lowering() -> None:
    dw = Conv2d(name="dw", h=14, w=14, c_in=32, c_out=32, kernel=3, padding=1, groups=32)
    assert dw.depthwise
    g = dw.gemm()
    assert (g.m, g.n, g.k, g.groups) == (196, 1, 9, 32)
    assert dw.params == 9 * 32
    dil = Conv2d(name="d", h=32, w=32, c_in=8, c_out=8, kernel=3, dilation=2, padding=2)
    assert dil.h_out == 32  # effective kernel 5
    with pytest.raises(ValueError, match="groups"):
        Conv2d(name="bad", c_in=6, c_out=4, groups=4)


def test_pool_and_fused_elementwise() -> None:
    p = Pool(name="p", h=112, w=112, c=64, kernel=3, stride=2, padding=1)
    assert (p.h_out, p.w_out) == (56, 56)
    gp = Pool(name="g", batch=4, h=7, w=7, c=2048, function="avg", global_pool=True)
    assert (gp.h_out, gp.w_out) == (1, 1) and gp.flops == 4 * 2048 * 49
    bn = ElementwiseLayer(name="bn", elements=1000, flops_per_element=2, function="batchnorm")
    fused = ElementwiseLayer(name="bn", elements=1000, flops_per_element=2, function="batchnorm", fused=True)
    assert bn.bytes == 2 * 1000 * 2 and fused.bytes == 0 and fused.flops == bn.flops == 2000


# Published sizes at 224x224, 1000 classes. Parameter counts: torchvision model cards (ResNet, VGG,
# MobileNetV2, EfficientNet-B0) and timm (vit_base_patch16_224); MobileNetV1: Howard et al. 2017, Table 8
# (4.2 M params, 569 M mult-adds). MACs: torchvision "GFLOPS" (counted as multiply-adds) ResNet-18 1.81,
# ResNet-50 4.09, VGG-16 15.47, MobileNetV2 0.30, EfficientNet-B0 0.39; ViT-B/16 17.6 G (DeiT, Touvron
# et al. 2021, Table 1, multiply-adds incl. attention).
PUBLISHED = {
    "resnet18": (11_689_512, 1.81e9),
    "resnet50": (25_557_032, 4.09e9),
    "vgg16": (138_357_544, 15.47e9),
    "mobilenet_v1": (4.2e6, 569e6),
    "mobilenet_v2": (3_504_872, 0.30e9),
    "efficientnet_b0": (5_288_548, 0.39e9),
    "vit_base": (86_567_656, 17.6e9),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_networks_match_published_params_and_macs(name: str) -> None:
    params, macs = PUBLISHED[name]
    g = build(name)
    assert param_count(g) == pytest.approx(params, rel=0.01 if name == "mobilenet_v1" else 0)
    assert mac_count(g) == pytest.approx(macs, rel=0.015)


def test_batch_scales_work_not_weights() -> None:
    one, four = resnet50(1), resnet50(4)
    assert mac_count(four) == pytest.approx(4 * mac_count(one))
    assert param_count(four) == param_count(one)
    assert set(BUILDERS) >= {
        "resnet18",
        "resnet50",
        "vgg16",
        "mobilenet_v1",
        "mobilenet_v2",
        "efficientnet_b0",
    }


def test_graphs_are_dags_with_residuals_and_fused_epilogues() -> None:
    g = resnet50()
    ops = g.ops()
    assert sum(isinstance(o, Conv2d) for o in ops) == 53  # 49 in the blocks + 4 projection shortcuts
    adds = [n for n in g.g if n.endswith(".add")]
    assert len(adds) == 16 and all(g.g.in_degree(n) == 2 for n in adds)
    bns = [o for o in ops if isinstance(o, ElementwiseLayer) and o.function == "batchnorm"]
    assert bns and all(o.fused and o.bytes == 0 for o in bns)
    unfused = build("resnet50", fuse=False)
    assert sum(o.bytes for o in unfused.ops()) > sum(o.bytes for o in ops)


def test_vit_uses_attention_and_gemm_ops() -> None:
    g = build("vit_base", batch=2)
    atts = [o for o in g.ops() if isinstance(o, Attention)]
    assert len(atts) == 12 and atts[0].q_len == 197 and atts[0].heads == 12 and not atts[0].causal
    assert any(isinstance(o, Gemm) and o.n == 3 * 768 and o.m == 2 * 197 for o in g.ops())


def test_resnet50_on_a_systolic_array_in_scalesim_mode_is_exact() -> None:
    # (its speed, <= 0.2 s, is measured by benchmarks/bench_systolic.py)
    arr = SystolicArray.build(rows=32, cols=32, dataflow="os", mode="scalesim")
    g = resnet50()
    total = sum(arr.op_cost(op).detail["cycles"] for op in g.ops() if arr.supports(op))
    # SCALE-Sim has no padding field: conv1 with its 3-pixel padding is the topology row
    # "230, 230, 7, 7, 3, 64, 2" (output side ceil((230 - 7 + 2) / 2) = 113)
    conv1 = next(o for o in g.ops() if isinstance(o, Conv2d))
    assert arr.op_cost(conv1).detail["cycles"] == scalesim_conv(32, 32, "os", 230, 230, 7, 7, 3, 64, 2).cycles
    assert total > 0


# ------------------------------------------------------------------------------------------ ONNX


def _tiny_cnn(onnx, extra_op: str | None = None):  # type: ignore[no-untyped-def]
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    def init(name: str, *shape: int):  # type: ignore[no-untyped-def]
        return numpy_helper.from_array(np.zeros(shape, dtype=np.float32), name)

    nodes = [
        helper.make_node(
            "Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]
        ),
        helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["bn1"]),
        helper.make_node("Relu", ["bn1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=16),
        helper.make_node("Add", ["c2", "p1"], ["a1"]),
        helper.make_node("GlobalAveragePool", ["a1"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=1),
    ]
    if extra_op:
        nodes.append(helper.make_node(extra_op, ["prob"], ["extra"]))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        [init("w1", 16, 3, 3, 3), init("b1", 16), init("g", 16), init("be", 16), init("mu", 16), init("var", 16),
         init("w2", 16, 1, 3, 3), init("wf", 10, 16), init("bf", 10)],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_import_builds_the_same_ops() -> None:
    onnx = pytest.importorskip("onnx")
    from models.onnx_import import load_onnx

    g = load_onnx(_tiny_cnn(onnx), batch=4)
    ops = {o.name: o for o in g.ops()}
    convs = [o for o in ops.values() if isinstance(o, Conv2d)]
    assert [(c.batch, c.h, c.h_out, c.c_out, c.groups) for c in convs] == [
        (4, 32, 16, 16, 1),
        (4, 8, 8, 16, 16),
    ]
    assert convs[0].dtype == "fp32" and convs[0].bias
    fc = next(o for o in ops.values() if isinstance(o, Gemm))
    assert (fc.m, fc.n, fc.k) == (4, 10, 16)
    ew = [o for o in ops.values() if isinstance(o, ElementwiseLayer)]
    assert [(o.function, o.fused) for o in ew] == [("batchnorm", True), ("relu", True), ("add", False)]
    # parameters: conv1 16*27+16, BN scale+shift 32, depthwise 16*9, FC 160+10
    assert param_count(g) == 448 + 32 + 144 + 170
    assert mac_count(g) == 4 * (16 * 16 * 16 * 27 + 8 * 8 * 16 * 9) + 4 * 16 * 10
    # a graph the systolic array can cost end to end
    arr = SystolicArray.build(rows=8, cols=8)
    assert all(arr.supports(o) for o in g.ops())


def test_onnx_unsupported_ops_are_listed_in_one_line() -> None:
    onnx = pytest.importorskip("onnx")
    from models.onnx_import import load_onnx

    with pytest.raises(ConfigError, match=r"^unsupported ONNX ops: TopK \(supported: ") as e:
        load_onnx(_tiny_cnn(onnx, extra_op="TopK"))
    assert "\n" not in str(e.value)


def test_onnx_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from models.onnx_import import load_onnx

    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ConfigError, match=r"pip install onnx \(from a clone: pip install -e '\.\[onnx\]'\)"):
        load_onnx("model.onnx")


def test_conv2d_cli_hooks_parse_flags_into_an_op() -> None:
    import argparse

    from models.cnn import conv2d_cli_args, conv2d_from_args

    p = argparse.ArgumentParser()
    conv2d_cli_args(p)
    op = conv2d_from_args(
        p.parse_args("--h 56 --c-in 64 --c-out 128 --kernel 3 --stride 2 --padding 1".split())
    )
    assert (op.h, op.w, op.h_out, op.kernel, op.groups) == (56, 56, 28, (3, 3), 1)
    with pytest.raises(ConfigError, match="kernel larger than the padded input"):
        conv2d_from_args(p.parse_args("--h 5 --c-in 3 --c-out 8 --kernel 7".split()))
    with pytest.raises(SystemExit):
        p.parse_args("--h -5 --c-in 3 --c-out 8".split())


def test_winograd_transform_counts_and_multiplications() -> None:
    # Lavin and Gray 2016 (arXiv 1509.09308) §5: F(2x2,3x3) transforms an input tile with 32 additions and
    # an output tile with 24; F(m x m, 3 x 3) multiplies (m + 2)^2 times per m^2 outputs instead of 9 m^2
    bt2, _, at2 = WINOGRAD[2]
    assert 2 * 4 * transform_flops(bt2) == 32 and (4 + 2) * transform_flops(at2) == 24
    for m, saving in ((2, 2.25), (4, 4.0)):
        op = Conv2d("c", "fp32", batch=2, h=16, w=16, c_in=64, c_out=32, kernel=(3, 3), padding=(1, 1))
        filt, inp, gemm, out = op.winograd(m)
        tiles = 2 * (16 // m) ** 2
        assert gemm.batch * gemm.m * gemm.n * gemm.k == (m + 2) ** 2 * tiles * 64 * 32
        assert op.macs / (gemm.batch * gemm.m * gemm.n * gemm.k) == pytest.approx(saving)
        # each transform reads its input once and writes its planes once (fp32: 4 bytes)
        assert inp.bytes == 4 * (2 * 16 * 16 * 64 + (m + 2) ** 2 * tiles * 64)
        assert out.bytes == 4 * ((m + 2) ** 2 * tiles * 32 + 2 * 16 * 16 * 32)
        assert filt.bytes == 4 * (9 + (m + 2) ** 2) * 64 * 32
    for other in (dict(stride=(2, 2)), dict(kernel=(1, 1), padding=(0, 0)), dict(groups=64)):
        kw = dict(batch=2, h=16, w=16, c_in=64, c_out=64, kernel=(3, 3), padding=(1, 1)) | other
        assert Conv2d("c", "fp32", **kw).winograd(2) is None
    assert Conv2d("c", "int8", batch=1, h=8, w=8, c_in=16, c_out=16, kernel=(3, 3)).winograd(2) is None


def test_library_picks_winograd_for_fp32_simt_and_implicit_gemm_on_tensor_cores() -> None:
    gpu = load_system("a100-sxm4-80gb").devices["gpu"]
    shape = dict(batch=32, h=28, w=28, c_in=128, c_out=128, kernel=(3, 3), padding=(1, 1))
    fp32 = Conv2d("c", "fp32", **shape)
    cost, implicit = gpu.op_cost(fp32), gpu.implicit_gemm_cost(fp32)
    # on the CUDA cores 4x fewer multiplications outweigh the transforms' extra traffic
    assert cost.detail["algo"] == "winograd F(4x4,3x3)" and cost.duration_s < 0.5 * implicit.duration_s
    parts = [gpu.op_cost(p) for p in fp32.winograd(4)]
    assert cost.duration_s == pytest.approx(sum(p.duration_s for p in parts))  # four kernels back to back
    # on the tensor cores the transformed planes' DRAM traffic costs more than the saved MACs
    assert gpu.op_cost(Conv2d("c", "bf16", **shape)).detail["algo"] == "implicit gemm"


def test_a_named_conv_algorithm_is_the_one_priced() -> None:
    gpu = load_system("a100-sxm4-80gb").devices["gpu"]
    shape = dict(batch=32, h=28, w=28, c_in=128, c_out=128, kernel=(3, 3), padding=(1, 1))
    forced = gpu.op_cost(Conv2d("c", "fp32", algo="implicit_gemm", **shape))
    assert forced.detail["algo"] == "implicit gemm"
    assert forced.duration_s == gpu.implicit_gemm_cost(Conv2d("c", "fp32", **shape)).duration_s
    # Winograd named where implicit GEMM is faster: still Winograd, the faster of its two tiles
    assert gpu.op_cost(Conv2d("c", "bf16", algo="winograd", **shape)).detail["algo"].startswith("winograd")
    with pytest.raises(ValueError, match="winograd needs a 3x3"):
        Conv2d("c", "fp32", batch=1, h=8, w=8, c_in=16, c_out=16, kernel=(1, 1), algo="winograd")
    with pytest.raises(ValueError, match="unknown algo"):
        Conv2d("c", "fp32", batch=1, h=8, w=8, c_in=16, c_out=16, algo="fft")
