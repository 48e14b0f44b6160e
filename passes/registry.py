"""Every pass, imported once so that each registers itself under its name."""

from sparsec.passes.fold_batchnorm import FoldBatchnorm
from sparsec.passes.fuse_epilogue import FuseEpilogue

__all__ = ["FoldBatchnorm", "FuseEpilogue"]
