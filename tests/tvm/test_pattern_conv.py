"""The pattern-sparse conv kernel against a NumPy convolution: strides, pads, batch, epilogues,
empty filters, widths that are no multiple of the vector width, and every schedule knob."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsec.fkw import build_fkw
from sparsec.ir.activation import Activation
from sparsec.lower.kernels.common import run_kernel
from sparsec.lower.kernels.pattern_conv import (
    PatternConvKnobs,
    _Geometry,
    _PairedTasks,
    auto_filter_splits,
    next_tile_columns,
    padded_work,
    pattern_conv_kernel,
    resolve_knobs,
)
from sparsec.lower.target import host, resolve_target
from sparsec.target import host_isa

pytestmark = pytest.mark.tvm
HOST = host()  # this machine, as it is (AVX-512 here: 16 lanes, 32 registers)
# caches pinned (a target from JSON takes the rest from this machine): znver3's, where AVX2's plans were
# measured, and znver4's for AVX-512
AVX2 = resolve_target(spec='{"name": "avx2", "isa": "avx2", "tvm": {"mcpu": "haswell"}, "l1d_bytes": 32768, '
                           '"l2_bytes": 524288}')
AVX512 = resolve_target(spec='{"name": "avx512", "isa": "avx512", "tvm": {"mcpu": "skylake-avx512"}, '
                             '"l1d_bytes": 32768, "l2_bytes": 1048576}')
ARM64 = resolve_target("arm64")

PATTERNS = np.array(
    [[0, 1, 3, 4], [1, 2, 4, 5], [1, 3, 4, 5], [1, 3, 4, 7],
     [1, 4, 5, 7], [3, 4, 5, 7], [3, 4, 6, 7], [4, 5, 7, 8]]
)


def pruned(rng, filters, channels, keep=0.5, empty_filters=(1,)):
    """Pattern-pruned [O, I, 3, 3] weight: a random pattern per kernel, `keep` of kernels kept."""
    w = rng.standard_normal((filters, channels, 9)).astype(np.float32)
    pid = rng.integers(0, len(PATTERNS), (filters, channels))
    mask = np.zeros(w.shape, bool)
    mask[np.arange(filters)[:, None, None], np.arange(channels)[None, :, None], PATTERNS[pid]] = True
    mask &= (rng.random((filters, channels)) < keep)[:, :, None]
    mask[[f for f in empty_filters if f < filters]] = False
    return (w * mask).reshape(filters, channels, 3, 3)


def reference_conv(x, w, strides, pads, dilations):
    """Direct NumPy 3x3 convolution, one tap at a time (ONNX Conv semantics, pads t,l,b,r)."""
    (sh, sw), (dh, dw) = strides, dilations
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[2] - 2 * dh - 1) // sh + 1
    ow = (xp.shape[3] - 2 * dw - 1) // sw + 1
    out = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for a in range(3):
        for b in range(3):
            patch = xp[:, :, a * dh:a * dh + sh * (oh - 1) + 1:sh, b * dw:b * dw + sw * (ow - 1) + 1:sw]
            out += np.einsum("oc,nchw->nohw", w[:, :, a, b], patch)
    return out


ACTIVATIONS = {
    None: lambda y: y,
    Activation("relu"): lambda y: np.maximum(y, 0),
    Activation("clip", (0.0, 6.0)): lambda y: np.clip(y, 0, 6),
    Activation("leaky_relu", (0.1,)): lambda y: np.where(y > 0, y, 0.1 * y),
    Activation("sigmoid"): lambda y: 1 / (1 + np.exp(-y)),
    Activation("hard_sigmoid", (0.2, 0.5)): lambda y: np.clip(0.2 * y + 0.5, 0, 1),
    Activation("hard_swish"): lambda y: y * np.clip(y / 6 + 0.5, 0, 1),
}


def check(x_shape, filters, *, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), bias=False,
          act=None, knobs=PatternConvKnobs(), keep=0.5, seed=0, target=HOST, residual=False, filter_order=None,
          in_place=False):
    rng = np.random.default_rng(seed)
    w = pruned(rng, filters, x_shape[1], keep)
    x = rng.standard_normal(x_shape).astype(np.float32)
    b = rng.standard_normal(filters).astype(np.float32) if bias else None
    fkw = build_fkw(w, filter_order=None if filter_order is None else np.array(filter_order))
    kernel = pattern_conv_kernel(fkw, x_shape, strides=strides, pads=pads, dilations=dilations, bias=b,
                                 activation=act, residual=residual, in_place=in_place, knobs=knobs, target=target)
    assert kernel.in_place == (1 if in_place else None)
    want = reference_conv(x, w, strides, pads, dilations)
    if b is not None:
        want += b[None, :, None, None]
    r = (2 * rng.standard_normal(want.shape)).astype(np.float32) if residual else None
    if r is not None:
        want += r  # a ResNet shortcut: before the activation, at the original channel
    want = ACTIVATIONS[act](want)
    assert kernel.out_shape == want.shape and kernel.out_dtype == "float32"
    got = run_kernel(kernel, target, x, *([r] if residual else []))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# the two ways the input gets tiled: each task copies its own tile (one slice of filters per
# tile), or a prologue copies every tile (filters sliced across tasks); each task prefetching the
# next task's new input lines (the last task's "next" is itself)
SHIFTED = PatternConvKnobs(register_shifts=1, tap_copies=1)  # tile rows shifted in registers
COPIES = {"task-copy": PatternConvKnobs(filter_splits=1, prefetch_next_tile=0),
          "task-copy-prefetched": PatternConvKnobs(filter_splits=1, prefetch_next_tile=1),
          "prologue": PatternConvKnobs(filter_splits=2)}


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("pad", [0, 1])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("copy", list(COPIES))
def test_strides_pads_batch(stride, pad, batch, copy):
    check((batch, 6, 11, 13), 5, strides=(stride, stride), pads=(pad,) * 4, knobs=COPIES[copy])


@pytest.mark.parametrize("act", list(ACTIVATIONS)[1:], ids=lambda a: a.kind)
def test_bias_and_activation_epilogue(act):
    check((1, 4, 6, 9), 3, bias=True, act=act)


def test_odd_width_wider_than_a_vector_and_all_empty_filters():
    check((1, 5, 7, 19), 6, bias=True, keep=0.3)  # 19 = 2 vectors of 8 + 3
    check((1, 3, 5, 5), 2, keep=0.0)  # every filter empty: bias-free zeros


@pytest.mark.parametrize("shifts", [1, 2], ids=["rows", "sums"])
@pytest.mark.parametrize("copy", list(COPIES))
def test_tile_rows_shifted_in_registers(copy, shifts):
    """Each tile row one vector, the taps right of the first reading it rotated in registers (or their
    sums, a set per tap column, rotated once a block): the tile holds lanes - 2 * dilation output
    columns, so every tile sticks out of its vector."""
    knobs = dataclasses.replace(COPIES[copy], register_shifts=shifts, tap_copies=1, sum_chains=1)
    check((2, 6, 11, 28), 5, bias=True, act=Activation("relu"), knobs=knobs, keep=0.3)
    check((1, 6, 9, 13), 4, pads=(0, 1, 2, 1), residual=True, knobs=knobs, seed=1)  # 13 columns: a partial tile
    check((1, 4, 12, 30), 3, dilations=(2, 2), pads=(2, 2, 2, 2), knobs=knobs, seed=2)  # 2 columns of halo a side
    check((1, 4, 13, 20), 3, strides=(2, 1), pads=(1, 0, 1, 1), knobs=knobs, seed=3)  # stride 2 down the plane
    check((1, 8, 10, 17), 3, knobs=dataclasses.replace(knobs, rows_per_step=3, channel_block=3), seed=4)


def test_register_shifts_plan():
    """AVX-512 shifts tile rows where they take no more vectors a row (28- and 14-wide planes), and
    shifts their sums (2), whatever its tap copies would have been, in tiles of 7 rows: 3 sets of 7
    sums. Asked for, shifted rows (1) keep the plain plan's 14 rows."""
    plan = lambda target, shape, kept=0.278, strides=(1, 1), pooled=False, **knobs: resolve_knobs(  # noqa: E731
        shape, strides, knobs=PatternConvKnobs(**knobs), target=target, filters=shape[1], kept=kept, pooled=pooled)
    shifts = lambda *args, **kwargs: plan(*args, **kwargs).register_shifts  # noqa: E731
    assert shifts(AVX512, (1, 512, 28, 28)) == 2  # 2 x 14 columns, not 16 + 12
    assert shifts(AVX512, (1, 512, 14, 14)) == 2  # 14, not 16
    assert shifts(AVX512, (1, 256, 56, 56)) == 0  # 4 x 14 pads no less than 3 x 16 + 8 in row pairs
    assert shifts(AVX512, (1, 128, 112, 112)) == 0  # 8 x 14 = 7 x 16
    assert shifts(AVX512, (1, 256, 28, 28), kept=0.5) == 2  # over three copies
    assert shifts(AVX512, (1, 256, 14, 14), kept=0.5) == 2  # over three copies, one column of tiles
    assert resolve_knobs((1, 256, 14, 14), target=AVX512, filters=256, kept=0.5).tap_copies == 1
    assert shifts(AVX512, (1, 256, 28, 28), kept=0.5, tap_copies=3) == 0  # asked for
    assert shifts(AVX512, (1, 256, 28, 28), strides=(2, 2)) == 0
    assert shifts(AVX512, (1, 256, 28, 28), strides=(2, 1)) == 0  # strided down: not measured
    assert shifts(AVX2, (1, 512, 28, 28)) == 0 and shifts(ARM64, (1, 512, 28, 28)) == 0
    assert shifts(AVX512, (1, 512, 28, 28), register_shifts=0) == 0
    assert shifts(AVX512, (1, 512, 28, 28), pooled=True) == 2
    sums, rows = plan(AVX512, (1, 512, 28, 28)), plan(AVX512, (1, 512, 28, 28), register_shifts=1)
    assert (sums.rows_per_step, sums.sum_chains, rows.rows_per_step) == (7, 1, 14)
    assert plan(AVX512, (1, 512, 28, 28), pooled=True).rows_per_step == 4  # even rows tiling 28 exactly


def test_register_shifts_refuses_what_it_cannot_tile():
    w = pruned(np.random.default_rng(0), 4, 3)
    with pytest.raises(ValueError, match=r"knob register_shifts=1 needs one tile copy, .* got 3 tap copies"):
        pattern_conv_kernel(build_fkw(w), (1, 3, 20, 20), target=AVX512,
                            knobs=PatternConvKnobs(register_shifts=1, tap_copies=3))
    with pytest.raises(ValueError, match=r"stride 2 along"):
        pattern_conv_kernel(build_fkw(w), (1, 3, 20, 20), strides=(1, 2), target=AVX512, knobs=SHIFTED)
    with pytest.raises(ValueError, match=r"a fused 2x2 max pool needs .* even .* columns a vector .*, 13 columns"):
        pattern_conv_kernel(build_fkw(w), (1, 3, 20, 20), target=AVX512, pool=True,
                            knobs=PatternConvKnobs(register_shifts=1, vector_width=15))
    with pytest.raises(ValueError, match=r"knob register_shifts=2 needs one tile copy, .* stride 2 along"):
        pattern_conv_kernel(build_fkw(w), (1, 3, 20, 20), strides=(1, 2), target=AVX512,
                            knobs=PatternConvKnobs(register_shifts=2))
    # a halo that fills the vector (4 lanes, dilation 2) leaves no column to tile: refused, not divided by zero
    with pytest.raises(ValueError, match=r"knob register_shifts=2 needs one tile copy, .* got .* 4 lanes, .* "
                                         r"dilation 2"):
        pattern_conv_kernel(build_fkw(w), (1, 3, 10, 14), dilations=(2, 2), target=AVX512,
                            knobs=PatternConvKnobs(register_shifts=2, vector_width=4))
    with pytest.raises(ValueError, match=r"knob register_shifts must be 0, 1 or 2 \(or -1: the target's choice\), "
                                         r"got 3"):
        PatternConvKnobs(register_shifts=3)
    with pytest.raises(ValueError, match=r"knob sum_chains=2 does not go with register_shifts=2"):
        PatternConvKnobs(register_shifts=2, sum_chains=2)


def test_shifted_rows_load_each_tile_row_once():
    """The FMA loops of shifted rows load each input row once, aligned, and permute it for the
    other tap columns; unshifted, the taps right of the first load the row again at their offset."""
    import tvm

    from sparsec.lower.target import tvm_target

    w = pruned(np.random.default_rng(0), 8, 16, 0.3)
    address = r"-?\d*\(%\w+(?:,%\w+(?:,\d)?)?\)"
    vector_load = re.compile(rf"(?:vmov[au]ps|vfmadd\w+)\s+{address}, %zmm")

    def loops(shifts: int):
        kernel = pattern_conv_kernel(build_fkw(w), (1, 16, 28, 28), target=AVX512,
                                     knobs=PatternConvKnobs(register_shifts=shifts, tap_copies=1, rows_per_step=14))
        return _fma_loops(tvm.compile(kernel.func, target=tvm_target(AVX512)).mod.inspect_source("asm"))

    shifted, unshifted = loops(1), loops(0)
    assert len(shifted) >= len(PATTERNS)
    for loop in shifted:  # at most the tile's 16 input rows, each loaded once, none spilled (row by row)
        assert len(vector_load.findall(loop)) <= 16 and re.search(r"vperm|valign", loop) and "(%rsp)" not in loop
    assert all(len(vector_load.findall(loop)) > 16 and not re.search(r"vperm|valign", loop) for loop in unshifted)


def test_shifted_sums_leave_the_rotations_out_of_the_kernel_loops():
    """Shifted sums: each pattern loop loads its 7-row tile's 9 input rows once, aligned, and feeds
    every tap from them unrotated, its 21 sums in registers; the rotations (2 a tile row) come once,
    after the loops."""
    import tvm

    from sparsec.lower.target import tvm_target

    w = pruned(np.random.default_rng(0), 8, 16, 0.3)
    address = r"-?\d*\(%\w+(?:,%\w+(?:,\d)?)?\)"
    vector_load = re.compile(rf"(?:vmov[au]ps|vfmadd\w+)\s+{address}, %zmm")
    kernel = pattern_conv_kernel(build_fkw(w), (1, 16, 28, 28), target=AVX512,
                                 knobs=PatternConvKnobs(register_shifts=2, channel_block=0))
    asm = tvm.compile(kernel.func, target=tvm_target(AVX512)).mod.inspect_source("asm")
    loops = _fma_loops(asm)
    assert len(loops) >= len(PATTERNS)
    for loop in loops:
        assert len(vector_load.findall(loop)) <= 9 and not re.search(r"vperm|valign", loop), loop
        assert "(%rsp)" not in loop
    assert re.search(r"vperm|valign", asm)  # the fold's rotations


@pytest.mark.parametrize("copies", [1, 3], ids=["phase-tile", "tap-copies"])
@pytest.mark.parametrize("copy", list(COPIES))
def test_asymmetric_pads_and_dilation(copies, copy):
    knobs = dataclasses.replace(COPIES[copy], tap_copies=copies)
    check((1, 4, 9, 10), 3, pads=(0, 1, 2, 1), knobs=knobs)
    check((1, 4, 9, 10), 3, dilations=(2, 2), pads=(2, 2, 2, 2), knobs=knobs)
    check((1, 4, 10, 12), 3, strides=(2, 1), pads=(1, 0, 1, 1), knobs=knobs)
    check((2, 4, 11, 37), 3, strides=(2, 2), pads=(1, 1, 1, 1), knobs=knobs)


@pytest.mark.parametrize(
    "knobs",
    [
        PatternConvKnobs(rows_per_step=3, vectors_per_step=2),
        PatternConvKnobs(channel_block=4),  # several channel blocks: partial sums between them
        PatternConvKnobs(filters_per_group=3, channel_block=5),  # a short last group
        PatternConvKnobs(rows_per_step=8, channel_block=3, vectors_per_step=2),
        PatternConvKnobs(vector_width=4, rows_per_step=1),
        PatternConvKnobs(tap_copies=3, vectors_per_step=2),  # an aligned copy per tap column (NEON's)
        PatternConvKnobs(tap_copies=3, channel_block=4, filters_per_group=2),
        PatternConvKnobs(prefetch=3, channel_block=4),  # prefetches past the last kernel are clamped
        PatternConvKnobs(prefetch=1, filters_per_group=2, tap_copies=3),
        PatternConvKnobs(filter_splits=3),  # 7 filters in slices of 3, 3 and 1
        PatternConvKnobs(filter_splits=2, channel_block=4, filters_per_group=2),  # slices of blocked tiles
        PatternConvKnobs(filter_splits=9),  # more slices than filters: the last ones have none
        # the next tile's lines spread over blocks x groups: 11 channels over 3 x 3 steps
        PatternConvKnobs(filter_splits=1, prefetch_next_tile=1, channel_block=4, filters_per_group=3),
    ],
    ids=["tile", "blocks", "groups", "wide", "narrow", "tap-copies", "tap-copies-blocks", "prefetch",
         "prefetch-groups", "splits", "splits-blocks", "splits-empty", "next-tile-blocks"],
)
def test_knobs(knobs):
    check((2, 11, 10, 17), 7, strides=(2, 2), bias=True, act=Activation("relu"), knobs=knobs)
    check((1, 11, 10, 17), 7, knobs=knobs)


@pytest.mark.parametrize(
    "knobs",
    [
        PatternConvKnobs(),
        PatternConvKnobs(channel_block=4),  # partial sums wait between blocks; the residual only at the end
        PatternConvKnobs(filters_per_group=3, channel_block=5),  # a short last group
        PatternConvKnobs(tap_copies=3, filters_per_group=2),
        PatternConvKnobs(vector_width=4, rows_per_step=3, vectors_per_step=2),
        PatternConvKnobs(filter_splits=1, prefetch=2),  # each task copies its own input tile
        PatternConvKnobs(filter_splits=3, channel_block=4),  # filters sliced across tasks, a prologue copy
    ],
    ids=["default", "blocks", "groups", "tap-copies", "narrow", "task-copy", "splits-blocks"],
)
@pytest.mark.parametrize("in_place", [False, True], ids=["out", "in-place"])
def test_residual_epilogue(knobs, in_place):
    """act(conv + bias + residual), the residual read at each stored filter's original channel:
    17 columns run the vector stores and the per-element tail; stride 2 (9 columns) the tail alone.
    In place, the result is written over the residual (an element stored twice would add it twice)."""
    order = (4, 0, 6, 2, 1, 5, 3)
    check((1, 11, 10, 17), 7, bias=True, act=Activation("relu"), knobs=knobs, residual=True, filter_order=order,
          in_place=in_place)
    check((2, 11, 10, 17), 7, strides=(2, 2), act=Activation("clip", (0.0, 6.0)), knobs=knobs, residual=True,
          filter_order=order, seed=1, in_place=in_place)


@pytest.mark.parametrize("x_shape, kwargs, knobs", [
    ((1, 6, 9, 13), {"pads": (0, 1, 2, 1)}, SHIFTED),  # rows shifted in registers, a partial tile
    ((2, 5, 23, 12), {"bias": True}, PatternConvKnobs(pair_rows=1, vector_width=8)),  # rows in pairs, a tile outside
    ((1, 6, 14, 28), {}, PatternConvKnobs(sum_chains=2, tap_copies=3, rows_per_step=5)),  # two chains, 3 tiles of 5
], ids=["shifted", "pairs", "chains"])
def test_residual_written_over_in_place(x_shape, kwargs, knobs):
    check(x_shape, 7, residual=True, in_place=True, knobs=knobs, **kwargs)


def test_in_place_needs_a_residual_and_no_pool():
    fkw = build_fkw(pruned(np.random.default_rng(0), 4, 4))
    for kw in ({}, {"residual": True, "pool": True}):
        with pytest.raises(ValueError, match=r"an in-place pattern conv writes over its residual: it needs one and "
                                             r"no fused pool, got residual=(False|True), pool=(False|True)"):
            pattern_conv_kernel(fkw, (1, 4, 8, 8), in_place=True, target=HOST, **kw)


def max_pool_2x2(y: np.ndarray) -> np.ndarray:
    """ONNX MaxPool kernel 2, stride 2, no padding (floor: a last odd row or column is dropped)."""
    n, c, h, w = y.shape
    return y[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


@pytest.mark.parametrize(
    "x_shape, strides, residual, knobs",
    [
        ((1, 6, 12, 16), (1, 1), False, PatternConvKnobs()),  # whole tiles
        ((2, 5, 11, 19), (1, 1), True, PatternConvKnobs()),  # odd plane: the last row and column dropped
        ((1, 7, 13, 21), (1, 1), False, PatternConvKnobs(channel_block=3, filter_splits=1, prefetch_next_tile=1)),
        ((1, 5, 17, 23), (2, 2), True, PatternConvKnobs(filter_splits=2)),  # strided, tiles from a prologue
        ((1, 4, 9, 10), (1, 1), False, PatternConvKnobs(rows_per_step=4, vectors_per_step=2, vector_width=4)),
        ((2, 5, 11, 31), (1, 1), True, SHIFTED),  # lanes - 2 columns a vector, the last tile sticking out
        ((1, 6, 12, 28), (1, 1), True, PatternConvKnobs(register_shifts=2, tap_copies=1, channel_block=2)),
    ],
    ids=["tiles", "odd-residual", "blocks", "stride-2", "narrow", "shifted", "shifted-sums"],
)
def test_fused_max_pool(x_shape, strides, residual, knobs):
    """pool(act(conv + bias + residual)), 2x2 stride 2, from one kernel: rows in pairs, lane pairs."""
    rng = np.random.default_rng(0)
    w = pruned(rng, 7, x_shape[1])
    x = rng.standard_normal(x_shape).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)
    kernel = pattern_conv_kernel(build_fkw(w), x_shape, strides=strides, bias=b, activation=Activation("relu"),
                                 residual=residual, pool=True, knobs=knobs, target=HOST)
    conv = reference_conv(x, w, strides, (1,) * 4, (1, 1)) + b[None, :, None, None]
    r = (2 * rng.standard_normal(conv.shape)).astype(np.float32)  # shaped like the conv, not the pool
    want = max_pool_2x2(np.maximum(conv + (r if residual else 0), 0))
    assert kernel.out_shape == want.shape
    got = run_kernel(kernel, HOST, x, *([r] if residual else []))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_shifted_pool_stores_the_windows_of_its_columns():
    """Shifted rows hold 14 output columns a vector: 7 pooled columns a store (a store of 8 would
    write a window of the junk lanes, which the next tile's store may or may not overwrite)."""
    w = pruned(np.random.default_rng(0), 4, 4)
    script = pattern_conv_kernel(build_fkw(w), (1, 4, 12, 28), target=AVX512, pool=True, knobs=SHIFTED).func.script()
    assert re.search(r"\+ 7\] = T\.max\(T\.Shuffle", script) and not re.search(r"\+ 8\] = ", script)


def test_fused_max_pool_takes_rows_in_pairs():
    w = pruned(np.random.default_rng(0), 4, 8)
    rows = lambda pooled: resolve_knobs((1, 8, 28, 28), target=AVX2, pooled=pooled).rows_per_step  # noqa: E731
    assert rows(False) == 7 and rows(True) % 2 == 0  # 7 rows tile 28 exactly; a pool pairs them
    with pytest.raises(ValueError, match="a fused 2x2 max pool needs an even rows_per_step"):
        pattern_conv_kernel(build_fkw(w), (1, 8, 12, 12), pool=True, knobs=PatternConvKnobs(rows_per_step=3),
                            target=HOST)


# the last column of tiles with its rows in pairs: 8-lane vectors on planes whose width leaves at most
# 4 columns to the last tile (each vector then holds rows r and r + rows of it)
@pytest.mark.parametrize("x_shape, kwargs", [
    ((1, 6, 28, 28), {}),  # 28 = 3 x 8 + 4, 28 rows = 2 paired tiles of 14
    ((2, 5, 23, 12), dict(bias=True, act=Activation("relu"), residual=True)),  # a last tile part outside
    ((1, 5, 19, 4), {}),  # one column of tiles, all of them paired
    ((1, 5, 19, 11), {}),  # the paired tile sticking out of the plane (3 of its 4 columns)
    ((1, 5, 9, 11), dict(knobs=dict(rows_per_step=6))),  # one paired task among three (TVM's simplifier
    # once divided by zero there); 6 rows as AVX2's plan takes (AVX-512's would take all 9: no pairs)
    ((1, 11, 28, 20), dict(knobs=dict(channel_block=4))),  # channel blocks: partial sums between them
    ((1, 6, 30, 28), dict(pads=(0, 1, 2, 0), dilations=(2, 1))),  # asymmetric pads, rows two apart
    ((1, 6, 20, 56), dict(strides=(1, 2))),  # stride 2 along the row only (56 -> 28)
], ids=["28x28", "batch-epilogue", "one-column", "sticking-out", "one-pair", "blocks", "pads-dilation", "row-stride"])
def test_last_column_rows_in_pairs(x_shape, kwargs):
    knobs = PatternConvKnobs(pair_rows=1, vector_width=8, **kwargs.pop("knobs", {}))
    check(x_shape, 5, knobs=knobs, **kwargs)


def test_row_pairs_where_they_pad_less():
    pairs = lambda shape, target=AVX2, strides=(1, 1), **kw: resolve_knobs(  # noqa: E731
        shape, strides, target=target, filters=64, kept=0.5, **kw).pair_rows
    assert pairs((1, 64, 28, 28)) == 1  # 28 = 3 x 8 + 4: 14 tiles for 16, the same FMAs as 3.5 columns
    assert pairs((1, 64, 56, 56)) == 0  # whole tiles
    assert pairs((1, 64, 14, 14)) == 0  # 14 = 8 + 6: more than half of the last tile
    assert pairs((1, 64, 28, 28), pooled=True) == 0  # a fused pool's windows take whole rows
    assert pairs((1, 64, 56, 56), strides=(2, 2)) == 0  # rows two apart: not with stride 2 down the plane
    assert pairs((1, 64, 8, 12)) == 0  # one tile high: the pairs would pad the height as much
    assert pairs((1, 64, 56, 56), AVX512) == 1  # 16 lanes: 56 = 3 x 16 + 8
    assert pairs((1, 64, 28, 28), knobs=PatternConvKnobs(filter_splits=2)) == 0  # sliced filters: a prologue's tiles
    assert padded_work((1, 64, 28, 28), target=AVX2) == 1.0  # (unpaired 32 / 28 columns)
    # AVX-512: rows shifted in registers, 2 x 14 columns in 2 vectors of 16 lanes
    assert padded_work((1, 64, 28, 28), target=AVX512) == pytest.approx(32 / 28)
    w = pruned(np.random.default_rng(0), 4, 8)
    with pytest.raises(ValueError, match=r"knob pair_rows=1 needs one vector a tile row, stride 1 down the plane, a "
                                         r"last column tile at most half filled, .*got 1 vectors of 8 lanes on a "
                                         r"14x14 output \(stride 1 down\), 7 rows, 1 slices$"):
        pattern_conv_kernel(build_fkw(w), (1, 8, 14, 14), knobs=PatternConvKnobs(pair_rows=1), target=AVX2)


@settings(max_examples=60, deadline=None)
@given(full=st.integers(0, 40), paired=st.integers(1, 12), threads=st.integers(1, 4))
def test_paired_tasks_are_each_tile_once_and_spread(full, paired, threads):
    """Task i of an image is one paired or one unpaired tile, every tile once; each thread's contiguous
    range of tasks holds its share of the paired ones, give or take one (a paired tile costs more)."""
    from tvm import sym, tirx
    tasks, simplify = _PairedTasks(full, paired), sym.Analyzer().simplify
    kinds = []
    for i in range(tasks.count):
        i_ = tirx.const(i, "int32")
        kind = "paired" if int(simplify(tasks.is_paired(i_))) else "full"
        index = tasks.paired_index(i_) if kind == "paired" else tasks.full_index(i_)
        kinds.append((kind, int(simplify(index))))
    assert sorted(kinds) == sorted([("full", i) for i in range(full)] + [("paired", i) for i in range(paired)])
    chunk = -(-tasks.count // threads)
    for t in range(threads):
        share = kinds[t * chunk:(t + 1) * chunk]
        assert abs(sum(k == "paired" for k, _ in share) - len(share) * paired / tasks.count) <= 1


def test_output_keeps_original_channel_order():
    rng = np.random.default_rng(3)
    w = pruned(rng, 6, 4, keep=0.8)
    x = rng.standard_normal((1, 4, 5, 8)).astype(np.float32)
    fkw = build_fkw(w, filter_order=np.array([5, 3, 1, 0, 2, 4]))
    got = run_kernel(pattern_conv_kernel(fkw, x.shape, target=HOST), HOST, x)
    np.testing.assert_allclose(got, reference_conv(x, w, (1, 1), (1,) * 4, (1, 1)), rtol=1e-4, atol=1e-4)


def test_bad_knob():
    with pytest.raises(ValueError, match="rows_per_step"):
        PatternConvKnobs(rows_per_step=-1)
    with pytest.raises(ValueError, match="prefetch"):
        PatternConvKnobs(prefetch=-2)
    with pytest.raises(ValueError, match="knob prefetch_next_tile must be 0 or 1"):
        PatternConvKnobs(prefetch_next_tile=2)


def test_filter_slices_keep_every_thread_busy():
    assert auto_filter_splits(16, 256, threads=2) == 1  # L1: 16 tiles of 14 x 16
    assert auto_filter_splits(4, 512, threads=2) == 1  # L2: 4 tiles, 2 per thread
    assert auto_filter_splits(3, 256, threads=2) == 3  # 3 tiles on 2 threads: 9 tasks balance better
    assert auto_filter_splits(1, 256, threads=2) == 8  # L3: one tile, its filters sliced 8 ways
    assert auto_filter_splits(1, 3, threads=2) == 3  # never more slices than groups
    splits = lambda shape, filters=256, **knobs: resolve_knobs(  # noqa: E731
        shape, knobs=PatternConvKnobs(**knobs), target=AVX512, filters=filters).filter_splits
    assert splits((1, 8, 14, 14), rows_per_step=14) == auto_filter_splits(1, 256, AVX512.threads)  # one tile
    assert splits((1, 8, 14, 14)) == auto_filter_splits(2, 256, AVX512.threads) == 1  # shifted sums: 7-row tiles
    assert splits((1, 8, 14, 14), filter_splits=2) == 2
    assert resolve_knobs((1, 8, 14, 14), target=AVX512).filter_splits == 0  # no filter count: left to the kernel


def test_prefetch_comes_from_the_register_plan():
    prefetch = lambda target, channels=256, **knobs: resolve_knobs(  # noqa: E731
        (1, channels, 56, 56), knobs=PatternConvKnobs(**knobs), target=target).prefetch
    assert prefetch(AVX512) == 2 and prefetch(AVX2) == 2  # one filter per group: two kernels ahead
    assert prefetch(AVX512, filters_per_group=4) == 0 and prefetch(ARM64) == 0
    assert prefetch(AVX512, prefetch=0) == 0 and prefetch(ARM64, prefetch=3) == 3
    # a tile that stays in L1 needs none: 64 channels x 10 rows x 10 columns (AVX2, 8 rows) = 25.6 KB
    assert prefetch(AVX2, channels=64) == 0 and prefetch(AVX2, channels=96) == 2
    assert prefetch(AVX2, channel_block=64) == 0 and prefetch(AVX2, channel_block=512) == 2


def test_strided_layers_take_aligned_tap_copies_and_no_prefetch():
    plan = lambda target, strides, **knobs: resolve_knobs(  # noqa: E731
        (1, 256, 56, 56), strides, knobs=PatternConvKnobs(**knobs), target=target)
    for target in (AVX512, AVX2):
        assert (plan(target, (1, 1)).tap_copies, plan(target, (1, 1)).prefetch) == (1, 2)
        assert (plan(target, (2, 2)).tap_copies, plan(target, (2, 2)).prefetch) == (3, 0)
        assert plan(target, (2, 1)).tap_copies == 3  # rows two apart share no input row either
    assert plan(AVX512, (2, 2), tap_copies=1).prefetch == 2  # one copy chosen by hand: prefetched
    assert plan(AVX512, (2, 2), prefetch=1).prefetch == 1
    assert plan(ARM64, (1, 1)).tap_copies == 3 and plan(ARM64, (2, 2)).tap_copies == 3
    # AVX-512 at stride 1 where enough kernels are kept: 16-lane rows are whole lines, so aligned copies
    kept = lambda target, kept: resolve_knobs(  # noqa: E731
        (1, 256, 56, 56), target=target, filters=256, kept=kept)
    half = kept(AVX512, 0.5)
    assert (half.tap_copies, half.rows_per_step, half.channel_block) == (3, 7, 16)
    assert kept(AVX512, 0.278).tap_copies == 1 and kept(AVX2, 0.5).tap_copies == 1
    grouped = resolve_knobs((1, 256, 14, 14), knobs=PatternConvKnobs(filters_per_group=4), target=AVX512,
                            filters=256, kept=0.5)
    assert grouped.tap_copies == 1  # filter groups share each loaded row: the loads no longer bound the loop
    seven = resolve_knobs((1, 512, 7, 7), target=AVX512, filters=512, kept=0.5)
    assert (seven.vector_width, seven.tap_copies) == (8, 1)  # half-line vectors split fewer loads


def test_next_tile_prefetch_comes_from_the_register_plan():
    """On x86 where each task copies its own tile and the input is over 8x the L2 (512 KB here)."""
    plan = lambda target, shape, **knobs: resolve_knobs(  # noqa: E731
        shape, knobs=PatternConvKnobs(**knobs), target=target, filters=64, kept=0.278).prefetch_next_tile
    vgg_conv1_2, l1 = (1, 64, 224, 224), (1, 256, 56, 56)  # 12.8 MB and 3.2 MB
    assert plan(AVX2, vgg_conv1_2) == 1 and plan(AVX512, vgg_conv1_2) == 1
    assert plan(AVX2, (1, 128, 112, 112)) == 1 and plan(AVX2, l1) == 0
    assert plan(ARM64, vgg_conv1_2) == 0
    assert plan(AVX2, vgg_conv1_2, filter_splits=2) == 0  # tiles copied by a prologue: no next tile to copy
    assert plan(AVX2, l1, prefetch_next_tile=1) == 1 and plan(AVX2, vgg_conv1_2, prefetch_next_tile=0) == 0
    assert resolve_knobs(vgg_conv1_2, target=AVX2).prefetch_next_tile == -1  # no filter count: left to the kernel


@settings(max_examples=60, deadline=None)
@given(stride=st.integers(1, 2), dilation=st.integers(1, 2), copies=st.sampled_from([1, 3]),
       lanes=st.sampled_from([4, 8, 16]), vecs=st.integers(1, 3), pad=st.integers(0, 2),
       width=st.integers(20, 90), line=st.sampled_from([8, 16, 32]))
def test_next_tile_prefetch_covers_the_lines_the_next_copy_adds(stride, dilation, copies, lanes, vecs, pad, width,
                                                               line):
    """Every cache line of an input row that tile tx+1's copy reads and tile tx's did not holds a
    prefetched column, wherever the row starts inside a line."""
    g = _Geometry(1, 1, 8, width, (stride, stride), (pad,) * 4, (dilation, dilation), 2, lanes, vecs, copies,
                  line_floats=line)
    cols = lambda tx: {c for s in range(g.slots) for q in range(g.qw)  # noqa: E731
                       if 0 <= (c := g.source_col(tx, s, q)) < g.w}
    for tx in range(g.tiles_x - 1):
        last = g.source_col(tx + 1, g.slots - 1, g.qw - 1)
        fetched = {min(max(last + off, 0), g.w - 1) for off in next_tile_columns(g)}
        for start in range(line):
            lines = lambda cs, start=start: {(start + c) // line for c in cs}  # noqa: E731
            assert lines(cols(tx + 1)) - lines(cols(tx)) <= lines(fetched), (tx, start)


def test_prefetch_is_in_the_code():
    """Input prefetches (reads) as the knobs ask; the epilogue's output lines prefetched for writing always."""
    from sparsec.fkw import build_fkw

    reads = lambda k: re.findall(r"llvm\.prefetch.*, 0, 3, 1\)", k.func.script())  # noqa: E731
    writes = lambda k: re.findall(r"llvm\.prefetch\", T\.address_of\(out\[.*, 1, 3, 1\)", k.func.script())  # noqa: E731
    w = pruned(np.random.default_rng(0), 4, 3)
    kernel = pattern_conv_kernel(build_fkw(w), (1, 3, 8, 8), target=HOST, knobs=PatternConvKnobs(prefetch=2))
    assert reads(kernel) and writes(kernel)
    off = pattern_conv_kernel(build_fkw(w), (1, 3, 8, 8), target=HOST, knobs=PatternConvKnobs(prefetch=0))
    assert not reads(off) and writes(off)
    next_tile = PatternConvKnobs(prefetch=0, filter_splits=1, prefetch_next_tile=1)
    kernel = pattern_conv_kernel(build_fkw(w), (1, 3, 8, 8), target=HOST, knobs=next_tile)
    assert reads(kernel)


runs_x86_vectors = pytest.mark.skipif(host_isa() not in ("avx2", "avx512"), reason="runs AVX2 code")


@runs_x86_vectors
@pytest.mark.parametrize("knobs", [PatternConvKnobs(), PatternConvKnobs(filters_per_group=2, vectors_per_step=2),
                                   PatternConvKnobs(channel_block=4, tap_copies=3, rows_per_step=3),
                                   # rows padded to a line: the prologue's copy and each task's own
                                   PatternConvKnobs(channel_block=3, filter_splits=2),
                                   PatternConvKnobs(channel_block=4, filter_splits=1)])
def test_avx2_tap_weights_by_lane(knobs):
    # AVX2: each kernel's 4 tap weights are one load, each tap shuffled out of it; channel blocks
    # of one tile copy pad its rows to a cache line (8 lanes + a 2-column halo fit in one)
    check((1, 8, 11, 13), 6, bias=True, knobs=knobs, target=AVX2)
    check((2, 8, 9, 21), 5, strides=(2, 2), knobs=knobs, target=AVX2, seed=1)
    check((1, 8, 10, 12), 4, pads=(2, 0, 1, 2), dilations=(2, 1), knobs=knobs, target=AVX2, seed=2)


runs_avx512 = pytest.mark.skipif(host_isa() != "avx512", reason="runs AVX-512 code")


@runs_avx512
@pytest.mark.parametrize("knobs", [PatternConvKnobs(), PatternConvKnobs(channel_block=4, tap_copies=3, rows_per_step=3),
                                   PatternConvKnobs(channel_block=3, filter_splits=2, vector_width=8)])
def test_avx512_tap_weights_by_lane(knobs):
    # AVX-512: each kernel's 4 tap weights are one 128-bit load broadcast to the 4 parts of a
    # 16-lane vector (8 lanes: 2 parts), each tap shuffled out of every part
    check((1, 8, 11, 21), 6, bias=True, knobs=knobs, target=AVX512)
    check((2, 8, 9, 37), 5, strides=(2, 2), knobs=knobs, target=AVX512, seed=1)
    check((1, 8, 10, 20), 4, pads=(2, 0, 1, 2), dilations=(2, 1), knobs=knobs, target=AVX512, seed=2)


def _fma_loops(asm: str) -> list[str]:
    """The basic blocks of `asm` (split at labels) holding vector FMAs."""
    blocks = re.split(r"\n\.LBB\w+:", asm)
    return [b for b in blocks if re.search(r"vfmadd\w*ps", b)]


# one loop a (block, group) whatever the kernels' patterns, each tap's input address from the table
RUNTIME_TAPS = [
    ((1, 6, 11, 13), dict(strides=(2, 2)), {}),  # a task's own tile, the tile sticking out of the plane
    ((2, 6, 11, 13), dict(strides=(2, 2), pads=(0,) * 4), dict(filter_splits=2)),  # a prologue's tiles, 2 images
    ((1, 7, 15, 15), dict(strides=(2, 2), bias=True, act=Activation("relu"), residual=True), dict(channel_block=3)),
    ((1, 6, 30, 28), dict(pads=(0, 1, 2, 0), dilations=(2, 1)), dict(tap_copies=1)),  # stride 1, one copy
    ((1, 6, 17, 17), dict(strides=(2, 1), dilations=(1, 2)), dict(tap_copies=3, sum_chains=2, vector_width=4)),
    ((1, 8, 14, 14), dict(strides=(2, 2), keep=1.0), dict(filters_per_group=2, vectors_per_step=2)),  # groups
]


@pytest.mark.parametrize("target", [HOST, AVX2], ids=["host", "avx2"])
@pytest.mark.parametrize("x_shape, kwargs, knobs", RUNTIME_TAPS,
                         ids=["task-tile", "prologue", "blocks-epilogue", "dilation", "chains-4-lanes", "groups"])
def test_one_loop_with_runtime_taps(x_shape, kwargs, knobs, target):
    check(x_shape, 5, knobs=PatternConvKnobs(runtime_taps=1, **knobs), target=target, **kwargs)


def test_runtime_taps_run_one_loop_over_every_pattern():
    """The kernel's only FMA loop is the block's: its taps' 4 x 7 FMAs each load at the kernel's own
    table offset; per pattern there are 8 loops."""
    import tvm

    from sparsec.lower.target import tvm_target

    w = pruned(np.random.default_rng(0), 8, 16)

    def loops(runtime_taps: int):
        kernel = pattern_conv_kernel(build_fkw(w), (1, 16, 14, 14), strides=(2, 2), target=AVX512,
                                     knobs=PatternConvKnobs(runtime_taps=runtime_taps, rows_per_step=7))
        return _fma_loops(tvm.compile(kernel.func, target=tvm_target(AVX512)).mod.inspect_source("asm"))

    one, per_pattern = loops(1), loops(0)
    assert len(per_pattern) >= len(PATTERNS) and len(one) == 1
    assert len(re.findall(r"vfmadd\w+ps\s+-?\d*\(%\w+,%\w+,4\), %ymm", one[0])) == 28


def test_runtime_taps_plan_and_refusals():
    plan = lambda shape, strides=(2, 2), target=AVX512, **knobs: resolve_knobs(  # noqa: E731
        shape, strides, knobs=PatternConvKnobs(**knobs), target=target, filters=shape[1], kept=0.5).runtime_taps
    # AVX-512: strided down the plane, in half vectors (a 7-wide output's 8 lanes)
    assert (plan((1, 512, 14, 14)), plan((1, 512, 14, 7), (2, 1))) == (1, 1)
    assert (plan((1, 256, 28, 28)), plan((1, 512, 7, 7), (1, 1)), plan((1, 64, 28, 14), (1, 2))) == (0, 0, 0)
    assert (plan((1, 512, 14, 14), target=AVX2), plan((1, 512, 14, 14), target=ARM64)) == (0, 0)
    assert plan((1, 512, 14, 14), runtime_taps=0) == 0 and plan((1, 256, 28, 28), runtime_taps=1) == 1
    # asked for, it keeps the tile rows unshifted and the last column's rows unpaired
    assert resolve_knobs((1, 64, 28, 28), knobs=PatternConvKnobs(runtime_taps=1), target=AVX512).register_shifts == 0
    assert resolve_knobs((1, 6, 28, 28), knobs=PatternConvKnobs(runtime_taps=1, vector_width=8), target=AVX2,
                         filters=5, kept=0.5).pair_rows == 0
    fkw = build_fkw(pruned(np.random.default_rng(0), 5, 6))
    message = ("knob runtime_taps=1 needs unshifted tile rows (register_shifts=0) and no row pairs (pair_rows=0), "
               "got register_shifts={}, pair_rows={}")
    with pytest.raises(ValueError, match=re.escape(message.format(1, 0))):
        pattern_conv_kernel(fkw, (1, 6, 28, 28), target=AVX512,
                            knobs=PatternConvKnobs(runtime_taps=1, register_shifts=1))
    with pytest.raises(ValueError, match=re.escape(message.format(0, 1))):
        pattern_conv_kernel(fkw, (1, 6, 28, 28), target=AVX2,
                            knobs=PatternConvKnobs(runtime_taps=1, pair_rows=1, vector_width=8))
    with pytest.raises(ValueError, match=re.escape("knob runtime_taps must be 0 or 1 (or -1: the target's choice), "
                                                   "got 2")):
        PatternConvKnobs(runtime_taps=2)


@pytest.mark.parametrize("target, part_broadcast", [(AVX2, "vbroadcastf128"), (AVX512, "vbroadcastf32x4")])
def test_x86_loads_each_kernels_tap_weights_once(target, part_broadcast):
    import tvm

    from sparsec.lower.target import tvm_target

    w = pruned(np.random.default_rng(0), 8, 16)
    broadcast_load = re.compile(r"vbroadcastss\s+[^%\s]*\(|\{1to(8|16)\}")

    def loops(filters_per_group=1):
        kernel = pattern_conv_kernel(build_fkw(w), (1, 16, 32, 32), target=target,
                                     knobs=PatternConvKnobs(filters_per_group=filters_per_group))
        return _fma_loops(tvm.compile(kernel.func, target=tvm_target(target)).mod.inspect_source("asm"))

    assert len(loops()) >= len(PATTERNS)  # one loop per pattern
    for loop in loops():  # the weights: 128-bit loads, shuffled in registers, no broadcast loads
        assert part_broadcast in loop and not broadcast_load.search(loop)
    # filter groups keep broadcast loads (AVX2: 4 filters' shuffles would crowd the FMA pipes;
    # AVX-512's pairs gained nothing)
    assert all(broadcast_load.search(loop) and part_broadcast not in loop for loop in loops(2))


def test_channel_blocks_come_from_the_register_plan():
    block = lambda c, size, kept, target=AVX2, **knobs: resolve_knobs(  # noqa: E731
        (1, c, size, size), knobs=PatternConvKnobs(**knobs), target=target, filters=c, kept=kept).channel_block
    # L1's shape: 10 rows padded to 64-byte lines a channel: 32 channels fill 20 KB of L1, 64 would need 40
    assert block(256, 56, 0.5) == 32 and block(256, 56, 0.278) == 32 and block(128, 112, 0.278) == 32
    assert block(256, 56, 0.2) == 0  # 32 channels would leave each filter 6.4 kernels
    # planes up to 28 wide: 32 kept kernels a filter, if the (unpadded) tile fits L1: 64 at 50% kept
    assert block(256, 14, 0.5) == 64 and block(256, 28, 0.5) == 64
    assert block(256, 28, 0.278) == 0  # 32 kernels need 128 channels: 46 KB, more than L1
    assert block(512, 28, 0.5) == 0 and block(512, 56, 0.5) == 0  # tile and partial sums over half of L2
    assert block(64, 56, 0.5) == 0 and block(64, 224, 0.278) == 0  # the whole tile fits in L1 (25.6 KB)
    assert block(256, 56, 0.5, ARM64) == 0  # not measured there
    assert block(256, 56, 0.278, AVX512) == 0  # one copy: one block (AVX-512's 3 copies at 50% kept: below)
    assert block(256, 56, 0.5, channel_block=0) == 0 and block(256, 56, 0.5, channel_block=16) == 16
    assert resolve_knobs((1, 256, 56, 56), target=AVX2).channel_block == 0  # kept kernels unknown
    plan = resolve_knobs((1, 256, 56, 56), target=AVX2, filters=256, kept=0.5)
    assert plan.prefetch == 0  # a block's tile stays in L1
    # strided: 3 aligned copies of 15 rows x 8 columns (1440 bytes a channel) -> 32 in 48 KB, 1.5x L1
    strided = lambda c, size, kept: resolve_knobs(  # noqa: E731
        (1, c, size, size), (2, 2), target=AVX2, filters=c, kept=kept).channel_block
    assert strided(512, 14, 0.5) == 32 and strided(256, 28, 0.278) == 32 and strided(64, 112, 0.5) == 16
    assert strided(32, 56, 0.5) == 0  # one block already
    # AVX-512: 7-row tiles, so 16 channels of 15 rows x 3 copies x 16 columns (2880 bytes) fit 1.5x L1
    wide = lambda c, size, strides=(2, 2), **knobs: resolve_knobs(  # noqa: E731
        (1, c, size, size), strides, knobs=PatternConvKnobs(**knobs), target=AVX512, filters=c, kept=0.5)
    assert (wide(256, 28).rows_per_step, wide(256, 28).channel_block) == (7, 16)
    # a 7-wide output: 8 lanes, one loop a block (`runtime_taps`), so 16 channels, whose tile fits L1 itself
    assert (wide(512, 14).vector_width, wide(512, 14).runtime_taps, wide(512, 14).channel_block) == (8, 1, 16)
    assert (wide(512, 14, runtime_taps=0).runtime_taps, wide(512, 14, runtime_taps=0).channel_block) == (0, 32)
    assert (wide(256, 56, (1, 1), tap_copies=1).rows_per_step, wide(256, 56, (1, 1), tap_copies=1).channel_block) \
        == (14, 0)  # one copy: 14 rows, one block
    assert (wide(256, 56, (1, 1)).rows_per_step, wide(256, 56, (1, 1)).channel_block) == (7, 16)  # 3 at 50% kept


def test_blocked_rows_are_padded_to_a_line():
    from sparsec.lower.kernels.pattern_conv import _geometry

    plan = lambda target=AVX2, **knobs: _geometry((1, 256, 56, 56), (1, 1), (1,) * 4, (1, 1),  # noqa: E731
                                                  resolve_knobs((1, 256, 56, 56), knobs=PatternConvKnobs(**knobs),
                                                                target=target), target)
    assert (plan(channel_block=64).qw, plan(channel_block=64).pitch) == (10, 16)
    assert plan(channel_block=0).pitch == 10  # in L2 the padding costs more than the split loads
    assert plan(channel_block=64, tap_copies=3).pitch == 8  # aligned copies: no split loads to save
    wide_lines = dataclasses.replace(AVX2, cache_line_bytes=128)  # the line comes from the target
    assert plan(wide_lines, channel_block=64).pitch == 32 and plan(wide_lines, channel_block=0).pitch == 10


def test_blocked_tiles_keep_their_padded_rows_in_the_compiled_kernel():
    """TVM shrinks a buffer to the columns the code reads: the padding past qw must be written to
    stay. 8 channels x 10 rows of a 16-float pitch: 5120 bytes (packed 10-float rows: 3200)."""
    import tvm

    from sparsec.lower.target import tvm_target

    w = np.zeros((4, 8, 9), np.float32)
    w[:, :, [1, 3, 4, 5]] = 1.0

    def workspaces(block: int) -> list[int]:
        kernel = pattern_conv_kernel(build_fkw(w.reshape(4, 8, 3, 3)), (1, 8, 8, 8), target=AVX2,
                                     knobs=PatternConvKnobs(channel_block=block, filter_splits=1))
        ll = tvm.compile(kernel.func, target=tvm_target(AVX2)).mod.inspect_source("ll")
        return [int(b) for b in re.findall(r"call ptr %\d+\(i32 1, i32 %dev_id, i64 (\d+)", ll)]

    assert workspaces(4)[0] == 8 * 10 * 16 * 4 and workspaces(0) == [8 * 10 * 10 * 4]  # (then the partial sums)


@pytest.mark.parametrize("target, shape, knobs, pool, residual", [
    (AVX2, (1, 8, 12, 12), {"pair_rows": 0}, False, False),  # a 12-wide plane: 8 + 4 columns, the last tile sticks out
    (AVX2, (1, 8, 12, 12), {"pair_rows": 0}, False, True),
    (AVX2, (1, 8, 12, 12), {"rows_per_step": 4}, True, False),  # pooled: 2 of the last tile's 4 windows
    (AVX2, (1, 8, 14, 14), {"channel_block": 4, "filter_splits": 1}, False, False),  # channel blocks
    (AVX512, (1, 8, 24, 24), {"pair_rows": 0}, False, False),  # 16 lanes: 24 = 16 + 8 (L1's 56 = 3 x 16 + 8)
    (AVX2, (1, 8, 28, 28), {"pair_rows": 1}, False, True),  # the last column's rows in pairs
    (AVX2, (1, 8, 12, 11), {"pair_rows": 1}, False, False),  # ... its tile sticking out (3 of 4 columns)
    (AVX512, (1, 8, 24, 24), {"pair_rows": 1}, False, False),
    (AVX512, (1, 8, 24, 24), {"sum_chains": 2, "tap_copies": 3, "rows_per_step": 6}, True, True),  # two sets of sums
    (AVX512, (1, 8, 28, 28), {"register_shifts": 2, "channel_block": 4}, False, True),  # a set per tap column
])
def test_accumulators_are_only_indexed_by_constants(target, shape, knobs, pool, residual):
    """Tiles sticking out of the plane store their columns one by one: a loop over them indexed the
    accumulators with its variable, and LLVM then kept them in memory around every pattern loop of
    every tile (28- and 14-wide planes ran 1.02-1.13x slower on znver3; with AVX-512's 16 lanes every
    tile of L1's 56-wide plane stored and reloaded its accumulators; the results were right)."""
    rng = np.random.default_rng(3)
    kernel = pattern_conv_kernel(build_fkw(pruned(rng, 4, shape[1])), shape, target=target, pool=pool,
                                 residual=residual, knobs=PatternConvKnobs(**knobs))
    indices = re.findall(r"\b(?:acc|odd|column\d)(?:_\d+)?\[([^\]]*)\]", kernel.func.script())
    assert indices  # the buffer is named `acc`
    constant = r"\d+, \d+, (\d+|\d+:\d+|T\.Ramp\(\d+, 1, \d+\))"
    assert [i for i in indices if not re.fullmatch(constant, i)] == []


def test_auto_rows_pad_the_height_least():
    rows = lambda shape, target=AVX2, **knobs: resolve_knobs(  # noqa: E731
        shape, knobs=PatternConvKnobs(**knobs), target=target).rows_per_step
    assert rows((1, 8, 56, 56)) == 8  # AVX2: 16 registers leave 8 accumulators
    assert rows((1, 8, 28, 28)) == 7
    assert rows((1, 8, 12, 12)) == 6
    assert rows((1, 8, 28, 28), rows_per_step=3) == 3
    assert rows((1, 8, 28, 28), vectors_per_step=2) == 4
    assert rows((1, 8, 56, 56), filters_per_group=2) == 4
    assert rows((1, 8, 56, 56), AVX512) == 14  # 32 registers leave 14
    assert rows((1, 8, 12, 12), AVX512, register_shifts=0) == 12
    assert rows((1, 8, 12, 12), AVX512) == 6  # shifted sums: 3 sets of at most 7 rows
    assert rows((1, 8, 7, 7), AVX512) == 7  # never more rows than the plane has
    assert rows((1, 8, 56, 56), AVX512, filters_per_group=4) == 4  # groups: 16 accumulators
    assert rows((1, 8, 56, 56), AVX512, filters_per_group=2) == 7  # pairs: 14 accumulators


def test_kernel_groups_share_loads_as_the_register_plan_says():
    """The IR groups 4 filters whose kernels coincide; AVX-512's kernels take them in pairs (7 rows
    each), AVX2's all 4 (2 rows); knobs from a tuning log still choose."""
    from sparsec.driver import import_model, optimize
    from sparsec.lower.layers import generator_knobs
    from sparsec.models import conv_layer
    from sparsec.prune import prune_model
    from sparsec.tuning.task import kernel_call

    model = conv_layer((1, 16, 14, 14), 8)
    module = optimize(import_model(model, prune_model(model, keep_kernels=0.5, prune_first_conv=True,
                                                      kernel_groups=4)), target=AVX512)
    op = next(op for op in module.ops if op.name == "conv2d")
    assert op.filter_groups == (4, 4)
    call = kernel_call(op, module)
    assert generator_knobs(call, None, AVX512).filters_per_group == 2
    assert generator_knobs(call, None, AVX2).filters_per_group == 4
    assert generator_knobs(call, {"filters_per_group": 4}, AVX512).filters_per_group == 4


def test_a_pooled_conv_keeps_its_whole_kernel_groups():
    """AVX-512's pairs take 7 rows of a 14-row plane: no row pairs for a fused max pool, so the pooled
    kernel takes the IR's whole groups (4 filters x 2 rows); the conv alone keeps the pairs, and a
    tuning log's filters stand."""
    import dataclasses

    from sparsec.driver import import_model, optimize
    from sparsec.ir.knobs import Knobs
    from sparsec.lower.layers import layer_kernel, pooled_conv_kernel
    from sparsec.models._graph import GraphBuilder
    from sparsec.prune import prune_model

    g = GraphBuilder(0)
    pooled = g.maxpool("pool", g.relu("relu", g.conv("conv", "conv", "input", 4, 8, 3)), kernel=2, stride=2, pad=0)
    model = g.finish("conv_pool", (1, 4, 14, 14), (1, 8, 7, 7), pooled)
    masks = prune_model(model, keep_kernels=0.5, prune_first_conv=True, kernel_groups=4)
    module = optimize(import_model(model, masks), target=AVX512)
    op = next(op for op in module.ops if op.name == "conv2d")
    assert op.filter_groups == (4, 4)
    assert layer_kernel(op, module, AVX512).knobs["rows_per_step"] == 7
    whole = pooled_conv_kernel(op, module, AVX512)
    assert (whole.knobs["filters_per_group"], whole.knobs["rows_per_step"]) == (4, 2)
    tuned = dataclasses.replace(op, knobs=Knobs.of({"filters_per_group": 2}))
    assert pooled_conv_kernel(tuned, module.replace(ops=tuple(tuned if o is op else o for o in module.ops)),
                              AVX512) is None


def test_width_and_vectors_come_from_the_target():
    # a 7-wide plane on AVX-512: half-width vectors (7 of 8 lanes, not 7 of 16); 14-wide: shifted sums, 7 rows
    for target, size, lanes, vectors, rows in ((AVX2, 56, 8, 1, 8), (AVX512, 56, 16, 1, 14), (ARM64, 56, 4, 2, 8),
                                               (ARM64, 28, 4, 1, 14), (AVX512, 14, 16, 1, 7), (AVX512, 7, 8, 1, 7),
                                               (AVX2, 4, 4, 1, 4)):
        knobs = resolve_knobs((1, 8, size, size), target=target)
        # NEON: the tile (16 accumulators at most) that pads the plane least: 56 = 7 x 8, 28 = 7 x 4
        assert (knobs.vector_width, knobs.vectors_per_step, knobs.rows_per_step) == (lanes, vectors, rows)


@pytest.mark.parametrize("chains", [1, 2])
def test_unpruned_and_odd_tap_counts(chains):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 3, 7, 9)).astype(np.float32)
    dense = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)  # one 9-tap pattern
    three = dense * np.array([1, 0, 0, 0, 1, 0, 0, 0, 1], np.float32).reshape(3, 3)  # 3 taps
    for w in (dense, three):
        kernel = pattern_conv_kernel(build_fkw(w), x.shape, target=HOST, knobs=PatternConvKnobs(sum_chains=chains))
        got = run_kernel(kernel, HOST, x)
        np.testing.assert_allclose(got, reference_conv(x, w, (1, 1), (1,) * 4, (1, 1)), rtol=1e-4, atol=1e-4)


TWO_CHAINS = [
    ((2, 11, 10, 17), {"strides": (2, 2), "bias": True, "act": Activation("relu")}, {"channel_block": 4}),
    ((1, 11, 10, 17), {"residual": True}, {"filters_per_group": 3, "channel_block": 5, "filter_splits": 2}),
    ((1, 6, 13, 30), {"dilations": (2, 1), "pads": (2, 1, 0, 2)}, {"tap_copies": 3, "prefetch": 2}),
    ((1, 6, 14, 28), {"residual": True}, {"register_shifts": 1, "tap_copies": 1, "rows_per_step": 7}),
    ((1, 6, 12, 28), {}, {"pair_rows": 1, "vector_width": 8, "rows_per_step": 3}),
]


@pytest.mark.parametrize("x_shape, kwargs, knobs", TWO_CHAINS,
                         ids=["strided-blocks", "groups-splits", "dilated-copies", "shifted", "pairs"])
def test_two_chains_of_sums(x_shape, kwargs, knobs):
    """The odd tap slots' products in a second set of sums that joins the first at the end of each
    block: channel blocks, filter groups and slices, strides, dilation and asymmetric pads, rows
    shifted in registers, the last column's rows in pairs; against the reference."""
    check(x_shape, 7, knobs=PatternConvKnobs(sum_chains=2, **knobs), **kwargs)


def test_two_chains_of_sums_in_the_code_and_the_plan():
    """2 sets where both fit the plain plan's accumulators (7-row tiles of tap copies on AVX-512), else
    1 (14-row tiles; AVX2's 8 accumulators); the kernel's second set is a buffer of its own, only where
    asked for."""
    plan = lambda shape, target=AVX512, **knobs: resolve_knobs(  # noqa: E731
        shape, knobs=PatternConvKnobs(**knobs), target=target, filters=256, kept=0.5).sum_chains
    assert (plan((1, 256, 14, 14), register_shifts=0), plan((1, 256, 56, 56)),
            plan((1, 128, 28, 28), register_shifts=1)) == (2, 2, 1)
    assert plan((1, 256, 14, 14)) == 1  # shifted sums: the tap columns' sets are the chains
    assert (plan((1, 256, 56, 56), target=AVX2), plan((1, 256, 14, 14), rows_per_step=14)) == (1, 1)
    rng = np.random.default_rng(5)
    fkw = build_fkw(pruned(rng, 4, 8))
    scripts = [pattern_conv_kernel(fkw, (1, 8, 12, 12), target=HOST, knobs=PatternConvKnobs(sum_chains=chains))
               .func.script() for chains in (1, 2)]
    assert [len(re.findall(r"\bodd(?:_\d+)?\[", script)) > 0 for script in scripts] == [False, True]


def test_bad_sum_chains():
    with pytest.raises(ValueError, match=r"knob sum_chains must be 1 or 2 \(or 0: the target's choice\), got 3"):
        PatternConvKnobs(sum_chains=3)


def test_the_tuning_space_offers_row_pairs_and_zero_settings():
    """The tuner may pair the last column's rows where they fit (never with sliced filters), and
    keeps the knobs' 0 ("none") candidates although the default is another value (a second bounds
    filter once dropped every 0: no trial ran a layer in one block of channels where blocks were the
    default)."""
    from sparsec.driver import import_model, optimize
    from sparsec.lower.spaces import space_for
    from sparsec.models import conv_layer
    from sparsec.prune import prune_model
    from sparsec.tuning.task import extract_tasks

    def space(shape):
        model = conv_layer(shape, 32)
        module = optimize(import_model(model, prune_model(model, keep_kernels=0.5, prune_first_conv=True)),
                          target=AVX2)
        return space_for(extract_tasks(module, AVX2)[0].call, AVX2)

    wide = space((1, 256, 28, 28))
    values = {k.name: k.values for k in wide.knobs}
    assert values["pair_rows"] == (0, 1) and wide.default["pair_rows"] == 1
    assert wide.default["channel_block"] == 64 and values["channel_block"] == (0, 16, 32, 64, 128)
    assert wide.rule(dict(wide.default)) is None
    assert wide.rule(dict(wide.default, filter_splits=2)) == (
        "row pairs in the last column: 1 vectors of 8 lanes on a 28x28 output (stride 1 down), 7 rows, 2 slices")
    narrow = space((1, 64, 14, 14))
    assert narrow.default["pair_rows"] == 0 and narrow.rule(dict(narrow.default, pair_rows=1)).startswith(
        "row pairs in the last column: 1 vectors of 8 lanes on a 14x14 output")


def test_the_tuning_space_counts_the_shifted_sums_sets():
    """AVX-512's space offers the shifted sums (its default on a 28-wide plane) and counts their 3 sets
    against the accumulators: 7 rows fit (21 sums), 10 do not (30 of 28); two chains do not go with them."""
    from sparsec.driver import import_model, optimize
    from sparsec.lower.spaces import space_for
    from sparsec.models import conv_layer
    from sparsec.prune import prune_model
    from sparsec.tuning.task import extract_tasks

    model = conv_layer((1, 64, 28, 28), 32)
    module = optimize(import_model(model, prune_model(model, keep_kernels=0.5, prune_first_conv=True)), target=AVX512)
    space = space_for(extract_tasks(module, AVX512)[0].call, AVX512)
    assert {k.name: k.values for k in space.knobs}["register_shifts"] == (0, 1, 2)
    assert (space.default["register_shifts"], space.default["rows_per_step"]) == (2, 7)
    assert space.rule(dict(space.default)) is None
    assert space.rule(dict(space.default, rows_per_step=10)) == "more than 28 accumulators"
    assert space.rule(dict(space.default, register_shifts=1, rows_per_step=10)) is None
    assert space.rule(dict(space.default, sum_chains=2)) == (
        "two chains of sums with the sums shifted (their tap columns' sets are the chains)")
    # one loop with run-time taps: offered, not with the shifted rows (its table addresses unshifted ones)
    assert {k.name: k.values for k in space.knobs}["runtime_taps"] == (0, 1) and space.default["runtime_taps"] == 0
    assert space.rule(dict(space.default, runtime_taps=1)) == (
        "one loop with the taps read at run time on shifted tile rows or paired rows")
    assert space.rule(dict(space.default, runtime_taps=1, register_shifts=0, sum_chains=1)) is None


KNOB_VALUES = {"filters_per_group": [1, 2, 4], "rows_per_step": [0, 1, 2, 3, 4, 5, 7, 8, 14],
               "vector_width": [0, 4, 8, 16], "vectors_per_step": [0, 1, 2, 3],
               "channel_block": [-1, 0, 2, 3, 4, 8, 16], "tap_copies": [0, 1, 3], "filter_splits": [0, 1, 2, 3],
               "prefetch": [-1, 0, 1, 2], "prefetch_next_tile": [-1, 0, 1], "pair_rows": [-1, 0, 1],
               "register_shifts": [-1, 0, 1, 2], "runtime_taps": [-1, 0, 1], "sum_chains": [0, 1]}


@settings(max_examples=60, deadline=None, derandomize=True)
@given(knobs=st.fixed_dictionaries({k: st.sampled_from(v) for k, v in KNOB_VALUES.items()}),
       batch=st.integers(1, 2), channels=st.integers(1, 12), height=st.integers(5, 32),
       width=st.sampled_from([5, 9, 13, 14, 17, 28, 30, 32]), filters=st.integers(1, 9), stride=st.integers(1, 2),
       dilation=st.integers(1, 2), pads=st.tuples(*[st.integers(0, 2)] * 4), bias=st.booleans(),
       residual=st.booleans(), keep=st.sampled_from([0.3, 0.5, 1.0]))
def test_any_knob_set_the_kernel_takes_computes_the_conv(knobs, batch, channels, height, width, filters, stride,
                                                         dilation, pads, bias, residual, keep):
    """Random knob sets (the tuner's axes and values past them) on random shapes: the kernel either refuses
    the set with a message naming the knob, or matches the reference. (A 4-lane shifted row at dilation 2,
    whose halo fills the vector, once raised ZeroDivisionError while the tiles were sized.)"""
    try:
        check((batch, channels, height, width), filters, strides=(stride, stride), pads=pads,
              dilations=(dilation, dilation), bias=bias, residual=residual, keep=keep,
              knobs=PatternConvKnobs(**knobs))
    except ValueError as err:
        assert str(err).startswith("knob "), str(err)
