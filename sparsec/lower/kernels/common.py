"""What every kernel generator returns, and a helper that compiles and runs one (for tests)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from sparsec.ir.activation import Activation
from sparsec.lower.kernels.shapes import ConvShape as ConvShape  # noqa: F401 (the generators import them here)
from sparsec.lower.kernels.shapes import ceil_div as ceil_div  # noqa: F401
from sparsec.lower.kernels.shapes import conv_output_size as conv_output_size  # noqa: F401
from sparsec.target import Target


@dataclass(frozen=True)
class Kernel:
    """A generated TIR kernel in destination-passing style.

    `func` takes (data, *constants, out), out last, so a Relax `call_tir(gv, [data, *constants],
    out_ty)` can call it; `constants` are the arrays it reads at run time, in parameter order.
    With `in_place` set, it has no `out`: it writes its result over parameter `in_place` (a fused
    residual it reads element by element just before), for `call_tir_inplace`.
    """

    func: tirx.PrimFunc
    constants: tuple[np.ndarray, ...]
    out_shape: tuple[int, ...]
    out_dtype: str
    in_place: int | None = None


def emit_prefetch(element, *, write: bool = False) -> None:
    """(IRBuilder) Prefetch the line holding `element` into L1 (LLVM's prefetch: data, keep in all
    levels), for reading or, with `write`, for writing."""
    addr = tirx.call_intrin("handle", "tirx.address_of", element)
    T.evaluate(tirx.call_llvm_intrin("void", "llvm.prefetch.p0", addr, int(write), 3, 1))


def require_positive_knobs(knobs, auto: tuple[str, ...] = ()) -> None:
    """Every field of a knobs dataclass must be >= 1 (a knob is a count or a size); those in
    `auto` may also be 0 ("from the target")."""
    for name in knobs.__dataclass_fields__:
        if getattr(knobs, name) < (0 if name in auto else 1):
            raise ValueError(f"knob {name} must be >= {0 if name in auto else 1}")


def has_block(sch: s_tir.Schedule, name: str) -> bool:
    """Whether the scheduled function has a block of this name."""
    try:
        sch.get_sblock(name)
    except s_tir.ScheduleError:
        return False
    return True


def run_kernel(kernel: Kernel, target: Target, *inputs: np.ndarray) -> np.ndarray:
    """Compile `kernel` for `target` (a host CPU target), run it with `inputs` + its constants,
    return out (an in-place kernel's: the input it wrote over; the caller's array is left as it was)."""
    from sparsec.lower.target import tvm_target

    name = str(kernel.func.attrs["global_symbol"])
    lib = tvm.compile(kernel.func, target=tvm_target(target))
    dev = tvm.cpu(0)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in (*inputs, *kernel.constants)]
    if kernel.in_place is not None:
        lib[name](*args)
        return args[kernel.in_place].numpy()
    out = tvm.runtime.tensor(np.zeros(kernel.out_shape, dtype=kernel.out_dtype), dev)
    lib[name](*args, out)
    return out.numpy()


def _f32(value: float, lanes: int) -> tirx.Expr:
    # Always say float32: tirx.const infers float64 for a value float32 cannot hold (a clip
    # bound of +-inf), and a float64 scalar would promote the whole kernel to float64.
    scalar = tirx.const(value, "float32")
    return tirx.Broadcast(scalar, lanes) if lanes > 1 else scalar


def apply_activation(x: tirx.Expr, act: Activation | None, lanes: int) -> tirx.Expr:
    """`act(x)` on a float32 (vector) expression; `None` is the identity."""
    if act is None:
        return x
    c = lambda v: _f32(v, lanes)  # noqa: E731 - a constant of x's width
    if act.kind == "relu":
        return tirx.max(x, c(0.0))
    if act.kind == "clip":
        return tirx.min(tirx.max(x, c(act.params[0])), c(act.params[1]))
    if act.kind == "leaky_relu":
        return tirx.Select(x > c(0.0), x, x * c(act.params[0]))
    if act.kind == "sigmoid":
        return c(1.0) / (c(1.0) + tirx.exp(c(0.0) - x))
    if act.kind == "hard_sigmoid":
        alpha, beta = act.params
        return tirx.min(tirx.max(x * c(alpha) + c(beta), c(0.0)), c(1.0))
    if act.kind == "hard_swish":  # ONNX HardSwish: x * hard_sigmoid(x; 1/6, 1/2)
        return x * tirx.min(tirx.max(x * c(1.0 / 6.0) + c(0.5), c(0.0)), c(1.0))
    raise AssertionError(f"activation {act.kind} has no lowering")
