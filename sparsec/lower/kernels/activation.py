"""Elementwise activation kernel: the same TIR activation code the conv epilogues fuse."""

from __future__ import annotations

from tvm import te

from sparsec.ir.activation import Activation
from sparsec.lower.kernels.common import Kernel, apply_activation
from sparsec.lower.schedule_generic import schedule_func
from sparsec.target import Target


def activation_kernel(shape: tuple[int, ...], act: Activation, name: str = "activation", *,
                      target: Target) -> Kernel:
    """`out = act(x)` for a float32 tensor of `shape`, parallel and vectorised."""
    x = te.placeholder(shape, "float32", name="x")
    out = te.compute(shape, lambda *i: apply_activation(x(*i), act, 1), name="out")
    func = schedule_func(te.create_prim_func([x, out]).with_attr("global_symbol", name), target)
    return Kernel(func, (), tuple(shape), "float32")
