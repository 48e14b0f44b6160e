"""Reading and writing IR text with its weights `.npz` beside it; writes are all-or-nothing."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from sparsec.errors import UserError
from sparsec.ir.module import Module
from sparsec.ir.parser import named_weights_file, parse_module
from sparsec.ir.printer import print_module
from sparsec.ir.verify import verify


def weight_arrays(module: Module) -> dict[str, np.ndarray]:
    """The npz entries of a module: `name` for the dense data, `name#part` for each layout part."""
    arrays = {}
    for weight in module.weights:
        arrays[weight.name] = weight.data
        arrays.update({f"{weight.name}#{part}": value for part, value in weight.parts.items()})
    return arrays


def read_module(path: str | os.PathLike) -> Module:
    """Parse and verify IR text from a file; its weights come from the `.npz` the text names."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read IR text ({err})") from None
    return verify(parse_module(text, str(path)))


def ir_files(path: str | os.PathLike) -> list[Path]:
    """The files reading this IR text reads: the text and the weights `.npz` it names."""
    path = Path(path)
    try:
        return [path, named_weights_file(path.read_text(), str(path))]
    except (OSError, UnicodeDecodeError):
        return [path]  # read_module says why, when it is read


def write_module(module: Module, path: str | os.PathLike, weights_path: str | os.PathLike | None = None) -> None:
    """Write IR text to `path` and its weights to `weights_path` (default `path + ".npz"`)."""
    path = Path(path)
    weights_path = Path(weights_path) if weights_path else Path(str(path) + ".npz")
    relative = os.path.relpath(weights_path, path.parent)
    text = print_module(module, relative)
    with atomic_outputs([path, weights_path]) as (text_tmp, npz_tmp):
        text_tmp.write_text(text)
        with open(npz_tmp, "wb") as f:
            np.savez(f, **weight_arrays(module))


@contextmanager
def atomic_outputs(paths: list[Path]):
    """Temporary files beside each path, renamed into place only if the block succeeds."""
    temps = []
    check_outputs(paths)
    try:
        for path in paths:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
            os.close(fd)
            temps.append(Path(name))
        yield temps
        for temp, path in zip(temps, paths):
            os.replace(temp, path)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_outputs(outputs: list[Path], inputs: list[Path] = ()) -> None:
    """Every output can be written, none is named twice and none is an input: the one check of
    output paths, made before any work so that a bad `-o` never costs a build."""
    for i, path in enumerate(outputs):
        check_writable(path)
        if any(_same_file(path, earlier) for earlier in outputs[:i]):
            raise UserError(f"{path}: named as two outputs; give each output its own file")
        clash = next((source for source in inputs if _same_file(path, source)), None)
        if clash is not None:
            raise UserError(f"{path}: is also an input ({clash}), which writing would destroy; "
                            "write the output to another file")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # hard links and symlinks too
    except OSError:  # one does not exist yet
        return a.resolve() == b.resolve()


def check_writable(path: Path) -> None:
    """A UserError unless `path` can be written: its folder exists and takes a new file (tried,
    since root passes access checks that /sys or /proc then refuse), and it is not a folder or
    a device that a rename would replace."""
    if not path.parent.is_dir():
        raise UserError(f"{path}: cannot write here, the folder {path.parent} does not exist")
    if path.is_dir():
        raise UserError(f"{path}: cannot write here, it is a folder")
    if path.exists() and not path.is_file():
        raise UserError(f"{path}: cannot write here, it is not a regular file (a device or a pipe)")
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"{path}: cannot write here, the folder {path.parent} is not writable")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as err:
        raise UserError(f"{path}: cannot write here, the folder {path.parent} refuses new files "
                        f"({err.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Run `write(temp_path)` and move the result to `path` only if it succeeds."""
    with atomic_outputs([Path(path)]) as (temp,):
        write(temp)
