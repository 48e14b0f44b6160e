"""What the caller binds to an ONNX graph: static input shapes and pruning masks.

A symbolic batch dimension (axis 0) defaults to 1; any other symbolic dimension needs the input's
full shape from the caller. A mask is the truth: weights outside it are zeroed and counted.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from sparsec.errors import NotSupportedError, UserError
from sparsec.ir.module import Param
from sparsec.ir.types import TensorType

# ONNX element type -> IR dtype name, for the graph inputs sparsec accepts.
ONNX_DTYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "f32",
    onnx.TensorProto.DOUBLE: "f64",
    onnx.TensorProto.INT64: "i64",
    onnx.TensorProto.INT32: "i32",
    onnx.TensorProto.BOOL: "bool",
}


def _dims_text(shape) -> str:
    return "x".join(str(d) for d in shape)


def bind_inputs(graph: onnx.GraphProto, constants: set[str], input_shapes: Mapping[str, tuple[int, ...]],
                where: str) -> tuple[Param, ...]:
    """The graph inputs that are not initializers, with static shapes."""
    inputs = [i for i in graph.input if i.name not in constants]
    names = [i.name for i in inputs]
    for name in input_shapes:
        if name not in names:
            raise UserError(f"{where}: --input-shape names {name!r}, which is not a graph input; "
                            f"the inputs are: {', '.join(names)}")
    return tuple(Param(i.name, _input_type(i, input_shapes.get(i.name), where)) for i in inputs)


def _input_type(info: onnx.ValueInfoProto, given: tuple[int, ...] | None, where: str) -> TensorType:
    tensor = info.type.tensor_type
    if not info.type.HasField("tensor_type") or tensor.elem_type not in ONNX_DTYPES:
        is_tensor = info.type.HasField("tensor_type")
        kind = onnx.helper.tensor_dtype_to_string(tensor.elem_type) if is_tensor else "no tensor"
        raise NotSupportedError(f"{where}: input {info.name!r} has type {kind}; sparsec takes float32 tensors")
    dtype = ONNX_DTYPES[tensor.elem_type]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if given is not None:
        return TensorType(dtype, _check_given(info.name, dims, tuple(given), tensor.HasField("shape"), where))
    if not tensor.HasField("shape"):
        raise UserError(f"{where}: input {info.name!r} has no shape; pass --input-shape {info.name}=1x3x224x224")
    if dims and dims[0] is None:
        dims[0] = 1  # the batch dimension: sparsec compiles for one static batch size
    for axis, dim in enumerate(dims):
        if dim is None:
            label = tensor.shape.dim[axis].dim_param or "?"
            example = [d if d is not None else 224 for d in dims]
            raise UserError(f"{where}: input {info.name!r} has symbolic dimension {label!r} at axis {axis}; "
                            f"pass its static shape, e.g. --input-shape {info.name}={_dims_text(example)}")
        if dim < 1:  # a batch of 0 computes nothing
            raise UserError(f"{where}: input {info.name!r} has size {dim} at axis {axis}; sparsec needs sizes of at "
                            "least 1: export the model again with a batch of 1")
    return TensorType(dtype, tuple(dims))


def _check_given(name: str, dims: list, given: tuple[int, ...], has_shape: bool, where: str) -> tuple[int, ...]:
    shown = "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
    if any(not isinstance(d, (int, np.integer)) or d < 1 for d in given):
        raise UserError(f"{where}: --input-shape {name}={_dims_text(given)} must be positive integers")
    if has_shape and len(given) != len(dims):
        raise UserError(f"{where}: --input-shape {name}={_dims_text(given)} has rank {len(given)}, but input "
                        f"{name!r} has rank {len(dims)} {shown}")
    for axis, (want, got) in enumerate(zip(dims, given, strict=False)):
        if want is not None and want != got:
            raise UserError(f"{where}: --input-shape {name}={_dims_text(given)} gives {got} at axis {axis}, "
                            f"but input {name!r} is fixed at {want} there {shown}")
    return tuple(int(d) for d in given)


def apply_masks(arrays: dict[str, np.ndarray], masks: Mapping[str, np.ndarray],
                where: str) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Zero each masked initializer outside its mask (in `arrays`, in place).

    Returns the bool masks and, per masked weight, how many nonzero weights the mask zeroed."""
    bool_masks, zeroed = {}, {}
    for name, mask in masks.items():
        data = arrays.get(name)
        if data is None:
            raise UserError(f"{where}: mask {name!r} names no initializer of the model; "
                            "mask keys must be initializer names (e.g. the conv weight names)")
        mask = np.asarray(mask)
        if mask.shape != data.shape:
            raise UserError(f"{where}: mask {name!r} has shape {list(mask.shape)}, but the initializer "
                            f"has shape {list(data.shape)}; give a mask of the weight's shape")
        if mask.dtype != np.bool_ and not np.isin(mask, (0, 1)).all():
            raise UserError(f"{where}: mask {name!r} holds values other than 0 and 1; give a bool mask")
        keep = mask.astype(bool)
        arrays[name] = np.where(keep, data, np.zeros((), data.dtype))
        # Counting both sides avoids gathering data[~keep], a copy as big as the weight.
        zeroed[name] = int(np.count_nonzero(data)) - int(np.count_nonzero(arrays[name]))
        bool_masks[name] = keep
    return bool_masks, zeroed
