"""The three miscompiles of the soundness issue, as a user meets them at the command line, and
random pass orders compiled for the host: the library always matches the reference or the
command stops with one clear error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsec
from sparsec.check import random_inputs, relative_error
from sparsec.cli import main
from sparsec.driver import import_model
from sparsec.ir import verify
from sparsec.models import conv_layer, resnet18, tiny_cnn
from sparsec.passes import PASSES, run_pipeline
from sparsec.prune import save_masks
from sparsec.reference import run_reference

pytestmark = pytest.mark.tvm


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_resnet18_optimised_by_hand_then_compiled_matches(tmp_path, capsys):
    # prune -> import -> opt analyze-sparsity,reorder-filters -> compile --check: fold-batchnorm then ran on
    # permuted filters and the whole default pipeline ran again; the library was 1.95e-01 off.
    model = tmp_path / "r18.onnx"
    model.write_bytes(resnet18(resolution=32, num_classes=10).SerializeToString())
    steps = [("prune", model, "-o", tmp_path / "m.npz", "--patterns", "8", "--keep-kernels", "0.5"),
             ("import", model, "--masks", tmp_path / "m.npz", "-o", tmp_path / "r18.sir"),
             ("opt", tmp_path / "r18.sir", "-p", "analyze-sparsity,reorder-filters", "-o", tmp_path / "o.sir")]
    for step in steps:
        assert _run(capsys, *step)[0] == 0
    code, out, err = _run(capsys, "compile", tmp_path / "o.sir", "-o", tmp_path / "o.so", "--check")
    assert code == 0, err
    assert "check: output matches reference" in out
    assert err.splitlines() == [
        f"sparsec: {tmp_path / 'o.sir'} records passes analyze-sparsity, reorder-filters; not run again: "
        "analyze-sparsity, reorder-filters; running: fold-batchnorm, fuse-epilogue, reorder-kernels, "
        "eliminate-redundant-loads, compress-fkw"]


def test_batchnorm_folded_after_compress_fkw_compiles_to_the_reference(tmp_path):
    # fold-batchnorm after compress-fkw used to scale the data and keep the old FKW arrays, which the
    # lowering read: the FKW arrays are now derived from the data when lowering.
    module = import_model(resnet18(resolution=32, num_classes=10), _pcon_masks(resnet18(32, 10)))
    order = ["analyze-sparsity", "reorder-filters", "compress-fkw", "fold-batchnorm"]
    optimised = verify(run_pipeline(module, [PASSES[name]() for name in order]))
    _matches_reference(module, sparsec.compile(optimised))


def test_padded_1x1_conv_with_unstructured_mask_is_compiled_dense(tmp_path, capsys):
    # the CSR 1x1 kernel drops padding: analyze-sparsity may not pick it for pads > 0
    model = conv_layer((1, 64, 14, 14), 64, kernel=1, pad=1)
    (tmp_path / "c.onnx").write_bytes(model.SerializeToString())
    rng = np.random.default_rng(0)
    save_masks({"conv.weight": rng.random((64, 64, 1, 1)) < 0.2}, tmp_path / "m.npz")
    code, out, err = _run(capsys, "compile", tmp_path / "c.onnx", "--masks", tmp_path / "m.npz",
                          "-o", tmp_path / "c.so", "--check")
    assert (code, err) == (0, "")
    assert "check: output matches onnxruntime" in out
    assert '"format": "dense"' in (tmp_path / "c.so.json").read_text()


def test_model_stamped_with_ir_version_14_benches(tmp_path, capsys):
    model = tiny_cnn(resolution=16, num_classes=4)
    model.ir_version = 14  # onnx 1.23's helper.make_model stamps 14; onnxruntime 1.31 reads up to 13
    onnx.save(model, tmp_path / "t.onnx")
    code, out, err = _run(capsys, "bench", tmp_path / "t.onnx", "--rounds", "1", "--min-time", "0.01")
    assert (code, err) == (0, "")
    assert "onnxruntime" in out and "skipped" not in out


def test_ir_compile_refuses_masks_and_input_shapes(tmp_path, capsys):
    model = tmp_path / "t.onnx"
    model.write_bytes(tiny_cnn(resolution=16, num_classes=4).SerializeToString())
    assert _run(capsys, "import", model, "-o", tmp_path / "t.sir")[0] == 0
    code, out, err = _run(capsys, "compile", tmp_path / "t.sir", "--masks", tmp_path / "m.npz",
                          "--input-shape", "input=1x3x8x8", "-o", tmp_path / "t.so")
    assert code == 2
    assert err == (f"sparsec: error: {tmp_path / 't.sir'}: --masks and --input-shape apply to ONNX models; "
                   "IR text already holds its masks and shapes (give them to `sparsec import`)\n")
    assert not (tmp_path / "t.so").exists()


def _pcon_masks(model) -> dict:
    from sparsec.prune import prune_model

    return prune_model(model, patterns=8, keep_kernels=0.5, unstructured=0.8)


def _matches_reference(module, compiled) -> None:
    inputs = random_inputs(module)
    want, got = run_reference(module, inputs), compiled.run(inputs)
    for name, value in want.items():
        assert relative_error(got[name], value) <= 1e-4, name


_TINY = tiny_cnn(resolution=16, num_classes=4)


@settings(max_examples=6, deadline=None)
@given(st.permutations(sorted(PASSES)), st.floats(0.2, 0.9))
def test_any_pass_order_compiles_to_the_reference(order, keep):
    # every pass in a random order, the lowering after: the library computes what the IR says
    from sparsec.prune import prune_model

    module = import_model(_TINY, prune_model(_TINY, keep_kernels=keep, unstructured=0.8))
    optimised = verify(run_pipeline(module, [PASSES[name]() for name in order]))
    _matches_reference(module, sparsec.compile(optimised))
