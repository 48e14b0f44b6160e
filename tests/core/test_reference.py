"""The reference interpreter against onnxruntime, one op at a time.

Each test builds a one-node ONNX model with onnx.helper and the same op directly with the IR
classes, runs both and compares: max|ours - ort| / max(max|ort|, 1e-6) <= 1e-4.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from sparsec.errors import UserError
from sparsec.ir import OPS, Activation, Module, Param, TensorType, Weight, verify
from sparsec.ir import ops as ir
from sparsec.ir.activation import ACTIVATION_PARAMS
from sparsec.ir.types import dtype_name
from sparsec.reference import ACTIVATIONS, KERNELS, check_inputs, run_reference

RTOL = 1e-4
PENDING = TensorType("f32", ())  # an op's type before `typed` infers it
PROPERTY = settings(deadline=None, max_examples=40)

# --- helpers -------------------------------------------------------------------------------------


def rand(*shape: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _type(a: np.ndarray) -> TensorType:
    return TensorType(dtype_name(a.dtype), a.shape)


def module_of(op: ir.Op, inputs: dict[str, np.ndarray], weights: dict[str, np.ndarray] | None = None) -> Module:
    """A verified one-op module; `op` may carry PENDING as its type, it is inferred here."""
    params = tuple(Param(n, _type(a)) for n, a in inputs.items())
    consts = tuple(Weight(n, _type(a), a) for n, a in (weights or {}).items())
    types = {f"%{p.name}": p.type for p in params} | {f"@{w.name}": w.type for w in consts}
    op = dataclasses.replace(op, type=op.infer(types))
    return verify(Module("m", params, (op,), (op.result,), consts))


def run_ir(op: ir.Op, inputs: dict[str, np.ndarray], weights: dict[str, np.ndarray] | None = None) -> np.ndarray:
    return run_reference(module_of(op, inputs, weights), inputs)[op.result]


_SESSION = ort.SessionOptions()
_SESSION.intra_op_num_threads = 1  # one-node models: a thread pool per session costs more than it saves
_SESSION.inter_op_num_threads = 1


def run_onnx(nodes: list, inputs: dict[str, np.ndarray], inits: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Run an opset-17 graph of `nodes` in onnxruntime; returns the last node's output."""
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in inputs.items()],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, n) for n, a in (inits or {}).items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), _SESSION, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape, f"shape {ours.shape} != onnxruntime's {theirs.shape}"
    assert ours.dtype == theirs.dtype, f"dtype {ours.dtype} != onnxruntime's {theirs.dtype}"
    error = np.max(np.abs(ours - theirs), initial=0.0) / max(np.max(np.abs(theirs), initial=0.0), 1e-6)
    assert error <= RTOL, f"relative error {error:.3g} > {RTOL}"


# Every activation kind, some with two parameter sets; the ONNX node(s) computing each.
ACTS = [
    Activation("relu"), Activation("clip", (0.0, 6.0)), Activation("clip", (-1.5, 0.5)),
    Activation("leaky_relu", (0.1,)), Activation("sigmoid"), Activation("hard_sigmoid", (0.2, 0.5)),
    Activation("hard_sigmoid", (0.3, -0.1)), Activation("hard_swish"),
]  # fmt: skip


def onnx_activation(act: Activation, x: str, y: str) -> tuple[list, dict[str, np.ndarray]]:
    if act.kind == "clip":
        bounds = {f"{y}.min": np.float32(act.params[0]), f"{y}.max": np.float32(act.params[1])}
        return [helper.make_node("Clip", [x, *bounds], [y])], bounds
    op_type, attrs = {
        "relu": ("Relu", {}), "leaky_relu": ("LeakyRelu", {"alpha": act.params[:1]}),
        "sigmoid": ("Sigmoid", {}), "hard_sigmoid": ("HardSigmoid", dict(zip(("alpha", "beta"), act.params))),
        "hard_swish": ("HardSwish", {}),
    }[act.kind]  # fmt: skip
    attrs = {k: v[0] if isinstance(v, tuple) else v for k, v in attrs.items()}
    return [helper.make_node(op_type, [x], [y], **attrs)], {}


# --- the registry --------------------------------------------------------------------------------


def test_every_op_has_a_kernel():
    assert set(KERNELS) == set(OPS.values())


def test_every_activation_kind_is_defined_and_tested():
    assert set(ACTIVATIONS) == set(ACTIVATION_PARAMS) == {a.kind for a in ACTS}


# --- conv2d --------------------------------------------------------------------------------------


def conv_pair(x, w, b=None, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1, act=None, **extra):
    """(ours, onnxruntime's) output of one convolution (+ activation)."""
    weights = {"w": w} | ({} if b is None else {"b": b})
    op = ir.Conv2d("y", PENDING, input="%x", weight="@w", bias=None if b is None else "@b", strides=strides,
                   pads=pads, dilations=dilations, groups=groups, activation=act, **extra)
    attrs = dict(kernel_shape=list(w.shape[2:]), strides=list(strides), pads=list(pads),
                 dilations=list(dilations), group=groups)
    nodes = [helper.make_node("Conv", ["x", *weights], ["conv" if act else "y"], **attrs)]
    inits = dict(weights)
    if act is not None:
        act_nodes, act_inits = onnx_activation(act, "conv", "y")
        nodes, inits = nodes + act_nodes, inits | act_inits
    ours = run_ir(op, {"x": x}, weights)
    theirs = run_onnx(nodes, {"x": x}, inits)
    return ours, theirs


CONV_CASES = {
    # name: (x shape, w shape, bias, strides, pads, dilations, groups)
    "3x3-same": ((1, 3, 8, 8), (4, 3, 3, 3), True, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "stride2": ((2, 4, 9, 9), (6, 4, 3, 3), True, (2, 2), (1, 1, 1, 1), (1, 1), 1),
    "asymmetric": ((1, 2, 7, 10), (3, 2, 3, 2), False, (2, 1), (0, 1, 2, 0), (1, 1), 1),
    "dilated": ((1, 3, 11, 11), (5, 3, 3, 3), True, (1, 1), (2, 2, 2, 2), (2, 2), 1),
    "grouped": ((1, 4, 6, 6), (6, 2, 3, 3), True, (1, 1), (1, 1, 1, 1), (1, 1), 2),
    "depthwise": ((2, 5, 7, 7), (5, 1, 3, 3), True, (2, 2), (1, 1, 1, 1), (1, 1), 5),
    "depthwise-multiplier": ((1, 3, 6, 6), (6, 1, 3, 3), False, (1, 1), (1, 1, 1, 1), (1, 1), 3),
    "pointwise": ((1, 8, 5, 5), (4, 8, 1, 1), True, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "7x7-stem": ((1, 3, 20, 20), (8, 3, 7, 7), False, (2, 2), (3, 3, 3, 3), (1, 1), 1),
}


@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv2d(case):
    x_shape, w_shape, bias, strides, pads, dilations, groups = case
    b = rand(w_shape[0], seed=2) if bias else None
    assert_close(*conv_pair(rand(*x_shape), rand(*w_shape, seed=1), b, strides, pads, dilations, groups))


@pytest.mark.parametrize("act", ACTS, ids=str)
def test_conv2d_fused_activation(act):
    x, w, b = rand(1, 3, 6, 6, scale=2.0), rand(4, 3, 3, 3, seed=1), rand(4, seed=2)
    assert_close(*conv_pair(x, w, b, pads=(1, 1, 1, 1), act=act))


@st.composite
def conv_attrs(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dilations = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    h = draw(st.integers(max(1, dilations[0] * (kh - 1) + 1 - pads[0] - pads[2]), 9))
    w = draw(st.integers(max(1, dilations[1] * (kw - 1) + 1 - pads[1] - pads[3]), 9))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return (draw(st.integers(1, 2)), cin, h, w), (cout, cin // groups, kh, kw), strides, pads, dilations, groups


@PROPERTY
@given(conv_attrs(), st.booleans(), st.integers(0, 2**16))
def test_conv2d_property(attrs, bias, seed):
    x_shape, w_shape, strides, pads, dilations, groups = attrs
    b = rand(w_shape[0], seed=seed + 2) if bias else None
    x, w = rand(*x_shape, seed=seed), rand(*w_shape, seed=seed + 1)
    assert_close(*conv_pair(x, w, b, strides, pads, dilations, groups))


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_filter_order_permuted_conv_equals_the_original(groups):
    """Stored row i = original filter order[i], writing channel order[i]; the bias is not permuted."""
    x, w, b = rand(1, 6, 7, 7), rand(6, 6 // groups, 3, 3, seed=1), rand(6, seed=2)
    order = (4, 0, 5, 2, 1, 3)  # crosses group boundaries for groups 2 and 6
    common = dict(input="%x", weight="@w", bias="@b", pads=(1, 1, 1, 1), groups=groups, activation=ACTS[0])
    plain = run_ir(ir.Conv2d("y", PENDING, **common), {"x": x}, {"w": w, "b": b})
    permuted = ir.Conv2d("y", PENDING, **common, filter_order=order)
    ours = run_ir(permuted, {"x": x}, {"w": w[list(order)], "b": b})
    np.testing.assert_array_equal(ours, plain)


@pytest.mark.parametrize("act", [None, ACTS[0], ACTS[3]], ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_residual_is_added_before_the_activation(act, bias):
    """conv2d(%x, @w, @b, %r) {activation} = act(Conv(x) + b + r): the ONNX Conv -> Add -> act chain."""
    x, w, b = rand(1, 3, 7, 7), rand(4, 3, 3, 3, seed=1), rand(4, seed=2)
    r = rand(1, 4, 4, 4, seed=3, scale=2.0)
    weights = {"w": w} | ({"b": b} if bias else {})
    op = ir.Conv2d("y", PENDING, input="%x", weight="@w", bias="@b" if bias else None, residual="%r",
                   strides=(2, 2), pads=(1, 1, 1, 1), activation=act, filter_order=(2, 0, 3, 1))
    stored = {"w": w[[2, 0, 3, 1]]} | ({"b": b} if bias else {})  # filter_order: rows stored permuted
    nodes = [helper.make_node("Conv", ["x", *weights], ["conv"], kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["conv", "r"], ["sum" if act else "y"])]
    inits = dict(weights)
    if act is not None:
        act_nodes, act_inits = onnx_activation(act, "sum", "y")
        nodes, inits = nodes + act_nodes, inits | act_inits
    assert_close(run_ir(op, {"x": x, "r": r}, stored), run_onnx(nodes, {"x": x, "r": r}, inits))


# --- linear, matmul, batch_norm ------------------------------------------------------------------


@pytest.mark.parametrize("act", [None, *ACTS], ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_linear(act, bias):
    x, w, b = rand(3, 20, scale=2.0), rand(7, 20, seed=1), rand(7, seed=2)
    weights = {"w": w} | ({"b": b} if bias else {})
    op = ir.Linear("y", PENDING, input="%x", weight="@w", bias="@b" if bias else None, activation=act)
    nodes = [helper.make_node("Gemm", ["x", *weights], ["gemm" if act else "y"], transB=1)]
    inits = dict(weights)
    if act is not None:
        act_nodes, act_inits = onnx_activation(act, "gemm", "y")
        nodes, inits = nodes + act_nodes, inits | act_inits
    assert_close(run_ir(op, {"x": x}, weights), run_onnx(nodes, {"x": x}, inits))


@pytest.mark.parametrize("shapes", [((3, 4), (4, 5)), ((2, 3, 4), (4, 6)), ((2, 1, 3, 4), (5, 4, 2)), ((4,), (4, 3))])
def test_matmul(shapes):
    a, b = rand(*shapes[0]), rand(*shapes[1], seed=1)
    op = ir.MatMul("y", PENDING, a="%a", b="%b")
    theirs = run_onnx([helper.make_node("MatMul", ["a", "b"], ["y"])], {"a": a, "b": b})
    assert_close(run_ir(op, {"a": a, "b": b}), theirs)


@pytest.mark.parametrize("shape", [(2, 4, 5, 5), (3, 4)])
def test_batch_norm(shape):
    c = shape[1]
    x = rand(*shape)
    stats = {"s": rand(c, seed=1), "b": rand(c, seed=2), "m": rand(c, seed=3),
             "v": np.abs(rand(c, seed=4)) + np.float32(0.1)}
    op = ir.BatchNorm("y", PENDING, input="%x", scale="@s", bias="@b", mean="@m", var="@v", epsilon=1e-3)
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)
    assert_close(run_ir(op, {"x": x}, stats), run_onnx([node], {"x": x}, stats))


# --- elementwise ---------------------------------------------------------------------------------


@pytest.mark.parametrize("act", ACTS, ids=str)
def test_activation(act):
    x = rand(2, 3, 10, 10, scale=4.0)
    x.flat[:3] = (0.0, 80.0, -120.0)  # the kinks and far into saturation (sigmoid's exp overflows)
    nodes, inits = onnx_activation(act, "x", "y")
    assert_close(run_ir(ir.Activate("y", PENDING, input="%x", fn=act), {"x": x}), run_onnx(nodes, {"x": x}, inits))


@pytest.mark.parametrize("shapes", [((2, 3, 4, 4), (2, 3, 4, 4)), ((2, 3, 4, 4), (1, 3, 1, 1)), ((4, 1), (3,))])
@pytest.mark.parametrize("cls, onnx_op", [(ir.Add, "Add"), (ir.Mul, "Mul")])
def test_broadcast_binary(shapes, cls, onnx_op):
    a, b = rand(*shapes[0]), rand(*shapes[1], seed=1)
    theirs = run_onnx([helper.make_node(onnx_op, ["a", "b"], ["y"])], {"a": a, "b": b})
    assert_close(run_ir(cls("y", PENDING, a="%a", b="%b"), {"a": a, "b": b}), theirs)


# --- pooling -------------------------------------------------------------------------------------


def pool_pair(x, kind, kernel, strides, pads, ceil_mode, dilations=(1, 1), count_include_pad=False):
    common = dict(input="%x", kernel=kernel, strides=strides, pads=pads, ceil_mode=ceil_mode)
    attrs = dict(kernel_shape=list(kernel), strides=list(strides), pads=list(pads), ceil_mode=int(ceil_mode))
    if kind == "max":
        op = ir.MaxPool("y", PENDING, **common, dilations=dilations)
        node = helper.make_node("MaxPool", ["x"], ["y"], **attrs, dilations=list(dilations))
    else:
        op = ir.AvgPool("y", PENDING, **common, count_include_pad=count_include_pad)
        node = helper.make_node("AveragePool", ["x"], ["y"], **attrs, count_include_pad=int(count_include_pad))
    return run_ir(op, {"x": x}), run_onnx([node], {"x": x})


POOL_CASES = {
    # name: (x shape, kernel, strides, pads, ceil_mode)
    "2x2": ((1, 2, 8, 8), (2, 2), (2, 2), (0, 0, 0, 0), False),
    "3x3-s2-pad1": ((2, 3, 9, 9), (3, 3), (2, 2), (1, 1, 1, 1), False),
    "ceil-odd": ((1, 2, 7, 7), (2, 2), (2, 2), (0, 0, 0, 0), True),
    "ceil-pad": ((1, 2, 6, 7), (3, 3), (2, 2), (1, 1, 1, 1), True),
    "asymmetric-ceil": ((1, 1, 5, 8), (3, 2), (2, 3), (0, 1, 2, 0), True),
}


@pytest.mark.parametrize("case", POOL_CASES.values(), ids=POOL_CASES.keys())
@pytest.mark.parametrize("kind, include_pad", [("max", False), ("avg", False), ("avg", True)])
def test_pool(case, kind, include_pad):
    x_shape, kernel, strides, pads, ceil_mode = case
    assert_close(*pool_pair(rand(*x_shape), kind, kernel, strides, pads, ceil_mode, count_include_pad=include_pad))


@st.composite
def pool_attrs(draw, dilated: bool):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilations = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilated else (1, 1)
    pads = tuple(draw(st.integers(0, kernel[i % 2] - 1)) for i in range(4))  # onnxruntime: pad < kernel
    h = draw(st.integers(max(1, dilations[0] * (kernel[0] - 1) + 1 - pads[0] - pads[2]), 9))
    w = draw(st.integers(max(1, dilations[1] * (kernel[1] - 1) + 1 - pads[1] - pads[3]), 9))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return (1, 2, h, w), kernel, strides, pads, draw(st.booleans()), dilations


@PROPERTY
@given(pool_attrs(dilated=True), st.integers(0, 2**16))
def test_max_pool_property(attrs, seed):
    x_shape, kernel, strides, pads, ceil_mode, dilations = attrs
    assert_close(*pool_pair(rand(*x_shape, seed=seed), "max", kernel, strides, pads, ceil_mode, dilations))


@PROPERTY
@given(pool_attrs(dilated=False), st.booleans(), st.integers(0, 2**16))
def test_avg_pool_property(attrs, include_pad, seed):
    x_shape, kernel, strides, pads, ceil_mode, _ = attrs
    x = rand(*x_shape, seed=seed)
    assert_close(*pool_pair(x, "avg", kernel, strides, pads, ceil_mode, count_include_pad=include_pad))


def test_global_avg_pool():
    x = rand(2, 3, 5, 7)
    theirs = run_onnx([helper.make_node("GlobalAveragePool", ["x"], ["y"])], {"x": x})
    assert_close(run_ir(ir.GlobalAvgPool("y", PENDING, input="%x"), {"x": x}), theirs)


# --- shapes and softmax --------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, 2, 4])
def test_flatten(axis):
    x = rand(2, 3, 4, 5)
    theirs = run_onnx([helper.make_node("Flatten", ["x"], ["y"], axis=axis)], {"x": x})
    assert_close(run_ir(ir.Flatten("y", PENDING, input="%x", axis=axis), {"x": x}), theirs)


def test_reshape():
    x, shape = rand(2, 3, 4), np.array([4, 6], dtype=np.int64)
    theirs = run_onnx([helper.make_node("Reshape", ["x", "shape"], ["y"])], {"x": x}, {"shape": shape})
    assert_close(run_ir(ir.Reshape("y", PENDING, input="%x", shape=(4, 6)), {"x": x}), theirs)


@pytest.mark.parametrize("axis", [0, 1, 3])
def test_concat(axis):
    parts = {f"x{i}": rand(*(2 + i if d == axis else 2 for d in range(4)), seed=i) for i in range(3)}
    theirs = run_onnx([helper.make_node("Concat", list(parts), ["y"], axis=axis)], parts)
    op = ir.Concat("y", PENDING, inputs=tuple(f"%{n}" for n in parts), axis=axis)
    assert_close(run_ir(op, parts), theirs)


@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_softmax(axis):
    x = rand(3, 4, 5, scale=10.0)
    theirs = run_onnx([helper.make_node("Softmax", ["x"], ["y"], axis=axis)], {"x": x})
    assert_close(run_ir(ir.Softmax("y", PENDING, input="%x", axis=axis), {"x": x}), theirs)


# --- a whole module and its inputs ---------------------------------------------------------------


def two_output_module() -> Module:
    f32 = lambda *shape: TensorType("f32", shape)  # noqa: E731
    w = rand(4, 3, 3, 3, seed=1)
    return verify(Module(
        "net",
        (Param("input", f32(1, 3, 8, 8)), Param("scale", f32(1, 4, 1, 1))),
        (
            ir.Conv2d("conv", f32(1, 4, 8, 8), input="%input", weight="@w", pads=(1, 1, 1, 1), activation=ACTS[0]),
            ir.Mul("scaled", f32(1, 4, 8, 8), a="%conv", b="%scale"),
            ir.GlobalAvgPool("pooled", f32(1, 4, 1, 1), input="%scaled"),
        ),
        ("pooled", "conv"),
        (Weight("w", f32(4, 3, 3, 3), w),),
    ))  # fmt: skip


def test_module_outputs_keyed_in_order():
    module = two_output_module()
    x, s = rand(1, 3, 8, 8), rand(1, 4, 1, 1, seed=5)
    outputs = run_reference(module, {"scale": s, "input": x})
    assert list(outputs) == ["pooled", "conv"]
    conv = KERNELS[ir.Conv2d](module.ops[0], {"%input": x, "@w": module.weights[0].data})
    np.testing.assert_array_equal(outputs["conv"], conv)
    np.testing.assert_allclose(outputs["pooled"], (conv * s).mean(axis=(2, 3), keepdims=True), rtol=1e-5)


INPUT_ERRORS = {
    "missing": ({"input": rand(1, 3, 8, 8)}, "input 'scale' is missing; the model's inputs are: input, scale"),
    "unknown": ({"imput": rand(1, 3, 8, 8), "scale": rand(1, 4, 1, 1)},
                "input 'imput' is not an input of the model; the model's inputs are: input, scale"),
    "shape": ({"input": rand(1, 3, 8, 7), "scale": rand(1, 4, 1, 1)},
              "input 'input' has shape [1, 3, 8, 7] but the model expects f32[1, 3, 8, 8]"),
    "dtype": ({"input": rand(1, 3, 8, 8).astype(np.float64), "scale": rand(1, 4, 1, 1)},
              "input 'input' has dtype f64 but the model expects f32[1, 3, 8, 8]"),
    "unnamed-dtype": ({"input": rand(1, 3, 8, 8), "scale": np.zeros((1, 4, 1, 1), np.float16)},
                      "input 'scale' has dtype float16 but the model expects f32[1, 4, 1, 1]"),
}  # fmt: skip


@pytest.mark.parametrize("inputs, message", INPUT_ERRORS.values(), ids=INPUT_ERRORS.keys())
def test_input_errors(inputs, message):
    with pytest.raises(UserError) as err:
        check_inputs(two_output_module(), inputs)
    assert str(err.value) == message
    with pytest.raises(UserError):
        run_reference(two_output_module(), inputs)


def test_check_inputs_orders_by_module():
    x, s = rand(1, 3, 8, 8), rand(1, 4, 1, 1)
    assert list(check_inputs(two_output_module(), {"scale": s, "input": x})) == ["input", "scale"]
