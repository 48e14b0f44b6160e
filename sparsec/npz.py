"""Reading `.npz` / `.npy` files that someone else wrote: the one guarded loader.

IR weights, pruning masks and run inputs all come through here, so every way such a file can be
broken (missing, a folder, truncated, not a zip, pickled objects, a damaged or foreign member) ends
in one `UserError` naming the file, never in a NumPy or zipfile exception. Arrays are read at once:
NumPy reads `.npz` members lazily, which would move the failure to the first use.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from sparsec.errors import UserError

NPY_MAGIC = b"\x93NUMPY"
# A zip starts with a member header, or (no members: `numpy.savez(path)`) with its end record.
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
# What NumPy and zipfile raise for damaged bytes: short reads, bad headers, CRC and inflate
# errors, encrypted or unknown compression (RuntimeError, NotImplementedError), absurd shapes.
_DAMAGED = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError,
            MemoryError)


def load_npz(path: str | os.PathLike, what: str, fix: str) -> dict[str, np.ndarray]:
    """Every array of the `.npz` at `path`, by name. `what` names one array in messages
    ("mask"), `fix` says what to do ("save masks as bool arrays with numpy.savez")."""
    path = Path(path)
    head = _head(path, what)
    if not head.startswith(ZIP_MAGICS):
        reason = "a single .npy array" if head == NPY_MAGIC else "empty" if not head else "no zip signature"
        raise UserError(f"{path}: not a NumPy .npz file ({reason}); {fix}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: _member(path, npz, key, what, fix) for key in npz.files}
    except _DAMAGED as err:
        raise UserError(f"{path}: not a NumPy .npz file ({_one_line(err)}); {fix}") from None


def load_arrays(path: str | os.PathLike, what: str, fix: str) -> np.ndarray | dict[str, np.ndarray]:
    """The array of an `.npy` file, or the arrays of an `.npz` file by name (told apart by content)."""
    path = Path(path)
    if _head(path, what) != NPY_MAGIC:
        return load_npz(path, what, fix)
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise UserError(f"{path}: the {what} is an object (pickled) array, which sparsec does not load; "
                            f"{fix}") from None
        raise UserError(f"{path}: not a readable .npy file ({_one_line(err)}); {fix}") from None
    except _DAMAGED as err:
        raise UserError(f"{path}: not a readable .npy file ({_one_line(err)}); {fix}") from None


def _head(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(len(NPY_MAGIC))
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a {what}s file") from None
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
        reason = getattr(err, "strerror", None) or _one_line(err)
        raise UserError(f"{path}: cannot read the {what}s file ({reason})") from None


def _member(path: Path, npz, key: str, what: str, fix: str) -> np.ndarray:
    try:
        value = npz[key]
    except ValueError as err:
        if "allow_pickle" not in str(err):
            raise
        raise UserError(f"{path}: {what} {key!r} is an object (pickled) array, which sparsec does not load; "
                        f"{fix}") from None
    if not isinstance(value, np.ndarray):  # NpzFile hands back a member that is no .npy as raw bytes
        raise UserError(f"{path}: {what} {key!r} is not a NumPy array (a plain zip member); {fix}")
    return value


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
