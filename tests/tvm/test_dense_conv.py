"""Dense convolution kernels against a NumPy reference: strides, pads, dilations, groups, epilogues,
and the Winograd F(m x m, 3x3) algorithm for 3x3 stride-1 convs."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest

from sparsec.driver import import_model, optimize
from sparsec.ir.activation import Activation
from sparsec.ir.knobs import Knobs
from sparsec.lower.kernels.common import run_kernel
from sparsec.lower.kernels.dense_conv import DenseConvKnobs, dense_conv_kernel, resolve_knobs
from sparsec.lower.kernels.pointwise_conv import pixel_tile
from sparsec.lower.kernels.winograd_plan import TRANSFORMS
from sparsec.lower.target import host, resolve_target

pytestmark = pytest.mark.tvm
HOST = host()  # this machine, as it is (AVX2 or AVX-512, as the session's machine has)
# plans measured on AVX-512 (16 lanes, 32 registers), checked without compiling on any host
AVX512 = resolve_target(spec='{"isa": "avx512", "tvm": {"mcpu": "znver5"}}')
AVX2 = resolve_target(spec='{"isa": "avx2", "tvm": {"mcpu": "haswell"}}')

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
          bias=False, act=None, knobs=DenseConvKnobs(), target=HOST, residual=False, in_place=False):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(in_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32) if bias else None
    activation, act_ref = ACTIVATIONS[act] if act else (None, lambda y: y)
    kernel = dense_conv_kernel(w, in_shape, strides=strides, pads=pads, dilations=dilations, groups=groups,
                               bias=b, activation=activation, residual=residual, in_place=in_place, knobs=knobs,
                               target=target)
    assert kernel.in_place == (1 if in_place else None)
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


def test_unpadded_1x1_runs_as_a_pixel_gemm_with_its_epilogue_in_registers():
    """Unpadded 1x1 convs go to `pointwise_pixels` (weights packed [O/ob, C, ob]): the plane's
    last tile partial, a plane smaller than one tile, filters not a multiple of the tile, more
    filter groups than filter tiles, a last block of fewer tiles, batch, bias + residual +
    activation, strides (a gathered panel); padded 1x1 convs keep the direct GEMM (weights
    [O/ob, C, 1, 1, ob])."""
    def packed_weight_rank(in_shape, w_shape, **kw):
        w = np.zeros(w_shape, np.float32)
        return dense_conv_kernel(w, in_shape, target=HOST, knobs=DenseConvKnobs(pointwise=1), **kw).constants[0].ndim

    assert packed_weight_rank((1, 8, 14, 14), (16, 8, 1, 1)) == 3
    assert packed_weight_rank((1, 8, 14, 14), (16, 8, 1, 1), strides=(2, 2)) == 3
    assert packed_weight_rank((1, 8, 14, 14), (16, 8, 1, 1), pads=(1, 0, 0, 0)) == 5
    check((1, 5, 9, 7), (6, 5, 1, 1), pads=(1, 0, 2, 1))
    for tile in ((11, 2), (8, 3)):  # 196 pixels: 12 whole tiles of 16 and a quarter; 8 tiles of 24 and a sixth
        check((2, 24, 14, 14), (30, 24, 1, 1), bias=True, act="relu", residual=True,
              knobs=DenseConvKnobs(out_block=tile[0], vectors=tile[1], tiles_per_block=3, out_groups=4, pointwise=1))
    check((1, 5, 3, 3), (7, 5, 1, 1), bias=True, act="clip", residual=True,
          knobs=DenseConvKnobs(out_block=4, vectors=2, pointwise=1))  # 9 pixels, one partial tile
    # strided: 15x15 -> 8x8 (a ResNet downsample's odd side), 2 x 3 strides -> 7 x 4, batch 2
    check((1, 6, 15, 15), (10, 6, 1, 1), strides=(2, 2), bias=True, act="relu", residual=True,
          knobs=DenseConvKnobs(out_block=4, vectors=2, pointwise=1))
    check((2, 6, 13, 11), (9, 6, 1, 1), strides=(2, 3), knobs=DenseConvKnobs(out_block=3, vectors=3, pointwise=1))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_pixel_gemm_ranges_one_per_thread(threads):
    """The pixel GEMM cuts the plane's pixel tiles into one range per thread of the target, each in
    blocks: ranges of unequal length, blocks left empty past the plane, batch, strides (169 pixels
    in tiles of 2 vectors: 6 or 11 tiles; 3 threads with blocks of 2 leave the last range short)."""
    knobs = DenseConvKnobs(out_block=4, vectors=2, tiles_per_block=2, out_groups=2, pointwise=1)
    target = host(threads)
    check((2, 6, 13, 13), (10, 6, 1, 1), bias=True, act="relu", residual=True, knobs=knobs, target=target)
    check((1, 6, 15, 15), (10, 6, 1, 1), strides=(2, 2), residual=True, knobs=knobs, target=target)


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


# --- Winograd F(m x m, 3x3) ------------------------------------------------------------------


@pytest.mark.parametrize("m", sorted(TRANSFORMS))
@pytest.mark.parametrize("case", [
    ((1, 16, 13, 11), (10, 16, 3, 3), (1, 1, 1, 1)),  # partial tiles at both edges, filters past the register tile
    ((2, 8, 9, 30), (33, 8, 3, 3), (0, 2, 1, 0)),  # batch (tiles of both images in one GEMM), asymmetric pads
    ((1, 4, 6, 66), (5, 4, 3, 3), (1, 1, 1, 1)),  # a row of 17 / 33 tiles: a full vector of tiles plus a tail
    ((1, 3, 3, 3), (4, 3, 3, 3), (1, 1, 1, 1)),  # a plane smaller than one tile
], ids=["edges", "batch-pads", "long-row", "tiny"])
def test_winograd_numerics(m, case):
    in_shape, w_shape, pads = case
    check(in_shape, w_shape, pads=pads, bias=True, act="relu", knobs=DenseConvKnobs(winograd=m))


@pytest.mark.parametrize("act", ["clip", "hard_swish"])
def test_winograd_residual_and_activation(act):
    check((1, 16, 10, 10), (16, 16, 3, 3), pads=(1, 1, 1, 1), bias=True, act=act, residual=True,
          knobs=DenseConvKnobs(winograd=4))


def test_winograd_without_bias_and_with_a_narrow_register_tile():
    check((1, 8, 12, 12), (9, 8, 3, 3), pads=(1, 1, 1, 1), knobs=DenseConvKnobs(winograd=2, out_block=3, vectors=1))


def test_winograd_f4_error_on_a_wide_layer():
    """F(4x4) scales terms up to 8x: on 128 channels its error (1.2e-5 of the output range; direct
    float32 ~1e-7) stays well inside the 1e-4 budget."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 128, 16, 16)).astype(np.float32)
    w = (rng.standard_normal((32, 128, 3, 3)) / np.sqrt(128 * 9)).astype(np.float32)
    got = run_kernel(dense_conv_kernel(w, x.shape, pads=(1, 1, 1, 1), knobs=DenseConvKnobs(winograd=4), target=HOST),
                     HOST, x)
    want = reference_conv(x.astype(np.float64), w.astype(np.float64), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    assert np.abs(got - want).max() / np.abs(want).max() < 3e-5



def test_winograd_is_the_default_where_it_pays():
    w = np.ones((32, 32, 3, 3), np.float32)
    resolved = resolve_knobs(w.shape, (1, 32, 28, 28), pads=(1, 1, 1, 1), target=AVX512)
    assert resolved.winograd == 4
    kernel = dense_conv_kernel(w, (1, 32, 28, 28), pads=(1, 1, 1, 1), target=AVX512)
    assert kernel.constants[0].shape[0] == 36  # U: one slice per element of the 6x6 transformed tile
    direct = dense_conv_kernel(w, (1, 32, 28, 28), pads=(1, 1, 1, 1), knobs=DenseConvKnobs(winograd=1), target=AVX512)
    tile = resolve_knobs(w.shape, (1, 32, 28, 28), pads=(1, 1, 1, 1), knobs=DenseConvKnobs(winograd=1), target=AVX512)
    assert direct.constants[0].shape[1:] == (32, 3, 3, tile.out_block)  # the direct conv's packing
    assert resolve_knobs(w.shape, (1, 32, 28, 28), strides=(2, 2), pads=(1, 1, 1, 1), target=AVX512).winograd == 1
    # a target whose Winograd kernel runs far below its estimate keeps the direct conv
    slow = dataclasses.replace(AVX512, throughputs=dataclasses.replace(AVX512.throughputs, winograd=0.2))
    assert resolve_knobs(w.shape, (1, 32, 28, 28), pads=(1, 1, 1, 1), target=slow).winograd == 1


def test_winograd_knob_errors():
    with pytest.raises(ValueError, match=r"knob winograd must be 0 \(auto\), 1 \(direct\) or an output tile "
                                         r"\[2, 4\], got 3"):
        DenseConvKnobs(winograd=3)
    with pytest.raises(ValueError, match=r"knob winograd=4 needs a 3x3 stride-1 undilated ungrouped conv, got kernel "
                                         r"\(3, 3\), strides \(2, 2\)"):
        dense_conv_kernel(np.ones((4, 4, 3, 3), np.float32), (1, 4, 8, 8), strides=(2, 2), pads=(1, 1, 1, 1),
                          knobs=DenseConvKnobs(winograd=4), target=HOST)


def test_winograd_in_the_tuning_space():
    """3x3 stride-1 convs offer direct, F(2x2) and F(4x4); Winograd points keep the direct conv's
    unused block knobs at one value (no trials of identical kernels); other convs stay direct."""
    from sparsec.lower.spaces import space_for
    from sparsec.models import conv_layer
    from sparsec.prune import weight_layers
    from sparsec.tuning.task import extract_tasks

    model = conv_layer((1, 32, 28, 28), 32)
    masks = {layer.weight: np.ones(layer.shape, bool) for layer in weight_layers(model)}
    module = optimize(import_model(model, masks))
    (task,) = [t for t in extract_tasks(module, AVX512) if t.generator == "dense_conv"]
    space = space_for(task.call, AVX512)
    knobs = {k.name: k.values for k in space.knobs}
    assert knobs["winograd"] == (1, 2, 4) and space.default["winograd"] == 4 and knobs["pointwise"] == (1,)
    changed = lambda **kv: Knobs.of({**space.default, **kv})  # noqa: E731
    assert space.problem(changed(channel_block=16)) == \
        "Winograd ignores the direct conv's blocks (one point of them is enough)"
    assert space.problem(changed(channel_block=16, winograd=1)) is None
    strided = dataclasses.replace(task.call, params={**task.call.params, "strides": [2, 2]})
    assert dict((k.name, k.values) for k in space_for(strided, AVX512).knobs)["winograd"] == (1,)


# --- 1x1 convs vectorised across filters -------------------------------------------------------


@pytest.mark.parametrize("case", [
    ((1, 24, 7, 7), (40, 24, 1, 1), (1, 1)),  # 49 pixels in tiles of 7, filters past a 32-filter tile
    ((2, 16, 9, 11), (32, 16, 1, 1), (2, 2)),  # batch, stride 2, odd plane
    ((1, 8, 5, 6), (5, 8, 1, 1), (1, 1)),  # 30 pixels, fewer filters than one vector
], ids=["7x7", "batch-s2", "narrow"])
def test_pointwise_numerics(case):
    in_shape, w_shape, strides = case
    check(in_shape, w_shape, strides=strides, bias=True, act="relu", residual=True, knobs=DenseConvKnobs(pointwise=2))


def test_pointwise_partial_last_tile():
    """13 pixels per tile do not divide 30: the last tile is partial (its missing pixels are not stored)."""
    check((1, 8, 5, 6), (20, 8, 1, 1), knobs=DenseConvKnobs(pointwise=2, out_block=13, vectors=1))


@pytest.mark.parametrize("block", [1, 3, 16])
def test_pointwise_channel_blocks(block):
    """Sums carried between blocks of channels (3 leaves a short last block of 40), every tile per block."""
    for target in (HOST, AVX2) if HOST.isa in ("avx2", "avx512") else (HOST,):
        check((1, 40, 7, 7), (24, 40, 1, 1), bias=True, act="relu", residual=True, target=target,
              knobs=DenseConvKnobs(pointwise=2, channel_block=block))
        check((2, 40, 9, 11), (16, 40, 1, 1), strides=(2, 2), target=target,
              knobs=DenseConvKnobs(pointwise=2, channel_block=block, out_block=4))


@pytest.mark.parametrize("ranges", [2, 3, 4])
def test_pointwise_pixel_ranges(ranges):
    """The plane's pixel tiles in ranges, one a task: 30 pixels in tiles of 4 (the last partial) make
    ranges of 3, 3, 2 tiles or 2, 2, 2, 2 (12 and 6 pixels: partial vectors); 5 tiles of 7 in 4 ranges
    leave the last one empty; batch and stride 2 with channel blocks."""
    check((1, 8, 5, 6), (20, 8, 1, 1), bias=True, act="relu", residual=True,
          knobs=DenseConvKnobs(pointwise=2, out_block=4, vectors=1, ranges=ranges))
    check((1, 8, 5, 7), (40, 8, 1, 1), residual=True, knobs=DenseConvKnobs(pointwise=2, out_block=7, ranges=ranges))
    check((2, 40, 9, 11), (16, 40, 1, 1), strides=(2, 2), bias=True,
          knobs=DenseConvKnobs(pointwise=2, channel_block=16, out_block=4, ranges=ranges))


def test_pointwise_ranges_follow_the_heavier_operand():
    """The threads split the plane where its input outweighs the weights (56x56 -> 64 filters), the
    filters where the weights outweigh it (7x7 -> 2048)."""
    def ranges(c, size, filters):
        return resolve_knobs((filters, c, 1, 1), (1, c, size, size), knobs=DenseConvKnobs(pointwise=2),
                             target=AVX512).ranges

    assert (ranges(256, 56, 64), ranges(512, 28, 128), ranges(1024, 14, 256), ranges(512, 7, 2048)) == \
        (AVX512.threads, AVX512.threads, 1, 1)


@pytest.mark.parametrize("knobs", [
    DenseConvKnobs(pointwise=1, out_block=4, vectors=2, tiles_per_block=2),  # pixel GEMM: 169 pixels, a partial tile
    DenseConvKnobs(pointwise=2, out_block=4, vectors=1, ranges=3),  # across filters: ranges, a partial tile
    DenseConvKnobs(pointwise=2, out_block=7, channel_block=3),  # channel blocks
], ids=["pixels", "filters-ranges", "filters-blocks"])
def test_1x1_kernels_write_over_their_residual(knobs):
    """In place: no `out` parameter, the result written over the residual (each element read once, just
    before it is written: a partial tile's recomputed pixels must not add the residual twice); batch,
    stride 2; a kernel without a residual refuses, the other kernels ignore the request."""
    for strides, shape in (((1, 1), (2, 6, 13, 13)), ((2, 2), (1, 6, 15, 15))):
        check(shape, (10, 6, 1, 1), strides=strides, bias=True, act="relu", residual=True, in_place=True, knobs=knobs)
    with pytest.raises(ValueError, match=r"an in-place conv writes over its residual: it needs one"):
        dense_conv_kernel(np.ones((10, 6, 1, 1), np.float32), (1, 6, 5, 5), in_place=True, knobs=knobs, target=HOST)
    direct = dense_conv_kernel(np.ones((10, 6, 3, 3), np.float32), (1, 6, 5, 5), pads=(1, 1, 1, 1), residual=True,
                               in_place=True, target=HOST)
    assert direct.in_place is None and [str(p) for p in direct.func.params][-1] == "out"


@pytest.mark.parametrize("in_shape, filters, strides, knobs", [
    ((1, 6, 7, 7), 40, (1, 1), DenseConvKnobs(pointwise=2, out_block=7, vectors=2)),  # 7 of 16 lanes a tile
    ((2, 6, 13, 13), 24, (1, 1), DenseConvKnobs(pointwise=2, out_block=4, vectors=1, ranges=3)),
    ((1, 6, 16, 16), 32, (1, 1), DenseConvKnobs(pointwise=2, out_block=16, vectors=1)),  # a whole vector
    ((1, 6, 15, 15), 16, (2, 2), DenseConvKnobs(pointwise=2, out_block=8, vectors=1, ranges=2)),
], ids=["7x7", "ranges-batch", "whole-vectors", "stride-2"])
def test_across_filters_store_each_tile_transposed(in_shape, filters, strides, knobs):
    """With one channel block and no residual each pixel tile's sums leave the registers transposed (a
    filter's pixels one vector): the lanes past the tile write the next tile's pixels before that tile
    does, and a share's last tiles, which must not write past it, go pixel by pixel; filters padding the
    last tile are skipped. With a residual or channel blocks the sums wait in the share's buffer."""
    for residual in (False, True):
        check(in_shape, (filters, in_shape[1], 1, 1), strides=strides, bias=True, act="relu", residual=residual,
              knobs=knobs)
    w = np.ones((filters, in_shape[1], 1, 1), np.float32)
    script = lambda **kw: dense_conv_kernel(w, in_shape, strides=strides, target=AVX512, **kw).func.script()  # noqa: E731
    plain = script(knobs=knobs)
    assert "tail = T.alloc_buffer" in plain and plain.count("T.Shuffle") >= 64  # 16 x 4 rounds a filter vector
    for other in (script(knobs=knobs, residual=True), script(knobs=dataclasses.replace(knobs, channel_block=3))):
        assert "tail" not in other and "T.Shuffle" not in other


def test_pointwise_is_the_default_for_wide_1x1_on_avx512():
    plan = lambda c, target=AVX512, **kw: resolve_knobs((64, c, 1, 1), (1, c, 7, 7), target=target, **kw)  # noqa: E731
    assert (plan(256).pointwise, plan(256).out_block, plan(256).vectors) == (2, 7, 2)  # 7 x 7 = 49 pixels
    assert plan(64).pointwise == 1  # few channels: the per-tile epilogue weighs (measured slower)
    assert [pixel_tile(p, 28, 2, 14) for p in (49, 196, 30, 34, 10)] == [7, 14, 10, 14, 10]  # 34: not 2, a partial tile
    # AVX2 (2 x 6 pixels): 7 of 7x7 is no divisor within 6, 4 of 14x14 would leave 8 sums (fewer than 9): 6 each,
    # the last tile partial; a 35-pixel plane takes 5 (10 sums)
    avx2 = lambda size: resolve_knobs((64, 256, 1, 1), (1, 256, size, size), target=AVX2).out_block  # noqa: E731
    assert (avx2(7), avx2(14)) == (6, 6)
    assert pixel_tile(35, 12, 2, 9) == 5
    assert plan(256, pads=(1, 1, 1, 1)).pointwise == 1
    assert plan(256, target=resolve_target("arm64")).pointwise == 1  # not measured on NEON: pixels
    with pytest.raises(ValueError, match=r"knob pointwise=2 needs an unpadded ungrouped 1x1 conv, got kernel "
                                         r"\(1, 1\), pads \(1, 1, 1, 1\), groups 1"):
        plan(256, pads=(1, 1, 1, 1), knobs=DenseConvKnobs(pointwise=2))
    with pytest.raises(ValueError, match=r"knob pointwise must be 0 \(auto\), 1 \(vectors of pixels\) or 2"):
        DenseConvKnobs(pointwise=3)


def test_small_planes_take_vectors_across_filters_on_avx512():
    """Under 256 channels the pixel GEMM keeps 1x1s on AVX-512, except on planes of at most 14x14
    whose filters give every thread two tiles of 32."""
    def mode(c, o, size, target=AVX512, strides=(1, 1)):
        return resolve_knobs((o, c, 1, 1), (1, c, size, size), strides, target=target).pointwise

    threads = AVX512.threads
    enough = 2 * threads * 32
    assert [mode(96, enough, size) for size in (7, 14, 15, 28)] == [2, 2, 1, 1]  # 15x15: 225 pixels
    assert mode(96, enough, 28, strides=(2, 2)) == 2  # the output plane counts: 14x14
    assert mode(96, enough - 1, 14) == 1  # too few filter tiles to keep the threads busy
    assert mode(96, enough, 14, target=AVX2) == 1  # measured on AVX-512 only
    assert mode(96, enough, 14, target=resolve_target("arm64")) == 1


STACK_LIMIT_BYTES = 1024  # TVM 0.27 puts larger allocations on the heap, where LLVM cannot keep them in registers


def register_tile_bytes(kernel) -> list[int]:
    """The sizes of a kernel's register-tile buffers (named acc0, acc1, ... by the kernels)."""
    shapes = re.findall(r"acc\d+ = T\.alloc_buffer\(\(([\d, ]+)\)", kernel.func.script())
    return [4 * math.prod(int(d) for d in shape.split(",") if d.strip()) for shape in shapes]


@pytest.mark.parametrize("c, o, size, knobs", [
    (64, 256, 8, DenseConvKnobs(pointwise=1, out_block=8, vectors=3)),  # pixel GEMM: 8 x 48 sums, 1.5 KiB
    (256, 64, 14, DenseConvKnobs(pointwise=2, out_block=14, vectors=2)),  # across filters: 14 x 32, 1.75 KiB
])
def test_1x1_register_tiles_stay_on_the_stack(c, o, size, knobs):
    """A register tile over 1 KiB went to the heap: its sums were stored after every tile (pixel GEMM)
    and, with a prefetch in the channel loop, after every channel (across filters, 0.41-0.44x)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((o, c, 1, 1)).astype(np.float32)
    kernel = dense_conv_kernel(w, (1, c, size, size), bias=np.ones(o, np.float32), knobs=knobs, target=AVX512)
    sizes = register_tile_bytes(kernel)
    assert sizes and sum(sizes) > STACK_LIMIT_BYTES and max(sizes) <= STACK_LIMIT_BYTES


def test_across_filters_prefetch_weights_in_the_first_pixel_tile():
    """The first pixel tile reads each channel's weights from memory: it prefetches them (a line of
    32 filters at a time), the other tiles, which find them in the caches, do not."""
    w = np.random.default_rng(0).standard_normal((64, 512, 1, 1)).astype(np.float32)
    knobs = DenseConvKnobs(pointwise=2, out_block=7, vectors=2)
    script = dense_conv_kernel(w, (1, 512, 7, 7), knobs=knobs, target=AVX512).func.script()
    assert len(re.findall(r"llvm\.prefetch.*T\.address_of\(w\[", script)) == 2  # 2 lines of 16 floats, one loop
    assert len(re.findall(r"for \w+ in range\((T\.min\()?512\b", script)) == 2  # the channel loop, with and without


def test_channel_blocks_come_from_the_register_plan():
    block = lambda w, target=AVX2, **kw: resolve_knobs(w, (1, w[1], 14, 14), target=target, **kw)  # noqa: E731
    assert (block((64, 128, 1, 1)).pointwise, block((64, 128, 1, 1)).channel_block) == (1, 256)  # long: 1 tap
    assert block((64, 64, 3, 3), strides=(2, 2), pads=(1,) * 4).channel_block == 64  # 9 taps a channel
    assert block((64, 128, 1, 1), knobs=DenseConvKnobs(channel_block=32)).channel_block == 32
    # vectors across filters (256+ channels on x86): blocks of 64 on AVX2, one block on AVX-512
    assert (block((64, 512, 1, 1)).pointwise, block((64, 512, 1, 1)).channel_block) == (2, 64)
    assert (block((64, 512, 1, 1), AVX512).pointwise, block((64, 512, 1, 1), AVX512).channel_block) == (2, 0)
    assert block((64, 512, 1, 1), strides=(2, 2)).pointwise == 1  # strided on AVX2: pixel vectors
    wide = lambda size: resolve_knobs((64, 512, 1, 1), (1, 512, size, size), target=AVX2).pointwise  # noqa: E731
    assert (wide(7), wide(14), wide(28)) == (2, 2, 1)  # a 28x28 plane's sums (50 KB) leave L1
    assert block((64, 512, 1, 1), AVX512, strides=(2, 2)).pointwise == 2
    check((1, 150, 5, 5), (7, 150, 3, 3), pads=(1,) * 4, knobs=DenseConvKnobs(winograd=1, channel_block=100))
    # (blocks of 75: the largest divisor of 150 within 100)


def test_vectors_across_filters_stay_in_the_space_of_a_direct_1x1():
    from sparsec.lower.spaces import space_for
    from sparsec.models import conv1x1_layer
    from sparsec.prune import weight_layers
    from sparsec.tuning.task import extract_tasks

    def space(channels):
        model = conv1x1_layer((1, channels, 7, 7), 64)
        masks = {layer.weight: np.ones(layer.shape, bool) for layer in weight_layers(model)}
        module = optimize(import_model(model, masks))
        (task,) = [t for t in extract_tasks(module, AVX2) if t.generator == "dense_conv"]
        return space_for(task.call, AVX2)

    direct, across = space(128), space(256)
    assert (direct.default["pointwise"], direct.default["channel_block"]) == (1, 256)  # resolved
    assert (across.default["pointwise"], across.default["channel_block"]) == (2, 64)
    changed = lambda s, **kv: Knobs.of({**s.default, **kv})  # noqa: E731
    assert direct.problem(changed(direct, pointwise=2)) is None  # at the direct knobs' own defaults
    assert across.problem(changed(across, channel_block=32)) is None  # vectors across filters block channels
    assert across.problem(changed(across, tiles_per_block=8)) == \
        "vectors across filters ignore the direct conv's blocks (one point of them is enough)"
    assert direct.problem(changed(direct, tiles_per_block=8)) is None
    assert direct.problem(changed(direct, channel_block=32)) == \
        "the 1x1 GEMM ignores the direct conv's blocks (one point of them is enough)"
    # ranges of the plane, one a thread: a choice across filters only (7x7 -> 64: one range by default)
    assert {k.name: k.values for k in across.knobs}["ranges"] == tuple(sorted({1, AVX2.threads}))
    assert across.default["ranges"] == 1 and across.problem(changed(across, ranges=AVX2.threads)) is None
    assert direct.problem(changed(direct, ranges=1)) == \
        "only vectors across filters take the plane in ranges (one point of them is enough)"


@pytest.mark.parametrize("size", [1, 2, 7])
def test_depthwise_on_narrow_planes(size):
    """Planes whose output row or column is one pixel (their unit loops are dropped by the schedule)."""
    check((1, 5, size, size), (5, 1, 3, 3), strides=(2, 2), pads=(1, 1, 1, 1), groups=5, bias=True, act="clip")
    check((1, 5, size, 1), (5, 1, 3, 3), pads=(1, 1, 1, 1), groups=5, bias=True, act="relu", residual=True)


# --- depthwise convs with the tap columns taken apart in registers --------------------------------

REGISTERS = DenseConvKnobs(depthwise=2)


@pytest.mark.parametrize("s", [1, 2])
@pytest.mark.parametrize("width", [1, 7, 8, 14, 17, 33, 56])
def test_depthwise_in_registers_widths(s, width):
    """Output rows of whole vectors, a partial last vector, one short vector, a single column; both
    strides; bands of rows that do not divide the height (9 rows in bands of 4)."""
    check((1, 3, 17, width), (3, 1, 3, 3), strides=(s, s), pads=(1, 1, 1, 1), groups=3, bias=True, act="clip",
          knobs=REGISTERS)


@pytest.mark.parametrize("pads", [(0, 0, 0, 0), (0, 0, 1, 1), (2, 1, 0, 2), (1, 2, 2, 0)])
@pytest.mark.parametrize("s", [1, 2])
def test_depthwise_in_registers_pads(pads, s):
    """No padding, TF-SAME's bottom-right only, and lopsided pads wider than the tap reach on one side."""
    check((2, 4, 12, 19), (4, 1, 3, 3), strides=(s, s), pads=pads, groups=4, residual=True, act="relu",
          knobs=REGISTERS)


@pytest.mark.parametrize("lanes, rows", [(4, 1), (8, 3), (16, 2), (16, 8)])
def test_depthwise_in_registers_lanes_and_rows(lanes, rows):
    """Vector widths from NEON's to AVX-512's (the tap shuffles' indices scale with them) and band
    heights from one row to more rows than the plane has."""
    for s in (1, 2):
        check((1, 5, 15, 23), (5, 1, 3, 3), strides=(s, s), pads=(1, 1, 1, 1), groups=5, bias=True,
              knobs=DenseConvKnobs(depthwise=2, lanes=lanes, dw_rows=rows))


@pytest.mark.parametrize("taps, dilation, s", [(5, 1, 1), (5, 1, 2), (7, 1, 2), (2, 1, 1), (3, 2, 1), (3, 3, 2),
                                               (5, 2, 2)])
def test_depthwise_in_registers_kernel_sizes_and_dilations(taps, dilation, s):
    """MobileNet-V3's 5x5, a 7x7, an even kernel, DeepLab's dilated 3x3: taps reaching past one loaded
    vector (16 lanes at stride 2 with a reach of 8 columns: 3 loads) and rows a dilation apart."""
    pad = (taps - 1) * dilation // 2
    for lanes in (0, 4):  # the target's, and NEON's 4 (a 7x7 reaches two vectors past the first)
        check((1, 3, 19, 37), (3, 1, taps, taps), strides=(s, s), pads=(pad, pad + 1, pad, pad),
              dilations=(dilation,) * 2, groups=3, bias=True, act="relu",
              knobs=DenseConvKnobs(depthwise=2, lanes=lanes))


def test_depthwise_in_registers_is_the_default_where_it_applies():
    """Depthwise of stride 1 or 2 with square kernels of 2-7 taps: tap columns in registers,
    half-width vectors where a row fits in one, bands from the register count; strides differing
    by axis, channel multipliers and 9x9 kernels stay on the direct conv."""
    def resolved(w_shape, in_shape, strides=(1, 1), dilations=(1, 1), target=AVX512, knobs=DenseConvKnobs()):
        k = resolve_knobs(w_shape, in_shape, strides, (1, 1, 1, 1), dilations, in_shape[1], knobs, target=target)
        return k.depthwise, k.lanes, k.dw_rows

    assert resolved((8, 1, 3, 3), (1, 8, 112, 112), (2, 2)) == (2, 16, 4)  # 56 columns: 4 x 16 lanes
    assert resolved((8, 1, 3, 3), (1, 8, 14, 14), (2, 2))[:2] == (2, 8)  # 7 columns: half a vector
    assert resolved((8, 1, 3, 3), (1, 8, 8, 8))[:2] == (2, 8)
    assert resolved((8, 1, 3, 3), (1, 8, 9, 9))[:2] == (2, 16)
    assert resolved((8, 1, 3, 3), (1, 8, 56, 56), target=AVX2) == (2, 8, 2)
    assert resolved((8, 1, 3, 3), (1, 8, 4, 4), target=AVX2) == (2, 4, 2)
    assert resolved((8, 1, 3, 3), (1, 8, 56, 56), dilations=(2, 2))[0] == 2
    assert resolved((8, 1, 5, 5), (1, 8, 56, 56), (2, 2))[0] == 2
    assert resolved((8, 1, 3, 3), (1, 8, 56, 56), dilations=(2, 1))[0] == 1
    assert resolved((8, 1, 3, 3), (1, 8, 56, 56), (2, 1))[0] == 1
    assert resolved((8, 1, 9, 9), (1, 8, 56, 56))[0] == 1
    assert resolved((16, 1, 3, 3), (1, 8, 56, 56))[0] == 1  # multiplier 2 (groups 8)
    assert resolved((8, 1, 3, 3), (1, 8, 56, 56), knobs=DenseConvKnobs(depthwise=1))[0] == 1
    with pytest.raises(ValueError, match=r"knob depthwise=2 needs a depthwise conv \(one filter per channel\) with "
                                         r"a square kernel of 2-7 taps, stride 1 or 2 and one dilation both ways; "
                                         r"got weight \(8, 1, 3, 3\), strides \(3, 3\)"):
        resolved((8, 1, 3, 3), (1, 8, 56, 56), (3, 3), knobs=REGISTERS)
    with pytest.raises(ValueError, match="knob depthwise must be 0 .auto., 1 .the direct conv. or 2"):
        DenseConvKnobs(depthwise=3)


def test_depthwise_kernels_in_the_tuning_space():
    """A 3x3 depthwise conv offers both kernels; each ignores the other's knobs (one point of them);
    one whose strides differ by axis keeps the direct conv's vectors only."""
    from sparsec.lower.spaces import space_for
    from sparsec.tuning.task import KernelCall

    params = {"weight_shape": [16, 1, 3, 3], "in_shape": [1, 16, 28, 28], "strides": [2, 2], "pads": [1, 1, 1, 1],
              "dilations": [1, 1], "groups": 16, "activation": None, "residual": False, "bias": False}
    call = KernelCall("dense_conv", params, {})
    space = space_for(call, AVX512)
    knobs = {k.name: k.values for k in space.knobs}
    assert knobs["depthwise"] == (1, 2) and knobs["dw_rows"] == (1, 2, 3, 4, 6, 8) and space.default["depthwise"] == 2
    changed = lambda **kv: Knobs.of({**space.default, **kv})  # noqa: E731
    assert space.problem(changed(dw_rows=2)) is None
    assert space.problem(changed(dw_vectors=2)) == \
        "tap columns in registers ignores dw_vectors (one point of it is enough)"
    assert space.problem(changed(depthwise=1, dw_vectors=2)) is None
    assert space.problem(changed(depthwise=1, dw_rows=2)) == \
        "the direct conv ignores dw_rows (one point of it is enough)"
    uneven = space_for(KernelCall("dense_conv", {**params, "strides": [2, 1]}, {}), AVX512)
    assert [k.name for k in uneven.knobs] == ["dw_vectors"]
