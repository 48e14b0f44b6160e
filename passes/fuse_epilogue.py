"""fuse-epilogue: bias adds, residual adds and activations after a conv2d / linear move into its epilogue."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from sparsec.ir.module import Module, Weight
from sparsec.ir.ops import Activate, Add, Conv2d, Linear
from sparsec.ir.types import TensorType
from sparsec.passes.base import Pass, register
from sparsec.passes.rewrite import Fused, Rule, fresh_weight_name, fuse_pairs


def _fuse_activation(producer: Conv2d | Linear, act: Activate, module: Module) -> Fused | None:
    # before: %c = conv2d(%x, @w, @b); %y = activation(%c) {fn = relu}
    # after:  %y = conv2d(%x, @w, @b) {activation = relu}
    if producer.activation is not None:
        return None
    return Fused(dataclasses.replace(producer, result=act.result, type=act.type, activation=act.fn, loc=act.loc))


def _fuse_bias(producer: Conv2d | Linear, add: Add, module: Module) -> Fused | None:
    # before: %c = conv2d(%x, @w); %y = add(%c, @t)   with @t one value per output channel
    # after:  %y = conv2d(%x, @w, @t')                (also when a bias exists: the two are summed)
    if producer.activation is not None or add.a != f"%{producer.result}" or not add.b.startswith("@") \
            or add.type != producer.type:
        return None
    channels = producer.type.shape[1]
    term = module.weight(add.b).data
    if term.size != channels or term.ndim > producer.type.rank or _channel_axis_shape(term, producer) is None:
        return None
    bias = term.reshape(channels).astype(np.float32)
    if producer.bias:
        bias = bias + module.weight(producer.bias).data
    name = fresh_weight_name(module, f"{producer.weight[1:]}.bias")
    new_bias = Weight(name, TensorType("f32", (channels,)), bias)
    return Fused(dataclasses.replace(producer, result=add.result, type=add.type, bias=f"@{name}", loc=add.loc),
                 (new_bias,))


def _fuse_residual(producer: Conv2d, add: Add, module: Module) -> Fused | None:
    # before: %c = conv2d(%x, @w, @b); ...; %r = ...; %s = add(%c, %r)   (or add(%r, %c))
    # after:  ...; %r = ...; %s = conv2d(%x, @w, @b, %r)   where the add was: %r may come after the conv
    # Only onto a bare conv: the residual is added before the activation, and one residual per conv.
    conv = f"%{producer.result}"
    other = add.b if add.a == conv else add.a
    if producer.activation is not None or producer.residual is not None or not other.startswith("%"):
        return None
    if other == conv or module.types[other] != producer.type or add.type != producer.type:
        return None  # the epilogue reads the residual like the output: no broadcasting either way
    return Fused(dataclasses.replace(producer, result=add.result, type=add.type, residual=other, loc=add.loc))


def _channel_axis_shape(term: np.ndarray, producer: Conv2d | Linear) -> tuple | None:
    """The term's shape if it broadcasts along the channel axis only (e.g. [1, C, 1, 1] or [C])."""
    rank = producer.type.rank
    want = [1] * rank
    want[1] = producer.type.shape[1]
    padded = (1,) * (rank - term.ndim) + term.shape
    if rank == 2:  # linear: a bias is [N] or [1, N]
        return padded if padded == (1, producer.type.shape[1]) else None
    return padded if list(padded) == want else None


RULES: list[Rule] = [
    (Conv2d, Add, _fuse_bias),
    (Linear, Add, _fuse_bias),
    (Conv2d, Activate, _fuse_activation),
    (Linear, Activate, _fuse_activation),
]
RESIDUAL_RULES: list[Rule] = [
    (Conv2d, Add, _fuse_residual),
]


@register
@dataclass(frozen=True)
class FuseEpilogue(Pass):
    """Fuse bias adds, residual adds and activations into the preceding conv2d / linear.

    Bias adds are per-channel weights; residual adds (ResNet shortcuts) add a value of the conv's
    own type. `residual=false` leaves residual adds alone (GPU targets: their conv kernels have
    no residual input)."""

    name = "fuse-epilogue"
    residual: bool = True

    def apply(self, module: Module) -> Module:
        return fuse_pairs(module, RULES + (RESIDUAL_RULES if self.residual else []))
