"""The differential fuzzer end to end: a few seeds compiled and compared with onnxruntime (the
`make test` share of `make fuzz`), how failures are classified, and the reproducer they leave."""

from __future__ import annotations

import numpy as np
import pytest

import sparsec.driver
import sparsec.fuzz.runner as runner
from sparsec.cli import main
from sparsec.errors import NotSupportedError, UserError
from sparsec.fuzz.generate import random_case
from sparsec.fuzz.runner import case_inputs, fuzz, run_case
from sparsec.prune import load_masks

pytestmark = pytest.mark.tvm

# Seeds whose cases between them hold pattern, CSR and dense convs and linears, depthwise and
# grouped convs, dilations, asymmetric pads, residual adds, concats, max / average / global pools,
# batch norms, Gemm and MatMul layers (about 9 s of compiling).
SEEDS = (10, 36, 42, 43, 48)
QUICK = 25  # a small case (two masked convs), for the tests that only need some case


def test_a_few_seeds_match_onnxruntime():
    summary = fuzz(SEEDS)
    failures = [f"seed {o.seed}: {o.kind}: {o.message}" for o in summary.outcomes if o.kind != "ok"]
    assert not failures
    assert summary.line() == f"fuzz: {len(SEEDS)} cases, {len(SEEDS)} ok, 0 mismatches, 0 crashes, 0 rejected"


def test_a_mismatch_leaves_a_reproducer(tmp_path, monkeypatch, capsys):
    real = runner._onnxruntime
    monkeypatch.setattr(runner, "_onnxruntime", lambda case, inputs: {
        name: value + 1 for name, value in real(case, inputs).items()})
    assert main(["fuzz", "--seeds", "1", "--start", str(QUICK), "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"seed {QUICK}: mismatch: output" in out
    assert out.endswith("fuzz: 1 cases, 0 ok, 1 mismatches, 0 crashes, 0 rejected\n")
    folder = tmp_path / f"seed-{QUICK}"
    assert sorted(p.name for p in folder.iterdir()) == ["README.txt", "input.npy", "masks.npz", "model.onnx"]
    readme = (folder / "README.txt").read_text()
    assert "sparsec compile model.onnx --masks masks.npz -o m.so --check" in readme
    case = random_case(QUICK)
    assert (folder / "model.onnx").read_bytes() == case.model.SerializeToString()
    np.testing.assert_array_equal(np.load(folder / "input.npy"), case_inputs(case)["input"])
    loaded = load_masks(folder / "masks.npz", case.model)
    assert loaded.keys() == case.masks.keys() and all(np.array_equal(loaded[k], case.masks[k]) for k in loaded)
    # The command of the README runs on the files as they are (this case is fine: it passes).
    monkeypatch.chdir(folder)
    assert main(["compile", "model.onnx", "--masks", "masks.npz", "-o", "m.so", "--check"]) == 0
    # Once the seed passes, its stale reproducer goes.
    monkeypatch.setattr(runner, "_onnxruntime", real)
    assert main(["fuzz", "--seeds", "1", "--start", str(QUICK), "--out", str(tmp_path)]) == 0
    assert not folder.exists()


def _raise(error: Exception):
    def fail(*args, **kwargs):
        raise error
    return fail


@pytest.mark.parametrize("where, error, kind", [
    ("import_model", UserError("bad model"), "rejected"),
    ("import_model", NotSupportedError("op X is not supported"), "rejected"),
    ("import_model", KeyError("bug"), "crash"),
    ("compile", NotSupportedError("not yet"), "rejected"),
    ("compile", UserError("layer %y: its kernel could not be built"), "crash"),  # accepted, then failed
    ("compile", RuntimeError("TVM says no"), "crash"),
])
def test_failures_are_classified(monkeypatch, where, error, kind):
    monkeypatch.setattr(sparsec.driver, where, _raise(error))
    outcome = run_case(random_case(QUICK))
    assert outcome.kind == kind and str(error).strip("'") in outcome.message


def test_a_target_of_another_vector_shape_is_fuzzed_and_reproduced(tmp_path, monkeypatch, capsys):
    """`sparsec fuzz --target-json`: the cases compiled for that target (here AVX2 code, which this
    machine runs: 8-lane kernels where the host's plans may take 16), and a failing case's README
    names it in both commands; a target this machine cannot run is refused before any case."""
    avx2 = '{"isa": "avx2", "tvm": {"mcpu": "haswell"}}'
    compiled_for = []
    real = sparsec.driver.compile
    monkeypatch.setattr(sparsec.driver, "compile", lambda *a, **kw: compiled_for.append(kw["target"]) or real(*a, **kw))
    assert main(["fuzz", "--seeds", "1", "--start", str(QUICK), "--out", str(tmp_path), "--target-json", avx2]) == 0
    assert [(t.isa, t.cpu, t.lanes()) for t in compiled_for] == [("avx2", "haswell", 8)]
    real_ort = runner._onnxruntime
    monkeypatch.setattr(runner, "_onnxruntime", lambda case, inputs: {
        name: value + 1 for name, value in real_ort(case, inputs).items()})
    assert main(["fuzz", "--seeds", "1", "--start", str(QUICK), "--out", str(tmp_path), "--target-json", avx2]) == 1
    readme = (tmp_path / f"seed-{QUICK}" / "README.txt").read_text()
    assert f"    sparsec compile model.onnx --masks masks.npz -o m.so --check --target-json '{avx2}'\n" in readme
    assert f"To regenerate this case: sparsec fuzz --seeds 1 --start {QUICK} --target-json '{avx2}'\n" in readme
    capsys.readouterr()
    assert main(["fuzz", "--seeds", "1", "--out", str(tmp_path / "arm"), "--target-json", '{"arch": "aarch64"}']) == 2
    assert "sparsec: error: fuzz runs the compiled code on this machine" in capsys.readouterr().err
    assert not (tmp_path / "arm").exists()


def test_a_wrong_shape_is_a_mismatch(monkeypatch):
    real = runner._onnxruntime
    monkeypatch.setattr(runner, "_onnxruntime", lambda case, inputs: {
        name: value[..., None] for name, value in real(case, inputs).items()})
    outcome = run_case(random_case(QUICK))
    assert outcome.kind == "mismatch" and "gives shape" in outcome.message
