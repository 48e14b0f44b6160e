"""The TVM adapter layer: the only package of sparsec that imports tvm."""
