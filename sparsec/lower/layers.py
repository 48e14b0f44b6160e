"""Which kernel generator each layer gets, and with which knobs.

The layout says what the weight is (`sparsec.tuning.task.kernel_call` reads it and asks the
legality table again); this table calls the generator that exploits it: pattern / fkw ->
pattern-sparse conv, csr -> sparse 1x1 conv or sparse FC, dense -> dense kernels. The op's
`knobs` (from a tuning log) reach the generator; without them it uses its defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from sparsec.errors import UserError
from sparsec.fkw import FKW
from sparsec.ir.knobs import Knobs
from sparsec.ir.module import Module
from sparsec.ir.ops import AvgPool, Conv2d, GlobalAvgPool, Linear, MaxPool
from sparsec.lower.kernels import pool, register_plan
from sparsec.lower.kernels.common import Kernel
from sparsec.lower.kernels.csr import CsrKnobs, csr_conv1x1_kernel, csr_dense_kernel
from sparsec.lower.kernels.dense_conv import DenseConvKnobs, dense_conv_kernel
from sparsec.lower.kernels.dense_matmul import MatmulKnobs, dense_kernel
from sparsec.lower.kernels.pattern_conv import PatternConvKnobs, pattern_conv_kernel
from sparsec.target import Target
from sparsec.tuning.task import FORMATS, KernelCall, conv2d_call, kernel_call, linear_call, structural_key

KNOB_CLASSES = {"pattern_conv": PatternConvKnobs, "csr_conv1x1": CsrKnobs, "csr_dense": CsrKnobs,
                "dense_conv": DenseConvKnobs, "dense": MatmulKnobs}


def generator_knobs(call: KernelCall, knobs: Mapping | None, target: Target):
    """The generator's knobs dataclass: its defaults (pattern conv: the filters of the IR's filter
    groups that `target`'s register plan shares each load between), overridden by `knobs`; a name
    the generator does not know is a ValueError."""
    cls = KNOB_CLASSES[call.generator]
    base = {}
    if call.generator == "pattern_conv":
        base["filters_per_group"] = register_plan.pattern_group_filters(target, call.params["filters_per_group"])
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(knobs or {}) - names)
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a knob of {call.generator} (its knobs: {', '.join(sorted(names))})")
    return cls(**{**base, **dict(knobs or {})})


def _fkw(call: KernelCall) -> FKW:
    return FKW(**call.structure, weight=call.values["weight"])


def _common(call: KernelCall, target: Target) -> dict:
    return dict(bias=call.values.get("bias"), activation=call.activation, target=target)


def _conv_common(call: KernelCall, target: Target) -> dict:
    """A conv generator's epilogue: bias, activation and, after a fused shortcut add, a residual input."""
    return dict(_common(call, target), residual=call.residual)


def _geometry(call: KernelCall) -> dict:
    return {k: tuple(call.params[k]) for k in ("strides", "pads", "dilations")}


def _pattern_conv(call: KernelCall, knobs, target: Target, in_place: bool = False) -> Kernel:
    return pattern_conv_kernel(_fkw(call), tuple(call.params["in_shape"]), **_geometry(call),
                               **_conv_common(call, target), knobs=knobs, in_place=in_place)


def _csr_conv1x1(call: KernelCall, knobs, target: Target) -> Kernel:
    return csr_conv1x1_kernel(call.values["weight"], tuple(call.params["in_shape"]),
                              strides=tuple(call.params["strides"]), knobs=knobs, **_conv_common(call, target))


def _dense_conv(call: KernelCall, knobs, target: Target, in_place: bool = False) -> Kernel:
    return dense_conv_kernel(call.values["weight"], tuple(call.params["in_shape"]), **_geometry(call),
                             groups=call.params["groups"], knobs=knobs, in_place=in_place,
                             **_conv_common(call, target))


def _csr_dense(call: KernelCall, knobs, target: Target) -> Kernel:
    return csr_dense_kernel(call.values["weight"], tuple(call.params["in_shape"]), knobs=knobs, **_common(call, target))


def _dense(call: KernelCall, knobs, target: Target) -> Kernel:
    return dense_kernel(call.values["weight"], tuple(call.params["in_shape"]), knobs=knobs, **_common(call, target))


GENERATORS: dict[str, Callable[[KernelCall, object, Target], Kernel]] = {
    "pattern_conv": _pattern_conv,
    "csr_conv1x1": _csr_conv1x1,
    "dense_conv": _dense_conv,
    "csr_dense": _csr_dense,
    "dense": _dense,
}


# generators that can write a conv's result over its residual (`Kernel.in_place`; the dense conv for its 1x1s)
IN_PLACE: dict[str, Callable[..., Kernel]] = {"pattern_conv": _pattern_conv, "dense_conv": _dense_conv}


def build_kernel(call: KernelCall, knobs: Mapping | None, target: Target) -> Kernel:
    """The generator's kernel for `call` with `knobs` (None: its defaults)."""
    return GENERATORS[call.generator](call, generator_knobs(call, knobs, target), target)


def _layer_kernel(op: Conv2d | Linear, call: KernelCall, target: Target,
                  in_place: bool = False) -> tuple[Kernel, str]:
    try:
        knobs = generator_knobs(call, op.knobs, target)
    except ValueError as err:
        raise UserError(f"layer %{op.result} ({op.name}): knobs {dict(op.knobs)}: {err}") from None
    if in_place and call.generator in IN_PLACE:
        return IN_PLACE[call.generator](call, knobs, target, in_place=True), FORMATS[call.generator]
    return GENERATORS[call.generator](call, knobs, target), FORMATS[call.generator]


@dataclasses.dataclass(frozen=True)
class LayerKernel:
    """A conv2d's or linear's kernel, the format it reads, its task key and the knobs it used."""

    kernel: Kernel
    format: str
    task: str
    knobs: Knobs


def layer_kernel(op: Conv2d | Linear, module: Module, target: Target, in_place: bool = False) -> LayerKernel:
    """The kernel of a conv2d or linear with what the manifest records about its tuning; `in_place`:
    a conv's residual is dead after it, so its kernel may write over it (where the kernel can:
    `Kernel.in_place`)."""
    from sparsec.lower.spaces import knobs_used, space_for

    call = kernel_call(op, module)
    kernel, fmt = _layer_kernel(op, call, target, in_place)
    used = knobs_used(call, op.knobs, target, space_for(call, target).names)
    return LayerKernel(kernel, fmt, structural_key(call, target), used)


def pooled_conv_kernel(op: Conv2d, module: Module, target: Target) -> LayerKernel | None:
    """The conv's pattern kernel with a 2x2 stride-2 max pool fused after its activation (its
    output the pooled plane), or None where the conv does not lower to the pattern kernel or its
    tile has no row pairs: odd rows (7-row tiles of 28- and 14-wide planes: 8 would pad them
    4/28 and 2/14 more than the pool kernel they save costs). Where the conv's rows are even its
    pooled knobs are its own, so the tuning task and the manifest's knobs stay the conv's. Where
    the register plan takes the IR's filter groups in pairs with odd rows (AVX-512's 2 x 7), the
    whole groups' plan (4 filters x 4 rows) when its rows pair (`_whole_groups`)."""
    from sparsec.lower.spaces import knobs_used, space_for

    call = kernel_call(op, module)
    if call.generator != "pattern_conv":
        return None
    names = space_for(call, target).names
    try:
        knobs = op.knobs
        used = knobs_used(call, knobs, target, names)
        if used["rows_per_step"] % 2 and (whole := _whole_groups(call, knobs)) is not None:
            knobs, used = whole, knobs_used(call, whole, target, names)
        if used["rows_per_step"] % 2:
            return None
        kernel = pattern_conv_kernel(_fkw(call), tuple(call.params["in_shape"]), **_geometry(call),
                                     **_conv_common(call, target), pool=True,
                                     knobs=generator_knobs(call, knobs, target))
    except ValueError:
        return None  # knobs or a plane the pooled epilogue cannot take: the two kernels instead
    return LayerKernel(kernel, FORMATS[call.generator], structural_key(call, target), used)


def _whole_groups(call: KernelCall, knobs: Mapping | None) -> dict | None:
    """`knobs` with the IR's whole filter groups sharing each load, where the register plan chose
    fewer filters and no knob chose them. VGG-16 with M1's masks in kernel groups of 4 on znver4
    (AVX-512, whole model, interleaved, both orders): pairs everywhere lost the 5 fused pools; pairs
    with the pooled convs' whole groups ran 1.03x / 1.09x faster than that and 1.05x / 1.11x faster
    than 4 filters x 4 rows everywhere."""
    group = call.params["filters_per_group"]
    if group == 1 or "filters_per_group" in (knobs or {}):
        return None
    return {**dict(knobs or {}), "filters_per_group": group}


def conv2d_kernel(op: Conv2d, module: Module, target: Target) -> tuple[Kernel, str]:
    """The kernel for a conv2d and the name of the format it reads."""
    return _layer_kernel(op, conv2d_call(op, module), target)


def linear_kernel(op: Linear, module: Module, target: Target) -> tuple[Kernel, str]:
    return _layer_kernel(op, linear_call(op, module), target)


def pool_kernel(op: MaxPool | AvgPool | GlobalAvgPool, module: Module, target: Target) -> Kernel:
    in_shape = module.types[op.input].shape
    if isinstance(op, GlobalAvgPool):
        return pool.global_avg_pool_kernel(in_shape, target=target)
    if isinstance(op, MaxPool):
        return pool.max_pool_kernel(in_shape, kernel=op.kernel, strides=op.strides, pads=op.pads,
                                    ceil_mode=op.ceil_mode, dilations=op.dilations)
    return pool.avg_pool_kernel(in_shape, kernel=op.kernel, strides=op.strides, pads=op.pads,
                                ceil_mode=op.ceil_mode, count_include_pad=op.count_include_pad)

