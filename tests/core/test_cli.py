"""The CLI end to end (no TVM): import / opt / run / prune / inspect, and the error catalogue:
every bad input exits 2 with one clear message, no traceback, and no output file."""

from __future__ import annotations

import json

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
