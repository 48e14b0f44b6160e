"""The NumPy reference interpreter: the living definition of what every IR op computes.

Every pass is checked against it (same inputs, same outputs before and after), and it is checked
against onnxruntime op by op (tests/core/test_reference.py). It favours plain, obviously-right
NumPy over speed, but stays fast enough for VGG-16 at 224x224: a convolution is one im2col view
(`sliding_window_view`, no Python loops) and one batched float32 matmul over its groups.

Values live in one environment keyed by reference (`%value`, `@weight`); `KERNELS` maps each op
class to a small function `fn(op, env) -> array`. Weights are read through `Weight.data`, the dense
view (zeros outside a mask), so every layout computes the same thing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from sparsec.errors import UserError
from sparsec.ir import ops
from sparsec.ir.activation import Activation
from sparsec.ir.module import Module
from sparsec.ir.types import dtype_name

Env = dict[str, np.ndarray]


def run_reference(module: Module, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run `module` on `inputs` (keyed by input name); returns its outputs keyed by output name,
    in `module.outputs` order. Raises `UserError` when the inputs do not fit the module."""
    env = reference_values(module, inputs)
    return {name: env[f"%{name}"] for name in module.outputs}


def reference_values(module: Module, inputs: Mapping[str, np.ndarray]) -> Env:
    """Every value of `module` on `inputs`, keyed by reference (`%value`, `@weight`): what a
    layer-by-layer check compares each layer with."""
    env: Env = {f"@{w.name}": w.data for w in module.weights}
    env.update({f"%{name}": value for name, value in check_inputs(module, inputs).items()})
    for op in module.ops:
        out = KERNELS[type(op)](op, env)
        # A mismatch here is a bug in this file or in the op's type rule, not the user's.
        assert out.shape == op.type.shape and out.dtype == op.type.np_dtype, (
            f"{op.name} %{op.result}: computed {out.dtype}{list(out.shape)}, declared {op.type}")
        env[f"%{op.result}"] = out
    return env


def check_inputs(module: Module, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs as arrays in `module.inputs` order, after checking names, shapes and dtypes;
    raises `UserError` with one line naming the first problem."""
    expected = ", ".join(p.name for p in module.inputs) or "(none)"
    known = {p.name for p in module.inputs}
    for name in inputs:
        if name not in known:
            raise UserError(f"input {name!r} is not an input of the model; the model's inputs are: {expected}")
    checked = {}
    for param in module.inputs:
        if param.name not in inputs:
            raise UserError(f"input {param.name!r} is missing; the model's inputs are: {expected}")
        value = np.asarray(inputs[param.name])
        if value.shape != param.type.shape:
            raise UserError(f"input {param.name!r} has shape {list(value.shape)} "
                            f"but the model expects {param.type}")
        if value.dtype != param.type.np_dtype:
            raise UserError(f"input {param.name!r} has dtype {_dtype_text(value.dtype)} "
                            f"but the model expects {param.type}")
        checked[param.name] = value
    return checked


def _dtype_text(dtype: np.dtype) -> str:
    try:
        return dtype_name(dtype)
    except ValueError:
        return str(dtype)


# --- activations: one table, used by `activation` and by every fused epilogue --------------------

ACTIVATIONS: dict[str, Callable[..., np.ndarray]] = {
    "relu": lambda x: np.maximum(x, np.float32(0)),
    "clip": lambda x, lo, hi: np.minimum(np.maximum(x, np.float32(lo)), np.float32(hi)),
    "leaky_relu": lambda x, alpha: np.where(x >= 0, x, x * np.float32(alpha)),
    "sigmoid": lambda x: _sigmoid(x),
    "hard_sigmoid": lambda x, alpha, beta: _hard_sigmoid(x, alpha, beta),
    "hard_swish": lambda x: x * _hard_sigmoid(x, 1.0 / 6.0, 0.5),  # ONNX HardSwish
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for x << 0: 1 / inf is the right 0
        return np.float32(1) / (np.float32(1) + np.exp(-x))


def _hard_sigmoid(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return np.clip(x * np.float32(alpha) + np.float32(beta), np.float32(0), np.float32(1))


def apply_activation(x: np.ndarray, act: Activation | None) -> np.ndarray:
    """`act(x)`; `None` (no fused activation) is the identity."""
    return x if act is None else ACTIVATIONS[act.kind](x, *act.params)


# --- windows (convolution and pooling) -----------------------------------------------------------


def _windows(x: np.ndarray, kernel, strides, pads, dilations, out_hw, fill: float) -> np.ndarray:
    """(N, C, OH, OW, KH, KW) view of the taps each output reads. `pads` are (top, left, bottom,
    right) filled with `fill`; in ceil mode the last windows may run past the bottom/right pad,
    and those taps read `fill` too (callers count them out where it matters)."""
    padded = np.pad(x, _pad_widths(x.shape, kernel, strides, pads, dilations, out_hw), constant_values=fill)
    span = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilations))
    view = sliding_window_view(padded, span, axis=(2, 3))
    oh, ow = out_hw
    return view[:, :, : (oh - 1) * strides[0] + 1 : strides[0], : (ow - 1) * strides[1] + 1 : strides[1],
                ::dilations[0], ::dilations[1]]


def _pad_widths(shape, kernel, strides, pads, dilations, out_hw) -> list[tuple[int, int]]:
    widths = [(0, 0), (0, 0)]
    for axis in range(2):
        span = dilations[axis] * (kernel[axis] - 1) + 1
        needed = (out_hw[axis] - 1) * strides[axis] + span  # padded length the last window reaches
        begin, end = pads[axis], pads[axis + 2]
        widths.append((begin, max(end, needed - shape[2 + axis] - begin)))
    return widths


def _conv2d(op: ops.Conv2d, env: Env) -> np.ndarray:
    """Grouped, strided, dilated, padded NCHW x OIHW convolution + bias + residual, then the activation.

    `filter_order`: stored weight row i is the original filter `filter_order[i]`; it writes output
    channel `filter_order[i]` and reads the input channels of that output channel's group. The
    bias is indexed by output channel, so it is *not* permuted. Undoing the permutation of the
    weight rows is therefore all it takes. `filter_groups` only tells kernels which stored filters
    share input loads: it never changes the result.
    """
    x, weight = env[op.input], env[op.weight]
    if op.filter_order is not None:
        original = np.empty_like(weight)
        original[list(op.filter_order)] = weight
        weight = original
    n, o, oh, ow = op.type.shape
    g, (_, cg, kh, kw) = op.groups, weight.shape
    win = _windows(x, (kh, kw), op.strides, op.pads, op.dilations, (oh, ow), 0.0)
    # im2col: (G, N*OH*OW, Cg*KH*KW) @ (G, Cg*KH*KW, O/G) -> (G, N*OH*OW, O/G), one matmul per group.
    cols = win.reshape(n, g, cg, oh, ow, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6).reshape(g, n * oh * ow, -1)
    rows = weight.reshape(g, o // g, cg * kh * kw).transpose(0, 2, 1)
    y = np.matmul(cols, rows).reshape(g, n, oh, ow, o // g).transpose(1, 0, 4, 2, 3).reshape(n, o, oh, ow)
    if op.bias is not None:
        y = y + env[op.bias].reshape(1, o, 1, 1)
    if op.residual is not None:  # a ResNet shortcut, added before the activation
        y = y + env[op.residual]
    return np.ascontiguousarray(apply_activation(y, op.activation))


def _linear(op: ops.Linear, env: Env) -> np.ndarray:
    """`y = x @ weight.T + bias`, then the activation."""
    y = env[op.input] @ env[op.weight].T
    if op.bias is not None:
        y = y + env[op.bias]
    return apply_activation(y, op.activation)


def _batch_norm(op: ops.BatchNorm, env: Env) -> np.ndarray:
    """`(x - mean) / sqrt(var + epsilon) * scale + bias`, per channel (axis 1)."""
    x = env[op.input]
    per_channel = (1, -1) + (1,) * (x.ndim - 2)
    scale = env[op.scale] / np.sqrt(env[op.var] + np.float32(op.epsilon))
    shift = env[op.bias] - env[op.mean] * scale
    return x * scale.reshape(per_channel) + shift.reshape(per_channel)


def _max_pool(op: ops.MaxPool, env: Env) -> np.ndarray:
    """Max over each window; pads (and taps past them in ceil mode) never win. They hold the lowest
    finite float32, as in onnxruntime and TVM, rather than -inf: the same for every window that
    reads an input element, and -3.4e38 (not -inf) for one that reads only padding."""
    lowest = np.finfo(np.float32).min
    win = _windows(env[op.input], op.kernel, op.strides, op.pads, op.dilations, op.type.shape[2:], lowest)
    return win.max(axis=(4, 5))


def _avg_pool(op: ops.AvgPool, env: Env) -> np.ndarray:
    """Mean over each window. The divisor counts the window's taps inside the input, plus those in
    the pads when `count_include_pad`; taps past the bottom/right pad (ceil mode) never count,
    as in onnxruntime. A window with nothing to count (pads >= kernel) averages to 0."""
    x = env[op.input]
    out_hw = op.type.shape[2:]
    sums = _windows(x, op.kernel, op.strides, op.pads, (1, 1), out_hw, 0.0).sum(axis=(4, 5), dtype=np.float32)
    h_counts, w_counts = (_tap_counts(op, axis, x.shape[2 + axis], out_hw[axis]) for axis in range(2))
    return sums / np.maximum(np.outer(h_counts, w_counts), 1).astype(np.float32)


def _tap_counts(op: ops.AvgPool, axis: int, size: int, out: int) -> np.ndarray:
    """For each output position along H (axis 0) or W (axis 1): how many window taps count."""
    begin, end = op.pads[axis], op.pads[axis + 2]
    low, high = (-begin, size + end) if op.count_include_pad else (0, size)
    taps = np.arange(out)[:, None] * op.strides[axis] - begin + np.arange(op.kernel[axis])[None, :]
    return ((taps >= low) & (taps < high)).sum(axis=1)


def _global_avg_pool(op: ops.GlobalAvgPool, env: Env) -> np.ndarray:
    return env[op.input].mean(axis=(2, 3), keepdims=True, dtype=np.float32)


def _softmax(op: ops.Softmax, env: Env) -> np.ndarray:
    """`exp(x - max) / sum(exp(x - max))` along `axis` (shifting by the max cannot overflow)."""
    x = env[op.input]
    e = np.exp(x - x.max(axis=op.axis, keepdims=True))
    return e / e.sum(axis=op.axis, keepdims=True)


KERNELS: dict[type[ops.Op], Callable[[ops.Op, Env], np.ndarray]] = {
    ops.Conv2d: _conv2d,
    ops.Linear: _linear,
    ops.MatMul: lambda op, env: np.matmul(env[op.a], env[op.b]),
    ops.BatchNorm: _batch_norm,
    ops.Activate: lambda op, env: apply_activation(env[op.input], op.fn),
    ops.Add: lambda op, env: np.add(env[op.a], env[op.b]),
    ops.Mul: lambda op, env: np.multiply(env[op.a], env[op.b]),
    ops.MaxPool: _max_pool,
    ops.AvgPool: _avg_pool,
    ops.GlobalAvgPool: _global_avg_pool,
    ops.Flatten: lambda op, env: env[op.input].reshape(op.type.shape),
    ops.Reshape: lambda op, env: env[op.input].reshape(op.shape),
    ops.Concat: lambda op, env: np.concatenate([env[r] for r in op.inputs], axis=op.axis),
    ops.Softmax: _softmax,
}
"""What each op computes: `fn(op, env)` reads its operands from `env` by reference."""
