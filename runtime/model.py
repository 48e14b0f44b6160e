"""A compiled model: a stock TVM library (Relax VM executable) plus a small JSON manifest.

On disk: `model.so` (loadable by any TVM 0.27 runtime: `relax.VirtualMachine(
tvm.runtime.load_module("model.so"), tvm.cpu())["main"](...)`) and `model.so.json` beside it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from sparsec.errors import UserError
from sparsec.ir.files import atomic_outputs
from sparsec.ir.types import DTYPES, dtype_name
from sparsec.runtime.manifest import (
    LibraryFile,
    Manifest,
    TensorSpec,
    check_library,
    describe_signature,
    read_manifest,
)

__all__ = ["CompiledModel", "Manifest", "TensorSpec", "add_signature", "load", "manifest_path"]

# TVM's x86 pool defaults to half the cores (one thread on a 2-core machine); use them all
# unless the user chose. It is read once, when the pool starts at the first parallel run.
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

# A function every library carries that returns its `Manifest.signature()`, so that a manifest
# edited after export (another shape, a renamed or added output) is caught at load.
SIGNATURE_FUNCTION = "sparsec_signature"


def add_signature(mod: tvm.IRModule, manifest: Manifest) -> tvm.IRModule:
    """`mod` with the function that returns the manifest's signature."""
    builder = relax.BlockBuilder(mod)
    with builder.function(SIGNATURE_FUNCTION, []):
        builder.emit_func_output(tvm.ir.expr.StringImm(manifest.signature()))
    return builder.get()


def manifest_path(library: Path) -> Path:
    return Path(str(library) + ".json")


class CompiledModel:
    """Runs on the host CPU; `export` writes the library and its manifest atomically."""

    def __init__(self, executable, manifest: Manifest):
        self.executable, self.manifest = executable, manifest
        self._vm = None

    @property
    def vm(self) -> relax.VirtualMachine:
        if self._vm is None:
            self._vm = relax.VirtualMachine(_copy_for_vm(self.executable), tvm.cpu(0))
        return self._vm

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The inputs in order, or a UserError naming the first one that does not fit."""
        names = [s.name for s in self.manifest.inputs]
        unknown = sorted(set(inputs) - set(names))
        if unknown:
            raise UserError(f"input {unknown[0]!r} is not an input of the model; its inputs are: {', '.join(names)}")
        ordered = []
        for spec in self.manifest.inputs:
            if spec.name not in inputs:
                raise UserError(f"input {spec.name!r} is missing; the model's inputs are: {', '.join(names)}")
            array = np.asarray(inputs[spec.name])
            if array.shape != spec.shape or array.dtype != DTYPES[spec.dtype]:
                raise UserError(f"input {spec.name!r} is {_describe(array)} but the model expects "
                                f"{spec.dtype}[{', '.join(map(str, spec.shape))}]")
            ordered.append(np.ascontiguousarray(array))
        return ordered

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs keyed by name for inputs keyed by name."""
        args = [tvm.runtime.tensor(a, tvm.cpu(0)) for a in self.check_inputs(inputs)]
        result = self.vm["main"](*args)
        values = [result] if len(self.manifest.outputs) == 1 else list(result)
        return {spec.name: v.numpy() for spec, v in zip(self.manifest.outputs, values)}

    def export(self, path: str | os.PathLike) -> None:
        """Write `path` (the TVM library) and `path.json` (the manifest), both or neither."""
        path = Path(path)
        if path.suffix != ".so":
            raise UserError(f"{path}: a compiled model is written as a .so library; name it model.so")
        with atomic_outputs([path, manifest_path(path)]) as (lib_tmp, manifest_tmp):
            lib_path = lib_tmp.with_suffix(".so")  # export_library picks the format from the suffix
            try:
                self.executable.export_library(str(lib_path))
                os.replace(lib_path, lib_tmp)
            finally:
                lib_path.unlink(missing_ok=True)
            manifest_tmp.write_text(self.manifest.to_json(LibraryFile.of(lib_tmp)))


def _describe(array: np.ndarray) -> str:
    try:
        name = dtype_name(array.dtype)
    except ValueError:
        name = str(array.dtype)
    return f"{name}[{', '.join(map(str, array.shape))}]"


def _copy_for_vm(executable):
    """A private copy of the VM executable for a VM to run. A TVM 0.27 VM records a memory scope
    per constant in the executable it runs; exporting that one afterwards would save them, with a
    "Scope Saving" warning per constant, and every later load would print "Scope Loaded" as often."""
    module = getattr(executable, "mod", executable)  # tvm.compile's Executable, or a loaded Module
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "executable.bin")
        module.write_to_file(path)
        copy = tvm.get_global_func("ffi.Module.load_from_file.relax.VMExecutable")(path)
    for library in module.imports:  # the kernels
        copy.import_module(library)
    return copy


def load(path: str | os.PathLike) -> CompiledModel:
    """Load a library written by `CompiledModel.export` (or `sparsec compile`), after checking it
    against its manifest: an unchecked library could crash the process when TVM maps it."""
    path = Path(path)
    manifest_file = manifest_path(path)
    if not path.exists() or not manifest_file.exists():
        raise UserError(f"{path}: no compiled model here (need {path.name} and {manifest_file.name}); "
                        "write one with `sparsec compile`")
    manifest, library = read_manifest(manifest_file)
    check_library(path, library)
    try:
        model = CompiledModel(tvm.runtime.load_module(str(path)), manifest)
        signature = str(model.vm[SIGNATURE_FUNCTION]())
    except (ValueError, KeyError, AttributeError, RuntimeError) as err:  # RuntimeError: what TVM raises
        raise UserError(f"{path}: cannot load the compiled model ({str(err).splitlines()[0]})") from None
    if signature != manifest.signature():
        raise UserError(f"{manifest_file}: does not match the library {path.name}, which has "
                        f"{describe_signature(signature)}; restore the manifest or compile the model again")
    return model
