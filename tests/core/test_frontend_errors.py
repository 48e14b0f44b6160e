"""The ONNX frontend's error catalogue, each message asserted exactly, and external data."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_frontend import X4, check, make_model, node, rand

from sparsec.errors import NotSupportedError, UserError
from sparsec.frontend import import_onnx, load_onnx


def raises(cls: type[Exception], message: str):
    return pytest.raises(cls, match="^" + re.escape(message) + "$")


def conv_model(name: str = "test") -> onnx.ModelProto:
    inits = {"w": rand(6, 4, 3, 3, seed=1), "b": rand(6, seed=2)}
    return make_model([node("Conv", ["x", "w", "b"], pads=[1, 1, 1, 1])], X4, inits, name=name)


# --- files ---------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.onnx"
    with raises(UserError, f"{path}: no such file; check the path to the .onnx model"):
        import_onnx(path)


def test_a_folder(tmp_path):
    with raises(UserError, f"{tmp_path}: is a folder, not an ONNX file; pass the .onnx file"):
        load_onnx(tmp_path)


@pytest.mark.parametrize("content", [b"hello, this is text\n", b"PK\x03\x04zip", b""], ids=["text", "zip", "empty"])
def test_not_onnx(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    reason = "it has no IR version or no graph" if not content else "the file does not parse as one"
    with raises(UserError, f"{path}: not an ONNX model ({reason}); pass the .onnx file that torch.onnx.export wrote"):
        import_onnx(path)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated(tmp_path, fraction):
    data = conv_model().SerializeToString()
    path = tmp_path / "model.onnx"
    path.write_bytes(data[: int(len(data) * fraction)])
    with raises(UserError, f"{path}: the ONNX model is truncated or corrupt; export or copy it again"):
        import_onnx(path)


def test_file_and_module_name(tmp_path):
    path = tmp_path / "my-net.onnx"
    onnx.save(conv_model(name=""), path)
    assert import_onnx(path).module.name == "my-net"
    onnx.save(conv_model(name="torch jit/graph"), path)
    assert import_onnx(path).module.name == "torch_jit_graph"


# --- external data -------------------------------------------------------------------------------


def save_external(model: onnx.ModelProto, folder, location: str = "weights.bin"):
    path = folder / "model.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location,
              size_threshold=0)
    return path


def test_external_data_loads(tmp_path):
    model = conv_model()
    w = numpy_helper.to_array(model.graph.initializer[0])
    path = save_external(model, tmp_path)  # (this moves the model's own tensors out too)
    assert (tmp_path / "weights.bin").stat().st_size > 0
    result = import_onnx(path)
    assert np.array_equal(result.module.weight("w").data, w)
    check(onnx.load(path))  # the same numbers as onnxruntime (onnx.load reads the external data itself)


def _relocate(path, location: str) -> None:
    model = onnx.load(path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, path)


@pytest.mark.parametrize("location", ["../weights.bin", "sub/../../weights.bin", "/etc/passwd"])
def test_external_data_outside_the_folder(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    path = save_external(conv_model(), folder)
    (tmp_path / "weights.bin").write_bytes((folder / "weights.bin").read_bytes())
    _relocate(path, location)
    with raises(UserError, f"{path}: weight 'w' has external data at {location!r}, outside the model's folder; "
                           "keep external data files beside the .onnx file"):
        import_onnx(path)


def test_external_data_symlink_out_of_the_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    path = save_external(conv_model(), folder)
    (tmp_path / "weights.bin").write_bytes((folder / "weights.bin").read_bytes())
    (folder / "weights.bin").unlink()
    (folder / "weights.bin").symlink_to(tmp_path / "weights.bin")
    with raises(UserError, f"{path}: weight 'w' has external data at 'weights.bin', outside the model's folder; "
                           "keep external data files beside the .onnx file"):
        import_onnx(path)


def test_external_data_missing(tmp_path):
    path = save_external(conv_model(), tmp_path)
    (tmp_path / "weights.bin").unlink()
    with raises(UserError, f"{path}: weight 'w' has external data in 'weights.bin', which is missing; "
                           "copy it beside the .onnx file"):
        import_onnx(path)


def test_external_data_truncated(tmp_path):
    path = save_external(conv_model(), tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"\0" * 10)
    with raises(UserError, f"{path}: weight 'w' reads bytes 0..864 of 'weights.bin', which has 10; "
                           "the external data file is truncated"):
        import_onnx(path)


def test_model_proto_with_external_data_needs_a_path(tmp_path):
    path = save_external(conv_model(), tmp_path)
    with raises(UserError, "onnx model 'test': its weights are in external data files; load it with "
                           "load_onnx(path) or pass the model's path instead"):
        import_onnx(onnx.load(path, load_external_data=False))
    loaded = load_onnx(path)  # what the CLI does: load (external data included), then import
    assert import_onnx(loaded, source=path).module.weight("w").type.shape == (6, 4, 3, 3)


def test_source_names_a_loaded_model_in_errors(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(make_model([node("Tanh", ["x"])], X4, name=""), path)
    with pytest.raises(NotSupportedError, match=f"^{re.escape(str(path))}: unsupported ops: Tanh"):
        import_onnx(load_onnx(path), source=path)
    onnx.save(make_model([node("Relu", ["x"])], X4, name=""), path)
    assert import_onnx(load_onnx(path), source=path).module.name == "net"


# --- the graph -----------------------------------------------------------------------------------

WHERE = "onnx model 'test'"


@pytest.mark.parametrize("opset", [9, 10, 22])
def test_opset_out_of_range(opset):
    with raises(NotSupportedError, f"{WHERE}: ONNX opset {opset} is not supported; sparsec reads opsets 11 to 21 "
                                   "(re-export with opset_version=17)"):
        import_onnx(make_model([node("Relu", ["x"])], X4, opset=opset))


def test_every_unsupported_op_in_one_error():
    nodes = [node("Tanh", ["x"], "t1"), node("Gather", ["t1", "i"], "g"), node("Tanh", ["g"], "t2"),
             node("Shape", ["x"], "s"), node("Gather", ["s", "i"], "folded"),  # a shape subgraph: fine
             helper.make_node("FusedConv", ["t2"], ["f"], name="fc", domain="com.microsoft"),
             node("Relu", ["f"], "y"), node("Sin", ["x"], "dead")]  # fmt: skip
    model = make_model(nodes, X4, {"i": np.array([0, 1], np.int64)}, outputs=["y", "folded"])
    supported = ("Add, AveragePool, BatchNormalization, Clip, Concat, Conv, Dropout, Flatten, Gemm, "
                 "GlobalAveragePool, HardSigmoid, HardSwish, Identity, LeakyRelu, MatMul, MaxPool, Mul, "
                 "ReduceMean, Relu, Reshape, Sigmoid, Softmax, Squeeze, Unsqueeze")
    with raises(NotSupportedError, f'{WHERE}: unsupported ops: Tanh (node "t1" and 1 more), Gather (node "g"), '
                                   f'com.microsoft.FusedConv (node "fc"); sparsec imports {supported} (and folds '
                                   "shape subgraphs): re-export without them"):
        import_onnx(model)


def test_nan_in_an_initializer():
    w = rand(6, 4, 3, 3)
    w[1, 2, 0, 0] = np.inf
    with raises(UserError, f"{WHERE}: weight 'w' holds NaN or Inf values; fix the model's weights"):
        import_onnx(make_model([node("Conv", ["x", "w"])], X4, {"w": w}))


def test_data_dependent_shape():
    model = make_model([node("Reshape", ["x", "target"])], X4)
    model.graph.input.append(helper.make_tensor_value_info("target", TensorProto.INT64, [2]))
    with raises(NotSupportedError, f"{WHERE}: node \"y\" (Reshape): its shape ('target') depends on the input data "
                                   "and cannot be folded to a constant at import; export the model with static "
                                   "shapes (e.g. x.flatten(1))"):
        import_onnx(model)


def test_conv_weight_must_be_a_constant():
    with raises(NotSupportedError, f"{WHERE}: node \"y\" (Conv): its weight ('w') must be a constant (an initializer)"):
        import_onnx(make_model([node("Conv", ["x", "w"])], X4 | {"w": [6, 4, 3, 3]}))


def test_symbolic_dimension_needs_an_input_shape():
    model = make_model([node("Relu", ["x"])], {"x": ["N", 3, "H", "W"]})
    with raises(UserError, f"{WHERE}: input 'x' has symbolic dimension 'H' at axis 2; pass its static shape, "
                           "e.g. --input-shape x=1x3x224x224"):
        import_onnx(model)
    assert import_onnx(model, input_shapes={"x": (2, 3, 5, 6)}).module.inputs[0].type.shape == (2, 3, 5, 6)


@pytest.mark.parametrize("shapes, message", [
    ({"image": (1, 3, 8, 8)}, "--input-shape names 'image', which is not a graph input; the inputs are: x"),
    ({"x": (1, 3, 8)}, "--input-shape x=1x3x8 has rank 3, but input 'x' has rank 4 [?, 3, 8, 8]"),
    ({"x": (1, 4, 8, 8)}, "--input-shape x=1x4x8x8 gives 4 at axis 1, but input 'x' is fixed at 3 there [?, 3, 8, 8]"),
])  # fmt: skip
def test_bad_input_shapes(shapes, message):
    with raises(UserError, f"{WHERE}: {message}"):
        import_onnx(make_model([node("Relu", ["x"])], {"x": ["N", 3, 8, 8]}), input_shapes=shapes)


def test_mask_naming_no_initializer():
    with raises(UserError, f"{WHERE}: mask 'conv.w' names no initializer of the model; mask keys must be "
                           "initializer names (e.g. the conv weight names)"):
        import_onnx(conv_model(), masks={"conv.w": np.ones((6, 4, 3, 3), bool)})


def test_mask_of_the_wrong_shape():
    with raises(UserError, f"{WHERE}: mask 'w' has shape [6, 4, 9], but the initializer has shape [6, 4, 3, 3]; "
                           "give a mask of the weight's shape"):
        import_onnx(conv_model(), masks={"w": np.ones((6, 4, 9), bool)})


def test_mask_with_values_other_than_0_and_1():
    with raises(UserError, f"{WHERE}: mask 'w' holds values other than 0 and 1; give a bool mask"):
        import_onnx(conv_model(), masks={"w": np.full((6, 4, 3, 3), 0.5)})


def test_training_mode_batch_norm():
    inits = {k: np.ones(4, np.float32) for k in "sbmv"}
    model = make_model([node("BatchNormalization", ["x", "s", "b", "m", "v"], training_mode=1)], X4, inits, opset=15)
    with raises(NotSupportedError, f"{WHERE}: node \"y\" (BatchNormalization): training-mode batch normalisation is "
                                   "not supported; export the model in eval mode"):
        import_onnx(model)


def test_used_second_output():
    nodes = [helper.make_node("MaxPool", ["x"], ["y", "idx"], name="pool", kernel_shape=[2, 2])]
    model = make_model(nodes, X4, outputs=["y", "idx"])
    with raises(NotSupportedError, f"{WHERE}: node \"pool\" (MaxPool): its output 'idx' is used, but sparsec "
                                   "computes only the first output"):
        import_onnx(model)


def test_output_that_is_a_constant():
    with raises(NotSupportedError, f"{WHERE}: graph output 'y' is a constant; sparsec needs each output computed "
                                   "by its own op"):
        import_onnx(make_model([node("Shape", ["x"])], X4))


def test_3d_convolution():
    model = make_model([node("Conv", ["x", "w"])], {"x": [1, 2, 4, 4, 4]}, {"w": rand(3, 2, 1, 1, 1)})
    with raises(NotSupportedError, f"{WHERE}: node \"y\" (Conv): only 2-D windows on NCHW inputs are supported, "
                                   "the input has shape [1, 2, 4, 4, 4]"):
        import_onnx(model)


def test_broken_graphs():
    unsorted = make_model([node("Relu", ["r"], "y"), node("Relu", ["x"], "r")], X4, outputs=["y"])
    with raises(UserError, f"{WHERE}: node \"y\" (Relu) reads 'r', which no earlier node, input or initializer "
                           "defines; the graph is broken or not topologically sorted"):
        import_onnx(unsorted)
    twice = make_model([node("Relu", ["x"], "y"), node("Sigmoid", ["y"], "y")], X4)
    with raises(UserError, f"{WHERE}: node \"y\" (Sigmoid) defines 'y' a second time; the graph is broken"):
        import_onnx(twice)
    undefined = make_model([node("Relu", ["x"], "y")], X4, outputs=["y", "z"])
    with raises(UserError, f"{WHERE}: graph output 'z' is defined by no node or input; the graph is broken"):
        import_onnx(undefined)
