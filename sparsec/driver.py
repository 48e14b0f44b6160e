"""The whole compiler as one straight line: import -> passes -> lower. No tvm import here."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from sparsec.errors import UserError
from sparsec.frontend import import_onnx, load_onnx
from sparsec.ir.module import Module
from sparsec.passes import PassInstrument, remaining_pipeline, run_pipeline
from sparsec.target import Target


def optimize(module: Module, *, verify_each: bool = False, dump: Callable[[str, Module], None] | None = None,
             target: Target | None = None, instrument: PassInstrument | None = None) -> Module:
    """The default pass pipeline over a module, less the passes it records as already run; the
    cost model uses `target`'s throughputs (the pass defaults without one)."""
    steps, _ = remaining_pipeline(module)
    return run_pipeline(module, for_target(steps, target), instrument or PassInstrument(verify_each=verify_each,
                                                                                         dump=dump))


def for_target(steps: list, target: Target | None) -> list:
    """The passes with analyze-sparsity's cost model set from the target (its throughputs and, on
    a CPU, the dense convs' Winograd estimate and the pattern kernel's padded tiles); for a GPU
    target, fuse-epilogue leaves residual adds alone (its conv kernels take no residual input)."""
    from sparsec.passes.registry import AnalyzeSparsity, FuseEpilogue

    if target is None:
        return steps
    speeds = dict(pattern_throughput=target.throughputs.pattern, csr_throughput=target.throughputs.csr)
    if target.kind == "cpu":
        speeds["dense_work"] = functools.partial(_dense_conv_work, target=target)
        speeds["pattern_work"] = functools.partial(_pattern_conv_work, target=target)
    options = {AnalyzeSparsity: speeds, FuseEpilogue: dict(residual=False) if target.kind == "gpu" else {}}
    return [dataclasses.replace(p, **options[type(p)]) if type(p) in options else p for p in steps]


def _dense_conv_work(op, in_shape: tuple[int, ...], weight_shape: tuple[int, ...], *, target: Target) -> float:
    """The dense conv kernel's work per direct multiply-add for `op` on `target` (Winograd's < 1)."""
    from sparsec.lower.kernels.winograd_plan import algorithm_work

    return algorithm_work(weight_shape, in_shape, op.strides, op.pads, op.dilations, op.groups, target=target)


def _pattern_conv_work(op, in_shape: tuple[int, ...], *, target: Target) -> float:
    """The pattern conv kernel's work per kept multiply-add for `op` on `target` (its padded tiles)."""
    from sparsec.lower.kernels.pattern_conv import padded_work

    return padded_work(in_shape, op.strides, op.pads, op.dilations, target=target)


def import_model(model: str | os.PathLike | onnx.ModelProto, masks: dict[str, np.ndarray] | str | os.PathLike | None,
                 input_shapes: dict[str, tuple[int, ...]] | None = None) -> Module:
    """ONNX (path or proto) + masks (dict or .npz path) -> verified IR."""
    from sparsec.prune import load_masks

    source = None if isinstance(model, onnx.ModelProto) else Path(model)
    proto = model if source is None else load_onnx(source)
    if masks is not None and not isinstance(masks, dict):
        masks = load_masks(Path(masks), proto)
    return import_onnx(proto, masks, input_shapes, source=source).module


def compile(model, masks=None, *, target: str | Target = "host", input_shapes=None, verify_each: bool = False,
            dump: Callable[[str, Module], None] | None = None, instrument: PassInstrument | None = None):
    """Compile an ONNX model (+ masks) or an IR `Module` for `target` (a Target, or a named
    target: host, arm64); returns a `CompiledModel`.

    A `Module` is compiled as given: the passes it records as run are not run again, and masks or
    input shapes (which only an ONNX model takes) are refused rather than ignored.
    """
    from sparsec.lower.compile import compile_module
    from sparsec.lower.target import resolve_target

    target = resolve_target(target) if isinstance(target, str) else target
    if isinstance(model, Module):
        if masks is not None or input_shapes:
            raise UserError(f"module @{model.name} is IR: its masks and input shapes are already in it; "
                            "give masks and input shapes when importing the ONNX model")
        module = model
    else:
        module = import_model(model, masks, input_shapes)
    optimized = optimize(module, verify_each=verify_each, dump=dump, target=target, instrument=instrument)
    return compile_module(optimized, target)


def load(path: str | os.PathLike):
    """Load a compiled model (`model.so` + `model.so.json`)."""
    from sparsec.runtime.model import load as load_library

    return load_library(path)
