"""CSR sparse kernels (1x1 conv SpMM, sparse FC) against NumPy, incl. empty rows and tails."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.ir.activation import Activation
from sparsec.lower.kernels.common import run_kernel
from sparsec.lower.kernels.csr import Csr, CsrKnobs, csr_conv1x1_kernel, csr_dense_kernel
from sparsec.lower.target import host

pytestmark = pytest.mark.tvm
HOST = host()  # this machine, as it is (AVX2 or AVX-512)


def sparse(shape, density, seed=0, empty_rows=(1,)):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) >= density] = 0
    w[list(empty_rows)] = 0
    return w


def test_csr_packing_pads_rows_and_picks_small_dtypes():
    w = np.array([[0, 2, 0, 3], [0, 0, 0, 0], [1, 0, 0, 0]], np.float32)
    csr = Csr.of(w, unit=2)
    assert csr.rowptr.tolist() == [[0, 1, 1, 2]] and csr.rowptr.dtype == np.uint8
    assert csr.cols.dtype == np.uint8 and csr.cols[:4].tolist() == [1, 3, 0, 0]
    assert csr.vals[:4].tolist() == [2, 3, 1, 0]
    assert Csr.of(np.ones((2, 300), np.float32)).cols.dtype == np.uint16
    assert Csr.of(np.ones((2, 300), np.float32)).rowptr.dtype == np.uint16


def test_csr_column_blocks():
    w = np.array([[1, 0, 2, 3, 0], [0, 4, 0, 0, 5]], np.float32)
    csr = Csr.of(w, block=2)
    assert csr.blocks == 3 and csr.rowptr.tolist() == [[0, 1, 2], [2, 4, 4], [4, 4, 5]]
    assert csr.cols[:5].tolist() == [0, 1, 0, 1, 0]  # relative to the block's first column
    assert csr.vals[:5].tolist() == [1, 4, 2, 3, 5]


@pytest.mark.parametrize("in_shape, strides", [
    ((1, 16, 8, 8), (1, 1)),  # whole tiles
    ((1, 12, 5, 7), (1, 1)),  # 35 pixels: a narrow tail tile with single lanes
    ((2, 10, 9, 9), (2, 2)),  # strided: subsampled copy, 25 pixels
    ((1, 8, 6, 6), (1, 2)),
    ((1, 300, 4, 4), (1, 1)),  # three channel blocks, the last one partial
])
def test_conv1x1(in_shape, strides):
    n, c, h, w = in_shape
    weight = sparse((9, c, 1, 1), 0.3)
    x = np.random.default_rng(3).standard_normal(in_shape).astype(np.float32)
    got = run_kernel(csr_conv1x1_kernel(weight, in_shape, strides, target=HOST), HOST, x)
    xs = x[:, :, ::strides[0], ::strides[1]]
    want = np.einsum("oc,nchw->nohw", weight[:, :, 0, 0], xs)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv1x1_bias_activation_and_knobs():
    weight = sparse((7, 16, 1, 1), 0.2, empty_rows=(0, 6))
    bias = np.linspace(-1, 1, 7).astype(np.float32)
    x = np.random.default_rng(4).standard_normal((1, 16, 10, 10)).astype(np.float32)
    kernel = csr_conv1x1_kernel(weight, x.shape, bias=bias, activation=Activation("clip", (0.0, 6.0)),
                                knobs=CsrKnobs(vectors=1, out_groups=3, channel_block=5), target=HOST)
    got = run_kernel(kernel, HOST, x)
    want = np.clip(np.einsum("oc,nchw->nohw", weight[:, :, 0, 0], x) + bias.reshape(1, -1, 1, 1), 0, 6)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("in_shape, strides, knobs", [
    ((1, 12, 5, 7), (1, 1), CsrKnobs()),  # 35 pixels: whole vectors, then a tail of shorter ones
    ((2, 10, 9, 9), (2, 2), CsrKnobs()),  # strided (a ResNet downsample), batch 2
    ((1, 16, 10, 10), (1, 1), CsrKnobs(vectors=1, out_groups=3, channel_block=5)),  # partial sums between blocks
], ids=["tail", "stride2", "blocks"])
def test_conv1x1_residual_before_the_activation(in_shape, strides, knobs):
    weight = sparse((7, in_shape[1], 1, 1), 0.3, empty_rows=(0, 6))
    bias = np.linspace(-1, 1, 7).astype(np.float32)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(in_shape).astype(np.float32)
    xs = x[:, :, ::strides[0], ::strides[1]]
    r = (2 * rng.standard_normal((in_shape[0], 7, *xs.shape[2:]))).astype(np.float32)
    kernel = csr_conv1x1_kernel(weight, in_shape, strides, bias=bias, activation=Activation("relu"), knobs=knobs,
                                residual=True, target=HOST)
    got = run_kernel(kernel, HOST, x, r)
    want = np.maximum(np.einsum("oc,nchw->nohw", weight[:, :, 0, 0], xs) + bias.reshape(1, -1, 1, 1) + r, 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv1x1_all_zero_weight():
    x = np.ones((1, 4, 3, 3), np.float32)
    got = run_kernel(csr_conv1x1_kernel(np.zeros((5, 4, 1, 1), np.float32), x.shape, target=HOST), HOST, x)
    assert not got.any()


@pytest.mark.parametrize("m, k, n_out, chunk", [(1, 40, 17, 8), (3, 300, 33, 8), (2, 9, 5, 1), (1, 64, 8, 4)])
def test_dense(m, k, n_out, chunk):
    weight = sparse((n_out, k), 0.25)
    x = np.random.default_rng(5).standard_normal((m, k)).astype(np.float32)
    got = run_kernel(csr_dense_kernel(weight, (m, k), knobs=CsrKnobs(chunk=chunk), target=HOST), HOST, x)
    np.testing.assert_allclose(got, x @ weight.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("columns", [16, 64, 7])
def test_dense_column_blocks(columns):
    """Blocks of input columns (the gathers' inputs stay in L1): partial sums carried in the output
    between blocks, bias and activation after the last one, a short last block, empty rows."""
    weight = sparse((21, 100), 0.2)
    weight[3] = 0
    bias = np.linspace(-1, 1, 21).astype(np.float32)
    x = np.random.default_rng(7).standard_normal((3, 100)).astype(np.float32)
    kernel = csr_dense_kernel(weight, x.shape, bias=bias, activation=Activation("relu"),
                              knobs=CsrKnobs(chunk=4, columns=columns), target=HOST)
    assert kernel.constants[0].shape == (-(-100 // columns), 22)  # one row pointer per column block
    got = run_kernel(kernel, HOST, x)
    np.testing.assert_allclose(got, np.maximum(x @ weight.T + bias, 0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("act, ref", [
    (Activation("relu"), lambda y: np.maximum(y, 0)),
    (Activation("leaky_relu", (0.1,)), lambda y: np.where(y > 0, y, 0.1 * y)),
    (Activation("sigmoid"), lambda y: 1 / (1 + np.exp(-y))),
    (Activation("hard_swish"), lambda y: y * np.clip(y / 6 + 0.5, 0, 1)),
])
def test_dense_bias_and_activation(act, ref):
    weight = sparse((12, 30), 0.3)
    bias = np.linspace(-2, 2, 12).astype(np.float32)
    x = np.random.default_rng(6).standard_normal((2, 30)).astype(np.float32)
    got = run_kernel(csr_dense_kernel(weight, x.shape, bias=bias, activation=act, target=HOST), HOST, x)
    np.testing.assert_allclose(got, ref(x @ weight.T + bias), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels", [1, 2, 15, 16])
def test_sparse_1x1_conv_layer_with_few_input_channels(channels):
    # found by sparsec fuzz: under 16 input channels the CSR kernel's knob space had no
    # channel_block value at all, so the layer failed to build
    from sparsec.driver import compile, import_model
    from sparsec.models import conv1x1_layer
    from sparsec.reference import run_reference

    model = conv1x1_layer((1, channels, 6, 5), 8)
    mask = np.zeros((8, channels, 1, 1), bool)
    mask[::3] = True
    module = import_model(model, {"conv.weight": mask})
    compiled = compile(module)
    assert [layer["format"] for layer in compiled.manifest.layers] == ["csr"]
    x = {"input": np.random.default_rng(0).standard_normal((1, channels, 6, 5), dtype=np.float32)}
    np.testing.assert_allclose(compiled.run(x)["output"], run_reference(module, x)["output"], rtol=1e-5, atol=1e-5)


def test_conv1x1_register_plan_comes_from_the_target():
    from sparsec.lower.target import resolve_target

    # the L1 sizes named: a JSON target otherwise takes this machine's (32 KiB on znver3, 48 on znver5)
    avx512 = resolve_target(spec='{"name": "avx512", "isa": "avx512", "tvm": {"mcpu": "skylake-avx512"}, '
                                 '"l1d_bytes": 49152}')
    avx2 = resolve_target(spec='{"name": "avx2", "isa": "avx2", "tvm": {"mcpu": "haswell"}, "l1d_bytes": 32768}')
    plan = lambda target: (lambda k: (k.vectors, k.lanes, k.channel_block))(CsrKnobs().resolved(target))  # noqa: E731
    assert plan(avx512) == (8, 16, 64)  # 32 registers: 8 vectors, blocks filling 2/3 of a 48 KiB L1
    assert plan(avx2) == (8, 8, 64)  # 16 registers: half of them, blocks filling half of L1
