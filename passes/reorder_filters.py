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
from sparsec.ir.module import Module
from sparsec.ir.ops import Conv2d
from sparsec.ir.types import Pattern
from sparsec.passes.base import Pass, register
from sparsec.passes.rewrite import replace_op, sole_user_weight


def pattern_convs(module: Module) -> list[Conv2d]:
    """The conv2d ops whose weight has the pattern layout."""
    return [op for op in module.ops
            if isinstance(op, Conv2d) and isinstance(module.weight(op.weight).layout, Pattern)]


@register
@dataclass(frozen=True)
class ReorderFilters(Pass):
    """Store each pattern conv's filters sorted by work and pattern mix; record filter_order."""

    name = "reorder-filters"

    def apply(self, module: Module) -> Module:
        for op in pattern_convs(module):
            module = self._reorder(module, op)
        return module

    def _reorder(self, module: Module, op: Conv2d) -> Module:
        weight = sole_user_weight(module, op, op.weight)
        patterns = np.array(weight.layout.patterns, dtype=np.uint8) if _same_size(weight.layout) else None
        perm = default_filter_order(weight.data, patterns).astype(np.int64)
        previous = np.array(op.filter_order if op.filter_order else range(len(perm)))
        new_weight = dataclasses.replace(
            weight, data=weight.data[perm], parts={k: v[perm] for k, v in weight.parts.items()})
        new_op = dataclasses.replace(op, weight=f"@{new_weight.name}",
                                     filter_order=tuple(int(f) for f in previous[perm]), filter_groups=None)
        return replace_op(module, op, new_op, (new_weight,))


def _same_size(layout: Pattern) -> bool:
    return len({len(p) for p in layout.patterns}) == 1
