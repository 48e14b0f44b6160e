"""The CLI end to end (TVM only to name the host CPU for inspect's formats): import / opt / run / prune /
inspect, and the error catalogue:
every bad input exits 2 with one clear message, no traceback, and no output file."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsec.cli import main
from sparsec.models import tiny_cnn


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = tiny_cnn()
    (root / "tiny.onnx").write_bytes(model.SerializeToString())
    np.save(root / "x.npy", np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32))
    return root


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_prune_inspect_import_opt_run(work, capsys):
    masks, sir, opt, y0, y1 = (work / n for n in ("m.npz", "t.sir", "o.sir", "y0.npy", "y1.npy"))
    assert run(capsys, "prune", work / "tiny.onnx", "-o", masks, "--keep-kernels", "0.5")[0] == 0
    code, out, _ = run(capsys, "inspect", work / "tiny.onnx", "--masks", masks, "--json")
    report = json.loads(out)
    assert code == 0 and {layer["name"] for layer in report["layers"]} >= {"features.2.weight"}
    assert {layer["name"]: layer["compiles_as"] for layer in report["layers"]}["features.2.weight"] == "pattern"
    assert run(capsys, "import", work / "tiny.onnx", "--masks", masks, "-o", sir)[0] == 0
    assert "masked" in sir.read_text() and (work / "t.sir.npz").exists()
    code, _, err = run(capsys, "opt", sir, "-p", "default", "--verify-each", "--print-after-all", "-o", opt)
    assert code == 0 and "// ----- IR after compress-fkw -----" in err and " fkw(" in opt.read_text()
    assert run(capsys, "run", sir, "--input", work / "x.npy", "-o", y0)[0] == 0
    assert run(capsys, "run", opt, "--input", work / "x.npy", "-o", y1)[0] == 0
    np.testing.assert_allclose(np.load(y1), np.load(y0), rtol=1e-4, atol=1e-6)


def test_opt_prints_to_stdout_and_lists_passes(work, capsys):
    sir = work / "plain.sir"
    assert run(capsys, "import", work / "tiny.onnx", "-o", sir)[0] == 0
    code, out, _ = run(capsys, "opt", sir, "-p", "fold-batchnorm,fuse-epilogue")
    assert code == 0 and out.startswith("module @tiny_cnn") and "batch_norm" not in out
    code, out, _ = run(capsys, "opt", sir, "--list-passes")
    assert code == 0 and "reorder-filters" in out and "compress-fkw" in out


def _bad_files(root):
    """Every broken input of the catalogue, written once."""
    model = tiny_cnn()
    (root / "notonnx.onnx").write_text("hello, not a model")
    (root / "trunc.onnx").write_bytes(model.SerializeToString()[:5000])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Erf", ["x"], ["a"], name="erf_1"), helper.make_node("Tanh", ["a"], ["b"], name="tanh_1"),
             helper.make_node("Erf", ["b"], ["y"], name="erf_2")]
    graph = helper.make_graph(nodes, "g", [x], [y])
    unsupported = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (root / "unsup.onnx").write_bytes(unsupported.SerializeToString())
    nan = onnx.ModelProto()
    nan.CopyFrom(model)
    for init in nan.graph.initializer:
        if init.name == "features.0.weight":
            w = numpy_helper.to_array(init).copy()
            w[0, 0, 0, 0] = np.nan
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    (root / "nan.onnx").write_bytes(nan.SerializeToString())
    (root / "notnpz.npz").write_text("nope")
    np.savez(root / "pickled.npz", **{"features.2.weight": np.array([{"a": 1}], dtype=object)})
    np.savez(root / "badkey.npz", **{"features.2.wieght": np.ones((16, 8, 3, 3), bool)})
    np.savez(root / "shape.npz", **{"features.2.weight": np.ones((16, 8, 3, 4), bool)})
    np.savez(root / "nonbinary.npz", **{"features.2.weight": np.full((16, 8, 3, 3), 0.5, np.float32)})


CATALOGUE = [
    (["import", "notonnx.onnx"], "notonnx.onnx: not an ONNX model (the file does not parse as one); "
     "pass the .onnx file that torch.onnx.export wrote"),
    (["import", "trunc.onnx"], "trunc.onnx: the ONNX model is truncated or corrupt; export or copy it again"),
    (["import", "missing.onnx"], "missing.onnx: no such file; check the path to the .onnx model"),
    (["import", "unsup.onnx"], 'unsup.onnx: unsupported ops: Erf (node "erf_1" and 1 more), Tanh (node "tanh_1")'),
    (["import", "nan.onnx"], "nan.onnx: weight 'features.0.weight' holds NaN or Inf values; fix the model's weights"),
    (["import", "tiny.onnx", "--masks", "notnpz.npz"],
     "notnpz.npz: not a NumPy .npz file (no zip signature); save masks as bool arrays with numpy.savez"),
    (["import", "tiny.onnx", "--masks", "pickled.npz"], "pickled.npz: mask 'features.2.weight' is an object "
     "(pickled) array, which sparsec does not load; save masks as bool arrays with numpy.savez"),
    (["import", "tiny.onnx", "--masks", "badkey.npz"], "badkey.npz: mask 'features.2.wieght' names no initializer "
     "of the model (did you mean 'features.2.weight'?); list the weight names with `sparsec inspect MODEL`"),
    (["import", "tiny.onnx", "--masks", "shape.npz"], "shape.npz: mask 'features.2.weight' has shape (16, 8, 3, 4) "
     "but the initializer has shape (16, 8, 3, 3); regenerate the masks for this model"),
    (["import", "tiny.onnx", "--masks", "nonbinary.npz"],
     "nonbinary.npz: mask 'features.2.weight' holds 0.5, not 0 or 1; save masks as bool or 0/1 arrays"),
    (["import", "tiny.onnx", "--input-shape", "input=1x3xx"],
     "--input-shape 'input=1x3xx': expected NAME=DIMS like input=1x3x224x224"),
]


@pytest.mark.parametrize("args, message", CATALOGUE, ids=[" ".join(a) for a, _ in CATALOGUE])
def test_error_catalogue(work, capsys, monkeypatch, args, message):
    if not (work / "notonnx.onnx").exists():
        _bad_files(work)
    monkeypatch.chdir(work)
    code, out, err = run(capsys, *args, "-o", "out.sir")
    assert code == 2
    assert err.startswith("sparsec: error: ") and message in err and err.count("\n") == 1
    assert "Traceback" not in err and out == ""
    assert not (work / "out.sir").exists() and not (work / "out.sir.npz").exists()


def test_ir_text_errors_are_located(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    assert run(capsys, "import", "tiny.onnx", "-o", "good.sir")[0] == 0
    text = (work / "good.sir").read_text()
    (work / "syntax.sir").write_text(text.replace("conv2d(%input", "conv2d(%input,,"))
    code, _, err = run(capsys, "run", "syntax.sir", "--input", "x.npy", "-o", "y.npy")
    assert code == 2 and err.startswith("sparsec: error: syntax.sir:") and "syntax error: unexpected ','" in err
    assert err.rstrip().endswith("^") and not (work / "y.npy").exists()
    bad_type = text.replace("%features.0.conv : f32[1, 8, 32, 32]", "%features.0.conv : f32[1, 9, 32, 32]", 1)
    assert bad_type != text
    (work / "type.sir").write_text(bad_type)
    code, _, err = run(capsys, "opt", "type.sir", "-p", "fold-batchnorm")
    assert code == 2 and "type.sir:" in err and "is declared f32[1, 9, 32, 32] but computes f32[1, 8, 32, 32]" in err


def test_unknown_pass_and_option(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    run(capsys, "import", "tiny.onnx", "-o", "p.sir")
    code, _, err = run(capsys, "opt", "p.sir", "-p", "fold-batchnorm,nope")
    assert code == 2 and "unknown pass 'nope'; known passes: analyze-sparsity," in err
    code, _, err = run(capsys, "opt", "p.sir", "-p", "analyze-sparsity{max_patterns=x}")
    assert code == 2 and "pass analyze-sparsity: option max_patterns='x' must be a int" in err


def test_run_rejects_wrong_input(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    run(capsys, "import", "tiny.onnx", "-o", "r.sir")
    np.save(work / "wrong.npy", np.zeros((1, 3, 31, 32), np.float32))
    code, _, err = run(capsys, "run", "r.sir", "--input", "wrong.npy", "-o", "r.npy")
    assert code == 2 and err == ("sparsec: error: wrong.npy: input 'input' is f32[1, 3, 31, 32] but the model "
                                 "expects f32[1, 3, 32, 32]\n")
    assert not (work / "r.npy").exists()


# --- hostile input: the adversarial campaign of issue 11 -----------------------------------------


def _edit(root, name: str, old: str, new: str, source: str = "t.sir") -> None:
    text = (root / source).read_text()
    assert old in text, old
    (root / name).write_text(text.replace(old, new, 1))


def _onnx_variant(root, name: str, change) -> None:
    model = tiny_cnn()
    change(model)
    (root / name).write_bytes(model.SerializeToString())


def _empty_conv(model) -> None:
    for init in model.graph.initializer:  # features.2 keeps 0 filters
        if init.name in ("features.2.weight", "features.2.bias"):
            shape = (0, 8, 3, 3) if init.name.endswith("weight") else (0,)
            init.CopyFrom(numpy_helper.from_array(np.zeros(shape, np.float32), init.name))


def _symbolic_hw(model) -> None:
    for axis in (2, 3):
        dim = model.graph.input[0].type.tensor_type.shape.dim[axis]
        dim.Clear()
        dim.dim_param = "hw"


def _hostile_files(root) -> None:
    """Every hostile input of the campaign, written once beside a good import `t.sir`."""
    masks = tiny_cnn_masks()
    np.savez(root / "m.npz", **masks)
    assert main(["import", str(root / "tiny.onnx"), "--masks", str(root / "m.npz"), "-o", str(root / "t.sir")]) == 0
    weights = (root / "t.sir.npz").read_bytes()
    (root / "half.sir.npz").write_bytes(weights[: len(weights) // 2])
    _edit(root, "half.sir", '"t.sir.npz"', '"half.sir.npz"')
    _edit(root, "backslash.sir", '"t.sir.npz"', '"t.sir\\q.npz"')
    _edit(root, "deep.sir", "pads = [1, 1, 1, 1]", "pads = " + "[" * 20000 + "]" * 20000)
    _edit(root, "pool_list.sir", "max_pool(%features.0.relu)", "max_pool([%features.0.relu, %features.0.relu])")
    _edit(root, "twice.sir", "const @features.2.bias : f32[16] dense\n",
          "const @features.2.bias : f32[16] dense\nconst @features.2.bias : f32[16] dense\n")
    _edit(root, "no_return.sir", "return %output", "return")
    _edit(root, "nope.sir", "return %output", "return %nope")
    _edit(root, "swish.sir", "{fn = relu}", "{fn = swish}")
    for name, change in (("flat", lambda a: a["features.2.weight"].reshape(-1)),
                         ("transposed", lambda a: a["classifier.weight"].T)):
        arrays = dict(np.load(root / "t.sir.npz"))
        key = "features.2.weight" if name == "flat" else "classifier.weight"
        arrays[key] = np.ascontiguousarray(change(arrays))
        np.savez(root / f"{name}.sir.npz", **arrays)
        _edit(root, f"{name}.sir", '"t.sir.npz"', f'"{name}.sir.npz"')
    func = "func @main(%x : f32[1]) {\n  return %x\n}\n"
    inline = "module @m\nconst @w : f32[1, 2, 1, 1] masked = {data = f32[1.0, 0.0], mask = u8[1, 300]}\n"
    (root / "u8.sir").write_text(inline + func)
    (root / "negative.sir").write_text("module @m\nconst @b : f32[-4] dense\n" + func)
    np.savez(root / "objects.npz", input=np.array([{"a": 1}], dtype=object))
    np.savez(root / "wrong_name.npz", x=np.zeros((1, 3, 32, 32), np.float32))
    np.savez(root / "empty.npz")
    os.mkfifo(root / "pipe.npy")
    _onnx_variant(root, "empty_conv.onnx", _empty_conv)
    _onnx_variant(root, "symbolic.onnx", _symbolic_hw)
    batch = lambda m: setattr(m.graph.input[0].type.tensor_type.shape.dim[0], "dim_value", 0)  # noqa: E731
    _onnx_variant(root, "batch0.onnx", batch)
    _onnx_variant(root, "same_names.onnx", lambda m: [setattr(n, "name", "conv") for n in m.graph.node])
    (root / "ext").mkdir()
    onnx.save(tiny_cnn(), root / "ext" / "good.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
    external = onnx.load(root / "ext" / "good.onnx", load_external_data=False)
    for init in external.graph.initializer:
        for entry in init.external_data:
            entry.value = "abc" if entry.key == "offset" else entry.value
    onnx.save(external, root / "ext" / "bad_offset.onnx")


def tiny_cnn_masks() -> dict[str, np.ndarray]:
    from sparsec.prune import prune_model

    return prune_model(tiny_cnn(), keep_kernels=0.5)


HOSTILE = [
    (["run", "half.sir", "--input", "x.npy", "-o", "y.npy"], "half.sir:2:1: weights file half.sir.npz: not a NumPy "
     ".npz file (File is not a zip file); write the IR and its weights again with `sparsec import`"),
    (["opt", "half.sir", "-o", "o.sir"], "half.sir:2:1: weights file half.sir.npz: not a NumPy .npz file "
     "(File is not a zip file); write the IR and its weights again with `sparsec import`"),
    (["opt", "backslash.sir"], 'backslash.sir:2:9: bad string "t.sir\\q.npz": Invalid \\escape; escape a '
     "backslash as \\\\ (strings use JSON escapes)"),
    (["opt", "deep.sir"], "deep.sir:19:147: brackets nested deeper than 64 levels; no IR needs that many"),
    (["opt", "u8.sir"], "u8.sir:2:67: bad u8 array: Python integer 300 out of bounds for uint8"),
    (["opt", "negative.sir"], "negative.sir:2:12: negative dimension in shape [-4]"),
    (["opt", "pool_list.sir"], "pool_list.sir:22:3: max_pool operand input takes one value or weight"),
    (["opt", "twice.sir"], "twice.sir:11:1: @features.2.bias is defined twice"),
    (["opt", "flat.sir"], "flat.sir:9:1: weight @features.2.weight is declared f32[16, 8, 3, 3] but its data is "
     "float32[1152]"),
    (["opt", "transposed.sir"], "transposed.sir:15:1: weight @classifier.weight is declared f32[10, 32] but its "
     "data is float32[32, 10]"),
    (["opt", "no_return.sir"], "no_return.sir:33:3: module @tiny_cnn returns nothing; return at least one value"),
    (["opt", "nope.sir"], "nope.sir:33:3: output %nope is not defined in module @tiny_cnn"),
    (["opt", "swish.sir"], "swish.sir:21:75: attribute fn: unknown activation 'swish'; activations: relu, "
     "clip(min, max), leaky_relu(alpha), sigmoid, hard_sigmoid(alpha, beta), hard_swish"),
    (["opt", "t.sir", "-p", "eliminate-redundant-loads{max_filters=-1}"],
     "pass eliminate-redundant-loads: option max_filters='-1' must be a positive int"),
    (["opt", "t.sir", "-p", "analyze-sparsity{dense_work=1}"],  # set from the target, no option
     "pass analyze-sparsity has no option 'dense_work'; options: max_patterns, pattern_throughput, csr_throughput"),
    (["import", "empty_conv.onnx", "-o", "o.sir"], 'empty_conv.onnx: node "features.2.conv" (Conv): computes an '
     "empty tensor f32[1, 0, 16, 16]; sparsec needs every dimension at least 1"),
    (["import", "ext/bad_offset.onnx", "-o", "o.sir"], "ext/bad_offset.onnx: weight 'features.0.weight' has external "
     "data offset 'abc', which is not an integer; export the model again"),
    (["import", "symbolic.onnx", "--input-shape", "input=1x3x999999999999x999999999999", "-o", "o.sir"],
     "symbolic.onnx: %input is f32[1, 3, 999999999999, 999999999999], 2999999999994000000000003 elements; "
     "sparsec builds tensors of at most 2147483647 elements"),
    (["import", "batch0.onnx", "-o", "o.sir"], "batch0.onnx: input 'input' has size 0 at axis 0; sparsec needs "
     "sizes of at least 1: export the model again with a batch of 1"),
    (["import", "same_names.onnx", "-o", "o.sir"], 'same_names.onnx: two nodes are named "conv"; ONNX requires '
     "unique node names (onnxruntime refuses the model): rename one and export again"),
    (["run", "t.sir", "--input", "objects.npz", "-o", "y.npy"], "objects.npz: input 'input' is an object (pickled) "
     "array, which sparsec does not load; save one input with numpy.save, several with numpy.savez keyed by name"),
    (["run", "t.sir", "--input", "wrong_name.npz", "-o", "y.npy"],
     "wrong_name.npz: 'x' is not an input of the model; its inputs are: input"),
    (["import", "tiny.onnx", "-o", "w.sir", "--weights", "w.sir"],
     "w.sir: named as two outputs; give each output its own file"),
    (["import", "tiny.onnx", "-o", "tiny.onnx"],
     "tiny.onnx: is also an input (tiny.onnx), which writing would destroy; write the output to another file"),
    (["import", "tiny.onnx", "--masks", "m.npz", "-o", "o.sir", "--weights", "m.npz"],
     "m.npz: is also an input (m.npz), which writing would destroy; write the output to another file"),
    (["run", "t.sir", "--input", "x.npy", "-o", "t.sir.npz"],
     "t.sir.npz: is also an input (t.sir.npz), which writing would destroy; write the output to another file"),
    (["opt", "t.sir", "-o", "t.sir"],
     "t.sir: is also an input (t.sir), which writing would destroy; write the output to another file"),
    (["prune", "tiny.onnx", "-o", "tiny.onnx"],
     "tiny.onnx: is also an input (tiny.onnx), which writing would destroy; write the output to another file"),
    (["run", "t.sir", "--input", "x.npy", "-o", "pipe.npy"],  # a rename would replace it (/dev/null, as root)
     "pipe.npy: cannot write here, it is not a regular file (a device or a pipe)"),
]


def _snapshot(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def hostile(work):
    root = work / "hostile"
    root.mkdir()
    (root / "tiny.onnx").write_bytes((work / "tiny.onnx").read_bytes())
    (root / "x.npy").write_bytes((work / "x.npy").read_bytes())
    _hostile_files(root)
    return root


@pytest.mark.parametrize("args, message", HOSTILE, ids=[" ".join(a)[:60] for a, _ in HOSTILE])
def test_hostile_input(hostile, capsys, monkeypatch, args, message):
    monkeypatch.chdir(hostile)
    before = _snapshot(hostile)
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    assert err.splitlines()[0] == f"sparsec: error: {message}"
    assert "Traceback" not in err and len(err.splitlines()) in (1, 3)  # located errors add the line and a caret
    assert _snapshot(hostile) == before  # nothing written, changed or left behind


@pytest.mark.parametrize("folder", ["/sys", "/proc"])
def test_unwritable_system_folders(hostile, capsys, monkeypatch, folder):
    monkeypatch.chdir(hostile)
    code, _, err = run(capsys, "run", "t.sir", "--input", "x.npy", "-o", f"{folder}/y.npy")
    assert code == 2 and err.startswith(f"sparsec: error: {folder}/y.npy: cannot write here, the folder {folder} ")
    assert err.count("\n") == 1


def test_accepted_edge_cases(hostile, capsys, monkeypatch):
    monkeypatch.chdir(hostile)
    code, out, err = run(capsys, "opt", "--list-passes")
    assert code == 0 and out.splitlines()[0].startswith("analyze-sparsity ") and err == ""
    code, _, err = run(capsys, "import", "tiny.onnx", "--masks", "empty.npz", "-o", "no_masks.sir")
    assert code == 0 and err == "" and " masked" not in (hostile / "no_masks.sir").read_text()
