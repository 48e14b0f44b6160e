"""Import-time folding with NumPy: the ops of shape subgraphs (`Shape -> Gather -> Unsqueeze ->
Concat -> Reshape`) and any node whose inputs are all constants.

`FOLD` maps an ONNX op type to `fn(args, attrs, opset) -> array`: `args` are the input arrays
(None for an empty input name), `attrs` the node's attributes. A graph value reaches `Shape` and
`Size` as a zero-strided array of its static shape, so only its type is read, never its data.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import helper, numpy_helper

FoldFn = Callable[[list, dict, int], np.ndarray]


def resolve_shape(in_shape: tuple[int, ...], target, allowzero: bool = False) -> tuple[int, ...]:
    """ONNX Reshape's target made static: 0 copies the input's dim (unless allowzero), -1 is inferred."""
    dims = [int(d) for d in np.asarray(target).reshape(-1)]
    if not allowzero:
        dims = [in_shape[i] if d == 0 and i < len(in_shape) else d for i, d in enumerate(dims)]
    size = int(np.prod(in_shape, dtype=np.int64))
    if dims.count(-1) > 1 or any(d < -1 for d in dims):
        raise ValueError(f"shape {dims} has more than one -1 or a negative dimension")
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1], dtype=np.int64))
        if known == 0 or size % known:
            raise ValueError(f"cannot reshape {list(in_shape)} to {dims}")
        dims[dims.index(-1)] = size // known
    if int(np.prod(dims, dtype=np.int64)) != size:
        raise ValueError(f"cannot reshape {list(in_shape)} to {dims}")
    return tuple(dims)


def _axes(args: list, attrs: dict, opset: int, since: int) -> list[int] | None:
    """`axes` as an attribute before opset `since`, as the second input from then on."""
    if opset < since:
        return attrs.get("axes")
    return None if len(args) < 2 or args[1] is None else [int(a) for a in args[1].reshape(-1)]


def _unsqueeze(args, attrs, opset):
    x, axes = args[0], _axes(args, attrs, opset, 13)
    rank = x.ndim + len(axes)
    return np.expand_dims(x, tuple(sorted(a % rank for a in axes)))


def _squeeze(args, attrs, opset):
    x, axes = args[0], _axes(args, attrs, opset, 13)
    return np.squeeze(x) if axes is None else np.squeeze(x, tuple(a % x.ndim for a in axes))


def _shape(args, attrs, opset):
    dims = np.array(args[0].shape, np.int64)
    return dims[attrs.get("start", 0): attrs.get("end", len(dims))]


def _slice(args, attrs, opset):
    x, starts, ends = args[0], args[1].reshape(-1), args[2].reshape(-1)
    axes = args[3].reshape(-1) if len(args) > 3 and args[3] is not None else range(len(starts))
    steps = args[4].reshape(-1) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    # Python slices clamp out-of-range bounds the way ONNX Slice does (INT64_MAX means "to the end").
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=False):
        index[int(axis) % x.ndim] = slice(int(start), int(end), int(step))
    return x[tuple(index)]


def _flatten(args, attrs, opset):
    x, axis = args[0], attrs.get("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), int(np.prod(x.shape[axis:], dtype=np.int64)))


def _constant(args, attrs, opset):
    for key, convert in _CONSTANT_ATTRS.items():
        if key in attrs:
            return convert(attrs[key])
    raise ValueError(f"Constant with attributes {sorted(attrs)} is not supported")


_CONSTANT_ATTRS: dict[str, Callable] = {
    "value": numpy_helper.to_array,
    "value_float": lambda v: np.array(v, np.float32),
    "value_floats": lambda v: np.array(v, np.float32),
    "value_int": lambda v: np.array(v, np.int64),
    "value_ints": lambda v: np.array(v, np.int64),
}


def _constant_of_shape(args, attrs, opset):
    value = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
    return np.full(tuple(int(d) for d in args[0]), value.reshape(-1)[0], value.dtype)


def _divide(a, b):
    # ONNX integer Div truncates toward zero; NumPy's // floors.
    if a.dtype.kind in "iu":
        return (np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))).astype(a.dtype)
    return a / b


def _unary(fn) -> FoldFn:
    return lambda args, attrs, opset: fn(args[0])


def _binary(fn) -> FoldFn:
    return lambda args, attrs, opset: np.asarray(fn(args[0], args[1]))


FOLD: dict[str, FoldFn] = {
    # value -> static facts about it
    "Shape": _shape,                                                  # x -> its dims (int64)
    "Size": lambda args, attrs, opset: np.array(args[0].size, np.int64),
    # constants
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "Range": lambda args, attrs, opset: np.arange(args[0], args[1], args[2]).astype(args[0].dtype),
    # index and layout ops
    "Gather": lambda args, attrs, opset: np.take(args[0], args[1], axis=attrs.get("axis", 0)),
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": lambda args, attrs, opset: np.concatenate([a for a in args if a is not None], attrs["axis"]),
    "Slice": _slice,
    "Reshape": lambda args, attrs, opset: args[0].reshape(
        resolve_shape(args[0].shape, args[1], bool(attrs.get("allowzero", 0)))),
    "Flatten": _flatten,
    "Transpose": lambda args, attrs, opset: np.transpose(args[0], attrs.get("perm")),
    "Expand": lambda args, attrs, opset: np.broadcast_to(
        args[0], np.broadcast_shapes(args[0].shape, tuple(int(d) for d in args[1]))).copy(),
    "Cast": lambda args, attrs, opset: args[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"])),
    "Identity": _unary(lambda x: x),
    "Dropout": _unary(lambda x: x),
    # arithmetic on shapes
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _binary(_divide),
    "Min": lambda args, attrs, opset: np.minimum.reduce(np.broadcast_arrays(*args)),
    "Max": lambda args, attrs, opset: np.maximum.reduce(np.broadcast_arrays(*args)),
    "Neg": _unary(np.negative),
    "Abs": _unary(np.abs),
    "Floor": _unary(np.floor),
    "Ceil": _unary(np.ceil),
    "Equal": _binary(np.equal),
    "Less": _binary(np.less),
    "Greater": _binary(np.greater),
    "Not": _unary(np.logical_not),
    "And": _binary(np.logical_and),
    "Or": _binary(np.logical_or),
    "Where": lambda args, attrs, opset: np.where(args[0], args[1], args[2]),
}

# Ops that only move elements: a mask folds through them the same way the weight does.
LAYOUT_ONLY: frozenset[str] = frozenset(
    {"Unsqueeze", "Squeeze", "Reshape", "Flatten", "Transpose", "Identity", "Dropout"}
)

# Ops that read only the static type of their (first) input, never its data.
TYPE_ONLY: frozenset[str] = frozenset({"Shape", "Size"})
