"""The import's mutable state: what each ONNX tensor name became (an IR value, a weight, or a
constant still being folded), the ops emitted so far, and the weights they read.

Value names keep their ONNX tensor names; weights keep their initializer / Constant names. An
IR op's result type always comes from the op's own type rule (`Op.infer`), never from ONNX.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import onnx

from sparsec.errors import NotSupportedError, UserError
from sparsec.ir.module import Weight
from sparsec.ir.ops import Op, OpError
from sparsec.ir.types import DTYPES, Dense, Masked, TensorType, dtype_name

_PLACEHOLDER = TensorType("f32", ())


def attributes(node: onnx.NodeProto) -> dict[str, object]:
    """A node's attributes as Python values (strings decoded, lists as lists)."""
    out = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        out[attr.name] = value.decode() if isinstance(value, bytes) else value
    return out


def describe(node: onnx.NodeProto) -> str:
    """How an error names a node: by its name, or by its first output when it has none."""
    if node.name:
        return f'node "{node.name}" ({node.op_type})'
    return f'node with output "{node.output[0] if node.output else ""}" ({node.op_type})'


class Context:
    """Name maps and builders shared by the converters (one per import)."""

    def __init__(self, where: str, opset: int, taken: set[str]):
        self.where, self.opset = where, opset
        self.consts: dict[str, np.ndarray] = {}   # ONNX name -> value known at import
        self.masks: dict[str, np.ndarray] = {}    # ONNX name -> bool mask of that constant
        self.refs: dict[str, str] = {}            # ONNX name -> `%value` it became
        self.used: set[str] = set()               # ONNX names some imported node or output reads
        self.types: dict[str, TensorType] = {}    # IR reference -> type
        self.ops: list[Op] = []
        self.weights: dict[str, Weight] = {}
        self._derived: dict[tuple[str, str], str] = {}  # (ONNX name, transform) -> weight name
        self._taken = set(taken)                  # every name a fresh name must avoid

    # ---- errors --------------------------------------------------------------------------

    def fail(self, node: onnx.NodeProto, problem: str, cls: type[UserError] = NotSupportedError):
        raise cls(f"{self.where}: {describe(node)}: {problem}")

    # ---- names and types -----------------------------------------------------------------

    def fresh(self, base: str) -> str:
        """A new name (no sigil) that no ONNX tensor and no earlier fresh name uses."""
        name, n = base, 1
        while name in self._taken:
            name, n = f"{base}.{n}", n + 1
        self._taken.add(name)
        return name

    def type_of(self, onnx_name: str) -> TensorType:
        if onnx_name in self.consts:
            array = self.consts[onnx_name]
            return TensorType(dtype_name(array.dtype), array.shape)
        return self.types[self.refs[onnx_name]]

    def is_const(self, onnx_name: str) -> bool:
        return onnx_name in self.consts

    # ---- operands ------------------------------------------------------------------------

    def ref(self, onnx_name: str) -> str:
        """The operand for an ONNX input: its `%value`, or a weight `@name` for a constant."""
        if onnx_name in self.refs:
            return self.refs[onnx_name]
        return self.weight(onnx_name)

    def param(self, node: onnx.NodeProto, index: int, what: str) -> str | None:
        """Input `index` as a weight operand (None when absent); it must be a constant."""
        if index >= len(node.input) or not node.input[index]:
            return None
        if not self.is_const(node.input[index]):
            self.fail(node, f"its {what} ({node.input[index]!r}) must be a constant (an initializer)")
        return self.weight(node.input[index])

    def value(self, node: onnx.NodeProto, index: int) -> str:
        """Input `index` of `node`, which must not be a constant (an op's data input)."""
        name = node.input[index]
        if name not in self.refs:
            self.fail(node, f"input {index} ({name!r}) must be computed from the graph inputs, not a constant")
        return self.refs[name]

    def const(self, node: onnx.NodeProto, index: int, what: str) -> np.ndarray | None:
        """Input `index` as an array known at import (None when absent); it must fold."""
        if index >= len(node.input) or not node.input[index]:
            return None
        name = node.input[index]
        if name not in self.consts:
            self.fail(node, f"its {what} ({name!r}) depends on the input data and cannot be folded to a "
                      "constant at import; export the model with static shapes (e.g. x.flatten(1))")
        return self.consts[name]

    def weight(self, onnx_name: str, key: str = "", transform: Callable | None = None) -> str:
        """A weight for the constant `onnx_name`; `transform` (named `key`) reshapes the data and
        its mask alike (Gemm transB, MatMul B^T), giving a weight of its own."""
        if (onnx_name, key) in self._derived:
            return "@" + self._derived[(onnx_name, key)]
        assert onnx_name in self.consts, f"{onnx_name} is not a constant"
        data, mask = self.consts[onnx_name], self.masks.get(onnx_name)
        if transform is not None:
            data = transform(data)
            mask = None if mask is None else transform(mask)
        name = onnx_name if onnx_name not in self.weights else self._fresh_weight(onnx_name)
        self._derived[(onnx_name, key)] = name
        return self.add_weight(name, data, mask)

    def add_weight(self, name: str, data: np.ndarray, mask: np.ndarray | None = None) -> str:
        """Register weight `name` (dense, or masked when `mask` is given); returns `@name`."""
        data = np.ascontiguousarray(data)
        if data.dtype.name not in {d.name for d in DTYPES.values()}:
            raise NotSupportedError(f"{self.where}: weight {name!r} has dtype {data.dtype}; sparsec reads "
                                    "float32 weights (re-export the model in float32)")
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            raise UserError(f"{self.where}: weight {name!r} holds NaN or Inf values; fix the model's weights")
        type_ = TensorType(dtype_name(data.dtype), data.shape)
        if mask is None:
            weight = Weight(name, type_, data, Dense())
        else:
            weight = Weight(name, type_, data, Masked(), {"mask": np.ascontiguousarray(mask, dtype=bool)})
        self.weights[name] = weight
        self.types["@" + name] = type_
        return "@" + name

    def scalar_weight(self, base: str, value: float, dtype: np.dtype) -> str:
        """A new rank-0 weight (Gemm's alpha / beta as a `mul` operand)."""
        return self.add_weight(self._fresh_weight(base), np.array(value, dtype))

    def _fresh_weight(self, base: str) -> str:
        name, n = base, 1
        while name in self.weights or name in self._taken:
            name, n = f"{base}.{n}", n + 1
        return name

    # ---- ops -----------------------------------------------------------------------------

    def emit(self, node: onnx.NodeProto, cls: type[Op], result: str, **fields) -> str:
        """Append `cls(result, **fields)` with its type from the op's rule; returns `%result`."""
        op = cls(result, _PLACEHOLDER, **fields)
        try:
            op = dataclasses.replace(op, type=op.infer(self.types))
        except OpError as err:
            self.fail(node, str(err), UserError)
        if 0 in op.type.shape:  # e.g. a Conv with 0 filters: fail here, where it happens
            self.fail(node, f"computes an empty tensor {op.type}; sparsec needs every dimension at least 1", UserError)
        self.ops.append(op)
        self.types["%" + result] = op.type
        return "%" + result

    def define(self, onnx_name: str, ref: str) -> None:
        """ONNX tensor `onnx_name` is the IR value `ref` (an op's result, or an alias's source)."""
        self.refs[onnx_name] = ref

    def emit_output(self, node: onnx.NodeProto, cls: type[Op], **fields) -> str:
        """Emit the op that computes `node`'s first output, under that output's name."""
        ref = self.emit(node, cls, node.output[0], **fields)
        self.define(node.output[0], ref)
        return ref
