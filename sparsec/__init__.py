"""sparsec: compiles pattern-pruned CNNs (ONNX + pruning masks) into fast TVM code."""

__version__ = "0.1.0"
