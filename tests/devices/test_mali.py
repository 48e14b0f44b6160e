"""The mali-on-PoCL tier: GPU kernels built by PoCL's OpenCL compiler and run layer by layer against
the reference interpreter. Fails (never skips) without PoCL: `make pocl-setup` installs it.
PoCL checks what the kernels compute; its timings are not Mali timings and none are asserted."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparsec.check import TOLERANCE
from sparsec.cli import main
from sparsec.driver import compile as compile_model
from sparsec.driver import import_model, optimize
from sparsec.errors import UserError
from sparsec.fkw import build_fkw
from sparsec.lower.gpu.conv import dense_conv_kernel
from sparsec.lower.gpu.csr import csr_conv1x1_kernel, csr_dense_kernel
from sparsec.lower.gpu.launch import lower
from sparsec.lower.gpu.pattern import group_table, pattern_conv_kernel
from sparsec.lower.gpu.program import opencl_source
from sparsec.lower.gpu.report import gpu_report, kernel_counts
from sparsec.lower.target import resolve_target, tvm_target
from sparsec.models import ZOO, conv_layer
from sparsec.prune import prune_model
from sparsec.reference import reference_values
from sparsec.runtime import opencl
from sparsec.runtime.gpu_check import check_bundle
from sparsec.runtime.gpu_program import GpuLayer

pytestmark = pytest.mark.mali

MALI = resolve_target("mali")
RESOLUTION = {"tiny_cnn": 32, "vgg16": 32, "resnet18": 32, "resnet50": 32, "mobilenet_v2": 32}
RNG = np.random.default_rng(7)


def run_kernel(kernel, *inputs):
    """One kernel: TVM's OpenCL code, its launches from the lowering, run on PoCL."""
    import tvm

    lowered = lower(kernel.func, tvm_target(MALI))
    source = opencl_source(tvm.compile(kernel.func, target=tvm_target(MALI)))
    layer = GpuLayer("y", "test", str(kernel.func.attrs["global_symbol"]), ("%x",), len(kernel.constants),
                     kernel.out_shape, lowered.temps, lowered.launches)
    program = opencl.build(opencl.kernel_sources(source), tuple(la.kernel for la in lowered.launches), "test")
    return opencl.run_layer(layer, program, [*inputs, *kernel.constants])


def conv_ref(x, w, b, strides, pads, dilations, groups=1):
    module_free = {"x": x}  # the reference interpreter's conv, through a one-op module
    from sparsec.ir import ops
    from sparsec.ir.types import TensorType
    from sparsec.reference import KERNELS

    oh = (x.shape[2] + pads[0] + pads[2] - dilations[0] * (w.shape[2] - 1) - 1) // strides[0] + 1
    ow = (x.shape[3] + pads[1] + pads[3] - dilations[1] * (w.shape[3] - 1) - 1) // strides[1] + 1
    op = ops.Conv2d("y", TensorType("f32", (x.shape[0], w.shape[0], oh, ow)), input="%x", weight="@w",
                    bias="@b", strides=strides, pads=pads, dilations=dilations, groups=groups)
    return KERNELS[ops.Conv2d](op, {"%x": module_free["x"], "@w": w, "@b": b})


def pattern_weight(o, c, keep=0.5):
    taps = [(1, 3, 4, 5), (0, 1, 4, 7), (4, 5, 7, 8), (1, 4, 6, 7)]
    w = RNG.standard_normal((o, c, 3, 3)).astype(np.float32)
    mask = np.zeros_like(w, bool)
    for f in range(o):
        for ch in range(c):
            if RNG.random() < keep:
                for t in taps[RNG.integers(len(taps))]:
                    mask[f, ch, t // 3, t % 3] = True
    return w * mask


def close(got, want):
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) <= TOLERANCE


@pytest.mark.parametrize("case", [((1, 8, 13, 17), (16, 8, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
                                  ((1, 6, 15, 15), (12, 6, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),
                                  ((1, 8, 12, 12), (8, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 8),
                                  ((2, 8, 9, 10), (8, 2, 3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 4),
                                  ((1, 3, 20, 20), (8, 3, 7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 1)],
                         ids=["3x3", "stride2", "depthwise", "grouped-dilated", "7x7"])
def test_dense_conv(case):
    xs, ws, st, pd, dl, g = case
    x, w = RNG.standard_normal(xs).astype(np.float32), RNG.standard_normal(ws).astype(np.float32)
    b = RNG.standard_normal(ws[0]).astype(np.float32)
    got = run_kernel(dense_conv_kernel(w, xs, strides=st, pads=pd, dilations=dl, groups=g, bias=b, target=MALI), x)
    close(got, conv_ref(x, w, b, st, pd, dl, g))


@pytest.mark.parametrize("case", [((1, 16, 14, 14), 32, (1, 1), (1, 1, 1, 1), (1, 1)),
                                  ((1, 12, 9, 21), 10, (2, 2), (1, 1, 1, 1), (1, 1)),
                                  ((2, 8, 11, 11), 8, (1, 1), (2, 2, 2, 2), (2, 2))],
                         ids=["3x3", "stride2-narrow", "dilated-batch2"])
def test_pattern_conv(case):
    xs, o, st, pd, dl = case
    w = pattern_weight(o, xs[1])
    x, b = RNG.standard_normal(xs).astype(np.float32), RNG.standard_normal(o).astype(np.float32)
    got = run_kernel(pattern_conv_kernel(build_fkw(w), xs, strides=st, pads=pd, dilations=dl, bias=b, target=MALI), x)
    close(got, conv_ref(x, w, b, st, pd, dl))


def test_group_table_pads_runs_equal_and_keeps_every_kernel():
    w = pattern_weight(12, 20)
    fkw = build_fkw(w)
    table = group_table(fkw, 20, 4, 6)
    stride = table.stride.reshape(3, 4, -1)
    assert (stride == stride[:, :1]).all()  # a work-group's filters: the same runs
    assert np.count_nonzero(table.weight.any(axis=1)) <= fkw.num_kernels <= len(table.index)
    assert np.isclose(table.weight.sum(), fkw.weight.sum(), rtol=1e-5)


def test_csr_kernels():
    w = (RNG.standard_normal((12, 16, 1, 1)) * (RNG.random((12, 16, 1, 1)) < 0.3)).astype(np.float32)
    for xs, st in (((1, 16, 7, 9), (1, 1)), ((2, 16, 9, 11), (2, 2))):
        x = RNG.standard_normal(xs).astype(np.float32)
        close(run_kernel(csr_conv1x1_kernel(w, xs, strides=st, target=MALI), x),
              conv_ref(x, w, np.zeros(12, np.float32), st, (0, 0, 0, 0), (1, 1)))
    fc = (RNG.standard_normal((10, 300)) * (RNG.random((10, 300)) < 0.2)).astype(np.float32)
    v = RNG.standard_normal((2, 300)).astype(np.float32)
    close(run_kernel(csr_dense_kernel(fc, v.shape, target=MALI), v), v @ fc.T)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_layer_by_layer_on_pocl(name):
    model = ZOO[name](resolution=RESOLUTION[name])
    masks = prune_model(model, keep_kernels=0.5, unstructured=0.5, prune_first_conv=True)
    compiled = compile_model(model, masks, target=MALI)
    bundle = compiled.gpu_bundle
    x = {"input": RNG.standard_normal(compiled.manifest.inputs[0].shape).astype(np.float32)}
    check = check_bundle(bundle, x)
    assert check.passed, check.format()
    assert {c.result for c in check.layers} == {layer.result for layer in bundle.program.layers}
    assert compiled.manifest.device_kind == "opencl"


def test_pattern_layer_loads_and_divergence():
    model = conv_layer((1, 64, 16, 16), 64)
    masks = prune_model(model, patterns=8, keep_kernels=0.5, prune_first_conv=True)
    module = optimize(import_model(model, masks), target=MALI)
    (layer,) = gpu_report(module, MALI)
    assert layer.format == "pattern" and layer.vs_dense is not None
    assert layer.vs_dense <= 1 / 3
    assert sum(k.divergent_groups for k in layer.kernels) == 0
    assert all(k.local_bytes <= MALI.local_memory_bytes for k in layer.kernels)


def _uneven_csr(rows, cols):
    """A sparse matrix whose rows keep from none to all of their columns (CSR loops of every length)."""
    keep = RNG.random((rows, cols)) < np.linspace(0, 1, rows)[:, None]
    return (RNG.standard_normal((rows, cols)) * keep).astype(np.float32)


@pytest.mark.parametrize("make", [
    # several pattern classes, odd sizes, padded tiles, a partial last channel block, batch 2
    lambda: pattern_conv_kernel(build_fkw(pattern_weight(20, 24)), (2, 24, 19, 13), bias=np.ones(20, np.float32),
                                target=MALI),
    lambda: pattern_conv_kernel(build_fkw(pattern_weight(20, 40, keep=0.3)), (1, 40, 21, 17), strides=(2, 2),
                                target=MALI),
    lambda: dense_conv_kernel(RNG.standard_normal((12, 30, 3, 3)).astype(np.float32), (1, 30, 23, 15),
                              pads=(1, 1, 1, 1), target=MALI),
    lambda: csr_conv1x1_kernel(_uneven_csr(12, 16)[:, :, None, None], (1, 16, 9, 11), strides=(2, 2), target=MALI),
    lambda: csr_dense_kernel(_uneven_csr(40, 150), (2, 150), target=MALI),
], ids=["pattern", "pattern-stride2", "dense", "csr-conv1x1", "csr-fc"])
def test_static_counts_shortcut_equals_every_iteration(make):
    """The report counts a loop without branches once and multiplies by its trip counts; visiting
    every iteration of every loop must give the same integers."""
    kernel = make()
    fast = kernel_counts(kernel.func, MALI, kernel.constants)
    assert fast == kernel_counts(kernel.func, MALI, kernel.constants, exhaustive=True)
    assert all(k.loads > 0 for k in fast)


def test_cli_compile_tar_emulate_and_inspect(tmp_path, capsys):
    model_path = tmp_path / "tiny.onnx"
    import onnx

    onnx.save(ZOO["tiny_cnn"](resolution=16), model_path)
    masks = tmp_path / "m.npz"
    assert main(["prune", str(model_path), "-o", str(masks), "--keep-kernels", "0.5"]) == 0
    out = tmp_path / "tiny.tar"
    assert main(["compile", str(model_path), "--masks", str(masks), "--target", "mali", "-o", str(out)]) == 0
    manifest = json.loads((tmp_path / "tiny.tar.json").read_text())
    assert manifest["device_kind"] == "opencl" and manifest["target"] == "mali"
    assert (tmp_path / "tiny.tar.gpu.npz").exists()
    np.save(tmp_path / "x.npy", RNG.standard_normal((1, 3, 16, 16)).astype(np.float32))
    args = ["run", str(out), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]
    assert main(args) == 2  # no OpenCL TVM runtime here: a clear error, not qemu
    assert "--emulate" in capsys.readouterr().err
    assert main(args + ["--emulate"]) == 0
    assert "all within" in capsys.readouterr().out
    assert main(["compile", str(model_path), "--target", "mali", "-o", str(tmp_path / "t.bin")]) == 2
    assert main(["inspect", str(model_path), "--masks", str(masks), "--target", "mali"]) == 0
    assert "loads/FMA" in capsys.readouterr().out


def test_rejected_kernel_names_the_layer_with_the_build_log():
    with pytest.raises(opencl.KernelRejected, match=r"(?s)layer %bad .*undeclared identifier"):
        opencl.build({"bad_kernel": "__kernel void bad_kernel(__global float* a) { a[0] = undefined_thing; }"},
                     ("bad_kernel",), "layer %bad (conv2d)")


def test_missing_opencl_names_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(opencl, "_DEVICE", None)
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "pyopencl" else real_import(name, *a, **k))
    with pytest.raises(UserError, match="pocl-opencl-icd.*pyopencl"):
        opencl.device("--target mali")


def test_every_value_checked_is_the_reference_one():
    model = ZOO["tiny_cnn"](resolution=16)
    module = import_model(model, None)
    env = reference_values(module, {"input": np.ones((1, 3, 16, 16), np.float32)})
    assert all(f"%{op.result}" in env for op in module.ops)


def test_a_module_with_fused_residuals_is_refused_for_the_gpu_naming_the_layer(tmp_path, capsys):
    """An IR module optimised without a target (`sparsec opt -p default`: residual adds fused into
    conv epilogues, which only the CPU kernels read) compiled for mali: one clear error, not a
    kernel that drops the shortcut. From the ONNX model, mali keeps the adds and compiles."""
    import onnx

    from sparsec.models import resnet18

    model = tmp_path / "r18.onnx"
    onnx.save(resnet18(resolution=32, num_classes=10), model)
    assert main(["import", str(model), "-o", str(tmp_path / "r18.sir")]) == 0
    assert main(["opt", str(tmp_path / "r18.sir"), "-p", "default", "-o", str(tmp_path / "o.sir")]) == 0
    capsys.readouterr()
    assert main(["compile", str(tmp_path / "o.sir"), "--target", "mali", "-o", str(tmp_path / "o.tar")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("sparsec: error: layer %layer1.0.relu (conv2d): it adds the residual %maxpool in its epilogue "
                   "(a shortcut add fused for a CPU target), which mali's GPU kernels cannot; recompile from the ONNX "
                   "model with --target mali (that pipeline keeps the add a layer of its own)")
    compiled = compile_model(model, None, target=MALI)
    assert sum(layer["op"] == "add" for layer in compiled.manifest.layers) == 8
