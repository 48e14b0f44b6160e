"""Property tests for the passes: on random pruned conv stacks, every pass and the default
pipeline keep the module valid, printable and numerically the same (reference interpreter)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsec.fkw import fkw_to_dense
from sparsec.ir import Activation, Masked, Module, Param, TensorType, Weight, parse_module, print_module, verify
from sparsec.ir.files import weight_arrays
from sparsec.ir.ops import BatchNorm, Conv2d
from sparsec.passes import PASSES, default_pipeline, run_pipeline
from sparsec.passes.compress_fkw import fkw_from_parts
from sparsec.reference import run_reference

PATTERNS = [(0, 1, 3, 4), (1, 2, 4, 5), (3, 4, 6, 7), (4, 5, 7, 8), (1, 3, 4, 5), (1, 4, 5, 7)]


def _pruned_weight(rng, out_ch: int, in_ch: int, patterns: int, keep: float) -> np.ndarray:
    w = np.zeros((out_ch, in_ch, 9), np.float32)
    for o in range(out_ch):
        for i in range(in_ch):
            if rng.random() < keep:
                taps = list(PATTERNS[rng.integers(patterns)])
                w[o, i, taps] = rng.standard_normal(4).astype(np.float32) + 0.1
    return w.reshape(out_ch, in_ch, 3, 3)


@st.composite
def conv_stacks(draw) -> Module:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    channels, size = draw(st.integers(1, 6)), draw(st.integers(3, 9))
    x = Param("x", TensorType("f32", (1, channels, size, size)))
    ops, weights, current = [], [], "x"
    for layer in range(draw(st.integers(1, 3))):
        out_ch, stride = draw(st.integers(1, 9)), draw(st.sampled_from([1, 2]))
        w = _pruned_weight(rng, out_ch, channels, draw(st.integers(1, 6)), draw(st.floats(0.0, 1.0)))
        weights.append(Weight(f"w{layer}", TensorType("f32", w.shape), w, Masked(), {"mask": w != 0}))
        size = (size + 2 - 3) // stride + 1
        t = TensorType("f32", (1, out_ch, size, size))
        act = draw(st.sampled_from([None, Activation("relu"), Activation("clip", (0.0, 6.0))]))
        ops.append(Conv2d(f"c{layer}", t, f"%{current}", f"@w{layer}", strides=(stride, stride), pads=(1, 1, 1, 1),
                          activation=act))
        current = f"c{layer}"
        if draw(st.booleans()) and act is None:
            bn = [Weight(f"bn{layer}.{k}", TensorType("f32", (out_ch,)), v.astype(np.float32)) for k, v in
                  (("s", rng.standard_normal(out_ch)), ("b", rng.standard_normal(out_ch)),
                   ("m", rng.standard_normal(out_ch)), ("v", rng.random(out_ch) + 0.5))]
            weights += bn
            ops.append(BatchNorm(f"n{layer}", t, f"%{current}", *(f"@{w.name}" for w in bn)))
            current = f"n{layer}"
        channels = out_ch
    return verify(Module("stack", (x,), tuple(ops), (current,), tuple(weights)))


def _same_numbers(before: Module, after: Module) -> None:
    x = np.random.default_rng(1).standard_normal(before.inputs[0].type.shape).astype(np.float32)
    want = run_reference(before, {"x": x})
    got = run_reference(after, {"x": x})
    for name in before.outputs:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(conv_stacks(), st.sampled_from(sorted(PASSES)))
def test_each_pass_preserves_meaning(module, pass_name):
    after = verify(run_pipeline(module, [PASSES[pass_name]()]))
    assert parse_module(print_module(after), arrays=weight_arrays(after)) == after
    _same_numbers(module, after)


@settings(max_examples=40, deadline=None)
@given(conv_stacks())
def test_default_pipeline_is_exact_and_fkw_decodes(module):
    after = verify(run_pipeline(module, default_pipeline()))
    _same_numbers(module, after)
    for op in after.ops:
        weight = after.weight(op.weight) if isinstance(op, Conv2d) else None
        if weight is not None and weight.layout.kind == "fkw":
            order = list(op.filter_order)
            dense = fkw_to_dense(fkw_from_parts(weight), weight.type.shape[1])
            np.testing.assert_array_equal(dense[order], weight.data)
            assert all(a.dtype.kind in "ui" for k, a in weight.parts.items() if k not in ("mask", "weight"))
