"""Pooling kernels against onnxruntime (the ONNX semantics of ceil_mode / count_include_pad)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from sparsec.lower.kernels.common import run_kernel
from sparsec.lower.kernels.pool import avg_pool_kernel, global_avg_pool_kernel, max_pool_kernel
from sparsec.lower.target import host

pytestmark = pytest.mark.tvm
HOST = host()  # this machine, as it is (AVX-512 here: 16 lanes, 32 registers)


def onnx_pool(op, x, **attrs):
    """Run one ONNX pooling node on onnxruntime."""
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


CASES = [  # in_shape, kernel, strides, pads, ceil_mode
    ((1, 3, 8, 8), (2, 2), (2, 2), (0, 0, 0, 0), False),
    ((2, 4, 11, 9), (3, 3), (2, 2), (1, 1, 1, 1), False),
    ((1, 2, 10, 10), (3, 3), (2, 2), (0, 0, 0, 0), True),
    ((1, 2, 7, 12), (3, 2), (1, 3), (1, 0, 0, 1), True),
    ((1, 5, 13, 13), (3, 3), (1, 1), (1, 1, 1, 1), False),
]


@pytest.mark.parametrize("in_shape, kernel, strides, pads, ceil_mode", CASES)
def test_max_pool(in_shape, kernel, strides, pads, ceil_mode):
    x = np.random.default_rng(0).standard_normal(in_shape).astype(np.float32)
    got = run_kernel(max_pool_kernel(in_shape, kernel, strides, pads, ceil_mode), HOST, x)
    want = onnx_pool("MaxPool", x, kernel_shape=kernel, strides=strides, pads=pads, ceil_mode=int(ceil_mode))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("in_shape, kernel, strides, pads, dilations, ceil_mode", [
    ((1, 3, 12, 12), (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), False),
    ((1, 2, 11, 13), (2, 3), (2, 1), (1, 0, 1, 2), (3, 2), True),
])
def test_dilated_max_pool(in_shape, kernel, strides, pads, dilations, ceil_mode):
    x = np.random.default_rng(3).standard_normal(in_shape).astype(np.float32)
    kernel_ = max_pool_kernel(in_shape, kernel, strides, pads, ceil_mode, dilations)
    got = run_kernel(kernel_, HOST, x)
    want = onnx_pool("MaxPool", x, kernel_shape=kernel, strides=strides, pads=pads,
                     dilations=dilations, ceil_mode=int(ceil_mode))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("include_pad", [False, True])
@pytest.mark.parametrize("in_shape, kernel, strides, pads, ceil_mode", CASES)
def test_avg_pool(in_shape, kernel, strides, pads, ceil_mode, include_pad):
    x = np.random.default_rng(1).standard_normal(in_shape).astype(np.float32)
    kernel_ = avg_pool_kernel(in_shape, kernel, strides, pads, ceil_mode, include_pad)
    got = run_kernel(kernel_, HOST, x)
    want = onnx_pool("AveragePool", x, kernel_shape=kernel, strides=strides, pads=pads,
                     ceil_mode=int(ceil_mode), count_include_pad=int(include_pad))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("in_shape", [(1, 16, 7, 7), (2, 3, 4, 4), (1, 5, 1, 1), (1, 4, 14, 14)])
def test_global_avg_pool(in_shape):
    x = np.random.default_rng(2).standard_normal(in_shape).astype(np.float32)
    got = run_kernel(global_avg_pool_kernel(in_shape, target=HOST), HOST, x)
    np.testing.assert_allclose(got, x.mean(axis=(2, 3), keepdims=True), rtol=1e-4, atol=1e-5)


def test_invalid_pool_is_rejected():
    with pytest.raises(ValueError):
        max_pool_kernel((1, 1, 2, 2), (3, 3), (1, 1))


def test_windows_of_padding_only():
    # pads as large as the kernel: edge windows read only padding (max: lowest float32, mean: 0)
    x = np.ones((1, 1, 2, 2), np.float32)
    got = run_kernel(max_pool_kernel(x.shape, (2, 2), (2, 2), (2, 2, 2, 2)), HOST, x)
    lowest = np.finfo(np.float32).min
    np.testing.assert_array_equal(got[0, 0], [[lowest] * 3, [lowest, 1, lowest], [lowest] * 3])
    got = run_kernel(avg_pool_kernel(x.shape, (2, 2), (2, 2), (2, 2, 2, 2)), HOST, x)
    np.testing.assert_array_equal(got[0, 0], [[0] * 3, [0, 1, 0], [0] * 3])
