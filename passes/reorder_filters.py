"""reorder-filters: permute the filters of each pattern conv so alike filters sit together.

Filters are sorted by kept-kernel count, then pattern mix (`sparsec.fkw.default_filter_order`):
neighbours then carry the same work (balanced threads) and run the same loops (shared code, and
groups that share input loads waste little). The weight rows are stored permuted and the op's
`filter_order` records where each stored filter's output goes, so outputs keep their order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from sparsec.fkw import default_filter_order
from sparsec.ir.module import Module, Weight
from sparsec.ir.ops import Conv2d
from sparsec.ir.types import Pattern
from sparsec.passes.base import Pass, register
from sparsec.passes.rewrite import rewrite_pattern_convs


@register
@dataclass(frozen=True)
class ReorderFilters(Pass):
    """Store each pattern conv's filters sorted by work and pattern mix; record filter_order."""

    name = "reorder-filters"

    def apply(self, module: Module) -> Module:
        return rewrite_pattern_convs(module, _reorder)


def _reorder(op: Conv2d, weight: Weight) -> tuple[Conv2d, Weight]:
    patterns = np.array(weight.layout.patterns, dtype=np.uint8) if _same_size(weight.layout) else None
    perm = default_filter_order(weight.data, patterns).astype(np.int64)
    previous = np.array(op.filter_order if op.filter_order else range(len(perm)))
    parts = {k: v[perm] for k, v in weight.parts.items()}
    new_weight = dataclasses.replace(weight, data=weight.data[perm], parts=parts)
    new_op = dataclasses.replace(op, filter_order=tuple(int(f) for f in previous[perm]), filter_groups=None)
    return new_op, new_weight


def _same_size(layout: Pattern) -> bool:
    return len({len(p) for p in layout.patterns}) == 1
