"""The fuzzer's case generator (no TVM): deterministic, valid ONNX that onnxruntime runs, shapes
tracked right, and over a few hundred seeds every op and attribute the frontend supports."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest

from sparsec.check import onnxruntime_outputs
from sparsec.frontend.convert import ACTIVATIONS
from sparsec.frontend.convert_tensor import CONVERT
from sparsec.fuzz.generate import OPSETS, random_case
from sparsec.fuzz.runner import case_inputs
from sparsec.prune import CANDIDATE_PATTERNS, save_masks, weight_layers
from sparsec.sparsity import kernel_tap_sets

COVERAGE_SEEDS = range(200)


@functools.cache
def _case(seed: int):
    return random_case(seed)


def test_same_seed_same_case():
    a, b = random_case(11), random_case(11)
    assert a.model.SerializeToString() == b.model.SerializeToString()
    assert a.masks.keys() == b.masks.keys() and all(np.array_equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert random_case(12).model.SerializeToString() != a.model.SerializeToString()


@pytest.mark.parametrize("seed", range(0, 60, 3))
def test_case_is_valid_and_onnxruntime_runs_it(tmp_path, seed):
    case = _case(seed)
    onnx.checker.check_model(case.model, full_check=True)
    model_path, masks_path = tmp_path / "m.onnx", tmp_path / "masks.npz"
    model_path.write_bytes(case.model.SerializeToString())
    save_masks(case.masks, masks_path)
    outputs = onnxruntime_outputs(model_path, masks_path, case_inputs(case))
    assert {name: out.shape for name, out in outputs.items()} == case.shapes  # the tracked shapes are right
    assert all(np.isfinite(out).all() for out in outputs.values())


def test_masks_fit_their_weights():
    for seed in range(40):
        case = _case(seed)
        shapes = {layer.weight: layer.shape for layer in weight_layers(case.model)}
        for name, mask in case.masks.items():
            assert mask.dtype == bool and mask.shape == shapes[name], (seed, name)


def _features(case) -> set[str]:
    """What a case exercises: op types, the attributes that change a kernel, mask kinds."""
    found = {f"opset {case.model.opset_import[0].version}"} | ({"two outputs"} if len(case.shapes) > 1 else set())
    if case.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param:
        found.add("symbolic batch")
    if {n.input[0] for n in case.model.graph.node if n.op_type == "Transpose"} & set(case.masks):
        found.add("mask through Transpose")
    padded_pointwise = {n.input[1] for n in case.model.graph.node if n.op_type == "Conv" and any(
        a.name == "pads" and any(a.ints) for a in n.attribute) and _init_shape(case, n.input[1])[2:] == (1, 1)}
    if any(case.masks[w].mean() < 0.5 for w in padded_pointwise & set(case.masks)):
        found.add("sparse padded 1x1")  # a 1x1 conv with pads never takes the (padding-free) CSR kernel
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in case.model.graph.initializer}
    for node in case.model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        found.add(node.op_type)
        found |= {f"{node.op_type} {label}" for label, on in _attribute_features(node, attrs, inits).items() if on}
    for mask in case.masks.values():
        found |= {f"mask {label}" for label, on in _mask_features(mask).items() if on}
    return found


def _init_shape(case, name: str) -> tuple[int, ...]:
    return next((tuple(t.dims) for t in case.model.graph.initializer if t.name == name), ())


def _attribute_features(node, attrs: dict, inits: dict) -> dict[str, bool]:
    pads = list(attrs.get("pads", [0] * 4))
    kernel = tuple(attrs.get("kernel_shape", ()))
    weight = inits.get(node.input[1]) if len(node.input) > 1 else None
    return {
        "stride 2+": max(attrs.get("strides", [1])) > 1,
        "unequal strides": len(set(attrs.get("strides", [1]))) > 1,
        "asymmetric pads": pads[:2] != pads[2:],
        "dilation": max(attrs.get("dilations", [1])) > 1,
        "auto_pad": "auto_pad" in attrs,
        "depthwise": node.op_type == "Conv" and attrs.get("group", 1) > 1 and weight is not None
        and weight.shape[1] == 1,
        "grouped": node.op_type == "Conv" and attrs.get("group", 1) > 1 and weight is not None and weight.shape[1] > 1,
        "1x1": kernel == (1, 1),
        "3x3": kernel == (3, 3),
        "other kernel": node.op_type == "Conv" and kernel not in ((1, 1), (3, 3)),
        "no bias": node.op_type == "Conv" and len(node.input) == 2,
        "pads": any(pads),
        "ceil_mode": bool(attrs.get("ceil_mode", 0)),
        "count_include_pad": bool(attrs.get("count_include_pad", 0)),
        "transB=0": node.op_type == "Gemm" and not attrs.get("transB", 0),
        "alpha": "alpha" in attrs,
        "beta": "beta" in attrs,
        "computed B": node.op_type in ("Gemm", "MatMul") and node.input[1] not in inits,
        "constant operand": node.op_type in ("Add", "Mul") and any(i in inits for i in node.input),
        "no bounds": node.op_type == "Clip" and len(node.input) == 1,
        "max only": node.op_type == "Clip" and len(node.input) == 3 and node.input[1] == "",
        "axis not last": node.op_type == "Softmax" and attrs.get("axis", -1) not in (-1,),
        "keepdims=0": attrs.get("keepdims", 1) == 0,
        "axis != 1": node.op_type in ("Concat", "Flatten") and attrs.get("axis", 1) != 1,
    }


def _mask_features(mask: np.ndarray) -> dict[str, bool]:
    if mask.ndim == 4 and mask.shape[2:] == (3, 3):
        sets = kernel_tap_sets(mask)
        kept = sets[sets != 0]
        pconv = {sum(1 << t for t in p) for p in CANDIDATE_PATTERNS}
        per_filter = mask.reshape(mask.shape[0], -1).any(axis=1)
        return {"pconv 3x3": kept.size > 0 and all(int(s) in pconv for s in kept),
                "other tap sets 3x3": any(int(s) not in pconv for s in kept),
                "empty kernels": kept.size < sets.size and kept.size > 0,
                "empty filters": not per_filter.all() and per_filter.any(),
                "all ones": bool(mask.all()), "all zeros": not mask.any()}
    return {"unstructured 1x1" if mask.ndim == 4 else "unstructured fc": 0 < mask.mean() < 1,
            "all ones": bool(mask.all()), "all zeros": not mask.any()}


@functools.cache
def _coverage() -> frozenset[str]:
    return frozenset().union(*(_features(_case(seed)) for seed in COVERAGE_SEEDS))


def test_every_supported_op_is_generated():
    # Every op the frontend converts (a converter added later must be fuzzed too), every
    # activation, and what the frontend folds: shape subgraphs, Constant nodes, weight transposes.
    missing = (set(CONVERT) | set(ACTIVATIONS) | {"Shape", "Gather", "Constant", "Transpose"}) - _coverage()
    assert not missing


@pytest.mark.parametrize("feature", [
    "Conv stride 2+", "Conv unequal strides", "Conv asymmetric pads", "Conv dilation", "Conv auto_pad",
    "Conv depthwise", "Conv grouped", "Conv 1x1", "Conv 3x3", "Conv other kernel", "Conv no bias", "Conv pads",
    "MaxPool ceil_mode", "MaxPool pads", "MaxPool dilation", "AveragePool ceil_mode", "AveragePool pads",
    "AveragePool count_include_pad", "Gemm transB=0", "Gemm alpha", "Gemm beta", "Gemm computed B",
    "MatMul computed B", "Add constant operand", "Mul constant operand", "Clip no bounds", "Clip max only",
    "Softmax axis not last", "ReduceMean keepdims=0", "Concat axis != 1", "Flatten axis != 1", "two outputs",
    "symbolic batch", "mask through Transpose", "sparse padded 1x1",
    "mask pconv 3x3", "mask other tap sets 3x3", "mask empty kernels", "mask empty filters", "mask all ones",
    "mask all zeros", "mask unstructured 1x1", "mask unstructured fc",
    *(f"opset {v}" for v in OPSETS),
])
def test_feature_is_generated(feature):
    assert feature in _coverage()


def test_some_cases_have_no_masks_and_some_layers_none():
    cases = [_case(seed) for seed in COVERAGE_SEEDS]
    assert any(not case.masks for case in cases)
    assert any(case.masks and len(case.masks) < len(weight_layers(case.model)) for case in cases)
