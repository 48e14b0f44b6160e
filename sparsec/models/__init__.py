"""A deterministic model zoo built with `onnx.helper` + NumPy: no downloads, no torch.

Every builder returns an opset-17 `onnx.ModelProto` with input `input`, output `output`, named
nodes and initializers, and seeded He-style weights (the same call gives byte-identical bytes).
`ZOO` maps a network's name to its builder; every entry takes `resolution`, `num_classes` and
`batch`. The single-layer builders (`conv_layer`, `conv1x1_layer`, `fc_layer`) take layer
shapes instead and sit in `LAYERS`.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from sparsec.models.cnn import tiny_cnn, vgg16
from sparsec.models.layers import conv1x1_layer, conv_layer, fc_layer
from sparsec.models.mobilenet import mobilenet_v2
from sparsec.models.resnet import resnet18, resnet50

ZOO: dict[str, Callable[..., onnx.ModelProto]] = {
    "tiny_cnn": tiny_cnn,
    "vgg16": vgg16,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
}

LAYERS: dict[str, Callable[..., onnx.ModelProto]] = {
    "conv_layer": conv_layer,
    "conv1x1_layer": conv1x1_layer,
    "fc_layer": fc_layer,
}

__all__ = [
    "LAYERS",
    "ZOO",
    "conv1x1_layer",
    "conv_layer",
    "fc_layer",
    "mobilenet_v2",
    "resnet18",
    "resnet50",
    "tiny_cnn",
    "vgg16",
]
