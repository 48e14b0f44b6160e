"""Model inputs and outputs on disk: `.npy` for one tensor, `.npz` keyed by tensor name."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from sparsec.errors import UserError
from sparsec.ir.files import write_atomically
from sparsec.ir.types import TensorType, dtype_name
from sparsec.npz import load_arrays


def read_inputs(path: Path, expected: Mapping[str, TensorType]) -> dict[str, np.ndarray]:
    """Inputs from `.npy` (only for a one-input model) or `.npz` keyed by input name, checked
    against the model's inputs (`expected`: name -> type), so that every error names the file."""
    if not path.exists():
        raise UserError(f"{path}: input file does not exist")
    loaded = load_arrays(path, "input", "save one input with numpy.save, several with numpy.savez keyed by name")
    names = ", ".join(expected) or "(none)"
    if isinstance(loaded, np.ndarray):
        if len(expected) != 1:
            raise UserError(f"{path}: the model has {len(expected)} inputs ({names}); pass an .npz keyed by input name")
        loaded = {next(iter(expected)): loaded}
    _check_inputs(path, loaded, expected, names)
    return loaded


def _check_inputs(path: Path, loaded: dict[str, np.ndarray], expected: Mapping[str, TensorType], names: str) -> None:
    for key in loaded:
        if key not in expected:
            raise UserError(f"{path}: {key!r} is not an input of the model; its inputs are: {names}")
    for name, type_ in expected.items():
        if name not in loaded:
            raise UserError(f"{path}: input {name!r} is missing; the model's inputs are: {names}")
        if loaded[name].shape != type_.shape or loaded[name].dtype != type_.np_dtype:
            raise UserError(f"{path}: input {name!r} is {describe(loaded[name])} but the model expects {type_}")


def describe(array: np.ndarray) -> str:
    """`f32[1, 3, 32, 32]`: an array's IR dtype and shape, for messages."""
    try:
        name = dtype_name(array.dtype)
    except ValueError:
        name = str(array.dtype)
    return f"{name}[{', '.join(map(str, array.shape))}]"


def write_outputs(path: Path, outputs: dict[str, np.ndarray]) -> None:
    """Outputs to `.npz` keyed by name, or to `.npy` when there is exactly one."""
    if path.suffix == ".npz":
        write_atomically(path, lambda tmp: _savez(tmp, outputs))
    elif len(outputs) == 1:
        write_atomically(path, lambda tmp: _save(tmp, next(iter(outputs.values()))))
    else:
        raise UserError(f"{path}: the model has {len(outputs)} outputs; write them to an .npz")


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)
