"""The legality table (op, layout) -> precondition: hand-written IR that breaks it is a located
verifier error, analyze-sparsity never picks an illegal layout, and the recorded pass list."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.errors import CompileError, UserError
from sparsec.ir import parse_module, print_module, verify
from sparsec.ir.legality import LEGALITY, legal_layouts
from sparsec.ir.ops import Conv2d, Linear
from sparsec.ir.printer import format_array
from sparsec.ir.types import CSR, FKW, Pattern, TensorType
from sparsec.passes import remaining_pipeline


def _array(shape, keep) -> tuple[str, str]:
    """Inline data and mask literals: ones where `keep` (flat indices)."""
    mask = np.zeros(shape, bool)
    mask.reshape(-1)[list(keep)] = True
    return format_array(mask.astype(np.float32)), format_array(mask)


def _conv_text(weight_shape, layout: str, keep, attrs: str, out_shape, in_shape=(1, 2, 4, 4), bias: str = "") -> str:
    data, mask = _array(weight_shape, keep)
    dims = ", ".join(map(str, weight_shape))
    return (
        "module @m\n"
        f"const @w : f32[{dims}] {layout} = {{data = {data}, mask = {mask}}}\n"
        f"{bias}"
        f"func @main(%x : f32[{', '.join(map(str, in_shape))}]) {{\n"
        f"  %y : f32[{', '.join(map(str, out_shape))}] = conv2d(%x, @w{', @b' if bias else ''}) {attrs}\n"
        "  return %y\n"
        "}\n"
    )


def _first_line(text: str) -> str:
    with pytest.raises(CompileError) as info:
        verify(parse_module(text, "m.sir"))
    return str(info.value).splitlines()[0]


def test_csr_on_a_3x3_conv_is_a_located_error():
    text = _conv_text((3, 2, 3, 3), "csr", [0, 20], "{pads = [1, 1, 1, 1]}", (1, 3, 4, 4))
    assert _first_line(text) == (
        "m.sir:4:3: conv2d %y: weight @w: conv2d with a csr weight needs a 1x1 conv weight, got f32[3, 2, 3, 3]")


def test_csr_on_a_padded_1x1_conv_is_a_located_error():
    text = _conv_text((3, 2, 1, 1), "csr", [0, 3], "{pads = [1, 1, 1, 1]}", (1, 3, 6, 6))
    assert _first_line(text) == (
        "m.sir:4:3: conv2d %y: weight @w: conv2d with a csr weight needs pads = 0, got pads = [1, 1, 1, 1]")


def test_pattern_on_a_grouped_conv_is_a_located_error():
    text = _conv_text((2, 1, 3, 3), "pattern(patterns = [[1, 3, 4, 5]])", [1, 3, 4, 5],
                      "{groups = 2, pads = [1, 1, 1, 1]}", (1, 2, 4, 4))
    assert _first_line(text) == (
        "m.sir:4:3: conv2d %y: weight @w: conv2d with a pattern weight needs groups = 1, got groups = 2")


MIXED_SIZES = [4, 9 + 3, 9 + 4, 9 + 5]  # kernel [0, 0] keeps 1 tap, kernel [0, 1] keeps 3


def test_patterns_of_different_sizes_are_a_located_error():
    # found by sparsec fuzz: FKW (and the pattern kernel) keep the same number of taps per kernel
    text = _conv_text((2, 2, 3, 3), "pattern(patterns = [[4], [3, 4, 5]])", MIXED_SIZES, "{pads = [1, 1, 1, 1]}",
                      (1, 2, 4, 4))
    assert _first_line(text) == "m.sir:2:1: weight @w: pattern layout needs patterns of one size, got sizes [1, 3]"


@pytest.mark.parametrize("taps", ["inf", "1.5, 4", "nan"])
def test_a_pattern_of_non_integers_is_a_located_error(taps):
    # found by the IR mutation fuzzer: int(inf) raised OverflowError, int(1.5) truncated silently
    text = _conv_text((2, 2, 3, 3), f"pattern(patterns = [[{taps}]])", [4], "{pads = [1, 1, 1, 1]}", (1, 2, 4, 4))
    first = _first_line(text)
    assert first.startswith("m.sir:2:28: bad pattern layout: pattern [") and first.endswith(
        "] must be increasing tap ids in 0..8")


def test_analyze_sparsity_gives_subsets_their_pattern_and_one_size():
    from sparsec.passes.registry import AnalyzeSparsity

    def chosen(keep):
        text = _conv_text((2, 2, 3, 3), "masked", keep, "{pads = [1, 1, 1, 1]}", (1, 2, 4, 4))
        module = AnalyzeSparsity().apply(verify(parse_module(text)))
        verify(module)
        return module.weight("@w").layout

    # kernel [0, 0] keeps tap 4 of kernel [0, 1]'s taps 3, 4, 5: one pattern, [0, 0] a subset of it
    assert chosen(MIXED_SIZES) == Pattern(((3, 4, 5),))
    # sets inside no other are patterns, the smaller widened with zero taps (FKW stores one size)
    assert chosen([0] + MIXED_SIZES[1:]) == Pattern(((0, 1, 2), (3, 4, 5)))
    # two small sets that widen to the same pattern share it (found by `sparsec fuzz`: the layout
    # listed it twice and compile crashed)
    assert chosen([1, 9 + 2, 18 + 4, 18 + 6, 18 + 8]) == Pattern(((0, 1, 2), (4, 6, 8)))


def test_sparse_bias_is_a_located_error():
    bias = "const @b : f32[3] csr = {data = f32[1.0, 0.0, 0.0], mask = bool[true, false, false]}\n"
    text = _conv_text((3, 2, 1, 1), "masked", [0, 3], "{}", (1, 3, 4, 4), bias=bias)
    assert _first_line(text) == (
        "m.sir:5:3: conv2d %y: weight @b: a csr weight cannot be the bias operand of conv2d (only dense)")


def test_filter_groups_need_a_pattern_weight_and_equal_sizes():
    dense = _conv_text((4, 2, 1, 1), "masked", [0], "{filter_groups = [2, 2]}", (1, 4, 4, 4))
    assert _first_line(dense) == "m.sir:4:3: conv2d %y: filter_groups needs a pattern or fkw weight, @w is masked"
    keep = [t + 9 * k for k in range(8) for t in (1, 3, 4, 5)]
    uneven = _conv_text((4, 2, 3, 3), "pattern(patterns = [[1, 3, 4, 5]])", keep,
                        "{filter_groups = [1, 3], pads = [1, 1, 1, 1]}", (1, 4, 4, 4))
    assert _first_line(uneven) == (
        "m.sir:4:3: conv2d %y: filter_groups must be equal sizes (the last may be smaller), got [1, 3]")
    verify(parse_module(uneven.replace("[1, 3]", "[3, 1]")))


def test_analyze_sparsity_chooses_only_legal_layouts():
    t = TensorType("f32", (8, 8, 1, 1))
    padded = Conv2d("y", TensorType("f32", (1, 8, 6, 6)), "%x", "@w", pads=(1, 1, 1, 1))
    assert legal_layouts(padded, t) == {"dense", "masked"}
    assert legal_layouts(Conv2d("y", TensorType("f32", (1, 8, 4, 4)), "%x", "@w"), t) == {"dense", "masked", "csr"}
    t3 = TensorType("f32", (8, 8, 3, 3))
    conv = Conv2d("y", TensorType("f32", (1, 8, 4, 4)), "%x", "@w", pads=(1, 1, 1, 1))
    assert legal_layouts(conv, t3) == {"dense", "masked", "pattern", "fkw"}
    assert legal_layouts(Linear("y", TensorType("f32", (1, 8)), "%x", "@w"), TensorType("f32", (8, 8))) == \
        {"dense", "masked", "csr"}


def test_every_sparse_layout_has_a_rule():
    assert {layout for _, layout in LEGALITY} == {Pattern, FKW, CSR}


def test_passes_are_recorded_and_round_trip():
    text = "module @m\npasses [\"fold-batchnorm\", \"analyze-sparsity\"]\n\nfunc @main(%x : f32[1]) {\n  return %x\n}\n"
    module = parse_module(text)
    assert module.passes == ("fold-batchnorm", "analyze-sparsity")
    assert print_module(module) == text
    steps, done = remaining_pipeline(module)
    assert done == ["fold-batchnorm", "analyze-sparsity"]
    assert [s.name for s in steps] == ["fuse-epilogue", "reorder-filters", "reorder-kernels",
                                       "eliminate-redundant-loads", "compress-fkw"]


def test_unknown_recorded_pass_is_an_error():
    module = parse_module("module @m\npasses [\"fuse-activation\"]\nfunc @main(%x : f32[1]) {\n  return %x\n}\n")
    with pytest.raises(UserError, match="module @m records passes this sparsec does not know: fuse-activation; "
                                        "known passes: analyze-sparsity, "):
        remaining_pipeline(module)


def test_batch_norm_variance_must_keep_the_square_root_real():
    text = ("module @m\n"
            "const @s : f32[2] dense = {data = f32[1.0, 1.0]}\n"
            "const @v : f32[2] dense = {data = f32[1.0, -0.5]}\n"
            "func @main(%x : f32[1, 2, 3, 3]) {\n"
            "  %y : f32[1, 2, 3, 3] = batch_norm(%x, @s, @s, @s, @v)\n"
            "  return %y\n"
            "}\n")
    assert _first_line(text) == "m.sir:5:3: batch_norm %y: variance @v + epsilon must be > 0; channel 1 has -0.5"
    verify(parse_module(text.replace("-0.5", "0.0")))  # epsilon keeps a zero variance real
