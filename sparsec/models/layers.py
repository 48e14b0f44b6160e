"""Single-layer models for kernel benchmarks: one Conv or one fully connected layer."""

from __future__ import annotations

import onnx

from sparsec.errors import UserError
from sparsec.models._graph import GraphBuilder, check_positive


def conv_layer(
    in_shape: tuple[int, int, int, int] = (1, 64, 56, 56),
    out_channels: int = 64,
    kernel: int = 3,
    stride: int = 1,
    pad: int = 1,
    groups: int = 1,
    bias: bool = True,
    *,
    seed: int = 0,
) -> onnx.ModelProto:
    """One Conv node "conv" (weight "conv.weight", bias "conv.bias") on an NCHW input."""
    n, c, h, w = _check_nchw(in_shape)
    check_positive("conv_layer", out_channels=out_channels, kernel=kernel, stride=stride, groups=groups)
    if pad < 0:
        raise UserError(f"conv_layer: pad={pad} must be zero or positive")
    if c % groups or out_channels % groups:
        raise UserError(
            f"conv_layer: groups={groups} must divide both the input channels ({c}) "
            f"and out_channels ({out_channels})"
        )
    ho, wo = ((h + 2 * pad - kernel) // stride + 1, (w + 2 * pad - kernel) // stride + 1)
    if ho < 1 or wo < 1:
        raise UserError(f"conv_layer: a {kernel}x{kernel} kernel does not fit the {h}x{w} input; pad it")
    g = GraphBuilder(seed)
    x = g.conv("conv", "conv", "input", c, out_channels, kernel, stride=stride, pad=pad, groups=groups, bias=bias)
    return g.finish("conv_layer", (n, c, h, w), (n, out_channels, ho, wo), x)


def conv1x1_layer(
    in_shape: tuple[int, int, int, int] = (1, 64, 56, 56),
    out_channels: int = 64,
    stride: int = 1,
    bias: bool = True,
    *,
    seed: int = 0,
) -> onnx.ModelProto:
    """One pointwise Conv (kernel 1, no padding), the layer kind XNNPACK and TVM make sparse."""
    return conv_layer(in_shape, out_channels, kernel=1, stride=stride, pad=0, bias=bias, seed=seed)


def fc_layer(
    in_features: int = 4096,
    out_features: int = 4096,
    batch: int = 1,
    bias: bool = True,
    *,
    matmul: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """One fully connected layer "fc": Gemm (weight [out, in], transB=1), or MatMul + Add.

    `matmul=True` stores the weight as [in, out] the way a MatMul export does, so the pruner
    and frontend see both layouts.
    """
    check_positive("fc_layer", in_features=in_features, out_features=out_features, batch=batch)
    g = GraphBuilder(seed)
    build = g.matmul if matmul else g.gemm
    x = build("fc", "fc", "input", in_features, out_features, bias=bias)
    return g.finish("fc_layer", (batch, in_features), (batch, out_features), x)


def _check_nchw(in_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    if len(tuple(in_shape)) != 4:
        raise UserError(f"conv_layer: in_shape={tuple(in_shape)} must be (N, C, H, W)")
    n, c, h, w = in_shape
    check_positive("conv_layer", N=n, C=c, H=h, W=w)
    return n, c, h, w
