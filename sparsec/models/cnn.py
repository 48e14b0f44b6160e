"""Plain feed-forward CNNs: a tiny test net and VGG-16 (the PCONV paper's main benchmark)."""

from __future__ import annotations

import onnx

from sparsec.models._graph import GraphBuilder, check_positive, check_resolution

# VGG-16's feature extractor: output channels per 3x3 conv, "M" for a 2x2 max-pool.
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


def tiny_cnn(
    resolution: int = 32, num_classes: int = 10, batch: int = 1, *, seed: int = 0
) -> onnx.ModelProto:
    """A five-layer CNN small enough for fast tests, touching every layer kind sparsec compiles.

    conv3x3(3->8)+BN+ReLU, 2x2 max-pool, conv3x3(8->16)+ReLU, conv3x3(16->16, stride 2)+ReLU,
    conv1x1(16->32)+ReLU, global average pool, Flatten, Gemm, Softmax.
    """
    check_resolution("tiny_cnn", resolution, minimum=4)
    check_positive("tiny_cnn", num_classes=num_classes, batch=batch)
    g = GraphBuilder(seed)
    x = g.conv("features.0.conv", "features.0", "input", 3, 8, 3, bias=False)
    x = g.relu("features.0.relu", g.batchnorm("features.0.bn", "features.0.bn", x, 8))
    x = g.maxpool("features.1.pool", x, kernel=2, stride=2)
    x = g.relu("features.2.relu", g.conv("features.2.conv", "features.2", x, 8, 16, 3))
    x = g.relu("features.3.relu", g.conv("features.3.conv", "features.3", x, 16, 16, 3, stride=2))
    x = g.relu("features.4.relu", g.conv("features.4.conv", "features.4", x, 16, 32, 1))
    x = g.flatten("flatten", g.global_avgpool("avgpool", x))
    x = g.softmax("softmax", g.gemm("classifier", "classifier", x, 32, num_classes, gain=1.0))
    return g.finish("tiny_cnn", (batch, 3, resolution, resolution), (batch, num_classes), x)


def vgg16(
    resolution: int = 224,
    num_classes: int = 1000,
    batch: int = 1,
    *,
    batch_norm: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """VGG-16: 13 3x3 convs (conv1_1 ... conv5_3), 5 max-pools, fc6/fc7/fc8.

    Unlike torchvision there is no adaptive pool before fc6: its input size follows the
    resolution (512 * (resolution/32)^2), as in the original Caffe model at 224.
    """
    check_resolution("vgg16", resolution, minimum=32, multiple=32)
    check_positive("vgg16", num_classes=num_classes, batch=batch)
    g = GraphBuilder(seed)
    x = _vgg_features(g, "input", batch_norm)
    x = g.flatten("flatten", x)
    side = resolution // 32
    x = g.dropout("drop6", g.relu("relu6", g.gemm("fc6", "fc6", x, 512 * side * side, 4096)))
    x = g.dropout("drop7", g.relu("relu7", g.gemm("fc7", "fc7", x, 4096, 4096)))
    x = g.gemm("fc8", "fc8", x, 4096, num_classes, gain=1.0)
    return g.finish("vgg16", (batch, 3, resolution, resolution), (batch, num_classes), x)


def _vgg_features(g: GraphBuilder, x: str, batch_norm: bool) -> str:
    """The conv/pool stack; stage s, conv i is named conv{s}_{i}, its pool pool{s}."""
    stage, index, cin = 1, 1, 3
    for item in VGG16_CFG:
        if item == "M":
            x = g.maxpool(f"pool{stage}", x, kernel=2, stride=2)
            stage, index = stage + 1, 1
            continue
        tag = f"{stage}_{index}"
        # torchvision's vgg16_bn keeps the conv bias even in front of BatchNorm.
        x = g.conv(f"conv{tag}", f"conv{tag}", x, cin, item, 3)
        if batch_norm:
            x = g.batchnorm(f"bn{tag}", f"bn{tag}", x, item)
        x = g.relu(f"relu{tag}", x)
        cin, index = item, index + 1
    return x
