"""The differential fuzzer: random small CNNs + masks, compiled and compared with onnxruntime."""
