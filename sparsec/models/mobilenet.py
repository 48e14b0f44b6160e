"""MobileNet-V2 (width 1.0) in torchvision's topology: inverted residuals with depthwise convs."""

from __future__ import annotations

import onnx

from sparsec.models._graph import GraphBuilder, check_positive, check_resolution

# (expansion t, output channels c, repeats n, first stride s), from the MobileNet-V2 paper.
MOBILENET_V2_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)  # fmt: skip
LAST_CHANNELS = 1280


def mobilenet_v2(
    resolution: int = 224, num_classes: int = 1000, batch: int = 1, *, seed: int = 0
) -> onnx.ModelProto:
    """MobileNet-V2: conv3x3 s2 stem, 17 inverted residuals, conv1x1 to 1280, GAP, Reshape, fc.

    Each block is expand (1x1, skipped when t=1) - depthwise 3x3 - linear project (1x1), with
    ReLU6 as Clip(0, 6) and an Add when stride is 1 and the width does not change.
    """
    check_resolution("mobilenet_v2", resolution, minimum=32)
    check_positive("mobilenet_v2", num_classes=num_classes, batch=batch)
    g = GraphBuilder(seed)
    x = _conv_bn_act(g, "features.0", "input", 3, 32, 3, stride=2)
    cin, index = 32, 1
    for t, c, n, s in MOBILENET_V2_CFG:
        for i in range(n):
            x = _inverted_residual(g, f"features.{index}", x, cin, c, s if i == 0 else 1, t)
            cin, index = c, index + 1
    x = _conv_bn_act(g, f"features.{index}", x, cin, LAST_CHANNELS, 1)
    x = g.reshape("reshape", g.global_avgpool("avgpool", x), (batch, -1))
    x = g.dropout("classifier.dropout", x)
    x = g.gemm("classifier.fc", "classifier", x, LAST_CHANNELS, num_classes, gain=1.0)
    return g.finish("mobilenet_v2", (batch, 3, resolution, resolution), (batch, num_classes), x)


def _conv_bn_act(
    g: GraphBuilder, p: str, x: str, cin: int, cout: int, k: int, *, stride: int = 1, groups: int = 1,
    act: bool = True, gamma=(0.5, 1.5),
) -> str:  # fmt: skip
    """Conv (no bias) + BN, then ReLU6 unless `act` is off (the linear bottleneck)."""
    x = g.conv(f"{p}.conv", p, x, cin, cout, k, stride=stride, groups=groups, bias=False)
    x = g.batchnorm(f"{p}.bn", f"{p}.bn", x, cout, gamma=gamma)
    return g.relu6(f"{p}.relu6", x) if act else x


def _inverted_residual(g: GraphBuilder, p: str, x: str, cin: int, cout: int, stride: int, t: int) -> str:
    """expand 1x1 + ReLU6 (when t > 1), depthwise 3x3 + ReLU6, project 1x1, Add when shapes match."""
    hidden = cin * t
    residual = stride == 1 and cin == cout
    y = _conv_bn_act(g, f"{p}.expand", x, cin, hidden, 1) if t != 1 else x
    y = _conv_bn_act(g, f"{p}.dw", y, hidden, hidden, 3, stride=stride, groups=hidden)
    # A residual branch ends in a small BN scale, as in ResNet, so the sums stay O(1).
    gamma = (0.2, 0.5) if residual else (0.5, 1.5)
    y = _conv_bn_act(g, f"{p}.project", y, hidden, cout, 1, act=False, gamma=gamma)
    return g.add(f"{p}.add", y, x) if residual else y
