"""The fuzzer's ONNX graph builder: one method per layer kind, every output shape tracked.

`Net` is the one mutable object of a generated case. Each method appends nodes, computes the
output shape the way ONNX (and the IR's type rules) define it and returns the output's name, so a
caller always knows what it may build next. Random choices come from the one seeded generator
the caller passes in, consumed in call order: the same calls give byte-identical models.
No TVM here (pure onnx + NumPy).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Shape = tuple[int, ...]
ALIASES = ("Identity", "Dropout")  # ops the frontend imports as no op at all


def conv_out(size: int, kernel: int, stride: int, begin: int, end: int, dilation: int) -> int:
    """Output length of a convolution along one axis (0 when the window does not fit)."""
    span = dilation * (kernel - 1) + 1
    return (size + begin + end - span) // stride + 1 if size + begin + end >= span else 0


def pool_out(size: int, kernel: int, stride: int, begin: int, end: int, dilation: int, ceil: bool,
             *, window_in_right_pad: bool = False) -> int:
    """Output length of a pooling window along one axis, ceil_mode included. onnxruntime drops a
    last window that would start in the right pad (as PyTorch does); onnx's shape inference
    keeps it: `window_in_right_pad` gives that count."""
    span = dilation * (kernel - 1) + 1
    if size + begin + end < span:
        return 0
    rounding = math.ceil if ceil else math.floor
    out = rounding((size + begin + end - span) / stride) + 1
    return out - 1 if ceil and not window_in_right_pad and (out - 1) * stride >= size + begin else out


class Net:
    """Accumulates nodes and initializers of one opset-`opset` graph with input `[1, C, H, W]`."""

    def __init__(self, rng: np.random.Generator, opset: int, in_shape: Shape):
        self.rng, self.opset = rng, opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shapes: dict[str, Shape] = {"input": in_shape}
        self.hidden_weights: set[str] = set()  # FC weights read through a Transpose node
        self.constants: set[str] = set()  # values the frontend folds (Constant nodes, shape subgraphs)
        self.symbolic_batch = False  # the input's batch dimension as a symbol (bound to 1 at import)
        self._count = 0

    # ---- plumbing ------------------------------------------------------------------------

    def fresh(self, kind: str) -> str:
        self._count += 1
        return f"{kind}{self._count}"

    def weight(self, base: str, value: np.ndarray) -> str:
        """An initializer (what masks key on)."""
        name = self.fresh(base) if base in self.shapes else base
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        self.shapes[name] = tuple(np.shape(value))
        return name

    def const(self, base: str, value: np.ndarray) -> str:
        """A constant operand: an initializer, or sometimes a Constant node the frontend folds."""
        if not self.chance(0.2):
            return self.weight(base, value)
        name = self.node("Constant", [], np.shape(value), value=numpy_helper.from_array(np.asarray(value)))
        self.constants.add(name)
        return name

    def node(self, op: str, inputs: list[str], shape: Shape, **attrs) -> str:
        name = self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        self.shapes[name] = tuple(int(d) for d in shape)
        return name

    def normal(self, shape: Shape, std: float) -> np.ndarray:
        return (self.rng.standard_normal(shape) * std).astype(np.float32)

    def uniform(self, shape: Shape, low: float, high: float) -> np.ndarray:
        return self.rng.uniform(low, high, shape).astype(np.float32)

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def pick(self, options, weights=None):
        """One of `options` (any sequence), optionally weighted."""
        p = None if weights is None else np.asarray(weights, float) / np.sum(weights)
        return options[int(self.rng.choice(len(options), p=p))]

    # ---- layers with weights -------------------------------------------------------------

    def conv(self, x: str, cout: int, kernel: Shape, strides: Shape, pads: Shape, dilations: Shape,
             groups: int = 1, bias: bool = True, auto_pad: str | None = None, weight: str | None = None) -> str:
        """Conv with He-initialised weights, or the existing initializer `weight` (a weight that
        two layers share); `auto_pad` (SAME_*/VALID) replaces explicit `pads`."""
        n, cin, h, w = self.shapes[x]
        name = self.fresh("conv")
        if weight is None:
            fan_in = cin // groups * kernel[0] * kernel[1]
            weight = self.weight(f"{name}.weight", self.normal((cout, cin // groups, *kernel), math.sqrt(2.0 / fan_in)))
        assert self.shapes[weight] == (cout, cin // groups, *kernel)
        inputs = [x, weight]
        if bias:
            inputs.append(self.const(f"{name}.bias", self.normal((cout,), 0.1)))
        attrs = dict(kernel_shape=list(kernel), strides=list(strides), dilations=list(dilations), group=groups)
        if auto_pad is None:
            attrs["pads"] = list(pads)
        else:
            attrs["auto_pad"] = auto_pad
            pads = same_pads((h, w), kernel, strides, auto_pad)
        out = [conv_out(s, k, st, pads[a], pads[a + 2], d)
               for a, (s, k, st, d) in enumerate(zip((h, w), kernel, strides, dilations))]
        assert min(out) >= 1, (self.shapes[x], kernel, strides, pads, dilations)
        return self.node("Conv", inputs, (n, cout, *out), **attrs)

    def batchnorm(self, x: str) -> str:
        c = self.shapes[x][1]
        values = (self.uniform((c,), 0.5, 1.5), self.normal((c,), 0.1), self.normal((c,), 0.1),
                  self.uniform((c,), 0.5, 2.0))
        name = self.fresh("bn")
        inputs = [x] + [self.const(f"{name}.{part}", v) for part, v in zip(("scale", "bias", "mean", "var"), values)]
        return self.node("BatchNormalization", inputs, self.shapes[x], epsilon=float(self.pick((1e-5, 1e-3))))

    def gemm(self, x: str, n_out: int) -> str:
        """Gemm with a constant B in any of the forms exporters write (transB, alpha, beta, C)."""
        m, k = self.shapes[x]
        trans_b = self.chance(0.7)
        weight = self.normal((n_out, k) if trans_b else (k, n_out), math.sqrt(2.0 / k))
        name = self.fresh("fc")
        if self.chance(0.1):  # stored the other way round, read through a Transpose the frontend folds
            stored = self.weight(f"{name}.weight", np.ascontiguousarray(weight.T))
            inputs = [x, self.node("Transpose", [stored], weight.shape, perm=[1, 0])]
            self.hidden_weights.add(stored)
            self.constants.add(inputs[1])
        else:
            inputs = [x, self.weight(f"{name}.weight", weight)]
        bias_shape = self.pick([(n_out,), (1, n_out), None], [3, 1, 1])
        if bias_shape is not None:
            inputs.append(self.const(f"{name}.bias", self.normal(bias_shape, 0.1)))
        attrs = {"transB": 1} if trans_b else {}
        if self.chance(0.2):
            attrs["alpha"] = float(self.pick((0.5, 1.5, -1.0)))
        if bias_shape is not None and self.chance(0.2):
            attrs["beta"] = float(self.pick((0.5, 2.0)))
        return self.node("Gemm", inputs, (m, n_out), **attrs)

    def matmul(self, x: str, n_out: int) -> str:
        """MatMul by a constant [K, N] weight, then (often) Add of a bias, as other exports do."""
        m, k = self.shapes[x]
        name = self.fresh("fc")
        y = self.node("MatMul", [x, self.weight(f"{name}.weight", self.normal((k, n_out), math.sqrt(2.0 / k)))],
                      (m, n_out))
        if self.chance(0.3):
            return y
        return self.node("Add", [y, self.const(f"{name}.bias", self.normal((n_out,), 0.1))], (m, n_out))

    # ---- layers without weights ----------------------------------------------------------

    def activation(self, x: str) -> str:
        kinds = ["Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid"] + (["HardSwish"] if self.opset >= 14 else [])
        kind = self.pick(kinds)
        if kind == "Clip":
            return self._clip(x)
        attrs = {}
        if kind == "LeakyRelu" and self.chance(0.7):
            attrs["alpha"] = round(float(self.rng.uniform(0.01, 0.5)), 3)
        if kind == "HardSigmoid" and self.chance(0.7):
            attrs = {"alpha": round(float(self.rng.uniform(0.1, 0.5)), 3),
                     "beta": round(float(self.rng.uniform(0.2, 0.7)), 3)}
        return self.node(kind, [x], self.shapes[x], **attrs)

    def _clip(self, x: str) -> str:
        # Opset 11+: the bounds are optional inputs; "" skips min while giving max.
        lo, hi = self.pick([(0.0, 6.0), (-1.0, 1.0), (0.0, None), (None, 0.5), (None, None), (-0.5, 3.0)])
        inputs = [x, "" if lo is None else self.const("clip.min", np.array(lo, np.float32)),
                  "" if hi is None else self.const("clip.max", np.array(hi, np.float32))]
        while inputs[-1] == "":
            inputs.pop()
        return self.node("Clip", inputs, self.shapes[x])

    def pool(self, x: str, kind: str, kernel: Shape, strides: Shape, pads: Shape, ceil: bool,
             dilations: Shape = (1, 1), count_include_pad: bool = False) -> str:
        n, c, h, w = self.shapes[x]
        out = [pool_out(s, k, st, pads[a], pads[a + 2], d, ceil)
               for a, (s, k, st, d) in enumerate(zip((h, w), kernel, strides, dilations))]
        assert min(out) >= 1
        attrs = dict(kernel_shape=list(kernel), strides=list(strides), pads=list(pads), ceil_mode=int(ceil))
        if kind == "MaxPool" and dilations != (1, 1):
            attrs["dilations"] = list(dilations)
        if kind == "AveragePool" and count_include_pad:
            attrs["count_include_pad"] = 1
        return self.node(kind, [x], (n, c, *out), **attrs)

    def global_pool(self, x: str) -> str:
        """GlobalAveragePool, or the ReduceMean over H, W (keepdims) the dynamo exporter writes."""
        n, c = self.shapes[x][:2]
        if self.chance(0.7):
            return self.node("GlobalAveragePool", [x], (n, c, 1, 1))
        return self.reduce_mean(x, keepdims=True)

    def reduce_mean(self, x: str, keepdims: bool) -> str:
        n, c = self.shapes[x][:2]
        shape = (n, c, 1, 1) if keepdims else (n, c)
        axes = list(self.pick([(2, 3), (-2, -1), (3, 2)]))
        attrs = {} if keepdims and self.chance(0.5) else {"keepdims": int(keepdims)}
        if self.opset < 18:
            return self.node("ReduceMean", [x], shape, axes=axes, **attrs)
        return self.node("ReduceMean", [x, self.const("reduce.axes", np.array(axes, np.int64))], shape, **attrs)

    def binary(self, op: str, a: str, b: str) -> str:
        """Add / Mul with NumPy broadcasting (either operand may be a constant)."""
        return self.node(op, [a, b], np.broadcast_shapes(self.shapes[a], self.shapes[b]))

    def concat(self, parts: list[str], axis: int) -> str:
        shape = list(self.shapes[parts[0]])
        shape[axis] = sum(self.shapes[p][axis] for p in parts)
        return self.node("Concat", parts, shape, axis=axis)

    def alias(self, x: str) -> str:
        return self.node(self.pick(ALIASES), [x], self.shapes[x])

    def reshape(self, x: str, target: list[int], shape: Shape) -> str:
        return self.node("Reshape", [x, self.const("reshape.shape", np.array(target, np.int64))], shape)

    def squeeze(self, op: str, x: str, axes: list[int], shape: Shape) -> str:
        """Squeeze / Unsqueeze: `axes` an attribute before opset 13, an input from then on."""
        if self.opset < 13:
            return self.node(op, [x], shape, axes=axes)
        return self.node(op, [x, self.const(f"{op.lower()}.axes", np.array(axes, np.int64))], shape)

    def flatten(self, x: str, axis: int) -> str:
        shape = self.shapes[x]
        rows = math.prod(shape[: axis if axis >= 0 else axis + len(shape)])
        return self.node("Flatten", [x], (rows, math.prod(shape) // rows), axis=axis)

    def shape_flatten(self, x: str) -> str:
        """`x.view(x.size(0), -1)` as torch exports it: Shape -> Gather -> Unsqueeze -> Concat ->
        Reshape, a subgraph the frontend folds to a constant shape."""
        n = self.shapes[x][0]
        dims = self.node("Shape", [x], (len(self.shapes[x]),))
        index = self.node("Gather", [dims, self.const("gather.index", np.array(0, np.int64))], (), axis=0)
        batch = self.squeeze("Unsqueeze", index, [0], (1,))
        target = self.node("Concat", [batch, self.const("flat.rest", np.array([-1], np.int64))], (2,), axis=0)
        self.constants |= {dims, index, batch, target}
        return self.node("Reshape", [x, target], (n, math.prod(self.shapes[x]) // n))

    def softmax(self, x: str, axis: int) -> str:
        return self.node("Softmax", [x], self.shapes[x], axis=axis)

    # ---- the model -----------------------------------------------------------------------

    def finish(self, name: str, outputs: list[str]) -> onnx.ModelProto:
        in_dims = ["N", *self.shapes["input"][1:]] if self.symbolic_batch else list(self.shapes["input"])
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_dims)],
            # Outputs declare their rank only: onnx's shape inference gets ceil-mode pools wrong
            # (onnx 1.23 keeps a window that starts in the right pad), and onnxruntime refuses a
            # model whose declared dims contradict it. `Case.shapes` has the real output shapes.
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, [None] * len(self.shapes[o])) for o in outputs],
            initializer=self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  producer_name="sparsec.fuzz")
        # The oldest IR version that fits the opset, so every onnxruntime reads it.
        model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
        return model


def same_pads(size: Shape, kernel: Shape, strides: Shape, mode: str) -> Shape:
    """Explicit (top, left, bottom, right) pads of auto_pad SAME_UPPER / SAME_LOWER / VALID."""
    if mode == "VALID":
        return (0, 0, 0, 0)
    begins, ends = [], []
    for s, k, st in zip(size, kernel, strides):
        total = max((math.ceil(s / st) - 1) * st + k - s, 0)
        small, big = total // 2, total - total // 2
        begins.append(small if mode == "SAME_UPPER" else big)
        ends.append(big if mode == "SAME_UPPER" else small)
    return (*begins, *ends)
