"""Whole models compiled for the host: every zoo model, with and without masks, matches
onnxruntime (max relative error 1e-4); the artifact reloads; the CLI's compile errors; max pools
fused into pattern convs."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sparsec
from sparsec.check import onnxruntime_outputs, random_inputs, relative_error
from sparsec.cli import main
from sparsec.driver import import_model
from sparsec.models import ZOO
from sparsec.models._graph import GraphBuilder
from sparsec.prune import prune_model, save_masks

pytestmark = pytest.mark.tvm

# Small resolutions keep the suite fast; the kernels are generated for the exact shapes either way.
RESOLUTION = {"tiny_cnn": 32, "vgg16": 32, "resnet18": 32, "resnet50": 32, "mobilenet_v2": 32}


def _compile_and_compare(tmp_path, name: str, masked: bool):
    model = ZOO[name](resolution=RESOLUTION[name], num_classes=10)
    return compile_and_compare(tmp_path, model, prune_model(model, keep_kernels=0.5, unstructured=0.8)
                               if masked else None, name)


def compile_and_compare(tmp_path, model, masks: dict | None, name: str = "model"):
    """`model` (with `masks`) compiled for the host; its outputs checked against onnxruntime's."""
    model_path = tmp_path / f"{name}.onnx"
    model_path.write_bytes(model.SerializeToString())
    masks_path = None
    if masks is not None:
        masks_path = tmp_path / "masks.npz"
        save_masks(masks, masks_path)
    module = import_model(model_path, masks_path)
    compiled = sparsec.compile(module)
    inputs = random_inputs(module)
    want = onnxruntime_outputs(model_path, masks_path, inputs)
    got = compiled.run(inputs)
    for key, value in want.items():
        assert relative_error(got[key], value) <= 1e-4, key
    return compiled


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "pruned"])
@pytest.mark.parametrize("name", sorted(RESOLUTION))
def test_zoo_model_matches_onnxruntime(tmp_path, name, masked):
    compiled = _compile_and_compare(tmp_path, name, masked)
    formats = {layer["format"] for layer in compiled.manifest.layers if layer["op"] == "conv2d"}
    if masked and name != "mobilenet_v2":  # mobilenet's 3x3 convs are depthwise: no patterns
        assert "pattern" in formats
    if not masked:
        assert formats == {"dense"}


def test_export_and_load_round_trip(tmp_path):
    compiled = _compile_and_compare(tmp_path, "tiny_cnn", True)
    compiled.export(tmp_path / "tiny.so")
    manifest = json.loads((tmp_path / "tiny.so.json").read_text())
    assert manifest["inputs"] == [{"name": "input", "dtype": "f32", "shape": [1, 3, 32, 32]}]
    assert {layer["format"] for layer in manifest["layers"]} >= {"pattern", "dense"}
    again = sparsec.load(tmp_path / "tiny.so")
    x = {"input": np.ones((1, 3, 32, 32), np.float32)}
    np.testing.assert_array_equal(again.run(x)["output"], compiled.run(x)["output"])


def test_stock_tvm_runtime_runs_the_library(tmp_path):
    import tvm
    from tvm import relax

    compiled = _compile_and_compare(tmp_path, "tiny_cnn", False)
    compiled.export(tmp_path / "m.so")
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(tmp_path / "m.so")), tvm.cpu())
    x = np.ones((1, 3, 32, 32), np.float32)
    out = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(out, compiled.run({"input": x})["output"], rtol=1e-6)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("compile")
    model = ZOO["tiny_cnn"]()
    (root / "tiny.onnx").write_bytes(model.SerializeToString())
    save_masks(prune_model(model, keep_kernels=0.5), root / "masks.npz")
    return root


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    return code, *capsys.readouterr()


def test_cli_compile_check_run_dump(tiny_files, capsys):
    root = tiny_files
    code, out, err = _cli(capsys, "compile", root / "tiny.onnx", "--masks", root / "masks.npz", "-o",
                          root / "tiny.so", "--check", "--dump-ir-after", "all")
    assert code == 0, err
    assert "check: output matches reference" in out and "check: output matches onnxruntime" in out
    dumps = sorted(p.name for p in root.glob("tiny.*.sir"))
    assert dumps[0] == "tiny.01-fold-batchnorm.sir" and dumps[-1] == "tiny.07-compress-fkw.sir"
    np.save(root / "x.npy", np.ones((1, 3, 32, 32), np.float32))
    assert _cli(capsys, "run", root / "tiny.so", "--input", root / "x.npy", "-o", root / "y.npy")[0] == 0
    assert np.load(root / "y.npy").shape == (1, 10)


@pytest.mark.parametrize("args, message", [
    (["--target", "cuda"], "unknown target 'cuda'; known targets: host, arm64, mali, opencl (or --target-json); "
                           "see `sparsec targets`"),
    (["--target", "arm64", "--cpu", "cortex-z9"], "unknown --cpu 'cortex-z9' for arm64; known: cortex-a53, "
     "cortex-a55, cortex-a72, cortex-a73, cortex-a75, cortex-a76, cortex-a77, cortex-a78, cortex-x1, neoverse-n1"),
    (["--cpu", "cortex-a53"], "--cpu applies to --target arm64; the host target is this machine's CPU"),
    (["--target", "arm64", "--cc", "no-such-g++"], "--target arm64: the compiler 'no-such-g++' is not found"),
    (["--target-json", '{"isa": "avx9"}'], "target json: unknown isa 'avx9'; known: sse, avx2, avx512, neon"),
    (["-o", "/nonexistent/dir/m.so"],
     "/nonexistent/dir/m.so: cannot write here, the folder /nonexistent/dir does not exist"),
    (["-o", "m.txt"], "m.txt: a compiled model is written as a .so library; name it model.so"),
])
def test_cli_compile_errors(tiny_files, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tiny_files)
    full = ["compile", "tiny.onnx"] + (args if "-o" in args else args + ["-o", "m.so"])
    code, out, err = _cli(capsys, *full)
    assert code == 2 and err == f"sparsec: error: {message}\n"
    assert not (tiny_files / "m.so").exists()


def test_cli_run_rejects_wrong_input_for_library(tiny_files, capsys):
    root = tiny_files
    assert _cli(capsys, "compile", root / "tiny.onnx", "-o", root / "plain.so")[0] == 0
    np.save(root / "bad.npy", np.ones((1, 3, 32, 32), np.float64))
    code, _, err = _cli(capsys, "run", root / "plain.so", "--input", root / "bad.npy", "-o", root / "bad_out.npy")
    assert code == 2 and err == (f"sparsec: error: {root / 'bad.npy'}: input 'input' is f64[1, 3, 32, 32] but the "
                                 "model expects f32[1, 3, 32, 32]\n")
    assert not (root / "bad_out.npy").exists()


def test_kernel_failure_names_the_layer(tmp_path, monkeypatch):
    from sparsec.errors import UserError
    from sparsec.lower import relax_build

    def broken(op, ctx):
        raise ValueError("weight (8, 3, 3, 3) is not a 1x1 conv over 3 channels")

    monkeypatch.setitem(relax_build.LOWERINGS, relax_build.Conv2d, broken)
    module = import_model(ZOO["tiny_cnn"](), None)
    with pytest.raises(UserError) as info:
        sparsec.compile(module)
    assert str(info.value) == ("layer %features.0.relu (conv2d): its kernel could not be built: "
                               "weight (8, 3, 3, 3) is not a 1x1 conv over 3 channels")


def test_run_of_a_broken_library(tmp_path, capsys):
    (tmp_path / "bad.so").write_bytes(b"not a library")
    (tmp_path / "bad.so.json").write_text("{}")
    np.save(tmp_path / "x.npy", np.ones((1, 3, 32, 32), np.float32))
    code, _, err = _cli(capsys, "run", tmp_path / "bad.so", "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert code == 2 and err == (f"sparsec: error: {tmp_path / 'bad.so.json'}: the manifest is damaged or not "
                                 "sparsec's (version None, this sparsec reads version 2); compile the model again "
                                 "with `sparsec compile`\n")
    code, _, err = _cli(capsys, "run", tmp_path / "none.so", "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert code == 2 and "no compiled model here (need none.so and none.so.json)" in err


def test_two_inputs_two_outputs_and_matmul():
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3, 5])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [5, 4])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3, 4]) for n in ("y", "z")]
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"]), helper.make_node("Relu", ["y"], ["z"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [a, b], outs), opset_imports=[helper.make_opsetid("", 17)])
    compiled = sparsec.compile(import_model(model, None))
    rng = np.random.default_rng(0)
    x = {"a": rng.standard_normal((2, 3, 5)).astype(np.float32), "b": rng.standard_normal((5, 4)).astype(np.float32)}
    got = compiled.run(x)
    np.testing.assert_allclose(got["y"], x["a"] @ x["b"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["z"], np.maximum(x["a"] @ x["b"], 0), rtol=1e-5, atol=1e-6)


def test_check_reports_a_mismatch(tmp_path):
    from sparsec.check import CheckFailed, check_compiled

    module = import_model(ZOO["tiny_cnn"](), None)
    compiled = sparsec.compile(module)

    class Off:
        """The compiled model with its output nudged by 1%."""

        def run(self, inputs):
            return {k: v * 1.01 for k, v in compiled.run(inputs).items()}

    assert check_compiled(compiled, module).startswith("check: output matches reference")
    with pytest.raises(CheckFailed, match=r"check failed: output 'output' differs from reference by 1\.0\de-02"):
        check_compiled(Off(), module)


def test_kernels_keeping_a_subset_of_a_pattern_still_compile_to_patterns(tmp_path):
    # masks made elsewhere (or read off trained weights with exact zeros) may drop a tap inside
    # a kernel's pattern: the kernel keeps its pattern with a zero weight, the layer stays pattern
    model = ZOO["tiny_cnn"](resolution=16, num_classes=10)
    masks = prune_model(model, keep_kernels=0.5)
    rng = np.random.default_rng(3)
    thinned = 0
    for mask in masks.values():
        if mask.ndim != 4 or mask.shape[2:] != (3, 3):
            continue
        flat = mask.reshape(*mask.shape[:2], 9)
        for o, i in np.argwhere(flat.sum(axis=2) == 4)[::3]:  # every third kept kernel loses a tap
            flat[o, i, rng.choice(np.flatnonzero(flat[o, i]))] = False
            thinned += 1
    assert thinned > 10
    model_path, masks_path = tmp_path / "m.onnx", tmp_path / "masks.npz"
    model_path.write_bytes(model.SerializeToString())
    save_masks(masks, masks_path)
    module = import_model(model_path, masks_path)
    compiled = sparsec.compile(module)
    formats = [layer["format"] for layer in compiled.manifest.layers if layer["op"] == "conv2d"]
    assert formats.count("pattern") == 2  # features.2 and .3 (the first conv is not pruned)
    inputs = random_inputs(module)
    want = onnxruntime_outputs(model_path, masks_path, inputs)
    got = compiled.run(inputs)
    for key, value in want.items():
        assert relative_error(got[key], value) <= 1e-4, key


# --- a 2x2 stride-2 max pool after a pattern conv runs inside the conv's kernel on CPUs: the model
# matches onnxruntime, the manifest names the conv that computes the pool, and every other conv + pool
# pairing keeps two kernels (other pools, a conv value read twice, dense convs, tiles of odd rows)


def _conv_pool_model(pool_kernel=2, pool_pad=0, second_user=False, size=18):
    """conv3x3(4->8) + ReLU + max pool (+ a strided 1x1 conv of the ReLU added to the pool)."""
    g = GraphBuilder(0)
    x = g.relu("relu", g.conv("conv", "conv", "input", 4, 8, 3))
    x_pool = g.maxpool("pool", x, kernel=pool_kernel, stride=2, pad=pool_pad)
    out = size // 2
    if second_user:  # the ReLU's value read twice: the pool cannot take it over
        x_pool = g.add("sum", x_pool, g.conv("skip", "skip", x, 8, 8, 1, stride=2, pad=0))
    return g.finish("conv_pool", (1, 4, size, size), (1, 8, out, out), x_pool)


def _compile_pool_model(tmp_path, model, pruned=True):
    """The compiled model's manifest layers by result (the max pool's by its op name)."""
    masks = prune_model(model, keep_kernels=0.5, prune_first_conv=True) if pruned else None
    compiled = compile_and_compare(tmp_path, model, masks)
    return {layer["op"] if layer["op"] == "max_pool" else layer["result"]: layer for layer in compiled.manifest.layers}


@pytest.mark.parametrize("size", [18, 17], ids=["even", "odd"])  # odd: the last row and column dropped
def test_pattern_conv_computes_its_max_pool(tmp_path, size):
    layers = _compile_pool_model(tmp_path, _conv_pool_model(size=size))
    assert layers["relu"]["format"] == "pattern"
    assert layers["max_pool"]["format"] == "fused into %relu" and layers["max_pool"]["kernel"] == ""


def test_kernel_grouped_conv_computes_its_max_pool(tmp_path):
    """Filters in kernel groups of 4 on a 14-row plane: AVX-512 hosts take the conv's groups in pairs of
    7 rows, so its pooled kernel takes the whole groups (4 x 2 rows); AVX2 hosts 4 x 2 rows anyway."""
    model = _conv_pool_model(size=14)
    masks = prune_model(model, keep_kernels=0.5, prune_first_conv=True, kernel_groups=4)
    compiled = compile_and_compare(tmp_path, model, masks)
    layers = {layer["op"]: layer for layer in compiled.manifest.layers}
    assert layers["max_pool"]["format"] == "fused into %relu"
    assert layers["conv2d"]["knobs"]["filters_per_group"] == 4


@pytest.mark.parametrize(
    "model, pruned",
    [(_conv_pool_model(pool_kernel=3, pool_pad=1), True), (_conv_pool_model(second_user=True), True),
     (_conv_pool_model(), False), (_conv_pool_model(size=13), True)],  # odd rows: 13 = 7 + 6 on AVX2 (8 sums),
    ids=["3x3-pool", "two-users", "dense-conv", "odd-row-tiles"],  # one tile of 13 on AVX-512 (14 sums)
)
def test_other_pools_keep_their_kernel(tmp_path, model, pruned):
    layers = _compile_pool_model(tmp_path, model, pruned)
    assert layers["max_pool"]["format"] == "dense" and layers["max_pool"]["kernel"]
