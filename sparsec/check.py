"""`--check`: a compiled model against the reference interpreter and onnxruntime."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx

from sparsec.errors import UserError, error_line
from sparsec.ir.module import Module
from sparsec.reference import run_reference

TOLERANCE = 1e-4  # max |got - want| / max |want|


class CheckFailed(UserError):
    """The compiled model computes something else than the model it came from."""


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-6)) if want.size else 0.0


def seeded_inputs(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """The same seeded float32 inputs for every engine that is compared or timed."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes.items()}


def random_inputs(module: Module, seed: int = 0) -> dict[str, np.ndarray]:
    return seeded_inputs({p.name: p.type.shape for p in module.inputs}, seed)


def require_onnxruntime(why: str):
    """The onnxruntime module (an optional dependency), or a UserError saying how to get it."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"{why}: pip install 'sparsec[bench]' (or onnxruntime==1.31.1)") from None
    return onnxruntime


class EngineUnavailable(UserError):
    """onnxruntime cannot load a model that sparsec reads; callers skip it and say why."""


_IR_TOO_NEW = re.compile(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)")


def onnxruntime_session(model: onnx.ModelProto, why: str, options=None):
    """An onnxruntime session for `model`. A model stamped with a newer IR version than this
    onnxruntime reads (onnx's `make_model` stamps its own) is handed over at the newest IR version
    it reads: the graph is the same one sparsec compiles. Anything else it refuses raises
    `EngineUnavailable` with onnxruntime's reason on one line."""
    ort = require_onnxruntime(why)
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own Fail / InvalidGraph classes
        too_new = _IR_TOO_NEW.search(str(err))
        if too_new is None:
            reason = error_line(err, type(err).__name__)
            raise EngineUnavailable(f"onnxruntime cannot load the model: {reason}") from None
    older = onnx.ModelProto()
    older.CopyFrom(model)
    older.ir_version = int(too_new.group(2))
    try:
        return ort.InferenceSession(older.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise EngineUnavailable(f"onnxruntime cannot load the model (IR version {model.ir_version}, also tried "
                                f"{older.ir_version}): {error_line(err, type(err).__name__)}") from None


def onnxruntime_outputs(model_path: Path, masks_path: Path | None, inputs: dict[str, np.ndarray]) -> dict:
    """What onnxruntime computes for the masked model (masks applied to the initializers)."""
    from sparsec.frontend import load_onnx
    from sparsec.prune import apply_masks, load_masks

    model = load_onnx(model_path)
    if masks_path is not None:
        model = apply_masks(model, load_masks(masks_path, model))
    session = onnxruntime_session(model, "--check compares with onnxruntime")
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def check_compiled(compiled, module: Module, model_path: Path | None = None, masks_path: Path | None = None) -> str:
    """Compare on one seeded random input; raise `CheckFailed` over the tolerance, else a summary."""
    inputs = random_inputs(module)
    got = compiled.run(inputs)
    references = {"reference": run_reference(module, inputs)}
    lines = []
    if model_path is not None:
        try:
            references["onnxruntime"] = onnxruntime_outputs(model_path, masks_path, inputs)
        except EngineUnavailable as err:
            lines.append(f"check: onnxruntime skipped ({err})")
    for engine, outputs in references.items():
        for name, want in outputs.items():
            error = relative_error(got[name], want)
            if not error <= TOLERANCE:
                raise CheckFailed(f"check failed: output {name!r} differs from {engine} by {error:.2e} "
                                  f"(relative; tolerance {TOLERANCE:g})")
            lines.append(f"check: {name} matches {engine} (max relative error {error:.1e})")
    return "\n".join(lines)
