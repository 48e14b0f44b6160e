"""reorder-kernels: fix the order of the kernels inside each filter of a pattern conv.

Kernels are stored grouped by pattern, in the order of the layout's pattern list (the FKW
`stride` array marks each pattern's run), so the generated code runs one branch-free loop per
pattern. This pass orders the patterns by how many kernels use them, most first, so the longest
loops come first and ids are stable across runs; inside a run kernels go by input channel.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from sparsec.fkw import kernel_patterns
from sparsec.ir.module import Module, Weight
from sparsec.ir.ops import Conv2d
from sparsec.passes.base import Pass, register
from sparsec.passes.rewrite import rewrite_pattern_convs
from sparsec.sparsity import bits_of


@register
@dataclass(frozen=True)
class ReorderKernels(Pass):
    """Order each pattern weight's patterns (= kernel runs inside a filter) by frequency."""

    name = "reorder-kernels"

    def apply(self, module: Module) -> Module:
        return rewrite_pattern_convs(module, _rank_patterns)


def _rank_patterns(op: Conv2d, weight: Weight) -> tuple[Conv2d, Weight]:
    # most frequent first (a kernel keeping a subset of a pattern counts for the pattern FKW
    # stores it under); ties by the taps' bit mask, so ids are stable across runs
    patterns = weight.layout.patterns
    _, ids = kernel_patterns(weight.mask, np.array(patterns, np.uint8))
    counts = dict(zip(patterns, np.bincount(ids[ids >= 0], minlength=len(patterns)).tolist()))
    ranked = sorted(patterns, key=lambda taps: (-counts[taps], bits_of(taps)))
    layout = dataclasses.replace(weight.layout, patterns=tuple(ranked))
    return op, dataclasses.replace(weight, layout=layout)
