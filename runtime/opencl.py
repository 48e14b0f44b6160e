"""Run a GPU-compiled model's OpenCL kernels on PoCL (a CPU OpenCL implementation) through pyopencl.

This checks what the Mali code computes, never how fast: PoCL runs OpenCL C on this machine's CPU,
so its timings say nothing about a Mali GPU. Each layer's kernels run in the order and with the
launch configuration that TVM's lowering recorded (`sparsec.runtime.gpu_program`); views
(reshapes the VM does without a kernel) are replayed in NumPy. The only module importing pyopencl.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sparsec.errors import UserError
from sparsec.runtime.gpu_program import GpuBundle, GpuLayer, GpuProgram

PYOPENCL = "pyopencl==2026.1.4"
POCL_PACKAGES = "pocl-opencl-icd ocl-icd-opencl-dev clinfo"
BUILD_OPTIONS = ["-cl-std=CL1.2"]  # what a Mali / OpenCL 1.2 driver accepts
_SECTION = re.compile(r"^// Function: (\w+)\s*$", re.M)


class KernelRejected(UserError):
    """The OpenCL compiler refused a layer's kernel: names the layer and carries the build log."""


def install_hint() -> str:
    return (f"install PoCL (Debian: apt-get install {POCL_PACKAGES}) and pyopencl "
            f"(pip install '{PYOPENCL}', or the sparsec[gpu] extra); `make pocl-setup` does both")


@dataclass
class OpenCLDevice:
    """A pyopencl context and queue on the first OpenCL device found (PoCL here)."""

    cl: object
    context: object
    queue: object
    name: str


_DEVICE: OpenCLDevice | None = None


def device(why: str = "OpenCL kernels") -> OpenCLDevice:
    """The OpenCL device (created once), or a UserError saying what to install."""
    global _DEVICE
    if _DEVICE is not None:
        return _DEVICE
    try:
        import pyopencl as cl
    except ImportError:
        raise UserError(f"{why} need pyopencl and an OpenCL platform: {install_hint()}") from None
    try:
        devices = [d for p in cl.get_platforms() for d in p.get_devices()]
    except cl.Error:  # no ICD loader / no platform: pyopencl raises LogicError
        devices = []
    if not devices:
        raise UserError(f"{why} need an OpenCL platform and none is installed: {install_hint()}")
    context = cl.Context([devices[0]])
    _DEVICE = OpenCLDevice(cl, context, cl.CommandQueue(context), f"{devices[0].platform.name}: {devices[0].name}")
    return _DEVICE


def kernel_sources(source: str) -> dict[str, str]:
    """TVM's OpenCL source of a module -> {kernel name: its section} (each section declares every
    kernel of the module, then defines its own)."""
    marks = list(_SECTION.finditer(source))
    return {m.group(1): source[m.end(): marks[i + 1].start() if i + 1 < len(marks) else len(source)]
            for i, m in enumerate(marks)}


def build(sources: dict[str, str], kernels: tuple[str, ...], what: str):
    """A pyopencl Program of `kernels` (their sections), or KernelRejected naming `what`."""
    dev = device(what)
    text = "\n".join(_only_definitions(sources[k], kernels) for k in dict.fromkeys(kernels))
    program = dev.cl.Program(dev.context, text)
    try:
        return program.build(options=BUILD_OPTIONS)
    except dev.cl.Error as err:
        log = _build_log(program, dev) or str(err)
        raise KernelRejected(f"{what}: the OpenCL compiler ({dev.name}) rejected its kernel:\n{log.strip()}") from None


def _only_definitions(section: str, kernels: tuple[str, ...]) -> str:
    """Drop the prototypes of kernels defined in other sections (a program defines each once)."""
    keep = []
    for line in section.splitlines():
        proto = re.match(r"__kernel void (\w+)\(.*\);$", line.strip())
        if proto and proto.group(1) not in kernels:
            continue
        keep.append(line)
    return "\n".join(keep)


def _build_log(program, dev) -> str:
    try:
        return "\n".join(log for _, log in program.get_build_info(dev.cl.program_build_info.LOG) if log)
    except Exception:  # the log is best effort: some ICDs have none after a failed build
        return ""


def build_layers(program: GpuProgram) -> dict[str, object]:
    """Build every layer's kernels (a program per layer, so a rejection names its layer)."""
    sources = kernel_sources(program.source)
    built = {}
    for layer in program.layers:
        if layer.is_view:
            continue
        missing = [launch.kernel for launch in layer.launches if launch.kernel not in sources]
        if missing:
            raise UserError(f"layer %{layer.result}: kernel {missing[0]} is not in the artifact's OpenCL source")
        built[layer.result] = build(sources, tuple(launch.kernel for launch in layer.launches),
                                    f"layer %{layer.result} ({layer.op})")
    return built


def run_layer(layer: GpuLayer, program, args: list[np.ndarray]) -> np.ndarray:
    """Run one layer's launches on the device; `args` are its inputs then its constants."""
    dev = device()
    cl, ctx, queue = dev.cl, dev.context, dev.queue
    flags = cl.mem_flags
    params = [cl.Buffer(ctx, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=np.ascontiguousarray(a))
              if a.nbytes else cl.Buffer(ctx, flags.READ_ONLY, 4) for a in args]
    out = np.zeros(layer.out_shape, np.float32)
    params.append(cl.Buffer(ctx, flags.READ_WRITE, max(out.nbytes, 4)))
    temps = [cl.Buffer(ctx, flags.READ_WRITE, max(n, 4)) for n in layer.temps]
    for launch in layer.launches:
        kernel = getattr(program, launch.kernel)
        buffers = [(params if kind == "param" else temps)[int(i)] for kind, i in (a.split(":") for a in launch.args)]
        kernel(queue, launch.global_size, launch.local_size, *buffers)
    cl.enqueue_copy(queue, out, params[-1])
    queue.finish()
    return out


LayerHook = Callable[[GpuLayer, np.ndarray, dict[str, np.ndarray]], None]


def emulate(bundle: GpuBundle, inputs: dict[str, np.ndarray], on_layer: LayerHook | None = None) -> dict:
    """Run every layer in order on the OpenCL device; returns every value by IR name (`%x`).
    `on_layer(layer, value, env)` sees each result as it is computed."""
    built = build_layers(bundle.program)
    env = {f"%{name}": np.ascontiguousarray(v, dtype=np.float32) for name, v in inputs.items()}
    for layer in bundle.program.layers:
        args = [env[ref] for ref in layer.inputs]
        if layer.is_view:
            value = args[0].reshape(layer.out_shape)
        else:
            value = run_layer(layer, built[layer.result], args + list(bundle.constants.get(layer.result, ())))
        env[f"%{layer.result}"] = value
        if on_layer is not None:
            on_layer(layer, value, env)
    return env
