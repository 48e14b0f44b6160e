"""The IR text form: parse(print(m)) == m for generated modules, located errors, the verifier."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsec.errors import CompileError, VerifyError
from sparsec.ir import (
    Activation,
    Dense,
    Masked,
    Module,
    Param,
    Pattern,
    TensorType,
    Weight,
    parse_module,
    print_module,
    verify,
)
from sparsec.ir.files import read_module, weight_arrays, write_module
from sparsec.ir.ops import OPS, Activate, Add, AvgPool, Concat, Conv2d, Flatten, GlobalAvgPool, Linear, MaxPool, Softmax
from sparsec.ir.verify import LAYOUT_RULES

NAMES = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_.]{0,6}", fullmatch=True),
    st.sampled_from(["onnx::Conv_12", "/features/0/Relu_output_0", "input.1", 'odd "quoted" name']),
)
ACTIVATIONS = st.sampled_from([
    None, Activation("relu"), Activation("clip", (0.0, 6.0)), Activation("leaky_relu", (0.01,)),
    Activation("sigmoid"), Activation("hard_sigmoid", (0.2, 0.5)), Activation("hard_swish"),
])


class ModuleBuilder:
    """Grows a valid module one random op at a time, tracking the current value and its type."""

    def __init__(self, draw, channels: int, size: int):
        self.draw, self.ops, self.weights, self.n = draw, [], [], 0
        self.current, self.type = "x", TensorType("f32", (1, channels, size, size))
        self.input = Param("x", self.type)

    def name(self) -> str:
        self.n += 1
        return f"{self.draw(NAMES)}_{self.n}"

    def weight(self, shape, layout=None) -> str:
        data = self.draw(st.integers(0, 2**16)).__index__()
        rng = np.random.default_rng(data)
        array = (rng.integers(-8, 8, size=shape) / 4).astype(np.float32)
        parts = {}
        if layout is not None:
            mask = array != 0
            parts = {"mask": mask}
        name = self.name()
        self.weights.append(Weight(name, TensorType("f32", shape), array, layout or Dense(), parts))
        return "@" + name

    def emit(self, op) -> None:
        self.ops.append(op)
        self.current, self.type = op.result, op.type


def conv_step(b: ModuleBuilder) -> None:
    n, c, h, w = b.type.shape
    out = b.draw(st.integers(1, 4))
    pattern = b.draw(st.booleans())
    layout, weight = None, None
    if pattern:
        taps = (1, 4, 5, 7)
        data = np.zeros((out, c, 3, 3), np.float32)
        data.reshape(out, c, 9)[:, :, list(taps)] = 1.5
        name = b.name()
        b.weights.append(Weight(name, TensorType("f32", data.shape), data, Pattern((taps,)), {"mask": data != 0}))
        weight = "@" + name
    else:
        weight = b.weight((out, c, 3, 3), Masked() if b.draw(st.booleans()) else layout)
    bias = b.weight((out,)) if b.draw(st.booleans()) else None
    stride = b.draw(st.sampled_from([1, 2]))
    oh, ow = (h + 2 - 3) // stride + 1, (w + 2 - 3) // stride + 1
    b.emit(Conv2d(b.name(), TensorType("f32", (n, out, oh, ow)), "%" + b.current, weight, bias,
                  strides=(stride, stride), pads=(1, 1, 1, 1), activation=b.draw(ACTIVATIONS)))


def residual_conv_step(b: ModuleBuilder) -> None:
    """A shape-keeping conv whose epilogue adds the current value (a ResNet shortcut)."""
    n, c, h, w = b.type.shape
    bias = b.weight((c,)) if b.draw(st.booleans()) else None
    b.emit(Conv2d(b.name(), b.type, "%" + b.current, b.weight((c, c, 3, 3)), bias, "%" + b.current,
                  pads=(1, 1, 1, 1), activation=b.draw(ACTIVATIONS)))


def activation_step(b: ModuleBuilder) -> None:
    fn = b.draw(ACTIVATIONS.filter(lambda a: a is not None))
    b.emit(Activate(b.name(), b.type, "%" + b.current, fn))


def add_step(b: ModuleBuilder) -> None:
    other = b.weight((1, b.type.shape[1], 1, 1))
    b.emit(Add(b.name(), b.type, "%" + b.current, other))


def pool_step(b: ModuleBuilder) -> None:
    n, c, h, w = b.type.shape
    if h < 2:
        return
    cls = b.draw(st.sampled_from([MaxPool, AvgPool]))
    b.emit(cls(b.name(), TensorType("f32", (n, c, h // 2, w // 2)), "%" + b.current))


def concat_step(b: ModuleBuilder) -> None:
    n, c, h, w = b.type.shape
    b.emit(Concat(b.name(), TensorType("f32", (n, 2 * c, h, w)), ("%" + b.current, "%" + b.current), axis=1))


def head_step(b: ModuleBuilder) -> None:
    n, c = b.type.shape[:2]
    b.emit(GlobalAvgPool(b.name(), TensorType("f32", (n, c, 1, 1)), "%" + b.current))
    b.emit(Flatten(b.name(), TensorType("f32", (n, c)), "%" + b.current))
    classes = b.draw(st.integers(1, 5))
    b.emit(Linear(b.name(), TensorType("f32", (n, classes)), "%" + b.current, b.weight((classes, c)),
                  activation=b.draw(ACTIVATIONS)))
    b.emit(Softmax(b.name(), b.type, "%" + b.current, axis=1))


@st.composite
def modules(draw) -> Module:
    b = ModuleBuilder(draw, draw(st.integers(1, 3)), draw(st.integers(2, 6)))
    for step in draw(st.lists(st.sampled_from([conv_step, residual_conv_step, activation_step, add_step, pool_step,
                                               concat_step]),
                              max_size=5)):
        step(b)
    if draw(st.booleans()):
        head_step(b)
    return Module(draw(NAMES), (b.input,), tuple(b.ops), (b.current,), tuple(b.weights))


@settings(max_examples=60, deadline=None)
@given(modules())
def test_print_parse_round_trip(module):
    verify(module)
    text = print_module(module)
    again = parse_module(text, arrays=weight_arrays(module))
    assert again == module
    assert print_module(again) == text
    assert parse_module(print_module(module, inline_weights=True)) == module


def test_files_round_trip(tmp_path):
    module = _tiny()
    write_module(module, tmp_path / "m.sir")
    assert (tmp_path / "m.sir.npz").exists()
    assert read_module(tmp_path / "m.sir") == module
    assert 'weights "m.sir.npz"' in (tmp_path / "m.sir").read_text()


def _tiny() -> Module:
    x = Param("x", TensorType("f32", (1, 2, 4, 4)))
    w = Weight("w", TensorType("f32", (3, 2, 3, 3)), np.ones((3, 2, 3, 3), np.float32))
    conv = Conv2d("y", TensorType("f32", (1, 3, 4, 4)), "%x", "@w", pads=(1, 1, 1, 1))
    return Module("tiny", (x,), (conv,), ("y",), (w,))


TINY_TEXT = """module @tiny
const @w : f32[3, 2, 3, 3] dense = {data = f32[%s]}
func @main(%%x : f32[1, 2, 4, 4]) {
  %%y : f32[1, 3, 4, 4] = conv2d(%%x, @w) {pads = [1, 1, 1, 1]}
  return %%y
}
""" % ", ".join(["1.0"] * 54)


def _error(text: str) -> str:
    with pytest.raises(CompileError) as info:
        verify(parse_module(text, "m.sir"))
    return str(info.value)


def test_tiny_text_parses():
    assert parse_module(TINY_TEXT) == _tiny()


def test_syntax_error_is_located():
    text = TINY_TEXT.replace("conv2d(%x", "conv2d((%x")
    assert _error(text) == (
        "m.sir:4:33: syntax error: unexpected '('; expected one of: ')', '[', 'none', SYMBOL, VALUE\n"
        "    %y : f32[1, 3, 4, 4] = conv2d((%x, @w) {pads = [1, 1, 1, 1]}\n"
        "                                  ^"
    )


def test_type_error_is_located():
    text = TINY_TEXT.replace("%y : f32[1, 3, 4, 4]", "%y : f32[1, 3, 5, 4]")
    assert _error(text).splitlines()[0] == (
        "m.sir:4:3: conv2d %y is declared f32[1, 3, 5, 4] but computes f32[1, 3, 4, 4]"
    )


def test_undefined_value_is_located():
    text = TINY_TEXT.replace("conv2d(%x", "conv2d(%z")
    assert _error(text).splitlines()[0] == "m.sir:4:3: conv2d %y: %z is not defined before its use"


def test_unknown_op_and_attribute():
    assert _error(TINY_TEXT.replace("conv2d(", "conv3d(")).splitlines()[0].startswith(
        "m.sir:4:26: unknown op 'conv3d'; known: activation, add,")
    assert _error(TINY_TEXT.replace("{pads", "{padz")).splitlines()[0] == (
        "m.sir:4:42: conv2d has no attribute 'padz'; it has: activation, dilations, filter_groups, "
        "filter_order, groups, knobs, pads, strides")


def test_bad_attribute_type():
    assert _error(TINY_TEXT.replace("pads = [1, 1, 1, 1]", "pads = 1.5")).splitlines()[0] == (
        "m.sir:4:49: attribute pads must be tuple[int, ...]")


def test_weight_must_be_a_weight():
    text = TINY_TEXT.replace("conv2d(%x, @w)", "conv2d(%x, %x)")
    assert _error(text).splitlines()[0] == (
        "m.sir:4:3: conv2d %y: operand weight must be a weight (@name), got %x")


RESIDUAL_TEXT = TINY_TEXT.replace("func @main(%x : f32[1, 2, 4, 4]) {",
                                  "func @main(%x : f32[1, 2, 4, 4], %r : f32[1, 3, 4, 4]) {") \
    .replace("conv2d(%x, @w)", "conv2d(%x, @w, none, %r)")


def test_residual_operand_text_round_trip():
    module = verify(parse_module(RESIDUAL_TEXT))
    (conv,) = module.ops
    assert (conv.bias, conv.residual) == (None, "%r")
    text = print_module(module, inline_weights=True)
    assert "= conv2d(%x, @w, none, %r) {pads = [1, 1, 1, 1]}" in text
    assert parse_module(text) == module
    with_bias = Conv2d("y", conv.type, "%x", "@w", "@w", "%r")  # the bias slot filled: no `none`
    assert "conv2d(%x, @w, @w, %r)" in print_module(module.replace(ops=(with_bias,)))


def test_residual_must_be_a_value_of_the_output_type():
    weight_there = RESIDUAL_TEXT.replace("none, %r)", "none, @w)")
    assert _error(weight_there).splitlines()[0] == (
        "m.sir:4:3: conv2d %y: operand residual must be a value (%name) computed at run time, got @w")
    broadcast = RESIDUAL_TEXT.replace("%r : f32[1, 3, 4, 4]", "%r : f32[1, 3, 1, 1]")
    assert _error(broadcast).splitlines()[0] == (
        "m.sir:4:3: conv2d %y: residual %r must be f32[1, 3, 4, 4], got f32[1, 3, 1, 1]")


def test_nonzero_outside_mask_and_bad_pattern():
    data = np.ones((1, 1, 3, 3), np.float32)
    mask = np.zeros_like(data, bool)
    w = Weight("w", TensorType("f32", data.shape), data, Masked(), {"mask": mask})
    with pytest.raises(VerifyError, match="weight @w is nonzero outside its mask"):
        verify(Module("m", (), (), (), (w,)))
    w = Weight("w", TensorType("f32", data.shape), data, Pattern(((1, 4),)), {"mask": data != 0})
    with pytest.raises(VerifyError, match=r"kernel \[0, 0\] keeps taps that fit none of its 1 patterns"):
        verify(Module("m", (), (), (), (w,)))


def test_pattern_kernels_may_keep_a_subset_of_a_pattern():
    data = np.zeros((2, 1, 3, 3), np.float32)
    data[0, 0].flat[[1, 4, 5]] = 1.0  # three of the pattern's four taps
    data[1, 0].flat[[1, 4, 5, 7]] = 1.0
    w = Weight("w", TensorType("f32", data.shape), data, Pattern(((1, 4, 5, 7),)), {"mask": data != 0})
    assert LAYOUT_RULES[Pattern](w) is None
    data[0, 0].flat[0] = 1.0  # tap 0 is in no pattern
    w = Weight("w", TensorType("f32", data.shape), data, Pattern(((1, 4, 5, 7),)), {"mask": data != 0})
    with pytest.raises(VerifyError, match=r"kernel \[0, 0\] keeps taps that fit none of its 1 patterns"):
        verify(Module("m", (), (), (), (w,)))


def test_nan_weight_rejected():
    data = np.array([np.nan], np.float32)
    with pytest.raises(VerifyError, match="weight @w holds NaN or Inf values"):
        verify(Module("m", (), (), (), (Weight("w", TensorType("f32", (1,)), data),)))


def test_missing_weights_file(tmp_path):
    path = tmp_path / "m.sir"
    path.write_text(TINY_TEXT.replace(" = {data = f32[" + ", ".join(["1.0"] * 54) + "]}", ""))
    with pytest.raises(CompileError, match=r"weights file .*m.sir.npz does not exist"):
        read_module(path)


def test_registry_names_match_classes():
    assert all(cls.name == name for name, cls in OPS.items())


def test_pool_pads_must_be_smaller_than_the_window():
    from sparsec.ir.ops import MaxPool

    x = Param("x", TensorType("f32", (1, 1, 4, 4)))
    pool = MaxPool("y", TensorType("f32", (1, 1, 3, 3)), "%x", kernel=(2, 2), strides=(2, 2), pads=(2, 2, 2, 2))
    with pytest.raises(VerifyError, match=r"pads \[2, 2, 2, 2\] must be smaller than the window \[2, 2\]"):
        verify(Module("m", (x,), (pool,), ("y",)))
