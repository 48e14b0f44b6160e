"""Hostile compiled libraries (issue 11): a truncated, damaged or replaced `model.so`, an edited
`model.so.json`, outputs that cannot be written, Ctrl-C inside TVM, TVM's "Scope" noise. Two
compiles of the tiny model in all; every case copies the library into a folder of its own."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tvm_ffi

import sparsec
from sparsec.cli import main
from sparsec.models import tiny_cnn
from sparsec.prune import prune_model, save_masks

pytestmark = pytest.mark.tvm

RECOMPILE = "compile the model again with `sparsec compile`"
DAMAGED = "the manifest is damaged or not sparsec's"


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """tiny.so, compiled through the API and run before export (the VM used to leave its marks)."""
    root = tmp_path_factory.mktemp("library")
    model = tiny_cnn()
    (root / "tiny.onnx").write_bytes(model.SerializeToString())
    save_masks(prune_model(model, keep_kernels=0.5), root / "masks.npz")
    np.save(root / "x.npy", np.ones((1, 3, 32, 32), np.float32))
    compiled = sparsec.compile(root / "tiny.onnx", masks=root / "masks.npz")
    compiled.run({"input": np.ones((1, 3, 32, 32), np.float32)})
    compiled.export(root / "tiny.so")
    return root


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    return code, *capsys.readouterr()


def _case(library, tmp_path, library_bytes=None, manifest=None):
    """A copy of tiny.so (+ .json) in tmp_path, its bytes or manifest changed; returns the .so path."""
    data = (library / "tiny.so").read_bytes()
    (tmp_path / "m.so").write_bytes(data if library_bytes is None else library_bytes(data))
    text = (library / "tiny.so.json").read_text()
    if callable(manifest):
        parsed = json.loads(text)
        manifest(parsed)
        text = json.dumps(parsed)
    elif manifest is not None:
        text = manifest
    (tmp_path / "m.so.json").write_text(text)
    return tmp_path / "m.so"


def _flip(data: bytes) -> bytes:
    return data[:4000] + bytes([data[4000] ^ 1]) + data[4001:]


def _run_error(capsys, library, path) -> str:
    code, out, err = _cli(capsys, "run", path, "--input", library / "x.npy", "-o", path.parent / "y.npy")
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert not (path.parent / "y.npy").exists()
    return err.removeprefix("sparsec: error: ").rstrip("\n")


@pytest.mark.parametrize("keep", [1000, 5000, 20000])
def test_truncated_library_is_refused_before_loading(library, tmp_path, capsys, keep):
    path = _case(library, tmp_path, library_bytes=lambda data: data[:keep])
    size = (library / "tiny.so").stat().st_size
    assert _run_error(capsys, library, path) == (
        f"{path}: the library has {keep} bytes but its manifest records {size} (truncated or replaced); {RECOMPILE}")


def test_damaged_or_foreign_library(library, tmp_path, capsys):
    path = _case(library, tmp_path, library_bytes=_flip)
    assert _run_error(capsys, library, path) == (
        f"{path}: the library's sha256 differs from the one its manifest records (damaged or replaced); {RECOMPILE}")
    path.write_bytes(b"#!" + path.read_bytes()[2:])  # same size, no ELF header
    assert _run_error(capsys, library, path) == f"{path}: not a shared library (no ELF header); {RECOMPILE}"
    path.with_name("m.so.json").unlink()
    assert _run_error(capsys, library, path) == (
        f"{path}: no compiled model here (need m.so and m.so.json); write one with `sparsec compile`")


def _second_output(manifest: dict) -> None:
    manifest["outputs"].append(dict(manifest["outputs"][0], name="extra"))


MANIFESTS = [
    ("shape", lambda m: m["inputs"][0].update(shape=[1, 3, 64, 64]), "mismatch"),
    ("renamed", lambda m: m["outputs"][0].update(name="probs", shape=[1, 5]), "mismatch"),
    ("second-output", _second_output, "mismatch"),
    ("dtype", lambda m: m["inputs"][0].update(dtype="f99"),
     f"{DAMAGED} (input 'input' has dtype 'f99'; dtypes are f32, f64, i64, i32, i16, i8, u32, u16, u8, bool)"),
    ("list", "[1, 2]", f"{DAMAGED} (it is not a JSON object)"),
    ("version-1", lambda m: m.update(version=1), f"{DAMAGED} (version 1, this sparsec reads version 2)"),
    ("no-checksum", lambda m: m.pop("library"), f"{DAMAGED} (library is missing or not a dict)"),
    ("not-json", "{nope", "the manifest is not JSON (Expecting property name enclosed in double quotes: "
     "line 1 column 2 (char 1))"),
]


@pytest.mark.parametrize("edit, problem", [(e, p) for _, e, p in MANIFESTS], ids=[n for n, _, _ in MANIFESTS])
def test_edited_manifest(library, tmp_path, capsys, edit, problem):
    path = _case(library, tmp_path, manifest=edit)
    if problem == "mismatch":
        expected = (f"{path}.json: does not match the library m.so, which has inputs: input f32[1, 3, 32, 32]; "
                    "outputs: output f32[1, 10]; restore the manifest or compile the model again")
    else:
        expected = f"{path}.json: {problem}; {RECOMPILE}"
    assert _run_error(capsys, library, path) == expected


def test_manifest_that_is_a_folder(library, tmp_path, capsys):
    path = _case(library, tmp_path)
    path.with_name("m.so.json").unlink()
    path.with_name("m.so.json").mkdir()
    assert _run_error(capsys, library, path) == (
        f"{path}.json: is a folder, not the manifest of a compiled model; {RECOMPILE}")


def test_input_errors_name_the_input_file(library, tmp_path, capsys):
    np.savez(tmp_path / "in.npz", image=np.ones((1, 3, 32, 32), np.float32))
    code, _, err = _cli(capsys, "run", library / "tiny.so", "--input", tmp_path / "in.npz", "-o", tmp_path / "y.npy")
    assert code == 2 and err == f"sparsec: error: {tmp_path / 'in.npz'}: 'image' is not an input of the model; " \
                                "its inputs are: input\n"


def test_unwritable_output_fails_before_the_build(library, capsys, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("compile built before checking its output")

    monkeypatch.setattr("sparsec.driver.compile", no_build)
    code, _, err = _cli(capsys, "compile", library / "tiny.onnx", "-o", "/proc/t.so")
    assert code == 2 and err.startswith("sparsec: error: /proc/t.so: cannot write here, the folder /proc ")
    code, _, err = _cli(capsys, "compile", library / "tiny.onnx", "-o", library / "tiny.onnx.so",
                        "--masks", library / "tiny.so")
    assert code == 2 and "not a NumPy .npz file (no zip signature)" in err


def test_interrupted_tvm_callback_is_an_interrupt():
    import sparsec.lower.compile  # noqa: F401 - registers KeyboardInterrupt with tvm_ffi

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # a bare RuntimeError before: exit 2 "TVM failed to compile it"
        tvm_ffi.convert(interrupted)()


def test_check_then_run_prints_no_tvm_scope_noise(library, tmp_path, capfd):
    shutil.copy(library / "tiny.onnx", tmp_path / "tiny.onnx")
    assert main(["compile", str(tmp_path / "tiny.onnx"), "-o", str(tmp_path / "t.so"), "--check"]) == 0
    assert main(["run", str(tmp_path / "t.so"), "--input", str(library / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 0
    out, err = capfd.readouterr()
    assert "Scope" not in out + err and err == ""
    assert np.load(tmp_path / "y.npy").shape == (1, 10)


def test_compile_of_ir_with_truncated_weights(library, tmp_path, capsys):
    sir, npz = tmp_path / "t.sir", tmp_path / "t.sir.npz"
    assert main(["import", str(library / "tiny.onnx"), "-o", str(sir)]) == 0
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    code, _, err = _cli(capsys, "compile", sir, "-o", tmp_path / "t.so")
    assert code == 2 and err.splitlines()[0] == (
        f"sparsec: error: {sir}:2:1: weights file {npz}: not a NumPy .npz file (File is not a zip file); "
        "write the IR and its weights again with `sparsec import`")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.sir", "t.sir.npz"]


def test_loaded_library_runs_and_exports_again(library, tmp_path, capfd):
    again = sparsec.load(library / "tiny.so")
    first = again.run({"input": np.ones((1, 3, 32, 32), np.float32)})["output"]
    again.export(tmp_path / "copy.so")
    copied = sparsec.load(tmp_path / "copy.so")
    np.testing.assert_array_equal(copied.run({"input": np.ones((1, 3, 32, 32), np.float32)})["output"], first)
    assert "Scope" not in "".join(capfd.readouterr())
