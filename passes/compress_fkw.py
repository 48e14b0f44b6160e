"""compress-fkw: store each pattern conv weight in FKW form (PatDNN's filter-kernel-weight arrays).

The arrays (`sparsec.fkw.FKW`: filter_order, offset, stride, index, weight) become the weight's
parts, each index array in the smallest integer type that fits. The dense view stays as the
weight's data so the reference interpreter and the verifier read every layout the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

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
    return build_fkw(original, np.array(weight.layout.patterns, np.uint8), order)


def fkw_from_parts(weight: Weight) -> FKWArrays:
    """The FKW arrays stored as parts of an `fkw`-layout weight (what the lowering reads)."""
    patterns = np.array(weight.layout.patterns, np.uint8)
    return FKWArrays(patterns=patterns, **{k: weight.parts[k] for k in
                                           ("filter_order", "offset", "stride", "index", "weight")})


@register
@dataclass(frozen=True)
class CompressFkw(Pass):
    """Turn pattern-layout conv weights into FKW storage (layout `fkw` with its arrays as parts)."""

    name = "compress-fkw"

    def apply(self, module: Module) -> Module:
        return rewrite_pattern_convs(module, _compress)


def _compress(op: Conv2d, weight: Weight) -> tuple[Conv2d, Weight]:
    arrays = fkw_of(op, weight)
    parts = {"mask": weight.mask, "filter_order": arrays.filter_order, "offset": arrays.offset,
             "stride": arrays.stride, "index": arrays.index, "weight": arrays.weight}
    return op, dataclasses.replace(weight, layout=FKW(weight.layout.patterns), parts=parts)
