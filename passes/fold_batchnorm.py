"""fold-batchnorm: a conv2d or linear followed by batch_norm becomes one op with scaled weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from sparsec.ir.module import Module, Weight
from sparsec.ir.ops import BatchNorm, Conv2d, Linear
from sparsec.ir.types import TensorType
from sparsec.passes.base import Pass, register
from sparsec.passes.rewrite import Fused, Rule, fresh_weight_name, fuse_pairs


def _fold(producer: Conv2d | Linear, bn: BatchNorm, module: Module) -> Fused | None:
    # before: %c = conv2d(%x, @w, @b); %y = batch_norm(%c, @s, @t, @m, @v)
    # after:  %y = conv2d(%x, @w', @b')   with w' = w * s/sqrt(v+eps), b' = (b - m) * s/sqrt(v+eps) + t
    # BN(act(y)) and BN(y + residual) are no scaled conv: only a bare conv / linear folds
    if producer.activation is not None or getattr(producer, "residual", None) is not None:
        return None
    get = lambda ref: module.weight(ref).data.astype(np.float64)  # noqa: E731 - fold in float64
    factor = get(bn.scale) / np.sqrt(get(bn.var) + bn.epsilon)
    weight = module.weight(producer.weight)
    old_bias = get(producer.bias) if producer.bias else np.zeros(weight.type.shape[0])
    row_factor = factor[_stored_channels(producer)]
    scaled = weight.data.astype(np.float64) * row_factor.reshape(-1, *([1] * (weight.data.ndim - 1)))
    bias = (old_bias - get(bn.mean)) * factor + get(bn.bias)
    new_weight = _replace_data(module, weight, scaled.astype(np.float32))
    if producer.bias:
        new_bias = _replace_data(module, module.weight(producer.bias), bias.astype(np.float32))
    else:
        name = fresh_weight_name(module, f"{weight.name}.bias")
        new_bias = Weight(name, TensorType("f32", bias.shape), bias.astype(np.float32))
    op = dataclasses.replace(producer, result=bn.result, type=bn.type, weight=f"@{new_weight.name}",
                             bias=f"@{new_bias.name}", loc=bn.loc)
    return Fused(op, (new_weight, new_bias))


def _stored_channels(producer: Conv2d | Linear) -> list[int] | slice:
    """The output channel each weight row computes: after reorder-filters, row i is channel
    filter_order[i] (the bias stays indexed by channel)."""
    order = getattr(producer, "filter_order", None)
    return list(order) if order else slice(None)


def _replace_data(module: Module, weight: Weight, data: np.ndarray) -> Weight:
    """The weight with new data: in place when this is its only user, else under a fresh name."""
    users = module.users().get(f"@{weight.name}", [])
    name = weight.name if len(users) == 1 else fresh_weight_name(module, f"{weight.name}.folded")
    return dataclasses.replace(weight, name=name, data=data)


RULES: list[Rule] = [
    (Conv2d, BatchNorm, _fold),
    (Linear, BatchNorm, _fold),
]


@register
@dataclass(frozen=True)
class FoldBatchnorm(Pass):
    """Fold inference batch normalisation into the preceding conv2d / linear weights and bias."""

    name = "fold-batchnorm"

    def apply(self, module: Module) -> Module:
        return fuse_pairs(module, RULES)
