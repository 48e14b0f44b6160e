"""Kernels and models generated for each target: numerics with the host's vector width (16 lanes on
an AVX-512 machine) and with an explicit AVX2 target JSON (8 lanes), both against NumPy / the
reference interpreter; the vector registers the generated code uses; the manifest's target;
arm64 cross-compiles to NEON code."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import sparsec
from sparsec.check import random_inputs, relative_error
from sparsec.driver import import_model
from sparsec.errors import UserError
from sparsec.fkw import build_fkw
from sparsec.ir.activation import Activation
from sparsec.lower.kernels.common import run_kernel
from sparsec.lower.kernels.csr import csr_conv1x1_kernel, csr_dense_kernel
from sparsec.lower.kernels.dense_matmul import matmul_kernel
from sparsec.lower.kernels.pattern_conv import pattern_conv_kernel
from sparsec.lower.kernels.pool import global_avg_pool_kernel
from sparsec.lower.target import host, resolve_target, tvm_target
from sparsec.models import ZOO
from sparsec.prune import prune_model
from sparsec.reference import run_reference
from sparsec.target import host_isa

pytestmark = pytest.mark.tvm

AVX2_JSON = '{"name": "avx2", "isa": "avx2", "tvm": {"mcpu": "haswell"}}'
TARGETS = {"host": host(), "avx2": resolve_target(spec=AVX2_JSON)}
needs_avx512 = pytest.mark.skipif(host_isa() != "avx512", reason="this machine has no AVX-512")


def _conv_check(target, x_shape, filters):
    from test_dense_conv import check as dense_check  # tests/tvm is on the path (rootdir mode)
    from test_pattern_conv import check as pattern_check

    pattern_check(x_shape, filters, bias=True, act=Activation("relu"), target=target)
    pattern_check((1, x_shape[1], 9, 21), filters, strides=(2, 2), target=target)  # a narrow last tile
    dense_check(x_shape, (filters, x_shape[1], 3, 3), pads=(1, 1, 1, 1), bias=True, act="relu", target=target)
    dense_check(x_shape, (x_shape[1], 1, 3, 3), pads=(1, 1, 1, 1), groups=x_shape[1], target=target)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_conv_kernels(name):
    _conv_check(TARGETS[name], (1, 12, 14, 37), 10)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_csr_matmul_and_pool_kernels(name):
    target, rng = TARGETS[name], np.random.default_rng(5)
    weight = rng.standard_normal((9, 70, 1, 1)).astype(np.float32) * (rng.random((9, 70, 1, 1)) < 0.3)
    x = rng.standard_normal((1, 70, 9, 11)).astype(np.float32)
    got = run_kernel(csr_conv1x1_kernel(weight, x.shape, target=target), target, x)
    np.testing.assert_allclose(got, np.einsum("oc,nchw->nohw", weight[:, :, 0, 0], x), rtol=1e-4, atol=1e-4)
    fc, v = weight[:, :, 0, 0], rng.standard_normal((3, 70)).astype(np.float32)
    got = run_kernel(csr_dense_kernel(fc, v.shape, target=target), target, v)
    np.testing.assert_allclose(got, v @ fc.T, rtol=1e-4, atol=1e-4)
    a, b = rng.standard_normal((21, 40)).astype(np.float32), rng.standard_normal((40, 37)).astype(np.float32)
    np.testing.assert_allclose(run_kernel(matmul_kernel(a.shape, b.shape, target=target), target, a, b), a @ b,
                               rtol=1e-4, atol=1e-4)
    got = run_kernel(global_avg_pool_kernel(x.shape, target=target), target, x)
    np.testing.assert_allclose(got, x.mean(axis=(2, 3), keepdims=True), rtol=1e-5, atol=1e-6)


def _asm(kernel, target) -> str:
    import tvm

    return tvm.compile(kernel.func, target=tvm_target(target)).mod.inspect_source("asm")


def _pattern_kernel(target):
    w = np.zeros((8, 8, 3, 3), np.float32)
    w[:, :, 1, :] = 1.0  # one 3-tap pattern
    return pattern_conv_kernel(build_fkw(w), (1, 8, 32, 32), target=target)


@needs_avx512
def test_host_kernels_use_the_512_bit_registers():
    assert re.search(r"vfmadd\w*ps\s[^\n]*zmm", _asm(_pattern_kernel(TARGETS["host"]), TARGETS["host"]))
    avx2 = _asm(_pattern_kernel(TARGETS["avx2"]), TARGETS["avx2"])
    assert re.search(r"vfmadd\w*ps\s[^\n]*ymm", avx2) and "zmm" not in avx2


def test_arm64_kernels_are_neon():
    arm = resolve_target("arm64", "cortex-a76")
    asm = _asm(_pattern_kernel(arm), arm)
    assert re.search(r"fmla\s+v\d+\.4s", asm)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_model_for_each_target_matches_the_reference(tmp_path, name):
    target = TARGETS[name]
    model = ZOO["tiny_cnn"](resolution=32, num_classes=10)
    module = import_model(model, prune_model(model, keep_kernels=0.5, unstructured=0.8))
    compiled = sparsec.compile(module, target=target)
    inputs = random_inputs(module)
    want, got = run_reference(module, inputs), compiled.run(inputs)
    assert all(relative_error(got[k], v) <= 1e-4 for k, v in want.items())
    compiled.export(tmp_path / "m.so")
    manifest = json.loads((tmp_path / "m.so.json").read_text())
    spec = manifest["target_spec"]
    assert manifest["target"] == name and spec["isa"] == target.isa and spec["lanes"]["float32"] == target.lanes()
    assert spec["tvm"] == target.tvm_dict() and spec["throughputs"]["pattern"] == target.throughputs.pattern
    again = sparsec.load(tmp_path / "m.so")
    assert again.target == target
    assert relative_error(again.run(inputs)["output"], want["output"]) <= 1e-4


def test_calibrate_writes_what_the_host_target_reads(tmp_path, monkeypatch):
    from sparsec.runtime.calibrate import Layer, calibrate

    monkeypatch.setenv("SPARSEC_CALIBRATION_DIR", str(tmp_path))
    lines = []
    ratio, path = calibrate(host(), rounds=1, layers=(Layer("pattern", 64, 28, 0.5), Layer("csr", 32, 14, 0.2)),
                            log=lines.append)
    # positive and finite: one round on a shared machine can land anywhere (a stalled round read 87x)
    assert all(0 < ratio[k] < float("inf") for k in ("pattern", "csr", "winograd")), ratio
    assert "pattern 64x28x28 keep 0.5" in lines[1] and "winograd F4" in lines[1]
    record = json.loads(open(path).read())
    assert record["cpu"] == host().cpu and len(record["layers"]) == 2
    pattern_row = record["layers"][0]
    assert pattern_row["winograd"] == pytest.approx(
        pattern_row["winograd_work"] * pattern_row["direct_ms"] / pattern_row["winograd_ms"])
    again = host()
    assert (again.throughputs.pattern, again.throughputs.csr, again.throughputs.winograd) == (
        ratio["pattern"], ratio["csr"], ratio["winograd"])
    assert again.throughputs.source == f"calibrated ({path})"


def test_calibrate_measures_a_layer_again_when_a_round_stalled(tmp_path, monkeypatch):
    """A ratio no target accepts (a neighbour stalled the dense kernel's round: pattern 13x dense, as
    seen in session 36) is a bad timing, not a figure: that layer is measured again, up to twice,
    and the file holds the plausible one; a layer implausible every time leaves no file."""
    import sparsec.runtime.calibrate as cal

    monkeypatch.setenv("SPARSEC_CALIBRATION_DIR", str(tmp_path))
    pattern, csr = cal.Layer("pattern", 64, 28, 0.5), cal.Layer("csr", 32, 14, 0.2)
    stalled = {"layer": pattern.name, "sparse_ms": 0.2, "direct_ms": 5.0, "pattern": 13.354, "winograd": 0.6,
               "winograd_tile": 4, "winograd_ms": 0.3}
    readings = iter([stalled, {**stalled, "direct_ms": 0.4, "pattern": 0.7},
                     {"layer": csr.name, "sparse_ms": 0.1, "direct_ms": 0.3, "csr": 0.6}])
    calls = []
    monkeypatch.setattr(cal, "measure_layer", lambda layer, *_: calls.append(layer) or next(readings))
    lines = []
    ratio, path = cal.calibrate(host(), rounds=1, layers=(pattern, csr), log=lines.append)
    assert calls == [pattern, pattern, csr] and ratio == {"pattern": 0.7, "csr": 0.6, "winograd": 0.6}
    assert f"  {pattern.name:34} ratio pattern 13.35, winograd 0.60: not a throughput (at most 4x dense; a busy " \
           "neighbour stalled a round): measuring it again" in lines
    assert json.loads(open(path).read())["throughputs"]["pattern"] == 0.7

    (tmp_path / "again").mkdir()
    monkeypatch.setenv("SPARSEC_CALIBRATION_DIR", str(tmp_path / "again"))
    calls.clear()
    csr_row = {"layer": csr.name, "sparse_ms": 0.1, "direct_ms": 0.3, "csr": 0.6}
    monkeypatch.setattr(cal, "measure_layer", lambda layer, *_: calls.append(layer) or dict(
        stalled if layer == pattern else csr_row))
    with pytest.raises(UserError, match=r"calibrate measured throughput pattern=13.354 must be a number in \(0, 4\]"):
        cal.calibrate(host(), rounds=1, layers=(pattern, csr), log=lines.append)
    assert calls == [pattern] * 3 + [csr] and not any((tmp_path / "again").iterdir())


def test_cli_targets_lists_what_each_implies(capsys):
    from sparsec.cli import main

    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    host_target = TARGETS["host"]
    assert f"host: this machine ({host_target.arch}, {host_target.cpu})" in out
    assert f"{host_target.lanes()} fp32 lanes, {host_target.vector_registers} registers" in out
    assert "arm64: aarch64 + NEON, cross-compiled (--cpu, default cortex-a53)" in out
    assert "neon: 128-bit, 4 fp32 lanes, 32 registers" in out and "cortex-x1" in out
    assert main(["targets", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["arm64"]["lanes"]["float32"] == 4 and listed["host"]["cpu"] == host_target.cpu


@pytest.mark.parametrize("args, message", [
    (["--target", "arm64"], "bench times engines on this machine; for arm64 add --count-instructions"),
    (["--count-instructions"], "--count-instructions counts aarch64 instructions under qemu; host is "),
])
def test_bench_count_errors(tmp_path, capsys, args, message):
    from sparsec.cli import main

    (tmp_path / "t.onnx").write_bytes(ZOO["tiny_cnn"]().SerializeToString())
    assert main(["bench", str(tmp_path / "t.onnx"), *args]) == 2
    assert capsys.readouterr().err.startswith(f"sparsec: error: {message}")


def test_bench_times_another_vector_shape_of_this_machine(tmp_path, capsys, monkeypatch):
    """`sparsec bench --target-json`: sparsec's engines compiled for an AVX2 CPU and run here (an
    AVX2 machine's kernels, timed on this one), checked against onnxruntime; the report names the
    target and the peak is the AVX2 code's."""
    import sparsec.driver
    from sparsec.cli import main
    from sparsec.prune import save_masks

    monkeypatch.setenv("TVM_NUM_THREADS", "2")  # the command sets it; restore it afterwards
    compiled_for = []
    real = sparsec.driver.compile
    monkeypatch.setattr(sparsec.driver, "compile", lambda *a, **kw: compiled_for.append(kw["target"]) or real(*a, **kw))
    model = ZOO["tiny_cnn"]()
    (tmp_path / "t.onnx").write_bytes(model.SerializeToString())
    save_masks(prune_model(model, patterns=8, keep_kernels=0.5), tmp_path / "m.npz")
    assert main(["bench", str(tmp_path / "t.onnx"), "--masks", str(tmp_path / "m.npz"), "--rounds", "1",
                 "--min-time", "0.01", "--target-json", AVX2_JSON, "--json", str(tmp_path / "r.json")]) == 0
    described = "avx2: haswell (avx2, 8 fp32 lanes, 16 registers)"
    assert f"sparsec compiled for {described}, run on this machine" in capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["target"] == described and report["max_rel_err"]["sparsec"] < 1e-4 and report["peak_gflops"] > 0
    assert [(t.isa, t.cpu, t.lanes()) for t in compiled_for] == [("avx2", "haswell", 8)] * 2  # sparsec, its dense path


def test_bench_refuses_a_target_this_machine_cannot_run(tmp_path, capsys, monkeypatch):
    """Code for a CPU with instructions this one lacks would die here (SIGILL), another architecture's
    would not load: both refused by name before any compiling, nothing written."""
    import sparsec.lower.target as lowered
    from sparsec.cli import main

    monkeypatch.setattr(lowered, "host_cpu", lambda: "haswell")  # this machine, as an AVX2 one
    (tmp_path / "t.onnx").write_bytes(ZOO["tiny_cnn"]().SerializeToString())
    bench = ["bench", str(tmp_path / "t.onnx"), "--json", str(tmp_path / "r.json"), "--target-json"]
    assert main([*bench, '{"tvm": {"mcpu": "skylake-avx512"}}']) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparsec: error: bench runs the compiled code on this machine (haswell); target "
                          "json's CPU skylake-avx512 uses instructions it lacks (avx512") and "avx512f," in err
    assert main([*bench, '{"arch": "aarch64", "tvm": {"mtriple": "aarch64-linux-gnu"}}']) == 2
    assert capsys.readouterr().err == (
        "sparsec: error: bench runs the compiled code on this machine (x86_64); target json is aarch64: give a "
        "target of this machine's architecture (`--count-instructions` counts an aarch64 target's instructions "
        "under qemu)\n")
    assert main([*bench, '{"tvm": {"mcpu": "haswell"}}', "--rounds", "0"]) == 2  # runs here: on to the options
    assert "use at least one thread and one round" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_a_model_for_a_newer_cpu_is_not_run_here(tmp_path, capsys, monkeypatch):
    """A library whose CPU has instructions this machine lacks would die with SIGILL, no message:
    `compile --check` and `run` refuse it by name instead (nothing exported), and `calibrate` refuses
    such a target; the same model for this machine's CPU runs."""
    import sparsec.lower.target as lowered
    from sparsec.cli import main

    monkeypatch.setattr(lowered, "host_cpu", lambda: "haswell")  # this machine, as an AVX2 one
    (tmp_path / "t.onnx").write_bytes(ZOO["tiny_cnn"]().SerializeToString())
    newer = '{"tvm": {"mcpu": "skylake-avx512"}}'
    compile_ = ["compile", str(tmp_path / "t.onnx"), "--target-json", newer, "-o"]
    assert main([*compile_, str(tmp_path / "checked.so"), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparsec: error: compiled for json (x86_64, skylake-avx512), whose instructions this "
                          "machine's CPU lacks (avx512") and "): run it on such a CPU (--tracker HOST:PORT --key " \
                          "K), or compile for an older one\n" in err
    assert not list(tmp_path.glob("checked.so*"))
    assert main([*compile_, str(tmp_path / "m.so")]) == 0
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    assert main(["run", str(tmp_path / "m.so"), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 2
    assert f"sparsec: error: {tmp_path / 'm.so'}: compiled for json (x86_64, skylake-avx512), whose " in (
        capsys.readouterr().err)
    assert not (tmp_path / "y.npy").exists()
    assert main(["calibrate", "--target-json", newer]) == 2
    assert capsys.readouterr().err.startswith("sparsec: error: calibrate runs the compiled code on this machine "
                                              "(haswell); target json's CPU skylake-avx512 uses instructions")
    older = ["compile", str(tmp_path / "t.onnx"), "--target-json", '{"tvm": {"mcpu": "haswell"}}', "--check"]
    assert main([*older, "-o", str(tmp_path / "h.so")]) == 0


def test_make_bench_for_another_vector_shape_of_this_machine(tmp_path, capsys, monkeypatch):
    """`benchmarks/write_results.py --target-json`: the cases compiled for an AVX2 CPU, run here, in a
    file of their own (never over RESULTS.md, this machine's own run), the target named in it."""
    from test_bench import _script  # tests/tvm is on the path (rootdir mode)

    import sparsec.driver

    monkeypatch.setenv("TVM_NUM_THREADS", "2")
    compiled_for = []
    real = sparsec.driver.compile
    monkeypatch.setattr(sparsec.driver, "compile", lambda *a, **kw: compiled_for.append(kw["target"]) or real(*a, **kw))
    write_results = _script("write_results")
    fast = ["--cases", "L3", "--rounds", "1", "--min-time", "0.01"]
    monkeypatch.setattr(write_results, "HERE", tmp_path)  # its default output: RESULTS.md there, not the repo's
    with pytest.raises(SystemExit):
        write_results.main([*fast, "--target-json", AVX2_JSON])
    assert "--target-json: give -o FILE (benchmarks/RESULTS.md holds this machine's own run)" in capsys.readouterr().err
    out = tmp_path / "avx2.md"
    assert write_results.main([*fast, "--target-json", AVX2_JSON, "-o", str(out)]) == 0
    text = out.read_text()
    assert f"- Target: avx2 (compiled for, run on this machine's {host().cpu}) = haswell (avx2: 8 fp32 lanes, 16 " \
           "vector registers, " in text
    assert re.search(r"^\| L3 \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+x \| >= 3x \|", text, flags=re.M)
    assert {(t.isa, t.cpu) for t in compiled_for} == {("avx2", "haswell")} and len(compiled_for) == 2
    assert write_results.main(["--target-json", '{"arch": "aarch64"}', "-o", str(tmp_path / "arm.md")]) == 2
    assert "write_results.py: error: write_results.py runs the compiled code on this machine" in capsys.readouterr().err
    assert not (tmp_path / "arm.md").exists()


def test_calibrate_measures_every_kernel_against_the_direct_dense_one():
    """Pattern and CSR against the direct dense kernel on the same weight; Winograd on its
    estimated work (so estimate / throughput predicts its time), only where its estimate picks it."""
    from sparsec.runtime.calibrate import Layer, measure_layer

    row = measure_layer(Layer("pattern", 128, 28, 0.5), host(), rounds=1)  # 49 tiles: several GEMM blocks
    # 28 columns in 16-lane vectors: 32 computed (the cost model charges the padding apart); in 8 lanes the
    # last column's 4 take their rows in pairs, and 4 lanes tile them whole
    assert row["pattern_padding"] == pytest.approx(32 / 28 if host().lanes() == 16 else 1.0)
    assert row["pattern"] == pytest.approx(row["kept"] * row["pattern_padding"] * row["direct_ms"] / row["sparse_ms"])
    assert row["winograd_tile"] == 4 and 0.2 < row["winograd_work"] < 0.6  # a quarter of the products + transforms
    assert row["winograd"] == pytest.approx(row["winograd_work"] * row["direct_ms"] / row["winograd_ms"])
    one_block = measure_layer(Layer("pattern", 64, 14, 0.5), host(), rounds=1)  # 16 tiles: one block, not counted
    assert "winograd" not in one_block and one_block["winograd_one_block"] == pytest.approx(
        one_block["winograd_work"] * one_block["direct_ms"] / one_block["winograd_ms"])
    csr = measure_layer(Layer("csr", 32, 14, 0.2), host(), rounds=1)
    assert csr["csr"] == pytest.approx(csr["kept"] * csr["direct_ms"] / csr["sparse_ms"]) and "winograd" not in csr
    few = measure_layer(Layer("pattern", 16, 14, 0.5), host(), rounds=1)  # too few channels: direct
    assert "winograd" not in few and "winograd_ms" not in few


def test_tvm_pool_runs_the_host_targets_threads():
    """Any sparsec code that imports TVM sizes its pool as the host target (TVM alone would take half
    the cores on x86: one thread on a 2-core VM, where `sparsec calibrate` then timed every kernel at
    half speed); a user's TVM_NUM_THREADS wins."""
    import os
    import subprocess
    import sys

    probe = ("import sparsec.runtime.calibrate; from sparsec.lower.target import host; "
             "from sparsec.runtime.bench import tvm_threads; print(tvm_threads(), host().threads)")
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [str(os.cpu_count())] * 2
    out = subprocess.run([sys.executable, "-c", probe], env={**env, "TVM_NUM_THREADS": "1"}, capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == ["1", "1"]
