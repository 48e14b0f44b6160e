"""compress-fkw: commit each pattern conv weight to FKW storage (PatDNN's filter-kernel-weight arrays).

The layout becomes `fkw`; the arrays themselves (`sparsec.fkw.FKW`: filter_order, offset, stride,
index, weight, each index array in the smallest integer type that fits) are derived by `fkw_of`
from the weight's data, mask and pattern order and the op's filter_order whenever the lowering
needs them. The dense view stays the weight's only data, so a pass that runs later (fold-batchnorm
scaling the data, reorder-filters permuting it) cannot leave stale arrays behind.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from sparsec.errors import UserError
from sparsec.fkw import FKW as FKWArrays
from sparsec.fkw import build_fkw
from sparsec.ir.module import Module, Weight
from sparsec.ir.ops import Conv2d
from sparsec.ir.types import FKW
from sparsec.passes.base import Pass, register
from sparsec.passes.rewrite import rewrite_pattern_convs


def fkw_of(op: Conv2d, weight: Weight) -> FKWArrays:
    """The FKW arrays of a conv's pattern weight; `weight.data` rows are in stored order."""
    filters = weight.type.shape[0]
    order = np.array(op.filter_order if op.filter_order else range(filters), np.int64)
    original = np.empty_like(weight.data)
    original[order] = weight.data
    try:
        return build_fkw(original, np.array(weight.layout.patterns, np.uint8), order)
    except ValueError as err:  # the verifier's pattern rule makes this unreachable for verified IR
        raise UserError(f"conv2d %{op.result}: weight @{weight.name} has no FKW form: {err}") from None


@register
@dataclass(frozen=True)
class CompressFkw(Pass):
    """Commit pattern-layout conv weights to FKW storage (layout `fkw`; arrays derived when lowering)."""

    name = "compress-fkw"

    def apply(self, module: Module) -> Module:
        return rewrite_pattern_convs(module, _compress)


def _compress(op: Conv2d, weight: Weight) -> tuple[Conv2d, Weight]:
    fkw_of(op, weight)  # fails here, naming the layer, if a kernel fits none of the patterns
    return op, dataclasses.replace(weight, layout=FKW(weight.layout.patterns))
