"""ONNX node -> IR ops, one converter per ONNX op type: convolution, pooling, normalisation,
activations, elementwise ops and aliases. `CONVERT` (in `sparsec.frontend.convert_tensor`) joins
these with the linear and shape converters into the one table the importer reads.

A converter is `fn(ctx, node, attrs)`: it reads operands through the context (`ctx.ref` for a
value or weight, `ctx.param` for a required weight, `ctx.const` for an import-time array) and
defines the node's outputs with `ctx.emit_output` / `ctx.define`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx

from sparsec.frontend.context import Context
from sparsec.ir import ops
from sparsec.ir.activation import Activation

Converter = Callable[[Context, onnx.NodeProto, dict], None]


def f32(value) -> float:
    """A float32 attribute as the shortest decimal that rounds back to it (1e-05, not
    9.999999747378752e-06): the same float32, and IR text that reads like the source model."""
    return float(str(np.float32(value)))


# ---- activations ---------------------------------------------------------------------------


def _clip(ctx: Context, node: onnx.NodeProto, attrs: dict) -> Activation:
    # Opset 11+ gives the bounds as optional inputs (absent or "" = unbounded on that side).
    bounds = []
    for index, name, default in ((1, "min", -math.inf), (2, "max", math.inf)):
        value = ctx.const(node, index, name)
        if value is not None and value.size != 1:
            ctx.fail(node, f"its {name} must be a scalar, got shape {list(value.shape)}")
        bounds.append(f32(value.reshape(-1)[0]) if value is not None else f32(attrs.get(name, default)))
    return Activation("clip", tuple(bounds))


ACTIVATIONS: dict[str, Callable[[Context, onnx.NodeProto, dict], Activation]] = {
    "Relu": lambda ctx, node, attrs: Activation("relu"),
    "Clip": _clip,
    "LeakyRelu": lambda ctx, node, attrs: Activation("leaky_relu", (f32(attrs.get("alpha", 0.01)),)),
    "Sigmoid": lambda ctx, node, attrs: Activation("sigmoid"),
    "HardSigmoid": lambda ctx, node, attrs: Activation(
        "hard_sigmoid", (f32(attrs.get("alpha", 0.2)), f32(attrs.get("beta", 0.5)))),
    "HardSwish": lambda ctx, node, attrs: Activation("hard_swish"),
}


def _activation(ctx: Context, node: onnx.NodeProto, attrs: dict) -> None:
    fn = ACTIVATIONS[node.op_type](ctx, node, attrs)
    ctx.emit_output(node, ops.Activate, input=ctx.ref(node.input[0]), fn=fn)


# ---- windows: convolution and pooling ------------------------------------------------------


def _spatial(ctx: Context, node: onnx.NodeProto) -> tuple[int, int]:
    """H, W of the node's NCHW input; other ranks (1-D, 3-D windows) are not supported."""
    shape = ctx.type_of(node.input[0]).shape
    if len(shape) != 4:
        ctx.fail(node, f"only 2-D windows on NCHW inputs are supported, the input has shape {list(shape)}")
    return shape[2], shape[3]


def _pads(ctx: Context, node: onnx.NodeProto, attrs: dict, kernel, strides, dilations) -> tuple[int, ...]:
    """Explicit (top, left, bottom, right) pads, resolving auto_pad from the input size."""
    mode = attrs.get("auto_pad", "NOTSET")
    if mode == "NOTSET":
        return tuple(attrs.get("pads", (0, 0, 0, 0)))
    if mode == "VALID":
        return (0, 0, 0, 0)
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        ctx.fail(node, f"auto_pad {mode!r} is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER")
    begins, ends = [], []
    for size, k, s, d in zip(_spatial(ctx, node), kernel, strides, dilations, strict=False):
        # SAME: output size ceil(size / stride); the odd pixel of padding goes after (UPPER) or before.
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begins.append(small if mode == "SAME_UPPER" else big)
        ends.append(big if mode == "SAME_UPPER" else small)
    return tuple(begins + ends)


def _window(ctx: Context, node: onnx.NodeProto, attrs: dict, kernel) -> dict:
    """kernel / strides / pads / dilations of a Conv or pool node, defaults filled in."""
    _spatial(ctx, node)
    kernel = tuple(attrs.get("kernel_shape", kernel))
    strides = tuple(attrs.get("strides", (1, 1)))
    dilations = tuple(attrs.get("dilations", (1, 1)))
    pads = _pads(ctx, node, attrs, kernel, strides, dilations)
    return {"kernel": kernel, "strides": strides, "pads": pads, "dilations": dilations}


def _conv(ctx: Context, node: onnx.NodeProto, attrs: dict) -> None:
    weight = ctx.param(node, 1, "weight")
    window = _window(ctx, node, attrs, ctx.type_of(node.input[1]).shape[2:])
    if window.pop("kernel") != ctx.type_of(node.input[1]).shape[2:]:
        ctx.fail(node, "kernel_shape differs from the weight's kernel size")
    ctx.emit_output(node, ops.Conv2d, input=ctx.ref(node.input[0]), weight=weight,
                    bias=ctx.param(node, 2, "bias"), groups=attrs.get("group", 1), **window)


def _max_pool(ctx: Context, node: onnx.NodeProto, attrs: dict) -> None:
    window = _window(ctx, node, attrs, ())
    ctx.emit_output(node, ops.MaxPool, input=ctx.ref(node.input[0]),
                    ceil_mode=bool(attrs.get("ceil_mode", 0)), **window)


def _avg_pool(ctx: Context, node: onnx.NodeProto, attrs: dict) -> None:
    window = _window(ctx, node, attrs, ())
    if window.pop("dilations") != (1, 1):
        ctx.fail(node, "dilated average pooling is not supported")
    ctx.emit_output(node, ops.AvgPool, input=ctx.ref(node.input[0]), ceil_mode=bool(attrs.get("ceil_mode", 0)),
                    count_include_pad=bool(attrs.get("count_include_pad", 0)), **window)


def _global_avg_pool(ctx: Context, node: onnx.NodeProto, attrs: dict) -> None:
    ctx.emit_output(node, ops.GlobalAvgPool, input=ctx.ref(node.input[0]))


def _reduce_mean(ctx: Context, node: onnx.NodeProto, attrs: dict) -> None:
    # The dynamo exporter writes AdaptiveAvgPool2d(1) / x.mean((2, 3)) as ReduceMean over H, W.
    x = ctx.type_of(node.input[0])
    axes = attrs.get("axes") if ctx.opset < 18 else ctx.const(node, 1, "axes")
    axes = sorted(int(a) % x.rank for a in np.reshape(axes, -1)) if axes is not None else None
    if x.rank != 4 or axes != [2, 3]:
        ctx.fail(node, f"only the mean over H, W of an NCHW tensor is supported, got axes {axes} of {x}")
    if attrs.get("keepdims", 1):
        ctx.emit_output(node, ops.GlobalAvgPool, input=ctx.ref(node.input[0]))
        return
    pooled = ctx.emit(node, ops.GlobalAvgPool, ctx.fresh(f"{node.output[0]}.pool"), input=ctx.ref(node.input[0]))
    ctx.emit_output(node, ops.Reshape, input=pooled, shape=x.shape[:2])


# ---- normalisation, elementwise, aliases ---------------------------------------------------


def _batch_norm(ctx: Context, node: onnx.NodeProto, attrs: dict) -> None:
    if attrs.get("training_mode", 0):
        ctx.fail(node, "training-mode batch normalisation is not supported; export the model in eval mode")
    names = ("scale", "bias", "mean", "var")
    params = {name: ctx.param(node, i + 1, name) for i, name in enumerate(names)}
    ctx.emit_output(node, ops.BatchNorm, input=ctx.ref(node.input[0]),
                    epsilon=f32(attrs.get("epsilon", 1e-5)), **params)


def _elementwise(cls: type[ops.Op]) -> Converter:
    # Either side may be a constant: it becomes a weight operand `@name`.
    def convert(ctx: Context, node: onnx.NodeProto, attrs: dict) -> None:
        ctx.emit_output(node, cls, a=ctx.ref(node.input[0]), b=ctx.ref(node.input[1]))
    return convert


def _alias(ctx: Context, node: onnx.NodeProto, attrs: dict) -> None:
    # Identity, and Dropout at inference: the output is the input itself; no op is emitted.
    if node.op_type == "Dropout":
        training = ctx.const(node, 2, "training_mode")
        if training is not None and bool(training):
            ctx.fail(node, "training-mode Dropout is not supported; export the model in eval mode")
    ctx.define(node.output[0], ctx.value(node, 0))


BASIC: dict[str, Converter] = {
    **{op_type: _activation for op_type in ACTIVATIONS},
    "Conv": _conv,
    "MaxPool": _max_pool,
    "AveragePool": _avg_pool,
    "GlobalAveragePool": _global_avg_pool,
    "ReduceMean": _reduce_mean,
    "BatchNormalization": _batch_norm,
    "Add": _elementwise(ops.Add),
    "Mul": _elementwise(ops.Mul),
    "Identity": _alias,
    "Dropout": _alias,
}
