"""Dense convolution kernels against a NumPy reference: strides, pads, dilations, groups, epilogues."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.ir.activation import Activation
from sparsec.lower.kernels.common import run_kernel
from sparsec.lower.kernels.dense_conv import DenseConvKnobs, dense_conv_kernel
from sparsec.lower.target import host

pytestmark = pytest.mark.tvm
HOST = host()  # this machine, as it is (AVX-512 here: 16 lanes, 32 registers)

ACTIVATIONS = {
    "relu": (Activation("relu"), lambda y: np.maximum(y, 0)),
    "clip": (Activation("clip", (0.0, 6.0)), lambda y: np.clip(y, 0, 6)),
    "leaky_relu": (Activation("leaky_relu", (0.1,)), lambda y: np.where(y > 0, y, 0.1 * y)),
    "sigmoid": (Activation("sigmoid"), lambda y: 1 / (1 + np.exp(-y))),
    "hard_sigmoid": (Activation("hard_sigmoid", (0.2, 0.5)), lambda y: np.clip(0.2 * y + 0.5, 0, 1)),
    "hard_swish": (Activation("hard_swish"), lambda y: y * np.clip(y / 6 + 0.5, 0, 1)),
}


def reference_conv(x, w, strides, pads, dilations, groups):
    """Direct NumPy convolution, one tap at a time (ONNX Conv semantics)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = strides, dilations
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[2] - (kh - 1) * dh - 1) // sh + 1
    ow = (xp.shape[3] - (kw - 1) * dw - 1) // sw + 1
    og = o // groups
    out = np.zeros((n, o, oh, ow), np.float64)
    for g in range(groups):
        xs, ws = xp[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og]
        for a in range(kh):
            for b in range(kw):
                patch = xs[:, :, a * dh:a * dh + sh * (oh - 1) + 1:sh, b * dw:b * dw + sw * (ow - 1) + 1:sw]
                out[:, g * og:(g + 1) * og] += np.einsum("oc,nchw->nohw", ws[:, :, a, b], patch)
    return out.astype(np.float32)


def check(in_shape, w_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1,
          bias=False, act=None, knobs=DenseConvKnobs(), target=HOST, residual=False):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(in_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32) if bias else None
    activation, act_ref = ACTIVATIONS[act] if act else (None, lambda y: y)
    kernel = dense_conv_kernel(w, in_shape, strides=strides, pads=pads, dilations=dilations, groups=groups,
                               bias=b, activation=activation, residual=residual, knobs=knobs, target=target)
    want = reference_conv(x, w, strides, pads, dilations, groups)
    r = (2 * rng.standard_normal(want.shape)).astype(np.float32) if residual else 0
    got = run_kernel(kernel, target, x, *([r] if residual else []))
    want = act_ref(want + (b.reshape(1, -1, 1, 1) if bias else 0) + r)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k, s, p", [(3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0), (7, 2, 3), (5, 1, 2)])
def test_regular_conv_strides_and_pads(k, s, p):
    check((1, 5, 13, 11), (10, 5, k, k), strides=(s, s), pads=(p, p, p, p))


def test_asymmetric_pads_strides_dilations():
    check((2, 4, 9, 12), (6, 4, 3, 2), strides=(2, 1), pads=(0, 2, 1, 0), dilations=(2, 3))


def test_row_aligned_blocks_with_batch():
    # 28 x 28 1x1: blocks of whole rows, so the epilogue runs inside the parallel loop
    check((2, 16, 28, 28), (20, 16, 1, 1), bias=True, act="relu")
    check((1, 6, 14, 14), (12, 6, 3, 3), pads=(1, 1, 1, 1), bias=True)  # pitch 16: junk columns


def test_filters_not_a_multiple_of_the_tile_and_odd_width():
    check((1, 3, 7, 9), (7, 3, 3, 3), pads=(1, 1, 1, 1))
    check((1, 8, 5, 5), (64, 8, 1, 1), knobs=DenseConvKnobs(channel_block=2))


@pytest.mark.parametrize("s", [1, 2])
def test_depthwise(s):
    check((1, 12, 10, 9), (12, 1, 3, 3), strides=(s, s), pads=(1, 1, 1, 1), groups=12)


def test_depthwise_dilated_asymmetric():
    check((1, 4, 11, 10), (4, 1, 3, 3), strides=(2, 1), pads=(2, 0, 1, 2), dilations=(2, 2), groups=4)


def test_depthwise_multiplier():
    check((1, 3, 8, 8), (6, 1, 3, 3), pads=(1, 1, 1, 1), groups=3)


@pytest.mark.parametrize("groups", [2, 4])
def test_grouped(groups):
    check((1, 8, 9, 9), (12, 8 // groups, 3, 3), pads=(1, 1, 1, 1), groups=groups)


@pytest.mark.parametrize("act", [None, *ACTIVATIONS])
def test_bias_and_activation(act):
    check((1, 4, 6, 6), (6, 4, 3, 3), pads=(1, 1, 1, 1), bias=True, act=act)


def test_depthwise_bias_and_activation():
    check((1, 6, 7, 7), (6, 1, 3, 3), strides=(2, 2), pads=(1, 1, 1, 1), groups=6, bias=True, act="clip")


@pytest.mark.parametrize("case", [
    ((1, 8, 14, 14), (16, 8, 3, 3), (1, 1), (1, 1, 1, 1), 1),  # epilogue after each block of whole rows
    ((2, 8, 9, 13), (12, 8, 3, 3), (1, 1), (1, 1, 1, 1), 1),  # odd width, batch: a separate epilogue pass
    ((1, 8, 15, 15), (10, 8, 1, 1), (2, 2), (0, 0, 0, 0), 1),  # a ResNet downsample 1x1, stride 2
    ((1, 6, 11, 11), (6, 6, 3, 3), (2, 2), (1, 1, 1, 1), 1),
    ((1, 8, 9, 9), (12, 4, 3, 3), (1, 1), (1, 1, 1, 1), 2),  # grouped
    ((1, 6, 10, 13), (6, 1, 3, 3), (1, 1), (1, 1, 1, 1), 6),  # depthwise
    ((2, 6, 11, 11), (6, 1, 3, 3), (2, 2), (1, 1, 1, 1), 6),  # depthwise, stride 2
], ids=["rows", "odd", "1x1-s2", "s2", "grouped", "depthwise", "depthwise-s2"])
def test_residual_epilogue(case):
    """act(conv + bias + residual): the residual is added before the activation on every path."""
    in_shape, w_shape, strides, pads, groups = case
    check(in_shape, w_shape, strides=strides, pads=pads, groups=groups, bias=True, act="relu", residual=True)


def test_residual_is_the_second_parameter():
    kernel = dense_conv_kernel(np.ones((6, 4, 3, 3), np.float32), (1, 4, 8, 8), pads=(1, 1, 1, 1), residual=True,
                               target=HOST)
    assert [str(p) for p in kernel.func.params] == ["x", "residual", "w", "out"]  # data, residual, constants, out


def test_kernel_interface():
    w = np.ones((6, 4, 3, 3), np.float32)
    kernel = dense_conv_kernel(w, (1, 4, 8, 8), pads=(1, 1, 1, 1), bias=np.zeros(6, np.float32), target=HOST)
    assert kernel.out_shape == (1, 6, 8, 8) and kernel.out_dtype == "float32"
    assert len(kernel.func.params) == 4  # x, packed weight, bias, out
    assert [a.dtype for a in kernel.constants] == [np.float32, np.float32]
