"""IR module -> TVM Relax module: each op becomes a call to a kernel generated for it.

Kernels come from `sparsec.lower.kernels` (scheduled by their generators); the few ops left to
Relax (reshape, concat, softmax, broadcast arithmetic) are legalised and then given the generic
CPU schedule of `schedule_generic`, so no op runs on TVM's unscheduled default. For a GPU target
every op but reshapes gets a GPU kernel of its own (`sparsec.lower.gpu.layers`), so each layer is
one PrimFunc whose OpenCL kernels can be replayed and checked alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from sparsec.errors import UserError, error_line
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
from sparsec.lower.kernels.activation import activation_kernel
from sparsec.lower.kernels.common import Kernel
from sparsec.lower.kernels.dense_matmul import matmul_kernel
from sparsec.lower.layers import LayerKernel, layer_kernel, pool_kernel, pooled_conv_kernel
from sparsec.lower.schedule_generic import SCHEDULED_ATTR, schedule_unscheduled
from sparsec.sparsity import conv_macs, fc_macs
from sparsec.target import Target


@dataclass(frozen=True)
class LayerPlan:
    """What one IR op became: its kernel and the weight format it reads (for the manifest)."""

    result: str
    op: str
    format: str
    kernel: str
    constant_bytes: int  # what the kernel embeds: FKW / CSR arrays, dense weights, bias
    kept_macs: int  # useful multiply-adds (nonzero weights x output positions); 0 for ops without weights
    task: str = ""  # the kernel's tuning task key (conv2d, linear; `sparsec.tuning.task`)
    knobs: dict | None = None  # the knobs its generator used
    # GPU targets: the IR values the kernel reads first, then its constants (the emulation bundle's)
    inputs: tuple[str, ...] = ()
    constants: tuple = field(default=(), repr=False, compare=False)


@dataclass
class _Ctx:
    module: Module
    bb: relax.BlockBuilder
    target: Target
    env: dict[str, relax.Expr] = field(default_factory=dict)
    plans: list[LayerPlan] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    users: dict[str, list[Op]] = field(init=False)  # the module's, read by the fusions
    producers: dict[str, tuple[int, Op]] = field(init=False)  # value name -> (position, the op computing it)

    def __post_init__(self) -> None:
        self.users = self.module.users()
        self.producers = {op.result: (i, op) for i, op in enumerate(self.module.ops)}

    def ref(self, ref: str) -> relax.Expr:
        """A `%value` as its Relax var, a `@weight` as a Relax constant."""
        if ref.startswith("@"):
            return relax.const(self.module.weight(ref).data)
        return self.env[ref[1:]]

    def kernel_name(self, op: Op) -> str:
        base = "".join(c if c.isalnum() else "_" for c in f"{op.name}_{op.result}")
        name, n = base, 0
        while name in self.names:
            n += 1
            name = f"{base}_{n}"
        self.names.add(name)
        return name


def build_relax(module: Module, target: Target) -> tuple[tvm.IRModule, list[LayerPlan]]:
    """The Relax module of `module` for `target` (function `main`, inputs in order) and its
    per-layer plan."""
    bb = relax.BlockBuilder()
    ctx = _Ctx(module, bb, target)
    params = [relax.Var(p.name, relax.TensorType(p.type.shape, "float32")) for p in module.inputs]
    with bb.function("main", params):
        with bb.dataflow():
            ctx.env.update({p.name: v for p, v in zip(module.inputs, params)})
            for op in module.ops:
                if op.result in ctx.env:
                    continue  # a max pool its conv's kernel computed
                fused = _fused_conv_pool(op, ctx)
                last, expr = fused if fused else (op, _lower_op(op, ctx))
                ctx.env[last.result] = bb.emit(expr, name_hint=_hint(last.result))
                _check_lowered_type(last, ctx.env[last.result])
            outs = [ctx.env[name] for name in module.outputs]
            result = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        bb.emit_func_output(result)
    if target.kind == "gpu":  # every op is a scheduled kernel or a reshape (a view once lowered)
        return bb.get(), ctx.plans
    mod = relax.transform.LegalizeOps()(bb.get())
    return schedule_unscheduled(mod, target), ctx.plans


def _lower_op(op: Op, ctx: _Ctx) -> relax.Expr:
    """The op's Relax expression; a kernel TVM cannot build is reported against its layer."""
    try:
        if ctx.target.kind == "gpu":
            return _lower_gpu(op, ctx)
        return LOWERINGS[type(op)](op, ctx)
    except (RuntimeError, ValueError) as err:  # TVM raises RuntimeError subclasses
        raise UserError(f"layer %{op.result} ({op.name}): its kernel could not be built: "
                        f"{error_line(err, type(err).__name__)}") from None


def _hint(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name) or "v"


def _call_kernel(ctx: _Ctx, op: Op, kernel: Kernel, inputs: list[relax.Expr], fmt: str,
                 tuned: LayerKernel | None = None, computes: Op | None = None) -> relax.Expr:
    """A call of `op`'s kernel (whose output is `computes`'s value: a fused pool's)."""
    _check_kernel_type(computes or op, kernel)
    name = ctx.kernel_name(op)
    func = kernel.func.with_attr("global_symbol", name).with_attr(SCHEDULED_ATTR, True)
    gv = ctx.bb.add_func(func, name)
    args = inputs + [relax.const(np.ascontiguousarray(c)) for c in kernel.constants]
    embedded = sum(int(c.nbytes) for c in kernel.constants)
    tuning = dict(task=tuned.task, knobs=tuned.knobs.as_dict()) if tuned else {}
    ctx.plans.append(LayerPlan(op.result, op.name, fmt, name, embedded, _kept_macs(op, ctx.module), **tuning))
    out_ty = relax.TensorType(kernel.out_shape, kernel.out_dtype)
    if kernel.in_place is not None:
        return relax.call_tir_inplace(gv, args, inplace_indices=kernel.in_place, out_ty=out_ty)
    return relax.call_tir(gv, args, out_ty=out_ty)


def _lower_gpu(op: Op, ctx: _Ctx) -> relax.Expr:
    """The op's GPU kernel (or a reshape view), recorded with what it reads for the emulator."""
    from sparsec.lower.gpu.layers import GPU_KERNELS

    gk = GPU_KERNELS[type(op)](op, ctx.module, ctx.target)
    if gk is None:
        ctx.plans.append(LayerPlan(op.result, op.name, "view", "", 0, 0, inputs=(op.input,)))
        return relax.op.reshape(ctx.ref(op.input), op.type.shape)
    call = _call_kernel(ctx, op, gk.kernel, [ctx.ref(r) for r in gk.inputs], gk.format)
    ctx.plans[-1] = dataclasses.replace(ctx.plans[-1], inputs=gk.inputs, constants=gk.kernel.constants)
    return call


def _kept_macs(op: Op, module: Module) -> int:
    """The multiply-adds a perfect kernel for this layer would do: one per nonzero weight per
    output position (the numerator of the roofline's useful FLOP/s)."""
    if not isinstance(op, (Conv2d, Linear)):
        return 0
    weight = module.weight(op.weight)
    nonzeros = int(np.count_nonzero(weight.data))
    if isinstance(op, Linear):
        return fc_macs(weight.type.shape, op.type.shape, nonzeros)[1]
    return conv_macs(weight.type.shape, op.type.shape, op.groups, nonzeros)[1]


def _check_kernel_type(op: Op, kernel: Kernel) -> None:
    """A generator that computes another shape than the op's type is a compile error, not a
    library whose later layers read the wrong memory."""
    _require_type(op, tuple(int(d) for d in kernel.out_shape), str(kernel.out_dtype))


def _check_lowered_type(op: Op, var: relax.Var) -> None:
    """The same check for what Relax infers (the ops it lowers itself: reshape, concat, ...)."""
    ty = var.ty
    shape = getattr(ty, "shape", None)
    values = getattr(shape, "values", None)
    if values is None:
        raise UserError(f"layer %{op.result} ({op.name}): lowered to a value of unknown shape ({ty})")
    _require_type(op, tuple(int(d) for d in values), str(ty.dtype))


def _require_type(op: Op, shape: tuple[int, ...], dtype: str) -> None:
    if (shape, dtype) != (op.type.shape, str(op.type.np_dtype)):
        raise UserError(f"layer %{op.result} ({op.name}): its kernel computes {dtype}{list(shape)} "
                        f"but the op's type is {op.type}")


# --- one lowering per op -------------------------------------------------------------------------


def _tunable(op: Conv2d | Linear, ctx: _Ctx) -> relax.Expr:
    """conv2d, linear: a generated kernel with knobs (the op's, or the generator's defaults); a
    conv's fused residual is its second input."""
    tuned = layer_kernel(op, ctx.module, ctx.target, in_place=_residual_dies_here(op, ctx))
    return _call_kernel(ctx, op, tuned.kernel, _kernel_inputs(op, ctx), tuned.format, tuned)


def _residual_dies_here(op: Conv2d | Linear, ctx: _Ctx) -> bool:
    """Whether a conv's fused residual is a tensor of its own that nothing reads after it, so its kernel
    may write over it (one stream of lines fewer: 64 -> 256 and 128 -> 512 1x1s with a residual at
    56x56 and 28x28 1.06-1.07x on znver4, out of the caches; ResNet-50 1.007x, ResNet-18 with pattern
    3x3s 1.02x): not the conv's input, not a model input (the caller's) or output, not a view
    (reshape) or viewed, and every reader at or before this op."""
    residual = getattr(op, "residual", None)
    if not residual or not residual.startswith("%") or residual == op.input:
        return False
    name = residual[1:]
    if name in ctx.module.outputs or name not in ctx.producers:  # a model input has no producer
        return False
    views = (Reshape, Flatten)
    users = ctx.users.get(residual, [])
    here = ctx.producers[op.result][0]
    return (not isinstance(ctx.producers[name][1], views) and not any(isinstance(u, views) for u in users)
            and all(ctx.producers[u.result][0] <= here for u in users))


def _kernel_inputs(op: Conv2d | Linear, ctx: _Ctx) -> list[relax.Expr]:
    """A conv's or linear's input, then a conv's fused residual."""
    residual = getattr(op, "residual", None)
    return [ctx.ref(op.input)] + ([ctx.ref(residual)] if residual else [])


def _fused_conv_pool(op: Op, ctx: _Ctx) -> tuple[MaxPool, relax.Expr] | None:
    """On CPUs, a pattern conv whose one user is a 2x2 stride-2 max pool: one kernel computing the
    pool's value (the conv's plane never reaches memory: VGG-16's 64x224 layer and its pool
    1.17-1.49x against the two kernels on znver3), or None (then each op gets its own kernel)."""
    pool = _sole_pool_user(op, ctx) if ctx.target.kind == "cpu" and isinstance(op, Conv2d) else None
    tuned = pooled_conv_kernel(op, ctx.module, ctx.target) if pool else None
    if tuned is None:
        return None
    call = _call_kernel(ctx, op, tuned.kernel, _kernel_inputs(op, ctx), tuned.format, tuned, computes=pool)
    ctx.plans.append(LayerPlan(pool.result, pool.name, f"fused into %{op.result}", "", 0, 0))
    return pool, call


def _sole_pool_user(op: Conv2d, ctx: _Ctx) -> MaxPool | None:
    users = ctx.users.get(f"%{op.result}", [])
    if len(users) != 1 or op.result in ctx.module.outputs or not isinstance(users[0], MaxPool):
        return None
    pool = users[0]
    plain = (pool.kernel, pool.strides, pool.pads, pool.dilations) == ((2, 2), (2, 2), (0, 0, 0, 0), (1, 1))
    return pool if plain and not pool.ceil_mode else None


def _pool(op: MaxPool | AvgPool | GlobalAvgPool, ctx: _Ctx) -> relax.Expr:
    kernel = pool_kernel(op, ctx.module, ctx.target)
    return _call_kernel(ctx, op, kernel, [ctx.ref(op.input)], "dense")


def _matmul(op: MatMul, ctx: _Ctx) -> relax.Expr:
    a, b = (ctx.module.types[r].shape for r in (op.a, op.b))
    return _call_kernel(ctx, op, matmul_kernel(a, b, target=ctx.target), [ctx.ref(op.a), ctx.ref(op.b)], "dense")


def _activate(op: Activate, ctx: _Ctx) -> relax.Expr:
    kernel = activation_kernel(op.type.shape, op.fn, target=ctx.target)
    return _call_kernel(ctx, op, kernel, [ctx.ref(op.input)], "dense")


def _batch_norm(op: BatchNorm, ctx: _Ctx) -> relax.Expr:
    # y = x * s + t with s = scale / sqrt(var + eps), t = bias - mean * s, per channel (axis 1)
    get = lambda ref: ctx.module.weight(ref).data.astype(np.float64)  # noqa: E731
    scale = get(op.scale) / np.sqrt(get(op.var) + op.epsilon)
    shift = get(op.bias) - get(op.mean) * scale
    shape = (1, -1) + (1,) * (op.type.rank - 2)
    s, t = (relax.const(v.reshape(shape).astype(np.float32)) for v in (scale, shift))
    return relax.op.add(relax.op.multiply(ctx.ref(op.input), s), t)


LOWERINGS: dict[type[Op], Callable[[Op, _Ctx], relax.Expr]] = {
    Conv2d: _tunable,
    Linear: _tunable,
    MaxPool: _pool,
    AvgPool: _pool,
    GlobalAvgPool: _pool,
    Activate: _activate,
    BatchNorm: _batch_norm,
    MatMul: _matmul,
    Add: lambda op, ctx: relax.op.add(ctx.ref(op.a), ctx.ref(op.b)),
    Mul: lambda op, ctx: relax.op.multiply(ctx.ref(op.a), ctx.ref(op.b)),
    Flatten: lambda op, ctx: relax.op.reshape(ctx.ref(op.input), op.type.shape),
    Reshape: lambda op, ctx: relax.op.reshape(ctx.ref(op.input), op.type.shape),
    Concat: lambda op, ctx: relax.op.concat([ctx.ref(r) for r in op.inputs], axis=op.axis),
    Softmax: lambda op, ctx: relax.op.nn.softmax(ctx.ref(op.input), axis=op.axis),
}
