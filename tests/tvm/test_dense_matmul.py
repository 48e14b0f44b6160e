"""Dense FC (constant weight) and activation x activation matmul kernels against NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.ir.activation import Activation
from sparsec.lower.kernels.common import run_kernel
from sparsec.lower.kernels.dense_matmul import MatmulKnobs, dense_kernel, matmul_kernel
from sparsec.lower.target import host

pytestmark = pytest.mark.tvm
HOST = host()  # this machine, as it is (AVX-512 here: 16 lanes, 32 registers)

ACTIVATIONS = {
    "relu": (Activation("relu"), lambda y: np.maximum(y, 0)),
    "clip": (Activation("clip", (-1.0, 1.0)), lambda y: np.clip(y, -1, 1)),
    "leaky_relu": (Activation("leaky_relu", (0.2,)), lambda y: np.where(y > 0, y, 0.2 * y)),
    "sigmoid": (Activation("sigmoid"), lambda y: 1 / (1 + np.exp(-y))),
    "hard_sigmoid": (Activation("hard_sigmoid", (0.2, 0.5)), lambda y: np.clip(0.2 * y + 0.5, 0, 1)),
    "hard_swish": (Activation("hard_swish"), lambda y: y * np.clip(y / 6 + 0.5, 0, 1)),
}


def check_dense(m, k, n, bias=False, act=None, knobs=MatmulKnobs(), target=HOST):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    activation, act_ref = ACTIVATIONS[act] if act else (None, lambda y: y)
    got = run_kernel(dense_kernel(w, (m, k), b, activation, knobs, target=target), target, x)
    want = act_ref(x.astype(np.float64) @ w.T.astype(np.float64) + (b if bias else 0))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("m, k, n", [(1, 37, 19), (1, 256, 64), (2, 33, 10), (7, 50, 45), (12, 16, 24), (8, 9, 3)])
def test_dense_shapes(m, k, n):
    check_dense(m, k, n)


def test_dense_k_blocks():
    check_dense(5, 96, 40, knobs=MatmulKnobs(k_block=32))


@pytest.mark.parametrize("act", [None, *ACTIVATIONS])
def test_dense_bias_and_activation(act):
    check_dense(3, 20, 30, bias=True, act=act)
    check_dense(1, 20, 30, bias=True, act=act)


def test_dense_interface():
    kernel = dense_kernel(np.ones((10, 4), np.float32), (2, 4), bias=np.zeros(10, np.float32), target=HOST)
    assert kernel.out_shape == (2, 10)
    assert len(kernel.func.params) == 4  # x, packed weight, bias, out


@pytest.mark.parametrize("a_shape, b_shape", [
    ((5, 7), (7, 9)),
    ((16, 24), (24, 32)),
    ((1, 8), (8, 13)),
    ((3, 6, 5), (3, 5, 11)),
    ((2, 3, 4, 5), (5, 6)),
    ((4, 5), (2, 5, 3)),
    ((2, 1, 4, 5), (3, 5, 7)),
])
def test_matmul(a_shape, b_shape):
    rng = np.random.default_rng(2)
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    kernel = matmul_kernel(a_shape, b_shape, target=HOST)
    got = run_kernel(kernel, HOST, a, b)
    np.testing.assert_allclose(got, np.matmul(a.astype(np.float64), b), rtol=1e-4, atol=1e-4)


def test_matmul_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        matmul_kernel((3, 4), (5, 6), target=HOST)
