"""A compiled model: a stock TVM library (Relax VM executable) plus a small JSON manifest.

On disk: `model.so` (loadable by any TVM 0.27 runtime: `relax.VirtualMachine(
tvm.runtime.load_module("model.so"), tvm.cpu())["main"](...)`) and `model.so.json` beside it.
A model compiled for another architecture (arm64 on an x86 host) runs on a device
(`sparsec.runtime.device`): the emulated one, or one registered with a TVM tracker. A model for a
GPU target (mali, opencl) is `model.so` (aarch64 host code linked by the cross compiler) or
`model.tar` (without one; the phone links it), loadable by a TVM runtime built with OpenCL, plus
`model.tar.gpu.npz`: its kernels' launch records, constants and IR, which `sparsec run --emulate`
replays on PoCL (`sparsec.runtime.opencl`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from sparsec.errors import UserError
from sparsec.io import describe
from sparsec.ir.files import atomic_outputs
from sparsec.ir.types import DTYPES
from sparsec.lower.target import missing_instructions, size_thread_pool
from sparsec.runtime.manifest import (
    LibraryFile,
    Manifest,
    TensorSpec,
    check_library,
    describe_signature,
    read_manifest,
)
from sparsec.target import Target

__all__ = ["CompiledModel", "Manifest", "TensorSpec", "add_signature", "load", "manifest_path"]

size_thread_pool()  # before the first run starts TVM's pool

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
    """Runs on this CPU, or on `device` (`on(device)`) when it was compiled for another one;
    `export` writes the library and its manifest atomically."""

    def __init__(self, executable, manifest: Manifest, library: Path | None = None, device=None, gpu_bundle=None):
        self.executable, self.manifest = executable, manifest
        self.library, self.device = library, device  # library: the .so on disk, if any
        self._gpu_bundle = gpu_bundle  # GPU models: the `GpuBundle` (loaded from beside the library on demand)
        self._vm = None

    @property
    def is_gpu(self) -> bool:
        return self.manifest.device_kind != "cpu"

    @property
    def gpu_bundle(self):
        """A GPU model's emulation bundle (`sparsec.runtime.gpu_program.GpuBundle`)."""
        if self._gpu_bundle is None and self.is_gpu and self.library is not None:
            from sparsec.runtime.gpu_program import GpuBundle, bundle_path

            path = bundle_path(self.library)
            if not path.exists():
                raise UserError(f"{self.library}: its GPU bundle {path.name} is missing (compile it again)")
            from sparsec.runtime.gpu_program import require_source_in

            bundle = GpuBundle.load(path)
            require_source_in(self.library, bundle.program)
            self._gpu_bundle = bundle
        return self._gpu_bundle

    @property
    def target(self) -> Target | None:
        return self.manifest.target_value()

    @property
    def runs_here(self) -> bool:
        """Whether this machine's CPU can run the library (same architecture, and every instruction
        set its CPU's code may use)."""
        target = self.target
        return target is None or (not self.is_gpu and target.device == "local" and not missing_instructions(target))

    def on(self, device) -> CompiledModel:
        """The same model, run on `device` (a `sparsec.runtime.device.RpcDevice`)."""
        return CompiledModel(self.executable, self.manifest, self.library, device)

    @property
    def vm(self) -> relax.VirtualMachine:
        if not self.runs_here:
            raise UserError(self._needs_device())
        if self._vm is None:
            # A compiled model is exported from its executable, which a VM must not run (see
            # `_copy_for_vm`); a loaded one is exported by copying its file, so it may.
            executable = self.executable if self.library is not None else _copy_for_vm(self.executable)
            self._vm = relax.VirtualMachine(executable, tvm.cpu(0))
        return self._vm

    def _needs_device(self) -> str:
        target, where = self.target, f"{self.library}: " if self.library else ""
        if self.is_gpu:
            return (f"{where}compiled for the {target.name} GPU (OpenCL): run it on a phone whose TVM runtime has "
                    "OpenCL (--tracker HOST:PORT --key K), or check its kernels here on PoCL with "
                    "`sparsec run MODEL --emulate`")
        if target.arch == _host_arch():
            return (f"{where}compiled for {target.name} ({target.arch}, {target.cpu}), whose instructions this "
                    f"machine's CPU lacks ({', '.join(missing_instructions(target))}): run it on such a CPU "
                    "(--tracker HOST:PORT --key K), or compile for an older one")
        return (f"{where}compiled for {target.name} ({target.arch}, {target.cpu}) but this machine is "
                f"{_host_arch()}: run it on a device (`sparsec run` starts the emulated one; "
                "or --tracker HOST:PORT --key K)")

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
                raise UserError(f"input {spec.name!r} is {describe(array)} but the model expects "
                                f"{spec.dtype}[{', '.join(map(str, spec.shape))}]")
            ordered.append(np.ascontiguousarray(array))
        return ordered

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs keyed by name for inputs keyed by name."""
        ordered = self.check_inputs(inputs)
        if self.device is not None:
            values = self._run_on_device(ordered)
        else:
            result = self.vm["main"](*[tvm.runtime.tensor(a, tvm.cpu(0)) for a in ordered])
            values = [v.numpy() for v in ([result] if len(self.manifest.outputs) == 1 else list(result))]
        return {spec.name: v for spec, v in zip(self.manifest.outputs, values)}

    def _run_on_device(self, ordered: list[np.ndarray]) -> list[np.ndarray]:
        from sparsec.runtime.device import run_library

        if self.is_gpu:
            raise UserError(f"{self.library or 'this model'}: running a GPU model over RPC needs a phone whose TVM "
                            "runtime has OpenCL; not done by sparsec yet (check its kernels with --emulate)")
        if self.library is not None:
            return run_library(self.device, self.library, ordered, len(self.manifest.outputs))
        with tempfile.TemporaryDirectory(prefix="sparsec-") as tmp:
            library = Path(tmp) / "model.so"
            self._export_library(library)
            return run_library(self.device, library, ordered, len(self.manifest.outputs))

    def _export_library(self, path: Path) -> None:
        """The TVM library, linked by the target's compiler (a cross compiler for arm64)."""
        if self.library is not None:  # loaded, and checked against its manifest: the file is the library
            shutil.copyfile(self.library, path)
            return
        target = self.target
        if path.suffix == ".tar":  # object files, linked where the model runs
            self.executable.export_library(str(path))
        elif target is not None and target.cc:
            from tvm.support import cc

            self.executable.export_library(str(path), fcompile=cc.cross_compiler(target.cc))
        else:
            self.executable.export_library(str(path))

    def export(self, path: str | os.PathLike) -> None:
        """Write `path` (the TVM library) and `path.json` (the manifest), both or neither (GPU
        models: and `path.gpu.npz`, the emulation bundle)."""
        path = Path(path)
        check_library_suffix(path, self.target)
        extra = [bundle_path_of(path)] if self.is_gpu else []
        with atomic_outputs([path, manifest_path(path), *extra]) as (lib_tmp, manifest_tmp, *bundle_tmp):
            lib_path = lib_tmp.with_suffix(path.suffix)  # export_library picks the format from the suffix
            try:
                self._export_library(lib_path)
                os.replace(lib_path, lib_tmp)
            finally:
                lib_path.unlink(missing_ok=True)
            manifest_tmp.write_text(self.manifest.to_json(LibraryFile.of(lib_tmp)))
            if bundle_tmp:
                self.gpu_bundle.save(bundle_tmp[0])


def check_library_suffix(path: Path, target: Target | None) -> None:
    """CPU models are .so libraries; GPU models .so (linked by the cross compiler) or .tar."""
    if target is not None and target.kind == "gpu":
        from sparsec.target import ARM64_CC_PACKAGE, cross_compiler_present

        if path.suffix not in (".so", ".tar"):
            raise UserError(f"{path}: a {target.name} model is written as model.so (linked by {target.cc}) or "
                            "model.tar (linked on the phone)")
        if path.suffix == ".so" and not cross_compiler_present(target):
            raise UserError(f"{path}: linking a {target.name} model into a .so needs the cross compiler {target.cc} "
                            f"(apt-get install {ARM64_CC_PACKAGE}); or write model.tar, which the phone links")
    elif path.suffix != ".so":
        raise UserError(f"{path}: a compiled model is written as a .so library; name it model.so")


def bundle_path_of(path: Path) -> Path:
    from sparsec.runtime.gpu_program import bundle_path

    return bundle_path(path)


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
    compiled = CompiledModel(None, manifest, path)
    if compiled.runs_here:  # a library for another CPU is only read by the device running it
        _load_here(compiled, path, manifest_file)
    return compiled


def _load_here(compiled: CompiledModel, path: Path, manifest_file: Path) -> None:
    """Load the library into this process and check that it has the manifest's signature."""
    try:
        compiled.executable = tvm.runtime.load_module(str(path))
        signature = str(compiled.vm[SIGNATURE_FUNCTION]())
    except (ValueError, KeyError, AttributeError, RuntimeError) as err:  # RuntimeError: what TVM raises
        raise UserError(f"{path}: cannot load the compiled model ({str(err).splitlines()[0]})") from None
    if signature != compiled.manifest.signature():
        raise UserError(f"{manifest_file}: does not match the library {path.name}, which has "
                        f"{describe_signature(signature)}; restore the manifest or compile the model again")


def _host_arch() -> str:
    import platform

    return {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine())
