"""The ONNX frontend, op by op: a tiny onnx.helper model per case is imported, printed and parsed
back (`parse(print(m)) == m`), run by the reference interpreter and compared with onnxruntime
(max|ours - ort| / max(max|ort|, 1e-6) <= 1e-4). Errors are in test_frontend_errors.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsec.frontend import ImportResult, import_onnx
from sparsec.ir import Dense, Masked, parse_module, print_module
from sparsec.ir.files import weight_arrays
from sparsec.reference import run_reference

RTOL = 1e-4

# --- helpers -------------------------------------------------------------------------------------


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def make_model(nodes, inputs: dict, inits: dict | None = None, outputs: list[str] | None = None,
               opset: int = 17, name: str = "test") -> onnx.ModelProto:
    """A model of `nodes`; `inputs` maps name -> shape (dims may be symbolic strings)."""
    outputs = outputs or [nodes[-1].output[0]]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in (inits or {}).items()],
    )  # fmt: skip
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


def feeds_for(model: onnx.ModelProto, shapes: dict | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for i, value in enumerate(v for v in model.graph.input if v.name not in inits):
        dims = (shapes or {}).get(value.name) or [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rand(*dims, seed=seed + i) * 2
    return feeds


def assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape, f"shape {ours.shape} != onnxruntime's {theirs.shape}"
    error = np.max(np.abs(ours - theirs), initial=0.0) / max(np.max(np.abs(theirs), initial=0.0), 1e-6)
    assert error <= RTOL, f"relative error {error:.3g} > {RTOL}"


def assert_round_trips(result: ImportResult) -> None:
    module = result.module
    assert parse_module(print_module(module), arrays=weight_arrays(module)) == module


def check(model: onnx.ModelProto, masks=None, input_shapes=None, ort_model=None) -> ImportResult:
    """Import `model`, round-trip its text, and compare the reference with onnxruntime on every
    output (`ort_model`, when given, is what onnxruntime runs, e.g. with masks applied)."""
    result = import_onnx(model, masks, input_shapes)
    assert_round_trips(result)
    feeds = feeds_for(model, input_shapes)
    ours = run_reference(result.module, feeds)
    session = ort.InferenceSession((ort_model or model).SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    for name, theirs in zip(names, session.run(names, feeds), strict=True):
        assert_close(ours[name], theirs)
    return result


def node(op_type: str, inputs: list[str], output: str = "y", **attrs) -> onnx.NodeProto:
    return helper.make_node(op_type, inputs, [output], name=output, **attrs)


X4 = {"x": [1, 4, 8, 8]}

# --- per-op cases --------------------------------------------------------------------------------

CONV = {
    "plain": dict(pads=[1, 1, 1, 1]),
    "stride2-asymmetric": dict(strides=[2, 2], pads=[0, 1, 2, 0]),
    "dilated": dict(dilations=[2, 2], pads=[2, 2, 2, 2]),
    "same-upper-stride2": dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    "same-lower-stride2": dict(auto_pad="SAME_LOWER", strides=[2, 2]),
    "same-upper-even-kernel": dict(auto_pad="SAME_UPPER", kernel_shape=[2, 2]),
    "same-lower-even-kernel": dict(auto_pad="SAME_LOWER", kernel_shape=[2, 2]),
    "valid": dict(auto_pad="VALID", strides=[3, 3]),
    "grouped": dict(group=2, pads=[1, 1, 1, 1]),
    "depthwise": dict(group=4, pads=[1, 1, 1, 1], strides=[2, 2]),
}


@pytest.mark.parametrize("attrs", CONV.values(), ids=CONV.keys())
@pytest.mark.parametrize("bias", [True, False])
def test_conv(attrs, bias):
    group, kernel = attrs.get("group", 1), attrs.get("kernel_shape", [3, 3])
    out = 4 if group == 4 else 6
    inits = {"w": rand(out, 4 // group, *kernel, seed=1)} | ({"b": rand(out, seed=2)} if bias else {})
    model = make_model([node("Conv", ["x", *inits], **attrs)], {"x": [1, 4, 9, 10]}, inits)
    check(model)


def activation_cases() -> dict:
    bounds = {"lo": np.float32(-0.5), "hi": np.float32(0.7)}
    cases = {"relu": ([node("Relu", ["x"])], {}, 17), "sigmoid": ([node("Sigmoid", ["x"])], {}, 17),
             "leaky": ([node("LeakyRelu", ["x"], alpha=0.1)], {}, 17),
             "leaky-default": ([node("LeakyRelu", ["x"])], {}, 11),
             "hard-sigmoid": ([node("HardSigmoid", ["x"], alpha=0.3, beta=0.4)], {}, 13),
             "hard-swish": ([node("HardSwish", ["x"])], {}, 21)}  # fmt: skip
    for opset in (11, 13, 17, 21):
        cases[f"clip-both-{opset}"] = ([node("Clip", ["x", "lo", "hi"])], bounds, opset)
        cases[f"clip-min-{opset}"] = ([node("Clip", ["x", "lo"])], bounds, opset)
        cases[f"clip-max-only-{opset}"] = ([node("Clip", ["x", "", "hi"])], bounds, opset)
        cases[f"clip-none-{opset}"] = ([node("Clip", ["x"])], {}, opset)
    return cases


ACTIVATIONS = activation_cases()


@pytest.mark.parametrize("case", ACTIVATIONS.values(), ids=ACTIVATIONS.keys())
def test_activation(case):
    nodes, inits, opset = case
    result = check(make_model(nodes, X4, inits, opset=opset))
    assert [op.name for op in result.module.ops] == ["activation"]


def test_clip_bounds_from_constant_nodes():
    nodes = [helper.make_node("Constant", [], ["six"], value=numpy_helper.from_array(np.float32(6.0))),
             helper.make_node("Constant", [], ["zero"], value_float=0.0), node("Clip", ["x", "zero", "six"])]
    result = check(make_model(nodes, X4))
    assert "fn = clip(0.0, 6.0)" in print_module(result.module)
    assert result.module.weights == ()


GEMM = {
    "transB": (dict(transB=1), (5, 7), (5,)),
    "no-transB": ({}, (7, 5), (5,)),
    "alpha-beta": (dict(transB=1, alpha=0.5, beta=2.0), (5, 7), (5,)),
    "bias-row": (dict(alpha=1.5), (7, 5), (1, 5)),
    "bias-scalar": (dict(transB=1), (5, 7), ()),
    "bias-full": (dict(transB=1, beta=0.5), (5, 7), (3, 5)),
    "no-bias": (dict(transB=1), (5, 7), None),
}


@pytest.mark.parametrize("case", GEMM.values(), ids=GEMM.keys())
def test_gemm_with_constant_b(case):
    attrs, b_shape, c_shape = case
    inits = {"B": rand(*b_shape, seed=1)} | ({} if c_shape is None else {"C": rand(*c_shape, seed=2)})
    result = check(make_model([node("Gemm", ["x", *inits], **attrs)], {"x": [3, 7]}, inits))
    assert result.module.ops[0].name == "linear"
    assert result.module.weight("B").type.shape == (5, 7)


@pytest.mark.parametrize("attrs", [{}, dict(alpha=2.0, beta=0.5)], ids=["plain", "alpha-beta"])
def test_gemm_of_two_values(attrs):
    nodes = [node("Gemm", ["a", "b", "c"], **attrs)]
    check(make_model(nodes, {"a": [3, 4], "b": [4, 5], "c": [3, 5]}))


def test_gemm_with_constant_transposed_a():
    inits = {"A": rand(4, 3, seed=1)}
    check(make_model([node("Gemm", ["A", "b"], transA=1)], {"b": [4, 5]}, inits))


def test_matmul_with_constant_2d_b_is_linear():
    result = check(make_model([node("MatMul", ["x", "W"])], {"x": [2, 6]}, {"W": rand(6, 4, seed=1)}))
    (op,) = result.module.ops
    assert op.name == "linear" and result.module.weight("W").type.shape == (4, 6)


@pytest.mark.parametrize("shapes", [((2, 3, 6), (6, 4)), ((5, 6), None)], ids=["batched", "two-values"])
def test_matmul(shapes):
    a_shape, b_shape = shapes
    inits = {} if b_shape is None else {"W": rand(*b_shape, seed=1)}
    inputs = {"a": list(a_shape)} | ({"W": [6, 3]} if b_shape is None else {})
    result = check(make_model([node("MatMul", ["a", "W"])], inputs, inits))
    assert [op.name for op in result.module.ops] == ["matmul"]


def test_batch_norm():
    rng = np.random.default_rng(3)
    inits = {"s": rng.uniform(0.5, 1.5, 4), "b": rng.normal(size=4), "m": rng.normal(size=4),
             "v": rng.uniform(0.5, 2.0, 4)}  # fmt: skip
    inits = {k: v.astype(np.float32) for k, v in inits.items()}
    check(make_model([node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3)], X4, inits))


ELEMENTWISE = {
    "values": (["x", "z"], {}),
    "channel-weight-right": (["x", "c"], {"c": rand(4, 1, 1, seed=5)}),
    "channel-weight-left": (["c", "x"], {"c": rand(4, 1, 1, seed=5)}),
    "scalar": (["x", "s"], {"s": np.float32(1.5)}),
}


@pytest.mark.parametrize("op_type", ["Add", "Mul"])
@pytest.mark.parametrize("case", ELEMENTWISE.values(), ids=ELEMENTWISE.keys())
def test_elementwise(op_type, case):
    inputs, inits = case
    check(make_model([node(op_type, inputs)], X4 | ({"z": [1, 4, 8, 8]} if "z" in inputs else {}), inits))


POOLS = {
    "max-3x3-s2": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "max-default-stride": ("MaxPool", dict(kernel_shape=[2, 2])),
    "max-ceil": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    "max-dilated": ("MaxPool", dict(kernel_shape=[2, 2], dilations=[2, 2])),
    "max-same-upper": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    "avg-pad-excluded": ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "avg-pad-included": ("AveragePool", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)),
    "avg-ceil": ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    "avg-same-lower": ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_LOWER")),
}


@pytest.mark.parametrize("case", POOLS.values(), ids=POOLS.keys())
def test_pool(case):
    op_type, attrs = case
    check(make_model([node(op_type, ["x"], **attrs)], {"x": [1, 3, 9, 9]}))


def test_global_average_pool():
    check(make_model([node("GlobalAveragePool", ["x"])], X4))


@pytest.mark.parametrize("opset, keepdims", [(17, 1), (17, 0), (18, 1), (21, 0)])
def test_reduce_mean_over_hw(opset, keepdims):
    if opset < 18:
        nodes, inits = [node("ReduceMean", ["x"], axes=[2, 3], keepdims=keepdims)], {}
    else:
        nodes, inits = [node("ReduceMean", ["x", "axes"], keepdims=keepdims)], {"axes": np.array([-1, -2])}
    check(make_model(nodes, X4, inits, opset=opset))


@pytest.mark.parametrize("axis", [0, 1, 2, -1, 4])
def test_flatten(axis):
    check(make_model([node("Flatten", ["x"], axis=axis)], X4))


@pytest.mark.parametrize("shape", [[0, -1], [1, 4, 64], [-1, 8, 0, 2], [2, 2, 4, 16]], ids=str)
def test_reshape_resolves_zero_and_minus_one(shape):
    result = check(make_model([node("Reshape", ["x", "s"])], X4, {"s": np.array(shape, np.int64)}))
    assert -1 not in result.module.ops[0].shape and 0 not in result.module.ops[0].shape


def test_squeeze_and_unsqueeze_of_values_become_reshapes():
    nodes = [node("Unsqueeze", ["x", "ax"], "u"), node("Squeeze", ["u", "ax"], "y")]
    result = check(make_model(nodes, X4, {"ax": np.array([2], np.int64)}, opset=13))
    assert [op.name for op in result.module.ops] == ["reshape", "reshape"]


@pytest.mark.parametrize("axis", [1, -1])
def test_concat_of_values_and_a_weight(axis):
    inits = {"c": rand(1, 4, 8, 3, seed=4)} if axis == -1 else {"c": rand(1, 2, 8, 8, seed=4)}
    check(make_model([node("Concat", ["x", "z", "c"], axis=axis)], X4 | {"z": [1, 4, 8, 8]}, inits))


SOFTMAX = {f"opset{o}-{'default' if a is None else a}": (o, a)
           for o in (11, 13, 17, 21) for a in (None, 1, -1)}  # fmt: skip


@pytest.mark.parametrize("case", SOFTMAX.values(), ids=SOFTMAX.keys())
def test_softmax_on_4d(case):
    opset, axis = case
    attrs = {} if axis is None else {"axis": axis}
    check(make_model([node("Softmax", ["x"], **attrs)], {"x": [2, 3, 4, 5]}, opset=opset))


def test_softmax_2d_before_opset_13_is_one_op():
    result = check(make_model([node("Softmax", ["x"])], {"x": [2, 10]}, opset=11))
    assert [op.name for op in result.module.ops] == ["softmax"]


DROPOUT = {
    "opset11": ([node("Dropout", ["x"], "d"), node("Relu", ["d"])], {}, 11),
    "opset13-ratio": ([node("Dropout", ["x", "r"], "d"), node("Relu", ["d"])], {"r": np.float32(0.5)}, 13),
    "opset17-training-false": ([node("Dropout", ["x", "r", "t"], "d"), node("Relu", ["d"])],
                               {"r": np.float32(0.5), "t": np.array(False)}, 17),
    "opset21-identity": ([node("Identity", ["x"], "d"), node("Dropout", ["d"], "e"), node("Relu", ["e"])], {}, 21),
}


@pytest.mark.parametrize("case", DROPOUT.values(), ids=DROPOUT.keys())
def test_dropout_and_identity_are_aliases(case):
    nodes, inits, opset = case
    result = check(make_model(nodes, X4, inits, opset=opset))
    assert [(op.name, op.input) for op in result.module.ops] == [("activation", "%x")]


def test_an_output_behind_an_alias_keeps_its_onnx_name():
    nodes = [node("Relu", ["x"], "r"), node("Identity", ["r"], "i"), node("Dropout", ["i"], "out")]
    result = check(make_model(nodes, X4))
    assert [op.result for op in result.module.ops] == ["out"] and result.module.outputs == ("out",)


def test_constant_node_becomes_a_weight():
    value = numpy_helper.from_array(rand(4, 1, 1, seed=9))
    nodes = [helper.make_node("Constant", [], ["k"], value=value), node("Mul", ["x", "k"])]
    result = check(make_model(nodes, X4))
    assert [w.name for w in result.module.weights] == ["k"]


def test_graph_input_that_is_an_initializer_is_a_weight():
    model = make_model([node("Add", ["x", "bias"])], X4 | {"bias": [4, 1, 1]}, {"bias": rand(4, 1, 1)})
    result = check(model)
    assert [p.name for p in result.module.inputs] == ["x"] and result.module.weight("bias").layout == Dense()


# --- shape subgraphs and symbolic batch ------------------------------------------------------------


def shape_subgraph(opset: int) -> list:
    """What torch writes for `x.view(x.size(0), -1)`: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    unsqueeze = (node("Unsqueeze", ["n"], "n1", axes=[0]) if opset < 13 else node("Unsqueeze", ["n", "zero"], "n1"))
    return [node("Shape", ["x"], "shape"), node("Gather", ["shape", "zero_scalar"], "n", axis=0), unsqueeze,
            node("Concat", ["n1", "minus_one"], "target", axis=0), node("Reshape", ["x", "target"], "flat"),
            node("Relu", ["flat"], "y")]  # fmt: skip


SHAPE_INITS = {"zero_scalar": np.array(0, np.int64), "zero": np.array([0], np.int64),
               "minus_one": np.array([-1], np.int64)}  # fmt: skip


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("batch", [None, 3])
def test_shape_subgraph_folds_with_symbolic_batch(opset, batch):
    model = make_model(shape_subgraph(opset), {"x": ["N", 4, 8, 8]}, SHAPE_INITS, opset=opset)
    shapes = None if batch is None else {"x": (batch, 4, 8, 8)}
    result = check(model, input_shapes=shapes)
    assert [(op.name, op.type.shape) for op in result.module.ops] == [("reshape", (batch or 1, 256)),
                                                                     ("activation", (batch or 1, 256))]
    assert result.module.weights == ()


def test_shape_slice_cast_fold():
    nodes = [node("Shape", ["x"], "shape"), node("Slice", ["shape", "start", "end"], "lead"),
             node("Cast", ["lead"], "lead_f", to=TensorProto.FLOAT),
             node("Cast", ["lead_f"], "lead_i", to=TensorProto.INT64),
             node("Concat", ["lead_i", "minus_one"], "target", axis=0),
             node("Reshape", ["x", "target"], "y")]  # fmt: skip
    inits = {"start": np.array([0], np.int64), "end": np.array([2], np.int64),
             "minus_one": np.array([-1], np.int64)}  # fmt: skip
    result = check(make_model(nodes, {"x": ["batch", 4, 8, 8]}, inits))
    assert result.module.ops[0].shape == (1, 4, 64)


# --- masks ---------------------------------------------------------------------------------------


def test_masks_zero_outside_and_count():
    w, fc = rand(6, 4, 3, 3, seed=1), rand(96, 5, seed=2)  # fc: MatMul B [K, N], becomes linear [N, K]
    masks = {"w": np.random.default_rng(7).random(w.shape) < 0.5, "fc": np.random.default_rng(8).random(fc.shape) < 0.3}
    nodes = [node("Conv", ["x", "w"], "c", strides=[2, 2], pads=[1, 1, 1, 1]), node("Flatten", ["c"], "f"),
             node("MatMul", ["f", "fc"], "y")]  # fmt: skip
    masked = {"w": np.where(masks["w"], w, 0), "fc": np.where(masks["fc"], fc, 0)}
    result = check(make_model(nodes, X4, {"w": w, "fc": fc}), masks=masks,
                   ort_model=make_model(nodes, X4, masked))
    assert result.zeroed == {"w": int((~masks["w"]).sum()), "fc": int((~masks["fc"]).sum())}
    conv_w, fc_w = result.module.weight("w"), result.module.weight("fc")
    assert conv_w.layout == Masked() and np.array_equal(conv_w.parts["mask"], masks["w"])
    assert fc_w.layout == Masked() and np.array_equal(fc_w.parts["mask"], masks["fc"].T)
    assert np.array_equal(fc_w.data, masked["fc"].T)


def test_mask_counts_only_nonzeros_and_accepts_0_1_arrays():
    w = rand(6, 4, 3, 3, seed=1)
    w[0] = 0.0
    mask = np.ones(w.shape, np.uint8)
    mask[:2] = 0  # filter 0 is already zero: only filter 1's 36 weights are zeroed
    result = import_onnx(make_model([node("Conv", ["x", "w"])], X4, {"w": w}), masks={"w": mask})
    assert result.zeroed == {"w": 36}
    assert result.module.weight("w").parts["mask"].dtype == np.bool_


# --- golden text ---------------------------------------------------------------------------------

GOLDEN = """\
module @golden

const @"onnx::Conv_1" : f32[2, 1, 3, 3] dense
const @conv.bias : f32[2] dense
const @fc.weight : f32[3, 8] masked

func @main(%input : f32[1, 1, 4, 4]) {
  %"/conv/Conv_output_0" : f32[1, 2, 2, 2] = conv2d(%input, @"onnx::Conv_1", @conv.bias) {pads = [1, 1, 1, 1], strides = [2, 2]}
  %"/relu/Relu_output_0" : f32[1, 2, 2, 2] = activation(%"/conv/Conv_output_0") {fn = clip(0.0, 6.0)}
  %flat : f32[1, 8] = flatten(%"/relu/Relu_output_0")
  %logits : f32[1, 3] = linear(%flat, @fc.weight)
  %output : f32[1, 3] = softmax(%logits)
  return %output
}
"""  # noqa: E501


def test_golden_text():
    inits = {"onnx::Conv_1": rand(2, 1, 3, 3), "conv.bias": rand(2), "six": np.float32(6.0),
             "zero": np.float32(0.0), "fc.weight": rand(3, 8)}  # fmt: skip
    nodes = [helper.make_node("Conv", ["input", "onnx::Conv_1", "conv.bias"], ["/conv/Conv_output_0"],
                              strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["/conv/Conv_output_0", "zero", "six"], ["/relu/Relu_output_0"]),
             helper.make_node("Flatten", ["/relu/Relu_output_0"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc.weight"], ["logits"], transB=1),
             helper.make_node("Softmax", ["logits"], ["output"], axis=1)]  # fmt: skip
    model = make_model(nodes, {"input": ["batch", 1, 4, 4]}, inits, name="golden")
    mask = np.arange(24).reshape(3, 8) % 2 == 0
    result = check(model, masks={"fc.weight": mask}, ort_model=make_model(
        nodes, {"input": [1, 1, 4, 4]}, inits | {"fc.weight": np.where(mask, inits["fc.weight"], 0)}))
    assert print_module(result.module) == GOLDEN


def test_clip_bounds_of_shape_1():
    inits = {"lo": np.array([-0.5], np.float32), "hi": np.array([0.5], np.float32)}
    result = import_onnx(make_model([node("Clip", ["x", "lo", "hi"])], X4, inits))
    assert result.module.ops[0].fn.params == (-0.5, 0.5)
