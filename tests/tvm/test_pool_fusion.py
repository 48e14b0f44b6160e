"""A 2x2 stride-2 max pool after a pattern conv runs inside the conv's kernel on CPUs: the compiled
model matches onnxruntime, the manifest names the conv that computes the pool, and every other
conv + pool pairing keeps two kernels (other pools, a conv value read twice, dense convs, tiles of
odd rows)."""

from __future__ import annotations

import pytest

import sparsec
from sparsec.check import onnxruntime_outputs, random_inputs, relative_error
from sparsec.driver import import_model
from sparsec.models._graph import GraphBuilder
from sparsec.prune import prune_model, save_masks

pytestmark = pytest.mark.tvm


def _model(pool_kernel=2, pool_pad=0, second_user=False, size=18):
    """conv3x3(4->8) + ReLU + max pool (+ a strided 1x1 conv of the ReLU added to the pool)."""
    g = GraphBuilder(0)
    x = g.relu("relu", g.conv("conv", "conv", "input", 4, 8, 3))
    x_pool = g.maxpool("pool", x, kernel=pool_kernel, stride=2, pad=pool_pad)
    out = size // 2
    if second_user:  # the ReLU's value read twice: the pool cannot take it over
        x_pool = g.add("sum", x_pool, g.conv("skip", "skip", x, 8, 8, 1, stride=2, pad=0))
    return g.finish("conv_pool", (1, 4, size, size), (1, 8, out, out), x_pool)


def _compile(tmp_path, model, pruned=True):
    model_path = tmp_path / "model.onnx"
    model_path.write_bytes(model.SerializeToString())
    masks_path = None
    if pruned:
        masks_path = tmp_path / "masks.npz"
        save_masks(prune_model(model, keep_kernels=0.5, prune_first_conv=True), masks_path)
    module = import_model(model_path, masks_path)
    compiled = sparsec.compile(module)
    inputs = random_inputs(module)
    want = onnxruntime_outputs(model_path, masks_path, inputs)
    got = compiled.run(inputs)
    for key, value in want.items():
        assert relative_error(got[key], value) <= 1e-4, key
    return {layer["op"] if layer["op"] == "max_pool" else layer["result"]: layer for layer in compiled.manifest.layers}


@pytest.mark.parametrize("size", [18, 17], ids=["even", "odd"])  # odd: the last row and column dropped
def test_pattern_conv_computes_its_max_pool(tmp_path, size):
    layers = _compile(tmp_path, _model(size=size))
    assert layers["relu"]["format"] == "pattern"
    assert layers["max_pool"]["format"] == "fused into %relu" and layers["max_pool"]["kernel"] == ""


@pytest.mark.parametrize(
    "model, pruned",
    [(_model(pool_kernel=3, pool_pad=1), True), (_model(second_user=True), True), (_model(), False),
     (_model(size=28), True)],  # 28 rows tile as 4 x 7: pairs of rows would pad them to 32
    ids=["3x3-pool", "two-users", "dense-conv", "7-row-tiles"],
)
def test_other_pools_keep_their_kernel(tmp_path, model, pruned):
    layers = _compile(tmp_path, model, pruned)
    assert layers["max_pool"]["format"] == "dense" and layers["max_pool"]["kernel"]
