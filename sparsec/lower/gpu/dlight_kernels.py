"""GPU kernels for the ops TVM's dlight rules schedule well: elementwise ops, pools, softmax,
concat and dense fully connected layers / matmuls.

Each is a TE compute (TOPI's where it has one) turned into a PrimFunc and scheduled by dlight's
generic GPU rules, first that applies: Matmul, GEMV, Reduction, GeneralReduction, then Fallback
(which binds any spatial loop nest to threads). Nothing leaves here without thread bindings:
`_schedule` raises if no rule applied.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te, tirx, topi
from tvm.s_tir import dlight as dl

from sparsec.ir.activation import Activation
from sparsec.lower.kernels.common import Kernel, apply_activation
from sparsec.lower.target import tvm_target
from sparsec.target import Target


def _schedule(func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc:
    mod = tvm.IRModule({"main": func})
    with tvm_target(target):
        mod = dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
                                      dl.gpu.Fallback())(mod)
    scheduled = mod["main"]
    if not (scheduled.attrs and scheduled.attrs.get("tirx.is_scheduled")):
        raise ValueError(f"{func.attrs['global_symbol']}: no dlight GPU rule applies")
    return scheduled


def _kernel(tensors: list[te.Tensor], constants: tuple[np.ndarray, ...], name: str, target: Target) -> Kernel:
    """tensors: inputs, then one placeholder per constant, then the output."""
    func = te.create_prim_func(tensors).with_attr("global_symbol", name)
    out = tensors[-1]
    return Kernel(_schedule(func, target), constants, tuple(int(d) for d in out.shape), "float32")


def _placeholder(shape, name: str) -> te.Tensor:
    return te.placeholder(tuple(int(d) for d in shape), "float32", name=name)


def activation_kernel(shape, act: Activation, *, target: Target, name: str = "activation") -> Kernel:
    x = _placeholder(shape, "x")
    out = te.compute(x.shape, lambda *i: apply_activation(x(*i), act, 1), name="out")
    return _kernel([x, out], (), name, target)


def binary_kernel(op: str, a_shape, b_shape, consts: dict[int, np.ndarray], *, target: Target,
                  name: str = "binary") -> Kernel:
    """`a + b` / `a * b` with NumPy broadcasting; operands in `consts` (by position) are constants."""
    a, b = _placeholder(a_shape, "a"), _placeholder(b_shape, "b")
    out = (topi.add if op == "add" else topi.multiply)(a, b)
    order = [t for i, t in enumerate((a, b)) if i not in consts] + [t for i, t in enumerate((a, b)) if i in consts]
    constants = tuple(np.ascontiguousarray(consts[i], np.float32) for i in sorted(consts))
    return _kernel([*order, out], constants, name, target)


def affine_kernel(shape, scale: np.ndarray, shift: np.ndarray, *, target: Target, name: str = "batch_norm") -> Kernel:
    """y = x * scale[c] + shift[c] over axis 1 (inference batch norm)."""
    x, s, t = _placeholder(shape, "x"), _placeholder(scale.shape, "scale"), _placeholder(shift.shape, "shift")
    out = te.compute(x.shape, lambda *i: x(*i) * s[i[1]] + t[i[1]], name="out")
    return _kernel([x, s, t, out], (scale.astype(np.float32), shift.astype(np.float32)), name, target)


def pool_kernel(kind: str, in_shape, kernel, strides, pads, *, ceil_mode: bool, dilations=(1, 1),
                count_include_pad: bool = False, target: Target, name: str = "pool") -> Kernel:
    x = _placeholder(in_shape, "x")
    out = topi.nn.pool2d(x, kernel, strides, dilations, pads, kind, ceil_mode=ceil_mode, layout="NCHW",
                         count_include_pad=count_include_pad)
    return _kernel([x, out], (), name, target)


def global_avg_pool_kernel(in_shape, *, target: Target, name: str = "global_avg_pool") -> Kernel:
    x = _placeholder(in_shape, "x")
    return _kernel([x, topi.nn.global_pool(x, "avg", layout="NCHW")], (), name, target)


def softmax_kernel(shape, axis: int, *, target: Target, name: str = "softmax") -> Kernel:
    x = _placeholder(shape, "x")
    return _kernel([x, topi.nn.softmax(x, axis=axis)], (), name, target)


def concat_kernel(shapes, axis: int, *, target: Target, name: str = "concat") -> Kernel:
    xs = [_placeholder(s, f"x{i}") for i, s in enumerate(shapes)]
    return _kernel([*xs, topi.concatenate(xs, axis=axis)], (), name, target)


def dense_kernel(weight: np.ndarray, in_shape, bias: np.ndarray | None, act: Activation | None, *,
                 target: Target, name: str = "linear") -> Kernel:
    """y[m, n] = act(sum_k x[m, k] * w[n, k] + bias[n]) (dlight's GEMV rule at batch 1)."""
    x, w = _placeholder(in_shape, "x"), _placeholder(weight.shape, "w")
    k = te.reduce_axis((0, int(weight.shape[1])), "k")
    mm = te.compute((int(in_shape[0]), int(weight.shape[0])), lambda m, n: te.sum(x[m, k] * w[n, k], axis=k), name="mm")
    tensors, constants = [x, w], [weight.astype(np.float32)]
    if bias is not None:
        b = _placeholder(bias.shape, "bias")
        tensors.append(b)
        constants.append(bias.astype(np.float32))
    if bias is None and act is None:
        return _kernel([*tensors, mm], tuple(constants), name, target)
    out = te.compute(mm.shape, lambda m, n: apply_activation(mm[m, n] + (b[n] if bias is not None else 0.0), act, 1),
                     name="out")
    return _kernel([*tensors, out], tuple(constants), name, target)


def matmul_kernel(a_shape, b_shape, out_shape, *, target: Target, name: str = "matmul") -> Kernel:
    """NumPy matmul of two activations (batch axes broadcast), ranks >= 2."""
    a, b = _placeholder(a_shape, "a"), _placeholder(b_shape, "b")
    k = te.reduce_axis((0, int(a_shape[-1])), "k")
    batch = len(out_shape) - 2

    def pick(t, idx, row, col):
        lead = [i if int(d) != 1 else 0 for i, d in zip(idx[batch - (len(t.shape) - 2): batch], t.shape[:-2])]
        return t[(*lead, row, col)]

    out = te.compute(tuple(out_shape), lambda *i: te.sum(pick(a, i, i[-2], k) * pick(b, i, k, i[-1]), axis=k),
                     name="out")
    return _kernel([a, b, out], (), name, target)
