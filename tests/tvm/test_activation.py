"""The elementwise activation kernel (the same TIR code conv / linear epilogues fuse)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.ir.activation import Activation
from sparsec.lower.kernels.activation import activation_kernel
from sparsec.lower.kernels.common import run_kernel
from sparsec.lower.kernels.dense_matmul import dense_kernel
from sparsec.lower.target import host
from sparsec.reference import apply_activation

pytestmark = pytest.mark.tvm

HOST = host()

# ONNX Clip without a min or a max input is unbounded on that side: the frontend writes +-inf.
UNBOUNDED_CLIPS = [(-np.inf, np.inf), (0.0, np.inf), (-np.inf, 0.5)]


@pytest.mark.parametrize("bounds", UNBOUNDED_CLIPS)
def test_unbounded_clip_stays_float32(bounds):
    # found by sparsec fuzz: clip(-inf, inf) made a float64 constant, so the kernel computed in float64
    act = Activation("clip", bounds)
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 5)).astype(np.float32)
    kernel = activation_kernel(x.shape, act, target=HOST)
    got = run_kernel(kernel, HOST, x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, apply_activation(x, act))


@pytest.mark.parametrize("bounds", UNBOUNDED_CLIPS)
def test_unbounded_clip_in_an_epilogue(bounds):
    act = Activation("clip", bounds)
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((1, 7)).astype(np.float32), rng.standard_normal((5, 7)).astype(np.float32)
    got = run_kernel(dense_kernel(w, x.shape, activation=act, target=HOST), HOST, x)
    np.testing.assert_allclose(got, apply_activation(x @ w.T, act), rtol=1e-5, atol=1e-6)
