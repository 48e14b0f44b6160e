"""ResNet-18 and ResNet-50 in torchvision's topology, as `torch.onnx.export` lays them out.

Convs carry no bias and are followed by BatchNormalization; the stride of a bottleneck sits on
its 3x3 conv (ResNet v1.5); names follow torchvision's state dict ("layer1.0.conv1.weight").
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from sparsec.models._graph import GraphBuilder, check_positive, check_resolution

# The last BN of a residual branch starts small so the sum x + f(x) keeps its scale O(1)
# through 16 blocks (torchvision can zero it; zero would hide the branch from every test).
_RESIDUAL_GAMMA = (0.1, 0.3)


def resnet18(
    resolution: int = 224, num_classes: int = 1000, batch: int = 1, *, seed: int = 0
) -> onnx.ModelProto:
    """ResNet-18: stem, four stages of two basic blocks (64, 128, 256, 512 channels), GAP, fc."""
    return _resnet("resnet18", _basic_block, (2, 2, 2, 2), 1, resolution, num_classes, batch, seed)


def resnet50(
    resolution: int = 224, num_classes: int = 1000, batch: int = 1, *, seed: int = 0
) -> onnx.ModelProto:
    """ResNet-50: stem, bottleneck stages of 3, 4, 6, 3 blocks (expansion 4), GAP, fc."""
    return _resnet("resnet50", _bottleneck, (3, 4, 6, 3), 4, resolution, num_classes, batch, seed)


Block = Callable[[GraphBuilder, str, str, int, int, int, int], str]


def _resnet(
    name: str,
    block: Block,
    depths: tuple[int, ...],
    expansion: int,
    resolution: int,
    num_classes: int,
    batch: int,
    seed: int,
) -> onnx.ModelProto:
    check_resolution(name, resolution, minimum=32)
    check_positive(name, num_classes=num_classes, batch=batch)
    g = GraphBuilder(seed)
    x = _conv_bn(g, "conv1", "bn1", "input", 3, 64, 7, stride=2)
    x = g.maxpool("maxpool", g.relu("relu", x), kernel=3, stride=2, pad=1)
    cin = 64
    for stage, depth in enumerate(depths, start=1):
        width = 64 * 2 ** (stage - 1)
        for i in range(depth):
            stride = 2 if stage > 1 and i == 0 else 1
            x = block(g, f"layer{stage}.{i}", x, cin, width, stride, expansion)
            cin = width * expansion
    x = g.flatten("flatten", g.global_avgpool("avgpool", x))
    x = g.gemm("fc", "fc", x, cin, num_classes, gain=1.0)
    return g.finish(name, (batch, 3, resolution, resolution), (batch, num_classes), x)


def _conv_bn(
    g: GraphBuilder, conv: str, bn: str, x: str, cin: int, cout: int, k: int, *, stride: int = 1, gamma=(0.5, 1.5)
) -> str:
    x = g.conv(conv, conv, x, cin, cout, k, stride=stride, bias=False)
    return g.batchnorm(bn, bn, x, cout, gamma=gamma)


def _shortcut(g: GraphBuilder, p: str, x: str, cin: int, cout: int, stride: int) -> str:
    """Identity, or torchvision's `downsample` (1x1 conv + BN) when the shape changes."""
    if stride == 1 and cin == cout:
        return x
    return _conv_bn(g, f"{p}.downsample.0", f"{p}.downsample.1", x, cin, cout, 1, stride=stride)


def _basic_block(g: GraphBuilder, p: str, x: str, cin: int, width: int, stride: int, _: int) -> str:
    """conv3x3(stride)-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""
    y = g.relu(f"{p}.relu1", _conv_bn(g, f"{p}.conv1", f"{p}.bn1", x, cin, width, 3, stride=stride))
    y = _conv_bn(g, f"{p}.conv2", f"{p}.bn2", y, width, width, 3, gamma=_RESIDUAL_GAMMA)
    return g.relu(f"{p}.relu", g.add(f"{p}.add", y, _shortcut(g, p, x, cin, width, stride)))


def _bottleneck(g: GraphBuilder, p: str, x: str, cin: int, width: int, stride: int, expansion: int) -> str:
    """conv1x1-BN-ReLU, conv3x3(stride)-BN-ReLU, conv1x1(x4)-BN, plus the shortcut, then ReLU."""
    cout = width * expansion
    y = g.relu(f"{p}.relu1", _conv_bn(g, f"{p}.conv1", f"{p}.bn1", x, cin, width, 1))
    y = g.relu(f"{p}.relu2", _conv_bn(g, f"{p}.conv2", f"{p}.bn2", y, width, width, 3, stride=stride))
    y = _conv_bn(g, f"{p}.conv3", f"{p}.bn3", y, width, cout, 1, gamma=_RESIDUAL_GAMMA)
    return g.relu(f"{p}.relu", g.add(f"{p}.add", y, _shortcut(g, p, x, cin, cout, stride)))
