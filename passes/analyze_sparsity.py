"""analyze-sparsity: give every masked conv2d / linear weight the layout its kernel should use.

The choice is a cost model you can read: estimated time = the MACs the format's kernel does
(the kept weights; for patterns every tap of a kept kernel's pattern, so a kernel keeping a
subset of a pattern counts whole; for the dense kernel of a 3x3 stride-1 conv on a CPU target,
Winograd's estimated work, `dense_work`) / relative throughput of the format's kernel. The
throughputs are useful GFLOP/s per core of each kernel over the dense kernel's; the compiler sets
them from its target (`Target.throughputs`: `make calibrate` on the machine, else shipped
defaults). The defaults here were measured on znver3 (AVX2): pattern conv 53-68 vs dense ~88
(about 0.7), CSR 1x1 conv ~49 vs ~85 (about 0.55). A format that does not apply to the op is
not considered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sparsec.fkw import cover_patterns
from sparsec.ir.legality import legal_layouts
from sparsec.ir.module import Module, Weight
from sparsec.ir.ops import Conv2d, Linear, Op
from sparsec.ir.types import CSR, Dense, Layout, Masked, Pattern
from sparsec.passes.base import Pass, not_an_option, register
from sparsec.passes.rewrite import replace_op, sole_user_weight
from sparsec.sparsity import kernel_tap_sets

# Fraction of the dense kernel's MAC throughput each format's kernel reaches, for the pass run
# without a target (`sparsec opt`): round figures from znver3's early kernels (2026-11). Every
# compile passes its target's own (`Target.throughputs`: shipped per ISA, or `sparsec calibrate`'s).
RELATIVE_THROUGHPUT = {"dense": 1.0, "pattern": 0.7, "csr": 0.55}


def choose_layout(op: Op, weight: Weight, max_patterns: int, throughput: dict[str, float] = RELATIVE_THROUGHPUT,
                  dense_work: float = 1.0, pattern_work: float = 1.0) -> Layout:
    """The cheapest format for this weight under the cost model, among those the legality table
    allows for this op (a 1x1 conv with padding never gets CSR, a grouped conv never patterns).
    `dense_work`: the dense kernel's work per multiply-add of the direct conv (Winograd's < 1);
    `pattern_work`: the pattern kernel's per kept multiply-add (its padded tiles: >= 1)."""
    legal = legal_layouts(op, weight.type)
    mask = weight.mask
    kept, total = int(mask.sum()), mask.size
    costs: dict[str, float] = {"dense": total * dense_work / throughput["dense"]}
    patterns = [tuple(int(t) for t in p) for p in cover_patterns(mask)] if Pattern.kind in legal else []
    if patterns and len(patterns) <= max_patterns:
        # the kernel multiplies every tap of a kept kernel's pattern, zeros in a subset included
        stored = int(np.count_nonzero(kernel_tap_sets(mask))) * len(patterns[0])
        costs["pattern"] = stored * pattern_work / throughput["pattern"]
    if CSR.kind in legal:
        costs["csr"] = kept / throughput["csr"]
    best = min(costs, key=lambda k: (costs[k], k != "dense"))  # a tie goes to dense
    if best == "pattern":
        return Pattern(tuple(patterns))
    return CSR() if best == "csr" else Dense()


@register
@dataclass(frozen=True)
class AnalyzeSparsity(Pass):
    """Pick pattern / CSR / dense for each masked conv2d and linear weight by the cost model."""

    name = "analyze-sparsity"
    max_patterns: int = 16  # more patterns = more loop nests; past this, code size wins
    pattern_throughput: float = RELATIVE_THROUGHPUT["pattern"]  # of dense; the target's when compiling
    csr_throughput: float = RELATIVE_THROUGHPUT["csr"]
    # (conv op, input shape, weight shape) -> the target's dense kernel's work per direct
    # multiply-add (Winograd's estimate for a dense 3x3 conv); set by the driver, None = direct
    dense_work: Callable[[Conv2d, tuple[int, ...], tuple[int, ...]], float] | None = not_an_option()
    # (conv op, input shape) -> the target's pattern kernel's work per kept multiply-add (its tiles'
    # padding); set by the driver, None = 1
    pattern_work: Callable[[Conv2d, tuple[int, ...]], float] | None = not_an_option()

    def apply(self, module: Module) -> Module:
        for op in module.ops:
            if isinstance(op, (Conv2d, Linear)) and isinstance(module.weight(op.weight).layout, Masked):
                module = self._assign(module, op)
        return module

    def _assign(self, module: Module, op: Conv2d | Linear) -> Module:
        weight = sole_user_weight(module, op, op.weight)
        throughput = {"dense": 1.0, "pattern": self.pattern_throughput, "csr": self.csr_throughput}
        work, padded = 1.0, 1.0
        if self.dense_work is not None and isinstance(op, Conv2d):
            work = self.dense_work(op, module.types[op.input].shape, weight.type.shape)
        if self.pattern_work is not None and isinstance(op, Conv2d) and weight.type.shape[2:] == (3, 3):
            padded = self.pattern_work(op, module.types[op.input].shape)
        layout = choose_layout(op, weight, self.max_patterns, throughput, work, padded)
        parts = {"mask": weight.mask} if "mask" in layout.parts else {}
        new_weight = dataclasses.replace(weight, layout=layout, parts=parts)
        return replace_op(module, op, dataclasses.replace(op, weight=f"@{new_weight.name}"), (new_weight,))
