"""Which kernel generator each layer gets, from its op and its weight's layout.

The layout says what the weight is; this table picks the generator that exploits it:
pattern / fkw -> pattern-sparse conv, csr -> sparse 1x1 conv or sparse FC, dense -> dense kernels.
Before picking, it asks the legality table again (the verifier already did): a layout with no
generator for the op's geometry is an error naming the layer, never a kernel that computes
something else.
"""

from __future__ import annotations

import numpy as np

from sparsec.errors import UserError
from sparsec.ir.legality import layout_problem
from sparsec.ir.module import Module, Weight
from sparsec.ir.ops import AvgPool, Conv2d, GlobalAvgPool, Linear, MaxPool
from sparsec.ir.types import CSR, Pattern
from sparsec.lower.kernels import pool
from sparsec.lower.kernels.common import Kernel
from sparsec.lower.kernels.csr import csr_conv1x1_kernel, csr_dense_kernel
from sparsec.lower.kernels.dense_conv import dense_conv_kernel
from sparsec.lower.kernels.dense_matmul import dense_kernel
from sparsec.lower.kernels.pattern_conv import PatternConvKnobs, pattern_conv_kernel
from sparsec.passes.compress_fkw import fkw_of
from sparsec.target import Target


def _bias(op, module: Module) -> np.ndarray | None:
    return module.weight(op.bias).data if op.bias else None


def _original_order(op: Conv2d, weight: Weight) -> np.ndarray:
    """Weight rows in output-channel order (undoing a recorded filter permutation)."""
    if not op.filter_order:
        return weight.data
    data = np.empty_like(weight.data)
    data[list(op.filter_order)] = weight.data
    return data


def _pattern_knobs(op: Conv2d) -> PatternConvKnobs:
    """Knobs from the IR's decisions: filter groups set by eliminate-redundant-loads."""
    width = max(op.filter_groups) if op.filter_groups else 1
    return PatternConvKnobs(filters_per_group=width)


def _legal_weight(op: Conv2d | Linear, module: Module) -> Weight:
    weight = module.weight(op.weight)
    problem = layout_problem(op, "weight", weight.type, weight.layout)
    if problem:
        raise UserError(f"layer %{op.result} ({op.name}): {problem}")
    return weight


def conv2d_kernel(op: Conv2d, module: Module, target: Target) -> tuple[Kernel, str]:
    """The kernel for a conv2d and the name of the format it reads."""
    weight = _legal_weight(op, module)
    in_shape = module.types[op.input].shape
    common = dict(bias=_bias(op, module), activation=op.activation, target=target)
    geometry = dict(strides=op.strides, pads=op.pads, dilations=op.dilations)
    if isinstance(weight.layout, Pattern):  # pattern and fkw: the FKW arrays derive from the data
        fkw = fkw_of(op, weight)
        return pattern_conv_kernel(fkw, in_shape, **geometry, **common, knobs=_pattern_knobs(op)), "pattern"
    data = _original_order(op, weight)
    if isinstance(weight.layout, CSR):
        return csr_conv1x1_kernel(data, in_shape, strides=op.strides, **common), "csr"
    return dense_conv_kernel(data, in_shape, **geometry, groups=op.groups, **common), "dense"


def linear_kernel(op: Linear, module: Module, target: Target) -> tuple[Kernel, str]:
    weight = _legal_weight(op, module)
    in_shape = module.types[op.input].shape
    common = dict(bias=_bias(op, module), activation=op.activation, target=target)
    if isinstance(weight.layout, CSR):
        return csr_dense_kernel(weight.data, in_shape, **common), "csr"
    return dense_kernel(weight.data, in_shape, **common), "dense"


def pool_kernel(op: MaxPool | AvgPool | GlobalAvgPool, module: Module, target: Target) -> Kernel:
    in_shape = module.types[op.input].shape
    if isinstance(op, GlobalAvgPool):
        return pool.global_avg_pool_kernel(in_shape, target=target)
    if isinstance(op, MaxPool):
        return pool.max_pool_kernel(in_shape, kernel=op.kernel, strides=op.strides, pads=op.pads,
                                    ceil_mode=op.ceil_mode, dilations=op.dilations)
    return pool.avg_pool_kernel(in_shape, kernel=op.kernel, strides=op.strides, pads=op.pads,
                                ceil_mode=op.ceil_mode, count_include_pad=op.count_include_pad)
