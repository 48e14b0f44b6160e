"""Every zoo network, dense and pruned: ONNX -> IR -> text -> IR -> reference interpreter matches
onnxruntime (max|ours - ort| / max(max|ort|, 1e-6) <= 1e-4). onnxruntime runs the ONNX model with
the masks applied to its initializers, so both sides compute the same pruned network."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from sparsec.frontend import import_onnx
from sparsec.ir import Dense, Masked, parse_module, print_module
from sparsec.ir.files import weight_arrays
from sparsec.models import ZOO
from sparsec.prune import prune_model
from sparsec.reference import run_reference

RTOL = 1e-4
# Small inputs keep the file fast; 64 gives VGG-16 and the ResNets a few pixels past their last pool.
RESOLUTION = {"tiny_cnn": 32, "vgg16": 32, "resnet18": 64, "resnet50": 32, "mobilenet_v2": 32}


def masked_model(model: onnx.ModelProto, masks: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose masked initializers are zero outside their masks."""
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    for tensor in pruned.graph.initializer:
        if tensor.name in masks:
            data = numpy_helper.to_array(tensor)
            kept = np.where(masks[tensor.name], data, 0).astype(data.dtype)
            tensor.CopyFrom(numpy_helper.from_array(kept, tensor.name))
    return pruned


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(theirs)), 1e-6))


@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_matches_onnxruntime(name, pruned):
    model = ZOO[name](resolution=RESOLUTION[name])
    masks = prune_model(model, keep_kernels=0.5, unstructured=0.5) if pruned else None
    result = import_onnx(model, masks=masks)
    module = result.module
    reparsed = parse_module(print_module(module), arrays=weight_arrays(module))
    assert reparsed == module

    x = np.random.default_rng(0).standard_normal(module.inputs[0].type.shape).astype(np.float32)
    (ours,) = run_reference(reparsed, {"input": x}).values()
    session = ort.InferenceSession(masked_model(model, masks or {}).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (theirs,) = session.run(["output"], {"input": x})
    assert ours.shape == theirs.shape
    assert relative_error(ours, theirs) <= RTOL

    layouts = {w.name: w.layout for w in module.weights}
    if pruned:
        assert set(result.zeroed) == set(masks) and sum(result.zeroed.values()) > 0
        assert all(layouts[name] == Masked() for name in masks)
    else:
        assert result.zeroed == {} and set(layouts.values()) == {Dense()}
