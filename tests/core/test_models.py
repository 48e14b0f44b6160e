"""The model zoo: valid opset-17 ONNX, runs in onnxruntime, deterministic, named as documented."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from sparsec.errors import UserError
from sparsec.models import LAYERS, ZOO, conv_layer, fc_layer, mobilenet_v2, resnet18, resnet50, tiny_cnn, vgg16

SMALL = 32  # the smallest resolution every network accepts; keeps the whole file fast

BUILDS = {
    **{name: (lambda b=builder: b(resolution=SMALL)) for name, builder in ZOO.items()},
    "vgg16_bn": lambda: vgg16(resolution=SMALL, num_classes=10, batch_norm=True),
    "resnet18_batch2": lambda: resnet18(resolution=SMALL, num_classes=7, batch=2),
    "conv_layer": lambda: conv_layer((1, 16, 12, 12), 24),
    "conv_layer_strided": lambda: conv_layer((1, 8, 9, 9), 8, kernel=3, stride=2, pad=1, bias=False),
    "depthwise_layer": lambda: conv_layer((1, 16, 10, 10), 16, groups=16),
    "conv1x1_layer": lambda: LAYERS["conv1x1_layer"]((1, 32, 7, 7), 16),
    "fc_layer": lambda: fc_layer(64, 10, batch=3),
    "fc_layer_matmul": lambda: fc_layer(64, 10, matmul=True),
}


def _dims(value_info: onnx.ValueInfoProto) -> tuple[int, ...]:
    return tuple(d.dim_value for d in value_info.type.tensor_type.shape.dim)


def _run(model: onnx.ModelProto) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(_dims(model.graph.input[0])).astype(np.float32)
    (y,) = session.run(["output"], {"input": x})
    return y


@pytest.fixture(scope="module", params=sorted(BUILDS))
def built(request) -> tuple[str, onnx.ModelProto]:
    return request.param, BUILDS[request.param]()


def test_passes_checker_with_shape_inference(built):
    _, model = built
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]


def test_io_and_names(built):
    _, model = built
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    names = [node.name for node in model.graph.node]
    assert all(names) and len(set(names)) == len(names)
    init_names = [init.name for init in model.graph.initializer]
    assert len(set(init_names)) == len(init_names)


def test_runs_in_onnxruntime(built):
    _, model = built
    y = _run(model)
    assert y.shape == _dims(model.graph.output[0])
    assert np.isfinite(y).all()
    # He-style init and BN statistics near 1: logits stay O(1), not 0 and not exploding.
    assert 1e-3 < float(np.abs(y).max()) < 100


def test_builds_are_byte_identical(built):
    name, model = built
    assert BUILDS[name]().SerializeToString() == model.SerializeToString()


def test_seed_changes_weights_only():
    a, b = tiny_cnn(seed=0), tiny_cnn(seed=1)
    assert a.SerializeToString() != b.SerializeToString()
    assert [n.name for n in a.graph.node] == [n.name for n in b.graph.node]


def test_tiny_cnn_softmax_sums_to_one():
    y = _run(tiny_cnn())
    assert y.shape == (1, 10)
    np.testing.assert_allclose(y.sum(), 1.0, rtol=1e-5)


def _convs(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "Conv"]


def _group(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def test_vgg16_layout():
    model = vgg16(resolution=64, num_classes=10)
    convs = _convs(model)
    expected = [f"conv{s}_{i}" for s, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)]
    assert [c.name for c in convs] == expected
    assert [list(c.input[1:]) for c in convs] == [[f"{n}.weight", f"{n}.bias"] for n in expected]
    assert sum(n.op_type == "MaxPool" for n in model.graph.node) == 5
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    # fc6's input follows the resolution: 512 * (64 / 32)^2.
    assert shapes["fc6.weight"] == (4096, 512 * 2 * 2)
    assert shapes["fc8.weight"] == (10, 4096)
    assert [n.name for n in model.graph.node if n.op_type == "Gemm"] == ["fc6", "fc7", "fc8"]


def test_resnets_follow_torchvision():
    for builder, n_convs in ((resnet18, 20), (resnet50, 53)):
        model = builder(resolution=SMALL)
        convs = _convs(model)
        assert len(convs) == n_convs
        assert all(len(c.input) == 2 for c in convs)  # no conv bias: BatchNorm follows
        consumers = {n.input[0]: n.op_type for n in model.graph.node}
        assert all(consumers[c.output[0]] == "BatchNormalization" for c in convs)
        assert "layer1.0.conv1.weight" in {i.name for i in model.graph.initializer}


def test_mobilenet_v2_layout():
    model = mobilenet_v2(resolution=SMALL)
    convs = _convs(model)
    assert len(convs) == 52
    assert sum(_group(c) > 1 for c in convs) == 17
    assert sum(n.op_type == "Add" for n in model.graph.node) == 10
    clips = [n for n in model.graph.node if n.op_type == "Clip"]
    assert clips and all(list(c.input[1:]) == ["relu6.min", "relu6.max"] for c in clips)
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    assert shapes["features.18.weight"] == (1280, 320, 1, 1)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: vgg16(resolution=48), "vgg16: resolution=48 must be a multiple of 32"),
        (lambda: resnet50(resolution=16), "resnet50: resolution=16 is too small; use at least 32"),
        (lambda: tiny_cnn(num_classes=0), "tiny_cnn: num_classes=0 must be a positive integer"),
        (lambda: conv_layer((1, 6, 8, 8), 8, groups=4),
         "conv_layer: groups=4 must divide both the input channels (6) and out_channels (8)"),
        (lambda: conv_layer((1, 3, 8)), "conv_layer: in_shape=(1, 3, 8) must be (N, C, H, W)"),
    ],
)  # fmt: skip
def test_bad_arguments(build, message):
    with pytest.raises(UserError) as err:
        build()
    assert str(err.value) == message
