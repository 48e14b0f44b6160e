"""FKW storage: round trips, index dtypes, pattern derivation, filter order, errors (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.fkw import (
    FKW,
    build_fkw,
    default_filter_order,
    fkw_nbytes,
    fkw_to_dense,
    kernel_patterns,
    kernel_table,
)

PATTERNS = np.array(
    [[0, 1, 3, 4], [1, 2, 4, 5], [1, 3, 4, 5], [1, 3, 4, 7],
     [1, 4, 5, 7], [3, 4, 5, 7], [3, 4, 6, 7], [4, 5, 7, 8]]
)


def pruned(rng, filters, channels, keep=0.5, empty_filters=()):
    """Random pattern per kernel, a random `keep` fraction of kernels kept, some filters empty."""
    w = rng.standard_normal((filters, channels, 9)).astype(np.float32)
    pid = rng.integers(0, len(PATTERNS), (filters, channels))
    mask = np.zeros(w.shape, bool)
    mask[np.arange(filters)[:, None, None], np.arange(channels)[None, :, None], PATTERNS[pid]] = True
    mask &= (rng.random((filters, channels)) < keep)[:, :, None]
    mask[list(empty_filters)] = False
    return (w * mask).reshape(filters, channels, 3, 3)


@pytest.mark.parametrize("filters,channels", [(8, 5), (33, 17), (3, 300)])
def test_round_trip(filters, channels):
    w = pruned(np.random.default_rng(filters), filters, channels, empty_filters=(1,))
    fkw = build_fkw(w)
    assert np.array_equal(fkw_to_dense(fkw, channels), w)
    assert fkw.num_kernels == int(np.count_nonzero(np.abs(w).sum(axis=(2, 3))))


def test_round_trip_with_given_patterns_and_order():
    w = pruned(np.random.default_rng(1), 10, 12)
    order = np.arange(10)[::-1]
    fkw = build_fkw(w, patterns=PATTERNS, filter_order=order)
    assert np.array_equal(fkw.patterns, np.sort(PATTERNS, axis=1))
    assert np.array_equal(fkw.filter_order, order)
    assert np.array_equal(fkw_to_dense(fkw, 12), w)


def test_all_empty_weight():
    fkw = build_fkw(np.zeros((4, 3, 3, 3), np.float32), patterns=PATTERNS)
    assert fkw.num_kernels == 0 and fkw.offset.tolist() == [0] * 5
    assert not fkw_to_dense(fkw, 3).any()


def test_smallest_dtypes():
    small = build_fkw(pruned(np.random.default_rng(2), 16, 200))
    assert small.index.dtype == np.uint8 and small.filter_order.dtype == np.uint8
    assert small.patterns.dtype == np.uint8 and small.stride.dtype == np.uint8
    assert small.offset.dtype == np.uint16  # ~1600 kernels
    wide = build_fkw(pruned(np.random.default_rng(3), 300, 300, keep=0.95))
    assert wide.index.dtype == np.uint16 and wide.filter_order.dtype == np.uint16
    assert wide.stride.dtype == np.uint16  # a filter keeps > 255 kernels
    assert wide.offset.dtype == np.uint32


def test_layout_kernels_sorted_by_pattern_and_stride_relative():
    fkw = build_fkw(pruned(np.random.default_rng(4), 6, 40))
    for slot in range(fkw.num_filters):
        start, stop = int(fkw.offset[slot]), int(fkw.offset[slot + 1])
        assert fkw.stride[slot, 0] == 0 and fkw.stride[slot, -1] == stop - start
        counts = fkw.pattern_counts()[slot]
        assert counts.sum() == stop - start and (counts >= 0).all()


def test_derived_patterns_merge_strict_subsets():
    w = np.zeros((2, 3, 9), np.float32)
    w[0, 0, [1, 3, 4, 5]] = 1.0  # a full pattern
    w[0, 1, [3, 4]] = 2.0  # a strict subset of it: no pattern of its own
    w[1, 2, [4, 5, 7, 8]] = 3.0
    w = w.reshape(2, 3, 3, 3)
    patterns, ids = kernel_patterns(w)
    assert patterns.tolist() == [[1, 3, 4, 5], [4, 5, 7, 8]]
    assert ids.tolist() == [[0, 0, -1], [-1, -1, 1]]
    fkw = build_fkw(w)
    assert fkw.num_patterns == 2 and np.array_equal(fkw_to_dense(fkw, 3), w)


def test_derived_patterns_of_unequal_size_are_padded():
    w = np.zeros((1, 2, 9), np.float32)
    w[0, 0, [1, 3, 4, 5]] = 1.0
    w[0, 1, [0, 4, 8]] = 1.0  # a 3-tap set inside no 4-tap set
    w = w.reshape(1, 2, 3, 3)
    fkw = build_fkw(w)
    assert fkw.patterns.shape == (2, 4)
    assert np.array_equal(fkw_to_dense(fkw, 2), w)


def test_kernel_fitting_no_pattern_names_filter_and_channel():
    w = np.zeros((3, 4, 9), np.float32)
    w[2, 1, [0, 2, 4, 6]] = 1.0
    with pytest.raises(ValueError, match=r"filter 2, input channel 1"):
        build_fkw(w.reshape(3, 4, 3, 3), patterns=PATTERNS)


@pytest.mark.parametrize("bad", [np.zeros((2, 3, 3)), np.zeros((2, 3, 5, 5))])
def test_bad_weight_shape(bad):
    with pytest.raises(ValueError, match="shape"):
        build_fkw(bad)


def test_bad_filter_order():
    w = pruned(np.random.default_rng(5), 4, 4)
    with pytest.raises(ValueError, match="permutation"):
        build_fkw(w, filter_order=np.array([0, 1, 1, 2]))


def test_default_filter_order_sorts_by_count_then_histogram_stably():
    w = np.zeros((5, 4, 9), np.float32)
    w[0, :1, [4, 5, 7, 8]] = 1.0  # 1 kernel
    w[1, :3, [4, 5, 7, 8]] = 1.0  # 3 kernels of pattern B
    w[2, :3, [0, 1, 3, 4]] = 1.0  # 3 kernels of pattern A (sorts first: A is pattern 0)
    w[3, :1, [4, 5, 7, 8]] = 1.0  # ties with filter 0: stable
    order = default_filter_order(w.reshape(5, 4, 3, 3))
    assert order.tolist() == [2, 1, 0, 3, 4]
    assert order.dtype == np.uint8


def test_nbytes_counts_every_array():
    fkw = build_fkw(pruned(np.random.default_rng(6), 8, 8))
    arrays = (fkw.patterns, fkw.filter_order, fkw.offset, fkw.stride, fkw.index, fkw.weight)
    assert fkw_nbytes(fkw) == sum(a.nbytes for a in arrays)


def test_fkw_is_frozen():
    fkw = build_fkw(pruned(np.random.default_rng(7), 2, 2, keep=1.0))
    assert isinstance(fkw, FKW)
    with pytest.raises(AttributeError):
        fkw.index = fkw.index  # type: ignore[misc]


def table_to_dense(table, channels):
    """Rebuild the weight from a kernel table (groups of filters, channel blocks)."""
    width, taps = table.filters_per_group, len(table.patterns)
    dense = np.zeros((table.num_filters, channels, 9), np.float32)
    starts, counts = table.runs()
    for grp in range(table.num_groups):
        for run in range(starts.shape[1]):
            p = run % taps
            for k in range(starts[grp, run], starts[grp, run] + counts[grp, run]):
                c = int(table.index[k])
                assert c // table.channel_block == run // taps  # the kernel sits in its block
                for f in range(width):
                    slot = grp * width + f
                    if slot < table.num_filters:
                        dense[table.filter_order[slot], c, table.patterns[p]] += table.weight[k, f]
    return dense.reshape(-1, channels, 3, 3)


@pytest.mark.parametrize("width,block", [(1, 0), (2, 0), (3, 8), (1, 5)])
def test_kernel_table_round_trip(width, block):
    w = pruned(np.random.default_rng(8), 11, 23, empty_filters=(4,))
    fkw = build_fkw(w)
    table = kernel_table(fkw, 23, width, block)
    assert np.array_equal(table_to_dense(table, 23), w)


def test_kernel_table_without_grouping_is_the_fkw():
    fkw = build_fkw(pruned(np.random.default_rng(9), 7, 9))
    table = kernel_table(fkw, 9)
    for mine, theirs in zip(table.arrays(), (fkw.offset, fkw.stride, fkw.index)):
        assert np.array_equal(mine, theirs) and mine.dtype == theirs.dtype
    assert np.array_equal(table.weight[:, 0], fkw.weight)
