"""Property tests for the passes: on random pruned conv stacks (3x3 pattern-pruned convs, 1x1
unstructured convs with and without padding, batch norms, activations), passes run in random
orders -- so each one meets pattern, FKW and CSR weights, permuted filters and filter groups left
by the others -- keep the module valid, printable and numerically the same (reference
interpreter), and the FKW arrays the lowering derives always decode to the weight's data."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsec.fkw import fkw_to_dense
from sparsec.ir import (
    Activation,
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
from sparsec.ir.files import weight_arrays
from sparsec.ir.ops import Activate, Add, BatchNorm, Conv2d
from sparsec.passes import PASSES, default_pipeline, run_pipeline
from sparsec.passes.compress_fkw import fkw_of
from sparsec.reference import run_reference

PATTERNS = [(0, 1, 3, 4), (1, 2, 4, 5), (3, 4, 6, 7), (4, 5, 7, 8), (1, 3, 4, 5), (1, 4, 5, 7)]


def _pattern_weight(rng, out_ch: int, in_ch: int, patterns: int, keep: float) -> np.ndarray:
    w = np.zeros((out_ch, in_ch, 9), np.float32)
    for o in range(out_ch):
        for i in range(in_ch):
            if rng.random() < keep:
                taps = list(PATTERNS[rng.integers(patterns)])
                w[o, i, taps] = rng.standard_normal(4).astype(np.float32) + 0.1
    return w.reshape(out_ch, in_ch, 3, 3)


def _unstructured_weight(rng, out_ch: int, in_ch: int, keep: float) -> np.ndarray:
    w = rng.standard_normal((out_ch, in_ch, 1, 1)).astype(np.float32)
    return np.where(rng.random(w.shape) < keep, w, np.float32(0))


def _batch_norm(rng, layer: int, t: TensorType, current: str) -> tuple[BatchNorm, list[Weight]]:
    channels = t.shape[1]
    stats = (("s", rng.standard_normal(channels)), ("b", rng.standard_normal(channels)),
             ("m", rng.standard_normal(channels)), ("v", rng.random(channels) + 0.5))
    bn = [Weight(f"bn{layer}.{k}", TensorType("f32", (channels,)), v.astype(np.float32)) for k, v in stats]
    return BatchNorm(f"n{layer}", t, f"%{current}", *(f"@{w.name}" for w in bn)), bn


@st.composite
def conv_stacks(draw) -> Module:
    """Masked modules as `sparsec import` makes them: 3x3 convs pruned to patterns, 1x1 convs
    pruned unstructured (sometimes padded, which CSR cannot do), a residual add (+ relu) after
    some whose shape allows it, batch norm after some."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    channels, size = draw(st.integers(1, 6)), draw(st.integers(3, 9))
    x = Param("x", TensorType("f32", (1, channels, size, size)))
    ops, weights, current = [], [], "x"
    in_type = x.type
    for layer in range(draw(st.integers(1, 3))):
        out_ch = channels if draw(st.booleans()) else draw(st.integers(1, 9))  # same width: shortcuts fit
        stride = draw(st.sampled_from([1, 2]))
        if draw(st.booleans()):
            w, pad = _pattern_weight(rng, out_ch, channels, draw(st.integers(1, 6)), draw(st.floats(0.0, 1.0))), 1
            size = (size + 2 - 3) // stride + 1
        else:
            pad = draw(st.sampled_from([0, 1]))
            w = _unstructured_weight(rng, out_ch, channels, draw(st.floats(0.0, 1.0)))
            size = (size + 2 * pad - 1) // stride + 1
        weights.append(Weight(f"w{layer}", TensorType("f32", w.shape), w, Masked(), {"mask": w != 0}))
        t = TensorType("f32", (1, out_ch, size, size))
        residual = in_type == t and draw(st.booleans())  # a ResNet shortcut (mostly onto a bare conv)
        acts = [None, None, None, Activation("relu")] if residual else [None, Activation("relu"),
                                                                       Activation("clip", (0.0, 6.0))]
        act = draw(st.sampled_from(acts))
        ops.append(Conv2d(f"c{layer}", t, f"%{current}", f"@w{layer}", strides=(stride, stride), pads=(pad,) * 4,
                          activation=act))
        shortcut, current = current, f"c{layer}"
        if residual:  # either operand order, sometimes a relu after
            pair = (f"%{current}", f"%{shortcut}")
            ops.append(Add(f"a{layer}", t, *(pair if draw(st.booleans()) else pair[::-1])))
            current = f"a{layer}"
            if draw(st.booleans()):
                ops.append(Activate(f"r{layer}", t, f"%{current}", Activation("relu")))
                current = f"r{layer}"
        if draw(st.integers(0, 3)) and act is None:
            bn, bn_weights = _batch_norm(rng, layer, t, current)
            ops.append(bn)
            weights += bn_weights
            current = bn.result
        in_type, channels = t, out_ch
    return verify(Module("stack", (x,), tuple(ops), (current,), tuple(weights)))


def _same_numbers(before: Module, after: Module) -> None:
    x = np.random.default_rng(1).standard_normal(before.inputs[0].type.shape).astype(np.float32)
    want = run_reference(before, {"x": x})
    got = run_reference(after, {"x": x})
    for name in before.outputs:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4)


def _fkw_matches_data(module: Module) -> None:
    """What the lowering embeds for each pattern conv decodes to the weight the reference reads."""
    for op in module.ops:
        if isinstance(op, Conv2d) and isinstance(module.weight(op.weight).layout, Pattern):
            weight = module.weight(op.weight)
            stored = list(op.filter_order) if op.filter_order else list(range(weight.type.shape[0]))
            dense = fkw_to_dense(fkw_of(op, weight), weight.type.shape[1])
            np.testing.assert_array_equal(dense[stored], weight.data)


@settings(max_examples=40, deadline=None)
@given(conv_stacks(), st.sampled_from(sorted(PASSES)))
def test_each_pass_preserves_meaning(module, pass_name):
    after = verify(run_pipeline(module, [PASSES[pass_name]()]))
    assert parse_module(print_module(after), arrays=weight_arrays(after)) == after
    _same_numbers(module, after)


# Starting points that already hold pattern / CSR / FKW weights and permuted filters, so that
# every pass of the random order below meets them (a masked module alone leaves most passes idle).
PREPARED = [[], ["analyze-sparsity"], ["analyze-sparsity", "reorder-filters"],
            ["analyze-sparsity", "reorder-filters", "eliminate-redundant-loads", "compress-fkw"]]


@settings(max_examples=80, deadline=None)
@given(conv_stacks(), st.sampled_from(PREPARED), st.permutations(sorted(PASSES)), st.integers(0, 6))
def test_any_pass_order_preserves_meaning(module, prepared, order, repeat):
    # every pass once in a random order, then one of them again: each meets what the others leave
    steps = [PASSES[name]() for name in prepared + order] + [PASSES[order[repeat]]()]
    after = module
    for step in steps:
        after = verify(run_pipeline(after, [step]))
        _fkw_matches_data(after)
    assert parse_module(print_module(after), arrays=weight_arrays(after)) == after
    assert after.passes == tuple(step.name for step in steps)
    _same_numbers(module, after)


@settings(max_examples=40, deadline=None)
@given(conv_stacks())
def test_default_pipeline_is_exact_and_fkw_decodes(module):
    after = verify(run_pipeline(module, default_pipeline()))
    _same_numbers(module, after)
    _fkw_matches_data(after)
    for op in after.ops:
        if isinstance(op, Conv2d) and isinstance(after.weight(op.weight).layout, Pattern):
            fkw = fkw_of(op, after.weight(op.weight))
            assert all(a.dtype.kind in "ui" for a in (fkw.filter_order, fkw.offset, fkw.stride, fkw.index))
