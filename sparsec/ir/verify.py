"""The verifier: module-level rules here, each op's type rule in its class (`Op.infer`),
each layout's rule in `LAYOUT_RULES`, which layouts each op may read in `sparsec.ir.legality`."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from sparsec.errors import SourceLoc, VerifyError
from sparsec.ir.legality import layout_problem
from sparsec.ir.module import Module, Weight
from sparsec.ir.ops import BatchNorm, Conv2d, Op, OpError
from sparsec.ir.types import FKW, Pattern
from sparsec.sparsity import kernel_tap_sets


def verify(module: Module) -> Module:
    """Check every rule; raise `VerifyError` at the first broken one. Returns the module."""
    for weight in module.weights:
        _verify_weight(weight)
    types: dict = {}
    _declare(types, [(f"@{w.name}", w.type, w.loc) for w in module.weights])
    _declare(types, [(f"%{p.name}", p.type, p.loc) for p in module.inputs])
    for op in module.ops:
        _verify_op(op, types)
        _verify_weight_layouts(op, module)
        _declare(types, [(f"%{op.result}", op.type, op.loc)])
    _verify_outputs(module, types)
    return module


def _declare(types: dict, entries: list[tuple[str, object, SourceLoc | None]]) -> None:
    for ref, type_, loc in entries:
        if ref in types:
            raise VerifyError(loc, f"{ref} is defined twice")
        _check_size(ref, type_, loc)
        types[ref] = type_


def _verify_outputs(module: Module, types: dict) -> None:
    if not module.outputs:
        raise VerifyError(module.loc, f"module @{module.name} returns nothing; return at least one value")
    for name in module.outputs:
        if f"%{name}" not in types:
            raise VerifyError(module.loc, f"output %{name} is not defined in module @{module.name}")


# The kernels index tensors with 32-bit integers; an empty axis leaves nothing to compute.
MAX_ELEMENTS = 2**31 - 1


def _check_size(ref: str, type_, loc: SourceLoc | None) -> None:
    if 0 in type_.shape:
        raise VerifyError(loc, f"{ref} is {type_}, which has no elements; every dimension must be at least 1")
    if math.prod(type_.shape) > MAX_ELEMENTS:
        raise VerifyError(loc, f"{ref} is {type_}, {math.prod(type_.shape)} elements; sparsec builds tensors "
                               f"of at most {MAX_ELEMENTS} elements")


def _verify_op(op: Op, types: dict) -> None:
    for field_name in op.operand_fields():
        refs = getattr(op, field_name)
        for ref in refs if isinstance(refs, tuple) else (refs,):
            _check_operand(op, field_name, ref, types)
    try:
        inferred = op.infer(types)
    except OpError as err:
        raise VerifyError(op.loc, f"{op.name} %{op.result}: {err}") from None
    if inferred != op.type:
        raise VerifyError(op.loc, f"{op.name} %{op.result} is declared {op.type} but computes {inferred}")


def _check_operand(op: Op, field_name: str, ref: str | None, types: dict) -> None:
    if ref is None:
        return
    if field_name in op.weight_operands and not ref.startswith("@"):
        raise VerifyError(op.loc, f"{op.name} %{op.result}: operand {field_name} must be a weight (@name), got {ref}")
    if field_name in op.value_operands and not ref.startswith("%"):
        raise VerifyError(op.loc, f"{op.name} %{op.result}: operand {field_name} must be a value (%name) computed "
                                  f"at run time, got {ref}")
    if ref not in types:
        raise VerifyError(op.loc, f"{op.name} %{op.result}: {ref} is not defined before its use")


def _verify_weight_layouts(op: Op, module: Module) -> None:
    """Every weight operand's layout is one the op can read (the legality table)."""
    for field_name in op.weight_operands:
        ref = getattr(op, field_name)
        if ref is None:
            continue
        weight = module.weight(ref)
        problem = layout_problem(op, field_name, weight.type, weight.layout)
        if problem:
            raise VerifyError(op.loc, f"{op.name} %{op.result}: weight {ref}: {problem}")
    if isinstance(op, Conv2d) and op.filter_groups is not None:
        _check_filter_groups(op, module.weight(op.weight))
    if isinstance(op, BatchNorm):
        _check_variance(op, module.weight(op.var))


def _check_variance(op: BatchNorm, var: Weight) -> None:
    # x / sqrt(var + eps) is NaN or Inf otherwise, in the reference, in onnxruntime and folded into weights
    bad = np.flatnonzero(~(var.data.astype(np.float64) + op.epsilon > 0))
    if bad.size:
        raise VerifyError(op.loc, f"{op.name} %{op.result}: variance {op.var} + epsilon must be > 0; "
                          f"channel {int(bad[0])} has {float(var.data.reshape(-1)[bad[0]]):g}")


def _check_filter_groups(op: Conv2d, weight: Weight) -> None:
    # The pattern kernel walks stored filters in equal groups (the last may be short).
    where = f"{op.name} %{op.result}"
    if not isinstance(weight.layout, Pattern):
        raise VerifyError(op.loc, f"{where}: filter_groups needs a pattern or fkw weight, "
                          f"{op.weight} is {weight.layout.kind}")
    width, groups = op.filter_groups[0], op.filter_groups
    if any(g != width for g in groups[:-1]) or groups[-1] > width:
        raise VerifyError(op.loc, f"{where}: filter_groups must be equal sizes (the last may be smaller), "
                          f"got {list(groups)}")


# --- weights -------------------------------------------------------------------------------------


def _verify_weight(weight: Weight) -> None:
    where = f"weight @{weight.name}"
    if weight.data.shape != weight.type.shape or weight.data.dtype != weight.type.np_dtype:
        raise VerifyError(weight.loc, f"{where} is declared {weight.type} but its data is "
                          f"{weight.data.dtype}{list(weight.data.shape)}")
    if weight.data.dtype.kind == "f" and not np.isfinite(weight.data).all():
        raise VerifyError(weight.loc, f"{where} holds NaN or Inf values")
    missing = [p for p in weight.layout.parts if p not in weight.parts]
    extra = [p for p in weight.parts if p not in weight.layout.parts]
    if missing or extra:
        raise VerifyError(weight.loc, f"{where} with layout {weight.layout.kind} needs parts "
                          f"{list(weight.layout.parts)}, has {sorted(weight.parts)}")
    if "mask" in weight.parts:
        _check_mask(weight, where)
    rule = LAYOUT_RULES.get(type(weight.layout))
    if rule is not None:
        problem = rule(weight)
        if problem:
            raise VerifyError(weight.loc, f"{where}: {problem}")


def _check_mask(weight: Weight, where: str) -> None:
    mask = weight.parts["mask"]
    if mask.shape != weight.data.shape or mask.dtype != np.bool_:
        raise VerifyError(weight.loc, f"{where}: its mask must be bool{list(weight.data.shape)}, "
                          f"got {mask.dtype}{list(mask.shape)}")
    if np.any(weight.data[~mask] != 0):
        raise VerifyError(weight.loc, f"{where} is nonzero outside its mask")


def _pattern_rule(weight: Weight) -> str | None:
    if weight.type.rank != 4 or weight.type.shape[2:] != (3, 3):
        return f"pattern layout needs a 3x3 conv weight, got {weight.type}"
    sizes = sorted({len(p) for p in weight.layout.patterns})
    if len(sizes) > 1:  # FKW stores the same number of taps for every kept kernel
        return f"pattern layout needs patterns of one size, got sizes {sizes}"
    patterns = [sum(1 << t for t in p) for p in weight.layout.patterns]
    tap_sets = kernel_tap_sets(weight.parts["mask"])
    # a kernel keeps a pattern's taps or a subset of them (zero weights fill the rest)
    fits = {int(s) for s in np.unique(tap_sets) if any(int(s) & p == int(s) for p in patterns)}
    bad = ~np.isin(tap_sets, sorted(fits))
    if bad.any():
        o, i = (int(v) for v in np.argwhere(bad)[0])
        return f"kernel [{o}, {i}] keeps taps that fit none of its {len(patterns)} patterns"
    return None


LAYOUT_RULES: dict[type, Callable[[Weight], str | None]] = {
    Pattern: _pattern_rule,
    FKW: _pattern_rule,
}
