"""eliminate-redundant-loads: choose, per pattern conv, how many filters share each input load.

Kernel level (always on in the generated code): taps of one pattern that read the same input
row reuse one loaded row vector. Filter level (decided here): consecutive stored filters form
groups that walk the union of their (pattern, channel) kernels together, so each input vector is
loaded once for the whole group (register tiling over filters). A filter lacking a kernel of the
union multiplies a zero, so the pass takes the widest group whose wasted MACs stay under
`max_waste` -- which is why it runs after reorder-filters has put alike filters side by side.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from sparsec.ir.module import Module
from sparsec.passes.base import Pass, register
from sparsec.passes.rewrite import pattern_convs, replace_op
from sparsec.sparsity import kernel_tap_sets


def group_waste(mask: np.ndarray, width: int) -> float:
    """MACs the grouped kernel runs / MACs the filters really need (1.0 = no waste).

    A group runs each distinct (input channel, tap set) kernel of its filters once for every
    filter of the group; `mask` rows are the stored filters in order.
    """
    tap_sets = kernel_tap_sets(mask)
    needed = max(int((tap_sets != 0).sum()), 1)
    run = 0
    for start in range(0, tap_sets.shape[0], width):
        group = np.sort(tap_sets[start:start + width], axis=0)
        distinct = (group != 0) & np.vstack([np.ones((1, group.shape[1]), bool), group[1:] != group[:-1]])
        run += int(distinct.sum()) * width
    return run / needed


def uniform_groups(filters: int, width: int) -> tuple[int, ...]:
    """Sizes of consecutive groups of `width` filters, the last one possibly short."""
    return tuple(min(width, filters - start) for start in range(0, filters, width))


@register
@dataclass(frozen=True)
class EliminateRedundantLoads(Pass):
    """Group filters of each pattern conv so they share input loads (sets filter_groups)."""

    name = "eliminate-redundant-loads"
    max_filters: int = 4      # the widest group tried (accumulator registers bound it)
    max_waste: float = 1.25   # accept a group width while grouped MACs / needed MACs <= this

    def apply(self, module: Module) -> Module:
        for op in pattern_convs(module):
            weight = module.weight(op.weight)
            width = self.best_width(weight.mask)
            groups = uniform_groups(weight.type.shape[0], width)
            module = replace_op(module, op, dataclasses.replace(op, filter_groups=groups))
        return module

    def best_width(self, mask: np.ndarray) -> int:
        width, best = 2, 1
        while width <= self.max_filters:
            if group_waste(mask, width) <= self.max_waste:
                best = width
            width *= 2
        return best
