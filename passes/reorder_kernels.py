"""reorder-kernels: fix the order of the kernels inside each filter of a pattern conv.

Kernels are stored grouped by pattern, in the order of the layout's pattern list (the FKW
`stride` array marks each pattern's run), so the generated code runs one branch-free loop per
pattern. This pass orders the patterns by how many kernels use them, most first, so the longest
loops come first and ids are stable across runs; inside a run kernels go by input channel.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sparsec.ir.module import Module
from sparsec.passes.analyze_sparsity import tap_sets
from sparsec.passes.base import Pass, register
from sparsec.passes.reorder_filters import pattern_convs
from sparsec.passes.rewrite import replace_op, sole_user_weight


@register
@dataclass(frozen=True)
class ReorderKernels(Pass):
    """Order each pattern weight's patterns (= kernel runs inside a filter) by frequency."""

    name = "reorder-kernels"

    def apply(self, module: Module) -> Module:
        for op in pattern_convs(module):
            weight = sole_user_weight(module, op, op.weight)
            ranked = tap_sets(weight.mask)  # most frequent first
            unused = [p for p in weight.layout.patterns if p not in ranked]
            layout = dataclasses.replace(weight.layout, patterns=tuple(ranked + unused))
            new_weight = dataclasses.replace(weight, layout=layout)
            module = replace_op(module, op, dataclasses.replace(op, weight=f"@{new_weight.name}"), (new_weight,))
        return module
