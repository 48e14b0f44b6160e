"""What torch.onnx.export writes, imported: small VGG-, ResNet- (basic and bottleneck blocks) and
MobileNet-V2-style nets in plain torch, exported by the TorchScript exporter (`dynamo=False`) and
the dynamo exporter (`dynamo=True`), imported, printed and parsed back, run by the reference
interpreter and compared with onnxruntime on the same file (max relative error 1e-4)."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch  # a pinned test dependency (requirements-test.txt): missing means the set-up is broken

from sparsec.frontend import import_onnx
from sparsec.ir import parse_module, print_module
from sparsec.ir.files import weight_arrays
from sparsec.reference import run_reference

nn = torch.nn
pytestmark = pytest.mark.torch

RTOL = 1e-4


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([act()] if act else []))


class VGG(nn.Module):
    """VGG-style: conv-bn-relu stacks, max pools, a flattening view and a dropout classifier."""

    def __init__(self):
        super().__init__()
        # Batch norm on the input: no conv before it to fold into, so the exporters keep it.
        self.features = nn.Sequential(nn.BatchNorm2d(3), conv_bn(3, 8), conv_bn(8, 8), nn.MaxPool2d(2), conv_bn(8, 16),
                                      nn.MaxPool2d(2, ceil_mode=True), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, 10))

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))  # a Shape -> Gather -> Reshape subgraph when batch is dynamic


class Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, stride=stride), conv_bn(cout, cout, act=None))
        self.down = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, mid, 1), conv_bn(mid, mid, stride=stride),
                                  conv_bn(mid, mid * 4, 1, act=None))
        self.down = conv_bn(cin, mid * 4, 1, stride, act=None) if stride != 1 or cin != mid * 4 else nn.Identity()

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


class ResNet(nn.Module):
    """ResNet-style: 7x7 stem, 3x3/2 max pool, basic and bottleneck residual blocks, global pool."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        self.blocks = nn.Sequential(Basic(8, 8, 1), Basic(8, 16, 2), Bottleneck(16, 8, 1), Bottleneck(32, 8, 2))
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class Inverted(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        expand_layers = [conv_bn(cin, mid, 1, act=nn.ReLU6)] if expand != 1 else []
        self.body = nn.Sequential(*expand_layers, conv_bn(mid, mid, 3, stride, groups=mid, act=nn.ReLU6),
                                  conv_bn(mid, cout, 1, act=None))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    """MobileNet-V2-style: ReLU6, depthwise convs, inverted residuals, mean pool, dropout."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8, stride=2, act=nn.ReLU6), Inverted(8, 8, 1, 1),
                                      Inverted(8, 12, 2, 6), Inverted(12, 12, 1, 6), conv_bn(12, 48, 1, act=nn.ReLU6))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(48, 10))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


NETS = {"vgg": VGG, "resnet": ResNet, "mobilenet_v2": MobileNetV2}
RESOLUTION = 16
# (net, exporter, opset, dynamic batch): both exporters at opset 17, older opsets with TorchScript.
EXPORTS = [(net, exporter, 17, exporter == "dynamo") for net in NETS for exporter in ("torchscript", "dynamo")]
EXPORTS += [("vgg", "torchscript", 11, True), ("resnet", "torchscript", 13, False),
            ("mobilenet_v2", "torchscript", 11, False)]  # fmt: skip


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    net = NETS[name]()
    for module in net.modules():  # random statistics, so batch norm really computes something
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def export(net: nn.Module, path, exporter: str, opset: int, dynamic: bool) -> None:
    x = torch.randn(2, 3, RESOLUTION, RESOLUTION)
    options = dict(input_names=["input"], output_names=["output"], opset_version=opset)
    if exporter == "dynamo":
        if dynamic:
            options["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=64)},)
        torch.onnx.export(net, (x,), str(path), dynamo=True, verbose=False, **options)
    else:
        if dynamic:
            options["dynamic_axes"] = {"input": {0: "batch"}, "output": {0: "batch"}}
        torch.onnx.export(net, (x,), str(path), dynamo=False, **options)


@pytest.mark.parametrize("net, exporter, opset, dynamic", EXPORTS,
                         ids=[f"{n}-{e}-opset{o}{'-dynamic' if d else ''}" for n, e, o, d in EXPORTS])
def test_torch_export_imports_and_matches(tmp_path, net, exporter, opset, dynamic):
    path = tmp_path / f"{net}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(build(net), path, exporter, opset, dynamic)
    batch = 3 if dynamic else 2  # a static export keeps the traced batch 2; a dynamic one is bound to 3
    shapes = {"input": (batch, 3, RESOLUTION, RESOLUTION)} if dynamic else None
    module = import_onnx(path, input_shapes=shapes).module
    reparsed = parse_module(print_module(module), arrays=weight_arrays(module))
    assert reparsed == module

    x = np.random.default_rng(1).standard_normal((batch, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
    (ours,) = run_reference(reparsed, {"input": x}).values()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (theirs,) = session.run(None, {"input": x})
    assert ours.shape == theirs.shape == (batch, 10)
    error = np.max(np.abs(ours - theirs)) / max(np.max(np.abs(theirs)), 1e-6)
    assert error <= RTOL, f"relative error {error:.3g} > {RTOL}"


def test_dynamic_batch_defaults_to_one(tmp_path):
    path = tmp_path / "vgg.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(build("vgg"), path, "torchscript", 17, dynamic=True)
    module = import_onnx(path).module
    assert module.inputs[0].type.shape == (1, 3, RESOLUTION, RESOLUTION)
    assert module.types["%output"].shape == (1, 10)
