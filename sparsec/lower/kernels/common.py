"""What every kernel generator returns, and a helper that compiles and runs one (for tests)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import s_tir, tirx

from sparsec.ir.activation import Activation
from sparsec.target import Target


@dataclass(frozen=True)
class Kernel:
    """A generated TIR kernel in destination-passing style.

    `func` takes (data, *constants, out), out last, so a Relax `call_tir(gv, [data, *constants],
    out_ty)` can call it; `constants` are the arrays it reads at run time, in parameter order.
    """

    func: tirx.PrimFunc
    constants: tuple[np.ndarray, ...]
    out_shape: tuple[int, ...]
    out_dtype: str


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class ConvShape:
    """One convolution's shapes (NCHW input, OIHW weight); all compile-time integers. Kernel
    geometries extend it with their tiling."""

    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right (ONNX order)
    dilations: tuple[int, int]
    groups: int

    @property
    def oh(self) -> int:
        return conv_output_size(self.h, self.pads[0], self.pads[2], self.kh, self.strides[0], self.dilations[0])

    @property
    def ow(self) -> int:
        return conv_output_size(self.w, self.pads[1], self.pads[3], self.kw, self.strides[1], self.dilations[1])

    @property
    def cg(self) -> int:
        """Input channels per group."""
        return self.c // self.groups

    @property
    def og(self) -> int:
        """Filters per group."""
        return self.o // self.groups


def conv_output_size(size: int, pad_before: int, pad_after: int, kernel: int, stride: int = 1,
                     dilation: int = 1) -> int:
    """Output positions of a convolution (or pooling window) along one axis, ONNX semantics (floor)."""
    return (size + pad_before + pad_after - (kernel - 1) * dilation - 1) // stride + 1


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
    return out."""
    from sparsec.lower.target import tvm_target

    name = str(kernel.func.attrs["global_symbol"])
    lib = tvm.compile(kernel.func, target=tvm_target(target))
    dev = tvm.cpu(0)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in (*inputs, *kernel.constants)]
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
