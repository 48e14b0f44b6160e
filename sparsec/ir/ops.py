"""The IR's ops: one frozen class per op, typed fields, and the op's type rule in one place.

Conventions: `result` names the value an op defines (no sigil); operand fields hold references
with their sigil, `%name` for a value and `@name` for a weight. Every other field is an attribute.
`infer(operand_types)` is the op's legality rule: it returns the result type or raises `OpError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np

from sparsec.errors import SourceLoc
from sparsec.ir.activation import Activation
from sparsec.ir.knobs import Knobs
from sparsec.ir.types import TensorType


class OpError(Exception):
    """An op's type rule failed; the verifier adds the location."""


def operand(**kwargs):
    """Mark a dataclass field as an operand (a `%value` / `@weight` reference, or a tuple of them)."""
    return field(metadata={"operand": True}, **kwargs)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise OpError(message)


@dataclass(frozen=True, slots=True)
class Op:
    """Base of every op: the value it defines, that value's type, and where it came from."""

    name: ClassVar[str] = ""
    # Operand fields that must reference weights (`@name`): their data is known at compile time.
    weight_operands: ClassVar[tuple[str, ...]] = ()
    # Operand fields that must reference values (`%name`): computed at run time, never constants.
    value_operands: ClassVar[tuple[str, ...]] = ()
    result: str
    type: TensorType
    loc: SourceLoc | None = field(default=None, compare=False, repr=False, kw_only=True)

    @classmethod
    def operand_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.metadata.get("operand"))

    @classmethod
    def attr_fields(cls) -> tuple[str, ...]:
        skip = {"result", "type", "loc"}
        return tuple(f.name for f in fields(cls) if not f.metadata.get("operand") and f.name not in skip)

    def operands(self) -> tuple[str, ...]:
        """Every reference this op reads, flattened, in field order (None operands skipped)."""
        refs: list[str] = []
        for name in self.operand_fields():
            value = getattr(self, name)
            if isinstance(value, tuple):
                refs.extend(value)
            elif value is not None:
                refs.append(value)
        return tuple(refs)

    def infer(self, types: dict[str, TensorType]) -> TensorType:  # pragma: no cover - abstract
        raise NotImplementedError


def _f32(t: TensorType, what: str) -> None:
    require(t.dtype == "f32", f"{what} must be f32, got {t.dtype}")


def _pool_out(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int,
              ceil: bool) -> int:
    span = dilation * (kernel - 1) + 1
    rounding = math.ceil if ceil else math.floor
    out = rounding((size + pad_begin + pad_end - span) / stride) + 1
    # ONNX / PyTorch rule: with ceil_mode the last window must start inside the input or left pad.
    if ceil and (out - 1) * stride >= size + pad_begin:
        out -= 1
    return out


def _pool_pads_fit(kernel, pads) -> None:
    # ONNX runtimes reject a pad as wide as the window: it would make windows of padding only.
    require(all(p < k for p, k in zip(pads, tuple(kernel) * 2)),
            f"pads {list(pads)} must be smaller than the window {list(kernel)}")


def _window_shape(x: TensorType, kernel, strides, pads, dilations, ceil: bool) -> tuple[int, ...]:
    require(x.rank == 4, f"expects an NCHW input, got rank {x.rank}")
    require(len(kernel) == 2 and len(strides) == 2 and len(dilations) == 2 and len(pads) == 4,
            "kernel, strides and dilations take 2 values, pads 4 (top, left, bottom, right)")
    require(min(strides) >= 1 and min(dilations) >= 1 and min(pads) >= 0, "strides/dilations >= 1, pads >= 0")
    n, c, h, w = x.shape
    oh = _pool_out(h, kernel[0], strides[0], pads[0], pads[2], dilations[0], ceil)
    ow = _pool_out(w, kernel[1], strides[1], pads[1], pads[3], dilations[1], ceil)
    require(oh >= 1 and ow >= 1, f"window {list(kernel)} does not fit the input {list(x.shape)}")
    return (n, c, oh, ow)


@dataclass(frozen=True, slots=True)
class Conv2d(Op):
    """2-D convolution, NCHW / OIHW, with bias, residual and activation fused as an epilogue:
    `out = activation(conv(input, weight) + bias + residual)`.

    `residual` (set by fuse-epilogue from a ResNet shortcut add): a value of exactly the output's
    type, added elementwise before the activation; text form `conv2d(%x, @w, @b, %r)` or
    `conv2d(%x, @w, none, %r)` without a bias. It is indexed by output channel like the bias.
    `filter_order` (set by reorder-filters): weight row i holds original filter filter_order[i];
    the op still writes channel filter_order[i], so outputs keep their original order.
    The bias is indexed by output channel (it is not permuted).
    `filter_groups`: sizes of consecutive stored-filter groups that share input loads.
    `knobs`: the kernel's schedule knobs (set from a tuning log); none = the generator's defaults.
    """

    name: ClassVar[str] = "conv2d"
    weight_operands: ClassVar[tuple[str, ...]] = ("weight", "bias")
    value_operands: ClassVar[tuple[str, ...]] = ("residual",)
    input: str = operand()
    weight: str = operand()
    bias: str | None = operand(default=None)
    residual: str | None = operand(default=None)
    strides: tuple[int, ...] = (1, 1)
    pads: tuple[int, ...] = (0, 0, 0, 0)
    dilations: tuple[int, ...] = (1, 1)
    groups: int = 1
    activation: Activation | None = None
    filter_order: tuple[int, ...] | None = None
    filter_groups: tuple[int, ...] | None = None
    knobs: Knobs | None = None

    def infer(self, types):
        x, w = types[self.input], types[self.weight]
        _f32(x, "conv2d input")
        require(w.rank == 4, f"conv2d weight must be OIHW, got rank {w.rank}")
        o, i_per_group, kh, kw = w.shape
        require(self.groups >= 1 and o % self.groups == 0, f"{o} filters do not split into {self.groups} groups")
        require(x.rank == 4 and x.shape[1] == i_per_group * self.groups,
                f"input has {x.shape[1] if x.rank == 4 else '?'} channels, weight expects "
                f"{i_per_group} x {self.groups} groups")
        if self.bias is not None:
            require(types[self.bias].shape == (o,), f"bias must be f32[{o}], got {types[self.bias]}")
        self._check_filter_order(o)
        n, _, oh, ow = _window_shape(x, (kh, kw), self.strides, self.pads, self.dilations, False)
        out = TensorType("f32", (n, o, oh, ow))
        if self.residual is not None:  # no broadcasting: the epilogue reads it like the output
            require(types[self.residual] == out, f"residual {self.residual} must be {out}, got {types[self.residual]}")
        return out

    def _check_filter_order(self, filters: int) -> None:
        if self.filter_order is not None:
            require(sorted(self.filter_order) == list(range(filters)),
                    f"filter_order must be a permutation of 0..{filters - 1}")
        if self.filter_groups is not None:
            require(all(g >= 1 for g in self.filter_groups) and sum(self.filter_groups) == filters,
                    f"filter_groups must be positive sizes summing to {filters}")


@dataclass(frozen=True, slots=True)
class Linear(Op):
    """Fully connected: `y[m, n] = sum_k x[m, k] * weight[n, k] + bias[n]`, activation fused;
    `knobs` as on conv2d."""

    name: ClassVar[str] = "linear"
    weight_operands: ClassVar[tuple[str, ...]] = ("weight", "bias")
    input: str = operand()
    weight: str = operand()
    bias: str | None = operand(default=None)
    activation: Activation | None = None
    knobs: Knobs | None = None

    def infer(self, types):
        x, w = types[self.input], types[self.weight]
        _f32(x, "linear input")
        require(x.rank == 2 and w.rank == 2 and x.shape[1] == w.shape[1],
                f"linear needs input [M, K] and weight [N, K], got {x} and {w}")
        if self.bias is not None:
            require(types[self.bias].shape == (w.shape[0],), f"bias must be f32[{w.shape[0]}]")
        return TensorType("f32", (x.shape[0], w.shape[0]))


@dataclass(frozen=True, slots=True)
class MatMul(Op):
    """NumPy `matmul` of two tensors (batched, broadcast)."""

    name: ClassVar[str] = "matmul"
    a: str = operand()
    b: str = operand()

    def infer(self, types):
        a, b = types[self.a], types[self.b]
        require(a.rank >= 1 and b.rank >= 1, "matmul operands need rank >= 1")
        shape = _matmul_shape(a.shape, b.shape)
        return TensorType(a.dtype, shape)


def _matmul_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy's matmul result shape: 1-D operands gain (then lose) an axis, batches broadcast."""
    left = (1,) + a if len(a) == 1 else a
    right = b + (1,) if len(b) == 1 else b
    require(left[-1] == right[-2], f"matmul shapes {list(a)} and {list(b)} do not match")
    try:
        batch = np.broadcast_shapes(left[:-2], right[:-2])
    except ValueError:
        raise OpError(f"matmul batch shapes {list(a[:-2])} and {list(b[:-2])} do not broadcast") from None
    return batch + (left[-2],) * (len(a) > 1) + (right[-1],) * (len(b) > 1)


@dataclass(frozen=True, slots=True)
class BatchNorm(Op):
    """Inference batch normalisation over channel axis 1."""

    name: ClassVar[str] = "batch_norm"
    weight_operands: ClassVar[tuple[str, ...]] = ("scale", "bias", "mean", "var")
    input: str = operand()
    scale: str = operand()
    bias: str = operand()
    mean: str = operand()
    var: str = operand()
    epsilon: float = 1e-5

    def infer(self, types):
        x = types[self.input]
        require(x.rank >= 2, "batch_norm input needs a channel axis")
        for ref in (self.scale, self.bias, self.mean, self.var):
            require(types[ref].shape == (x.shape[1],), f"{ref} must have shape [{x.shape[1]}]")
        return x


@dataclass(frozen=True, slots=True)
class Activate(Op):
    """An elementwise activation function (`fn`), e.g. relu or clip(0.0, 6.0)."""

    name: ClassVar[str] = "activation"
    input: str = operand()
    fn: Activation = field(default=None)  # required; a default only to follow the operand field

    def __post_init__(self) -> None:
        if not isinstance(self.fn, Activation):
            raise ValueError("activation needs fn = one of relu, clip(min, max), leaky_relu(alpha), ...")

    def infer(self, types):
        return types[self.input]


def _broadcast(a: TensorType, b: TensorType, op: str) -> TensorType:
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise OpError(f"{op}: shapes {list(a.shape)} and {list(b.shape)} do not broadcast") from None
    require(a.dtype == b.dtype, f"{op}: dtypes {a.dtype} and {b.dtype} differ")
    return TensorType(a.dtype, shape)


@dataclass(frozen=True, slots=True)
class Add(Op):
    """Elementwise sum with NumPy broadcasting."""

    name: ClassVar[str] = "add"
    a: str = operand()
    b: str = operand()

    def infer(self, types):
        return _broadcast(types[self.a], types[self.b], "add")


@dataclass(frozen=True, slots=True)
class Mul(Op):
    """Elementwise product with NumPy broadcasting."""

    name: ClassVar[str] = "mul"
    a: str = operand()
    b: str = operand()

    def infer(self, types):
        return _broadcast(types[self.a], types[self.b], "mul")


@dataclass(frozen=True, slots=True)
class MaxPool(Op):
    """Max pooling over H, W; padding never wins (it is the lowest float32, like onnxruntime)."""

    name: ClassVar[str] = "max_pool"
    input: str = operand()
    kernel: tuple[int, ...] = (2, 2)
    strides: tuple[int, ...] = (2, 2)
    pads: tuple[int, ...] = (0, 0, 0, 0)
    dilations: tuple[int, ...] = (1, 1)
    ceil_mode: bool = False

    def infer(self, types):
        x = types[self.input]
        _pool_pads_fit(self.kernel, self.pads)
        shape = _window_shape(x, self.kernel, self.strides, self.pads, self.dilations, self.ceil_mode)
        return TensorType(x.dtype, shape)


@dataclass(frozen=True, slots=True)
class AvgPool(Op):
    """Average pooling over H, W."""

    name: ClassVar[str] = "avg_pool"
    input: str = operand()
    kernel: tuple[int, ...] = (2, 2)
    strides: tuple[int, ...] = (2, 2)
    pads: tuple[int, ...] = (0, 0, 0, 0)
    ceil_mode: bool = False
    count_include_pad: bool = False

    def infer(self, types):
        x = types[self.input]
        _pool_pads_fit(self.kernel, self.pads)
        shape = _window_shape(x, self.kernel, self.strides, self.pads, (1, 1), self.ceil_mode)
        return TensorType(x.dtype, shape)


@dataclass(frozen=True, slots=True)
class GlobalAvgPool(Op):
    """Mean over H, W, keeping them as size-1 axes."""

    name: ClassVar[str] = "global_avg_pool"
    input: str = operand()

    def infer(self, types):
        x = types[self.input]
        require(x.rank == 4, f"global_avg_pool expects NCHW, got rank {x.rank}")
        return TensorType(x.dtype, x.shape[:2] + (1, 1))


@dataclass(frozen=True, slots=True)
class Flatten(Op):
    """Reshape to 2-D: axes before `axis` form the rows."""

    name: ClassVar[str] = "flatten"
    input: str = operand()
    axis: int = 1

    def infer(self, types):
        x = types[self.input]
        require(0 <= self.axis <= x.rank, f"flatten axis {self.axis} out of range for rank {x.rank}")
        rows = int(np.prod(x.shape[: self.axis], dtype=np.int64))
        return TensorType(x.dtype, (rows, x.size // max(rows, 1) if rows else 0))


@dataclass(frozen=True, slots=True)
class Reshape(Op):
    """Reshape to a static `shape` (the frontend resolves -1 and 0)."""

    name: ClassVar[str] = "reshape"
    input: str = operand()
    shape: tuple[int, ...] = ()

    def infer(self, types):
        x = types[self.input]
        out = TensorType(x.dtype, self.shape)
        require(out.size == x.size, f"cannot reshape {list(x.shape)} to {list(self.shape)}")
        return out


@dataclass(frozen=True, slots=True)
class Concat(Op):
    """Join tensors along `axis`."""

    name: ClassVar[str] = "concat"
    inputs: tuple[str, ...] = operand(default=())
    axis: int = 1

    def infer(self, types):
        parts = [types[r] for r in self.inputs]
        require(len(parts) >= 1, "concat needs at least one input")
        rank = parts[0].rank
        require(0 <= self.axis < rank, f"concat axis {self.axis} out of range for rank {rank}")
        for p in parts:
            same = p.rank == rank and all(p.shape[d] == parts[0].shape[d] for d in range(rank) if d != self.axis)
            require(same, f"concat inputs {[list(q.shape) for q in parts]} differ off axis {self.axis}")
        shape = list(parts[0].shape)
        shape[self.axis] = sum(p.shape[self.axis] for p in parts)
        return TensorType(parts[0].dtype, tuple(shape))


@dataclass(frozen=True, slots=True)
class Softmax(Op):
    """Softmax along one axis."""

    name: ClassVar[str] = "softmax"
    input: str = operand()
    axis: int = -1

    def infer(self, types):
        x = types[self.input]
        require(-x.rank <= self.axis < x.rank, f"softmax axis {self.axis} out of range for rank {x.rank}")
        return x


OPS: dict[str, type[Op]] = {
    cls.name: cls
    for cls in (Conv2d, Linear, MatMul, BatchNorm, Activate, Add, Mul, MaxPool, AvgPool,
                GlobalAvgPool, Flatten, Reshape, Concat, Softmax)
}
