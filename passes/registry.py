"""Every pass, imported once so that each registers itself under its name."""

from sparsec.passes.analyze_sparsity import AnalyzeSparsity
from sparsec.passes.compress_fkw import CompressFkw
from sparsec.passes.eliminate_redundant_loads import EliminateRedundantLoads
from sparsec.passes.fold_batchnorm import FoldBatchnorm
from sparsec.passes.fuse_epilogue import FuseEpilogue
from sparsec.passes.reorder_filters import ReorderFilters
from sparsec.passes.reorder_kernels import ReorderKernels

__all__ = ["AnalyzeSparsity", "CompressFkw", "EliminateRedundantLoads", "FoldBatchnorm", "FuseEpilogue",
           "ReorderFilters", "ReorderKernels"]
