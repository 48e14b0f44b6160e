"""`sparsec zoo`: a zoo model and its PCONV masks from the command line, ready for every target."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from sparsec.cli import main
from sparsec.models import ZOO
from sparsec.prune import load_masks, prune_model


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_zoo_writes_the_model_and_pconv_masks(tmp_path, capsys):
    code, out, _ = _cli(capsys, "zoo", "resnet18", "-o", tmp_path / "r.onnx", "--masks", tmp_path / "m.npz",
                        "--resolution", "64", "--num-classes", "10")
    assert code == 0 and out.startswith(f"wrote {tmp_path / 'r.onnx'} (resnet18: 1x3x64x64 -> 1x10) and ")
    model = onnx.load(tmp_path / "r.onnx")
    want = ZOO["resnet18"](resolution=64, num_classes=10)
    assert model.SerializeToString() == want.SerializeToString()  # the zoo is deterministic
    masks = load_masks(tmp_path / "m.npz", model)
    expected = prune_model(want, keep_kernels=0.278)  # PCONV's 3.6x by default
    assert masks.keys() == expected.keys() and all(np.array_equal(masks[k], expected[k]) for k in masks)


def test_zoo_defaults_and_pruning_options(tmp_path, capsys):
    assert _cli(capsys, "zoo", "tiny_cnn", "-o", tmp_path / "t.onnx")[0] == 0
    assert onnx.load(tmp_path / "t.onnx").SerializeToString() == ZOO["tiny_cnn"]().SerializeToString()
    assert not (tmp_path / "m.npz").exists()
    code, _, _ = _cli(capsys, "zoo", "tiny_cnn", "-o", tmp_path / "t.onnx", "--masks", tmp_path / "m.npz",
                      "--keep-kernels", "0.5", "--unstructured", "0.8", "--patterns", "4")
    model = onnx.load(tmp_path / "t.onnx")
    expected = prune_model(model, patterns=4, keep_kernels=0.5, unstructured=0.8)
    got = load_masks(tmp_path / "m.npz", model)
    assert code == 0 and all(np.array_equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("args, message", [
    (["vgg19", "-o", "m.onnx"], "unknown zoo model 'vgg19'; the zoo has: tiny_cnn, vgg16, resnet18, resnet50, "
                                "mobilenet_v2"),
    (["vgg16", "-o", "m.txt"], "m.txt: the output must be a .onnx file"),
    (["vgg16", "-o", "m.onnx", "--masks", "m.npy"], "m.npy: the output must be a .npz file"),
    (["vgg16", "-o", "m.onnx", "--resolution", "8"], "--resolution must be >= 32 and --num-classes >= 1"),
    (["tiny_cnn", "-o", "m.onnx", "--masks", "m.npz", "--keep-kernels", "2"],
     "keep_kernels=2.0: use a fraction from 0 to 1"),
])
def test_zoo_errors_leave_no_file(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli(capsys, "zoo", *args)
    assert code == 2 and err.startswith(f"sparsec: error: {message}")
    assert list(tmp_path.iterdir()) == []
