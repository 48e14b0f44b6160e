"""arm64 on the emulated device: kernels and whole models cross-compiled for cortex-a53 and
cortex-a76 run under qemu and match NumPy / the reference interpreter (max relative error 1e-4);
`sparsec run` starts the device itself, or uses the one at --tracker/--key; a device that
cannot start says why and leaves no process behind."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

import sparsec
from sparsec.check import random_inputs, relative_error
from sparsec.cli import main
from sparsec.driver import import_model
from sparsec.errors import UserError
from sparsec.fkw import build_fkw
from sparsec.ir.activation import Activation
from sparsec.lower.kernels.csr import csr_conv1x1_kernel
from sparsec.lower.kernels.dense_conv import DenseConvKnobs, dense_conv_kernel
from sparsec.lower.kernels.pattern_conv import PatternConvKnobs, pattern_conv_kernel
from sparsec.lower.target import resolve_target
from sparsec.models import ZOO
from sparsec.prune import prune_model, save_masks
from sparsec.reference import run_reference
from sparsec.runtime.device import run_kernel_on
from sparsec.runtime.emulator import Arm64Setup, EmulatedDevice

A53, A76 = resolve_target("arm64", "cortex-a53"), resolve_target("arm64", "cortex-a76")


def _pattern_weight(rng, filters, channels, keep=0.5):
    taps = np.array([[1, 3, 4, 5], [0, 1, 3, 4], [4, 5, 7, 8], [1, 4, 6, 7]])
    w = rng.standard_normal((filters, channels, 9)).astype(np.float32)
    mask = np.zeros(w.shape, bool)
    pid = rng.integers(0, len(taps), (filters, channels))
    mask[np.arange(filters)[:, None, None], np.arange(channels)[None, :, None], taps[pid]] = True
    mask &= (rng.random((filters, channels)) < keep)[:, :, None]
    return (w * mask).reshape(filters, channels, 3, 3)


def _conv_reference(x, w, pad):
    """Stride-1 NCHW convolution, one tap at a time, in float64."""
    kh, kw = w.shape[2:]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
    return sum(np.einsum("oc,nchw->nohw", w[:, :, a, b], xp[:, :, a:a + oh, b:b + ow])
               for a in range(kh) for b in range(kw))


def test_kernels_on_cortex_a53(a53):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, 13, 19)).astype(np.float32)
    w = _pattern_weight(rng, 6, 8)
    b = rng.standard_normal(6).astype(np.float32)
    kernel = pattern_conv_kernel(build_fkw(w), x.shape, bias=b, activation=Activation("relu"), target=A53)
    want = np.maximum(_conv_reference(x, w, 1) + b[None, :, None, None], 0)
    np.testing.assert_allclose(run_kernel_on(a53.rpc, kernel, A53, x), want, rtol=1e-4, atol=1e-4)
    # one loop a block with the taps' offsets read at run time (`runtime_taps`), 4-lane vectors
    kernel = pattern_conv_kernel(build_fkw(w), x.shape, bias=b, activation=Activation("relu"), target=A53,
                                 knobs=PatternConvKnobs(runtime_taps=1, channel_block=4))
    np.testing.assert_allclose(run_kernel_on(a53.rpc, kernel, A53, x), want, rtol=1e-4, atol=1e-4)
    # 18 = 4 x 4 + 2 columns in 4-lane vectors: the last column's rows in pairs (2 columns of 2 rows each)
    x_pairs = rng.standard_normal((1, 8, 17, 18)).astype(np.float32)
    kernel = pattern_conv_kernel(build_fkw(w), x_pairs.shape, bias=b, activation=Activation("relu"), target=A53,
                                 knobs=PatternConvKnobs(pair_rows=1, vectors_per_step=1))
    want = np.maximum(_conv_reference(x_pairs, w, 1) + b[None, :, None, None], 0)
    np.testing.assert_allclose(run_kernel_on(a53.rpc, kernel, A53, x_pairs), want, rtol=1e-4, atol=1e-4)
    dense = rng.standard_normal((5, 8, 3, 3)).astype(np.float32)
    for winograd in (1, 2, 4):  # direct, F(2x2, 3x3), F(4x4, 3x3) (4-lane vectors of tiles)
        kernel = dense_conv_kernel(dense, x.shape, pads=(1, 1, 1, 1), knobs=DenseConvKnobs(winograd=winograd),
                                   target=A53)
        got = run_kernel_on(a53.rpc, kernel, A53, x)
        np.testing.assert_allclose(got, _conv_reference(x, dense, 1), rtol=1e-4, atol=1e-4)
    # dense 1x1 as a pixel GEMM (`pointwise_pixels`: 7 filters x 4 vectors of 4 lanes, the last tile
    # partial, the epilogue in registers), stride 1 with a residual, and stride 2 (a gathered panel)
    pointwise = rng.standard_normal((9, 8, 1, 1)).astype(np.float32)
    residual = rng.standard_normal((1, 9, 13, 19)).astype(np.float32)
    kernel = dense_conv_kernel(pointwise, x.shape, bias=b[:1].repeat(9), activation=Activation("relu"), residual=True,
                               target=A53)
    want = np.maximum(_conv_reference(x, pointwise, 0) + b[0] + residual, 0)
    np.testing.assert_allclose(run_kernel_on(a53.rpc, kernel, A53, x, residual), want, rtol=1e-4, atol=1e-4)
    kernel = dense_conv_kernel(pointwise, x.shape, strides=(2, 2), target=A53)
    want = _conv_reference(x, pointwise, 0)[:, :, ::2, ::2]
    np.testing.assert_allclose(run_kernel_on(a53.rpc, kernel, A53, x), want, rtol=1e-4, atol=1e-4)
    # depthwise 3x3 with its tap columns taken apart in registers (`depthwise_conv`: 4-lane shuffles of
    # 2 or 3 loaded vectors), stride 1 and 2, 19 columns: whole vectors and a partial last one
    depthwise = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    full = np.concatenate([_conv_reference(x[:, c:c + 1], depthwise[c:c + 1], 1) for c in range(8)], axis=1)
    for s in (1, 2):
        kernel = dense_conv_kernel(depthwise, x.shape, strides=(s, s), pads=(1, 1, 1, 1), groups=8,
                                   knobs=DenseConvKnobs(depthwise=2), target=A53)
        want = full[:, :, ::s, ::s]
        np.testing.assert_allclose(run_kernel_on(a53.rpc, kernel, A53, x), want, rtol=1e-4, atol=1e-4)
    sparse = rng.standard_normal((7, 8, 1, 1)).astype(np.float32) * (rng.random((7, 8, 1, 1)) < 0.3)
    got = run_kernel_on(a53.rpc, csr_conv1x1_kernel(sparse, x.shape, target=A53), A53, x)
    np.testing.assert_allclose(got, _conv_reference(x, sparse, 0), rtol=1e-4, atol=1e-4)


def _tiny(tmp_path):
    model = ZOO["tiny_cnn"](resolution=32, num_classes=10)
    masks = prune_model(model, keep_kernels=0.5, unstructured=0.8)
    (tmp_path / "tiny.onnx").write_bytes(model.SerializeToString())
    save_masks(masks, tmp_path / "tiny.npz")
    return import_model(model, masks)


@pytest.mark.parametrize("cpu", ["a53", "a76"])
def test_tiny_cnn_matches_the_reference(request, tmp_path, cpu):
    device, target = request.getfixturevalue(cpu), {"a53": A53, "a76": A76}[cpu]
    module = _tiny(tmp_path)
    compiled = sparsec.compile(module, target=target)
    assert not compiled.runs_here and {layer["format"] for layer in compiled.manifest.layers} >= {"pattern", "csr"}
    inputs = random_inputs(module)
    got = compiled.on(device.rpc).run(inputs)
    want = run_reference(module, inputs)
    assert relative_error(got["output"], want["output"]) <= 1e-4


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_compile_and_run_on_the_emulated_device(tmp_path, capsys, a53):
    module = _tiny(tmp_path)
    code, out, err = _cli(capsys, "compile", tmp_path / "tiny.onnx", "--masks", tmp_path / "tiny.npz",
                          "--target", "arm64", "-o", tmp_path / "tiny.so", "--check",
                          "--tracker", f"127.0.0.1:{a53.rpc.port}", "--key", a53.key)
    assert code == 0 and "check: output matches onnxruntime" in out
    x = random_inputs(module)["input"]
    np.save(tmp_path / "x.npy", x)
    want = run_reference(module, {"input": x})["output"]
    # 1. no device named: sparsec starts an emulated one, says so, and stops it
    code, _, err = _cli(capsys, "run", tmp_path / "tiny.so", "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert code == 0 and "running on an emulated arm64 device: cortex-a53 under qemu-aarch64" in err
    assert relative_error(np.load(tmp_path / "y.npy"), want) <= 1e-4
    # 2. the device registered at a tracker under a key (what a phone running tvm_rpc would be)
    code, _, err = _cli(capsys, "run", tmp_path / "tiny.so", "--input", tmp_path / "x.npy", "-o", tmp_path / "z.npy",
                        "--tracker", f"127.0.0.1:{a53.rpc.port}", "--key", a53.key)
    assert code == 0 and err == "" and relative_error(np.load(tmp_path / "z.npy"), want) <= 1e-4
    code, _, err = _cli(capsys, "run", tmp_path / "tiny.so", "--input", tmp_path / "x.npy", "-o", tmp_path / "w.npy",
                        "--tracker", f"127.0.0.1:{a53.rpc.port}", "--key", "pixel7")
    assert code == 2 and err.startswith(f"sparsec: error: no device registered under key 'pixel7' at tracker "
                                        f"127.0.0.1:{a53.rpc.port} (keys there: {a53.key})")
    # 3. the host runtime without a device: one line
    with pytest.raises(UserError, match=r"tiny.so: compiled for arm64 \(aarch64, cortex-a53\) but this machine is"):
        sparsec.load(tmp_path / "tiny.so").run({"input": x})


def _group_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_device_that_cannot_start_says_why_and_leaves_nothing(tmp_path, arm64_setup):
    with pytest.raises(UserError, match="the emulated arm64 device cannot start: missing the aarch64 sysroot"):
        EmulatedDevice(setup=Arm64Setup.find(tmp_path)).start()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        device = EmulatedDevice(tracker_port=taken.getsockname()[1], setup=arm64_setup)
        with pytest.raises(UserError, match=f"tracker did not start: port {taken.getsockname()[1]} is in use"):
            device.start()
    broken = tmp_path / "broken"
    (broken / "sysroot" / "usr" / "bin").mkdir(parents=True)
    (broken / "sysroot" / "usr" / "bin" / "python3.11").write_text("not a program")
    (broken / "site-packages" / "tvm").mkdir(parents=True)
    device = EmulatedDevice(setup=Arm64Setup.find(broken))
    with pytest.raises(UserError, match=r"the emulated arm64 device \(cortex-a53\) did not start: "):
        device.start()
    assert device._procs == []


def test_stop_leaves_no_process(arm64_setup):
    device = EmulatedDevice(setup=arm64_setup, key="sparsec-test-stop")
    device.start()
    pids = [p.pid for p in device._procs]
    assert len(pids) == 2 and not any(_group_gone(pid) for pid in pids)
    device.stop()
    assert all(_group_gone(pid) for pid in pids)
