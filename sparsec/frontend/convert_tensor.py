"""ONNX node -> IR ops for matrix products and shape ops, and `CONVERT`, the importer's one
table of converters (see `sparsec.frontend.convert` for the converter signature)."""

from __future__ import annotations

import numpy as np
import onnx

from sparsec.frontend.context import Context
from sparsec.frontend.convert import BASIC, Converter
from sparsec.frontend.fold import FOLD, resolve_shape
from sparsec.ir import ops

# ---- matrix products -----------------------------------------------------------------------


def _gemm(ctx: Context, node: onnx.NodeProto, attrs: dict) -> None:
    # Y = alpha * A' B' + beta * C. A constant B becomes `linear` (weight [N, K], alpha folded in).
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    a, b = node.input[0], node.input[1]
    if attrs.get("transA", 0) or not ctx.is_const(b) or ctx.is_const(a):
        _gemm_matmul(ctx, node, attrs, alpha, beta)
        return
    trans_b = attrs.get("transB", 0)
    key = ("" if trans_b else "T") + ("" if alpha == 1.0 else f"*{alpha!r}")
    weight = ctx.weight(b, key, lambda w: _times(w if trans_b else w.T, alpha))
    bias = _gemm_bias(ctx, node, beta, ctx.types[weight].shape[0])
    if bias is not None or not _has_c(node):
        ctx.emit_output(node, ops.Linear, input=ctx.ref(a), weight=weight, bias=bias)
        return
    product = ctx.emit(node, ops.Linear, ctx.fresh(f"{node.output[0]}.linear"), input=ctx.ref(a), weight=weight)
    _add_c(ctx, node, product, beta)


def _has_c(node: onnx.NodeProto) -> bool:
    return len(node.input) > 2 and bool(node.input[2])


def _times(array: np.ndarray, factor: float) -> np.ndarray:
    return array if factor == 1.0 else (array * array.dtype.type(factor)).astype(array.dtype)


def _gemm_bias(ctx: Context, node: onnx.NodeProto, beta: float, n: int) -> str | None:
    """C as a bias [N] when it is a constant the same for every row; None otherwise."""
    if not _has_c(node) or not ctx.is_const(node.input[2]):
        return None
    c = ctx.consts[node.input[2]]
    if c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1) or c.size not in (1, n):
        return None
    return ctx.weight(node.input[2], f"bias*{beta!r}", lambda v: _times(np.broadcast_to(v, (1, n))[0].copy(), beta))


def _gemm_matmul(ctx: Context, node: onnx.NodeProto, attrs: dict, alpha: float, beta: float) -> None:
    """Gemm without a constant B (or with transA): `matmul`, then `mul` by alpha, then `add` C."""
    operands = []
    for index, flag in ((0, "transA"), (1, "transB")):
        name = node.input[index]
        if attrs.get(flag, 0) and not ctx.is_const(name):
            ctx.fail(node, f"{flag} on a computed input is not supported (sparsec has no transpose op)")
        operands.append(ctx.weight(name, "T", lambda v: v.T) if attrs.get(flag, 0) else ctx.ref(name))
    out, has_c = node.output[0], _has_c(node)
    y = ctx.emit(node, ops.MatMul, ctx.fresh(f"{out}.matmul") if has_c or alpha != 1.0 else out,
                 a=operands[0], b=operands[1])
    if alpha != 1.0:
        scale = ctx.scalar_weight(f"{out}.alpha", alpha, ctx.types[y].np_dtype)
        y = ctx.emit(node, ops.Mul, ctx.fresh(f"{out}.scaled") if has_c else out, a=y, b=scale)
    if has_c:
        _add_c(ctx, node, y, beta)
    else:
        ctx.define(out, y)


def _add_c(ctx: Context, node: onnx.NodeProto, product: str, beta: float) -> None:
    c_name, out = node.input[2], node.output[0]
    if ctx.is_const(c_name):
        c = ctx.weight(c_name, f"*{beta!r}", lambda v: _times(v, beta))
    else:
        c = ctx.ref(c_name)
        if beta != 1.0:
            scale = ctx.scalar_weight(f"{out}.beta", beta, ctx.types[c].np_dtype)
            c = ctx.emit(node, ops.Mul, ctx.fresh(f"{out}.c"), a=c, b=scale)
    ctx.emit_output(node, ops.Add, a=product, b=c)


def _matmul(ctx: Context, node: onnx.NodeProto, attrs: dict) -> None:
    # x[M, K] @ B[K, N] with a constant B is a `linear` whose weight is B^T (mask transposed alike).
    a, b = node.input[0], node.input[1]
    if not ctx.is_const(a) and ctx.is_const(b) and ctx.type_of(a).rank == 2 and ctx.type_of(b).rank == 2:
        weight = ctx.weight(b, "T", lambda w: w.T)
        ctx.emit_output(node, ops.Linear, input=ctx.ref(a), weight=weight)
        return
    ctx.emit_output(node, ops.MatMul, a=ctx.ref(a), b=ctx.ref(b))


# ---- shape ops -----------------------------------------------------------------------------


def _axis(ctx: Context, node: onnx.NodeProto, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        ctx.fail(node, f"axis {axis} is out of range for rank {rank}")
    return axis % rank


def _flatten(ctx: Context, node: onnx.NodeProto, attrs: dict) -> None:
    rank = ctx.type_of(node.input[0]).rank
    axis = attrs.get("axis", 1)
    axis = axis if axis == rank else _axis(ctx, node, axis, rank)
    ctx.emit_output(node, ops.Flatten, input=ctx.ref(node.input[0]), axis=axis)


def _reshape(ctx: Context, node: onnx.NodeProto, attrs: dict) -> None:
    target = ctx.const(node, 1, "shape")
    in_shape = ctx.type_of(node.input[0]).shape
    try:
        shape = resolve_shape(in_shape, target, bool(attrs.get("allowzero", 0)))
    except ValueError as err:
        ctx.fail(node, str(err))
    ctx.emit_output(node, ops.Reshape, input=ctx.ref(node.input[0]), shape=shape)


def _reshape_like_fold(ctx: Context, node: onnx.NodeProto, attrs: dict) -> None:
    """Squeeze / Unsqueeze of a computed value: a `reshape` to the shape the fold rule gives."""
    x = ctx.type_of(node.input[0])
    probe = np.broadcast_to(np.zeros((), x.np_dtype), x.shape)  # zero-strided: no data is read
    args = [probe] + [ctx.const(node, i, "axes") for i in range(1, len(node.input))]
    shape = FOLD[node.op_type](args, attrs, ctx.opset).shape
    ctx.emit_output(node, ops.Reshape, input=ctx.ref(node.input[0]), shape=shape)


def _concat(ctx: Context, node: onnx.NodeProto, attrs: dict) -> None:
    names = [name for name in node.input if name]
    axis = _axis(ctx, node, attrs.get("axis", 1), ctx.type_of(names[0]).rank)
    ctx.emit_output(node, ops.Concat, inputs=tuple(ctx.ref(n) for n in names), axis=axis)


def _softmax(ctx: Context, node: onnx.NodeProto, attrs: dict) -> None:
    x = ctx.type_of(node.input[0])
    if ctx.opset >= 13:
        axis = _axis(ctx, node, attrs.get("axis", -1), x.rank)
        ctx.emit_output(node, ops.Softmax, input=ctx.ref(node.input[0]), axis=-1 if axis == x.rank - 1 else axis)
        return
    # Before opset 13 Softmax coerces the input to 2-D [prod(dims < axis), prod(dims >= axis)]:
    # flatten there, softmax the rows, reshape back (one softmax when axis is the last one).
    axis = _axis(ctx, node, attrs.get("axis", 1), x.rank)
    if axis == x.rank - 1:
        ctx.emit_output(node, ops.Softmax, input=ctx.ref(node.input[0]), axis=-1)
        return
    out = node.output[0]
    flat = ctx.emit(node, ops.Flatten, ctx.fresh(f"{out}.2d"), input=ctx.ref(node.input[0]), axis=axis)
    rows = ctx.emit(node, ops.Softmax, ctx.fresh(f"{out}.softmax"), input=flat, axis=-1)
    ctx.emit_output(node, ops.Reshape, input=rows, shape=x.shape)


CONVERT: dict[str, Converter] = {
    **BASIC,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Squeeze": _reshape_like_fold,
    "Unsqueeze": _reshape_like_fold,
    "Concat": _concat,
    "Softmax": _softmax,
}
"""ONNX op type -> converter: every op sparsec imports as IR ops (others may still fold)."""
