"""Winograd's plan without TVM: its matrices, the output tile it picks, and the cost model weighing a
dense 3x3 conv by Winograd's estimate against the pattern kernel (analyze-sparsity on a target)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.driver import import_model, optimize
from sparsec.lower.kernels.winograd_plan import TRANSFORMS, Geometry, algorithm_work, auto_tile, plan, work_ratio
from sparsec.models import conv_layer
from sparsec.prune import prune_model
from sparsec.target import resolve

HOST = resolve("host", host_cpu="znver5", spec='{"isa": "avx512"}')


@pytest.mark.parametrize("m", sorted(TRANSFORMS))
def test_winograd_transforms_compute_the_correlation(m):
    """A^T [(G g G^T) * (B^T d B)] A is the valid 3x3 correlation of an (m+2)^2 tile, exactly in float64."""
    at, g_mat, bt = TRANSFORMS[m]
    rng = np.random.default_rng(m)
    d, g = rng.standard_normal((m + 2, m + 2)), rng.standard_normal((3, 3))
    want = [[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(m)] for i in range(m)]
    np.testing.assert_allclose(at @ ((g_mat @ g @ g_mat.T) * (bt @ d @ bt.T)) @ at.T, want, atol=1e-12)



@pytest.mark.parametrize("filters, in_shape, want", [
    (64, (1, 64, 224, 224), 4), (256, (1, 256, 56, 56), 4), (512, (1, 512, 14, 14), 4),
    (512, (1, 512, 7, 7), 2),  # F(4x4) would pad 4 tiles to a 16-lane vector
    (64, (1, 3, 224, 224), 1),  # 3 channels: the transforms would dominate
    (10, (1, 5, 13, 11), 1),
])
def test_winograd_auto_tile(filters, in_shape, want):
    assert auto_tile(filters, in_shape, (1, 1, 1, 1), 14, 2, 16) == want


def test_work_ratio_is_the_estimate_over_direct():
    # F(4x4) on VGG conv3: 36 products per 16 outputs (a quarter of direct's) plus the transforms
    assert 0.25 < work_ratio(256, (1, 256, 56, 56), (1, 1, 1, 1), 14, 2, 16) < 0.4
    assert work_ratio(64, (1, 3, 224, 224), (1, 1, 1, 1), 14, 2, 16) == 1.0  # stays direct


def test_algorithm_work_only_for_what_winograd_runs():
    args = dict(pads=(1, 1, 1, 1), target=HOST)
    assert algorithm_work((256, 256, 3, 3), (1, 256, 56, 56), **args) < 0.4
    assert algorithm_work((256, 256, 3, 3), (1, 256, 56, 56), strides=(2, 2), **args) == 1.0
    assert algorithm_work((256, 256, 3, 3), (1, 256, 56, 56), dilations=(2, 2), **args) == 1.0
    assert algorithm_work((256, 256, 1, 1), (1, 256, 56, 56), target=HOST) == 1.0


@pytest.mark.parametrize("keep, want", [(1.0, "dense"), (0.3, "pattern")])
def test_the_cost_model_weighs_dense_3x3_convs_as_winograd(keep, want):
    """Pattern pruning alone keeps 4 of 9 taps: at the pattern kernel's throughput (AVX-512's shipped
    1.02 of direct's) that costs ~0.5 of direct (its padded tiles), Winograd about 0.35: dense wins
    (measured on znver4, 256 channels at 56x56: dense 1.2x faster); with 30% of the kernels kept the
    pattern kernel wins."""
    model = conv_layer((1, 256, 56, 56), 256)
    module = import_model(model, prune_model(model, keep_kernels=keep, prune_first_conv=True))
    optimized = optimize(module, target=HOST)
    (conv,) = [op for op in optimized.ops if op.name == "conv2d"]
    assert optimized.weight(conv.weight).layout.kind in ({"fkw", "pattern"} if want == "pattern" else {"dense"})
    # without a target the cost model knows only the direct conv: patterns either way
    assert optimize(module).weight(next(op for op in optimize(module).ops if op.name == "conv2d").weight
                                   ).layout.kind in {"fkw", "pattern"}


@pytest.mark.parametrize("in_shape, filters, keep, first, want", [
    ((1, 512, 28, 28), 512, 0.5, True, "pattern"),  # measured on znver4: the pattern kernel 1.76x faster
    ((1, 3, 224, 224), 64, 1.0, False, "pattern"),  # a stem's full kernels: 1.55x over the direct conv
    ((1, 256, 56, 56), 256, 1.0, True, "dense"),  # 4 of 9 taps, every kernel kept: Winograd 1.2x faster
])
def test_avx512_shipped_throughputs_pick_the_faster_format(in_shape, filters, keep, first, want):
    """AVX-512's shipped throughputs (znver4's, session 37) pick what `benchmarks/bench_format_choice.py`
    and the stem A/Bs measured faster there; znver5's (pattern 0.65, CSR 0.54) sent the first two dense."""
    model = conv_layer(in_shape, filters)
    module = import_model(model, prune_model(model, keep_kernels=keep, prune_first_conv=first))
    optimized = optimize(module, target=HOST)
    (conv,) = [op for op in optimized.ops if op.name == "conv2d"]
    assert optimized.weight(conv.weight).layout.kind in ({"fkw", "pattern"} if want == "pattern" else {"dense"})


def test_a_slow_winograd_kernel_counts_its_estimate_over_its_throughput():
    """The target's Winograd throughput divides the estimate: at 0.5 F(4x4) on VGG conv3 costs
    twice its estimate, and where that passes direct's work the dense conv runs direct."""
    shape, pads = (1, 256, 56, 56), (1, 1, 1, 1)
    estimate = work_ratio(256, shape, pads, 14, 2, 16)
    assert work_ratio(256, shape, pads, 14, 2, 16, speed=0.5) == pytest.approx(2 * estimate)
    assert auto_tile(256, shape, pads, 14, 2, 16, speed=0.5) == 4
    assert auto_tile(256, shape, pads, 14, 2, 16, speed=estimate * 0.99) == 1  # direct: estimate / speed > 1
    assert work_ratio(256, shape, pads, 14, 2, 16, speed=estimate * 0.99) == 1.0
    slow = resolve("host", host_cpu="znver5", spec='{"isa": "avx512", "throughputs": '
                                                   '{"pattern": 0.65, "csr": 0.54, "winograd": 0.5}}')
    assert algorithm_work((256, 256, 3, 3), shape, pads=pads, target=slow) == pytest.approx(
        2 * algorithm_work((256, 256, 3, 3), shape, pads=pads, target=HOST))


@pytest.mark.parametrize("winograd, want", [(1.0, "dense"), (0.45, "pattern")])
def test_a_slow_winograd_kernel_leaves_half_kept_layers_to_the_pattern_kernel(winograd, want):
    """L1 (256 channels at 56x56, 8 patterns, half the kernels kept) with the pattern kernel at 0.7
    of direct: 0.22 / 0.7 = 0.32 of direct's time against Winograd's estimate of about 0.3 (dense
    wins) or 0.3 / 0.45 = 0.67 where Winograd runs at 0.45 of its estimate (measured on znver3:
    Winograd F(4x4) 13.9-19 ms, the pattern kernel 6.4-9 ms)."""
    spec = '{"isa": "avx2", "throughputs": {"pattern": 0.7, "csr": 0.55, "winograd": %s}}' % winograd
    target = resolve("host", host_cpu="znver3", spec=spec)
    model = conv_layer((1, 256, 56, 56), 256)
    module = import_model(model, prune_model(model, keep_kernels=0.5, prune_first_conv=True))
    (conv,) = [op for op in optimize(module, target=target).ops if op.name == "conv2d"]
    layout = optimize(module, target=target).weight(conv.weight).layout.kind
    assert layout in ({"fkw", "pattern"} if want == "pattern" else {"dense"})


def test_one_gemm_block_runs_at_its_estimate_whatever_the_targets_winograd_throughput():
    """The target's Winograd throughput covers planes of several blocks of tiles; a 7x7 or 14x14
    plane (16 tiles: one block of AVX2's 2 x 8 lanes) ran at or above its estimate's speed on znver3."""
    assert plan(Geometry.of(1, 512, 7, 7, 512, (1, 1, 1, 1), 2), 6, 2, 8).pp == 16
    for shape in ((1, 512, 7, 7), (1, 256, 14, 14)):
        assert auto_tile(shape[1], shape, (1, 1, 1, 1), 6, 2, 8, speed=0.3) == auto_tile(
            shape[1], shape, (1, 1, 1, 1), 6, 2, 8) > 1
        assert work_ratio(shape[1], shape, (1, 1, 1, 1), 6, 2, 8, speed=0.3) == work_ratio(
            shape[1], shape, (1, 1, 1, 1), 6, 2, 8)
    big = (1, 256, 28, 28)  # 49 tiles: 4 blocks
    assert work_ratio(256, big, (1, 1, 1, 1), 6, 2, 8, speed=0.5) == pytest.approx(
        2 * work_ratio(256, big, (1, 1, 1, 1), 6, 2, 8))


def test_the_pattern_kernels_padded_tiles_count_in_its_cost():
    """A 7-wide plane in 8-lane vectors computes 8 columns: the pattern kernel's cost is 8/7 of its
    kept multiply-adds. 512 channels at 7x7 with every kernel kept (4 of 9 taps), pattern at 0.74:
    0.444 x 1.14 / 0.74 = 0.69 of direct against dense Winograd's estimate 0.65 (one GEMM block):
    dense, as measured on znver3 (dense 1.12-1.20x faster); unpadded, 0.60 went to pattern."""
    from sparsec.lower.kernels.pattern_conv import padded_work

    avx2 = resolve("host", host_cpu="znver3", spec='{"isa": "avx2"}')
    assert padded_work((1, 8, 28, 28), target=avx2) == 1.0  # 3 x 8 + 4 columns: the last 4 in row pairs
    assert padded_work((1, 8, 28, 28), (2, 2), target=avx2) == pytest.approx(16 / 14)  # 14 = 8 + 6 columns
    assert padded_work((1, 8, 56, 56), target=avx2) == 1.0 and padded_work((1, 8, 7, 7), target=avx2) == 8 / 7
    model = conv_layer((1, 512, 7, 7), 512)
    module = import_model(model, prune_model(model, keep_kernels=1.0, prune_first_conv=True))
    fast = resolve("host", host_cpu="znver3", spec='{"isa": "avx2", "throughputs": {"pattern": 0.74, "csr": 0.65}}')
    (conv,) = [op for op in optimize(module, target=fast).ops if op.name == "conv2d"]
    assert optimize(module, target=fast).weight(conv.weight).layout.kind == "dense"
