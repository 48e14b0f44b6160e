"""Residual adds fused into conv epilogues, end to end: a small ResNet-style model whose shortcuts
land on pattern, CSR, dense and depthwise convs compiles without a single add layer and matches
onnxruntime; the tuner's builder gives a residual kernel its residual input."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import onnx
import pytest

import sparsec
from sparsec.check import onnxruntime_outputs, random_inputs, relative_error
from sparsec.driver import import_model, optimize
from sparsec.ir import Param, TensorType
from sparsec.ir.knobs import Knobs
from sparsec.lower.layers import build_kernel
from sparsec.lower.relax_build import build_relax
from sparsec.lower.target import host
from sparsec.lower.tuning_build import build_candidate, save_call
from sparsec.models._graph import GraphBuilder
from sparsec.prune import prune_model, save_masks
from sparsec.reference import run_reference
from sparsec.tuning.task import kernel_call

pytestmark = pytest.mark.tvm
HOST = host()


def _conv_bn(g: GraphBuilder, name: str, x: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1):
    y = g.conv(f"{name}.conv", f"{name}.conv", x, cin, cout, k, stride=stride, groups=groups, bias=False)
    return g.batchnorm(f"{name}.bn", f"{name}.bn", y, cout, gamma=(0.2, 0.5))


def resnet_style() -> onnx.ModelProto:
    """Four blocks, each ending in Add -> Relu, the shortcut on a different kind of conv:
    a: identity shortcut onto a 3x3 conv (pattern);
    b: downsample 1x1 stride-2 shortcut computed after the 3x3 branch (add(branch, shortcut));
    c: add(shortcut, branch) onto a 1x1 conv (CSR);
    d: add(shortcut, branch) onto a depthwise 3x3 conv (dense, depthwise)."""
    g = GraphBuilder(3)
    x = g.relu("stem.relu", _conv_bn(g, "stem", "input", 3, 8, 3))
    y = _conv_bn(g, "a2", g.relu("a1.relu", _conv_bn(g, "a1", x, 8, 8, 3)), 8, 8, 3)
    x = g.relu("a.relu", g.add("a.add", y, x))
    y = _conv_bn(g, "b2", g.relu("b1.relu", _conv_bn(g, "b1", x, 8, 16, 3, stride=2)), 16, 16, 3)
    x = g.relu("b.relu", g.add("b.add", y, _conv_bn(g, "b.down", x, 8, 16, 1, stride=2)))
    y = _conv_bn(g, "c2", g.relu("c1.relu", _conv_bn(g, "c1", x, 16, 32, 1)), 32, 16, 1)
    x = g.relu("c.relu", g.add("c.add", x, y))
    x = g.relu("d.relu", g.add("d.add", x, _conv_bn(g, "d1", x, 16, 16, 3, groups=16)))
    x = g.gemm("fc", "fc", g.flatten("flatten", g.global_avgpool("pool", x)), 16, 10, gain=1.0)
    return g.finish("resnet_style", (1, 3, 17, 19), (1, 10), x)


def test_resnet_style_model_has_no_add_layers_and_matches_onnxruntime(tmp_path):
    model = resnet_style()
    model_path, masks_path = tmp_path / "r.onnx", tmp_path / "m.npz"
    model_path.write_bytes(model.SerializeToString())
    save_masks(prune_model(model, keep_kernels=0.5, unstructured=0.8, prune_first_conv=True), masks_path)
    module = import_model(model_path, masks_path)
    assert sum(op.name == "add" for op in module.ops) == 4
    compiled = sparsec.compile(module)
    layers = compiled.manifest.layers
    assert [layer["op"] for layer in layers] == ["conv2d"] * 9 + ["global_avg_pool", "linear"]  # no activation
    optimized = optimize(module, target=HOST)
    relax_mod, _ = build_relax(optimized, HOST)  # an add left to Relax is legalised into a PrimFunc `add`
    assert not [gv.name_hint for gv in relax_mod.get_global_vars() if gv.name_hint.startswith("add")]
    residual = {op.result: op for op in optimized.ops if getattr(op, "residual", None)}
    formats = {layer["result"]: layer["format"] for layer in layers}
    assert sorted(formats[r] for r in residual) == ["csr", "dense", "pattern", "pattern"]
    depthwise = [op for op in residual.values() if op.groups > 1]
    assert len(depthwise) == 1 and depthwise[0].activation is not None
    inputs = random_inputs(module)
    want = onnxruntime_outputs(model_path, masks_path, inputs)
    got = compiled.run(inputs)
    for key, value in want.items():
        assert relative_error(got[key], value) <= 1e-4, key


def test_tuning_builder_gives_a_residual_kernel_its_residual(tmp_path):
    """build_candidate's arrays are (data, residual, *constants) and the kernel it built reads them."""
    import tvm

    model = resnet_style()
    module = optimize(import_model(model, prune_model(model, keep_kernels=0.5, unstructured=0.8)), target=HOST)
    for op in (op for op in module.ops if getattr(op, "residual", None)):
        call = kernel_call(op, module)
        assert call.residual and call.params["residual"] is True
        save_call(call, tmp_path / f"{op.result}.call.npz")
        built = build_candidate(str(tmp_path / f"{op.result}.call.npz"), HOST.to_dict(), Knobs(()).pairs,
                                str(tmp_path))
        assert built.error is None, built.error
        kernel = build_kernel(call, None, HOST)
        with np.load(built.arrays) as npz:
            args = [npz[f"arg{i}"] for i in range(len(npz.files))]
        assert len(args) == 2 + len(kernel.constants)
        assert args[0].shape == module.types[op.input].shape and args[1].shape == op.type.shape
        lib = tvm.runtime.load_module(built.library)
        out = tvm.runtime.tensor(np.zeros(built.out_shape, np.float32))
        lib[built.func](*(tvm.runtime.tensor(a) for a in args), out)
        want = _alone(module, op, args[0], args[1])
        assert relative_error(out.numpy(), want) <= 1e-4, op.result


def _alone(module, op, data, residual):
    """The reference interpreter's output of the layer `op` alone on (data, residual) (its own
    input may be its residual too, as in a block's first conv: the copy reads its own array)."""
    op = dataclasses.replace(op, residual="%residual.copy")
    params = tuple(Param(ref[1:], TensorType("f32", a.shape)) for ref, a in ((op.input, data), (op.residual, residual)))
    alone = module.replace(inputs=params, ops=(op,), outputs=(op.result,))
    return run_reference(alone, {p.name: a for p, a in zip(params, (data, residual))})[op.result]


def _branch(g: GraphBuilder, name: str, x: str) -> str:
    return _conv_bn(g, f"{name}2", g.relu(f"{name}1.relu", _conv_bn(g, f"{name}1", x, 16, 16, 1)), 16, 16, 1)


def shortcuts() -> onnx.ModelProto:
    """Dense 1x1 blocks whose shortcut is a model input (x), dies at its add (a) and is read again
    after its add (b: `c.add` reads a too)."""
    g = GraphBuilder(5)
    x = g.relu("x.relu", g.add("x.add", _conv_bn(g, "x", "input", 8, 8, 1), "input"))
    s = g.relu("s.relu", _conv_bn(g, "s", x, 8, 16, 1))
    a = g.relu("a.relu", g.add("a.add", _branch(g, "a", s), s))
    b = g.relu("b.relu", g.add("b.add", _branch(g, "b", a), a))
    return g.finish("shortcuts", (1, 8, 9, 11), (1, 16, 9, 11), g.add("c.add", b, a))


def test_a_residual_dead_after_its_conv_is_written_over(tmp_path):
    """The 1x1 kernel whose residual nothing reads afterwards writes its result over it (Relax
    `call_tir_inplace`, no output of its own); a model input and a value read later keep theirs;
    the model still matches onnxruntime."""
    model = shortcuts()
    model_path = tmp_path / "s.onnx"
    model_path.write_bytes(model.SerializeToString())
    module = optimize(import_model(model_path, None), target=HOST)
    relax_mod, plans = build_relax(module, HOST)
    script = relax_mod["main"].script()
    kernels = {plan.result: plan.kernel for plan in plans}
    residual = {op.result: op.residual for op in module.ops if getattr(op, "residual", None)}
    assert residual == {"x.relu": "%input", "a.relu": "%s.relu", "b.relu": "%a.relu"}
    in_place = {result: bool(re.search(rf"call_tir_inplace\((cls\.)?{kernels[result]},", script))
                for result in residual}
    assert in_place == {"x.relu": False, "a.relu": True, "b.relu": False}
    inputs = random_inputs(module)
    want = onnxruntime_outputs(model_path, None, inputs)
    got = sparsec.compile(module).run(inputs)
    for key, value in want.items():
        assert relative_error(got[key], value) <= 1e-4, key

