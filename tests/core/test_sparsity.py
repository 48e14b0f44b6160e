"""Sparsity statistics: tap sets, pattern histograms, kernel counts, MACs (property tests)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sparsec.sparsity import (
    LayerStats,
    bits_of,
    conv_macs,
    density,
    empty_kernels,
    fc_macs,
    kernel_tap_sets,
    layer_kind,
    layer_stats,
    pattern_histogram,
    taps_of,
    total_kernels,
    totals_of,
)

# Small values with many zeros, so empty kernels and repeated tap sets are common.
VALUES = st.sampled_from([0.0, 0.0, 0.0, 1.0, -2.0, 0.5])
conv3x3 = arrays(
    np.float32, st.tuples(st.integers(1, 5), st.integers(1, 5), st.just(3), st.just(3)), elements=VALUES
)
any_weight = arrays(
    np.float32,
    st.one_of(
        st.tuples(st.integers(1, 6), st.integers(1, 6)),
        st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)),
    ),
    elements=VALUES,
)


def test_tap_numbering_is_row_major_with_centre_4():
    w = np.zeros((1, 1, 3, 3))
    w[0, 0, 1, 1] = w[0, 0, 0, 2] = w[0, 0, 2, 0] = 1
    assert kernel_tap_sets(w)[0, 0] == bits_of((2, 4, 6)) == 0b001010100
    assert taps_of(0b001010100) == (2, 4, 6)


def test_taps_bits_round_trip():
    assert all(bits_of(taps_of(b)) == b for b in range(512))


def test_kernel_tap_sets_needs_3x3():
    with pytest.raises(ValueError):
        kernel_tap_sets(np.ones((2, 2, 1, 1)))


@given(conv3x3)
def test_tap_sets_match_nonzeros(w):
    sets = kernel_tap_sets(w)
    assert sets.shape == w.shape[:2]
    for (o, i), bits in np.ndenumerate(sets):
        assert taps_of(int(bits)) == tuple(np.flatnonzero(w[o, i].ravel()))


@given(conv3x3)
def test_histogram_counts_the_non_empty_kernels(w):
    hist = pattern_histogram(w)
    assert sum(hist.values()) == total_kernels(w) - empty_kernels(w)
    assert all(taps and count > 0 for taps, count in hist.items())
    assert pattern_histogram(w != 0) == hist  # a mask and its weight agree
    order = [(-count, taps) for taps, count in hist.items()]
    assert order == sorted(order)  # most frequent first, then by taps


@given(any_weight)
def test_kernel_counts_and_density(w):
    assert 0 <= empty_kernels(w) <= total_kernels(w) == w.shape[0] * w.shape[1]
    assert 0.0 <= density(w) <= 1.0
    assert density(w) == np.count_nonzero(w) / w.size
    assert density(w) > 0 or empty_kernels(w) == total_kernels(w)


@given(any_weight, st.integers(1, 3), st.integers(1, 5), st.integers(1, 5))
def test_layer_stats_invariants(w, batch, h, wo):
    out_shape = (batch, w.shape[0]) if w.ndim == 2 else (batch, w.shape[0], h, wo)
    s = layer_stats("w", w, out_shape)
    assert s.macs_kept <= s.macs_dense
    assert s.macs_kept == np.count_nonzero(w) * (s.macs_dense // w.size)
    assert s.kind == layer_kind(w.shape) and s.n_patterns == len(s.histogram)
    assert (s.histogram != ()) == (w.shape[2:] == (3, 3) and np.count_nonzero(w) > 0)
    t = totals_of([s, s])
    assert t.macs_dense == 2 * s.macs_dense and t.params_kept == 2 * s.nonzeros
    assert t.mac_reduction >= 1.0


def test_conv_macs_counts_each_weight_once_per_output_position():
    # A 3x3 conv, 64 -> 128 channels, on a 56x56 output: 128*64*9 weights x 56*56 positions.
    assert conv_macs((128, 64, 3, 3), (1, 128, 56, 56)) == (128 * 64 * 9 * 3136,) * 2
    assert conv_macs((128, 64, 3, 3), (2, 128, 56, 56), nonzeros=10) == (2 * 128 * 64 * 9 * 3136, 2 * 10 * 3136)
    # Depthwise: the weight shape already holds I/groups = 1.
    assert conv_macs((32, 1, 3, 3), (1, 32, 8, 8), groups=32) == (32 * 9 * 64,) * 2
    assert fc_macs((1000, 4096), (4, 1000), nonzeros=5) == (4 * 4096000, 20)
    with pytest.raises(ValueError):
        conv_macs((8, 4, 3, 3), (1, 16, 4, 4))


def test_layer_kinds():
    assert layer_kind((64, 64, 3, 3)) == "conv3x3"
    assert layer_kind((64, 1, 3, 3), groups=64) == "conv"
    assert layer_kind((64, 64, 1, 1)) == "conv"
    assert layer_kind((10, 64)) == "fc"


def test_layer_stats_is_frozen():
    s = layer_stats("c", np.ones((2, 2, 3, 3)), (1, 2, 4, 4))
    assert isinstance(s, LayerStats) and s.histogram == (((0, 1, 2, 3, 4, 5, 6, 7, 8), 4),)
    with pytest.raises(AttributeError):
        s.density = 0.5  # type: ignore[misc]
