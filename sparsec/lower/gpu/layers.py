"""Which GPU kernel each IR op gets: sparsec's own for convolutions (pattern, CSR 1x1, dense direct
and depthwise) and CSR fully connected layers, dlight-scheduled TE for the rest; reshapes are views.

Each entry returns a `GpuKernel`: the kernel, the IR values it reads (its leading parameters;
weights an op reads as operands become constants) and the weight format, or `None` for a view.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sparsec.errors import UserError
from sparsec.ir.module import Module
from sparsec.ir.ops import (
    Activate,
    Add,
    AvgPool,
    BatchNorm,
    Concat,
    Conv2d,
    Flatten,
    GlobalAvgPool,
    Linear,
    MatMul,
    MaxPool,
    Mul,
    Op,
    Reshape,
    Softmax,
)
from sparsec.ir.types import CSR, Pattern
from sparsec.lower.gpu import dlight_kernels as dk
from sparsec.lower.gpu.conv import dense_conv_kernel
from sparsec.lower.gpu.csr import csr_conv1x1_kernel, csr_dense_kernel
from sparsec.lower.gpu.pattern import pattern_conv_kernel
from sparsec.lower.kernels.common import Kernel
from sparsec.passes.compress_fkw import fkw_of
from sparsec.target import Target
from sparsec.tuning.task import bias_data, legal_weight, original_order


@dataclass(frozen=True)
class GpuKernel:
    kernel: Kernel
    inputs: tuple[str, ...]
    format: str = "dense"


def _shape(module: Module, ref: str) -> tuple[int, ...]:
    return module.types[ref].shape if ref.startswith("%") else module.weight(ref).type.shape


def _conv2d(op: Conv2d, module: Module, target: Target) -> GpuKernel:
    if op.residual is not None:  # the GPU kernels have no residual input; for_target turns the fusion off
        raise UserError(f"layer %{op.result} (conv2d): it adds the residual {op.residual} in its epilogue (a shortcut "
                        f"add fused for a CPU target), which {target.name}'s GPU kernels cannot; recompile from the "
                        f"ONNX model with --target {target.name} (that pipeline keeps the add a layer of its own)")
    weight = legal_weight(op, module)
    in_shape = _shape(module, op.input)
    common = dict(bias=bias_data(op, module), activation=op.activation, target=target)
    geometry = dict(strides=op.strides, pads=op.pads, dilations=op.dilations)
    if isinstance(weight.layout, Pattern):
        return GpuKernel(pattern_conv_kernel(fkw_of(op, weight), in_shape, **geometry, **common), (op.input,),
                         "pattern")
    data = original_order(op, weight)
    if isinstance(weight.layout, CSR):
        return GpuKernel(csr_conv1x1_kernel(data, in_shape, strides=op.strides, **common), (op.input,), "csr")
    return GpuKernel(dense_conv_kernel(data, in_shape, **geometry, groups=op.groups, **common), (op.input,))


def _linear(op: Linear, module: Module, target: Target) -> GpuKernel:
    weight = legal_weight(op, module)
    in_shape = _shape(module, op.input)
    if isinstance(weight.layout, CSR):
        kernel = csr_dense_kernel(weight.data, in_shape, bias=bias_data(op, module), activation=op.activation,
                                  target=target)
        return GpuKernel(kernel, (op.input,), "csr")
    return GpuKernel(dk.dense_kernel(weight.data, in_shape, bias_data(op, module), op.activation, target=target),
                     (op.input,))


def _pool(op: MaxPool | AvgPool | GlobalAvgPool, module: Module, target: Target) -> GpuKernel:
    in_shape = _shape(module, op.input)
    if isinstance(op, GlobalAvgPool):
        return GpuKernel(dk.global_avg_pool_kernel(in_shape, target=target), (op.input,))
    kind = "max" if isinstance(op, MaxPool) else "avg"
    extra = dict(dilations=op.dilations) if isinstance(op, MaxPool) else dict(count_include_pad=op.count_include_pad)
    kernel = dk.pool_kernel(kind, in_shape, op.kernel, op.strides, op.pads, ceil_mode=op.ceil_mode, target=target,
                            **extra)
    return GpuKernel(kernel, (op.input,))


def _binary(op: Add | Mul, module: Module, target: Target) -> GpuKernel:
    refs = (op.a, op.b)
    consts = {i: module.weight(r).data for i, r in enumerate(refs) if r.startswith("@")}
    kernel = dk.binary_kernel(op.name, _shape(module, op.a), _shape(module, op.b), consts, target=target)
    return GpuKernel(kernel, tuple(r for r in refs if r.startswith("%")))


def _batch_norm(op: BatchNorm, module: Module, target: Target) -> GpuKernel:
    get = lambda ref: module.weight(ref).data.astype(np.float64)  # noqa: E731
    scale = get(op.scale) / np.sqrt(get(op.var) + op.epsilon)
    shift = get(op.bias) - get(op.mean) * scale
    return GpuKernel(dk.affine_kernel(op.type.shape, scale, shift, target=target), (op.input,))


def _matmul(op: MatMul, module: Module, target: Target) -> GpuKernel:
    if any(r.startswith("@") for r in (op.a, op.b)) or len(op.type.shape) < 2:
        from sparsec.errors import NotSupportedError

        raise NotSupportedError(f"layer %{op.result}: matmul on the GPU needs two activations of rank >= 2")
    kernel = dk.matmul_kernel(_shape(module, op.a), _shape(module, op.b), op.type.shape, target=target)
    return GpuKernel(kernel, (op.a, op.b))


GPU_KERNELS: dict[type[Op], Callable[[Op, Module, Target], GpuKernel | None]] = {
    Conv2d: _conv2d,
    Linear: _linear,
    MaxPool: _pool,
    AvgPool: _pool,
    GlobalAvgPool: _pool,
    Activate: lambda op, m, t: GpuKernel(dk.activation_kernel(op.type.shape, op.fn, target=t), (op.input,)),
    BatchNorm: _batch_norm,
    MatMul: _matmul,
    Add: _binary,
    Mul: _binary,
    Flatten: lambda op, m, t: None,
    Reshape: lambda op, m, t: None,
    Concat: lambda op, m, t: GpuKernel(dk.concat_kernel([_shape(m, r) for r in op.inputs], op.axis, target=t),
                                       tuple(op.inputs)),
    Softmax: lambda op, m, t: GpuKernel(dk.softmax_kernel(op.type.shape, op.axis, target=t), (op.input,)),
}
