"""A small ONNX graph builder shared by the zoo: seeded weights, named nodes, opset 17.

The builder is the one mutable object of the zoo: a model builder calls its layer methods in
order and `finish` freezes the result into an `onnx.ModelProto`. Every random number comes from
one seeded generator consumed in call order, so the same calls give byte-identical models.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sparsec.errors import UserError

OPSET = 17
# IR version 8 is the one that shipped with opset 17 (onnx 1.12): the oldest that fits, so any
# onnx / onnxruntime reader from then on loads the zoo.
IR_VERSION = 8


class GraphBuilder:
    """Accumulates nodes and initializers; each layer method returns its output's value name."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._init_names: set[str] = set()

    # ---- tensors -------------------------------------------------------------------------

    def const(self, name: str, value: np.ndarray) -> str:
        """Adds an initializer once (shared constants such as ReLU6's bounds are reused)."""
        if name not in self._init_names:
            self._init_names.add(name)
            self.inits.append(numpy_helper.from_array(value, name))
        return name

    def _normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        return self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def _uniform(self, shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
        return self.rng.uniform(low, high, shape).astype(np.float32)

    def _node(self, op: str, name: str, inputs: list[str], **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    # ---- layers --------------------------------------------------------------------------

    def conv(
        self,
        node: str,
        prefix: str,
        x: str,
        cin: int,
        cout: int,
        kernel: int,
        *,
        stride: int = 1,
        pad: int | None = None,
        groups: int = 1,
        bias: bool = True,
        gain: float = 2.0,
    ) -> str:
        """Conv with He init: std = sqrt(gain / fan_in) keeps the activation variance near 1."""
        pad = kernel // 2 if pad is None else pad
        fan_in = cin // groups * kernel * kernel
        weight = self._normal((cout, cin // groups, kernel, kernel), np.sqrt(gain / fan_in))
        inputs = [x, self.const(f"{prefix}.weight", weight)]
        if bias:
            inputs.append(self.const(f"{prefix}.bias", self._normal((cout,), 0.05)))
        return self._node(
            "Conv", node, inputs, kernel_shape=[kernel, kernel], strides=[stride, stride],
            pads=[pad] * 4, group=groups, dilations=[1, 1],
        )  # fmt: skip

    def batchnorm(self, node: str, prefix: str, x: str, channels: int, *, gamma=(0.5, 1.5)) -> str:
        """BatchNorm with random statistics, so that folding it into the conv is really tested.

        Scale/var stay within a factor of ~2 of 1 so activations stay O(1); `gamma` lets the last
        BN of a residual branch start small (as torchvision's zero-init does, but not zero).
        """
        names = ("weight", "bias", "running_mean", "running_var")
        values = (
            self._uniform((channels,), *gamma),
            self._normal((channels,), 0.1),
            self._normal((channels,), 0.1),
            self._uniform((channels,), 0.5, 2.0),
        )
        inputs = [x] + [self.const(f"{prefix}.{n}", v) for n, v in zip(names, values)]
        return self._node("BatchNormalization", node, inputs, epsilon=1e-5)

    def gemm(
        self, node: str, prefix: str, x: str, fin: int, fout: int, *, gain: float = 2.0, bias: bool = True
    ) -> str:
        """Fully connected layer as torch exports it: Gemm(x, W[out, in], b) with transB=1."""
        weight = self._normal((fout, fin), np.sqrt(gain / fin))
        inputs = [x, self.const(f"{prefix}.weight", weight)]
        if bias:
            inputs.append(self.const(f"{prefix}.bias", self._normal((fout,), 0.05)))
        return self._node("Gemm", node, inputs, transB=1)

    def matmul(
        self, node: str, prefix: str, x: str, fin: int, fout: int, *, gain: float = 2.0, bias: bool = True
    ) -> str:
        """Fully connected layer as MatMul(x, W[in, out]) (+ Add(b)), the other common export."""
        weight = self._normal((fin, fout), np.sqrt(gain / fin))
        product = f"{node}.matmul" if bias else node
        y = self._node("MatMul", product, [x, self.const(f"{prefix}.weight", weight)])
        if not bias:
            return y
        return self._node("Add", f"{node}.add", [y, self.const(f"{prefix}.bias", self._normal((fout,), 0.05))])

    def relu(self, node: str, x: str) -> str:
        return self._node("Relu", node, [x])

    def relu6(self, node: str, x: str) -> str:
        """ReLU6 as Clip with min/max given as inputs (the opset 11+ form)."""
        lo = self.const("relu6.min", np.array(0.0, np.float32))
        hi = self.const("relu6.max", np.array(6.0, np.float32))
        return self._node("Clip", node, [x, lo, hi])

    def maxpool(self, node: str, x: str, kernel: int, stride: int, pad: int = 0) -> str:
        return self._node(
            "MaxPool", node, [x], kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4
        )

    def global_avgpool(self, node: str, x: str) -> str:
        return self._node("GlobalAveragePool", node, [x])

    def flatten(self, node: str, x: str) -> str:
        return self._node("Flatten", node, [x], axis=1)

    def reshape(self, node: str, x: str, shape: tuple[int, ...]) -> str:
        target = self.const(f"{node}.shape", np.array(shape, np.int64))
        return self._node("Reshape", node, [x, target])

    def dropout(self, node: str, x: str) -> str:
        """Inference-mode Dropout (no ratio / training inputs): an identity the frontend drops."""
        return self._node("Dropout", node, [x])

    def add(self, node: str, a: str, b: str) -> str:
        return self._node("Add", node, [a, b])

    def softmax(self, node: str, x: str) -> str:
        return self._node("Softmax", node, [x], axis=-1)

    # ---- the model -----------------------------------------------------------------------

    def finish(
        self, name: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...], last: str
    ) -> onnx.ModelProto:
        """Renames the last value to `output` and wraps the graph in an opset-17 model."""
        # Value names equal node names everywhere else; only the graph output is renamed.
        assert self.nodes[-1].output[0] == last, "the output must come from the last node"
        self.nodes[-1].output[0] = "output"
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(in_shape))],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(out_shape))],
            initializer=self.inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sparsec.models"
        )
        model.ir_version = IR_VERSION
        return model


def check_positive(builder: str, **values: int) -> None:
    """Raises UserError for a size argument that is not a positive integer."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise UserError(f"{builder}: {name}={value!r} must be a positive integer")


def check_resolution(builder: str, resolution: int, minimum: int, multiple: int = 1) -> None:
    """Raises UserError when the input resolution is too small for the net's downsampling."""
    check_positive(builder, resolution=resolution)
    if resolution < minimum:
        raise UserError(f"{builder}: resolution={resolution} is too small; use at least {minimum}")
    if resolution % multiple:
        raise UserError(f"{builder}: resolution={resolution} must be a multiple of {multiple}")
