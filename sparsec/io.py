"""Model inputs and outputs on disk: `.npy` for one tensor, `.npz` keyed by tensor name."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from sparsec.errors import UserError
from sparsec.ir.files import write_atomically


def read_inputs(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Inputs from `.npy` (only for a one-input model) or `.npz` keyed by input name."""
    if not path.exists():
        raise UserError(f"{path}: input file does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: not a .npy or .npz file without pickled objects ({err})") from None
    if isinstance(loaded, np.ndarray):
        if len(names) != 1:
            raise UserError(f"{path}: the model has {len(names)} inputs ({', '.join(names)}); "
                            "pass an .npz keyed by input name")
        return {names[0]: loaded}
    with loaded:
        return {key: loaded[key] for key in loaded.files}


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
