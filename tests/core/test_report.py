"""The inspect report: statistics straight from ONNX + masks, the text table and the JSON."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from sparsec.errors import NotSupportedError
from sparsec.models import conv_layer, tiny_cnn
from sparsec.prune import prune_model
from sparsec.report import format_patterns, format_report, inspect_model, report_json
from sparsec.target import resolve

WEIGHTS = ["features.0.weight", "features.2.weight", "features.3.weight", "features.4.weight", "classifier.weight"]
# tiny_cnn at 32x32: 32x32, then 16x16 after the pool, 8x8 after the stride-2 conv; FC once.
DENSE_MACS = [8 * 3 * 9 * 32 * 32, 16 * 8 * 9 * 16 * 16, 16 * 16 * 9 * 8 * 8, 32 * 16 * 8 * 8, 10 * 32]


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return tiny_cnn()


@pytest.fixture(scope="module")
def pruned(model):
    return inspect_model(model, prune_model(model, keep_kernels=0.5, unstructured=0.5))


def test_dense_model(model):
    report = inspect_model(model)
    assert [s.name for s in report.layers] == WEIGHTS
    assert [s.kind for s in report.layers] == ["conv3x3", "conv3x3", "conv3x3", "conv", "fc"]
    assert [s.macs_dense for s in report.layers] == DENSE_MACS
    assert all(s.macs_kept == s.macs_dense and s.density == 1.0 for s in report.layers)
    assert report.totals.mac_reduction == 1.0
    assert report.group_costs == ()  # unpruned filters do not "share" kernels


def test_pruned_model(pruned):
    layers = {s.name: s for s in pruned.layers}
    conv = layers["features.2.weight"]
    assert conv.n_patterns <= 8 and conv.empty_kernels == 64 and conv.total_kernels == 128
    assert conv.macs_kept == 64 * 4 * 16 * 16
    assert layers["features.0.weight"].density == 1.0  # the first conv stays dense
    assert layers["classifier.weight"].density == 0.5
    assert pruned.totals.macs_kept == sum(s.macs_kept for s in pruned.layers)
    assert pruned.totals.mac_reduction > 1.0


def test_zeros_in_the_weights_count_without_masks():
    model = conv_layer((1, 4, 6, 6), 2, bias=False)
    weight = numpy_helper.to_array(model.graph.initializer[0]).copy()
    weight[0] = 0  # filter 0 removed in the file itself
    weight[1, :, 0, :] = 0  # and the top row of filter 1's kernels
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "conv.weight"))
    (s,) = inspect_model(model).layers
    assert s.empty_kernels == 4 and s.nonzeros == 4 * 6
    assert dict(s.histogram) == {(3, 4, 5, 6, 7, 8): 4}


def test_symbolic_batch_counts_per_sample(model):
    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(model)
    for value in (dynamic.graph.input[0], dynamic.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    assert [s.macs_dense for s in inspect_model(dynamic).layers] == DENSE_MACS


def test_unknown_output_shape_is_not_supported(model):
    shapeless = onnx.ModelProto()
    shapeless.CopyFrom(model)
    shapeless.graph.input[0].type.tensor_type.ClearField("shape")
    with pytest.raises(NotSupportedError) as err:
        inspect_model(shapeless)
    assert str(err.value) == (
        "Conv node 'features.0.conv': ONNX shape inference gives no output shape; give the model static input shapes"
    )


def test_format_patterns():
    hist = (((1, 2, 4, 6), 9), ((0, 1, 3, 4), 7), ((0, 4, 7, 8), 7), ((3, 4, 5, 8), 1))
    assert format_patterns(hist) == "1246:9 0134:7 0478:7 +1"
    assert format_patterns(hist[:2]) == "1246:9 0134:7"
    assert format_patterns(()) == "-"


def test_text_table(pruned):
    lines = format_report(pruned).splitlines()
    assert lines[0].split() == [
        "weight", "kind", "shape", "density", "pats", "top", "patterns", "(taps:kernels)",
        "empty/kernels", "MMAC", "dense", "MMAC", "kept", "saved",
    ]  # fmt: skip
    assert set(lines[1]) == {"-", " "}
    assert len({len(line) for line in lines[:2]}) == 1  # fixed width: rule under the header
    rows = lines[2:7]
    assert [row.split()[0] for row in rows] == WEIGHTS
    assert rows[3].split() == ["features.4.weight", "conv", "32x16x1x1", "0.500", "-", "-", "256/512", "0.03",
                               "0.02", "2.00x"]  # fmt: skip
    assert lines[7] == ""
    assert lines[8] == "total: 5 layers, weights 4.50k -> 1.40k (density 0.311), MACs 696.64k -> 336.03k (2.07x fewer)"


def test_json(pruned):
    data = json.loads(json.dumps(report_json(pruned)))
    assert [layer["name"] for layer in data["layers"]] == WEIGHTS
    conv = data["layers"][1]
    assert conv["weight_shape"] == [16, 8, 3, 3] and conv["kind"] == "conv3x3"
    assert sum(p["count"] for p in conv["patterns"]) == conv["total_kernels"] - conv["empty_kernels"]
    assert all(4 in p["taps"] and len(p["taps"]) == 4 for p in conv["patterns"])
    assert data["totals"]["macs_dense"] == sum(DENSE_MACS)
    assert data["totals"]["mac_reduction"] == pytest.approx(pruned.totals.mac_reduction)


def test_masks_only_narrow_the_weights(model):
    # A mask that keeps everything changes nothing; one that keeps nothing zeroes the MACs.
    everything = {"classifier.weight": np.ones((10, 32), bool)}
    assert inspect_model(model, everything) == inspect_model(model)
    nothing = inspect_model(model, {"classifier.weight": np.zeros((10, 32), bool)})
    assert nothing.layers[-1].macs_kept == 0 and nothing.layers[-1].empty_kernels == 320


HOST = resolve("host", host_cpu="znver5", spec='{"isa": "avx512"}')


@pytest.mark.parametrize("keep, want", [(1.0, "dense"), (0.3, "pattern")])
def test_the_format_each_weight_compiles_to(keep, want):
    model = conv_layer((1, 256, 56, 56), 256)
    report = inspect_model(model, prune_model(model, keep_kernels=keep, prune_first_conv=True), HOST)
    assert report.formats == {"conv.weight": want, "conv.bias": "dense"}
    lines = format_report(report).splitlines()
    assert lines[0].split()[:5] == ["weight", "kind", "compiles", "as", "shape"]
    assert lines[2].split()[:3] == ["conv.weight", "conv3x3", want]
    note = ("1 pattern-pruned 3x3 layer(s) compile dense (conv.weight): at their density the cost model "
            "estimates the dense kernel (Winograd for 3x3 stride-1 convs) faster; remove more kernels to gain "
            "from patterns")
    assert (lines[-1] == note) == (want == "dense")
    assert report_json(report)["layers"][0]["compiles_as"] == want


def test_formats_of_a_model_sparsec_cannot_import(model):
    unsupported = onnx.ModelProto()
    unsupported.CopyFrom(model)
    node = unsupported.graph.node[-1]
    node.op_type = "Hardmax"  # an op sparsec does not lower
    del node.input[1:]
    report = inspect_model(unsupported, None, HOST)
    assert report.formats is None and "Hardmax" in report.formats_error
    assert any(line.startswith("formats: not known, sparsec cannot import the model (")
               for line in format_report(report).splitlines())
    assert "compiles_as" not in report_json(report)["layers"][0]
