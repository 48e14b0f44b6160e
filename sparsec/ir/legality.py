"""Which weight layouts each op can read: the one legality table of the IR.

A sparse layout is a promise that a kernel generator exists for that (op, layout) pair under the
op's geometry. The verifier rejects a module that breaks a rule, analyze-sparsity only considers
layouts whose rule holds, and the lowering checks the rule again before it picks a generator, so
a hand-written IR that breaks it is a located error, never a wrong kernel.

Each rule returns None when the pair is legal, else what is wrong (a phrase for an error message).
"""

from __future__ import annotations

from collections.abc import Callable

from sparsec.ir.ops import Conv2d, Linear, Op
from sparsec.ir.types import CSR, FKW, Dense, Layout, Masked, Pattern, TensorType

Rule = Callable[[Op, TensorType], "str | None"]


def _f32(weight: TensorType) -> str | None:
    return None if weight.dtype == "f32" else f"needs an f32 weight, got {weight.dtype}"


def _pattern_conv(op: Conv2d, weight: TensorType) -> str | None:
    # before: one loop nest per pattern over 3x3 taps, every filter reading every input channel
    if weight.rank != 4 or weight.shape[2:] != (3, 3):
        return f"needs a 3x3 conv weight, got {weight}"
    if op.groups != 1:
        return f"needs groups = 1, got groups = {op.groups}"
    return _f32(weight)


def _csr_conv(op: Conv2d, weight: TensorType) -> str | None:
    # the CSR conv kernel is a sparse matrix times the (strided) input pixels: no window, no padding
    if weight.rank != 4 or weight.shape[2:] != (1, 1):
        return f"needs a 1x1 conv weight, got {weight}"
    if op.groups != 1:
        return f"needs groups = 1, got groups = {op.groups}"
    if any(op.pads):
        return f"needs pads = 0, got pads = {list(op.pads)}"
    return _f32(weight)


def _csr_linear(op: Linear, weight: TensorType) -> str | None:
    return _f32(weight)


# (op class, sparse layout class) -> rule. A pair missing here is illegal: e.g. a pattern weight
# read by a linear, or a CSR weight used as a bias.
LEGALITY: dict[tuple[type[Op], type[Layout]], Rule] = {
    (Conv2d, Pattern): _pattern_conv,
    (Conv2d, FKW): _pattern_conv,
    (Conv2d, CSR): _csr_conv,
    (Linear, CSR): _csr_linear,
}

# Read densely by every op and operand: a masked weight's data already holds zeros outside its mask.
DENSE_STORAGE = (Dense, Masked)

# Operands that may hold a sparse weight: the `weight` field of these ops. Every other weight
# operand (biases, batch-norm statistics, add terms) is read densely.
SPARSE_OPERANDS: dict[type[Op], str] = {Conv2d: "weight", Linear: "weight"}


def layout_problem(op: Op, field_name: str, weight: TensorType, layout: Layout) -> str | None:
    """Why `op` cannot read a weight of this layout through `field_name`, or None if it can."""
    if isinstance(layout, DENSE_STORAGE):
        return None
    if SPARSE_OPERANDS.get(type(op)) != field_name:
        return f"a {layout.kind} weight cannot be the {field_name} operand of {op.name} (only dense)"
    rule = LEGALITY.get((type(op), type(layout)))
    if rule is None:
        return f"{op.name} cannot read a {layout.kind} weight"
    problem = rule(op, weight)
    return None if problem is None else f"{op.name} with a {layout.kind} weight {problem}"


def legal_layouts(op: Op, weight: TensorType) -> set[str]:
    """The kinds of layout `op` could read its sparse operand in (what analyze-sparsity may pick)."""
    sparse = {layout_cls.kind for (op_cls, layout_cls), rule in LEGALITY.items()
              if op_cls is type(op) and rule(op, weight) is None}
    return {cls.kind for cls in DENSE_STORAGE} | sparse
