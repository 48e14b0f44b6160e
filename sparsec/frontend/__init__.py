"""The ONNX frontend: an ONNX model plus pruning masks -> a verified sparsec IR module."""

from sparsec.frontend.loader import load_onnx
from sparsec.frontend.onnx_import import ImportResult, import_onnx

__all__ = ["ImportResult", "import_onnx", "load_onnx"]
